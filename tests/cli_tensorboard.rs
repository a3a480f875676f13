//! `runs/<name>/tb/` of a real `ferroclip train`, read back by TensorBoard's own reader
//! (tests/tools/tb_scalars.py through .venv/bin/python, tensorboard 2.21.0 from
//! scripts/setup.sh): every number of every metrics.jsonl line is there at its step, also
//! after a resume that logs some steps again; the throughput fields (TFLOP/s, and MFU
//! when `log.peak_tflops` states a peak) are logged every window; `ferroclip eval` of the
//! run's weights adds `eval/<task>/<metric>` at their step.
mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn config(steps: u64) -> String {
    format!(
        r#"name = "t"
model = "nano"
seed = 2
threads = 1
[data]
train = "shards"
batch_size = 8
workers = 1
shuffle_buffer = 10
[optim]
lr = 2e-3
[schedule]
steps = {steps}
warmup_steps = 2
[log]
every = 1
peak_tflops = 0.5
[checkpoint]
every = 3
keep_last = 3
"#
    )
}

fn ferroclip(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ferroclip")
}

/// `{tag: [[step, value], ...]}` as TensorBoard's EventAccumulator reads `dir`.
fn read_tensorboard(dir: &Path) -> Value {
    common::tb_scalars(&[dir.as_os_str()])
}

/// `{tag: [[step, value], ...]}` of every scalar event in `dir`'s files, in file name order.
fn read_raw_events(dir: &Path) -> Value {
    common::tb_scalars(&["--raw".as_ref(), dir.as_os_str()])
}

/// Every number of the record (nested objects as `key/inner`), as the writer tags them.
fn numbers(prefix: &str, value: &Value, out: &mut Vec<(String, f64)>) {
    match value {
        Value::Number(n) => out.push((prefix.to_string(), n.as_f64().unwrap())),
        Value::Object(map) => {
            for (key, inner) in map {
                numbers(&format!("{prefix}/{key}"), inner, out);
            }
        }
        _ => {}
    }
}

/// Checks that TensorBoard holds exactly the metrics file's numbers, step by step.
fn assert_tensorboard_matches_metrics(run: &Path) -> Vec<Value> {
    let records: Vec<Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tb = read_tensorboard(&run.join("tb"));
    let tb = tb.as_object().unwrap();
    let steps: Vec<u64> = records.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    let mut expected_tags = 0;
    for record in &records {
        let step = record["step"].as_u64().unwrap();
        let mut fields = Vec::new();
        for (key, value) in record.as_object().unwrap().iter().filter(|(k, _)| *k != "step") {
            numbers(&format!("train/{key}"), value, &mut fields);
        }
        expected_tags = expected_tags.max(fields.len());
        for (tag, value) in fields {
            let series = tb
                .get(&tag)
                .unwrap_or_else(|| panic!("no {tag} in tb/: {:?}", tb.keys()));
            let at_step: Vec<f64> = series
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p[0].as_u64() == Some(step))
                .map(|p| p[1].as_f64().unwrap())
                .collect();
            // One value per step, the metrics file's, as the f32 TensorBoard stores.
            assert_eq!(at_step, vec![value as f32 as f64], "{tag} at step {step}");
        }
    }
    let train_tags = tb.iter().filter(|(tag, _)| tag.starts_with("train/"));
    for (tag, series) in train_tags.clone() {
        let tb_steps: Vec<u64> = series
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_u64().unwrap())
            .collect();
        assert_eq!(tb_steps, steps, "{tag}: steps in tb/ are the metrics file's");
    }
    assert_eq!(train_tags.count(), expected_tags, "no tags beyond the metrics file's");
    records
}

#[test]
fn tensorboard_holds_every_logged_scalar_also_after_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    common::write_shape_shards(&dir.path().join("shards"), 48, 12);
    std::fs::write(dir.path().join("t.toml"), config(7)).unwrap();
    let out = ferroclip(dir.path(), &["train", "--config", "t.toml"]);
    common::assert_ok(&out);
    let run = dir.path().join("runs/t");
    let records = assert_tensorboard_matches_metrics(&run);
    assert_eq!(records.len(), 7);
    for key in [
        "loss",
        "lr",
        "logit_scale",
        "samples_per_s",
        "tflops",
        "recompute_tflops",
        "mfu",
        "hfu",
    ] {
        assert!(records.iter().all(|r| r[key].is_number()), "{key} in every line");
    }
    // nano: 6 FLOPs per forward MAC per sample; MFU against the stated 0.5 TFLOP/s.
    let macs = trainer::ModelConfig::preset("nano").unwrap().macs_per_sample() as f64;
    for r in &records {
        let tflops = r["tflops"].as_f64().unwrap();
        let expected = 6.0 * macs * r["samples_per_s"].as_f64().unwrap() / 1e12;
        assert!((tflops - expected).abs() <= 1e-9 * expected, "{tflops} vs {expected}");
        assert!((r["mfu"].as_f64().unwrap() - tflops / 0.5).abs() <= 1e-12);
        assert_eq!(r["recompute_tflops"], 0.0, "no checkpointing, no GradCache");
    }
    let first_lr = read_tensorboard(&run.join("tb"))["train/lr"].clone();
    // An eval of the step-6 checkpoint, about to be replaced by the resume below.
    common::write_disc_zeroshot(dir.path());
    let eval = [
        "eval",
        "--zeroshot",
        "zs",
        "--classnames",
        "classes.txt",
        "--checkpoint",
    ];
    // Evals of the step-3 and step-6 checkpoints; the resume below replaces the step-6 weights.
    for checkpoint in ["runs/t/checkpoints/step_00000003", "runs/t/checkpoints/step_00000006"] {
        common::assert_ok(&ferroclip(dir.path(), &[&eval[..], &[checkpoint]].concat()));
    }
    let steps = |evals: &[(u64, f64)]| evals.iter().map(|e| e.0).collect::<Vec<_>>();
    assert_eq!(steps(&eval_acc1(&run)), [3, 6]);
    let tb_steps = |tb: &Value| {
        tb["eval/zeroshot/acc1"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(tb_steps(&read_tensorboard(&run.join("tb"))), [3, 6]);

    // Resume from step 3: steps 4..=7 are logged again (other timings, so other
    // samples/s); tb/ must hold the new values only.
    let out = ferroclip(
        dir.path(),
        &[
            "train",
            "--config",
            "t.toml",
            "--resume",
            "runs/t/checkpoints/step_00000003",
        ],
    );
    common::assert_ok(&out);
    let files = std::fs::read_dir(run.join("tb")).unwrap().count();
    assert_eq!(
        files, 3,
        "one event file per training process start, one of the evals kept"
    );
    let resumed = assert_tensorboard_matches_metrics(&run);
    assert_eq!(resumed.len(), 7);
    assert_eq!(read_tensorboard(&run.join("tb"))["train/lr"], first_lr, "same schedule");
    // The eval of the replaced step-6 weights is gone from eval.jsonl and from tb/, for the
    // accumulator (which purges at a restart mark) and in the raw events (what TensorBoard's
    // data server reads: it purges a tag only when that tag's steps go back).
    let acc1 = eval_acc1(&run);
    assert_eq!(steps(&acc1), [3]);
    let only_step_3 = serde_json::json!([[3, acc1[0].1 as f32 as f64]]);
    assert_eq!(read_tensorboard(&run.join("tb"))["eval/zeroshot/acc1"], only_step_3);
    assert_eq!(read_raw_events(&run.join("tb"))["eval/zeroshot/acc1"], only_step_3);
    // An eval of the final weights lands at step 7.
    common::assert_ok(&ferroclip(dir.path(), &[&eval[..], &["runs/t"]].concat()));
    let acc1 = eval_acc1(&run);
    assert_eq!(steps(&acc1), [3, 7]);
    let both: Vec<Value> = acc1
        .iter()
        .map(|&(s, v)| serde_json::json!([s, v as f32 as f64]))
        .collect();
    assert_eq!(
        read_tensorboard(&run.join("tb"))["eval/zeroshot/acc1"],
        Value::from(both.clone())
    );
    assert_eq!(
        read_raw_events(&run.join("tb"))["eval/zeroshot/acc1"],
        Value::from(both)
    );
}

/// (step, zero-shot acc1) of each line of the run's eval.jsonl.
fn eval_acc1(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("eval.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["zeroshot"]["metrics"]["acc1"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn without_a_peak_on_the_cpu_mfu_is_not_logged() {
    let dir = tempfile::tempdir().unwrap();
    common::write_shape_shards(&dir.path().join("shards"), 24, 12);
    let toml = config(2).replace("peak_tflops = 0.5\n", "");
    std::fs::write(dir.path().join("t.toml"), toml).unwrap();
    common::assert_ok(&ferroclip(dir.path(), &["train", "--config", "t.toml"]));
    let text = std::fs::read_to_string(dir.path().join("runs/t/metrics.jsonl")).unwrap();
    for line in text.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        assert!(r["tflops"].as_f64().unwrap() > 0.0, "{line}");
        assert!(r.get("mfu").is_none() && r.get("hfu").is_none(), "{line}");
    }
    // A bad peak is named in the error.
    let out = ferroclip(
        dir.path(),
        &["train", "--config", "t.toml", "--set", "log.peak_tflops=-1"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("log.peak_tflops"),
        "{}",
        common::output_text(&out)
    );
}

#[test]
fn recomputation_is_logged_apart_from_the_model_flops() {
    let dir = tempfile::tempdir().unwrap();
    common::write_shape_shards(&dir.path().join("shards"), 24, 12);
    std::fs::write(dir.path().join("t.toml"), config(2)).unwrap();
    common::assert_ok(&ferroclip(dir.path(), &["train", "--config", "t.toml"]));
    // The resolved config has the model inline, so its checkpointing can be switched on.
    let resolved = std::fs::read_to_string(dir.path().join("runs/t/config.toml")).unwrap();
    std::fs::write(
        dir.path().join("g.toml"),
        resolved.replace("name = \"t\"", "name = \"g\""),
    )
    .unwrap();
    let sets = ["--set", "model.grad_checkpointing=true", "--set", "data.accum_steps=2"];
    common::assert_ok(&ferroclip(
        dir.path(),
        &[&["train", "--config", "g.toml"][..], &sets].concat(),
    ));
    let line = std::fs::read_to_string(dir.path().join("runs/g/metrics.jsonl")).unwrap();
    let r: Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();

    let mut model = trainer::ModelConfig::preset("nano").unwrap();
    model.grad_checkpointing = true;
    let forward = trainer::model::macs::forward_macs(&model).total() as f64;
    let checkpointing = trainer::model::macs::recompute_macs(&model).total() as f64;
    // Checkpointing: the stem and all blocks but the last again; GradCache over 2
    // micro-batches: one of them encoded twice, half a forward per sample.
    let expected = (checkpointing + 0.5 * forward) / (3.0 * forward);
    let ratio = r["recompute_tflops"].as_f64().unwrap() / r["tflops"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9, "{ratio} vs {expected}: {r}");
    let (mfu, hfu) = (r["mfu"].as_f64().unwrap(), r["hfu"].as_f64().unwrap());
    assert!(
        (hfu / mfu - (1.0 + expected)).abs() < 1e-9,
        "HFU adds the recomputation: {r}"
    );
}
