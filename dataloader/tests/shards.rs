//! Shards end to end: manifest → ShardWriter → tar reader / Loader, specs, bad data, determinism.
use std::io::Cursor;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use dataloader::tar_reader::for_each_sample;
use dataloader::{
    count_samples, expand_shards, read_manifest, CaptionSource, DataError, ImageTransform, Loader, LoaderConfig,
    RawSample, ShardWriter, SkipReason, DEFAULT_MAX_PIXELS,
};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use rand::SeedableRng;

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
    bytes
}

/// A small image whose pixels depend on `seed`, so samples are distinguishable.
fn test_image(seed: u32, width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        Rgb([
            (x * 7 + seed * 31) as u8,
            (y * 11 + seed * 17) as u8,
            ((x + y) * 3 + seed) as u8,
        ])
    })
}

fn tar_of(path: &Path, members: &[(&str, &[u8])]) {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, name, *data).unwrap();
    }
    std::fs::write(path, builder.into_inner().unwrap()).unwrap();
}

fn raw_samples(shards: &[PathBuf]) -> Vec<RawSample> {
    let mut out = Vec::new();
    for shard in shards {
        for_each_sample(shard, |item| {
            out.push(item.expect("clean shard"));
            ControlFlow::Continue(())
        });
    }
    out
}

/// Writes five samples (PNG with alpha, JPEG, multi-caption, labels, a user key) through the
/// manifest path, two per shard, plus one row whose image is missing.
fn write_dataset(dir: &Path) -> (Vec<PathBuf>, Vec<Vec<u8>>) {
    let images_dir = dir.join("raw");
    std::fs::create_dir_all(&images_dir).unwrap();
    let mut originals = Vec::new();
    let mut lines = Vec::new();
    for i in 0..5u32 {
        let (name, bytes) = if i % 2 == 0 {
            let rgba = RgbaImage::from_fn(20 + i, 16, |x, y| {
                let Rgb([r, g, b]) = *test_image(i, 20 + i, 16).get_pixel(x, y);
                Rgba([r, g, b, if x < 4 { 0 } else { 255 }])
            });
            (
                format!("img{i}.png"),
                encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png),
            )
        } else {
            let rgb = test_image(i, 16, 24 + i);
            (
                format!("img{i}.jpg"),
                encode(DynamicImage::ImageRgb8(rgb), ImageFormat::Jpeg),
            )
        };
        std::fs::write(images_dir.join(&name), &bytes).unwrap();
        originals.push(bytes);
        let row = match i {
            1 => {
                serde_json::json!({"image": format!("raw/{name}"), "captions": ["first of 1", "second of 1"], "cls": 1})
            }
            3 => {
                serde_json::json!({"image": format!("raw/{name}"), "caption": "caption 3", "key": "custom3", "extra": [1, 2]})
            }
            _ => {
                serde_json::json!({"image": format!("raw/{name}"), "caption": format!("caption {i}"), "cls": i})
            }
        };
        lines.push(row.to_string());
        if i == 2 {
            lines.push(serde_json::json!({"image": "raw/missing.png", "caption": "gone"}).to_string());
        }
    }
    let manifest = dir.join("manifest.jsonl");
    std::fs::write(&manifest, lines.join("\n") + "\n").unwrap();

    let out = dir.join("shards");
    let mut writer = ShardWriter::new(&out, 2).unwrap();
    let mut skipped = Vec::new();
    for row in read_manifest(&manifest).unwrap() {
        match row.unwrap().load(&manifest, DEFAULT_MAX_PIXELS) {
            Ok(sample) => {
                writer.write(&sample).unwrap();
            }
            Err(skip) => skipped.push(skip),
        }
    }
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].reason, SkipReason::MissingImage);
    assert_eq!(skipped[0].row, 4);
    assert!(skipped[0].to_string().contains("missing.png"), "{}", skipped[0]);
    let summary = writer.finish().unwrap();
    assert_eq!(summary.samples, 5);
    (summary.shards, originals)
}

#[test]
fn shard_round_trip_keeps_bytes_captions_labels_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (shards, originals) = write_dataset(dir.path());
    let out = dir.path().join("shards");
    assert_eq!(
        shards,
        [out.join("00000.tar"), out.join("00001.tar"), out.join("00002.tar")]
    );
    let sizes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sizes.json")).unwrap()).unwrap();
    assert_eq!(
        sizes,
        serde_json::json!({"00000.tar": 2, "00001.tar": 2, "00002.tar": 1})
    );
    assert!(!out.join("00000.tar.tmp").exists());
    assert_eq!(expand_shards(out.to_str().unwrap()).unwrap(), shards);
    assert_eq!(count_samples(&shards).unwrap(), 5);

    // Members as stored.
    let raw = raw_samples(&shards);
    let keys: Vec<&str> = raw.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["000000000", "000000001", "000000002", "custom3", "000000003"]);
    for (i, sample) in raw.iter().enumerate() {
        let ext = if i % 2 == 0 { "png" } else { "jpg" };
        assert_eq!(sample.members[ext], originals[i], "image bytes of sample {i}");
        let json: serde_json::Value = serde_json::from_slice(&sample.members["json"]).unwrap();
        assert_eq!(json["key"], sample.key);
    }
    assert_eq!(raw[1].members["txt"], b"first of 1\nsecond of 1");
    assert_eq!(raw[1].members["cls"], b"1");
    assert!(!raw[3].members.contains_key("cls"));
    let json3: serde_json::Value = serde_json::from_slice(&raw[3].members["json"]).unwrap();
    assert_eq!(json3["extra"], serde_json::json!([1, 2]));

    // Through the loader, eval mode, one thread: file order, last partial batch kept.
    let mut cfg = LoaderConfig::new(shards.clone(), false);
    cfg.batch_size = 2;
    cfg.image_size = 8;
    cfg.threads = 1;
    cfg.context_length = 77;
    let mut loader = Loader::new(cfg.clone()).unwrap();
    let batches: Vec<_> = loader.by_ref().collect();
    assert!(loader.skip_counts().is_empty(), "{}", loader.skip_counts());
    assert_eq!(batches.iter().map(|b| b.len()).collect::<Vec<_>>(), [2, 2, 1]);
    let keys: Vec<String> = batches.iter().flat_map(|b| b.keys.clone()).collect();
    assert_eq!(keys, ["000000000", "000000001", "000000002", "custom3", "000000003"]);
    let captions: Vec<Vec<String>> = batches.iter().flat_map(|b| b.captions.clone()).collect();
    assert_eq!(captions[0], ["caption 0"]);
    assert_eq!(captions[1], ["first of 1", "second of 1"]);
    assert_eq!(captions[3], ["caption 3"]);
    let labels: Vec<Option<i64>> = batches.iter().flat_map(|b| b.labels.clone()).collect();
    assert_eq!(labels, [Some(0), Some(1), Some(2), None, Some(4)]);

    // Images equal the eval transform of the originals (JPEGs decoded at the reduced DCT
    // scale the small target allows, as the loader does; imaging's tests bound that
    // against a full decode).
    let transform = ImageTransform::eval(8);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let images: Vec<f32> = batches.iter().flat_map(|b| b.images.iter().copied()).collect();
    for (i, original) in originals.iter().enumerate() {
        let expected = transform
            .decode_and_apply(original, DEFAULT_MAX_PIXELS, &mut rng)
            .unwrap();
        assert_eq!(&images[i * 192..(i + 1) * 192], &expected[..], "image {i}");
    }
    // Tokens: one row per sample; several captions are tokenized as one text.
    let tokenizer = dataloader::Tokenizer::new();
    assert_eq!(batches[0].tokens.len(), 2 * 77);
    assert_eq!(batches[0].tokens[..77], tokenizer.tokenize("caption 0", 77)[..]);
    assert_eq!(
        batches[0].tokens[77..],
        tokenizer.tokenize("first of 1 second of 1", 77)[..]
    );
    assert_eq!(batches[2].tokens.len(), 77);
}

#[test]
fn brace_specs_expand_and_missing_shards_are_named() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a-000.tar", "a-001.tar", "b-7.tar"] {
        std::fs::write(dir.path().join(name), b"").unwrap();
    }
    let base = dir.path().to_str().unwrap();
    let shards = expand_shards(&format!("{base}/a-{{000..001}}.tar::{base}/b-7.tar")).unwrap();
    let names: Vec<_> = shards
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(names, ["a-000.tar", "a-001.tar", "b-7.tar"]);

    let err = expand_shards(&format!("{base}/a-{{000..002}}.tar")).unwrap_err();
    assert!(matches!(&err, DataError::MissingShard { path } if path.ends_with("a-002.tar")));
    assert!(err.to_string().contains("a-002.tar"), "{err}");
}

#[test]
fn bad_samples_and_shards_are_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let png = encode(DynamicImage::ImageRgb8(test_image(1, 12, 12)), ImageFormat::Png);
    let big = encode(DynamicImage::ImageRgb8(test_image(2, 40, 40)), ImageFormat::Png);
    let good_a = dir.path().join("0.tar");
    tar_of(
        &good_a,
        &[
            ("good1.png", &png),
            ("good1.txt", b"fine"),
            ("garbage.jpg", b"\xff\xd8\xff definitely not a jpeg"),
            ("garbage.txt", b"x"),
            ("latin1.png", &png),
            ("latin1.txt", b"caf\xe9"),
            ("nocap.png", &png),
            ("empty.png", b""),
            ("empty.txt", b"x"),
            ("noimage.txt", b"only text"),
            ("huge.png", &big),
            ("huge.txt", b"too many pixels"),
            ("badcls.png", &png),
            ("badcls.txt", b"x"),
            ("badcls.cls", b"three"),
            ("good2.png", &png),
            ("good2.txt", b"also fine"),
        ],
    );
    // A shard cut inside its second sample's image.
    let truncated = dir.path().join("1.tar");
    tar_of(
        &truncated,
        &[
            ("t1.png", &png),
            ("t1.txt", b"kept"),
            ("t2.png", &big),
            ("t2.txt", b"lost"),
        ],
    );
    let bytes = std::fs::read(&truncated).unwrap();
    // Last 2048 bytes: t2.txt (header + one block) and the two end blocks; 600 more (over the
    // < 512 bytes of padding) lands inside t2.png's data.
    std::fs::write(&truncated, &bytes[..bytes.len() - 2048 - 600]).unwrap();
    let missing = dir.path().join("2.tar");

    let mut cfg = LoaderConfig::new(vec![good_a, truncated, missing], false);
    cfg.batch_size = 10;
    cfg.image_size = 4;
    cfg.threads = 2;
    cfg.context_length = 0;
    cfg.max_pixels = 1000;
    let mut loader = Loader::new(cfg).unwrap();
    let mut keys: Vec<String> = loader.by_ref().flat_map(|b| b.keys).collect();
    keys.sort();
    assert_eq!(keys, ["good1", "good2", "t1"]);
    let counts = loader.skip_counts();
    let expected = [
        (SkipReason::UndecodableImage, 1),
        (SkipReason::InvalidCaption, 1),
        (SkipReason::MissingCaption, 1),
        (SkipReason::EmptyImage, 1),
        (SkipReason::MissingImage, 1),
        (SkipReason::ImageTooLarge, 1),
        (SkipReason::InvalidLabel, 1),
        (SkipReason::TruncatedMember, 1),
        (SkipReason::UnreadableShard, 1),
    ];
    for (reason, n) in expected {
        assert_eq!(counts.get(reason), n, "{reason} in {counts}");
    }
    assert_eq!(counts.total(), 9, "{counts}");
}

#[test]
fn json_captions_are_read_from_the_configured_field() {
    let dir = tempfile::tempdir().unwrap();
    let png = encode(DynamicImage::ImageRgb8(test_image(3, 10, 10)), ImageFormat::Png);
    let shard = dir.path().join("j.tar");
    tar_of(
        &shard,
        &[
            ("a.png", &png),
            ("a.json", br#"{"alt": "from json", "caption": "other"}"#),
            ("b.png", &png),
            ("b.json", br#"{"caption": "no alt"}"#),
        ],
    );
    let mut cfg = LoaderConfig::new(vec![shard], false);
    cfg.caption = CaptionSource::Json("alt".into());
    cfg.image_size = 4;
    cfg.context_length = 0;
    let mut loader = Loader::new(cfg).unwrap();
    let batches: Vec<_> = loader.by_ref().collect();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].captions, [["from json"]]);
    assert_eq!(loader.skip_counts().get(SkipReason::MissingCaption), 1);
}

/// Twelve 1-sample-apart keys over four shards.
fn train_shards(dir: &Path) -> Vec<PathBuf> {
    let mut shards = Vec::new();
    for s in 0..4u32 {
        let mut members: Vec<(String, Vec<u8>)> = Vec::new();
        for i in 0..3u32 {
            let key = format!("s{s}-{i}");
            let png = encode(DynamicImage::ImageRgb8(test_image(s * 3 + i, 20, 14)), ImageFormat::Png);
            members.push((format!("{key}.png"), png));
            members.push((format!("{key}.txt"), format!("caption {key}").into_bytes()));
        }
        let path = dir.join(format!("{s:05}.tar"));
        let refs: Vec<(&str, &[u8])> = members.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        tar_of(&path, &refs);
        shards.push(path);
    }
    shards
}

#[test]
fn same_seed_same_batches_with_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    let shards = train_shards(dir.path());
    let config = |seed| {
        let mut cfg = LoaderConfig::new(shards.clone(), true);
        cfg.batch_size = 4;
        cfg.image_size = 8;
        cfg.threads = 2;
        cfg.seed = seed;
        cfg.shuffle_buffer = 4;
        cfg.context_length = 0;
        cfg
    };
    // 8 batches span several epochs (each thread makes one full batch of 4 per epoch from its
    // 6 samples and drops the partial rest).
    let run = |seed| Loader::new(config(seed)).unwrap().take(8).collect::<Vec<_>>();
    let first = run(7);
    let second = run(7);
    assert_eq!(first, second);
    assert!(first.iter().all(|b| b.len() == 4));
    assert!(first.iter().any(|b| b.epoch >= 2), "train mode continues over epochs");
    // A different seed changes order and crops.
    let other = run(8);
    assert_ne!(first, other);
    let keys = |batches: &[dataloader::Batch]| batches.iter().flat_map(|b| b.keys.clone()).collect::<Vec<_>>();
    assert_ne!(keys(&first), keys(&other));
}

#[test]
fn dropping_an_endless_loader_stops_its_threads() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = LoaderConfig::new(train_shards(dir.path()), true);
    cfg.batch_size = 2;
    cfg.image_size = 8;
    cfg.threads = 3;
    cfg.context_length = 0;
    let mut loader = Loader::new(cfg).unwrap();
    assert!(loader.next().is_some());
    // Workers are blocked on full channels now; drop must wake and join them (a hang fails
    // the test by timeout).
    drop(loader);
}

#[test]
fn loader_with_only_bad_shards_ends_instead_of_spinning() {
    let mut cfg = LoaderConfig::new(vec![PathBuf::from("/nonexistent/0.tar")], true);
    cfg.context_length = 0;
    let mut loader = Loader::new(cfg).unwrap();
    assert!(loader.next().is_none());
    assert_eq!(loader.skip_counts().get(SkipReason::UnreadableShard), 1);
}
