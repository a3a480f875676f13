//! The rendezvous on 127.0.0.1 with several nodes as tasks in one runtime.
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::*;

/// A server for `nnodes` on a free loopback port; returns its `HOST:PORT`.
async fn start_server(spec: ServerSpec) -> (String, JoinHandle<Result<Vec<NodeInfo>, RendezvousError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr").to_string();
    (addr, tokio::spawn(serve(listener, spec)))
}

fn secret() -> protocol::JobSecret {
    protocol::JobSecret::from_hex(&"5e".repeat(32), "test").unwrap()
}

fn fast_server(nnodes: usize) -> ServerSpec {
    ServerSpec {
        arrival_timeout: Duration::from_secs(10),
        heartbeat_timeout: Duration::from_secs(5),
        ..ServerSpec::new(nnodes, secret())
    }
}

fn node(master: &str, node_rank: usize, nnodes: usize, nproc: usize) -> NodeSpec {
    NodeSpec {
        timeout: Duration::from_secs(10),
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_secs(5),
        ..NodeSpec::new(master, node_rank, nnodes, nproc, secret())
    }
}

/// Joins every spec concurrently.
async fn join_all(specs: Vec<NodeSpec>) -> Vec<Result<NodeSession, RendezvousError>> {
    let tasks: Vec<_> = specs
        .into_iter()
        .map(|spec| tokio::spawn(async move { join(&spec).await }))
        .collect();
    let mut sessions = Vec::new();
    for task in tasks {
        sessions.push(task.await.expect("join task"));
    }
    sessions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_world_is_formed_in_node_order_with_a_barrier_and_a_clean_finish() {
    let (addr, server) = start_server(fast_server(3)).await;
    // Nodes arrive out of order, with different worker counts.
    let sessions = join_all(vec![node(&addr, 2, 3, 3), node(&addr, 0, 3, 2), node(&addr, 1, 3, 1)]).await;
    let mut sessions: Vec<NodeSession> = sessions.into_iter().map(|s| s.expect("join")).collect();
    let places: Vec<(usize, usize, usize)> = sessions
        .iter()
        .map(|s| (s.world().node_rank, s.world().rank_start, s.world().nproc))
        .collect();
    assert_eq!(places, [(2, 3, 3), (0, 0, 2), (1, 2, 1)]);
    assert!(sessions.iter().all(|s| s.world().world_size == 6));
    let token = &sessions[0].world().run_token;
    assert_eq!(token.len(), 32);
    assert!(sessions.iter().all(|s| &s.world().run_token == token));
    assert_eq!(
        sessions[0]
            .world()
            .nodes
            .iter()
            .map(|n| n.addr.as_str())
            .collect::<Vec<_>>(),
        ["127.0.0.1"; 3]
    );

    // The barrier holds the early nodes until the last one arrives.
    let mut last = sessions.pop().expect("three sessions");
    let early: Vec<_> = sessions
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                s.barrier("workers-start")
                    .await
                    .map(|_| (tokio::time::Instant::now(), s))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last_arrived = tokio::time::Instant::now();
    last.barrier("workers-start").await.expect("barrier");
    let mut sessions = vec![last];
    for task in early {
        let (released, session) = task.await.expect("task").expect("barrier");
        assert!(released >= last_arrived, "released before the last node arrived");
        sessions.push(session);
    }

    let finishing: Vec<_> = sessions
        .into_iter()
        .map(|mut s| tokio::spawn(async move { s.finish(true, String::new()).await }))
        .collect();
    for task in finishing {
        task.await.expect("task").expect("finished");
    }
    let nodes = server.await.expect("server task").expect("server");
    assert_eq!(nodes.iter().map(|n| n.rank_start).collect::<Vec<_>>(), [0, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_hands_rank0s_id_to_fetchers_that_came_first() {
    let (addr, _server) = start_server(fast_server(1)).await;
    let session = join(&node(&addr, 0, 1, 2)).await.expect("join");
    let token = session.world().run_token.clone();
    let fetchers: Vec<_> = (0..2)
        .map(|_| {
            let (addr, token) = (addr.clone(), token.clone());
            tokio::spawn(async move { fetch(&addr, &secret(), &token, NCCL_ID_KEY, Duration::from_secs(10)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id: Vec<u8> = (0..128u32).map(|i| (i * 13 % 256) as u8).collect();
    publish(&addr, &secret(), &token, NCCL_ID_KEY, &id, Duration::from_secs(10))
        .await
        .expect("publish");
    for fetcher in fetchers {
        assert_eq!(fetcher.await.expect("task").expect("fetch"), id);
    }
    let err = fetch(&addr, &secret(), "another-run", NCCL_ID_KEY, Duration::from_secs(10))
        .await
        .expect_err("stale token");
    assert!(err.to_string().contains("run token mismatch"), "{err}");
    let err = fetch(&addr, &secret(), &token, "never-published", Duration::from_millis(300))
        .await
        .expect_err("nothing published");
    assert!(err.to_string().contains("no answer within 0.3s"), "{err}");
    // The id is set once: the same value again is a harmless retry, another is refused.
    publish(&addr, &secret(), &token, NCCL_ID_KEY, &id, Duration::from_secs(10))
        .await
        .expect("republishing the same id");
    let err = publish(
        &addr,
        &secret(),
        &token,
        NCCL_ID_KEY,
        b"swapped",
        Duration::from_secs(10),
    )
    .await
    .expect_err("overwriting the id");
    assert!(
        err.to_string().contains("already published with another value"),
        "{err}"
    );
    let fetched = fetch(&addr, &secret(), &token, NCCL_ID_KEY, Duration::from_secs(10)).await;
    assert_eq!(fetched.expect("fetch"), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_arrives_is_named_by_master_and_nodes() {
    let (addr, server) = start_server(ServerSpec {
        arrival_timeout: Duration::from_millis(800),
        ..fast_server(4)
    })
    .await;
    let started = std::time::Instant::now();
    let sessions = join_all(vec![node(&addr, 0, 4, 1), node(&addr, 2, 4, 1)]).await;
    for session in sessions {
        let err = session.err().expect("no world without nodes 1 and 3");
        let text = err.to_string();
        assert!(
            matches!(err, RendezvousError::Aborted { .. })
                && text.contains("node rank(s) 1, 3 never arrived")
                && text.contains(&addr),
            "{text}"
        );
    }
    let err = server.await.expect("task").expect_err("nodes missing");
    assert!(
        matches!(&err, RendezvousError::NodesMissing { missing, arrived: 2, .. } if missing == &[1, 3]),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_unreachable_master_is_named_within_the_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let master = format!("127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let spec = NodeSpec {
        timeout: Duration::from_millis(700),
        ..NodeSpec::new(&master, 1, 2, 1, secret())
    };
    let err = join(&spec).await.err().expect("nobody listens");
    let text = err.to_string();
    assert!(
        matches!(err, RendezvousError::MasterUnreachable { .. }) && text.contains(&master),
        "{text}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "took {took:?}"
    );

    let err = join(&NodeSpec::new("no-port-here", 1, 2, 1, secret()))
        .await
        .err()
        .expect("bad address");
    assert!(err.to_string().contains("\"no-port-here\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dying_mid_run_stops_the_others_naming_it() {
    let (addr, server) = start_server(fast_server(3)).await;
    let mut sessions: Vec<NodeSession> = join_all((0..3).map(|r| node(&addr, r, 3, 1)).collect())
        .await
        .into_iter()
        .map(|s| s.expect("join"))
        .collect();
    let dead = sessions.pop().expect("node 2");
    let watchers: Vec<_> = sessions
        .into_iter()
        .map(|mut s| tokio::spawn(async move { s.watch().await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(dead); // its connection closes, as when the launcher process dies
    for watcher in watchers {
        let err = tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("the others are told promptly")
            .expect("task");
        let text = err.to_string();
        assert!(text.contains("aborted the run: node 2 (127.0.0.1) lost"), "{text}");
    }
    let err = server.await.expect("task").expect_err("node 2 lost");
    assert!(matches!(err, RendezvousError::NodeFailed { node_rank: 2, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_lost_after_the_heartbeat_timeout() {
    let (addr, server) = start_server(ServerSpec {
        heartbeat_timeout: Duration::from_millis(600),
        ..fast_server(2)
    })
    .await;
    // Node 1 registers by hand and then says nothing (a hung host keeps its socket open).
    let silent = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let (read, mut silent) = silent.into_split();
    let mut read = tokio::io::BufReader::new(read);
    super::wire::authenticate_to_master(&mut read, &mut silent, &secret())
        .await
        .expect("handshake");
    silent
        .write_all(
            b"{\"type\":\"register\",\"version\":1,\"node_rank\":1,\"nnodes\":2,\"nproc\":1,\"addr\":\"10.9.9.9\"}\n",
        )
        .await
        .expect("register");
    let mut session = join(&node(&addr, 0, 2, 1)).await.expect("join");
    let err = tokio::time::timeout(Duration::from_secs(5), session.watch())
        .await
        .expect("told within the timeout");
    assert!(
        err.to_string().contains("node 1 (10.9.9.9) sent no heartbeat for"),
        "{err}"
    );
    assert!(server.await.expect("task").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_workers_on_one_node_abort_the_others() {
    let (addr, server) = start_server(fast_server(2)).await;
    let mut sessions: Vec<NodeSession> = join_all(vec![node(&addr, 0, 2, 2), node(&addr, 1, 2, 2)])
        .await
        .into_iter()
        .map(|s| s.expect("join"))
        .collect();
    let mut failing = sessions.pop().expect("node 1");
    let mut healthy = sessions.pop().expect("node 0");
    let reported = failing.finish(false, "rank 3 exited with status 1".into()).await;
    assert!(reported.is_err(), "a failing node hears the abort too");
    let err = healthy.watch().await.to_string();
    assert!(
        err.contains("node 1 (127.0.0.1) workers failed: rank 3 exited with status 1"),
        "{err}"
    );
    assert!(server.await.expect("task").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_master_is_named_by_the_nodes() {
    let (addr, server) = start_server(fast_server(1)).await;
    let mut session = join(&node(&addr, 0, 1, 1)).await.expect("join");
    server.abort();
    let err = tokio::time::timeout(Duration::from_secs(5), session.watch())
        .await
        .expect("told promptly");
    assert!(
        matches!(err, RendezvousError::MasterLost { .. }) && err.to_string().contains(&addr),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disagreeing_nodes_are_refused_by_name() {
    let (addr, server) = start_server(fast_server(2)).await;
    let err = join(&node(&addr, 1, 3, 1)).await.err().expect("wrong --nnodes");
    assert!(
        err.to_string()
            .contains("node 1 (127.0.0.1) was started with --nnodes 3, the master with --nnodes 2"),
        "{err}"
    );
    assert!(server.await.expect("task").is_err());
}
