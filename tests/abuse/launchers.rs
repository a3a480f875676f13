//! L1–L4: the launchers' rendezvous (node 0's master) against hostile peers, on 127.0.0.1,
//! with the real master, nodes and relay client of `launcher::rendezvous`.
use std::time::Duration;

use launcher::rendezvous::{fetch, join, publish, serve, NodeSpec, ServerSpec, NCCL_ID_KEY};
use protocol::JobSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::row;

fn secret() -> JobSecret {
    JobSecret::from_hex(&"5e".repeat(32), "test").unwrap()
}

fn stranger() -> JobSecret {
    JobSecret::from_hex(&"77".repeat(32), "test").unwrap()
}

async fn master(nnodes: usize, arrival: Duration) -> (String, ServerSpec, tokio::task::JoinHandle<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let spec = ServerSpec {
        arrival_timeout: arrival,
        heartbeat_timeout: Duration::from_secs(5),
        ..ServerSpec::new(nnodes, secret())
    };
    let server = tokio::spawn(serve(listener, spec.clone()));
    (
        addr,
        spec,
        tokio::spawn(async move { server.await.map(|r| r.is_ok()).unwrap_or(false) }),
    )
}

fn node(addr: &str, node_rank: usize, nnodes: usize, secret: JobSecret) -> NodeSpec {
    NodeSpec {
        timeout: Duration::from_secs(5),
        heartbeat_interval: Duration::from_millis(100),
        ..NodeSpec::new(addr, node_rank, nnodes, 1, secret)
    }
}

/// The first line the master sends a connection (its challenge), then whatever it answers
/// to `bytes`: empty when it closed without a word.
async fn send_before_auth(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut challenge = vec![0u8; 1];
    while challenge.last() != Some(&b'\n') {
        let mut byte = [0u8];
        stream.read_exact(&mut byte).await.unwrap();
        challenge.push(byte[0]);
    }
    let _ = stream.write_all(bytes).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(12), stream.read_to_end(&mut reply)).await;
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_a_node_with_another_secret_is_refused_and_the_world_forms() {
    let (addr, spec, _server) = master(2, Duration::from_secs(10)).await;
    let err = join(&node(&addr, 1, 2, stranger()))
        .await
        .err()
        .expect("a stranger is refused");
    assert!(err.to_string().contains("refused our proof of the job secret"), "{err}");
    let (spec0, spec1) = (node(&addr, 0, 2, secret()), node(&addr, 1, 2, secret()));
    let (a, b) = tokio::join!(join(&spec0), join(&spec1));
    let (a, b) = (a.expect("node 0"), b.expect("node 1"));
    assert_eq!(a.world().world_size, 2);
    assert_eq!(b.world().rank_start, 1);
    let rejected = spec.rejections.list();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].peer.ip().to_string(), "127.0.0.1");
    row(
        "L1",
        "a node with another job's secret",
        &format!("refused ({}); world of 2 formed", rejected[0].reason),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_oversized_garbage_and_early_requests_are_refused() {
    let (addr, spec, _server) = master(1, Duration::from_secs(30)).await;
    let long_line = vec![b'{'; 2 << 20];
    let register = b"{\"type\":\"register\",\"version\":1,\"node_rank\":0,\"nnodes\":1,\"nproc\":1,\"addr\":\"x\"}\n";
    for bytes in [&long_line[..], b"not json at all\n", register] {
        let reply = send_before_auth(&addr, bytes).await;
        assert!(reply.is_empty(), "answered {:?}", String::from_utf8_lossy(&reply));
    }
    let session = join(&node(&addr, 0, 1, secret()))
        .await
        .expect("the real node still joins");
    assert_eq!(session.world().world_size, 1);
    let reasons: Vec<String> = spec.rejections.list().into_iter().map(|r| r.reason).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("line longer than 1024 bytes"), "{reasons:?}");
    assert!(reasons[1].contains("unreadable answer"), "{reasons:?}");
    assert!(
        reasons[2].contains("sent register before authenticating"),
        "{reasons:?}"
    );
    row(
        "L2",
        "2 MiB line, garbage, register before auth",
        &format!("3 refused: {reasons:?}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l3_silent_connections_do_not_stall_the_world() {
    crate::raise_open_file_limit();
    let (addr, _spec, _server) = master(2, Duration::from_secs(10)).await;
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    let started = std::time::Instant::now();
    let (spec0, spec1) = (node(&addr, 0, 2, secret()), node(&addr, 1, 2, secret()));
    let (a, b) = tokio::join!(join(&spec0), join(&spec1));
    a.expect("node 0");
    b.expect("node 1");
    let formed = started.elapsed();
    assert!(
        formed < Duration::from_secs(3),
        "the world took {formed:?} behind silent connections"
    );
    drop(silent);
    row(
        "L3",
        "100 silent connections",
        &format!("world of 2 formed in {:.0} ms", formed.as_secs_f64() * 1e3),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_the_relay_refuses_strangers_and_overwrites() {
    let (addr, spec, _server) = master(1, Duration::from_secs(10)).await;
    let session = join(&node(&addr, 0, 1, secret())).await.expect("join");
    let token = session.world().run_token.clone();
    let timeout = Duration::from_secs(5);
    publish(&addr, &secret(), &token, NCCL_ID_KEY, b"the real id", timeout)
        .await
        .expect("publish");
    let err = fetch(&addr, &stranger(), &token, NCCL_ID_KEY, timeout)
        .await
        .expect_err("a stranger fetches");
    assert!(err.to_string().contains("refused our proof"), "{err}");
    let err = publish(&addr, &stranger(), &token, NCCL_ID_KEY, b"evil id", timeout)
        .await
        .expect_err("stranger");
    assert!(err.to_string().contains("refused our proof"), "{err}");
    let err = publish(&addr, &secret(), &token, NCCL_ID_KEY, b"evil id", timeout)
        .await
        .expect_err("overwrite");
    assert!(
        err.to_string().contains("already published with another value"),
        "{err}"
    );
    let id = fetch(&addr, &secret(), &token, NCCL_ID_KEY, timeout)
        .await
        .expect("fetch");
    assert_eq!(id, b"the real id");
    assert_eq!(spec.rejections.list().len(), 2);
    row(
        "L4",
        "relay: strangers; overwriting the NCCL id",
        "2 strangers refused; overwrite refused; id unchanged",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l5_a_flood_past_the_handshake_limit_delays_the_world_only_while_it_lasts() {
    crate::raise_open_file_limit();
    let (addr, spec, _server) = master(1, Duration::from_secs(20)).await;
    // 300 silent connections: 256 fill the master's handshakes in progress, 44 are turned away.
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let spec0 = NodeSpec {
        timeout: Duration::from_secs(20),
        ..node(&addr, 0, 1, secret())
    };
    let joining = tokio::spawn(async move { join(&spec0).await.map(|s| s.world().world_size) });
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(flood);
    assert_eq!(joining.await.unwrap().expect("the node joins once the flood stops"), 1);
    let waited = started.elapsed();
    let turned_away = spec
        .rejections
        .list()
        .iter()
        .filter(|r| r.reason.contains("handshakes already in progress"))
        .count();
    assert!(
        turned_away > 44,
        "the node was never turned away: {turned_away} refusals"
    );
    assert!(
        waited < Duration::from_secs(5),
        "joined {waited:?} after the flood began"
    );
    row(
        "L5",
        "300 silent connections (limit 256), dropped after 1 s",
        &format!(
            "{turned_away} turned away (the node's retries among them); world formed {:.1} s after it started",
            waited.as_secs_f64()
        ),
    );
}
