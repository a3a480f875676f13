//! The workers' own exchange at `MASTER_ADDR:MASTER_PORT`: rank 0's server ([`serve`]) and
//! the other ranks' client ([`fetch`]), both opening every connection with the job
//! secret's challenge–response ([`protocol::auth`], frames in [`protocol::hello`]).
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use protocol::auth::{nonce, MAC_BYTES, NONCE_BYTES};
use protocol::hello::{
    decode_challenge, decode_hello, decode_payload_len, encode_challenge, encode_hello, encode_payload, AUTH_HELLO_LEN,
    CHALLENGE_LEN, HELLO_LEN, MAX_PAYLOAD, PAYLOAD_LEN_BYTES,
};
use protocol::JobSecret;

use super::net::{connect_with_retries, remaining, rendezvous_error};
use crate::dist::DistError;

/// Pause before a rank tries again after rank 0 turned its connection away unread.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long a connection may take to answer the challenge.
const HELLO_PATIENCE: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; a connection beyond them is closed unanswered (a flood
/// of connections costs rank 0 this many threads at most).
const MAX_PENDING_HANDSHAKES: usize = 64;

/// A connection rank 0 refused, with why (also logged as a warning naming the peer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Where the connection came from.
    pub peer: SocketAddr,
    /// What was wrong: no answer in time, not a hello, a wrong proof, too many at once.
    pub reason: String,
}

/// Refusals logged one by one; after these, one line says the rest are only counted.
const MAX_LOGGED_REJECTIONS: usize = 100;
/// Refusals kept in [`ServeReport::rejected`].
const MAX_KEPT_REJECTIONS: usize = 10_000;

/// What rank 0's exchange saw besides the ranks it admitted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeReport {
    /// The connections refused, in the order they were (the first 10,000).
    pub rejected: Vec<Rejection>,
    /// Every connection refused.
    pub refused: usize,
}

impl ServeReport {
    fn reject(&mut self, peer: SocketAddr, reason: String) {
        self.refused += 1;
        match self.refused {
            n if n <= MAX_LOGGED_REJECTIONS => tracing::warn!(%peer, %reason, "rendezvous: refused a connection"),
            n if n == MAX_LOGGED_REJECTIONS + 1 => {
                tracing::warn!("rendezvous: refused {n} connections; further refusals are only counted")
            }
            _ => {}
        }
        if self.rejected.len() < MAX_KEPT_REJECTIONS {
            self.rejected.push(Rejection { peer, reason });
        }
    }
}

/// A rank that proved the secret: its connection and the nonces rank 0's answer is bound to.
struct Admitted {
    rank: u32,
    world: u32,
    stream: TcpStream,
    nonces: ([u8; NONCE_BYTES], [u8; NONCE_BYTES]),
}

/// Rank 0's side: admits ranks `1..world_size` on `listener` until `deadline` — each
/// connection gets a challenge and must answer with a hello and a proof of `secret` —
/// then sends `payload`, with rank 0's own proof, to each. Connections that fail the
/// handshake are refused and logged; the exchange goes on. A rank that proved the secret
/// but claims another world size, an impossible rank or a rank already taken is an error
/// (the job's ranks disagree).
pub fn serve(
    listener: &TcpListener,
    world_size: usize,
    payload: &[u8],
    secret: &JobSecret,
    deadline: Instant,
) -> Result<ServeReport, DistError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(rendezvous_error(format!(
            "payload of {} bytes exceeds {MAX_PAYLOAD}",
            payload.len()
        )));
    }
    let world =
        u32::try_from(world_size).map_err(|_| rendezvous_error(format!("world size {world_size} too large")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| rendezvous_error(format!("listener: {e}")))?;
    let mut report = ServeReport::default();
    let (outcomes_tx, outcomes) = mpsc::channel::<(SocketAddr, Result<Admitted, String>)>();
    let pending = Arc::new(AtomicUsize::new(0));
    let mut arrived: BTreeMap<u32, Admitted> = BTreeMap::new();
    while arrived.len() + 1 < world_size {
        while let Ok((peer, outcome)) = outcomes.try_recv() {
            match outcome {
                Err(reason) => report.reject(peer, reason),
                Ok(admitted) => admit(&mut arrived, admitted, world, peer)?,
            }
        }
        if arrived.len() + 1 >= world_size {
            break;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if pending.load(Ordering::SeqCst) >= MAX_PENDING_HANDSHAKES {
                    drop(stream);
                    report.reject(peer, format!("{MAX_PENDING_HANDSHAKES} handshakes already in progress"));
                    continue;
                }
                pending.fetch_add(1, Ordering::SeqCst);
                let (tx, pending_now, secret) = (outcomes_tx.clone(), pending.clone(), secret.clone());
                let spawned = std::thread::Builder::new()
                    .name("rendezvous-handshake".into())
                    .spawn(move || {
                        let outcome = handshake(stream, &secret, deadline);
                        pending_now.fetch_sub(1, Ordering::SeqCst);
                        let _ = tx.send((peer, outcome));
                    });
                if let Err(e) = spawned {
                    // Out of threads (a flood, or a crowded host): this connection is dropped.
                    pending.fetch_sub(1, Ordering::SeqCst);
                    report.reject(peer, format!("no thread for its handshake: {e}"));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (1..world)
                        .filter(|r| !arrived.contains_key(r))
                        .map(|r| r.to_string())
                        .collect();
                    return Err(rendezvous_error(format!(
                        "timed out waiting for rank(s) {} of {world} to connect to rank 0{}",
                        missing.join(", "),
                        refused_note(&report)
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            // Out of file descriptors and the like (a flood of connections): back off and
            // go on, so that the ranks still get in once it passes.
            Err(e) => {
                if Instant::now() >= deadline {
                    return Err(rendezvous_error(format!("accept: {e}")));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let frame = encode_payload(payload);
    for (rank, mut admitted) in arrived {
        let (server_nonce, client_nonce) = admitted.nonces;
        let proof = secret.server_proof(&server_nonce, &client_nonce, payload);
        admitted
            .stream
            .write_all(&frame)
            .and_then(|_| admitted.stream.write_all(&proof))
            .and_then(|_| admitted.stream.flush())
            .map_err(|e| rendezvous_error(format!("sending the payload to rank {rank}: {e}")))?;
    }
    Ok(report)
}

/// ", after refusing N connection(s) (last: …)" when some were refused: a rank whose secret
/// differs shows up there, not as a rank.
fn refused_note(report: &ServeReport) -> String {
    match report.rejected.last() {
        None => String::new(),
        Some(last) => format!(
            "; refused {} connection(s) that did not prove the job secret (last kept from {}: {})",
            report.refused, last.peer, last.reason
        ),
    }
}

/// Records an admitted rank, or the error when the job's ranks disagree.
fn admit(
    arrived: &mut BTreeMap<u32, Admitted>,
    admitted: Admitted,
    world: u32,
    peer: SocketAddr,
) -> Result<(), DistError> {
    let (rank, claimed_world) = (admitted.rank, admitted.world);
    if claimed_world != world {
        return Err(rendezvous_error(format!(
            "rank {rank} (from {peer}) says the world size is {claimed_world}, rank 0 says {world}"
        )));
    }
    if rank == 0 || rank >= world {
        return Err(rendezvous_error(format!(
            "a worker at {peer} claims rank {rank} of {world}"
        )));
    }
    if arrived.insert(rank, admitted).is_some() {
        return Err(rendezvous_error(format!(
            "rank {rank} arrived twice (the second from {peer})"
        )));
    }
    Ok(())
}

/// One connection's handshake: challenge, then an authenticated hello within
/// [`HELLO_PATIENCE`] (and before `deadline`); `Err` says why it was refused.
fn handshake(mut stream: TcpStream, secret: &JobSecret, deadline: Instant) -> Result<Admitted, String> {
    let patience = HELLO_PATIENCE.min(remaining(deadline));
    stream
        .set_nonblocking(false)
        .and_then(|_| stream.set_read_timeout(Some(patience)))
        .and_then(|_| stream.set_write_timeout(Some(patience)))
        .map_err(|e| format!("socket: {e}"))?;
    let server_nonce = nonce().map_err(|e| e.to_string())?;
    stream
        .write_all(&encode_challenge(&server_nonce))
        .map_err(|e| format!("sending the challenge: {e}"))?;
    let mut answer = [0u8; AUTH_HELLO_LEN];
    stream.read_exact(&mut answer).map_err(|e| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            format!("no answer to the challenge within {:.1}s", patience.as_secs_f64())
        }
        ErrorKind::UnexpectedEof => "closed before answering the challenge".to_string(),
        _ => format!("reading the answer: {e}"),
    })?;
    let hello: [u8; HELLO_LEN] = answer[..HELLO_LEN].try_into().expect("HELLO_LEN bytes");
    let (rank, world) = decode_hello(&hello).ok_or("not a ferroclip hello")?;
    let client_nonce: [u8; NONCE_BYTES] = answer[HELLO_LEN..HELLO_LEN + NONCE_BYTES]
        .try_into()
        .expect("NONCE_BYTES bytes");
    let proof = &answer[HELLO_LEN + NONCE_BYTES..];
    if !secret.check_client_proof(&server_nonce, &client_nonce, &hello, proof) {
        return Err(format!(
            "a hello for rank {rank} of {world} with a wrong proof (another job's secret, or a replay)"
        ));
    }
    Ok(Admitted {
        rank,
        world,
        stream,
        nonces: (server_nonce, client_nonce),
    })
}

/// A non-zero rank's side: connects to rank 0 at one of `addrs` (retrying until
/// `deadline`), answers its challenge with a hello proving `secret`, and waits for the
/// payload, which it accepts only with rank 0's proof.
pub fn fetch(
    addrs: &[SocketAddr],
    rank: usize,
    world_size: usize,
    secret: &JobSecret,
    deadline: Instant,
) -> Result<Vec<u8>, DistError> {
    let (rank32, world32) = match (u32::try_from(rank), u32::try_from(world_size)) {
        (Ok(r), Ok(w)) if r > 0 && r < w => (r, w),
        _ => {
            return Err(rendezvous_error(format!(
                "rank {rank} of {world_size} cannot fetch from rank 0"
            )))
        }
    };
    if addrs.is_empty() {
        return Err(rendezvous_error("MASTER_ADDR resolves to no address".into()));
    }
    let io = |what: &str, e: std::io::Error| {
        let reason = if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            "timed out (is every rank started?)".to_string()
        } else if e.kind() == ErrorKind::UnexpectedEof {
            "rank 0 closed the connection (it failed or gave up, or refused this rank's proof: \
             do all ranks have the same FERROCLIP_JOB_SECRET? see rank 0's log)"
                .to_string()
        } else {
            e.to_string()
        };
        rendezvous_error(format!("rank {rank}: {what}: {reason}"))
    };
    // A connection closed before rank 0's challenge was turned away unread (rank 0 at its
    // limit of handshakes in progress, e.g. under a flood of connections): try again.
    let (mut stream, challenge) = loop {
        let mut stream = connect_with_retries(addrs, deadline, String::new()).map_err(|last_error| {
            rendezvous_error(format!(
                "rank {rank}: timed out connecting to rank 0 (last attempt: {last_error})"
            ))
        })?;
        stream
            .set_read_timeout(Some(remaining(deadline)))
            .map_err(|e| io("socket", e))?;
        let mut challenge = [0u8; CHALLENGE_LEN];
        match stream.read_exact(&mut challenge) {
            Ok(()) => break (stream, challenge),
            Err(e)
                if matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset)
                    && Instant::now() + RETRY_PAUSE < deadline =>
            {
                std::thread::sleep(RETRY_PAUSE)
            }
            Err(e) => return Err(io("waiting for rank 0's challenge", e)),
        }
    };
    let server_nonce = decode_challenge(&challenge).ok_or_else(|| {
        rendezvous_error(format!(
            "rank {rank}: what answers at MASTER_ADDR:MASTER_PORT is not a ferroclip rank 0 (no challenge)"
        ))
    })?;
    let client_nonce = nonce().map_err(|e| rendezvous_error(e.to_string()))?;
    let hello = encode_hello(rank32, world32);
    let mut answer = hello.clone();
    answer.extend_from_slice(&client_nonce);
    answer.extend_from_slice(&secret.client_proof(&server_nonce, &client_nonce, &hello));
    stream.write_all(&answer).map_err(|e| io("sending hello", e))?;
    let mut len = [0u8; PAYLOAD_LEN_BYTES];
    stream.read_exact(&mut len).map_err(|e| io("waiting for rank 0", e))?;
    let len = decode_payload_len(len);
    if len > MAX_PAYLOAD {
        return Err(rendezvous_error(format!(
            "rank {rank}: rank 0 announced {len} bytes (garbled?)"
        )));
    }
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .map_err(|e| io("reading the payload", e))?;
    let mut proof = [0u8; MAC_BYTES];
    stream
        .read_exact(&mut proof)
        .map_err(|e| io("reading rank 0's proof", e))?;
    if !secret.check_server_proof(&server_nonce, &client_nonce, &payload, &proof) {
        return Err(rendezvous_error(format!(
            "rank {rank}: the payload from rank 0 fails the job secret's proof (not this job's rank 0?)"
        )));
    }
    Ok(payload)
}
