//! `ferroclip submit` / `ferroclip status` against a real one-host SLURM cluster
//! (Debian's slurm-wlm + munge, started by scripts/cluster/slurm-one-host.sh in a
//! temporary folder): a 2-task CPU job over `srun --mpi=pmix` trains the nano
//! model, is requeued by `scontrol requeue` once it has checkpointed (preemption),
//! resumes from that checkpoint, then gets SIGTERM on its workers only (what
//! `--signal=TERM@120` does before the time limit), requeues itself, resumes again
//! and finishes with every step logged once. Also the script for
//! 4 nodes x 8 GPUs (--dry-run) and the error messages.
//!
//! Needs root and the packages `slurm-wlm munge` (scripts/setup.sh); without them
//! the cluster test fails and says so.
mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::slurm::OneHostSlurm;
use common::{last_logged_step, write_shape_shards, KillTagged};

const STEPS: u64 = 48;

fn train_config(name: &str) -> String {
    format!(
        r#"name = "{name}"
model = "nano"
seed = 1
threads = 1
[data]
train = "shards"
batch_size = 8
workers = 1
shuffle_buffer = 8
[optim]
lr = 2e-3
[schedule]
steps = {STEPS}
warmup_steps = 2
[log]
every = 1
[checkpoint]
every = 3
keep_last = 2
"#
    )
}

fn ferroclip(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroclip"));
    cmd.current_dir(dir);
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `start_step` the trainer logged in the given attempt of the job's output
/// (0 for a fresh start or when the attempt has not started training yet).
fn first_step_of_attempt(output: &str, attempt: u32) -> u64 {
    let marker = format!("attempt {attempt} on");
    let Some(at) = output.find(&marker) else {
        return 0;
    };
    output[at..]
        .lines()
        .find_map(|l| l.split("start_step=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Polls `done` every 100 ms until it is true; panics with `what` and `context()` after `limit`.
fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn requeued_job_resumes_from_its_checkpoint_and_finishes() {
    let mut cluster = OneHostSlurm::start();
    let work = tempfile::tempdir().unwrap();
    write_shape_shards(&work.path().join("shards"), 64, 16);
    std::fs::write(work.path().join("t.toml"), train_config("slurm")).unwrap();
    let run = work.path().join("runs/slurm");
    let tag = format!("slurm-{}", std::process::id());
    cluster.tag = Some(KillTagged(format!("FERROCLIP_TEST_TAG={tag}")));

    // sbatch rejects an unknown partition: its message comes through.
    let rejected = ferroclip(work.path())
        .env("SLURM_CONF", &cluster.conf)
        .args([
            "submit",
            "--config",
            "t.toml",
            "--ntasks-per-node",
            "2",
            "--partition",
            "nope",
        ])
        .output()
        .unwrap();
    assert!(!rejected.status.success());
    let message = text(&rejected);
    assert!(
        message.contains("sbatch rejected") && message.contains("invalid partition"),
        "{message}"
    );

    // The job inherits this environment (sbatch --export=ALL): SLURM_CONF and the tag.
    let submitted = ferroclip(work.path())
        .env("SLURM_CONF", &cluster.conf)
        .env("FERROCLIP_TEST_TAG", &tag)
        .env("RUST_LOG", "info")
        .args([
            "submit",
            "--config",
            "t.toml",
            "--nodes",
            "1",
            "--ntasks-per-node",
            "2",
            "--backend",
            "mpi",
        ])
        .output()
        .unwrap();
    assert!(submitted.status.success(), "submit failed: {}", text(&submitted));
    let stdout = String::from_utf8_lossy(&submitted.stdout);
    let job: u64 = stdout
        .trim()
        .strip_prefix("submitted job ")
        .and_then(|rest| rest.split(':').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no job id in {stdout:?}"));
    cluster.job = Some(job);
    assert!(stdout.contains("runs/slurm/submit.sbatch"), "{stdout}");
    let log = run.join(format!("logs/slurm-{job}.out"));
    let context = || {
        format!(
            "--- {}\n{}\n{}",
            log.display(),
            std::fs::read_to_string(&log).unwrap_or_default(),
            cluster.logs()
        )
    };

    let metrics = run.join("metrics.jsonl");
    let latest = run.join("checkpoints/latest");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    // SLURM holds a requeued job until its old credential has expired (cred_expire, 10 s in
    // the test cluster's slurm.conf); starting it earlier gets it killed ("Job credential
    // revoked"). Nudge its start time only after that.
    let restarted = |attempt: &str| {
        let mut pending_since: Option<Instant> = None;
        wait_until(
            &format!("the requeued job to start {attempt}"),
            Duration::from_secs(90),
            || match cluster.state(job).as_str() {
                // The wait also lets the last attempt's step finish tearing down: its
                // PMIx socket, still there, would make the next srun fail.
                "PENDING" => {
                    let since = *pending_since.get_or_insert_with(Instant::now);
                    if !cluster.step_socket(job).exists() && since.elapsed() > Duration::from_secs(12) {
                        cluster.scontrol(&["update", &format!("jobid={job}"), "StartTime=now"]);
                    }
                    false
                }
                "REQUEUED" | "COMPLETING" => false,
                _ => log_text().contains(attempt),
            },
            || {
                format!(
                    "(step socket present: {})\n{}",
                    cluster.step_socket(job).exists(),
                    context()
                )
            },
        )
    };

    // 1. Preemption: `scontrol requeue` once the first attempt has checkpointed and moved on.
    wait_until(
        "the first attempt to checkpoint",
        Duration::from_secs(90),
        || latest.exists() && last_logged_step(&metrics) >= 7,
        context,
    );
    assert!(
        last_logged_step(&metrics) < STEPS,
        "the run finished before the requeue:\n{}",
        context()
    );
    let requeue = cluster.scontrol(&["requeue", &job.to_string()]);
    assert!(requeue.status.success(), "scontrol requeue: {}", text(&requeue));
    restarted("attempt 2");

    // 2. The time-limit warning (`--signal=TERM@120`) reaches the workers only, not the
    //    batch shell: so does `scancel --signal=TERM`. The script must requeue itself.
    wait_until(
        "the second attempt to resume",
        Duration::from_secs(60),
        || first_step_of_attempt(&log_text(), 2) > 0,
        context,
    );
    let resumed_at = first_step_of_attempt(&log_text(), 2);
    wait_until(
        "the second attempt to checkpoint",
        Duration::from_secs(90),
        || last_logged_step(&metrics) >= resumed_at + 6,
        context,
    );
    assert!(
        last_logged_step(&metrics) < STEPS,
        "the run finished before the signal:\n{}",
        context()
    );
    let signal = cluster
        .command("scancel")
        .args(["--signal=TERM", &job.to_string()])
        .output()
        .unwrap();
    assert!(signal.status.success(), "scancel --signal=TERM: {}", text(&signal));
    restarted("attempt 3");

    wait_until(
        "the third attempt to finish",
        Duration::from_secs(120),
        || {
            matches!(
                cluster.state(job).as_str(),
                "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT" | "NODE_FAIL" | ""
            )
        },
        context,
    );
    assert_eq!(cluster.state(job), "COMPLETED", "{}", context());
    let output = log_text();
    // Both stops saved a checkpoint, and each later attempt resumed from the one before.
    assert_eq!(
        output.matches("stopped by SIGTERM after step").count(),
        4,
        "2 ranks x 2 stops:\n{}",
        context()
    );
    assert!(
        output.contains(&format!(
            "workers checkpointed before the time limit; requeueing job {job}"
        )),
        "{}",
        context()
    );
    let resumed_again = first_step_of_attempt(&output, 3);
    assert!(
        resumed_again > resumed_at,
        "attempt 3 resumed at {resumed_again}, attempt 2 at {resumed_at}:\n{}",
        context()
    );
    let resumed = output
        .lines()
        .find(|l| l.starts_with("resumed from"))
        .unwrap_or_else(|| panic!("no `resumed from` line:\n{}", context()));
    assert!(
        resumed.contains(&format!("checkpoints/step_{resumed_again:08}")),
        "{resumed}"
    );
    // Steps continue across the requeue: every step logged once, in order, to the end.
    let steps: Vec<u64> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .collect();
    assert_eq!(steps, (1..=STEPS).collect::<Vec<_>>(), "{}", context());
    assert!(
        run.join("model.safetensors").is_file(),
        "no final weights:\n{}",
        context()
    );

    let status = ferroclip(work.path())
        .env("SLURM_CONF", &cluster.conf)
        .args(["status", "slurm"])
        .output()
        .unwrap();
    let report = text(&status);
    assert!(status.status.success(), "{report}");
    assert!(report.contains(&format!("slurm job {job}: COMPLETED")), "{report}");
    assert!(report.contains(&format!("\"step\":{STEPS}")), "{report}");
    assert!(
        report.contains("latest checkpoint: runs/slurm/checkpoints/step_"),
        "{report}"
    );
    assert!(report.contains("finished: runs/slurm/model.safetensors"), "{report}");
}

fn dry_run_setup() -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("b32.toml"), train_config("b32")).unwrap();
    work
}

#[test]
fn dry_run_for_4_nodes_of_8_gpus_writes_the_script_without_slurm() {
    let work = dry_run_setup();
    let out = ferroclip(work.path())
        // No SLURM needed for a dry run.
        .env("PATH", work.path())
        .args([
            "submit",
            "--config",
            "b32.toml",
            "--set",
            "optim.lr=1e-3",
            "--nodes",
            "4",
            "--gpus-per-node",
            "8",
            "--cpus-per-task",
            "12",
            "--partition",
            "gpu",
            "--time",
            "2-00:00:00",
            "--account",
            "proj42",
            "--dry-run",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let script = std::fs::read_to_string(work.path().join("runs/b32/submit.sbatch")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), script);
    let lines: Vec<&str> = script.lines().collect();
    let workdir = work.path().canonicalize().unwrap();
    for expected in [
        "#SBATCH --job-name=b32".to_string(),
        "#SBATCH --nodes=4".into(),
        "#SBATCH --ntasks-per-node=8".into(),
        "#SBATCH --gpus-per-node=8".into(),
        "#SBATCH --cpus-per-task=12".into(),
        "#SBATCH --partition=gpu".into(),
        "#SBATCH --account=proj42".into(),
        "#SBATCH --time=2-00:00:00".into(),
        format!("#SBATCH --chdir={}", workdir.display()),
        "#SBATCH --output=runs/b32/logs/slurm-%j.out".into(),
        "#SBATCH --open-mode=append".into(),
        "#SBATCH --requeue".into(),
        "#SBATCH --signal=TERM@120".into(),
        format!("FERROCLIP={}", env!("CARGO_BIN_EXE_ferroclip")),
        "export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1)".into(),
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))".into(),
        "srun --mpi=none --kill-on-bad-exit=1 \"$FERROCLIP\" train --config b32.toml --set optim.lr=1e-3 --resume latest &"
            .into(),
    ] {
        assert!(lines.contains(&expected.as_str()), "missing {expected:?} in\n{script}");
    }
    assert!(work.path().join("runs/b32/logs").is_dir());
    assert!(!work.path().join("runs/b32/slurm_jobs.txt").exists());
    // NCCL ranks prove a job secret to rank 0's rendezvous: a new one in the run folder,
    // readable by its owner only, exported by the script, and the same one next time.
    let secret_line = lines
        .iter()
        .find(|l| l.starts_with("export FERROCLIP_JOB_SECRET_FILE="))
        .unwrap_or_else(|| panic!("no secret export in\n{script}"));
    assert!(secret_line.ends_with("runs/b32/job.secret"), "{secret_line}");
    let secret_path = work.path().join("runs/b32/job.secret");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&secret_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let secret = std::fs::read_to_string(&secret_path).unwrap();
    assert_eq!(secret.trim().len(), 64, "{secret}");
    let again = ferroclip(work.path())
        .env("PATH", work.path())
        .args([
            "submit",
            "--config",
            "b32.toml",
            "--nodes",
            "4",
            "--gpus-per-node",
            "8",
            "--dry-run",
        ])
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        std::fs::read_to_string(&secret_path).unwrap(),
        secret,
        "a resubmission changed the secret"
    );
    // The script is valid bash.
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(work.path().join("runs/b32/submit.sbatch"))
        .output()
        .unwrap();
    assert!(syntax.status.success(), "{}", text(&syntax));
}

#[test]
fn submit_without_slurm_names_the_package() {
    let work = dry_run_setup();
    let out = ferroclip(work.path())
        .env("PATH", work.path()) // no sbatch here
        .args(["submit", "--config", "b32.toml", "--ntasks-per-node", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let message = text(&out);
    assert!(
        message.contains("`sbatch` not found on PATH") && message.contains("slurm-wlm"),
        "{message}"
    );
}

#[test]
fn bad_submit_flags_are_named() {
    let work = dry_run_setup();
    let cases: [(&[&str], &str); 5] = [
        (&["--nodes", "0", "--gpus-per-node", "8"], "--nodes: must be at least 1"),
        (&[], "--ntasks-per-node: must be at least 1"),
        (
            &["--gpus-per-node", "0", "--ntasks-per-node", "2", "--backend", "nccl"],
            "--backend: nccl needs GPUs",
        ),
        (
            &["--gpus-per-node", "8", "--time", "1 hour"],
            "--time: `1 hour` is not a SLURM time",
        ),
        (
            &["--gpus-per-node", "8", "--", "--resume", "latest"],
            "--resume after `--`",
        ),
    ];
    for (flags, expected) in cases {
        let out = ferroclip(work.path())
            .args(["submit", "--config", "b32.toml", "--dry-run"])
            .args(flags)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flags:?} was accepted");
        let message = text(&out);
        assert!(message.contains(expected), "{flags:?}: {message}");
    }
}
