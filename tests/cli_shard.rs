//! `ferroclip shard` end to end: JSONL / parquet manifests and existing shards in; `.tar` /
//! `.tar.zst` out in img2dataset's layout; limits, image options and error messages.
use std::collections::BTreeMap;
use std::io::Cursor;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use dataloader::tar_reader::for_each_sample;
use dataloader::{decode_rgb, RawSample, DEFAULT_MAX_PIXELS};

mod common;
use common::assert_ok;

fn ferroclip_shard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .arg("shard")
        .args(args)
        .output()
        .expect("run ferroclip")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn png(width: u32, height: u32, shade: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([shade, (x * 5) as u8, (y * 3) as u8]));
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// `n` images `img/i.png` (i × 10 + 20 pixels wide) in `dir`.
fn write_images(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir.join("img")).unwrap();
    for i in 0..n {
        std::fs::write(
            dir.join(format!("img/{i}.png")),
            png(20 + 10 * i as u32, 12, i as u8 * 40),
        )
        .unwrap();
    }
}

/// All samples of `shards`, in order.
fn read_samples(shards: &[PathBuf]) -> Vec<RawSample> {
    let mut samples = Vec::new();
    for shard in shards {
        for_each_sample(shard, |item| {
            samples.push(item.unwrap_or_else(|skip| panic!("{skip}")));
            ControlFlow::Continue(())
        });
    }
    samples
}

fn shard_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".tar"))
        .collect();
    files.sort();
    files
}

fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A JSONL manifest of 5 rows (one with a missing image) over `write_images(dir, 4)`.
fn jsonl_manifest(dir: &Path) -> PathBuf {
    write_images(dir, 4);
    let lines = [
        r#"{"image": "img/0.png", "caption": "zero", "url": "http://x/0"}"#,
        r#"{"image": "img/1.png", "caption": "one"}"#,
        r#"{"image": "img/missing.png", "caption": "gone"}"#,
        r#"{"image": "img/2.png", "captions": ["two", "deux"], "cls": 2}"#,
        r#"{"image": "img/3.png", "caption": "three"}"#,
    ];
    let manifest = dir.join("pairs.jsonl");
    std::fs::write(&manifest, lines.join("\n")).unwrap();
    manifest
}

#[test]
fn jsonl_to_img2dataset_layout() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = jsonl_manifest(dir.path());
    let out = dir.path().join("out");
    let output = ferroclip_shard(&[
        "--input",
        manifest.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--samples-per-shard",
        "2",
    ]);
    assert_ok(&output);
    assert!(
        stderr(&output).contains("missing.png"),
        "the skipped row is named: {}",
        stderr(&output)
    );
    let shards = shard_files(&out);
    assert_eq!(shards, [out.join("00000.tar"), out.join("00001.tar")]);
    let samples = read_samples(&shards);
    // img2dataset keys: shard index in front of the index within the shard.
    let keys: Vec<&str> = samples.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["000000000", "000000001", "000000010", "000000011"]);
    assert_eq!(samples[2].members["txt"], b"two\ndeux");
    assert_eq!(samples[2].members["cls"], b"2");
    assert_eq!(
        samples[0].members["png"],
        std::fs::read(dir.path().join("img/0.png")).unwrap(),
        "no image option: bytes kept"
    );
    let meta: serde_json::Value = serde_json::from_slice(&samples[1].members["json"]).unwrap();
    assert_eq!(meta["key"], "000000001");
    assert_eq!((meta["width"].as_u64(), meta["height"].as_u64()), (Some(30), Some(12)));
    let meta: serde_json::Value = serde_json::from_slice(&samples[0].members["json"]).unwrap();
    assert_eq!(meta["url"], "http://x/0", "other fields are kept");

    assert_eq!(
        json_file(&out.join("sizes.json")),
        serde_json::json!({"00000.tar": 2, "00001.tar": 2})
    );
    let stats = json_file(&out.join("00000_stats.json"));
    assert_eq!(
        (stats["successes"].as_u64(), stats["count"].as_u64()),
        (Some(2), Some(2))
    );
    let stats = json_file(&out.join("00001_stats.json"));
    assert_eq!(stats["failed"]["missing_image"], 1, "{stats}");
    assert_eq!(
        (stats["successes"].as_u64(), stats["count"].as_u64()),
        (Some(2), Some(3))
    );

    // The output folder now holds shards: a second run refuses it and names a file.
    let again = ferroclip_shard(&["--input", manifest.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already holds shards"), "{}", stderr(&again));
}

/// img2dataset-style parquet: `url` (local paths here), `caption`, `similarity`.
fn write_parquet(path: &Path, urls: &[&str], captions: &[&str]) {
    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;

    let schema =
        "message row { required binary url (UTF8); required binary caption (UTF8); required double similarity; }";
    let schema = Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build(),
    );
    let mut writer = SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    for values in [urls, captions] {
        let values: Vec<ByteArray> = values.iter().map(|v| ByteArray::from(*v)).collect();
        let mut column = group.next_column().unwrap().unwrap();
        column
            .typed::<ByteArrayType>()
            .write_batch(&values, None, None)
            .unwrap();
        column.close().unwrap();
    }
    let similarity: Vec<f64> = (0..urls.len()).map(|i| i as f64 / 4.0).collect();
    let mut column = group.next_column().unwrap().unwrap();
    column
        .typed::<DoubleType>()
        .write_batch(&similarity, None, None)
        .unwrap();
    column.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
}

#[test]
fn parquet_to_resized_jpeg_zstd_shards() {
    let dir = tempfile::tempdir().unwrap();
    write_images(dir.path(), 4);
    let table = dir.path().join("urls.parquet");
    write_parquet(
        &table,
        &["img/0.png", "img/1.png", "https://example.com/2.jpg", "img/3.png"],
        &["zero", "one", "remote", "three"],
    );
    let out = dir.path().join("out");
    let output = ferroclip_shard(&[
        "--input",
        table.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--compress",
        "zstd:3",
        "--resize-max-side",
        "24",
        "--reencode",
        "jpeg:80",
    ]);
    assert_ok(&output);
    assert!(stderr(&output).contains("urls.parquet: row 3"), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("missing_image=1"));
    let shards = shard_files(&out);
    assert_eq!(shards, [out.join("00000.tar.zst")]);
    let samples = read_samples(&shards);
    assert_eq!(samples.len(), 3);
    for (sample, (caption, original_width)) in samples.iter().zip([("zero", 20), ("one", 30), ("three", 50)]) {
        assert_eq!(sample.members.keys().collect::<Vec<_>>(), ["jpg", "json", "txt"]);
        assert_eq!(sample.members["txt"], caption.as_bytes());
        let image = decode_rgb(&sample.members["jpg"], DEFAULT_MAX_PIXELS).unwrap();
        assert!(image.width() <= 24 && image.height() <= 24, "{:?}", image.dimensions());
        let meta: serde_json::Value = serde_json::from_slice(&sample.members["json"]).unwrap();
        assert_eq!(meta["original_width"], original_width);
        assert_eq!(meta["width"], image.width());
        assert!(meta["similarity"].is_number());
    }
    // The 20-pixel image was only re-encoded; the 50-pixel one was shrunk to 24.
    assert_eq!(
        decode_rgb(&samples[0].members["jpg"], DEFAULT_MAX_PIXELS)
            .unwrap()
            .dimensions(),
        (20, 12)
    );
    assert_eq!(
        decode_rgb(&samples[2].members["jpg"], DEFAULT_MAX_PIXELS)
            .unwrap()
            .dimensions(),
        (24, 6)
    );
    assert_eq!(
        json_file(&out.join("sizes.json")),
        serde_json::json!({"00000.tar.zst": 3})
    );
}

/// Every sample of `shards` by key: members byte for byte.
fn by_key(shards: &[PathBuf]) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    read_samples(shards).into_iter().map(|s| (s.key, s.members)).collect()
}

#[test]
fn reshard_and_recompress_keep_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = jsonl_manifest(dir.path());
    let first = dir.path().join("first");
    assert_ok(&ferroclip_shard(&[
        "--input",
        manifest.to_str().unwrap(),
        "--output",
        first.to_str().unwrap(),
        "--samples-per-shard",
        "3",
    ]));
    let original = by_key(&shard_files(&first));
    assert_eq!(original.len(), 4);

    // Recompress into one .tar.zst shard.
    let zst = dir.path().join("zst");
    let spec = format!("{}/{{00000..00001}}.tar", first.display());
    assert_ok(&ferroclip_shard(&[
        "--input-shards",
        &spec,
        "--output",
        zst.to_str().unwrap(),
        "--compress",
        "zstd",
    ]));
    assert_eq!(shard_files(&zst), [zst.join("00000.tar.zst")]);
    assert_eq!(by_key(&shard_files(&zst)), original);

    // Back to plain tars from the .tar.zst, with a byte limit that fits one sample (about
    // 3 KiB of tar each here) per shard.
    let small = dir.path().join("small");
    assert_ok(&ferroclip_shard(&[
        "--input-shards",
        zst.join("00000.tar.zst").to_str().unwrap(),
        "--output",
        small.to_str().unwrap(),
        "--bytes-per-shard",
        "6KiB",
    ]));
    let shards = shard_files(&small);
    assert_eq!(shards.len(), 4, "{shards:?}");
    for shard in &shards {
        let len = std::fs::metadata(shard).unwrap().len();
        assert!(len <= 6 * 1024, "{} has {len} bytes", shard.display());
    }
    assert_eq!(by_key(&shards), original);

    // Sources joined by `::`, one a pipe: shard; a key met twice is skipped and counted.
    let joined = dir.path().join("joined");
    let first_tar = first.join("00000.tar");
    let spec = format!(
        "{}::pipe:cat {}::{}",
        first_tar.display(),
        first.join("00001.tar").display(),
        first_tar.display()
    );
    let output = ferroclip_shard(&["--input-shards", &spec, "--output", joined.to_str().unwrap()]);
    assert_ok(&output);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("duplicate_key=3"),
        "{output:?}"
    );
    assert_eq!(by_key(&shard_files(&joined)), original);
}

#[test]
fn bad_options_and_inputs_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = jsonl_manifest(dir.path());
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        let mut args = vec!["--input", manifest.to_str().unwrap(), "--output", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        ferroclip_shard(&args)
    };
    for (extra, needle) in [
        (&["--compress", "gzip"][..], "compress"),
        (&["--compress", "zstd:99"][..], "compress"),
        (&["--bytes-per-shard", "12 parsecs"][..], "bytes_per_shard"),
        (&["--reencode", "png"][..], "reencode"),
        (&["--resize-max-side", "0"][..], "resize_max_side"),
        (&["--samples-per-shard", "0"][..], "samples_per_shard"),
        (&["--input-shards", "x.tar"][..], "cannot be used with"),
    ] {
        let output = run(extra);
        assert!(!output.status.success(), "{extra:?} should fail");
        assert!(stderr(&output).contains(needle), "{extra:?}: {}", stderr(&output));
    }
    assert!(!out.join("00000.tar").exists());

    let csv = dir.path().join("table.csv");
    std::fs::write(&csv, "file,text\nimg/0.png,zero\n").unwrap();
    let output = ferroclip_shard(&["--input", csv.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert!(
        stderr(&output).contains("table.csv") && stderr(&output).contains("\"image\""),
        "{}",
        stderr(&output)
    );
    // The same table with its columns named.
    assert_ok(&ferroclip_shard(&[
        "--input",
        csv.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--image-column",
        "file",
        "--caption-column",
        "text",
    ]));
    assert_eq!(read_samples(&shard_files(&out)).len(), 1);

    let output = ferroclip_shard(&[
        "--input-shards",
        &format!("{}/missing/{{0..1}}.tar", dir.path().display()),
        "--output",
        dir.path().join("none").to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("missing/0.tar"), "{}", stderr(&output));
}
