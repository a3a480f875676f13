//! `ferroclip curate` with a `dfn` stage, end to end: a `nano` filtering model trained here
//! on clean coloured-shape pairs filters a noisier pool (the same kind of images, half the
//! captions swapped to another colour and shape); it keeps far more correct pairs than
//! swapped ones; saved scores reproduce the run without the model; and two MPI ranks
//! (metaclip counts and the DFN threshold all-reduced) write the same shards as one process.
use std::path::{Path, PathBuf};
use std::process::Output;

use dataloader::{ShardSample, ShardWriter};
use image::ImageEncoder;

mod common;
use common::{mpirun, output_shard_files, require_mpirun, shape_png, write_shape_shards};

const COLOURS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 20, 20]),
    ("green", [20, 200, 20]),
    ("blue", [20, 20, 220]),
    ("yellow", [230, 230, 20]),
    ("black", [0, 0, 0]),
    ("white", [255, 255, 255]),
];

fn ferroclip(args: &[&str], cwd: &Path) -> Output {
    common::ferroclip_in(cwd, args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const TRAIN: &str = r#"name = "filter"
model = "nano"
seed = 1
threads = 2
out_dir = "runs"
[data]
train = "clean/{00000..00003}.tar"
batch_size = 16
workers = 2
shuffle_buffer = 50
[optim]
lr = 2e-3
weight_decay = 0.0
[schedule]
steps = 60
warmup_steps = 5
[log]
every = 20
"#;

/// 120 pairs in 5 shards; odd-numbered ones get the caption of another colour and the other
/// shape. `.json` records which (members pass through curation byte for byte).
fn write_pool(dir: &Path) {
    let mut writer = ShardWriter::new(dir, 24).expect("shard writer");
    for i in 0..120usize {
        let (name, rgb) = COLOURS[i % COLOURS.len()];
        let disc = (i / COLOURS.len()) % 2 == 0;
        let correct = i % 2 == 0;
        let (caption_colour, caption_disc) = if correct {
            (name, disc)
        } else {
            (COLOURS[(i + 3) % COLOURS.len()].0, !disc)
        };
        let shape = if caption_disc { "circle" } else { "square" };
        let mut json = serde_json::Map::new();
        json.insert("correct".into(), correct.into());
        writer
            .write(&ShardSample {
                key: None,
                image: shape_png(rgb, disc, 32 + (i % 4) as u32 * 8),
                image_ext: "png".into(),
                captions: vec![format!("a {caption_colour} {shape}")],
                label: None,
                json,
            })
            .expect("write sample");
    }
    writer.finish().expect("finish shards");
}

/// (correct, swapped) pairs among the output shards.
fn kept_by_kind(dir: &Path) -> (usize, usize) {
    let (mut correct, mut swapped) = (0, 0);
    for (name, _) in output_shard_files(dir).iter().filter(|(n, _)| n.ends_with(".tar")) {
        dataloader::tar_reader::for_each_sample(&dir.join(name), |item| {
            let sample = item.expect("readable output");
            let json: serde_json::Value = serde_json::from_slice(&sample.members["json"]).unwrap();
            if json["correct"].as_bool().unwrap() {
                correct += 1;
            } else {
                swapped += 1;
            }
            std::ops::ControlFlow::Continue(())
        });
    }
    (correct, swapped)
}

fn curate(dir: &Path, config: &str, output: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "curate",
        "--config",
        config,
        "--input",
        "pool/{00000..00004}.tar",
        "--output",
        output,
        "--threads",
        "2",
    ];
    args.extend_from_slice(extra);
    ferroclip(&args, dir)
}

/// Trains the filtering model and writes the pool; returns the test folder.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_shape_shards(&dir.path().join("clean"), 96, 24);
    write_pool(&dir.path().join("pool"));
    std::fs::write(dir.path().join("train.toml"), TRAIN).unwrap();
    let out = ferroclip(&["train", "--config", "train.toml"], dir.path());
    assert!(out.status.success(), "train failed: {}", stderr(&out));
    std::fs::write(
        dir.path().join("dfn.toml"),
        "[[stage]]\nkind = \"dfn\"\ncheckpoint = \"runs/filter\"\nfraction = 0.5\nbatch_size = 16\ndevice = \"cpu\"\n",
    )
    .unwrap();
    dir
}

#[test]
fn dfn_keeps_correct_pairs_and_saved_scores_reproduce_the_run() {
    let dir = setup();
    let d = dir.path();
    let out = curate(d, "dfn.toml", "out", &[]);
    assert!(out.status.success(), "curate failed: {}", stderr(&out));

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("out/report.json")).unwrap()).unwrap();
    let stage = &report["stages"][0];
    assert_eq!(stage["kind"], "dfn");
    assert_eq!(stage["samples_in"], 120);
    // ⌊120 · 0.5⌋ = 60 kept (more only if scores tie exactly at the threshold).
    let kept = stage["samples_out"].as_u64().unwrap();
    assert!((60..=62).contains(&kept), "kept {kept}");
    assert!(stage["stats"]["threshold"].is_number(), "{stage}");

    let (correct, swapped) = kept_by_kind(&d.join("out"));
    assert_eq!((correct + swapped) as u64, kept);
    // 60 correct and 60 swapped pairs in the pool: a filter that learnt anything keeps mostly
    // correct ones (chance would be 30/30).
    assert!(correct >= 2 * swapped, "kept {correct} correct vs {swapped} swapped");

    // One score file per input shard, every pair scored.
    let scores = d.join("out/scores/dfn");
    let lines: usize = (0..5)
        .map(|i| {
            let text = std::fs::read_to_string(scores.join(format!("{i:05}.jsonl"))).unwrap();
            assert!(!text.contains("null"), "every pair has an image and a caption");
            text.lines().count()
        })
        .sum();
    assert_eq!(lines, 120);

    // Saved scores, no model: the same output; then another threshold without rescoring.
    let no_model = "[[stage]]\nkind = \"dfn\"\nfraction = 0.5\n";
    std::fs::write(d.join("saved.toml"), no_model).unwrap();
    let out = curate(d, "saved.toml", "again", &["--scores", "out/scores/dfn"]);
    assert!(out.status.success(), "curate --scores failed: {}", stderr(&out));
    assert_eq!(output_shard_files(&d.join("out")), output_shard_files(&d.join("again")));
    assert!(!d.join("again/scores").exists(), "nothing was rescored");

    std::fs::write(
        d.join("quarter.toml"),
        "[[stage]]\nkind = \"dfn\"\nfraction = 0.25\nscores = \"out/scores/dfn\"\n",
    )
    .unwrap();
    let out = curate(d, "quarter.toml", "quarter", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (c, s) = kept_by_kind(&d.join("quarter"));
    assert!((30..=32).contains(&(c + s)), "kept {}", c + s);

    // Without a model or scores the error names the stage and the field.
    let out = curate(d, "saved.toml", "none", &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("checkpoint"), "{}", stderr(&out));
}

#[test]
fn two_mpi_ranks_write_what_one_process_writes() {
    require_mpirun();
    let dir = setup();
    let d = dir.path();
    // metaclip first (its entry counts are all-reduced, t = 8 balances "circle"/"square"),
    // then dfn (its fraction threshold is computed over both ranks' scores).
    std::fs::write(d.join("entries.txt"), "circle\nsquare\nred\n").unwrap();
    std::fs::write(
        d.join("both.toml"),
        "[[stage]]\nkind = \"metaclip\"\nt = 8\nseed = 3\nwordnet = false\nnumbers = false\nentry_files = [\"entries.txt\"]\n\n\
         [[stage]]\nkind = \"dfn\"\ncheckpoint = \"runs/filter\"\nfraction = 0.4\nbatch_size = 16\ndevice = \"cpu\"\n",
    )
    .unwrap();
    let out = curate(d, "both.toml", "one", &[]);
    assert!(out.status.success(), "curate failed: {}", stderr(&out));

    let exe: PathBuf = env!("CARGO_BIN_EXE_ferroclip").into();
    let mpi = mpirun(2)
        .arg(&exe)
        .args([
            "curate",
            "--config",
            "both.toml",
            "--input",
            "pool/{00000..00004}.tar",
            "--output",
            "two",
            "--threads",
            "1",
        ])
        .current_dir(d)
        .output()
        .expect("run mpirun");
    assert!(mpi.status.success(), "mpirun curate failed: {}", stderr(&mpi));

    let one = output_shard_files(&d.join("one"));
    assert_eq!(one.len(), 6, "5 shards and sizes.json: {:?}", one.keys());
    assert_eq!(one, output_shard_files(&d.join("two")));
    let read = |p: &str| -> serde_json::Value { serde_json::from_slice(&std::fs::read(d.join(p)).unwrap()).unwrap() };
    let (a, b) = (read("one/report.json"), read("two/report.json"));
    assert_eq!(b["ranks"], 2);
    for s in 0..2 {
        for field in ["samples_in", "samples_out", "dropped"] {
            assert_eq!(a["stages"][s][field], b["stages"][s][field], "stage {s} {field}");
        }
    }
    assert_eq!(
        a["stages"][1]["stats"]["threshold"],
        b["stages"][1]["stats"]["threshold"]
    );
    // Both ranks wrote the score files of their own shards.
    for i in 0..5 {
        let name = format!("{i:05}.jsonl");
        assert_eq!(
            std::fs::read(d.join("one/scores/dfn").join(&name)).unwrap(),
            std::fs::read(d.join("two/scores/dfn").join(&name)).unwrap(),
            "{name}"
        );
    }
}

/// The `align` stage with `near_duplicate_checkpoint`: near duplicates are decided by the
/// filtering model's image embeddings. A copy of an image with the same pixels in other PNG
/// bytes is a near duplicate (cosine 1, beyond the exact-bytes rule); other shapes and colours
/// are not.
#[test]
fn align_drops_near_duplicates_by_model_embeddings() {
    let dir = setup();
    let d = dir.path();
    let original = shape_png([220, 20, 20], true, 48);
    let pixels = image::load_from_memory(&original).unwrap().to_rgb8();
    let mut recoded = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut recoded,
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::Paeth,
    )
    .write_image(pixels.as_raw(), 48, 48, image::ExtendedColorType::Rgb8)
    .unwrap();
    assert_ne!(original, recoded, "the copy must differ in bytes");
    let images = [
        original,
        recoded,
        shape_png([20, 20, 220], false, 48),
        shape_png([20, 200, 20], true, 56),
        shape_png([230, 230, 20], false, 64),
    ];
    let mut writer = ShardWriter::new(&d.join("dups"), 100).unwrap();
    for (i, image) in images.into_iter().enumerate() {
        writer
            .write(&ShardSample {
                key: None,
                image,
                image_ext: "png".into(),
                captions: vec![format!("picture number {i} of a shape")],
                label: None,
                json: Default::default(),
            })
            .unwrap();
    }
    writer.finish().unwrap();
    std::fs::write(
        d.join("align.toml"),
        "[[stage]]\nkind = \"align\"\nshorter_side_above = 16\nnear_duplicate_checkpoint = \"runs/filter\"\n\
         near_duplicate_min_cosine = 0.9999\nembed_batch_size = 2\ndevice = \"cpu\"\n",
    )
    .unwrap();
    let out = ferroclip(
        &[
            "curate",
            "--config",
            "align.toml",
            "--input",
            "dups/00000.tar",
            "--output",
            "dedup",
            "--threads",
            "2",
        ],
        d,
    );
    assert!(out.status.success(), "curate failed: {}", stderr(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("dedup/report.json")).unwrap()).unwrap();
    let stage = &report["stages"][0];
    assert_eq!(stage["stats"]["near_duplicate_method"], "embedding");
    assert_eq!(stage["dropped"]["near_duplicate"], 1, "{stage}");
    assert_eq!(stage["dropped"]["duplicate"], 0, "{stage}");
    assert_eq!(stage["samples_out"], 4, "{stage}");

    // A checkpoint that is not there is named.
    std::fs::write(
        d.join("bad.toml"),
        "[[stage]]\nkind = \"align\"\nnear_duplicate_checkpoint = \"runs/missing\"\n",
    )
    .unwrap();
    let out = ferroclip(
        &[
            "curate",
            "--config",
            "bad.toml",
            "--input",
            "dups/00000.tar",
            "--output",
            "bad",
        ],
        d,
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("near_duplicate_checkpoint") && err.contains("runs/missing"),
        "{err}"
    );
}
