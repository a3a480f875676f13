//! `ferroclip embed` and `ferroclip eval` end to end: a tiny shard set, random-init `nano`
//! weights, real processes; outputs parse, sizes match, embeddings have unit norm.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dataloader::{ShardSample, ShardWriter};
use trainer::model::weights;
use trainer::tch::nn::VarStore;
use trainer::tch::Device;
use trainer::{Clip, ModelConfig};

const CLASSES: [&str; 6] = [
    "red square",
    "green square",
    "blue square",
    "yellow square",
    "black square",
    "white square",
];
const COLOURS: [[u8; 3]; 6] = [
    [220, 20, 20],
    [20, 200, 20],
    [20, 20, 220],
    [230, 230, 20],
    [0, 0, 0],
    [255, 255, 255],
];

fn png(rgb: [u8; 3], width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::from_pixel(width, height, image::Rgb(rgb))
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .expect("encode png");
    bytes
}

/// 18 samples over 2 shards: label = colour index, 1–3 caption lines each.
fn write_shards(dir: &Path) -> Vec<PathBuf> {
    let mut writer = ShardWriter::new(dir, 10).expect("shard writer");
    for i in 0..18usize {
        let class = i % CLASSES.len();
        let captions: Vec<String> = (0..1 + i % 3)
            .map(|j| format!("a {} number {i} take {j}", CLASSES[class]))
            .collect();
        writer
            .write(&ShardSample {
                key: None,
                image: png(COLOURS[class], 40 + i as u32, 36),
                image_ext: "png".into(),
                captions,
                label: Some(class as i64),
                json: Default::default(),
            })
            .expect("write sample");
    }
    writer.finish().expect("finish shards").shards
}

/// A run folder: random-init nano weights + a config.toml naming the preset.
fn write_run(dir: &Path) -> PathBuf {
    let run = dir.join("run");
    std::fs::create_dir_all(&run).expect("run dir");
    let vs = VarStore::new(Device::Cpu);
    let _clip = Clip::new(&vs.root(), &ModelConfig::preset("nano").expect("nano preset"));
    weights::save_safetensors(&vs, run.join("model.safetensors")).expect("save weights");
    std::fs::write(run.join("config.toml"), "name = \"cli-eval\"\nmodel = \"nano\"\n").expect("config");
    run
}

fn ferroclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .args(args)
        .output()
        .expect("start ferroclip")
}

fn succeed(args: &[&str]) -> String {
    let out = ferroclip(args);
    assert!(
        out.status.success(),
        "ferroclip {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_unit_norm(row: &[f32]) {
    let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
}

#[test]
fn embed_texts_and_images_and_eval_a_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shard_dir = tmp.path().join("shards");
    std::fs::create_dir_all(&shard_dir).unwrap();
    let shards = write_shards(&shard_dir);
    assert_eq!(shards.len(), 2);
    let run = write_run(tmp.path());
    let run_arg = run.to_str().unwrap();

    // Texts → JSON lines, in input order.
    let texts = tmp.path().join("texts.txt");
    std::fs::write(&texts, "a red square\na photo of a cat\n\nlast line\n").unwrap();
    let jsonl = tmp.path().join("texts.jsonl");
    succeed(&[
        "embed",
        "--checkpoint",
        run_arg,
        "--device",
        "cpu",
        "--texts",
        texts.to_str().unwrap(),
        "--out",
        jsonl.to_str().unwrap(),
        "--batch-size",
        "3",
    ]);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[1]["input"], "a photo of a cat");
    assert_eq!(lines[2]["input"], "");
    for line in &lines {
        let row: Vec<f32> = serde_json::from_value(line["embedding"].clone()).unwrap();
        assert_eq!(row.len(), 32);
        assert_unit_norm(&row);
    }

    // Images (a folder and a file) → .npy, with --model-config + --weights.
    let image_dir = tmp.path().join("images");
    std::fs::create_dir_all(&image_dir).unwrap();
    for (i, colour) in COLOURS.iter().enumerate().take(3) {
        std::fs::write(image_dir.join(format!("{i}.png")), png(*colour, 50, 30 + i as u32 * 20)).unwrap();
    }
    let extra = tmp.path().join("extra.png");
    std::fs::write(&extra, png([1, 2, 3], 20, 20)).unwrap();
    let npy = tmp.path().join("images.npy");
    let weights = run.join("model.safetensors");
    succeed(&[
        "embed",
        "--model-config",
        "nano",
        "--weights",
        weights.to_str().unwrap(),
        "--device",
        "cpu",
        "--images",
        image_dir.to_str().unwrap(),
        extra.to_str().unwrap(),
        "--out",
        npy.to_str().unwrap(),
        "--batch-size",
        "2",
    ]);
    let bytes = std::fs::read(&npy).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'shape': (4, 32)"),
        "{header}"
    );
    let data: Vec<f32> = bytes[10 + header_len..]
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), 4 * 32);
    for row in data.chunks(32) {
        assert_unit_norm(row);
    }

    // Eval: zero-shot (two templates) + retrieval, JSON written.
    let classnames = tmp.path().join("classes.txt");
    std::fs::write(&classnames, CLASSES.join("\n") + "\n").unwrap();
    let templates = tmp.path().join("templates.txt");
    std::fs::write(&templates, "a photo of a {c}.\nan image of a {c}\n").unwrap();
    let report = tmp.path().join("eval.json");
    let shard_spec = shard_dir.to_str().unwrap();
    let table = succeed(&[
        "eval",
        "--checkpoint",
        run_arg,
        "--device",
        "cpu",
        "--zeroshot",
        shard_spec,
        "--classnames",
        classnames.to_str().unwrap(),
        "--templates",
        templates.to_str().unwrap(),
        "--retrieval",
        shard_spec,
        "--batch-size",
        "4",
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(
        table.contains("acc1") && table.contains("text_retrieval_recall@5"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let zeroshot = &json["zeroshot"];
    assert_eq!(zeroshot["num_samples"], 18);
    assert_eq!(zeroshot["num_classes"], 6);
    assert_eq!(zeroshot["num_templates"], 2);
    assert!((zeroshot["chance"]["acc1"].as_f64().unwrap() - 1.0 / 6.0).abs() < 1e-12);
    for key in ["acc1", "acc5", "mean_per_class_recall"] {
        let v = zeroshot["metrics"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing"));
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    let retrieval = &json["retrieval"];
    assert_eq!(retrieval["num_images"], 18);
    assert_eq!(retrieval["num_texts"], 36); // 6 × (1 + 2 + 3)
    for k in [1, 5, 10] {
        for dir in ["image", "text"] {
            let key = format!("{dir}_retrieval_recall@{k}");
            let v = retrieval["metrics"][&key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} missing"));
            assert!((0.0..=1.0).contains(&v), "{key} = {v}");
            assert!(retrieval["chance"][&key].as_f64().is_some(), "chance {key}");
        }
    }
}

#[test]
fn eval_errors_are_one_line_naming_the_culprit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shard_dir = tmp.path().join("shards");
    std::fs::create_dir_all(&shard_dir).unwrap();
    write_shards(&shard_dir);
    let missing = tmp.path().join("no-such-run");
    let out = ferroclip(&[
        "eval",
        "--checkpoint",
        missing.to_str().unwrap(),
        "--retrieval",
        shard_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("checkpoint folder not found") && stderr.contains("no-such-run"),
        "{stderr}"
    );

    // Labels go up to 5, but only 3 class names.
    let run = write_run(tmp.path());
    let classnames = tmp.path().join("three.txt");
    std::fs::write(&classnames, "a\nb\nc\n").unwrap();
    let out = ferroclip(&[
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--device",
        "cpu",
        "--zeroshot",
        shard_dir.to_str().unwrap(),
        "--classnames",
        classnames.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "{stderr}");
    assert!(
        error_lines[0].contains("out of range") && error_lines[0].contains("3 class names"),
        "{stderr}"
    );
}
