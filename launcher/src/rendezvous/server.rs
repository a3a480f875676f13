//! The master's side: accepts nodes until the world is complete, assigns global
//! ranks, runs barriers, watches heartbeats and ends the run on every node when
//! one fails; serves the workers' key–value relay meanwhile. Every connection first
//! proves the job secret ([`super::wire::authenticate_peer`]); one that does not is
//! closed, logged and listed in [`ServerSpec::rejections`], and the run goes on.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use protocol::{from_hex, to_hex, JobSecret, Message, NodeInfo, VERSION};

use super::types::{
    RendezvousError, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_RENDEZVOUS_TIMEOUT,
};
use super::wire::{authenticate_peer, read_message, write_message};

/// How long a new connection may take to prove the secret and say what it is.
const FIRST_MESSAGE_PATIENCE: Duration = Duration::from_secs(10);
/// Connections not yet authenticated, at most; more are closed at once (a flood of
/// connections costs the master this many small tasks, not memory without end).
const MAX_PENDING_HANDSHAKES: usize = 256;
/// Refusals logged one by one; after these, one line says the rest are not.
const MAX_LOGGED_REJECTIONS: usize = 100;
/// Refusals kept in [`Rejections`].
const MAX_KEPT_REJECTIONS: usize = 10_000;
/// How long the master waits for its last messages (abort, finished) to leave.
const FLUSH_PATIENCE: Duration = Duration::from_secs(2);

/// What the master expects.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// `--nnodes`.
    pub nnodes: usize,
    /// How long the master waits for every node to register.
    pub arrival_timeout: Duration,
    /// A node silent this long (after the world formed) is lost.
    pub heartbeat_timeout: Duration,
    /// The job's secret, which every node and worker proves it holds.
    pub secret: JobSecret,
    /// Where refused connections are listed (besides the log).
    pub rejections: Rejections,
}

impl ServerSpec {
    /// `nnodes` nodes sharing `secret`, with the default timeouts.
    pub fn new(nnodes: usize, secret: JobSecret) -> Self {
        Self {
            nnodes,
            arrival_timeout: DEFAULT_RENDEZVOUS_TIMEOUT,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            secret,
            rejections: Rejections::default(),
        }
    }
}

/// A connection the master refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Where it came from.
    pub peer: SocketAddr,
    /// Why: no proof in time, garbage, a wrong proof, too many at once.
    pub reason: String,
}

/// The master's list of refused connections, shared with whoever wants to read it.
#[derive(Debug, Clone, Default)]
pub struct Rejections(Arc<Mutex<Vec<Rejection>>>);

impl Rejections {
    /// Every refusal so far, oldest first.
    pub fn list(&self) -> Vec<Rejection> {
        self.0.lock().map(|list| list.clone()).unwrap_or_default()
    }

    fn record(&self, peer: SocketAddr, reason: String) {
        let Ok(mut list) = self.0.lock() else {
            return;
        };
        // Bounded: a flood is logged and kept by its first refusals, not whole.
        match list.len() {
            n if n < MAX_LOGGED_REJECTIONS => {
                eprintln!("[ferroclip launch] rendezvous: refused a connection from {peer}: {reason}")
            }
            n if n == MAX_LOGGED_REJECTIONS => {
                eprintln!("[ferroclip launch] rendezvous: refused {n} connections; further refusals are not logged")
            }
            _ => {}
        }
        if list.len() < MAX_KEPT_REJECTIONS {
            list.push(Rejection { peer, reason });
        }
    }
}

/// Something a connection task tells the coordinator.
enum Event {
    Registered {
        conn: u64,
        message: Message,
        out: mpsc::UnboundedSender<Message>,
        writer: JoinHandle<()>,
    },
    FromNode {
        conn: u64,
        message: Message,
    },
    Gone {
        conn: u64,
        reason: String,
    },
}

/// A registered node's connection.
struct Node {
    conn: u64,
    info: NodeInfo,
    out: mpsc::UnboundedSender<Message>,
    writer: JoinHandle<()>,
    last_seen: Instant,
}

/// The relay's values, with the run token that guards them.
struct Relay {
    token: String,
    values: watch::Sender<HashMap<String, Vec<u8>>>,
}

/// Serves the rendezvous on `listener` until every node reports its workers
/// done (returns the nodes) or the run fails (every node still connected is
/// sent `abort` with the reason first). The error names the node(s) at fault
/// and the listener's address.
pub async fn serve(listener: TcpListener, spec: ServerSpec) -> Result<Vec<NodeInfo>, RendezvousError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "the master".into());
    let relay = Arc::new(Relay {
        token: format!("{:032x}", rand::thread_rng().gen::<u128>()),
        values: watch::Sender::new(HashMap::new()),
    });
    let (events_tx, events) = mpsc::unbounded_channel();
    let acceptor = tokio::spawn(accept_loop(
        listener,
        events_tx,
        relay.clone(),
        (spec.secret.clone(), spec.rejections.clone()),
    ));
    let mut coordinator = Coordinator {
        spec,
        addr,
        events,
        nodes: BTreeMap::new(),
    };
    let result = coordinator.run(&relay.token).await;
    acceptor.abort();
    coordinator.close().await;
    result
}

async fn accept_loop(
    listener: TcpListener,
    events: mpsc::UnboundedSender<Event>,
    relay: Arc<Relay>,
    (secret, rejections): (JobSecret, Rejections),
) {
    let mut next_conn = 0u64;
    let handshakes = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    drop(stream);
                    rejections.record(peer, format!("{MAX_PENDING_HANDSHAKES} handshakes already in progress"));
                    continue;
                };
                next_conn += 1;
                let (events, relay, secret, rejections) =
                    (events.clone(), relay.clone(), secret.clone(), rejections.clone());
                tokio::spawn(async move {
                    let authenticated = authenticate(stream, peer, &secret, &rejections).await;
                    drop(permit);
                    if let Some((read, write)) = authenticated {
                        handle_connection(read, write, next_conn, events, relay).await;
                    }
                });
            }
            // Out of file descriptors and the like: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

type ReadHalf = BufReader<tokio::net::tcp::OwnedReadHalf>;
type WriteHalf = tokio::net::tcp::OwnedWriteHalf;

/// The connection's two halves once the peer proved the secret within
/// [`FIRST_MESSAGE_PATIENCE`]; `None` (refused, recorded, closed) otherwise.
async fn authenticate(
    stream: TcpStream,
    peer: SocketAddr,
    secret: &JobSecret,
    rejections: &Rejections,
) -> Option<(ReadHalf, WriteHalf)> {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let outcome = tokio::time::timeout(FIRST_MESSAGE_PATIENCE, authenticate_peer(&mut read, &mut write, secret))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no proof of the job secret within {:.0}s",
                FIRST_MESSAGE_PATIENCE.as_secs_f64()
            ))
        });
    match outcome {
        Ok(()) => Some((read, write)),
        Err(reason) => {
            rejections.record(peer, reason);
            None
        }
    }
}

/// Reads the first message of an authenticated peer and either becomes a node connection
/// (forwarding its messages as events) or answers one relay request.
async fn handle_connection(
    mut read: ReadHalf,
    mut write: WriteHalf,
    conn: u64,
    events: mpsc::UnboundedSender<Event>,
    relay: Arc<Relay>,
) {
    let first = match tokio::time::timeout(FIRST_MESSAGE_PATIENCE, read_message(&mut read)).await {
        Ok(Ok(Some(message))) => message,
        // Not one of ours (a port scan, a health check) or too slow: dropped.
        _ => return,
    };
    match first {
        Message::Register { .. } => {
            let (out, mut queue) = mpsc::unbounded_channel::<Message>();
            let writer = tokio::spawn(async move {
                while let Some(message) = queue.recv().await {
                    if write_message(&mut write, &message).await.is_err() {
                        break;
                    }
                }
            });
            if events
                .send(Event::Registered {
                    conn,
                    message: first,
                    out,
                    writer,
                })
                .is_err()
            {
                return;
            }
            let reason = loop {
                match read_message(&mut read).await {
                    Ok(Some(message)) => {
                        if events.send(Event::FromNode { conn, message }).is_err() {
                            return;
                        }
                    }
                    Ok(None) => break "connection closed".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            let _ = events.send(Event::Gone { conn, reason });
        }
        Message::Publish { token, key, value_hex } => {
            let reply = match (token == relay.token, from_hex(&value_hex)) {
                (false, _) => stale_token(),
                (true, None) => Message::Error {
                    reason: format!("the value for {key:?} is not hex"),
                },
                (true, Some(value)) => {
                    // A value is set once: publishing it again is allowed (a retry), another
                    // value under the same key is refused (it would swap the NCCL id under
                    // ranks that already fetched it).
                    let mut clash = false;
                    relay.values.send_if_modified(|values| match values.get(&key) {
                        Some(old) => {
                            clash = *old != value;
                            false
                        }
                        None => {
                            values.insert(key.clone(), value);
                            true
                        }
                    });
                    if clash {
                        Message::Error {
                            reason: format!("{key:?} was already published with another value"),
                        }
                    } else {
                        Message::Value { key, value_hex }
                    }
                }
            };
            let _ = write_message(&mut write, &reply).await;
        }
        Message::Fetch { token, key } => {
            let reply = if token != relay.token {
                stale_token()
            } else {
                let mut values = relay.values.subscribe();
                // Waits until rank 0 publishes; the worker's own deadline bounds it
                // (it closes the connection, and the task ends with the server).
                let found = values
                    .wait_for(|v| v.contains_key(&key))
                    .await
                    .map(|values| values.get(&key).map(|v| to_hex(v)).unwrap_or_default());
                match found {
                    Ok(value_hex) => Message::Value { value_hex, key },
                    Err(_) => Message::Error {
                        reason: "the rendezvous is shutting down".into(),
                    },
                }
            };
            let _ = write_message(&mut write, &reply).await;
        }
        _ => {
            let reason = "expected register, publish or fetch as the first message".to_string();
            let _ = write_message(&mut write, &Message::Error { reason }).await;
        }
    }
}

fn stale_token() -> Message {
    Message::Error {
        reason: format!(
            "run token mismatch: this worker was started for another run ({})",
            protocol::env::RUN_TOKEN
        ),
    }
}

struct Coordinator {
    spec: ServerSpec,
    addr: String,
    events: mpsc::UnboundedReceiver<Event>,
    nodes: BTreeMap<usize, Node>,
}

impl Coordinator {
    async fn run(&mut self, token: &str) -> Result<Vec<NodeInfo>, RendezvousError> {
        let result = self.gather().await;
        let result = match result {
            Ok(()) => {
                self.announce_world(token);
                self.supervise().await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.broadcast(&Message::Finished);
                Ok(self.nodes.values().map(|n| n.info.clone()).collect())
            }
            Err(e) => {
                self.broadcast(&Message::Abort { reason: e.to_string() });
                Err(e)
            }
        }
    }

    fn protocol_error(&self, reason: String) -> RendezvousError {
        RendezvousError::Protocol {
            addr: self.addr.clone(),
            reason,
        }
    }

    fn node_of(&self, conn: u64) -> Option<usize> {
        self.nodes.values().find(|n| n.conn == conn).map(|n| n.info.node_rank)
    }

    /// Phase 1: registrations until all `nnodes` are in or the deadline passes.
    async fn gather(&mut self) -> Result<(), RendezvousError> {
        let deadline = Instant::now() + self.spec.arrival_timeout;
        while self.nodes.len() < self.spec.nnodes {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => return Err(self.protocol_error("the listener stopped".into())),
                Err(_) => {
                    return Err(RendezvousError::NodesMissing {
                        missing: (0..self.spec.nnodes).filter(|r| !self.nodes.contains_key(r)).collect(),
                        arrived: self.nodes.len(),
                        nnodes: self.spec.nnodes,
                        addr: self.addr.clone(),
                        waited_s: self.spec.arrival_timeout.as_secs_f64(),
                    })
                }
            };
            match event {
                Event::Registered {
                    conn,
                    message,
                    out,
                    writer,
                } => {
                    let Message::Register {
                        version,
                        node_rank,
                        nnodes,
                        nproc,
                        addr,
                    } = message
                    else {
                        continue;
                    };
                    let refusal = if version != VERSION {
                        Some(format!(
                            "node {node_rank} ({addr}) speaks protocol version {version}, the master {VERSION}"
                        ))
                    } else if nnodes != self.spec.nnodes {
                        Some(format!(
                            "node {node_rank} ({addr}) was started with --nnodes {nnodes}, the master with --nnodes {}",
                            self.spec.nnodes
                        ))
                    } else if node_rank >= nnodes {
                        Some(format!(
                            "node at {addr} has --node-rank {node_rank}, but --nnodes is {nnodes}"
                        ))
                    } else if nproc == 0 {
                        Some(format!("node {node_rank} ({addr}) has --nproc 0"))
                    } else {
                        self.nodes.get(&node_rank).map(|first| {
                            format!(
                                "node rank {node_rank} registered twice: from {} and from {addr}",
                                first.info.addr
                            )
                        })
                    };
                    if let Some(reason) = refusal {
                        let _ = out.send(Message::Error { reason: reason.clone() });
                        drop(out);
                        let _ = tokio::time::timeout(FLUSH_PATIENCE, writer).await;
                        return Err(self.protocol_error(reason));
                    }
                    self.nodes.insert(
                        node_rank,
                        Node {
                            conn,
                            info: NodeInfo {
                                node_rank,
                                addr,
                                nproc,
                                rank_start: 0,
                            },
                            out,
                            writer,
                            last_seen: Instant::now(),
                        },
                    );
                }
                Event::FromNode { conn, .. } => {
                    if let Some(rank) = self.node_of(conn) {
                        if let Some(node) = self.nodes.get_mut(&rank) {
                            node.last_seen = Instant::now();
                        }
                    }
                }
                // A node that left before the world formed may come back before the deadline.
                Event::Gone { conn, .. } => {
                    if let Some(rank) = self.node_of(conn) {
                        self.nodes.remove(&rank);
                    }
                }
            }
        }
        Ok(())
    }

    /// Global ranks in node order; each node gets its place.
    fn announce_world(&mut self, token: &str) {
        let mut next = 0;
        for node in self.nodes.values_mut() {
            node.info.rank_start = next;
            next += node.info.nproc;
            node.last_seen = Instant::now();
        }
        let infos: Vec<NodeInfo> = self.nodes.values().map(|n| n.info.clone()).collect();
        for node in self.nodes.values() {
            let _ = node.out.send(Message::World {
                world_size: next,
                node_rank: node.info.node_rank,
                rank_start: node.info.rank_start,
                nproc: node.info.nproc,
                run_token: token.to_string(),
                nodes: infos.clone(),
            });
        }
    }

    fn node_failed(&self, node_rank: usize, what: String) -> RendezvousError {
        RendezvousError::NodeFailed {
            node_rank,
            node_addr: self
                .nodes
                .get(&node_rank)
                .map(|n| n.info.addr.clone())
                .unwrap_or_default(),
            what,
        }
    }

    /// Phase 2: heartbeats, barriers and `done` reports until every node is
    /// done (Ok) or one fails.
    async fn supervise(&mut self) -> Result<(), RendezvousError> {
        let mut done: BTreeSet<usize> = BTreeSet::new();
        let mut barriers: HashMap<String, BTreeSet<usize>> = HashMap::new();
        let mut tick = tokio::time::interval(DEFAULT_HEARTBEAT_INTERVAL.min(self.spec.heartbeat_timeout / 4));
        loop {
            tokio::select! {
                event = self.events.recv() => {
                    let Some(event) = event else {
                        return Err(self.protocol_error("the listener stopped".into()));
                    };
                    let (conn, message) = match event {
                        Event::Registered { out, message, .. } => {
                            let who = match message {
                                Message::Register { node_rank, addr, .. } => format!("node {node_rank} ({addr})"),
                                _ => "a node".into(),
                            };
                            let _ = out.send(Message::Error {
                                reason: format!("{who} registered after the world was formed"),
                            });
                            continue;
                        }
                        Event::Gone { conn, reason } => {
                            match self.node_of(conn) {
                                Some(rank) => return Err(self.node_failed(rank, format!("lost: {reason}"))),
                                None => continue,
                            }
                        }
                        Event::FromNode { conn, message } => (conn, message),
                    };
                    let Some(rank) = self.node_of(conn) else { continue };
                    if let Some(node) = self.nodes.get_mut(&rank) {
                        node.last_seen = Instant::now();
                    }
                    match message {
                        Message::Heartbeat => {
                            if let Some(node) = self.nodes.get(&rank) {
                                let _ = node.out.send(Message::Heartbeat);
                            }
                        }
                        Message::Barrier { name } => {
                            let reached = barriers.entry(name.clone()).or_default();
                            reached.insert(rank);
                            if reached.len() == self.nodes.len() {
                                barriers.remove(&name);
                                self.broadcast(&Message::BarrierDone { name });
                            }
                        }
                        Message::Done { ok: true, .. } => {
                            done.insert(rank);
                            if done.len() == self.nodes.len() {
                                return Ok(());
                            }
                        }
                        Message::Done { ok: false, detail } => {
                            return Err(self.node_failed(rank, format!("workers failed: {detail}")));
                        }
                        other => {
                            return Err(self.node_failed(rank, format!("sent an unexpected message: {other:?}")));
                        }
                    }
                }
                _ = tick.tick() => {
                    let silent = self
                        .nodes
                        .values()
                        .find(|n| n.last_seen.elapsed() > self.spec.heartbeat_timeout);
                    if let Some(node) = silent {
                        let rank = node.info.node_rank;
                        let silent_for = node.last_seen.elapsed().as_secs_f64();
                        return Err(self.node_failed(rank, format!("sent no heartbeat for {silent_for:.1}s")));
                    }
                }
            }
        }
    }

    fn broadcast(&self, message: &Message) {
        for node in self.nodes.values() {
            let _ = node.out.send(message.clone());
        }
    }

    /// Closes every node connection once its queued messages are written.
    async fn close(&mut self) {
        let nodes = std::mem::take(&mut self.nodes);
        let writers: Vec<JoinHandle<()>> = nodes.into_values().map(|n| n.writer).collect();
        for writer in writers {
            let _ = tokio::time::timeout(FLUSH_PATIENCE, writer).await;
        }
    }
}
