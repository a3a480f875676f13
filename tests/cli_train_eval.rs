//! Evaluation while training (`[eval]`) on 2 MPI ranks: each rank embeds its share of the
//! eval shards and classes, rank 0 computes the metrics, and they equal a one-process
//! `ferroclip eval` of the same weights (the step-3 checkpoint and the final weights),
//! in `eval.jsonl` and in TensorBoard's reader; a bad `[eval]` is refused by field.
mod common;

use std::path::Path;
use std::process::Command;

use common::{
    assert_ok, output_text, require_mpirun, shape_png, write_disc_shards, write_disc_zeroshot, write_shape_shards,
    COLOURS,
};
use dataloader::{ShardSample, ShardWriter};
use serde_json::Value;

/// 18 distinct images with a caption each that no other has (no ties in retrieval), in
/// 3 shards: 2 on rank 0, 1 on rank 1.
fn write_retrieval_shards(dir: &Path) {
    let mut writer = ShardWriter::new(dir, 6).unwrap();
    for i in 0..18 {
        let (name, rgb) = COLOURS[i % COLOURS.len()];
        let (disc, size) = (i % 2 == 0, 24 + 4 * i as u32);
        let shape = if disc { "circle" } else { "square" };
        writer
            .write(&ShardSample {
                key: None,
                image: shape_png(rgb, disc, size),
                image_ext: "png".into(),
                captions: vec![format!("a {name} {shape} of {size} pixels")],
                label: None,
                json: Default::default(),
            })
            .unwrap();
    }
    writer.finish().unwrap();
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_shape_shards(&d.join("shards"), 64, 16);
    write_disc_zeroshot(d); // classes.txt (and zs/, one shard: not used here)
    write_disc_shards(&d.join("zs4"), 30, 8); // 4 shards: 2 per rank
    write_retrieval_shards(&d.join("ret"));
    std::fs::write(
        d.join("t.toml"),
        r#"name = "t"
model = "nano"
seed = 7
threads = 1
[data]
train = "shards"
batch_size = 8
workers = 1
[optim]
lr = 3e-3
[schedule]
steps = 6
warmup_steps = 2
[log]
every = 1
[checkpoint]
every = 3
[eval]
every = 3
zeroshot = "zs4"
classnames = "classes.txt"
retrieval = "ret"
batch_size = 7
"#,
    )
    .unwrap();
    dir
}

fn ferroclip(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .args(args)
        .output()
        .expect("run ferroclip");
    assert_ok(&out);
    out
}

/// `ferroclip eval` of `weights` in one process: {task: metrics}.
fn one_process_eval(dir: &Path, weights: &str, out: &str) -> Value {
    ferroclip(
        dir,
        &[
            "eval",
            "--checkpoint",
            weights,
            "--zeroshot",
            "zs4",
            "--classnames",
            "classes.txt",
            "--retrieval",
            "ret",
            "--out",
            out,
        ],
    );
    serde_json::from_str(&std::fs::read_to_string(dir.join(out)).unwrap()).unwrap()
}

fn assert_same_metrics(during: &Value, alone: &Value, what: &str) {
    for task in ["zeroshot", "retrieval"] {
        let (a, b) = (&during[task]["metrics"], &alone[task]["metrics"]);
        let a = a
            .as_object()
            .unwrap_or_else(|| panic!("{what}: no {task} metrics in {during}"));
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.as_object().unwrap().keys().collect::<Vec<_>>()
        );
        for (metric, value) in a {
            let (x, y) = (value.as_f64().unwrap(), b[metric].as_f64().unwrap());
            assert!(
                (x - y).abs() < 1e-9,
                "{what}: {task}/{metric} during training {x}, alone {y}"
            );
        }
        for count in ["num_samples", "num_classes", "num_images", "num_texts"] {
            assert_eq!(during[task][count], alone[task][count], "{what}: {task} {count}");
        }
    }
}

#[test]
fn two_ranks_evaluate_during_training_as_one_process_does_afterwards() {
    require_mpirun();
    let dir = setup();
    let d = dir.path();
    let out = ferroclip(
        d,
        &["launch", "--nproc", "2", "--backend", "mpi", "--", "--config", "t.toml"],
    );
    let log = output_text(&out);
    assert!(log.contains("eval:"), "the eval is logged: {log}");
    let lines: Vec<Value> = std::fs::read_to_string(d.join("runs/t/eval.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [3, 6], "every 3 steps, the last step once");
    for line in &lines {
        assert!(
            line["eval_seconds"].as_f64().unwrap() > 0.0,
            "the cost is recorded: {line}"
        );
        assert_eq!(line["zeroshot"]["num_samples"], 30, "both ranks' shards: {line}");
        assert_eq!(line["retrieval"]["num_images"], 18, "both ranks' shards: {line}");
    }
    // What the run saw at step 3 and at the end, against one process on those weights.
    let at_3 = one_process_eval(d, "runs/t/checkpoints/step_00000003", "e3.json");
    assert_same_metrics(&lines[0], &at_3, "step 3");
    let at_6 = one_process_eval(d, "runs/t", "e6.json");
    assert_same_metrics(&lines[1], &at_6, "step 6");
    // The weights changed between the two (the comparison can tell evaluations apart).
    assert_ne!(lines[0]["retrieval"]["metrics"], lines[1]["retrieval"]["metrics"]);

    // TensorBoard's own reader sees the same numbers at their steps, and the cost.
    let tb = common::tb_scalars(&[d.join("runs/t/tb").as_os_str()]);
    let acc1 = &tb["eval/zeroshot/acc1"];
    assert_eq!(acc1[0][0], 3);
    assert_eq!(acc1[1][0], 6);
    let logged = lines[1]["zeroshot"]["metrics"]["acc1"].as_f64().unwrap();
    assert!(
        (acc1[1][1].as_f64().unwrap() - logged).abs() < 1e-6,
        "{acc1} vs {logged}"
    );
    assert_eq!(tb["eval/seconds"].as_array().unwrap().len(), 2);
}

#[test]
fn a_bad_eval_section_is_refused_by_field() {
    let dir = setup();
    let d = dir.path();
    for (setting, field) in [
        ("eval.classnames=\"missing.txt\"", "eval.classnames"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("eval.retrieval=\"nowhere/{0..3}.tar\"", "eval.retrieval"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ferroclip"))
            .current_dir(d)
            .args(["train", "--config", "t.toml", "--set", setting])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{setting} was accepted");
        assert!(output_text(&out).contains(field), "{setting}: {}", output_text(&out));
    }
}
