//! `ferroclip train` end to end as a real process: synthetic coloured-shape shards,
//! the `nano` model; the loss falls, the run folder is complete and bad input gives
//! one clear error line naming the culprit.
mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use dataloader::{ShardSample, ShardWriter};

/// 96 samples (12 distinct colour × shape pairs, sizes vary) in 4 shards.
fn write_shards(dir: &Path) -> Vec<PathBuf> {
    common::write_shape_shards(dir, 96, 24)
}

fn ferroclip(args: &[&str], cwd: &Path) -> Output {
    common::ferroclip_in(cwd, args)
}

fn config(shards: &str, steps: u64) -> String {
    format!(
        r#"name = "t"
model = "nano"
seed = 1
threads = 1
out_dir = "runs"
[data]
train = "{shards}"
batch_size = 16
workers = 2
shuffle_buffer = 50
[optim]
lr = 2e-3
weight_decay = 0.0
[schedule]
steps = {steps}
warmup_steps = 5
[log]
every = 1
"#
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn short_run_loss_falls_and_run_folder_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    write_shards(&dir.path().join("shards"));
    std::fs::write(dir.path().join("t.toml"), config("shards/{00000..00003}.tar", 60)).unwrap();
    let out = ferroclip(&["train", "--config", "t.toml"], dir.path());
    assert!(out.status.success(), "train failed: {}", stderr(&out));

    let run = dir.path().join("runs/t");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 60, "one line per step");
    assert_eq!(lines.last().unwrap()["samples_seen"], 60 * 16);
    let loss: Vec<f64> = lines.iter().map(|l| l["loss"].as_f64().unwrap()).collect();
    let first = loss[0];
    let last = loss[50..].iter().sum::<f64>() / 10.0;
    // 16 captions per batch, chance loss ln(16) = 2.77; 12 distinct pairs are easy to separate.
    assert!(first > 2.0, "initial loss {first} should be near ln(16)");
    assert!(last < 0.75 * first, "loss did not fall: {loss:?}");

    assert!(run.join("model.safetensors").is_file());
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        resolved.contains("[model.vision]"),
        "model written out in full:\n{resolved}"
    );
    // The run folder is a checkpoint that eval/embed accept.
    std::fs::write(dir.path().join("texts.txt"), "a red circle\na blue square\n").unwrap();
    let out = ferroclip(
        &[
            "embed",
            "--checkpoint",
            "runs/t",
            "--texts",
            "texts.txt",
            "--out",
            "e.jsonl",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "embed failed: {}", stderr(&out));
}

#[test]
fn same_seed_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    write_shards(&dir.path().join("shards"));
    std::fs::write(dir.path().join("t.toml"), config("shards", 10)).unwrap();
    let mut runs = Vec::new();
    for name in ["a", "b"] {
        let out = ferroclip(
            &["train", "--config", "t.toml", "--set", &format!("name={name}")],
            dir.path(),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        runs.push(std::fs::read_to_string(dir.path().join(format!("runs/{name}/metrics.jsonl"))).unwrap());
    }
    let losses = |m: &str| -> Vec<String> {
        m.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].to_string())
            .collect()
    };
    assert_eq!(losses(&runs[0]), losses(&runs[1]));
}

#[test]
fn bad_samples_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("shards");
    write_shards(&shards);
    // One more shard whose samples are undecodable.
    let mut writer = ShardWriter::new(&dir.path().join("bad"), 10).unwrap();
    for _ in 0..5 {
        writer
            .write(&ShardSample {
                key: None,
                image: b"\x89PNG\r\n\x1a\nnot really".to_vec(),
                image_ext: "png".into(),
                captions: vec!["broken".into()],
                label: None,
                json: Default::default(),
            })
            .unwrap();
    }
    writer.finish().unwrap();
    std::fs::write(dir.path().join("t.toml"), config("shards::bad/00000.tar", 10)).unwrap();
    let out = ferroclip(&["train", "--config", "t.toml", "--set", "data.workers=1"], dir.path());
    assert!(
        out.status.success(),
        "bad samples must not stop training: {}",
        stderr(&out)
    );
    let metrics = std::fs::read_to_string(dir.path().join("runs/t/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    let skipped = &last["skipped_samples"];
    let total: u64 = skipped
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    assert!(total >= 5, "skips counted by reason in metrics: {skipped}");
}

#[test]
fn bad_input_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    write_shards(&dir.path().join("shards"));
    let cases: [(&str, String, &str); 4] = [
        ("missing shard", config("shards/{00000..00009}.tar", 5), "00004.tar"),
        (
            "unknown field",
            config("shards", 5).replace("lr = 2e-3", "lrr = 2e-3"),
            "lrr",
        ),
        (
            "mistyped field",
            config("shards", 5).replace("batch_size = 16", "batch_size = \"16\""),
            "batch_size",
        ),
        (
            "unknown model",
            config("shards", 5).replace("\"nano\"", "\"nanoo\""),
            "nanoo",
        ),
    ];
    for (what, text, culprit) in cases {
        std::fs::write(dir.path().join("t.toml"), text).unwrap();
        let out = ferroclip(&["train", "--config", "t.toml"], dir.path());
        let err = stderr(&out);
        assert!(!out.status.success(), "{what}: should fail");
        let line = err
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("{what}: no error line in {err}"));
        assert!(
            line.contains(culprit),
            "{what}: error line should name {culprit}: {line}"
        );
        assert!(!err.contains("panicked"), "{what}: panic instead of an error: {err}");
    }
    let out = ferroclip(&["train", "--config", "nope.toml"], dir.path());
    assert!(stderr(&out).contains("nope.toml"), "{}", stderr(&out));
}

#[test]
fn siglip_run_loss_falls_and_bias_is_saved() {
    let dir = tempfile::tempdir().unwrap();
    write_shards(&dir.path().join("shards"));
    // open_clip's SigLIP initialisation: scale ln(10), bias -10.
    let mut model = trainer::ModelConfig::preset("nano").unwrap();
    model.init_logit_scale = 10f64.ln();
    model.init_logit_bias = Some(-10.0);
    std::fs::write(dir.path().join("siglip-nano.toml"), toml_string(&model)).unwrap();
    let text = config("shards", 40).replace("model = \"nano\"", "model = \"siglip-nano.toml\"\nloss = \"siglip\"");
    std::fs::write(dir.path().join("t.toml"), text).unwrap();
    let out = ferroclip(&["train", "--config", "t.toml"], dir.path());
    assert!(out.status.success(), "train failed: {}", stderr(&out));
    let metrics = std::fs::read_to_string(dir.path().join("runs/t/metrics.jsonl")).unwrap();
    let loss: Vec<f64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let late = loss[30..].iter().sum::<f64>() / 10.0;
    assert!(late < 0.75 * loss[0], "siglip loss did not fall: {loss:?}");
    let weights = std::fs::read(dir.path().join("runs/t/model.safetensors")).unwrap();
    let names = safetensors::SafeTensors::deserialize(&weights).unwrap().names().len();
    let nano_vars = trainer::tch::nn::VarStore::new(trainer::tch::Device::Cpu);
    let _ = trainer::Clip::new(&nano_vars.root(), &trainer::ModelConfig::preset("nano").unwrap());
    assert_eq!(
        names,
        nano_vars.variables().len() + 1,
        "logit_bias saved beside the CLIP variables"
    );

    // CLIP's model has no bias: asking for siglip names the missing field.
    std::fs::write(
        dir.path().join("t.toml"),
        config("shards", 5).replace("model = \"nano\"", "model = \"nano\"\nloss = \"siglip\""),
    )
    .unwrap();
    let out = ferroclip(&["train", "--config", "t.toml"], dir.path());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("init_logit_bias"), "{}", stderr(&out));
}

fn toml_string(model: &trainer::ModelConfig) -> String {
    toml::to_string(model).expect("model config to TOML")
}

#[test]
fn accumulation_counts_every_micro_batch() {
    let dir = tempfile::tempdir().unwrap();
    write_shards(&dir.path().join("shards"));
    std::fs::write(dir.path().join("t.toml"), config("shards", 30)).unwrap();
    let out = ferroclip(
        &[
            "train",
            "--config",
            "t.toml",
            "--set",
            "data.accum_steps=2",
            "--set",
            "data.batch_size=8",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let metrics = std::fs::read_to_string(dir.path().join("runs/t/metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 30);
    assert_eq!(
        lines.last().unwrap()["samples_seen"],
        30 * 2 * 8,
        "2 micro-batches of 8 per step"
    );
    let loss: Vec<f64> = lines.iter().map(|l| l["loss"].as_f64().unwrap()).collect();
    let late = loss[25..].iter().sum::<f64>() / 5.0;
    assert!(late < loss[0], "loss did not fall with accumulation: {loss:?}");
}
