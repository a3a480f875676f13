//! `ferroclip data inspect` end to end: shards made here with good samples, an undecodable
//! image and a truncated shard; the report's counts and distributions are asserted.
use std::io::Cursor;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dataloader::tar_reader::for_each_sample_at;
use dataloader::{ShardSample, ShardWriter};

mod common;
use common::assert_ok;

fn ferroclip_data(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .arg("data")
        .args(args)
        .output()
        .expect("run ferroclip")
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 9) as u8, (y * 5) as u8, 77]));
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encode png");
    out
}

fn sample(image: Vec<u8>, caption: &str) -> ShardSample {
    ShardSample {
        key: None,
        image,
        image_ext: "png".into(),
        captions: vec![caption.into()],
        label: None,
        json: Default::default(),
    }
}

/// Three shards of three samples in `dir`:
/// - `00000.tar`: 3 good samples, widths 20, 30, 40;
/// - `00001.tar`: good (50), undecodable image bytes, good (60);
/// - `00002.tar`: good (70), good (80), then a sample cut inside its first member.
///
/// Returns the shard paths.
fn write_dataset(dir: &Path) -> Vec<PathBuf> {
    let mut writer = ShardWriter::new(dir, 3).expect("shard writer");
    let mut width = 20;
    for i in 0..9 {
        let image = if i == 4 {
            b"these bytes are not an image".to_vec()
        } else {
            let image = png(width, 12 + i);
            width += 10;
            image
        };
        let words = vec!["word"; i as usize + 1].join(" ");
        writer.write(&sample(image, &words)).expect("write sample");
    }
    let shards = writer.finish().expect("finish").shards;
    assert_eq!(shards.len(), 3);

    // Cut the last shard 10 bytes into the data of its last sample's first member.
    let mut starts = Vec::new();
    for_each_sample_at(&shards[2], 0, |item| {
        let (_, span) = item.expect("intact shard");
        starts.push(span.start);
        ControlFlow::Continue(())
    });
    assert_eq!(starts.len(), 3);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&shards[2])
        .expect("open shard");
    file.set_len(starts[2] + 512 + 10).expect("truncate shard");
    shards
}

#[test]
fn inspect_json_counts_samples_skips_failed_shards_and_distributions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shards = write_dataset(dir.path());
    let spec = format!("{}/{{00000..00002}}.tar", dir.path().display());
    let output = ferroclip_data(&["inspect", &spec, "--json", "--image-size", "16", "--threads", "2"]);
    assert_ok(&output);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");

    assert_eq!(report["shards"], 3);
    assert_eq!(report["shards_failed"], 1);
    assert_eq!(
        report["failed_shards"],
        serde_json::json!([shards[2].to_string_lossy()])
    );
    assert_eq!(report["samples_read"], 7, "{report:#}");
    assert_eq!(report["skipped"]["undecodable_image"], 1, "{report:#}");
    assert_eq!(report["skipped"]["truncated_member"], 1, "{report:#}");
    assert_eq!(report["skipped_total"], 2, "{report:#}");
    // The raw pass sees the undecodable sample too, but not the cut one.
    assert_eq!(report["raw_samples"], 8);
    assert_eq!(report["image_header_unreadable"], 1);

    let width = &report["image_width"];
    assert_eq!(
        (
            &width["count"],
            &width["min"],
            &width["p50"],
            &width["p90"],
            &width["max"]
        ),
        (&7.into(), &20.into(), &50.into(), &80.into(), &80.into())
    );
    // Widths 20, 30 | 40, 50, 60 | 70, 80 in the buckets [16,32), [32,64), [64,128).
    assert_eq!(
        width["histogram"],
        serde_json::json!([
            {"lo": 16, "hi": 32, "count": 2},
            {"lo": 32, "hi": 64, "count": 3},
            {"lo": 64, "hi": 128, "count": 2},
        ])
    );
    let heights = &report["image_height"];
    assert_eq!((&heights["min"], &heights["max"]), (&12.into(), &19.into()));
    // Captions of samples 0..=7 ("word" repeated i+1 times): 1..=8 words, 4..=39 chars.
    let words = &report["caption_words"];
    assert_eq!(
        (&words["count"], &words["min"], &words["p50"], &words["max"]),
        (&8.into(), &1.into(), &4.into(), &8.into())
    );
    let chars = &report["caption_chars"];
    assert_eq!((&chars["min"], &chars["max"]), (&4.into(), &39.into()));
}

#[test]
fn inspect_table_names_the_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_dataset(dir.path());
    let output = ferroclip_data(&["inspect", &dir.path().to_string_lossy()]);
    assert_ok(&output);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("shards          3 (1 failed)"), "{table}");
    assert!(table.contains("samples read    7"), "{table}");
    assert!(
        table.contains("skipped         2 (truncated_member=1, undecodable_image=1)"),
        "{table}"
    );
    assert!(table.contains("image width histogram"), "{table}");
}

#[test]
fn inspect_of_a_missing_shard_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nothing-here.tar");
    let output = ferroclip_data(&["inspect", &missing.to_string_lossy()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nothing-here.tar"), "{stderr}");
}
