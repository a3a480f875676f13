//! Two "hosts" as network namespaces joined by a veth pair, one MPI worker in
//! each: `ferroclip launch --backend mpi --hosts A:1,B:1` (started inside A,
//! with an rsh agent that enters B) trains the nano model over the link; then a
//! run whose worker in B is killed is recovered by `--max-restarts 1` from its
//! checkpoint and finishes; and when host B is gone altogether (its namespace deleted),
//! `--min-nproc 1` restarts the run on A alone, resuming the 2-worker checkpoint on one
//! worker with the same global batch (the canonical data stream).
//!
//! Needs root (it creates namespaces) and Open MPI. Safety (see docs/architecture.md
//! §9, "Testing across hosts on one machine"): nothing here addresses the namespaces'
//! addresses from the root namespace (that traffic would leave the machine):
//! mpirun, its daemons and the workers all run inside the namespaces. A guard
//! kills every process the test started and deletes the namespaces (and with
//! them the veth pair) even when an assertion fails.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{last_logged_step, require_mpirun, send_signal, tagged_pids, write_shape_shards};

/// The link's network, private to the two namespaces.
const NET: &str = "10.213.77.0/24";
const ADDR_A: &str = "10.213.77.1/24";
const ADDR_B: &str = "10.213.77.2/24";
const SIGKILL: i32 = 9;

fn config(steps: u64) -> String {
    config_with(steps, "batch_size = 8")
}

/// [`config`] with `batch` as the batch setting of `[data]`.
fn config_with(steps: u64, batch: &str) -> String {
    format!(
        r#"name = "t"
model = "nano"
seed = 5
threads = 1
[data]
train = "shards"
{batch}
workers = 1
[schedule]
steps = {steps}
warmup_steps = 2
[log]
every = 1
[checkpoint]
every = 2
keep_last = 2
"#
    )
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces `A`, `B` joined by a veth pair; on drop, every process
/// carrying the test's tag is killed and both namespaces are deleted.
struct TwoHosts {
    a: String,
    b: String,
    veth_a: String,
    tag: String,
}

impl TwoHosts {
    fn create(tag: &str) -> TwoHosts {
        let id = std::process::id();
        let (veth_a, veth_b) = (format!("fcv{id}a"), format!("fcv{id}b"));
        // The guard exists before the first fallible step, so a failure below still cleans up.
        let hosts = TwoHosts {
            a: format!("fc{id}a"),
            b: format!("fc{id}b"),
            veth_a: veth_a.clone(),
            tag: tag.to_string(),
        };
        ip(&["netns", "add", &hosts.a]);
        ip(&["netns", "add", &hosts.b]);
        ip(&["link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b]);
        ip(&["link", "set", &veth_a, "netns", &hosts.a]);
        ip(&["link", "set", &veth_b, "netns", &hosts.b]);
        ip(&["-n", &hosts.a, "addr", "add", ADDR_A, "dev", &veth_a]);
        ip(&["-n", &hosts.b, "addr", "add", ADDR_B, "dev", &veth_b]);
        for (ns, veth) in [(&hosts.a, &veth_a), (&hosts.b, &veth_b)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", veth, "up"]);
        }
        hosts
    }

    /// The inode of namespace `ns` (what `/proc/<pid>/ns/net` of its processes points to).
    fn inode(ns: &str) -> String {
        let link = Path::new("/run/netns").join(ns);
        let meta = std::fs::metadata(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
        std::os::unix::fs::MetadataExt::ino(&meta).to_string()
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for pid in tagged_pids(&self.tag, "") {
            send_signal(pid, SIGKILL);
        }
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        // Only left in the root namespace when setup failed before moving it.
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth_a])
            .stderr(Stdio::null())
            .status();
    }
}

/// The rsh agent: "logs in" to a host by entering the namespace of that name.
///
/// Each host also gets its own temporary folder (`TMPDIR`), as separate machines have. The
/// namespaces share one hostname and one /tmp, and Open MPI names its session directories
/// after the hostname and job family, so without this mpirun and the daemons it starts race
/// to create the same directory: once in CI a restarted daemon failed with "mkdir
/// /tmp/ompi.vm.0/jf.9711: File exists" (session_dir.c).
fn write_agent(dir: &Path) -> PathBuf {
    let path = dir.join("nsagent.sh");
    let script = format!(
        "#!/bin/sh\nhost=\"$1\"; shift\ntmp='{tmp}'/\"$host\"\nmkdir -p \"$tmp\"\n\
         exec ip netns exec \"$host\" env TMPDIR=\"$tmp\" sh -c \"$*\"\n",
        tmp = dir.join("tmp").display()
    );
    std::fs::write(&path, script).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
    path
}

/// `ip netns exec A ferroclip launch --backend mpi --hosts A:1,B:1 …` for run `run`.
fn launch_in_a(hosts: &TwoHosts, dir: &Path, run: &str, extra: &[&str]) -> Command {
    let agent = write_agent(dir);
    // Short paths: Open MPI puts Unix sockets (at most 108 bytes) under TMPDIR.
    let launcher_tmp = dir.join("tmp/launcher");
    std::fs::create_dir_all(&launcher_tmp).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &hosts.a])
        .arg(env!("CARGO_BIN_EXE_ferroclip"))
        .args(["launch", "--backend", "mpi", "--hosts"])
        .arg(format!("{}:1,{}:1", hosts.a, hosts.b))
        .arg("--rsh-agent")
        .arg(&agent)
        .args(["--mpi-if-include", NET])
        .args(["--mpirun-arg=--mca", "--mpirun-arg=btl", "--mpirun-arg=tcp,self"])
        // Open MPI 4.1's orted shares the hwloc topology through shared memory mapped at a
        // guessed "VM hole"; once in CI a restarted remote orted segfaulted there
        // (hwloc_shmem_topology_write). Each daemon discovering its own topology avoids it.
        .args([
            "--mpirun-arg=--mca",
            "--mpirun-arg=rtc_hwloc_vmhole",
            "--mpirun-arg=none",
        ])
        .args(["--log-dir", &format!("runs/{run}/logs")])
        .args(extra)
        .args(["--", "--config", "t.toml", "--set", &format!("name={run}")])
        .current_dir(dir)
        // mpirun's own session directory, apart from those of the daemons (see write_agent).
        .env("TMPDIR", launcher_tmp)
        .env("FERROCLIP_TEST_TAG", hosts.tag.split_once('=').map_or("", |(_, v)| v))
        .env("RUST_LOG", "info");
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits for `child` up to `limit`; the guard kills everything if it hangs.
fn wait_output(child: std::process::Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for the launcher"),
        Err(_) => {
            send_signal(pid, SIGKILL);
            panic!("the launcher did not finish within {limit:?}");
        }
    }
}

fn samples_seen(metrics: &Path) -> u64 {
    let text = std::fs::read_to_string(metrics).unwrap_or_default();
    let last = text.lines().last().unwrap_or("{}");
    serde_json::from_str::<serde_json::Value>(last).unwrap_or_default()["samples_seen"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn mpi_training_across_two_network_namespaces_survives_a_killed_host_worker() {
    require_mpirun();
    assert!(
        unsafe_geteuid() == 0,
        "this test creates network namespaces and needs root (CI runs it as root)"
    );
    let tag = format!("FERROCLIP_TEST_TAG=netns-{}", std::process::id());
    let hosts = TwoHosts::create(&tag);
    let dir = tempfile::tempdir().unwrap();
    write_shape_shards(&dir.path().join("shards"), 64, 16);
    std::fs::write(dir.path().join("t.toml"), config(4)).unwrap();

    // 1. A few steps over the link: the global batch is both hosts' workers.
    let started = Instant::now();
    let child = launch_in_a(&hosts, dir.path(), "a", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the launcher in namespace A");
    let out = wait_output(child, Duration::from_secs(90));
    assert!(out.status.success(), "launch across namespaces failed:\n{}", text(&out));
    let hostfile = std::fs::read_to_string(dir.path().join("runs/a/logs/hostfile")).unwrap();
    assert_eq!(hostfile, format!("{} slots=1\n{} slots=1\n", hosts.a, hosts.b));
    assert_eq!(samples_seen(&dir.path().join("runs/a/metrics.jsonl")), 4 * 2 * 8);
    // Rank 1 logs nothing (rank 0 reports); its log exists because mpirun started it.
    assert!(dir.path().join("runs/a/logs/rank1.log").is_file());
    eprintln!("two-host run took {:?}", started.elapsed());

    // 2. Kill the worker in B after the first checkpoint; one restart resumes and finishes.
    std::fs::write(dir.path().join("t.toml"), config(12)).unwrap();
    let child = launch_in_a(
        &hosts,
        dir.path(),
        "b",
        &["--max-restarts", "1", "--restart-backoff-s", "0.2"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start the launcher in namespace A");
    let metrics = dir.path().join("runs/b/metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(90);
    while last_logged_step(&metrics) < 3 {
        assert!(Instant::now() < deadline, "run b never reached step 3");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rank1 = tagged_pids(&tag, "OMPI_COMM_WORLD_RANK=1");
    assert_eq!(rank1.len(), 1, "expected one rank-1 worker, found {rank1:?}");
    let netns = std::fs::read_link(format!("/proc/{}/ns/net", rank1[0])).unwrap();
    assert_eq!(
        netns.to_string_lossy(),
        format!("net:[{}]", TwoHosts::inode(&hosts.b)),
        "rank 1 must run inside namespace B"
    );
    let killed_after = last_logged_step(&metrics);
    send_signal(rank1[0], SIGKILL);
    let out = wait_output(child, Duration::from_secs(120));
    let log = text(&out);
    assert!(
        out.status.success(),
        "run b did not recover after a kill after step {killed_after}:\n{log}"
    );
    assert!(log.contains("restart 1/1"), "{log}");
    assert_eq!(last_logged_step(&metrics), 12);
    assert_eq!(samples_seen(&metrics), 12 * 2 * 8);
    let resumed = std::fs::read_to_string(dir.path().join("runs/b/logs/rank0.log")).unwrap();
    assert!(
        resumed.contains("resumed from"),
        "the restart did not resume: {resumed}"
    );
    assert!(dir.path().join("runs/b/logs/rank1.attempt1.log").is_file());

    // 3. Host B is gone: its worker killed and its namespace deleted. With --min-nproc 1 the
    //    launcher probes both hosts before the restart, drops B, says so, and restarts on A
    //    alone; the 2-worker checkpoint resumes on 1 worker with the same global batch.
    std::fs::write(dir.path().join("t.toml"), config_with(12, "global_batch = 16")).unwrap();
    let child = launch_in_a(
        &hosts,
        dir.path(),
        "c",
        &["--max-restarts", "1", "--restart-backoff-s", "0.2", "--min-nproc", "1"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start the launcher in namespace A");
    let metrics = dir.path().join("runs/c/metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(90);
    while last_logged_step(&metrics) < 3 {
        assert!(Instant::now() < deadline, "run c never reached step 3");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rank1 = tagged_pids(&tag, "OMPI_COMM_WORLD_RANK=1");
    assert_eq!(rank1.len(), 1, "expected one rank-1 worker, found {rank1:?}");
    let killed_after = last_logged_step(&metrics);
    ip(&["netns", "del", &hosts.b]);
    send_signal(rank1[0], SIGKILL);
    let out = wait_output(child, Duration::from_secs(120));
    let log = text(&out);
    assert!(
        out.status.success(),
        "run c did not go on without host B after a kill after step {killed_after}:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "restart 1/1 in 0.2s with 1 worker(s) instead of 2 (--min-nproc 1): host {} does not answer",
            hosts.b
        )),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("runs/c/logs/hostfile")).unwrap(),
        format!("{} slots=1\n", hosts.a)
    );
    assert_eq!(last_logged_step(&metrics), 12);
    // Every step of both attempts had the global batch of 16.
    assert_eq!(samples_seen(&metrics), 12 * 16);
    let resumed = std::fs::read_to_string(dir.path().join("runs/c/logs/rank0.log")).unwrap();
    assert!(
        resumed.contains("resumed from"),
        "the restart did not resume: {resumed}"
    );
    // Rank 1's log is the failed attempt's; the restart had no rank 1.
    assert!(dir.path().join("runs/c/logs/rank1.attempt1.log").is_file());
    assert!(!dir.path().join("runs/c/logs/rank1.log").exists());
    drop(hosts);
}

fn unsafe_geteuid() -> u32 {
    extern "C" {
        fn geteuid() -> u32;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() }
}
