//! The local launcher with real processes: small `sh` scripts stand in for
//! `ferroclip train` so these tests need neither the trainer nor libtorch.
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use launcher::{Backend, Console, LaunchError, LocalLaunch, StopHandle};

/// A console whose two streams are kept in memory.
struct Captured {
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Captured {
    fn new() -> Self {
        Self {
            stdout: Arc::default(),
            stderr: Arc::default(),
        }
    }
    fn console(&self) -> Console {
        Console {
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
        }
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }
}

fn sh(script: &str, nproc: usize, backend: Backend, log_dir: &Path) -> LocalLaunch {
    let mut launch = LocalLaunch::new("sh", ["-c", script], nproc, backend, log_dir);
    launch.grace = Duration::from_secs(2);
    launch
}

/// Whether `pid` is a live process (a zombie waiting for a reaper counts as gone).
fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
            !matches!(state, Some('Z' | 'X'))
        }
    }
}

fn gone_within(pid: i32, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    while is_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn read_pid(path: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "{} was never written", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mpirun_installed() -> bool {
    std::process::Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn output_is_prefixed_on_the_console_and_logged_per_rank() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let script = "echo out $RANK/$WORLD_SIZE local $LOCAL_RANK/$LOCAL_WORLD_SIZE at $MASTER_ADDR:$MASTER_PORT; \
                  echo err $RANK >&2; printf 'no newline'";
    let captured = Captured::new();
    let report = sh(script, 2, Backend::Nccl, &logs)
        .run_with(&captured.console(), &StopHandle::new())
        .unwrap();
    assert_eq!(report.nproc, 2);

    let stdout = captured.stdout();
    let stderr = captured.stderr();
    let port = stdout
        .lines()
        .find_map(|l| l.strip_prefix("[rank 0] out 0/2 local 0/2 at 127.0.0.1:"))
        .unwrap_or_else(|| panic!("rank 0's line missing from stdout:\n{stdout}"));
    assert!(port.parse::<u16>().is_ok_and(|p| p > 0), "MASTER_PORT {port:?}");
    assert!(
        stdout.contains(&format!("[rank 1] out 1/2 local 1/2 at 127.0.0.1:{port}\n")),
        "{stdout}"
    );
    assert!(stdout.contains("[rank 1] no newline\n"), "{stdout}");
    assert!(
        stderr.contains("[rank 0] err 0\n") && stderr.contains("[rank 1] err 1\n"),
        "{stderr}"
    );
    assert!(!stdout.contains("err "), "stderr lines leaked into stdout:\n{stdout}");

    for rank in 0..2 {
        let log = std::fs::read_to_string(logs.join(format!("rank{rank}.log"))).unwrap();
        let mut lines: Vec<&str> = log.lines().collect();
        lines.sort();
        let out = format!("out {rank}/2 local {rank}/2 at 127.0.0.1:{port}");
        let err = format!("err {rank}");
        let mut want = vec![err.as_str(), "no newline", out.as_str()];
        want.sort();
        assert_eq!(lines, want, "rank{rank}.log");
    }
}

#[test]
fn solo_runs_one_worker_as_rank_zero() {
    let dir = tempfile::tempdir().unwrap();
    let captured = Captured::new();
    sh("echo $RANK $WORLD_SIZE", 1, Backend::Solo, dir.path())
        .run_with(&captured.console(), &StopHandle::new())
        .unwrap();
    assert_eq!(captured.stdout(), "[rank 0] 0 1\n");
}

#[test]
fn a_failing_rank_is_named_and_the_others_are_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().to_path_buf();
    // Rank 0 also leaves a background child: stopping must reach it too.
    let script = format!(
        "echo $$ > {d}/worker$RANK; sleep 60 & echo $! > {d}/child$RANK; \
         if [ $RANK = 1 ]; then sleep 0.3; exit 3; fi; wait",
        d = pids.display()
    );
    let captured = Captured::new();
    let launch = sh(&script, 2, Backend::Nccl, &dir.path().join("logs"));
    let started = Instant::now();
    let err = launch.run_with(&captured.console(), &StopHandle::new()).unwrap_err();
    let elapsed = started.elapsed();

    assert!(
        matches!(err, LaunchError::WorkerExited { rank: 1, code: 3, .. }),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("rank 1 exited with status 3"), "{err}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    for file in ["worker0", "child0", "worker1", "child1"] {
        let pid = read_pid(&pids.join(file));
        // The workers are reaped, so exactly gone; their background children were
        // signalled and may still be finishing their exit for a moment.
        let patience = if file.starts_with("worker") {
            Duration::ZERO
        } else {
            Duration::from_millis(500)
        };
        assert!(
            gone_within(pid, patience),
            "{file} (pid {pid}) still running after the launch returned"
        );
    }
    let note = captured.stderr();
    assert!(
        note.contains("[launch] rank 1 exited with status 3") && note.contains("stopping the other workers"),
        "{note}"
    );
}

#[test]
fn a_worker_killed_by_a_signal_is_reported_as_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let script = "if [ $RANK = 0 ]; then kill -9 $$; fi; sleep 60";
    let started = Instant::now();
    let err = sh(script, 2, Backend::Nccl, dir.path())
        .run_with(&Captured::new().console(), &StopHandle::new())
        .unwrap_err();
    assert!(
        matches!(err, LaunchError::WorkerSignaled { rank: 0, signal: 9, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("rank 0 killed by signal 9 (SIGKILL)"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_worker_ignoring_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "trap '' TERM; echo $$ > {d}/worker$RANK; if [ $RANK = 1 ]; then sleep 0.3; exit 2; fi; \
         while true; do sleep 0.05; done",
        d = dir.path().display()
    );
    let mut launch = sh(&script, 2, Backend::Nccl, &dir.path().join("logs"));
    launch.grace = Duration::from_millis(500);
    let started = Instant::now();
    let err = launch
        .run_with(&Captured::new().console(), &StopHandle::new())
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(err, LaunchError::WorkerExited { rank: 1, code: 2, .. }),
        "{err:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(700),
        "SIGTERM should have been ignored, took {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(!is_alive(read_pid(&dir.path().join("worker0"))));
}

#[test]
fn a_stop_request_terminates_all_workers() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!("echo $$ > {d}/worker$RANK; sleep 60", d = dir.path().display());
    let stop = StopHandle::new();
    let trigger = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        trigger.stop();
    });
    let started = Instant::now();
    let err = sh(&script, 3, Backend::Nccl, &dir.path().join("logs"))
        .run_with(&Captured::new().console(), &stop)
        .unwrap_err();
    assert!(matches!(err, LaunchError::Interrupted { signal: 15 }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    for rank in 0..3 {
        assert!(!is_alive(read_pid(&dir.path().join(format!("worker{rank}")))));
    }
}

#[test]
fn a_missing_program_is_a_spawn_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let launch = LocalLaunch::new("/nonexistent/ferroclip", ["train"], 2, Backend::Nccl, dir.path());
    let err = launch
        .run_with(&Captured::new().console(), &StopHandle::new())
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ferroclip"), "{err}");
}

#[test]
fn mpirun_backend_starts_ranks_through_mpirun() {
    assert!(mpirun_installed(), "mpirun missing: run scripts/setup.sh");
    let dir = tempfile::tempdir().unwrap();
    let captured = Captured::new();
    sh(
        "echo $OMPI_COMM_WORLD_RANK of $OMPI_COMM_WORLD_SIZE; echo err $OMPI_COMM_WORLD_RANK >&2",
        2,
        Backend::Mpi,
        dir.path(),
    )
    .run_with(&captured.console(), &StopHandle::new())
    .unwrap();
    let stdout = captured.stdout();
    assert!(
        stdout.contains("[rank 0] 0 of 2\n") && stdout.contains("[rank 1] 1 of 2\n"),
        "{stdout}"
    );
    assert!(captured.stderr().contains("[rank 1] err 1\n"), "{}", captured.stderr());
    let log1 = std::fs::read_to_string(dir.path().join("rank1.log")).unwrap();
    let mut lines: Vec<&str> = log1.lines().collect();
    lines.sort();
    assert_eq!(lines, ["1 of 2", "err 1"]);
}

#[test]
fn mpirun_backend_names_the_failing_rank() {
    assert!(mpirun_installed(), "mpirun missing: run scripts/setup.sh");
    let dir = tempfile::tempdir().unwrap();
    let script = "if [ $OMPI_COMM_WORLD_RANK = 1 ]; then sleep 0.3; exit 3; fi; exec sleep 60";
    let started = Instant::now();
    let err = sh(script, 2, Backend::Mpi, dir.path())
        .run_with(&Captured::new().console(), &StopHandle::new())
        .unwrap_err();
    assert!(
        matches!(err, LaunchError::WorkerExited { rank: 1, code: 3, .. }),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_missing_mpirun_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut launch = sh("true", 2, Backend::Mpi, dir.path());
    launch.mpirun = "/nonexistent/mpirun".into();
    let err = launch
        .run_with(&Captured::new().console(), &StopHandle::new())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "mpirun missing: run scripts/setup.sh (it installs openmpi-bin)"
    );
}
