//! `ferroclip sweep` end to end as real processes: a 2-run sweep of the `nano` model
//! on tiny synthetic shards is planned, run (train + zero-shot eval per run),
//! stopped while its second run trains, run again — the finished run is skipped,
//! not recomputed — and collected into results.csv.
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

fn ferroclip(args: &[&str], cwd: &Path) -> Output {
    common::ferroclip_in(cwd, args)
}

/// 16 samples (2 steps of 8) for the first run; the second is long enough to be
/// stopped while it trains.
const SWEEP: &str = r#"name = "t"
base = "base.toml"
[[axis]]
key = "samples_seen"
values = [16, 4000]
[eval]
zeroshot = "zs"
classnames = "classes.txt"
batch_size = 8
"#;

#[test]
fn stopped_sweep_resumes_without_recomputing_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    common::write_disc_shards(&root.join("shards"), 48, 24);
    common::write_disc_zeroshot(root);
    std::fs::write(root.join("base.toml"), common::SWEEP_BASE_TOML).unwrap();
    std::fs::write(root.join("sweep.toml"), SWEEP).unwrap();

    let out = ferroclip(&["sweep", "plan", "sweep.toml"], root);
    assert!(out.status.success(), "plan failed: {}", common::output_text(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("t-samples=16") && plan.contains("t-samples=4000"),
        "{plan}"
    );
    assert!(plan.contains("total (2 runs)"), "{plan}");

    let first = root.join("runs/t/t-samples=16");
    let second = root.join("runs/t/t-samples=4000");
    let mut sweep = Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .args(["sweep", "run", "sweep.toml", "--max-retries", "0"])
        .current_dir(root)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sweep");
    // Stop the sweep as soon as the second run's training has started.
    let deadline = Instant::now() + Duration::from_secs(240);
    while !second.join("logs/sweep-train.log").exists() {
        assert!(Instant::now() < deadline, "the second run never started");
        assert!(
            sweep.try_wait().unwrap().is_none(),
            "the sweep ended before the second run started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let killed = Command::new("kill")
        .args(["-TERM", &sweep.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let stopped = sweep.wait_with_output().expect("wait for the sweep");
    let stopped_err = String::from_utf8_lossy(&stopped.stderr).into_owned();
    assert!(
        !stopped.status.success(),
        "a stopped sweep must not report success: {stopped_err}"
    );
    assert!(stopped_err.contains("interrupted"), "{stopped_err}");

    let weights = first.join("model.safetensors");
    assert!(
        weights.is_file() && first.join("eval.json").is_file(),
        "first run incomplete: {stopped_err}"
    );
    assert!(
        !second.join("eval.json").exists(),
        "the second run should have been stopped"
    );
    let mtime = |p: &Path| -> SystemTime { std::fs::metadata(p).unwrap().modified().unwrap() };
    let first_weights_time = mtime(&weights);
    let first_eval_time = mtime(&first.join("eval.json"));

    let out = ferroclip(&["sweep", "run", "sweep.toml"], root);
    assert!(
        out.status.success(),
        "re-run failed: {}\nsecond run's log:\n{}",
        common::output_text(&out),
        std::fs::read_to_string(second.join("logs/sweep-train.log")).unwrap_or_default()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 run(s) finished now, 1 were already finished"),
        "{}",
        common::output_text(&out)
    );
    assert_eq!(mtime(&weights), first_weights_time, "the finished run was retrained");
    assert_eq!(
        mtime(&first.join("eval.json")),
        first_eval_time,
        "the finished run was re-evaluated"
    );
    let first_log = std::fs::read_to_string(first.join("logs/sweep-train.log")).unwrap();
    assert_eq!(first_log.matches("=== sweep:").count(), 1, "{first_log}");
    let second_log = std::fs::read_to_string(second.join("logs/sweep-train.log")).unwrap();
    assert!(second_log.contains("=== sweep: stopped"), "{second_log}");
    assert!(second.join("model.safetensors").is_file() && second.join("eval.json").is_file());
    let metrics = std::fs::read_to_string(second.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 500, "4000 samples / batch 8");

    let out = ferroclip(&["sweep", "collect", "sweep.toml"], root);
    assert!(out.status.success(), "collect failed: {}", common::output_text(&out));
    let csv = std::fs::read_to_string(root.join("runs/t/results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[0].starts_with("run,samples,macs_per_sample,samples_seen,compute,final_loss,final_step,")
            && lines[0].contains("zeroshot_top1"),
        "{csv}"
    );
    assert!(lines[1].starts_with("t-samples=16,16,"), "{csv}");
    // nano: 5,353,728 forward MACs per sample (trainer::macs), × 4000 samples.
    assert!(lines[2].contains(",5353728,4000,2.1414912e10,"), "{csv}");
}

#[test]
fn a_bad_key_in_a_sweep_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("base.toml"), common::SWEEP_BASE_TOML).unwrap();
    std::fs::write(
        root.join("sweep.toml"),
        "name = \"b\"\nbase = \"base.toml\"\n[[axis]]\nkey = \"optim.learning_rate\"\nvalues = [0.1]\n",
    )
    .unwrap();
    let out = ferroclip(&["sweep", "plan", "sweep.toml"], root);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("learning_rate") && err.contains("b-learning_rate=0.1"),
        "{err}"
    );
}
