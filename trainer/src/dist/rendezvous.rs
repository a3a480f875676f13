//! A small TCP rendezvous: rank 0 hands a fixed-size blob (the NCCL unique id)
//! to every other rank, at `MASTER_ADDR:MASTER_PORT` as `ferroclip launch
//! --backend nccl` and torchrun set them. No MPI needed (the GPU machines have none).
//!
//! Protocol ([`protocol::hello`]): rank 0 listens; every other rank connects (retrying
//! until rank 0 is up) and sends `HELLO_MAGIC`, its rank and the world size (u32
//! big-endian). Once all `world_size - 1` ranks have said hello, rank 0 answers each with
//! the payload length (u32) and the payload. Rank 0 answers nobody until
//! everyone arrived, so a rank that never comes makes every rank fail at the
//! deadline with the missing ranks named, instead of some ranks entering a
//! collective initialisation that would wait forever.
//!
//! Under a static multi-node `ferroclip launch --nnodes`, the launchers already
//! run a rendezvous server (`launcher::rendezvous`, at `--master ADDR:PORT`)
//! and give every worker `FERROCLIP_RENDEZVOUS=ADDR:PORT` and
//! `FERROCLIP_RUN_TOKEN`. Then rank 0 does not listen itself: it publishes
//! the payload to that server's relay and the other ranks fetch it there, one
//! JSON line each way (`{"type":"publish","token":…,"key":…,"value_hex":…}` /
//! `{"type":"fetch","token":…,"key":…}`, answered by
//! `{"type":"value","key":…,"value_hex":…}` or `{"type":"error","reason":…}`:
//! [`protocol::Message`], which the launcher's rendezvous speaks too).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use protocol::hello::{
    decode_hello, decode_payload_len, encode_hello, encode_payload, HELLO_LEN, MAX_PAYLOAD, PAYLOAD_LEN_BYTES,
};
use protocol::{env, from_hex, to_hex, Message};

use super::DistError;

/// How long a rank may take to send its hello once connected.
const HELLO_PATIENCE: Duration = Duration::from_secs(10);
/// Pause between connection attempts while rank 0 is not listening yet.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Default for how long the rendezvous waits for all ranks.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

fn rendezvous_error(reason: String) -> DistError {
    DistError::Backend {
        backend: "rendezvous",
        reason,
    }
}

/// Where rank 0 listens and how long everyone waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// Host name or address of rank 0 (`MASTER_ADDR`).
    pub host: String,
    /// Port rank 0 listens on (`MASTER_PORT`).
    pub port: u16,
    /// Deadline for the whole exchange, counted from the call.
    pub timeout: Duration,
    /// The launcher's relay, when a multi-node launcher serves one
    /// (`FERROCLIP_RENDEZVOUS`); rank 0 then publishes there instead of listening.
    pub relay: Option<Relay>,
}

/// The launcher's rendezvous relay and this run's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// `HOST:PORT` of the launcher's rendezvous server (`FERROCLIP_RENDEZVOUS`).
    pub addr: String,
    /// The run token the launcher handed out (`FERROCLIP_RUN_TOKEN`).
    pub token: String,
}

/// The relay key of the payload (the NCCL unique id), as the launcher names it.
pub use protocol::NCCL_ID_KEY as RELAY_KEY;

impl Rendezvous {
    /// Reads `MASTER_ADDR`, `MASTER_PORT` and the optional
    /// `FERROCLIP_RENDEZVOUS_TIMEOUT_S` (seconds, default 300) through `lookup`.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Rendezvous, DistError> {
        let env_error = |var: &str, value: &str, reason: &str| DistError::Env {
            var: var.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let host = lookup(env::MASTER_ADDR)
            .filter(|h| !h.trim().is_empty())
            .ok_or_else(|| {
                env_error(
                    env::MASTER_ADDR,
                    "",
                    "is not set; the NCCL rendezvous needs rank 0's address",
                )
            })?;
        let port_text = lookup(env::MASTER_PORT).unwrap_or_default();
        let port = port_text
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| env_error(env::MASTER_PORT, &port_text, "expected a TCP port in 1..=65535"))?;
        let timeout = match lookup(env::RENDEZVOUS_TIMEOUT_S) {
            None => DEFAULT_TIMEOUT,
            Some(text) => text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    env_error(
                        env::RENDEZVOUS_TIMEOUT_S,
                        &text,
                        "expected a positive number of seconds",
                    )
                })?,
        };
        let relay = match lookup(env::RENDEZVOUS).filter(|a| !a.trim().is_empty()) {
            None => None,
            Some(addr) => {
                let token = lookup(env::RUN_TOKEN).filter(|t| !t.trim().is_empty()).ok_or_else(|| {
                    env_error(
                        env::RUN_TOKEN,
                        "",
                        &format!(
                            "is not set, but {} is (both come from ferroclip launch --nnodes)",
                            env::RENDEZVOUS
                        ),
                    )
                })?;
                Some(Relay {
                    addr: addr.trim().to_string(),
                    token: token.trim().to_string(),
                })
            }
        };
        Ok(Rendezvous {
            host: host.trim().to_string(),
            port,
            timeout,
            relay,
        })
    }

    /// [`Rendezvous::from_lookup`] over the process environment.
    pub fn from_env() -> Result<Rendezvous, DistError> {
        Rendezvous::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Rank 0 passes `Some(payload)` and gets it back; the other ranks pass
    /// `None` and get rank 0's payload. Rank 0 listens on every interface at
    /// `port` (so `MASTER_ADDR` may be any name of its host); the others
    /// connect to `host:port`.
    pub fn broadcast_from_rank0(
        &self,
        rank: usize,
        world_size: usize,
        payload: Option<&[u8]>,
    ) -> Result<Vec<u8>, DistError> {
        let deadline = Instant::now() + self.timeout;
        if let Some(relay) = &self.relay {
            return match (rank, payload) {
                (0, Some(payload)) => {
                    relay_request(relay, "publish", Some(payload), deadline)?;
                    Ok(payload.to_vec())
                }
                (0, None) => Err(rendezvous_error("rank 0 must provide the payload".into())),
                (_, Some(_)) => Err(rendezvous_error(format!(
                    "rank {rank} must not provide a payload; rank 0 does"
                ))),
                (_, None) => relay_request(relay, "fetch", None, deadline),
            };
        }
        match (rank, payload) {
            (0, Some(payload)) => {
                let listener = TcpListener::bind(("0.0.0.0", self.port)).map_err(|e| {
                    rendezvous_error(format!("rank 0 cannot listen on port {} (MASTER_PORT): {e}", self.port))
                })?;
                serve(&listener, world_size, payload, deadline)?;
                Ok(payload.to_vec())
            }
            (0, None) => Err(rendezvous_error("rank 0 must provide the payload".into())),
            (_, Some(_)) => Err(rendezvous_error(format!(
                "rank {rank} must not provide a payload; rank 0 does"
            ))),
            (_, None) => {
                let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
                    .to_socket_addrs()
                    .map_err(|e| rendezvous_error(format!("cannot resolve MASTER_ADDR {:?}: {e}", self.host)))?
                    .collect();
                fetch(&addrs, rank, world_size, deadline)
            }
        }
    }
}

/// Rank 0's side: accepts the hellos of ranks `1..world_size` on `listener`
/// until `deadline`, then sends `payload` to each.
pub fn serve(listener: &TcpListener, world_size: usize, payload: &[u8], deadline: Instant) -> Result<(), DistError> {
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
    let mut arrived: BTreeMap<u32, TcpStream> = BTreeMap::new();
    while arrived.len() + 1 < world_size {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let hello = stream
                    .set_nonblocking(false)
                    .and_then(|_| stream.set_read_timeout(Some(HELLO_PATIENCE.min(remaining(deadline)))))
                    .and_then(|_| read_hello(&mut stream));
                match hello {
                    // A connection that is not one of ours (a port scan, a health check) is dropped.
                    Ok(None) | Err(_) => {}
                    Ok(Some((rank, claimed_world))) => {
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
                        if arrived.insert(rank, stream).is_some() {
                            return Err(rendezvous_error(format!(
                                "rank {rank} arrived twice (the second from {peer})"
                            )));
                        }
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (1..world)
                        .filter(|r| !arrived.contains_key(r))
                        .map(|r| r.to_string())
                        .collect();
                    return Err(rendezvous_error(format!(
                        "timed out waiting for rank(s) {} of {world} to connect to rank 0",
                        missing.join(", ")
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(rendezvous_error(format!("accept: {e}"))),
        }
    }
    let message = encode_payload(payload);
    for (rank, mut stream) in arrived {
        stream
            .write_all(&message)
            .and_then(|_| stream.flush())
            .map_err(|e| rendezvous_error(format!("sending the payload to rank {rank}: {e}")))?;
    }
    Ok(())
}

/// `Ok(Some((rank, world)))` for a well-formed hello, `Ok(None)` for anything else.
fn read_hello(stream: &mut TcpStream) -> std::io::Result<Option<(u32, u32)>> {
    let mut hello = [0u8; HELLO_LEN];
    stream.read_exact(&mut hello)?;
    Ok(decode_hello(&hello))
}

fn remaining(deadline: Instant) -> Duration {
    // A zero timeout means "block forever" to std, so never return zero.
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// A non-zero rank's side: connects to rank 0 at one of `addrs` (retrying
/// until `deadline`), says hello and waits for the payload.
pub fn fetch(addrs: &[SocketAddr], rank: usize, world_size: usize, deadline: Instant) -> Result<Vec<u8>, DistError> {
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
    let mut stream = connect_with_retries(addrs, deadline, String::new()).map_err(|last_error| {
        rendezvous_error(format!(
            "rank {rank}: timed out connecting to rank 0 (last attempt: {last_error})"
        ))
    })?;
    let io = |what: &str, e: std::io::Error| {
        let reason = if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            "timed out (is every rank started?)".to_string()
        } else if e.kind() == ErrorKind::UnexpectedEof {
            "rank 0 closed the connection (it failed or gave up; see its log)".to_string()
        } else {
            e.to_string()
        };
        rendezvous_error(format!("rank {rank}: {what}: {reason}"))
    };
    let hello = encode_hello(rank32, world32);
    stream.write_all(&hello).map_err(|e| io("sending hello", e))?;
    stream
        .set_read_timeout(Some(remaining(deadline)))
        .map_err(|e| io("socket", e))?;
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
    Ok(payload)
}

/// A connection to the first of `addrs` that answers, retrying until `deadline`; on time-out
/// the last attempt's error (`no_attempt` when there was none).
fn connect_with_retries(addrs: &[SocketAddr], deadline: Instant, no_attempt: String) -> Result<TcpStream, String> {
    let mut last_error = no_attempt;
    loop {
        if let Some(stream) = addrs.iter().find_map(|addr| {
            TcpStream::connect_timeout(addr, remaining(deadline).min(Duration::from_secs(5)))
                .map_err(|e| last_error = format!("{addr}: {e}"))
                .ok()
        }) {
            return Ok(stream);
        }
        if Instant::now() >= deadline {
            return Err(last_error);
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

/// One request to the launcher's relay: `publish` (with `value`) or `fetch`;
/// returns the value the relay answers with. Connects with retries until
/// `deadline`, then waits for the answer until `deadline`.
fn relay_request(relay: &Relay, kind: &str, value: Option<&[u8]>, deadline: Instant) -> Result<Vec<u8>, DistError> {
    let fail = |reason: String| rendezvous_error(format!("relay {} ({kind}): {reason}", relay.addr));
    let addrs: Vec<SocketAddr> = relay
        .addr
        .to_socket_addrs()
        .map_err(|e| fail(format!("cannot resolve {}: {e}", env::RENDEZVOUS)))?
        .collect();
    let no_address = format!("{} resolves to no address", env::RENDEZVOUS);
    let mut stream = connect_with_retries(&addrs, deadline, no_address)
        .map_err(|last_error| fail(format!("timed out connecting (last attempt: {last_error})")))?;
    let request = match value {
        Some(value) => Message::Publish {
            token: relay.token.clone(),
            key: RELAY_KEY.into(),
            value_hex: to_hex(value),
        },
        None => Message::Fetch {
            token: relay.token.clone(),
            key: RELAY_KEY.into(),
        },
    };
    let line = request
        .to_request_line()
        .map_err(|e| fail(format!("encoding the request: {e}")))?;
    stream
        .write_all(line.as_bytes())
        .and_then(|_| stream.set_read_timeout(Some(remaining(deadline))))
        .map_err(|e| fail(format!("sending the request: {e}")))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .take(2 * MAX_PAYLOAD as u64 + 1024)
        .read_line(&mut answer)
        .map_err(|e| {
            fail(if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                "timed out waiting for the answer (did rank 0 start?)".into()
            } else {
                e.to_string()
            })
        })?;
    let answer: serde_json::Value =
        serde_json::from_str(answer.trim_end()).map_err(|e| fail(format!("unreadable answer {answer:?}: {e}")))?;
    match serde_json::from_value::<Message>(answer.clone()) {
        Ok(Message::Value { value_hex, .. }) => {
            from_hex(&value_hex).ok_or_else(|| fail("the answer's value is not hex".into()))
        }
        Ok(Message::Error { reason }) => Err(fail(reason)),
        _ => Err(fail(format!("unexpected answer {answer}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn local_listener() -> (TcpListener, Vec<SocketAddr>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        (listener, vec![addr])
    }

    #[test]
    fn every_rank_gets_rank0s_payload() {
        let (listener, addrs) = local_listener();
        let payload: Vec<u8> = (0..128u32).map(|i| (i * 7 % 251) as u8).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        let clients: Vec<_> = (1..4)
            .map(|rank| {
                let addrs = addrs.clone();
                std::thread::spawn(move || fetch(&addrs, rank, 4, deadline))
            })
            .collect();
        serve(&listener, 4, &payload, deadline).expect("serve");
        for client in clients {
            let got = client.join().expect("client thread").expect("fetch");
            assert_eq!(got, payload);
        }
    }

    #[test]
    fn client_started_before_rank0_retries() {
        // Reserve a port, free it, let the client try first, then listen on it.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let rdv = Rendezvous {
            host: "127.0.0.1".into(),
            port,
            timeout: Duration::from_secs(20),
            relay: None,
        };
        let client = {
            let rdv = rdv.clone();
            std::thread::spawn(move || rdv.broadcast_from_rank0(1, 2, None))
        };
        std::thread::sleep(Duration::from_millis(300));
        let id = [42u8; 128];
        assert_eq!(rdv.broadcast_from_rank0(0, 2, Some(&id)).expect("rank 0"), id.to_vec());
        assert_eq!(client.join().expect("thread").expect("rank 1"), id.to_vec());
    }

    #[test]
    fn a_rank_that_never_arrives_times_out_on_every_side() {
        let (listener, addrs) = local_listener();
        let deadline = Instant::now() + Duration::from_millis(800);
        // World of 3: rank 1 comes, rank 2 never does.
        let client = std::thread::spawn(move || fetch(&addrs, 1, 3, deadline));
        let err = serve(&listener, 3, &[1, 2, 3], deadline).expect_err("rank 2 is missing");
        assert!(err.to_string().contains("rank(s) 2 of 3"), "{err}");
        drop(listener);
        let err = client.join().expect("thread").expect_err("rank 1 gets nothing");
        assert!(err.to_string().contains("rank 1"), "{err}");
    }

    #[test]
    fn nobody_listening_times_out() {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let started = Instant::now();
        let err = fetch(&[port], 1, 2, Instant::now() + Duration::from_millis(300)).expect_err("no rank 0");
        assert!(err.to_string().contains("timed out connecting"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn stray_connections_are_ignored_and_bad_worlds_rejected() {
        let (listener, addrs) = local_listener();
        let deadline = Instant::now() + Duration::from_secs(20);
        let stray = {
            let addr = addrs[0];
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
            })
        };
        stray.join().expect("stray");
        let client = {
            let addrs = addrs.clone();
            std::thread::spawn(move || fetch(&addrs, 1, 2, deadline))
        };
        serve(&listener, 2, b"id", deadline).expect("serve despite the stray");
        assert_eq!(client.join().expect("thread").expect("fetch"), b"id".to_vec());

        let (listener, addrs) = local_listener();
        let client = std::thread::spawn(move || fetch(&addrs, 1, 3, deadline));
        let err = serve(&listener, 2, b"id", deadline).expect_err("world mismatch");
        assert!(err.to_string().contains("world size is 3"), "{err}");
        drop(listener);
        assert!(client.join().expect("thread").is_err());
    }

    /// A stand-in for the launcher's relay: answers each connection's one JSON
    /// line by the launcher's rules (publish stores, fetch returns), checking the token.
    fn fake_relay(token: &'static str, connections: usize) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = std::thread::spawn(move || {
            let mut stored: Option<String> = None;
            let mut waiting = Vec::new();
            let mut requests = Vec::new();
            for _ in 0..connections {
                let (stream, _) = listener.accept().expect("accept");
                let mut line = String::new();
                BufReader::new(stream.try_clone().expect("clone"))
                    .read_line(&mut line)
                    .expect("read");
                requests.push(line.trim_end().to_string());
                let request: serde_json::Value = serde_json::from_str(&line).expect("json");
                if request["token"] != token {
                    let mut s = stream;
                    let _ = s.write_all(b"{\"type\":\"error\",\"reason\":\"run token mismatch\"}\n");
                    continue;
                }
                // The publisher is answered with an echo of its value, as the launcher does.
                if request["type"] == "publish" {
                    stored = request["value_hex"].as_str().map(String::from);
                }
                waiting.push(stream);
                if let Some(hex) = &stored {
                    let answer = format!("{{\"type\":\"value\",\"key\":\"{RELAY_KEY}\",\"value_hex\":\"{hex}\"}}\n");
                    for mut s in waiting.drain(..) {
                        s.write_all(answer.as_bytes()).expect("answer");
                    }
                }
            }
            requests
        });
        (addr, server)
    }

    #[test]
    fn under_a_multi_node_launcher_the_payload_goes_through_its_relay() {
        let (addr, server) = fake_relay("tok", 3);
        let env = |rank: &str| {
            let vars: HashMap<String, String> = [
                ("MASTER_ADDR", "127.0.0.1"),
                ("MASTER_PORT", "1"),
                ("FERROCLIP_RENDEZVOUS", addr.as_str()),
                ("FERROCLIP_RUN_TOKEN", "tok"),
                ("RANK", rank),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            Rendezvous::from_lookup(&|name| vars.get(name).cloned()).expect("env")
        };
        let rdv = env("1");
        assert_eq!(rdv.relay.as_ref().map(|r| r.token.as_str()), Some("tok"));
        // Ranks 1 and 2 ask before rank 0 publishes.
        let fetchers: Vec<_> = (1..3)
            .map(|rank| {
                let rdv = rdv.clone();
                std::thread::spawn(move || rdv.broadcast_from_rank0(rank, 3, None))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let id = [0u8, 1, 0xfe, 0xff];
        assert_eq!(
            env("0").broadcast_from_rank0(0, 3, Some(&id)).expect("publish"),
            id.to_vec()
        );
        for fetcher in fetchers {
            assert_eq!(fetcher.join().expect("thread").expect("fetch"), id.to_vec());
        }
        let requests = server.join().expect("server");
        assert!(
            requests.contains(
                &r#"{"key":"nccl_unique_id","token":"tok","type":"publish","value_hex":"0001feff"}"#.to_string()
            ),
            "{requests:?}"
        );

        let (addr, _server) = fake_relay("tok", 1);
        let stale = Rendezvous {
            relay: Some(Relay {
                addr,
                token: "old".into(),
            }),
            ..rdv
        };
        let err = stale.broadcast_from_rank0(1, 3, None).expect_err("stale token");
        assert!(err.to_string().contains("run token mismatch"), "{err}");

        let missing_token = Rendezvous::from_lookup(&|name| match name {
            "MASTER_ADDR" => Some("h".into()),
            "MASTER_PORT" => Some("1".into()),
            "FERROCLIP_RENDEZVOUS" => Some("h:1".into()),
            _ => None,
        });
        assert!(
            matches!(missing_token, Err(DistError::Env { ref var, .. }) if var == "FERROCLIP_RUN_TOKEN"),
            "{missing_token:?}"
        );
    }

    #[test]
    fn environment_is_validated() {
        let env = |vars: &[(&str, &str)]| {
            let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Rendezvous::from_lookup(&|name| map.get(name).cloned())
        };
        let rdv = env(&[("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500")]).expect("valid");
        assert_eq!(
            (rdv.host.as_str(), rdv.port, rdv.timeout),
            ("10.0.0.1", 29500, DEFAULT_TIMEOUT)
        );
        let rdv = env(&[
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
            ("FERROCLIP_RENDEZVOUS_TIMEOUT_S", "2.5"),
        ])
        .expect("timeout");
        assert_eq!(rdv.timeout, Duration::from_millis(2500));
        for (vars, bad) in [
            (vec![("MASTER_PORT", "1")], "MASTER_ADDR"),
            (vec![("MASTER_ADDR", "h")], "MASTER_PORT"),
            (vec![("MASTER_ADDR", "h"), ("MASTER_PORT", "70000")], "MASTER_PORT"),
            (vec![("MASTER_ADDR", "h"), ("MASTER_PORT", "0")], "MASTER_PORT"),
            (
                vec![
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "1"),
                    ("FERROCLIP_RENDEZVOUS_TIMEOUT_S", "-1"),
                ],
                "FERROCLIP_RENDEZVOUS_TIMEOUT_S",
            ),
        ] {
            match env(&vars) {
                Err(DistError::Env { var, .. }) => assert_eq!(var, bad),
                other => panic!("{vars:?}: expected an error naming {bad}, got {other:?}"),
            }
        }
    }
}
