//! `ferroclip launch --nnodes 2` as two real launcher processes on 127.0.0.1
//! (`sh` workers stand in for the trainer): the world forms with global ranks,
//! and a node whose launcher is SIGKILLed mid-run makes the other node stop its
//! workers promptly and name the lost node.
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{send_signal, KillTagged};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn node(dir: &Path, tag: &str, master: &str, node_rank: usize, script: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .args(["launch", "--nnodes", "2", "--nproc", "2", "--master", master])
        .args(["--node-rank", &node_rank.to_string()])
        .args([
            "--rendezvous-timeout-s",
            "20",
            "--node-heartbeat-timeout-s",
            "5",
            "--grace-s",
            "1",
        ])
        .args([
            "--log-dir",
            &format!("logs{node_rank}"),
            "--worker-cmd",
            "sh",
            "--",
            "-c",
            script,
        ])
        .current_dir(dir)
        .env("FERROCLIP_TEST_TAG", tag)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a launcher")
}

fn stderr_of(child: Child) -> (bool, String) {
    let out = child.wait_with_output().expect("wait");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn two_launchers_form_a_world_with_global_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("static-ok-{}", std::process::id());
    let _guard = KillTagged(format!("FERROCLIP_TEST_TAG={tag}"));
    let master = format!("127.0.0.1:{}", free_port());
    let script = "echo rank $RANK of $WORLD_SIZE local $LOCAL_RANK via $FERROCLIP_RENDEZVOUS";
    let nodes = [
        node(dir.path(), &tag, &master, 1, script),
        node(dir.path(), &tag, &master, 0, script),
    ];
    for child in nodes {
        let (ok, stderr) = stderr_of(child);
        assert!(ok, "{stderr}");
        assert!(stderr.contains("and so did every other node"), "{stderr}");
    }
    let log = std::fs::read_to_string(dir.path().join("logs1/rank3.log")).unwrap();
    assert_eq!(log.trim(), format!("rank 3 of 4 local 1 via {master}"));
}

#[test]
fn a_killed_node_launcher_stops_the_other_node_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("static-kill-{}", std::process::id());
    let _guard = KillTagged(format!("FERROCLIP_TEST_TAG={tag}"));
    let master = format!("127.0.0.1:{}", free_port());
    let node0 = node(dir.path(), &tag, &master, 0, "echo up; sleep 60");
    let node1 = node(dir.path(), &tag, &master, 1, "echo up; sleep 60");
    // Both nodes' workers are running once their first lines are logged.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !["logs0/rank0.log", "logs1/rank3.log"]
        .iter()
        .all(|log| std::fs::read_to_string(dir.path().join(log)).is_ok_and(|t| t.contains("up")))
    {
        assert!(Instant::now() < deadline, "workers never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Instant::now();
    send_signal(node1.id(), 9);
    let (ok, stderr) = stderr_of(node0);
    assert!(!ok, "node 0 must fail: {stderr}");
    assert!(stderr.contains("node 1 (127.0.0.1) lost"), "{stderr}");
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "took {:?}",
        killed.elapsed()
    );
    let _ = stderr_of(node1);
}
