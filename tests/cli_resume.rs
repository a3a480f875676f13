//! Exact resume as real processes (issue 5): a run killed at a random step and
//! restarted by `ferroclip launch --max-restarts`, a run stopped by SIGTERM and
//! resumed, and a run killed while writing a checkpoint all end with final
//! weights byte-identical to a run that was never interrupted. Also the
//! checkpoint error paths: corrupt newest checkpoint, config mismatch,
//! non-finite steps.
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    last_logged_step, require_mpirun, resumed_step, send_signal, tagged_pids, wait_for_step, write_shape_shards,
    KillTagged,
};

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

/// 2 shards per rank and 2 loader threads per rank, a shuffle buffer, a
/// checkpoint every 4 steps: a kill lands between checkpoints, mid-epoch.
fn config(steps: u64) -> String {
    format!(
        r#"name = "t"
model = "nano"
seed = 3
threads = 1
[data]
train = "shards"
batch_size = 8
workers = 2
shuffle_buffer = 12
[optim]
lr = 2e-3
[schedule]
steps = {steps}
warmup_steps = 3
[log]
every = 1
[checkpoint]
every = 4
keep_last = 2
"#
    )
}

fn setup(steps: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_shape_shards(&dir.path().join("shards"), 80, 20);
    std::fs::write(dir.path().join("t.toml"), config(steps)).unwrap();
    dir
}

fn ferroclip(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroclip"));
    cmd.current_dir(dir).env("RUST_LOG", "info");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run ferroclip")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn weights(dir: &Path, run: &str) -> Vec<u8> {
    std::fs::read(dir.join("runs").join(run).join("model.safetensors"))
        .unwrap_or_else(|e| panic!("runs/{run}/model.safetensors: {e}"))
}

/// Losses by step from a metrics file.
fn losses(dir: &Path, run: &str) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("runs").join(run).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

/// A step in `lo..hi` that is not a checkpoint step, different from run to run
/// (printed, so a failure can be replayed by reading the log).
fn random_kill_step(lo: u64, hi: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let candidates: Vec<u64> = (lo..hi).filter(|s| s % 4 != 0).collect();
    candidates[nanos as usize % candidates.len()]
}

fn launch_args(run: &str) -> Vec<String> {
    [
        "launch",
        "--nproc",
        "2",
        "--backend",
        "mpi",
        "--log-dir",
        &format!("runs/{run}/logs"),
        "--max-restarts",
        "2",
        "--restart-backoff-s",
        "0.2",
        "--",
        "--config",
        "t.toml",
        "--set",
        &format!("name={run}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A 2-worker run whose rank 1 is SIGKILLed at a random step (not a checkpoint step) is
/// restarted by `launch --max-restarts` from its newest checkpoint and ends with the weights
/// and losses of an uninterrupted run; `settings` are extra `--set` overrides for both.
fn sigkill_then_restart_is_identical(settings: &[&str]) {
    require_mpirun();
    let dir = setup(40);
    let args = |run: &str| {
        let mut args = launch_args(run);
        for setting in settings {
            args.extend(["--set".to_string(), setting.to_string()]);
        }
        args
    };
    let reference = run(ferroclip(dir.path()).args(args("ref")));
    assert!(reference.status.success(), "reference run failed: {}", text(&reference));

    // A tag of this test's own (the two SIGKILL tests run at once: a tag shared by them
    // would let one kill, and clean up, the other's workers).
    let tag_value = format!("resume-{}-{}", std::process::id(), settings.join(","));
    let tag = format!("FERROCLIP_TEST_TAG={tag_value}");
    let _cleanup = KillTagged(tag.clone());
    let child = ferroclip(dir.path())
        .args(args("b"))
        .env("FERROCLIP_TEST_TAG", &tag_value)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let kill_at = random_kill_step(5, 35);
    wait_for_step(
        &dir.path().join("runs/b/metrics.jsonl"),
        kill_at,
        Duration::from_secs(180),
    );
    let victims = tagged_pids(&tag, "OMPI_COMM_WORLD_RANK=1");
    assert!(!victims.is_empty(), "rank 1 not found");
    let killed_after = last_logged_step(&dir.path().join("runs/b/metrics.jsonl"));
    for pid in victims {
        send_signal(pid, SIGKILL);
    }
    let out = child.wait_with_output().unwrap();
    let log = text(&out);
    assert!(
        out.status.success(),
        "run killed after step {killed_after} did not recover: {log}"
    );
    assert!(log.contains("restart 1/2"), "one restart expected: {log}");
    // The restart continued from a checkpoint at or before the kill, not from step 0 (a
    // deterministic rerun from the start would end with the same weights too).
    let resumed_at = resumed_step(&log, "runs/b/checkpoints/step_");
    assert!(
        (1..=killed_after).contains(&resumed_at),
        "resumed from step {resumed_at}, killed after step {killed_after}"
    );
    assert_eq!(
        weights(dir.path(), "ref"),
        weights(dir.path(), "b"),
        "final weights differ after a kill after step {killed_after}"
    );
    // The metrics file reads as one run: each step once, same losses bit for bit.
    assert_eq!(losses(dir.path(), "ref"), losses(dir.path(), "b"));
    // A moving average of the weights, when kept, continued exactly too.
    let ema = |run: &str| std::fs::read(dir.path().join("runs").join(run).join("ema.safetensors")).ok();
    assert_eq!(ema("ref"), ema("b"), "the weights' moving average differs");
    assert_eq!(
        ema("ref").is_some(),
        settings.iter().any(|s| s.starts_with("optim.ema_decay"))
    );
}

#[test]
fn sigkill_at_a_random_step_then_restart_gives_identical_weights() {
    sigkill_then_restart_is_identical(&[]);
}

#[test]
fn a_sharded_optimizer_run_restarts_identically_after_sigkill() {
    // Each rank writes and reloads its own optimizer shard; rank 0 the weights' average.
    sigkill_then_restart_is_identical(&["optim.shard=true", "optim.ema_decay=0.9"]);
}

/// A single-process run stopped by SIGTERM after step 5 saves a checkpoint, resumes from it
/// and ends with the losses and weights of an uninterrupted run; `settings` are extra
/// `--set` overrides for both runs.
fn sigterm_then_resume_is_identical(settings: &[&str]) {
    let dir = setup(30);
    let solo = |run: &str| {
        let mut cmd = ferroclip(dir.path());
        cmd.args([
            "train",
            "--config",
            "t.toml",
            "--set",
            &format!("name={run}"),
            "--set",
            "checkpoint.every=0",
        ]);
        for setting in settings {
            cmd.args(["--set", setting]);
        }
        cmd
    };
    let reference = run(&mut solo("ref"));
    assert!(reference.status.success(), "{}", text(&reference));

    let child = solo("b").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_step(&dir.path().join("runs/b/metrics.jsonl"), 5, Duration::from_secs(120));
    send_signal(child.id(), SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "exit like SIGTERM: {}", text(&out));
    assert!(text(&out).contains("stopped by SIGTERM"), "{}", text(&out));
    let latest = std::fs::read_to_string(dir.path().join("runs/b/checkpoints/latest")).unwrap();
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            dir.path()
                .join("runs/b/checkpoints")
                .join(latest.trim())
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let stopped_at = state["step"].as_u64().unwrap();
    assert!((5..30).contains(&stopped_at), "stopped at {stopped_at}");

    let resumed = run(solo("b").args(["--resume", "latest"]));
    assert!(resumed.status.success(), "{}", text(&resumed));
    // The restart really continued from the checkpoint (a rerun from step 0 would match too).
    assert_eq!(resumed_step(&text(&resumed), "runs/b/checkpoints/step_"), stopped_at);
    assert_eq!(weights(dir.path(), "ref"), weights(dir.path(), "b"));
    assert_eq!(losses(dir.path(), "ref"), losses(dir.path(), "b"));
}

#[test]
fn sigterm_saves_a_checkpoint_and_resume_finishes_identically() {
    sigterm_then_resume_is_identical(&[]);
}

#[test]
fn a_gradient_cached_tiled_run_resumes_identically_after_sigterm() {
    // Two micro-batches of 4 per step (a checkpoint never falls between them), tiled loss.
    sigterm_then_resume_is_identical(&["data.batch_size=4", "data.accum_steps=2", "loss_tile=3"]);
}

#[test]
fn a_const_cooldown_run_resumes_identically_after_sigterm() {
    // Constant lr, then a 1 − √x cooldown over the last 15 of 30 steps: the stop lands before
    // or inside the cooldown, and the resumed run must continue the schedule where it was.
    sigterm_then_resume_is_identical(&[
        "schedule.kind=const-cooldown",
        "schedule.cooldown_fraction=0.5",
        "schedule.cooldown=1-sqrt",
    ]);
}

#[test]
fn a_kill_while_writing_a_checkpoint_falls_back_to_the_previous_one() {
    require_mpirun();
    let dir = setup(14);
    let reference = run(ferroclip(dir.path()).args(launch_args("ref")));
    assert!(reference.status.success(), "{}", text(&reference));
    // Rank 0 aborts half-way through writing the step-8 checkpoint, once.
    let marker = dir.path().join("fault-fired");
    let out = run(ferroclip(dir.path())
        .args(launch_args("b"))
        .env("FERROCLIP_FAULT_ABORT_IN_SAVE", format!("8:{}", marker.display())));
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(marker.exists(), "the fault never fired: {log}");
    assert!(log.contains("restart 1/2"), "{log}");
    // The restart resumed from step 4, not from the half-written step 8 (nor from step 0).
    assert_eq!(resumed_step(&log, "runs/b/checkpoints/step_"), 4);
    assert_eq!(weights(dir.path(), "ref"), weights(dir.path(), "b"));
}

#[test]
fn corrupt_newest_checkpoint_is_reported_and_the_previous_used() {
    let dir = setup(10);
    let train = |extra: &[&str]| {
        let mut cmd = ferroclip(dir.path());
        cmd.args([
            "train",
            "--config",
            "t.toml",
            "--set",
            "checkpoint.every=3",
            "--set",
            "checkpoint.keep_last=3",
        ])
        .args(extra);
        run(&mut cmd)
    };
    let first = train(&[]);
    assert!(first.status.success(), "{}", text(&first));
    // Checkpoints at 3, 6, 9; damage the newest.
    let newest = dir.path().join("runs/t/checkpoints/step_00000009/model.safetensors");
    let mut bytes = std::fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();
    // An explicit PATH that does not verify is an error, not a silent fallback.
    let explicit = train(&["--resume", "runs/t/checkpoints/step_00000009"]);
    assert!(!explicit.status.success());
    assert!(text(&explicit).contains("step_00000009"), "{}", text(&explicit));

    let resumed = train(&["--resume", "latest"]);
    let log = text(&resumed);
    assert!(resumed.status.success(), "{log}");
    assert!(log.contains("step_00000009"), "the corrupt one is named: {log}");
    assert!(log.contains("resumed from") && log.contains("step_00000006"), "{log}");
}

#[test]
fn config_changes_on_resume_warn_or_fail_by_kind() {
    let dir = setup(6);
    let train = |extra: &[&str]| {
        let mut cmd = ferroclip(dir.path());
        cmd.args(["train", "--config", "t.toml", "--set", "checkpoint.every=3"])
            .args(extra);
        run(&mut cmd)
    };
    assert!(train(&[]).status.success());
    // A different model shape cannot resume.
    let other_model = train(&["--resume", "latest", "--set", "model=tiny"]);
    assert!(!other_model.status.success());
    let log = text(&other_model);
    let error = log.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    assert!(error.contains("model"), "the error names the model keys: {log}");
    // A changed learning rate resumes with a warning naming it.
    let new_lr = train(&["--resume", "latest", "--set", "optim.lr=5e-4"]);
    let log = text(&new_lr);
    assert!(new_lr.status.success(), "{log}");
    assert!(log.contains("optim.lr"), "{log}");
    // A missing folder is named.
    let missing = train(&["--resume", "runs/t/checkpoints/step_99999999"]);
    assert!(!missing.status.success());
    assert!(text(&missing).contains("step_99999999"), "{}", text(&missing));
}

#[test]
fn non_finite_steps_are_skipped_then_the_run_stops_with_a_checkpoint() {
    let dir = setup(50);
    // exp(1e4) overflows: every loss is infinite, so every step is skipped.
    let nano = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/models/nano.toml")).unwrap();
    let inline: String = nano
        .lines()
        .map(|l| match l.trim() {
            "[vision]" => "[model.vision]".to_string(),
            "[text]" => "[model.text]".to_string(),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let cfg = config(50).replace("model = \"nano\"\n", "max_nonfinite_steps = 3\n");
    let (top, rest) = cfg.split_once("[data]").unwrap();
    let model_table = inline.replacen("embed_dim", "[model]\ninit_logit_scale = 1e4\nembed_dim", 1);
    std::fs::write(dir.path().join("t.toml"), format!("{top}{model_table}\n[data]{rest}")).unwrap();
    let out = run(ferroclip(dir.path()).args(["train", "--config", "t.toml"]));
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("non-finite"), "{log}");
    assert!(log.contains("4 non-finite steps in a row"), "{log}");
    let metrics = std::fs::read_to_string(dir.path().join("runs/t/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["skipped_steps"], 4, "{metrics}");
    assert!(dir.path().join("runs/t/checkpoints/latest").is_file(), "{log}");
}

#[test]
fn a_cooldown_branched_from_a_constant_run_equals_an_independent_const_cooldown_run() {
    // The cheap scaling sweep (Hägele et al. 2024): one constant-lr run, and a cooldown
    // branched from its checkpoint at the step the cooldown starts. Constant and
    // const-cooldown schedules agree before it, so the branch is the whole run, bit for bit.
    let dir = setup(20);
    let train = |run: &str, extra: &[&str]| {
        let mut cmd = ferroclip(dir.path());
        cmd.args(["train", "--config", "t.toml", "--set", &format!("name={run}")]);
        for setting in extra {
            cmd.args(["--set", setting]);
        }
        cmd
    };
    let cooldown = ["schedule.kind=const-cooldown", "schedule.cooldown_fraction=0.4"];
    let constant = run(&mut train(
        "constant",
        &["schedule.kind=const", "checkpoint.keep_last=10"],
    ));
    assert!(constant.status.success(), "{}", text(&constant));
    let independent = run(&mut train("independent", &cooldown));
    assert!(independent.status.success(), "{}", text(&independent));
    // The cooldown of 0.4 × 20 steps starts after step 12, a checkpoint of the constant run.
    let branched = run(train("branched", &cooldown).args(["--resume", "runs/constant/checkpoints/step_00000012"]));
    assert!(branched.status.success(), "{}", text(&branched));
    assert_eq!(resumed_step(&text(&branched), "runs/constant/checkpoints/step_"), 12);
    assert!(
        text(&branched).contains("schedule.kind"),
        "the schedule change is reported"
    );
    assert_eq!(weights(dir.path(), "independent"), weights(dir.path(), "branched"));
    assert_eq!(
        losses(dir.path(), "independent")[12..],
        losses(dir.path(), "branched")[..]
    );
    // ... and the cooldown mattered: the constant run ends elsewhere.
    assert_ne!(weights(dir.path(), "constant"), weights(dir.path(), "branched"));
}
