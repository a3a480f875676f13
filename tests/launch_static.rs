//! `ferroclip launch --nnodes 2` as two real launcher processes on 127.0.0.1
//! (`sh` workers stand in for the trainer): the world forms with global ranks,
//! a node whose launcher is SIGKILLed mid-run makes the other node stop its
//! workers promptly and name the lost node, and a node without the job's secret
//! (`ferroclip secret`, `--secret-file`) is refused.
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

/// A new job secret in `dir/name`, written by `ferroclip secret`.
fn secret_file(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let out = Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .arg("secret")
        .arg(&path)
        .output()
        .expect("run ferroclip secret");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    path
}

fn node(dir: &Path, tag: &str, master: &str, node_rank: usize, script: &str) -> Child {
    node_with(dir, tag, master, node_rank, script, &dir.join("job.secret"), 20)
}

fn node_with(
    dir: &Path,
    tag: &str,
    master: &str,
    node_rank: usize,
    script: &str,
    secret: &Path,
    timeout_s: u32,
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .args(["launch", "--nnodes", "2", "--nproc", "2", "--master", master])
        .args(["--node-rank", &node_rank.to_string()])
        .arg("--secret-file")
        .arg(secret)
        .args([
            "--rendezvous-timeout-s",
            &timeout_s.to_string(),
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
    let secret = secret_file(dir.path(), "job.secret");
    let script =
        "echo rank $RANK of $WORLD_SIZE local $LOCAL_RANK via $FERROCLIP_RENDEZVOUS secret $FERROCLIP_JOB_SECRET";
    let nodes = [
        node(dir.path(), &tag, &master, 1, script),
        node(dir.path(), &tag, &master, 0, script),
    ];
    for child in nodes {
        let (ok, stderr) = stderr_of(child);
        assert!(ok, "{stderr}");
        assert!(stderr.contains("and so did every other node"), "{stderr}");
    }
    // Workers get the job's secret (their relay requests prove it too).
    let secret = std::fs::read_to_string(secret).unwrap();
    let log = std::fs::read_to_string(dir.path().join("logs1/rank3.log")).unwrap();
    assert_eq!(
        log.trim(),
        format!("rank 3 of 4 local 1 via {master} secret {}", secret.trim())
    );
}

#[test]
fn a_node_without_the_jobs_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("static-secret-{}", std::process::id());
    let _guard = KillTagged(format!("FERROCLIP_TEST_TAG={tag}"));
    let master = format!("127.0.0.1:{}", free_port());
    let (ours, theirs) = (
        secret_file(dir.path(), "ours.secret"),
        secret_file(dir.path(), "theirs.secret"),
    );
    // `ferroclip secret` never overwrites, and writes a file only its owner reads.
    let again = Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .arg("secret")
        .arg(&ours)
        .output()
        .unwrap();
    assert!(!again.status.success());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&ours).unwrap().permissions().mode() & 0o777, 0o600);

    let node0 = node_with(dir.path(), &tag, &master, 0, "echo up", &ours, 3);
    let node1 = node_with(dir.path(), &tag, &master, 1, "echo up", &theirs, 3);
    let (ok1, stderr1) = stderr_of(node1);
    let (ok0, stderr0) = stderr_of(node0);
    assert!(!ok1 && !ok0, "both fail:\n{stderr0}\n{stderr1}");
    assert!(stderr1.contains("refused our proof of the job secret"), "{stderr1}");
    assert!(stderr0.contains("refused a connection from 127.0.0.1"), "{stderr0}");
    assert!(stderr0.contains("node rank(s) 1 never arrived"), "{stderr0}");
    assert!(
        !dir.path().join("logs0/rank0.log").exists(),
        "workers started without a world"
    );

    // No secret at all: a clear error before anything listens.
    let out = Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .args([
            "launch",
            "--nnodes",
            "2",
            "--node-rank",
            "0",
            "--master",
            &master,
            "--nproc",
            "1",
        ])
        .args(["--worker-cmd", "true"])
        .env_remove("FERROCLIP_JOB_SECRET")
        .env_remove("FERROCLIP_JOB_SECRET_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("ferroclip secret FILE"),
        "{stderr}"
    );
}

#[test]
fn a_killed_node_launcher_stops_the_other_node_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("static-kill-{}", std::process::id());
    let _guard = KillTagged(format!("FERROCLIP_TEST_TAG={tag}"));
    let master = format!("127.0.0.1:{}", free_port());
    secret_file(dir.path(), "job.secret");
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
