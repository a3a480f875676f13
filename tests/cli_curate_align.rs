//! `ferroclip curate` with the shipped `configs/curate/align.toml` (ALIGN's defaults) on
//! small shards made here; report.json must count every drop under its rule.
use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::process::Command;

mod common;
use common::{mpirun, output_shard_files, require_mpirun};

fn ferroclip() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferroclip"))
}

/// `width`×`height` of 16-px blocks of random colour drawn from `seed`.
fn noise(seed: u64, width: u32, height: u32) -> image::RgbImage {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let blocks_x = width.div_ceil(16) as usize;
    let blocks: Vec<[u8; 3]> = (0..blocks_x * height.div_ceil(16) as usize)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let bits = (state >> 33) as u32;
            [bits as u8, (bits >> 8) as u8, (bits >> 16) as u8]
        })
        .collect();
    image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb(blocks[(y / 16) as usize * blocks_x + (x / 16) as usize])
    })
}

fn encode(img: &image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    img.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

fn png(seed: u64, width: u32, height: u32) -> Vec<u8> {
    encode(&noise(seed, width, height), image::ImageFormat::Png)
}

/// A shard of `key.{ext}` image + `key.txt` samples, keys numbered in order.
fn write_shard(path: &Path, samples: &[(&str, Vec<u8>, String)]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (i, (ext, image, text)) in samples.iter().enumerate() {
        let key = format!("{i:06}");
        for (member_ext, data) in [(*ext, image.as_slice()), ("txt", text.as_bytes())] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, format!("{key}.{member_ext}"), data)
                .unwrap();
        }
    }
    builder.finish().unwrap();
}

/// Two shards exercising every rule; duplicates and near duplicates cross the shards.
fn write_test_shards(dir: &Path) {
    let first = png(1, 256, 256);
    let mut shard0 = vec![
        ("png", first.clone(), "a picture of the first thing".to_string()),
        ("png", first.clone(), "another caption for the same bytes".to_string()),
        ("png", png(2, 100, 300), "a picture that is too small".to_string()),
        ("png", png(3, 700, 220), "a picture far too wide".to_string()),
        ("png", png(4, 256, 256), "hi there".to_string()),
        (
            "png",
            b"\x89PNG not an image".to_vec(),
            "bytes that do not decode".to_string(),
        ),
    ];
    for i in 0..11 {
        shard0.push((
            "png",
            png(100 + i, 256, 256),
            "the one caption everyone uses".to_string(),
        ));
    }
    let shard1 = vec![
        (
            "jpg",
            encode(&noise(1, 256, 256), image::ImageFormat::Jpeg),
            "a jpeg copy of the first".to_string(),
        ),
        ("png", first.clone(), "the first bytes once more".to_string()),
        ("png", png(5, 256, 256), "a fine picture number five".to_string()),
        ("png", png(6, 300, 240), "a fine picture number six".to_string()),
        ("png", png(7, 240, 600), "a fine picture number seven".to_string()),
        ("png", png(8, 256, 256), "a fine picture number eight".to_string()),
    ];
    write_shard(&dir.join("00000.tar"), &shard0);
    write_shard(&dir.join("00001.tar"), &shard1);
}

#[test]
fn align_config_drops_by_rule_and_reports_counts() {
    let dir = tempfile::tempdir().unwrap();
    write_test_shards(dir.path());

    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/curate/align.toml");
    let out = dir.path().join("curated");
    let output = ferroclip()
        .args(["curate", "--threads", "2", "--config"])
        .arg(&config)
        .arg("--input")
        .arg(format!("{}/{{00000..00001}}.tar", dir.path().display()))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let stage = &report["stages"][0];
    assert_eq!(stage["kind"], "align");
    assert_eq!(report["input_samples"], 23);
    let dropped: BTreeMap<String, u64> = serde_json::from_value(stage["dropped"].clone()).unwrap();
    let expected: BTreeMap<String, u64> = [
        ("missing_image", 0),
        ("missing_caption", 0),
        ("invalid_caption", 0),
        ("caption_too_long", 0),
        ("undecodable_image", 1),
        ("small_image", 1),
        ("aspect_ratio", 1),
        ("text_length", 1),
        ("image_many_texts", 0),
        ("text_many_images", 11),
        ("rare_token", 0),
        ("duplicate", 2),
        ("near_duplicate", 1),
    ]
    .into_iter()
    .map(|(reason, n)| (reason.to_string(), n))
    .collect();
    assert_eq!(dropped, expected);
    assert_eq!(stage["samples_out"], 5);
    assert_eq!(report["output_samples"], 5);
    assert_eq!(stage["stats"]["near_duplicate_images"], 1);
    assert_eq!(stage["stats"]["config"]["shorter_side_above"], 200);

    let sizes: BTreeMap<String, u64> = serde_json::from_slice(&std::fs::read(out.join("sizes.json")).unwrap()).unwrap();
    assert_eq!(
        sizes,
        BTreeMap::from([("00000.tar".into(), 1), ("00001.tar".into(), 4)])
    );
    // The first copy of the repeated image is the one kept, with its own caption.
    let mut archive = tar::Archive::new(std::fs::File::open(out.join("00000.tar")).unwrap());
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["000000.png", "000000.txt"]);
}

/// Under `mpirun -np 2` each rank reads one of the two shards; the stage's tables (pairs,
/// n-grams, duplicate candidates) are merged across ranks, so the cross-shard duplicate and
/// near duplicate are still found and the output equals one process's byte for byte.
#[test]
fn two_mpi_ranks_apply_the_rules_to_the_whole_input() {
    require_mpirun();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_test_shards(d);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/curate/align.toml");
    let args = |out: &str| -> Vec<String> {
        [
            "curate",
            "--threads",
            "1",
            "--config",
            config.to_str().unwrap(),
            "--input",
            "{00000..00001}.tar",
            "--output",
            out,
        ]
        .map(String::from)
        .to_vec()
    };
    let one = ferroclip().args(args("one")).current_dir(d).output().unwrap();
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    let two = mpirun(2)
        .arg(env!("CARGO_BIN_EXE_ferroclip"))
        .args(args("two"))
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        two.status.success(),
        "mpirun curate failed: {}",
        String::from_utf8_lossy(&two.stderr)
    );

    let read = |p: &str| -> serde_json::Value { serde_json::from_slice(&std::fs::read(d.join(p)).unwrap()).unwrap() };
    let (a, b) = (read("one/report.json"), read("two/report.json"));
    assert_eq!(b["ranks"], 2);
    assert_eq!(a["stages"][0]["dropped"], b["stages"][0]["dropped"]);
    assert_eq!(b["stages"][0]["dropped"]["duplicate"], 2);
    assert_eq!(b["stages"][0]["dropped"]["near_duplicate"], 1);
    assert_eq!(a["stages"][0]["stats"], b["stages"][0]["stats"]);
    assert_eq!(output_shard_files(&d.join("one")), output_shard_files(&d.join("two")));
}
