//! `ferroclip sweep run --slurm` on a real one-host SLURM cluster (Debian's
//! slurm-wlm + munge, started by scripts/cluster/slurm-one-host.sh in a temporary
//! folder): a 2-run sweep of the `nano` model on tiny synthetic shards is submitted
//! as an array job, each array task trains and evaluates its run through
//! `ferroclip sweep run-one`, `sweep collect` then gives both rows, and a second
//! `--slurm` submits nothing. Also the `--dry-run` script (no cluster needed).
//!
//! The cluster test needs root and the packages `slurm-wlm munge` (scripts/setup.sh);
//! without them it fails and says so.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::slurm::OneHostSlurm;
use common::KillTagged;

const SWEEP: &str = r#"name = "arr"
base = "base.toml"
[[axis]]
key = "samples_seen"
values = [16, 32]
[eval]
zeroshot = "zs"
classnames = "classes.txt"
batch_size = 8
"#;

/// The shards, eval files, base config and sweep file in `root`.
fn write_sweep(root: &Path) {
    common::write_disc_shards(&root.join("shards"), 48, 24);
    common::write_disc_zeroshot(root);
    std::fs::write(root.join("base.toml"), common::SWEEP_BASE_TOML).unwrap();
    std::fs::write(root.join("sweep.toml"), SWEEP).unwrap();
}

fn ferroclip(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroclip"));
    cmd.current_dir(dir).env("RUST_LOG", "warn");
    cmd
}

/// Waits up to 150 s for `done`, failing the test with `context()` after that.
fn wait_for_tasks(done: impl Fn() -> bool, context: impl Fn() -> String) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "the array tasks did not finish in 150 s\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn dry_run_writes_an_array_of_the_unfinished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_sweep(root);
    let out = ferroclip(root)
        .args([
            "sweep",
            "run",
            "sweep.toml",
            "--slurm",
            "--dry-run",
            "--max-parallel",
            "1",
            "--time",
            "10",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::output_text(&out));
    let script = std::fs::read_to_string(root.join("runs/arr/sweep.sbatch")).unwrap();
    assert!(script.contains("\n#SBATCH --array=0-1%1\n"), "{script}");
    assert!(script.contains("\n#SBATCH --time=10\n"), "{script}");
    assert!(
        script.contains("sweep run-one sweep.toml --index \"$SLURM_ARRAY_TASK_ID\""),
        "{script}"
    );
    assert!(
        root.join("runs/arr/logs").is_dir(),
        "sbatch needs the output folder to exist"
    );

    // Mark run 0 finished the way the runner does: only run 1 is left to submit.
    let first = root.join("runs/arr/arr-samples=16");
    std::fs::create_dir_all(first.join(".sweep")).unwrap();
    for file in [
        "model.safetensors",
        "eval.json",
        ".sweep/train.done",
        ".sweep/eval.done",
    ] {
        std::fs::write(first.join(file), b"").unwrap();
    }
    let out = ferroclip(root)
        .args(["sweep", "run", "sweep.toml", "--slurm", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::output_text(&out));
    let script = std::fs::read_to_string(root.join("runs/arr/sweep.sbatch")).unwrap();
    assert!(script.contains("\n#SBATCH --array=1\n"), "{script}");

    // `ferroclip submit --array-from` writes the same array job.
    std::fs::remove_file(root.join("runs/arr/sweep.sbatch")).unwrap();
    let out = ferroclip(root)
        .args(["submit", "--array-from", "sweep.toml", "--dry-run", "--time", "10"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::output_text(&out));
    let script = std::fs::read_to_string(root.join("runs/arr/sweep.sbatch")).unwrap();
    assert!(script.contains("\n#SBATCH --array=1\n"), "{script}");
    assert!(script.contains("\n#SBATCH --time=10\n"), "{script}");
    // A sweep and a train config at once is refused.
    let out = ferroclip(root)
        .args([
            "submit",
            "--array-from",
            "sweep.toml",
            "--config",
            "x.toml",
            "--dry-run",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", common::output_text(&out));

    // --partition without --slurm is refused rather than ignored.
    let out = ferroclip(root)
        .args(["sweep", "run", "sweep.toml", "--partition", "gpu"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", common::output_text(&out));
}

#[test]
fn array_job_runs_every_run_of_the_sweep() {
    let mut cluster = OneHostSlurm::start();
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    write_sweep(root);
    let tag = format!("cluster-sweep-{}", std::process::id());
    cluster.tag = Some(KillTagged(format!("FERROCLIP_TEST_TAG={tag}")));

    // The tasks inherit this environment (sbatch --export=ALL): SLURM_CONF and the tag.
    let submitted = ferroclip(root)
        .env("SLURM_CONF", &cluster.conf)
        .env("FERROCLIP_TEST_TAG", &tag)
        .args(["sweep", "run", "sweep.toml", "--slurm"])
        .output()
        .unwrap();
    assert!(
        submitted.status.success(),
        "submit failed: {}\n{}",
        common::output_text(&submitted),
        cluster.logs()
    );
    let stdout = String::from_utf8_lossy(&submitted.stdout);
    let job: u64 = stdout
        .trim()
        .strip_prefix("submitted array job ")
        .and_then(|rest| rest.split(':').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no job id in {stdout:?}"));
    cluster.job = Some(job);
    assert!(stdout.contains("2 of 2 runs (array 0-1)"), "{stdout}");

    let runs = ["arr-samples=16", "arr-samples=32"].map(|n| root.join("runs/arr").join(n));
    let context = || {
        let mut all = String::new();
        for task in 0..2 {
            let log = root.join(format!("runs/arr/logs/slurm-{job}_{task}.out"));
            all += &format!(
                "--- {}\n{}\n",
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        for run in &runs {
            for step in ["train", "eval"] {
                let log = run.join(format!("logs/sweep-{step}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(10).collect();
                all += &format!(
                    "--- {} (last lines)\n{}\n",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        format!("{all}squeue: {}\n{}", cluster.active_tasks(job), cluster.logs())
    };
    wait_for_tasks(
        || runs.iter().all(|r| r.join(".sweep/eval.done").exists()) && cluster.active_tasks(job).is_empty(),
        context,
    );
    for task in 0..2 {
        let log =
            std::fs::read_to_string(root.join(format!("runs/arr/logs/slurm-{job}_{task}.out"))).unwrap_or_default();
        assert!(
            log.contains(&format!("task {task} exited with status 0")),
            "{}",
            context()
        );
    }

    let out = ferroclip(root)
        .args(["sweep", "collect", "sweep.toml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "collect failed: {}", common::output_text(&out));
    let csv = std::fs::read_to_string(root.join("runs/arr/results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[1].starts_with("arr-samples=16,16,") && lines[2].starts_with("arr-samples=32,32,"),
        "{csv}"
    );

    // Everything finished: a second --slurm submits nothing.
    let again = ferroclip(root)
        .env("SLURM_CONF", &cluster.conf)
        .args(["sweep", "run", "sweep.toml", "--slurm"])
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", common::output_text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("all 2 runs finished"),
        "{}",
        common::output_text(&again)
    );
}

/// Cooldown branching on SLURM: the trunk goes first as its own array job, the branches as
/// a second one held by `--dependency=afterok` on it. A branch task that started before
/// its trunk checkpoint existed would fail (`run-one` does not wait for a job it does not
/// run), so branches that finish, resumed from the trunk, prove the order held.
#[test]
fn cooldown_branches_run_after_their_trunk_job() {
    let mut cluster = OneHostSlurm::start();
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    common::write_disc_shards(&root.join("shards"), 48, 24);
    std::fs::write(root.join("base.toml"), common::SWEEP_BASE_TOML).unwrap();
    let sweep = "name = \"cd\"\nbase = \"base.toml\"\n[set]\n\"schedule.cooldown_fraction\" = 0.5\n\
                 [[axis]]\nkey = \"samples_seen\"\nvalues = [48, 96]\ncooldown_from = \"trunk\"\n";
    std::fs::write(root.join("sweep.toml"), sweep).unwrap();
    let tag = format!("cluster-cooldown-{}", std::process::id());
    cluster.tag = Some(KillTagged(format!("FERROCLIP_TEST_TAG={tag}")));

    let submitted = ferroclip(root)
        .env("SLURM_CONF", &cluster.conf)
        .env("FERROCLIP_TEST_TAG", &tag)
        .args(["sweep", "run", "sweep.toml", "--slurm"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&submitted.stdout).into_owned();
    assert!(
        submitted.status.success(),
        "submit failed: {}\n{}",
        common::output_text(&submitted),
        cluster.logs()
    );
    let ids: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("submitted array job "))
        .filter_map(|rest| rest.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(ids.len(), 2, "{stdout}");
    let (trunks, branches) = (ids[0], ids[1]);
    cluster.job = Some(branches);
    assert!(
        stdout.contains("1 of 3 runs (array 0)") && stdout.contains("sweep-trunks.sbatch"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 of 3 runs (array 1-2)") && stdout.contains(&format!("after job {trunks} (the trunks)")),
        "{stdout}"
    );

    let branch_runs = ["cd-samples=48", "cd-samples=96"].map(|n| root.join("runs/cd").join(n));
    let context = || {
        let mut all = String::new();
        for (job, tasks) in [(trunks, 0..1), (branches, 1..3)] {
            for task in tasks {
                let log = root.join(format!("runs/cd/logs/slurm-{job}_{task}.out"));
                all += &format!(
                    "--- {}\n{}\n",
                    log.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
        format!(
            "{all}squeue: {} | {}\n{}",
            cluster.active_tasks(trunks),
            cluster.active_tasks(branches),
            cluster.logs()
        )
    };
    wait_for_tasks(
        || {
            branch_runs.iter().all(|r| r.join(".sweep/train.done").exists())
                && cluster.active_tasks(branches).is_empty()
        },
        context,
    );
    for (run, step) in branch_runs.iter().zip([3, 6]) {
        let log = std::fs::read_to_string(run.join("logs/sweep-train.log")).unwrap_or_default();
        assert_eq!(
            common::resumed_step(&log, "runs/cd/cd-trunk/checkpoints/step_"),
            step,
            "{}",
            context()
        );
    }
}
