//! The moving average of the weights (`optim.ema_decay`) as real `ferroclip train` runs:
//! it follows `ema ← d·ema + (1 − d)·w` step by step (read back from the checkpoints), is
//! saved in every checkpoint and beside the final weights, continues exactly after a resume
//! (and measurably not when the checkpoint had none), and `eval --ema` / `export --ema`
//! use it.
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use common::{
    assert_ok, f32_tensors, max_abs_diff, output_text, resumed_step, write_disc_zeroshot, write_shape_shards,
};

const DECAY: f32 = 0.8;
const STEPS: u64 = 8;

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_shape_shards(&dir.path().join("shards"), 64, 16);
    std::fs::write(
        dir.path().join("t.toml"),
        format!(
            r#"name = "t"
model = "nano"
seed = 5
threads = 1
[data]
train = "shards"
batch_size = 8
workers = 2
[optim]
lr = 3e-3
ema_decay = {DECAY}
[schedule]
steps = {STEPS}
warmup_steps = 2
[log]
every = 1
[checkpoint]
every = 1
keep_last = 20
"#
        ),
    )
    .unwrap();
    dir
}

fn train(dir: &Path, run: &str, extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroclip"));
    cmd.current_dir(dir)
        .env("RUST_LOG", "info")
        .args(["train", "--config", "t.toml", "--set", &format!("name={run}")])
        .args(extra);
    let out = cmd.output().expect("run ferroclip");
    assert_ok(&out);
    out
}

fn step_dir(dir: &Path, run: &str, step: u64) -> std::path::PathBuf {
    dir.join("runs").join(run).join(format!("checkpoints/step_{step:08}"))
}

/// d·a + (1 − d)·b, tensor by tensor.
fn blend(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> BTreeMap<String, Vec<f32>> {
    a.iter()
        .map(|(name, x)| {
            let y = &b[name];
            (
                name.clone(),
                x.iter().zip(y).map(|(p, q)| DECAY * p + (1.0 - DECAY) * q).collect(),
            )
        })
        .collect()
}

#[test]
fn the_average_follows_the_weights_and_resumes_exactly() {
    let dir = setup();
    let d = dir.path();
    train(d, "ref", &[]);
    let run = d.join("runs/ref");

    // Every checkpoint lists ema.safetensors (so it is verified like the weights), and each
    // step's average is the last one blended with that step's weights.
    for step in 1..STEPS {
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(step_dir(d, "ref", step).join("state.json")).unwrap())
                .unwrap();
        assert!(
            state["files"]["ema.safetensors"].is_object(),
            "step {step}: {}",
            state["files"]
        );
    }
    for step in 2..STEPS {
        let before = f32_tensors(&step_dir(d, "ref", step - 1).join("ema.safetensors"));
        let weights = f32_tensors(&step_dir(d, "ref", step).join("model.safetensors"));
        let after = f32_tensors(&step_dir(d, "ref", step).join("ema.safetensors"));
        let diff = max_abs_diff(&blend(&before, &weights), &after);
        assert!(diff < 1e-6, "step {step}: the average is off the formula by {diff}");
    }
    let last_ema = f32_tensors(&step_dir(d, "ref", STEPS - 1).join("ema.safetensors"));
    let final_weights = f32_tensors(&run.join("model.safetensors"));
    let final_ema = f32_tensors(&run.join("ema.safetensors"));
    assert!(max_abs_diff(&blend(&last_ema, &final_weights), &final_ema) < 1e-6);
    // The average is not the weights (the comparison above could fail).
    assert!(max_abs_diff(&final_weights, &final_ema) > 1e-4);

    // Resumed from step 4 of the reference: the same average, bit for bit.
    let resumed = train(
        d,
        "resumed",
        &[
            "--resume",
            step_dir(d, "ref", 4).to_str().unwrap(),
            "--set",
            "checkpoint.every=0",
        ],
    );
    let prefix = format!("{}/step_", d.join("runs/ref/checkpoints").display());
    assert_eq!(resumed_step(&output_text(&resumed), &prefix), 4, "it resumed");
    let bytes = |run: &str, file: &str| std::fs::read(d.join("runs").join(run).join(file)).unwrap();
    assert_eq!(bytes("ref", "model.safetensors"), bytes("resumed", "model.safetensors"));
    assert_eq!(bytes("ref", "ema.safetensors"), bytes("resumed", "ema.safetensors"));
}

#[test]
fn a_checkpoint_without_an_average_starts_it_at_its_weights() {
    let dir = setup();
    let d = dir.path();
    train(d, "ref", &["--set", "checkpoint.every=4"]);
    // The same run without an average up to step 4 (same weights: the average does not
    // touch training), then resumed with it.
    let plain = std::fs::read_to_string(d.join("t.toml"))
        .unwrap()
        .replace(&format!("ema_decay = {DECAY}\n"), "");
    std::fs::write(d.join("plain.toml"), plain).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroclip"));
    cmd.current_dir(d).args([
        "train",
        "--config",
        "plain.toml",
        "--set",
        "name=plain",
        "--set",
        "checkpoint.every=4",
    ]);
    assert_ok(&cmd.output().unwrap());
    assert!(!d.join("runs/plain/ema.safetensors").exists());
    assert_eq!(
        std::fs::read(d.join("runs/ref/model.safetensors")).unwrap(),
        std::fs::read(d.join("runs/plain/model.safetensors")).unwrap(),
        "keeping an average does not change training"
    );
    let out = train(
        d,
        "late",
        &[
            "--resume",
            step_dir(d, "plain", 4).to_str().unwrap(),
            "--set",
            "checkpoint.every=0",
        ],
    );
    assert!(
        output_text(&out).contains("no ema.safetensors"),
        "{}",
        output_text(&out)
    );
    let late = f32_tensors(&d.join("runs/late/ema.safetensors"));
    let reference = f32_tensors(&d.join("runs/ref/ema.safetensors"));
    assert!(max_abs_diff(&late, &reference) > 1e-5, "the saved average mattered");
    assert_eq!(
        std::fs::read(d.join("runs/ref/model.safetensors")).unwrap(),
        std::fs::read(d.join("runs/late/model.safetensors")).unwrap()
    );

    // export --ema writes the average; eval --ema evaluates it and records it apart.
    let export = Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .current_dir(d)
        .args(["export", "--checkpoint", "runs/ref", "--out", "exported", "--ema"])
        .output()
        .unwrap();
    assert_ok(&export);
    assert_eq!(
        max_abs_diff(
            &f32_tensors(&d.join("exported/open_clip_model.safetensors")),
            &reference
        ),
        0.0
    );
    write_disc_zeroshot(d);
    for ema in [false, true] {
        let mut eval = Command::new(env!("CARGO_BIN_EXE_ferroclip"));
        eval.current_dir(d).args([
            "eval",
            "--checkpoint",
            "runs/ref",
            "--zeroshot",
            "zs",
            "--classnames",
            "classes.txt",
        ]);
        if ema {
            eval.arg("--ema");
        }
        assert_ok(&eval.output().unwrap());
    }
    let records = std::fs::read_to_string(d.join("runs/ref/eval.jsonl")).unwrap();
    let tasks: Vec<Vec<String>> = records
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "step")
                .cloned()
                .collect()
        })
        .collect();
    assert!(tasks[0].contains(&"zeroshot".to_string()), "{tasks:?}");
    assert!(tasks[1].contains(&"ema_zeroshot".to_string()), "{tasks:?}");
    // A run without an average says so.
    let missing = Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .current_dir(d)
        .args(["export", "--checkpoint", "runs/plain", "--out", "x", "--ema"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        output_text(&missing).contains("optim.ema_decay"),
        "{}",
        output_text(&missing)
    );
}

#[test]
fn a_bad_decay_is_refused_by_name() {
    let dir = setup();
    let out = Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .current_dir(dir.path())
        .args(["train", "--config", "t.toml", "--set", "optim.ema_decay=1.0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(output_text(&out).contains("optim.ema_decay"), "{}", output_text(&out));
}
