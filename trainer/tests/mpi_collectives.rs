//! Runs the `collective_check` example under `mpirun -np 2` and requires both
//! ranks to report every MPI collective correct.
//!
//! `cargo test` builds the examples of the package before running its tests,
//! so the binary sits next to this test's: target/<profile>/examples/. A run
//! filtered with `--test mpi_collectives` does not rebuild examples: build them
//! first (`cargo build -p trainer --examples`; scripts/test.sh builds all targets).
#![cfg(feature = "mpi")]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn example_binary(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("path of the test binary");
    // target/<profile>/deps/mpi_collectives-<hash> -> target/<profile>/examples/<name>
    let profile_dir = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    profile_dir.join("examples").join(name)
}

#[test]
fn collectives_match_closed_forms_on_two_ranks() {
    let binary = example_binary("collective_check");
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build -p trainer --examples` (cargo test builds examples itself)",
        binary.display()
    );
    let mpirun_present = Command::new("mpirun")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        mpirun_present,
        "mpirun is not on PATH: install openmpi-bin (scripts/setup.sh does)"
    );

    let mut child = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(&binary)
        // One thread per rank: two ranks share the test machine's cores.
        .env("OMP_NUM_THREADS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start mpirun");
    // A hung collective must fail the test, not hang it.
    let deadline = Instant::now() + Duration::from_secs(180);
    while child.try_wait().expect("poll mpirun").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mpirun -np 2 {} did not finish within 180 s", binary.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("collect mpirun output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "mpirun -np 2 {} exited with {} (if the example may be stale, rebuild it: cargo build -p trainer --examples)\nstdout:\n{stdout}\nstderr:\n{stderr}",
        binary.display(),
        output.status
    );
    for rank in 0..2 {
        let ok_line = format!("collective_check ok rank {rank}");
        assert!(
            stdout.lines().any(|l| l.trim() == ok_line),
            "rank {rank} did not report ok\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}
