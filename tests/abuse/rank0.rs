//! R1–R4: the workers' own rendezvous (rank 0 at MASTER_ADDR:MASTER_PORT) against hostile
//! clients, on 127.0.0.1, with the real server and client of `trainer::dist::rendezvous`.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use protocol::hello::{decode_challenge, encode_hello, CHALLENGE_LEN};
use protocol::JobSecret;
use trainer::dist::rendezvous::{fetch, serve, ServeReport};

use crate::row;

fn secret() -> JobSecret {
    JobSecret::from_hex(&"ab".repeat(32), "test").unwrap()
}

fn stranger() -> JobSecret {
    JobSecret::from_hex(&"cd".repeat(32), "test").unwrap()
}

/// Rank 0 serving a world of `world` on a loopback port; its report comes back on join.
fn rank0(world: usize, payload: &'static [u8]) -> (SocketAddr, std::thread::JoinHandle<ServeReport>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let server = std::thread::spawn(move || serve(&listener, world, payload, &secret(), deadline).expect("rank 0"));
    (addr, server)
}

fn rank(addr: SocketAddr, rank: usize, world: usize) -> std::thread::JoinHandle<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    std::thread::spawn(move || fetch(&[addr], rank, world, &secret(), deadline).expect("a real rank"))
}

/// Waits until rank 0 has refused `n` connections (its report is read at the end, so the
/// refusals are made to happen before the last rank arrives).
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn r1_another_jobs_secret_is_refused_and_the_world_forms() {
    let (addr, server) = rank0(2, b"nccl-id");
    let deadline = Instant::now() + Duration::from_secs(5);
    let err = fetch(&[addr], 1, 2, &stranger(), deadline).expect_err("a stranger gets no id");
    settle();
    assert_eq!(rank(addr, 1, 2).join().unwrap(), b"nccl-id");
    let report = server.join().unwrap();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert_eq!(report.rejected[0].peer.ip().to_string(), "127.0.0.1");
    assert!(report.rejected[0].reason.contains("wrong proof"), "{report:?}");
    assert!(err.to_string().contains("FERROCLIP_JOB_SECRET"), "{err}");
    row(
        "R1",
        "another job's secret",
        &format!("refused ({}); world formed", report.rejected[0].reason),
    );
}

#[test]
fn r2_a_replayed_answer_is_refused() {
    let (addr, server) = rank0(2, b"nccl-id");
    // An answer that was valid on one connection (made with the secret for that
    // connection's challenge, as a recording of a real rank's would be) ...
    let mut first = TcpStream::connect(addr).unwrap();
    let mut challenge = [0u8; CHALLENGE_LEN];
    first.read_exact(&mut challenge).unwrap();
    let server_nonce = decode_challenge(&challenge).unwrap();
    let client_nonce = [9u8; 32];
    let hello = encode_hello(1, 2);
    let mut answer = hello.clone();
    answer.extend_from_slice(&client_nonce);
    answer.extend_from_slice(&secret().client_proof(&server_nonce, &client_nonce, &hello));
    drop(first);
    // ... replayed on a second connection, whose challenge differs.
    let mut replay = TcpStream::connect(addr).unwrap();
    replay.read_exact(&mut challenge).unwrap();
    replay.write_all(&answer).unwrap();
    let mut reply = Vec::new();
    replay.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = replay.read_to_end(&mut reply);
    assert!(reply.is_empty(), "the replay got an answer: {reply:?}");
    settle();
    assert_eq!(rank(addr, 1, 2).join().unwrap(), b"nccl-id");
    let report = server.join().unwrap();
    let reasons: Vec<&str> = report.rejected.iter().map(|r| r.reason.as_str()).collect();
    assert!(reasons.iter().any(|r| r.contains("wrong proof")), "{reasons:?}");
    row(
        "R2",
        "a recorded answer replayed",
        "refused (wrong proof); no bytes answered; world formed",
    );
}

#[test]
fn r3_silent_connections_do_not_stall_the_ranks() {
    crate::raise_open_file_limit();
    let (addr, server) = rank0(4, b"nccl-id");
    let silent: Vec<TcpStream> = (0..48).map(|_| TcpStream::connect(addr).unwrap()).collect();
    settle();
    let started = Instant::now();
    let ranks: Vec<_> = (1..4).map(|r| rank(addr, r, 4)).collect();
    for r in ranks {
        assert_eq!(r.join().unwrap(), b"nccl-id");
    }
    let admitted = started.elapsed();
    let report = server.join().unwrap();
    assert!(
        admitted < Duration::from_secs(3),
        "the ranks waited {admitted:?} behind silent connections"
    );
    drop(silent);
    row(
        "R3",
        "48 silent connections",
        &format!(
            "3 ranks admitted in {:.0} ms; {} refused so far",
            admitted.as_secs_f64() * 1e3,
            report.rejected.len()
        ),
    );
}

#[test]
fn r4_garbage_is_refused_and_the_world_forms() {
    let (addr, server) = rank0(2, b"nccl-id");
    let noise: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let hello_without_proof = {
        let mut bytes = encode_hello(1, 2);
        bytes.resize(80, 0);
        bytes
    };
    let sent: Vec<TcpStream> = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        noise,
        hello_without_proof,
    ]
    .into_iter()
    .map(|bytes| {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        s
    })
    .collect();
    settle();
    assert_eq!(rank(addr, 1, 2).join().unwrap(), b"nccl-id");
    let report = server.join().unwrap();
    let mut reasons: Vec<String> = report.rejected.iter().map(|r| r.reason.clone()).collect();
    reasons.sort();
    drop(sent);
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r == "closed before answering the challenge"),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r == "not a ferroclip hello"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("wrong proof")), "{reasons:?}");
    row(
        "R4",
        "HTTP, 1 MiB noise, hello without proof",
        &format!("3 refused: {reasons:?}; world formed"),
    );
}

#[test]
fn r5_a_flood_past_the_handshake_limit_delays_a_rank_only_while_it_lasts() {
    crate::raise_open_file_limit();
    let (addr, server) = rank0(2, b"nccl-id");
    // 80 silent connections: 64 fill rank 0's handshakes in progress, 16 are turned away.
    let flood: Vec<TcpStream> = (0..80).map(|_| TcpStream::connect(addr).unwrap()).collect();
    settle();
    let started = Instant::now();
    let real = rank(addr, 1, 2);
    // The rank is turned away and tries again until the flood stops.
    std::thread::sleep(Duration::from_secs(1));
    drop(flood);
    assert_eq!(real.join().unwrap(), b"nccl-id");
    let waited = started.elapsed();
    let report = server.join().unwrap();
    let turned_away = report
        .rejected
        .iter()
        .filter(|r| r.reason.contains("handshakes already in progress"))
        .count();
    assert!(
        turned_away > 16,
        "the rank was never turned away: {turned_away} refusals"
    );
    assert!(
        waited < Duration::from_secs(5),
        "admitted {waited:?} after the flood began"
    );
    row(
        "R5",
        "80 silent connections (limit 64), dropped after 1 s",
        &format!(
            "{turned_away} turned away (the rank's retries among them); rank admitted {:.1} s after it started",
            waited.as_secs_f64()
        ),
    );
}
