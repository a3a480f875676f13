//! K1: absurd numbers in a train config: a clear error naming the field, or a normal run —
//! never a panic, an abort on a failed allocation, or memory taken for the number's sake.
use crate::common::{write_shape_shards, SWEEP_BASE_TOML};
use crate::{ferroclip, row, run_measured};

#[test]
fn k1_huge_values_are_refused_by_name_or_run_normally() {
    let dir = tempfile::tempdir().unwrap();
    write_shape_shards(&dir.path().join("shards"), 16, 16);
    // The sweep tests' base config: `nano` on `shards/`, 2 steps of 8 samples, run "base".
    std::fs::write(dir.path().join("t.toml"), SWEEP_BASE_TOML).unwrap();
    // (override, what must happen: Err(field named) or Ok(a normal run))
    let cases: [(&str, Result<(), &str>); 7] = [
        ("data.batch_size=1000000000000", Err("data.batch_size")),
        ("data.batch_size=4611686018427387904", Err("data.batch_size")),
        ("data.global_batch=1000000000000", Err("data.global_batch")),
        ("schedule.steps=1000000000000000000", Ok(())),
        ("data.shuffle_buffer=1000000000000", Ok(())),
        ("checkpoint.every=1000000000000000000", Ok(())),
        ("data.partitions=1000000000000", Err("partition")),
    ];
    let mut figures = Vec::new();
    for (set, want) in cases {
        let measured = if set.starts_with("schedule.steps") {
            long_run(dir.path(), set)
        } else {
            let mut cmd = ferroclip();
            cmd.current_dir(dir.path())
                .args(["train", "--config", "t.toml", "--set", set]);
            run_measured(cmd)
        };
        let stderr = String::from_utf8_lossy(&measured.output.stderr).into_owned();
        let code = measured.output.status.code();
        assert!(
            !stderr.contains("panicked") && !stderr.contains("memory allocation of"),
            "{set}: {stderr}"
        );
        match want {
            Err(field) => {
                assert_eq!(code, Some(1), "{set}: exit {code:?}: {stderr}");
                assert!(stderr.contains(field), "{set}: the error must name {field}: {stderr}");
            }
            // A run stopped by SIGTERM checkpoints and exits 143.
            Ok(()) => assert!(matches!(code, Some(0) | Some(143)), "{set}: exit {code:?}: {stderr}"),
        }
        assert!(
            measured.peak_rss_mib < 1024.0,
            "{set}: peak RSS {:.0} MiB",
            measured.peak_rss_mib
        );
        let outcome = if want.is_ok() { "ran" } else { "refused" };
        figures.push(format!(
            "{set}: {outcome} in {:.1} s, {:.0} MiB",
            measured.seconds, measured.peak_rss_mib
        ));
    }
    row(
        "K1",
        "batch 10^12 and 2^62, global batch 10^12, steps 10^18, …",
        &figures.join("; "),
    );
}

/// A run with an endless schedule, stopped by SIGTERM after its first logged step (it then
/// checkpoints and exits 143, which counts as a normal run here).
fn long_run(dir: &std::path::Path, set: &str) -> crate::Measured {
    let metrics = dir.join("runs/base/metrics.jsonl");
    let _ = std::fs::remove_dir_all(dir.join("runs"));
    let dir = dir.to_path_buf();
    let stopper = {
        let metrics = metrics.clone();
        std::thread::spawn(move || {
            crate::common::wait_for_step(&metrics, 1, std::time::Duration::from_secs(120));
            for pid in crate::common::tagged_pids("FERROCLIP_TEST_TAG=abuse-k1", "") {
                crate::common::send_signal(pid, 15);
            }
        })
    };
    let mut cmd = ferroclip();
    cmd.current_dir(&dir).env("FERROCLIP_TEST_TAG", "abuse-k1").args([
        "train",
        "--config",
        "t.toml",
        "--set",
        set,
        "--set",
        "log.every=1",
    ]);
    let measured = run_measured(cmd);
    stopper.join().unwrap();
    let _ = std::fs::remove_dir_all(dir.join("runs"));
    measured
}
