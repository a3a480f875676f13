use super::*;
use std::ops::ControlFlow;

fn sample(caption: &str, image: Vec<u8>) -> ShardSample {
    ShardSample {
        key: None,
        image,
        image_ext: "png".into(),
        captions: vec![caption.into()],
        label: None,
        json: Default::default(),
    }
}

fn read_all(shards: &[PathBuf]) -> Vec<RawSample> {
    let mut out = Vec::new();
    for shard in shards {
        crate::tar_reader::for_each_sample(shard, |item| {
            out.push(item.expect("a clean shard"));
            ControlFlow::Continue(())
        });
    }
    out
}

#[test]
fn shard_prefixed_keys_follow_img2dataset() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = WriterOptions::new(10_000);
    options.keys = KeyScheme::ShardPrefixed;
    let writer = ShardWriter::with_options(dir.path(), options).unwrap();
    assert_eq!(writer.next_generated_key(), "000000000");
    // 3 per shard: one digit for the index, shard index in front.
    let mut options = WriterOptions::new(3);
    options.keys = KeyScheme::ShardPrefixed;
    let mut writer = ShardWriter::with_options(&dir.path().join("small"), options).unwrap();
    let keys: Vec<String> = (0..7)
        .map(|i| writer.write(&sample(&format!("c{i}"), vec![1])).unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "000000000",
            "000000001",
            "000000002",
            "000000010",
            "000000011",
            "000000012",
            "000000020"
        ]
    );
    let mut options = WriterOptions::new(100_000);
    options.keys = KeyScheme::ShardPrefixed;
    let writer = ShardWriter::with_options(&dir.path().join("big"), options).unwrap();
    assert_eq!(writer.next_generated_key(), "0000000000", "5 + 5 digits");
    assert_eq!(
        (digits_for(1), digits_for(10), digits_for(11), digits_for(10_000)),
        (0, 1, 2, 4)
    );
}

#[test]
fn bytes_per_shard_limits_file_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = WriterOptions::new(1000);
    options.bytes_per_shard = Some(8 * 1024);
    options.shard_stats = true;
    let mut writer = ShardWriter::with_options(dir.path(), options).unwrap();
    writer.record_skip(SkipReason::MissingImage);
    for i in 0..20 {
        // 1500 image bytes: image + txt + json take 4 KiB of tar, so one sample per shard
        // would be 5 KiB and two would be 9 KiB: over the limit.
        writer
            .write(&sample(&format!("caption {i}"), vec![i as u8; 1500]))
            .unwrap();
    }
    let summary = writer.finish().unwrap();
    assert_eq!(summary.samples, 20);
    assert_eq!(summary.shards.len(), 20);
    for shard in &summary.shards {
        let len = std::fs::metadata(shard).unwrap().len();
        assert!(len <= 8 * 1024, "{} is {len} bytes", shard.display());
    }
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("00000_stats.json")).unwrap()).unwrap();
    assert_eq!(stats["successes"], 1);
    assert_eq!(stats["count"], 2);
    assert_eq!(stats["failed"]["missing_image"], 1);
    assert_eq!(stats["tar_bytes"], 5 * 1024);
    // The loader's size lookup agrees with sizes.json.
    assert_eq!(crate::shard_spec::dataset_size(&summary.shards).unwrap(), 20);

    // A larger limit packs several samples per shard, each file within it.
    let dir = tempfile::tempdir().unwrap();
    let mut options = WriterOptions::new(1000);
    options.bytes_per_shard = Some(20 * 1024);
    let mut writer = ShardWriter::with_options(dir.path(), options).unwrap();
    for i in 0..20 {
        writer
            .write(&sample(&format!("caption {i}"), vec![i as u8; 1500]))
            .unwrap();
    }
    let summary = writer.finish().unwrap();
    // (20 KiB − 1 KiB end) / 4 KiB per sample = 4 samples per shard.
    assert_eq!(summary.shards.len(), 5);
    for shard in &summary.shards {
        assert_eq!(std::fs::metadata(shard).unwrap().len(), 4 * 4096 + 1024);
    }
    assert_eq!(read_all(&summary.shards).len(), 20);
}

#[test]
fn zstd_shards_read_back_and_are_reproducible() {
    let write = |dir: &Path| {
        let mut options = WriterOptions::new(3);
        options.compression = "zstd:5".parse().unwrap();
        let mut writer = ShardWriter::with_options(dir, options).unwrap();
        for i in 0..5 {
            writer.write(&sample(&format!("caption {i}"), vec![7; 3000])).unwrap();
        }
        writer.finish().unwrap()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let summary = write(a.path());
    assert_eq!(
        summary.shards,
        [a.path().join("00000.tar.zst"), a.path().join("00001.tar.zst")]
    );
    let compressed = std::fs::metadata(&summary.shards[0]).unwrap().len();
    assert!(compressed < 3000, "zstd shrinks repeated bytes: {compressed}");
    let samples = read_all(&summary.shards);
    assert_eq!(samples.len(), 5);
    assert_eq!(samples[4].members["txt"], b"caption 4");
    assert_eq!(samples[4].members["png"], vec![7; 3000]);
    let sizes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.path().join("sizes.json")).unwrap()).unwrap();
    assert_eq!(sizes, serde_json::json!({"00000.tar.zst": 3, "00001.tar.zst": 2}));
    write(b.path());
    for name in ["00000.tar.zst", "00001.tar.zst"] {
        assert_eq!(
            std::fs::read(a.path().join(name)).unwrap(),
            std::fs::read(b.path().join(name)).unwrap()
        );
    }
}

#[test]
fn write_raw_keeps_keys_and_members_and_rejects_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = ShardWriter::new(dir.path(), 10).unwrap();
    let raw = |key: &str| RawSample {
        key: key.into(),
        shard: PathBuf::from("in.tar"),
        members: BTreeMap::from([
            ("jpg".to_string(), vec![1, 2, 3]),
            ("seg.png".to_string(), vec![4]),
            ("json".to_string(), br#"{"a": 1}"#.to_vec()),
        ]),
    };
    assert_eq!(writer.write_raw(&raw("dir.v1/000001")).unwrap(), "dir.v1/000001");
    for bad in ["", "a.b", "/abs", "../up", "x//y"] {
        let err = writer.write_raw(&raw(bad)).unwrap_err();
        assert!(
            matches!(
                err,
                WriteError::Key {
                    reason: SkipReason::InvalidKey,
                    ..
                }
            ),
            "{bad:?}"
        );
    }
    let err = writer.write_raw(&raw("dir.v1/000001")).unwrap_err();
    assert!(matches!(
        err,
        WriteError::Key {
            reason: SkipReason::DuplicateKey,
            ..
        }
    ));
    let summary = writer.finish().unwrap();
    let samples = read_all(&summary.shards);
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].key, "dir.v1/000001");
    assert_eq!(samples[0].members, raw("").members);
}

#[test]
fn option_parsing_names_the_field() {
    assert_eq!(parse_byte_size("256MB", "bytes_per_shard").unwrap(), 256_000_000);
    assert_eq!(parse_byte_size("1GiB", "bytes_per_shard").unwrap(), 1 << 30);
    assert_eq!(parse_byte_size("1.5k", "bytes_per_shard").unwrap(), 1500);
    assert_eq!(parse_byte_size(" 4096 ", "bytes_per_shard").unwrap(), 4096);
    for bad in ["", "MB", "12 parsecs", "0", "-5M"] {
        let err = parse_byte_size(bad, "bytes_per_shard").unwrap_err().to_string();
        assert!(err.contains("bytes_per_shard"), "{bad:?}: {err}");
    }
    assert_eq!("none".parse::<Compression>().unwrap(), Compression::None);
    assert_eq!(
        "zstd".parse::<Compression>().unwrap(),
        Compression::Zstd {
            level: zstd::DEFAULT_COMPRESSION_LEVEL
        }
    );
    for bad in ["gzip", "zstd:99", "zstd:x", "none:3"] {
        let err = bad.parse::<Compression>().unwrap_err().to_string();
        assert!(err.contains("compress") && err.contains(bad), "{err}");
    }
    let mut options = WriterOptions::new(0);
    assert!(options
        .validate()
        .unwrap_err()
        .to_string()
        .contains("samples_per_shard"));
    options.samples_per_shard = 1;
    options.bytes_per_shard = Some(100);
    assert!(options.validate().unwrap_err().to_string().contains("bytes_per_shard"));
}

#[test]
fn output_folder_with_shards_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("00000.tar.zst"), b"").unwrap();
    let err = ShardWriter::new(dir.path(), 1).err().unwrap().to_string();
    assert!(err.contains("00000.tar.zst"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("00003_stats.json"), b"{}").unwrap();
    assert!(ShardWriter::new(dir.path(), 1).is_err());
}

#[test]
fn a_shard_file_appends_raw_samples_as_the_writer_does() {
    let dir = tempfile::tempdir().unwrap();
    let samples: Vec<RawSample> = (0..3)
        .map(|i| RawSample {
            key: format!("{i:09}"),
            shard: PathBuf::from("in.tar"),
            members: BTreeMap::from([
                ("jpg".to_string(), vec![i as u8; 700]),
                ("txt".to_string(), format!("caption {i}").into_bytes()),
            ]),
        })
        .collect();
    let mut writer = ShardWriter::new(&dir.path().join("writer"), 10).unwrap();
    for sample in &samples {
        writer.write_raw(sample).unwrap();
    }
    let summary = writer.finish().unwrap();
    let path = dir.path().join("one.tar");
    let mut file = ShardFile::create(&path, Compression::None).unwrap();
    for sample in &samples {
        file.append_raw(sample).unwrap();
    }
    assert_eq!(file.samples(), 3);
    assert!(
        path.with_extension("tar.tmp").exists() && !path.exists(),
        "written under .tmp"
    );
    let finished = file.finish().unwrap();
    assert_eq!((finished.path.as_path(), finished.samples), (path.as_path(), 3));
    assert!(!path.with_extension("tar.tmp").exists());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(finished.tar_bytes, bytes.len() as u64);
    assert_eq!(bytes, std::fs::read(&summary.shards[0]).unwrap());
}
