//! A node's side: connect to the master (retrying until the deadline), prove the
//! job secret and check the master's proof, register, receive the world, then barriers, heartbeats and the final report;
//! and the workers' relay requests (`publish`, `fetch`).
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use protocol::{from_hex, to_hex, JobSecret, Message, VERSION};

use super::types::{
    RendezvousError, World, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_RENDEZVOUS_TIMEOUT,
};
use super::wire::{authenticate_to_master, read_message, write_message};

/// Pause between connection attempts while the master is not listening yet.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The longest single connection attempt.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(2);
/// Extra time a node waits for the world beyond the arrival timeout, so that
/// the master's own verdict (naming the missing nodes) arrives first.
const WORLD_MARGIN: Duration = Duration::from_secs(5);

/// What a node tells the master, and how long it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The master, `HOST:PORT` (`--master`).
    pub master: String,
    /// This node's rank (`--node-rank`).
    pub node_rank: usize,
    /// Nodes in the run (`--nnodes`).
    pub nnodes: usize,
    /// Workers on this node (`--nproc`).
    pub nproc: usize,
    /// Connect from this address, and report it (`--bind-addr`/`--bind-iface`);
    /// otherwise the address the connection left from is reported.
    pub bind: Option<IpAddr>,
    /// How long to keep trying to reach the master, and to wait for the other nodes.
    pub timeout: Duration,
    /// How often to send heartbeats.
    pub heartbeat_interval: Duration,
    /// A master silent this long is lost.
    pub heartbeat_timeout: Duration,
    /// The job's secret (`--secret-file`, `FERROCLIP_JOB_SECRET[_FILE]`), the same on every node.
    pub secret: JobSecret,
}

impl NodeSpec {
    /// Node `node_rank` of `nnodes` with `nproc` workers sharing `secret`, default timeouts.
    pub fn new(master: impl Into<String>, node_rank: usize, nnodes: usize, nproc: usize, secret: JobSecret) -> Self {
        Self {
            master: master.into(),
            node_rank,
            nnodes,
            nproc,
            secret,
            bind: None,
            timeout: DEFAULT_RENDEZVOUS_TIMEOUT,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
        }
    }
}

/// A node's live membership: its [`World`], and the connection to the master
/// (heartbeats are sent in the background until the session is dropped).
pub struct NodeSession {
    master: String,
    world: World,
    out: mpsc::UnboundedSender<Message>,
    incoming: mpsc::UnboundedReceiver<Result<Message, String>>,
    heartbeat_timeout: Duration,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for NodeSession {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Splits `HOST:PORT` (`[v6]:PORT` too) and resolves it.
pub(crate) async fn resolve(master: &str) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = master
        .rsplit_once(':')
        .ok_or_else(|| "expected HOST:PORT".to_string())?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {port:?} is not in 1..=65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host:?} resolves to no address"));
    }
    Ok(addrs)
}

/// A connection to `master` that passed the handshake over `secret`: the local address
/// and the two halves. Connects again while the master turns connections away unread (at
/// its limit of handshakes in progress). `Err(Ok(reason))`: the handshake failed (the
/// reason names the master's part); `Err(Err(e))`: the master could not be reached.
async fn authenticated_connect(
    master: &str,
    bind: Option<IpAddr>,
    secret: &JobSecret,
    deadline: Instant,
) -> Result<(std::io::Result<SocketAddr>, MasterReader, OwnedWriteHalf), Result<String, RendezvousError>> {
    loop {
        let stream = connect(master, bind, deadline).await.map_err(Err)?;
        let local = stream.local_addr();
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let outcome = tokio::time::timeout_at(deadline, authenticate_to_master(&mut read, &mut write, secret))
            .await
            .unwrap_or_else(|_| Err("no handshake before the deadline".into()));
        match outcome {
            Ok(()) => return Ok((local, read, write)),
            Err(e) if e.turned_away && Instant::now() + RETRY_PAUSE < deadline => tokio::time::sleep(RETRY_PAUSE).await,
            Err(e) => return Err(Ok(format!("the master {}", e.reason))),
        }
    }
}

/// The read half of a connection to the master, buffered.
type MasterReader = BufReader<OwnedReadHalf>;

/// Connects to `master` from `bind` (if given), retrying until `deadline`.
async fn connect(master: &str, bind: Option<IpAddr>, deadline: Instant) -> Result<TcpStream, RendezvousError> {
    let started = Instant::now();
    let mut last_error = String::from("no attempt made");
    loop {
        match resolve(master).await {
            // A malformed address will not get better by waiting.
            Err(reason) if !reason.starts_with("cannot resolve") && !reason.contains("resolves to no") => {
                return Err(RendezvousError::BadAddress {
                    addr: master.to_string(),
                    reason,
                })
            }
            Err(reason) => last_error = reason,
            Ok(addrs) => {
                for addr in addrs {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let attempt = tokio::time::timeout(left.min(CONNECT_ATTEMPT), connect_once(addr, bind)).await;
                    match attempt {
                        Ok(Ok(stream)) => return Ok(stream),
                        Ok(Err(e)) => last_error = format!("{addr}: {e}"),
                        Err(_) => last_error = format!("{addr}: connection attempt timed out"),
                    }
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RendezvousError::MasterUnreachable {
                addr: master.to_string(),
                waited_s: started.elapsed().as_secs_f64(),
                last_error,
            });
        }
        tokio::time::sleep(RETRY_PAUSE.min(left)).await;
    }
}

async fn connect_once(addr: SocketAddr, bind: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = bind {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Joins the rendezvous: connects (retrying until `spec.timeout`), registers,
/// and waits for the world (the master decides within its own arrival timeout;
/// a node waits a few seconds longer so that it hears the master's verdict).
pub async fn join(spec: &NodeSpec) -> Result<NodeSession, RendezvousError> {
    let started = Instant::now();
    let lost = |reason: String| RendezvousError::MasterLost {
        addr: spec.master.clone(),
        reason,
    };
    let (stream, mut read, mut write) =
        authenticated_connect(&spec.master, spec.bind, &spec.secret, started + spec.timeout)
            .await
            .map_err(|e| match e {
                Ok(reason) => lost(reason),
                Err(unreachable) => unreachable,
            })?;
    let addr = match (spec.bind, stream) {
        (Some(ip), _) => ip.to_string(),
        (None, Ok(local)) => local.ip().to_string(),
        (None, Err(e)) => return Err(lost(e.to_string())),
    };
    let register = Message::Register {
        version: VERSION,
        node_rank: spec.node_rank,
        nnodes: spec.nnodes,
        nproc: spec.nproc,
        addr,
    };
    write_message(&mut write, &register)
        .await
        .map_err(|e| lost(format!("sending the registration: {e}")))?;
    let world_deadline = Instant::now() + spec.timeout + WORLD_MARGIN;
    let world = loop {
        let message = tokio::time::timeout_at(world_deadline, read_message(&mut read))
            .await
            .map_err(|_| {
                lost(format!(
                    "no world after {:.1}s (are all {} nodes started?)",
                    started.elapsed().as_secs_f64(),
                    spec.nnodes
                ))
            })?
            .map_err(|e| lost(e.to_string()))?;
        match message {
            Some(Message::World {
                world_size,
                node_rank,
                rank_start,
                nproc,
                run_token,
                nodes,
            }) => {
                break World {
                    world_size,
                    node_rank,
                    rank_start,
                    nproc,
                    run_token,
                    nodes,
                }
            }
            Some(Message::Heartbeat) => continue,
            Some(Message::Abort { reason }) => {
                return Err(RendezvousError::Aborted {
                    addr: spec.master.clone(),
                    reason,
                })
            }
            Some(Message::Error { reason }) => {
                return Err(RendezvousError::Protocol {
                    addr: spec.master.clone(),
                    reason,
                })
            }
            Some(other) => return Err(lost(format!("unexpected message before the world: {other:?}"))),
            None => return Err(lost("the master closed the connection before the world formed".into())),
        }
    };

    let (out, mut queue) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(message) = queue.recv().await {
            if write_message(&mut write, &message).await.is_err() {
                break;
            }
        }
    });
    let (incoming_tx, incoming) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            let item = match read_message(&mut read).await {
                Ok(Some(message)) => Ok(message),
                Ok(None) => Err("the master closed the connection".to_string()),
                Err(e) => Err(e.to_string()),
            };
            let end = item.is_err();
            if incoming_tx.send(item).is_err() || end {
                break;
            }
        }
    });
    let heartbeats = {
        let out = out.clone();
        let interval = spec.heartbeat_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                if out.send(Message::Heartbeat).is_err() {
                    break;
                }
            }
        })
    };
    Ok(NodeSession {
        master: spec.master.clone(),
        world,
        out,
        incoming,
        heartbeat_timeout: spec.heartbeat_timeout,
        tasks: vec![writer, reader, heartbeats],
    })
}

impl NodeSession {
    /// This node's place in the world.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The next message from the master that is not a heartbeat. Cancel-safe
    /// (it only awaits a channel). `abort`, a closed connection or silence
    /// longer than the heartbeat timeout are errors.
    async fn next(&mut self) -> Result<Message, RendezvousError> {
        loop {
            let item = tokio::time::timeout(self.heartbeat_timeout, self.incoming.recv())
                .await
                .map_err(|_| RendezvousError::MasterLost {
                    addr: self.master.clone(),
                    reason: format!("silent for {:.1}s", self.heartbeat_timeout.as_secs_f64()),
                })?;
            match item {
                Some(Ok(Message::Heartbeat)) => continue,
                Some(Ok(Message::Abort { reason })) => {
                    return Err(RendezvousError::Aborted {
                        addr: self.master.clone(),
                        reason,
                    })
                }
                Some(Ok(Message::Error { reason })) => {
                    return Err(RendezvousError::Protocol {
                        addr: self.master.clone(),
                        reason,
                    })
                }
                Some(Ok(message)) => return Ok(message),
                Some(Err(reason)) => {
                    return Err(RendezvousError::MasterLost {
                        addr: self.master.clone(),
                        reason,
                    })
                }
                None => {
                    return Err(RendezvousError::MasterLost {
                        addr: self.master.clone(),
                        reason: "the connection reader stopped".into(),
                    })
                }
            }
        }
    }

    fn send(&self, message: Message) -> Result<(), RendezvousError> {
        self.out.send(message).map_err(|_| RendezvousError::MasterLost {
            addr: self.master.clone(),
            reason: "the connection writer stopped".into(),
        })
    }

    /// Waits until every node reached barrier `name`.
    pub async fn barrier(&mut self, name: &str) -> Result<(), RendezvousError> {
        self.send(Message::Barrier { name: name.into() })?;
        match self.next().await? {
            Message::BarrierDone { name: done } if done == name => Ok(()),
            other => Err(RendezvousError::Protocol {
                addr: self.master.clone(),
                reason: format!("expected the end of barrier {name:?}, got {other:?}"),
            }),
        }
    }

    /// Returns only with an error: when the master aborts the run (another
    /// node failed), goes away or falls silent. Cancel-safe: meant for a
    /// `select!` beside the local workers.
    pub async fn watch(&mut self) -> RendezvousError {
        match self.next().await {
            Err(e) => e,
            Ok(other) => RendezvousError::Protocol {
                addr: self.master.clone(),
                reason: format!("unexpected message while the workers run: {other:?}"),
            },
        }
    }

    /// Reports this node's workers as done (`ok`: all exited 0, `detail`: the
    /// failure otherwise) and, when `ok`, waits until every node is done.
    pub async fn finish(&mut self, ok: bool, detail: String) -> Result<(), RendezvousError> {
        self.send(Message::Done { ok, detail })?;
        match self.next().await? {
            Message::Finished => Ok(()),
            other => Err(RendezvousError::Protocol {
                addr: self.master.clone(),
                reason: format!("expected the end of the run, got {other:?}"),
            }),
        }
    }
}

/// One relay request on its own connection (after the handshake over `secret`), answered
/// within `timeout`.
async fn relay(
    master: &str,
    secret: &JobSecret,
    request: Message,
    timeout: Duration,
) -> Result<Vec<u8>, RendezvousError> {
    let relay_error = |reason: String| RendezvousError::Relay {
        addr: master.to_string(),
        reason,
    };
    let deadline = Instant::now() + timeout;
    let (_, mut read, mut write) =
        authenticated_connect(master, None, secret, deadline)
            .await
            .map_err(|e| match e {
                Ok(reason) => relay_error(reason),
                Err(unreachable) => unreachable,
            })?;
    write_message(&mut write, &request)
        .await
        .map_err(|e| relay_error(format!("sending the request: {e}")))?;
    let reply = tokio::time::timeout_at(deadline, read_message(&mut read))
        .await
        .map_err(|_| relay_error(format!("no answer within {:.1}s", timeout.as_secs_f64())))?
        .map_err(|e| relay_error(e.to_string()))?;
    match reply {
        Some(Message::Value { value_hex, key }) => {
            from_hex(&value_hex).ok_or_else(|| relay_error(format!("the value of {key:?} is not hex")))
        }
        Some(Message::Error { reason }) => Err(relay_error(reason)),
        Some(other) => Err(relay_error(format!("unexpected answer {other:?}"))),
        None => Err(relay_error("the master closed the connection".into())),
    }
}

/// Stores `value` under `key` in the run's relay (what global rank 0 does with
/// the NCCL unique id).
pub async fn publish(
    master: &str,
    secret: &JobSecret,
    token: &str,
    key: &str,
    value: &[u8],
    timeout: Duration,
) -> Result<(), RendezvousError> {
    let request = Message::Publish {
        token: token.into(),
        key: key.into(),
        value_hex: to_hex(value),
    };
    relay(master, secret, request, timeout).await.map(|_| ())
}

/// Waits (up to `timeout`) for the value under `key` in the run's relay.
pub async fn fetch(
    master: &str,
    secret: &JobSecret,
    token: &str,
    key: &str,
    timeout: Duration,
) -> Result<Vec<u8>, RendezvousError> {
    let request = Message::Fetch {
        token: token.into(),
        key: key.into(),
    };
    relay(master, secret, request, timeout).await
}
