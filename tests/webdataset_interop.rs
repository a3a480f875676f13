//! Webdataset interop, both ways (issue 3, item 8), against committed fixtures from
//! `scripts/reference/make_webdataset_interop_fixtures.py` (Python webdataset 1.0.2):
//! - shards written by webdataset's `ShardWriter` (USTAR and PAX headers) and in
//!   img2dataset's layout are read by ferroclip's loader with the keys, captions, labels and
//!   image sizes the script recorded;
//! - a shard that ferroclip's `ShardWriter` writes from fixed inputs is byte-identical to the
//!   committed `ferroclip_written.tar`, which webdataset read back as the script recorded.
//!
//! `FERROCLIP_UPDATE_FIXTURES=1 cargo test --test webdataset_interop` rewrites
//! `ferroclip_written.tar` (then rerun the script to refresh what Python read from it).
use std::collections::BTreeMap;
use std::io::Cursor;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use dataloader::tar_reader::for_each_sample;
use dataloader::{expand_shards, CaptionSource, Loader, LoaderConfig, RawSample, ShardSample, ShardWriter};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webdataset_interop")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every raw sample of `shard`, failing the test on any skip.
fn raw_samples(shard: &Path) -> Vec<RawSample> {
    let mut samples = Vec::new();
    for_each_sample(shard, |item| {
        samples.push(item.unwrap_or_else(|skip| panic!("{skip}")));
        ControlFlow::Continue(())
    });
    samples
}

fn image_size(bytes: &[u8]) -> (u32, u32) {
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .expect("guess format")
        .into_dimensions()
        .expect("image dimensions")
}

/// (key, captions, label) of every sample the eval-mode loader yields from `shards`, in order.
fn load(shards: Vec<PathBuf>, caption: CaptionSource) -> Vec<(String, Vec<String>, Option<i64>)> {
    let mut cfg = LoaderConfig::new(shards, false);
    cfg.threads = 1;
    cfg.batch_size = 4;
    cfg.image_size = 8;
    cfg.caption = caption;
    let mut loader = Loader::new(cfg).expect("loader");
    let mut out = Vec::new();
    for batch in loader.by_ref() {
        for ((key, captions), label) in batch.keys.into_iter().zip(batch.captions).zip(batch.labels) {
            out.push((key, captions, label));
        }
    }
    assert!(loader.skip_counts().is_empty(), "skips: {}", loader.skip_counts());
    out
}

fn expected_of(records: &Value) -> Vec<(String, Vec<String>, Option<i64>)> {
    records
        .as_array()
        .expect("record list")
        .iter()
        .map(|r| {
            let captions = r["captions"]
                .as_array()
                .expect("captions")
                .iter()
                .map(|c| c.as_str().expect("caption string").to_string())
                .collect();
            (
                r["key"].as_str().expect("key").to_string(),
                captions,
                r["label"].as_i64(),
            )
        })
        .collect()
}

#[test]
fn python_written_shards_are_read_by_the_loader() {
    let dir = fixture_dir();
    let written = read_json(&dir.join("python_written.json"));
    let written = written.as_object().expect("shard map");
    assert_eq!(written.len(), 4, "shards in python_written.json");
    for (shard_name, records) in written {
        let shard = dir.join(shard_name);
        assert_eq!(
            load(vec![shard.clone()], CaptionSource::Txt),
            expected_of(records),
            "{shard_name}"
        );
        // Image sizes and members from the raw reader, against what PIL saw.
        let raw = raw_samples(&shard);
        assert_eq!(raw.len(), records.as_array().map_or(0, Vec::len), "{shard_name}");
        for (sample, record) in raw.iter().zip(records.as_array().into_iter().flatten()) {
            let ext = record["image_ext"].as_str().expect("image_ext");
            let bytes = sample
                .members
                .get(ext)
                .unwrap_or_else(|| panic!("{shard_name} {}: no .{ext}", sample.key));
            let (w, h) = image_size(bytes);
            assert_eq!(
                (u64::from(w), u64::from(h)),
                (
                    record["width"].as_u64().expect("width"),
                    record["height"].as_u64().expect("height")
                ),
                "{shard_name} {}",
                sample.key
            );
        }
    }
}

#[test]
fn pax_shard_keeps_long_and_non_ascii_keys() {
    let keys: Vec<String> = raw_samples(&fixture_dir().join("wds_pax-000000.tar"))
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert!(
        keys.iter().any(|k| k.len() > 100 && k.ends_with("/photo_0001")),
        "{keys:?}"
    );
    assert!(keys.iter().any(|k| k == "café/ünïcødé_key"), "{keys:?}");
}

#[test]
fn img2dataset_layout_reads_captions_from_txt_and_json_alike() {
    let dir = fixture_dir();
    let shard = dir.join("img2dataset-00000.tar");
    let from_txt = load(vec![shard.clone()], CaptionSource::Txt);
    let from_json = load(vec![shard.clone()], CaptionSource::Json("caption".into()));
    assert_eq!(from_txt, from_json);
    let keys: Vec<&str> = from_txt.iter().map(|(key, _, _)| key.as_str()).collect();
    assert_eq!(keys, ["000000000", "000000001", "000000002", "000000003"]);
    for sample in raw_samples(&shard) {
        let members: Vec<&str> = sample.members.keys().map(String::as_str).collect();
        assert_eq!(members, ["jpg", "json", "txt"], "{}", sample.key);
    }
}

#[test]
fn webdataset_shard_writer_shards_load_through_a_brace_spec() {
    let dir = fixture_dir();
    let written = read_json(&dir.join("python_written.json"));
    let spec = format!("{}/wds_ustar-{{000000..000001}}.tar", dir.display());
    let shards = expand_shards(&spec).expect("spec");
    let mut expected = expected_of(&written["wds_ustar-000000.tar"]);
    expected.extend(expected_of(&written["wds_ustar-000001.tar"]));
    assert_eq!(load(shards, CaptionSource::Txt), expected);
}

/// Fixed inputs: image bytes taken from the committed Python fixtures (so no image encoder's
/// version can change them), plain and non-ASCII captions, two captions in one sample, a
/// label, extra JSON fields, and a key too long for a tar header's 100-byte name.
fn ferroclip_samples() -> Vec<ShardSample> {
    let dir = fixture_dir();
    let mut images: Vec<(String, Vec<u8>)> = Vec::new();
    for shard in ["wds_ustar-000000.tar", "img2dataset-00000.tar"] {
        for sample in raw_samples(&dir.join(shard)) {
            for ext in ["png", "jpg"] {
                if let Some(bytes) = sample.members.get(ext) {
                    images.push((ext.to_string(), bytes.clone()));
                }
            }
        }
    }
    assert!(images.len() >= 4, "fixture images");
    let mut json = serde_json::Map::new();
    json.insert("url".into(), Value::from("https://example.com/x.jpg"));
    json.insert("width".into(), Value::from(16));
    vec![
        ShardSample {
            key: None,
            image: images[0].1.clone(),
            image_ext: images[0].0.clone(),
            captions: vec!["a plain caption".into()],
            label: None,
            json: Default::default(),
        },
        ShardSample {
            key: None,
            image: images[1].1.clone(),
            image_ext: images[1].0.clone(),
            captions: vec!["première légende 🐱".into(), "second caption".into()],
            label: Some(7),
            json,
        },
        ShardSample {
            key: Some(format!("long_{}", "k".repeat(120))),
            image: images[3].1.clone(),
            image_ext: images[3].0.clone(),
            captions: vec!["a sample with a long key".into()],
            label: Some(0),
            json: Default::default(),
        },
    ]
}

#[test]
fn ferroclip_written_shard_is_read_by_python_webdataset() {
    let out = tempfile::tempdir().expect("tempdir");
    let mut writer = ShardWriter::new(out.path(), 100).expect("writer");
    let samples = ferroclip_samples();
    for sample in &samples {
        writer.write(sample).expect("write");
    }
    let shards = writer.finish().expect("finish").shards;
    assert_eq!(shards.len(), 1);
    let bytes = std::fs::read(&shards[0]).expect("read written shard");
    let fixture = fixture_dir().join("ferroclip_written.tar");
    if std::env::var_os("FERROCLIP_UPDATE_FIXTURES").is_some() {
        std::fs::write(&fixture, &bytes).expect("write fixture");
    }
    let committed = std::fs::read(&fixture).expect("committed ferroclip_written.tar");
    assert!(
        bytes == committed,
        "ferroclip's shard bytes changed; if intended, rewrite the fixtures (see the top of \
         scripts/reference/make_webdataset_interop_fixtures.py)"
    );

    let record = read_json(&fixture_dir().join("ferroclip_written.read_by_webdataset.json"));
    let sha256: String = Sha256::digest(&committed).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        record["sha256"],
        sha256.as_str(),
        "the Python record is of another shard; rerun the script"
    );

    // What webdataset read equals what ferroclip's reader reads, and what was written.
    let ours = raw_samples(&shards[0]);
    let theirs = record["samples"].as_array().expect("samples");
    assert_eq!(theirs.len(), samples.len());
    for ((raw, py), written) in ours.iter().zip(theirs).zip(&samples) {
        assert_eq!(py["key"], raw.key.as_str());
        if let Some(key) = &written.key {
            assert_eq!(&raw.key, key);
        }
        let members: Vec<&str> = raw.members.keys().map(String::as_str).collect();
        let py_members: Vec<&str> = py["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(py_members, members, "{}", raw.key);
        assert_eq!(py["captions"], serde_json::json!(written.captions), "{}", raw.key);
        assert_eq!(py["label"].as_i64(), written.label, "{}", raw.key);
        assert_eq!(py["image_ext"], written.image_ext.as_str());
        let (w, h) = image_size(&written.image);
        assert_eq!(py["image_size"], serde_json::json!([w, h]), "{}", raw.key);
        let json: BTreeMap<String, Value> =
            serde_json::from_slice(&raw.members["json"]).expect("ferroclip's json member");
        assert_eq!(py["json"], serde_json::to_value(&json).expect("json"), "{}", raw.key);
    }
}
