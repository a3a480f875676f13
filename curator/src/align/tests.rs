use super::*;
use std::collections::BTreeMap;

/// A PNG of `width`×`height` made of 16-px blocks of random colour drawn from `seed`.
pub(crate) fn noise_image(seed: u64, width: u32, height: u32) -> image::RgbImage {
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

pub(crate) fn encode(img: &image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    img.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

fn png(seed: u64, width: u32, height: u32) -> Vec<u8> {
    encode(&noise_image(seed, width, height), image::ImageFormat::Png)
}

fn sample(shard: &str, key: &str, image: &[u8], text: &[u8]) -> RawSample {
    RawSample {
        key: key.into(),
        shard: PathBuf::from(shard),
        members: BTreeMap::from([("png".to_string(), image.to_vec()), ("txt".to_string(), text.to_vec())]),
    }
}

/// Observe all samples (in the order given), then decide all.
fn run(cfg: &AlignConfig, samples: &[RawSample]) -> Vec<Decision> {
    cfg.validate("stage[0]").unwrap();
    let mut stage = AlignStage::new(cfg);
    let mut counts = vec![0; stage.observation_len()];
    for s in samples {
        stage.observe(s, &mut counts);
    }
    stage.set_observation(counts);
    samples.iter().map(|s| stage.decide(s, &mut [])).collect()
}

fn small_images() -> AlignConfig {
    AlignConfig {
        shorter_side_above: 16,
        ..AlignConfig::default()
    }
}

#[test]
fn per_sample_rules_with_align_defaults() {
    let cfg = AlignConfig::default();
    let words = |n: usize| (0..n).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ");
    let mut no_image = sample("a.tar", "k", b"", b"a red heart");
    no_image.members.remove("png");
    let mut no_text = sample("a.tar", "k", &png(1, 300, 300), b"");
    no_text.members.remove("txt");
    let samples = [
        sample("a.tar", "00", &png(1, 201, 300), b"a red heart"),
        sample("a.tar", "01", &png(2, 200, 400), b"a blue heart"),
        sample("a.tar", "02", &png(3, 760, 250), b"a green heart"),
        sample("a.tar", "03", &png(4, 740, 250), b"a purple heart"),
        sample("a.tar", "04", &png(5, 300, 300), b"two words"),
        sample("a.tar", "05", &png(6, 300, 300), words(21).as_bytes()),
        sample("a.tar", "06", &png(7, 300, 300), words(20).as_bytes()),
        sample("a.tar", "07", b"\x89PNG but not really", b"a broken heart"),
        sample("a.tar", "08", &png(8, 300, 300), b"an \xff invalid caption"),
        no_image,
        no_text,
    ];
    assert_eq!(
        run(&cfg, &samples),
        [
            Decision::Keep,
            Decision::Drop("small_image"),
            Decision::Drop("aspect_ratio"),
            Decision::Keep,
            Decision::Drop("text_length"),
            Decision::Drop("text_length"),
            Decision::Keep,
            Decision::Drop("undecodable_image"),
            Decision::Drop("invalid_caption"),
            Decision::Drop("missing_image"),
            Decision::Drop("missing_caption"),
        ]
    );
    let long = AlignConfig {
        max_caption_bytes: 10,
        ..small_images()
    };
    assert_eq!(
        run(
            &long,
            &[sample("a.tar", "0", &png(1, 64, 64), b"a caption over ten bytes")]
        ),
        [Decision::Drop("caption_too_long")]
    );
}

#[test]
fn header_ok_but_pixels_broken_is_undecodable() {
    let mut truncated = png(9, 64, 64);
    truncated.truncate(truncated.len() / 2);
    let decisions = run(&small_images(), &[sample("a.tar", "0", &truncated, b"half an image")]);
    assert_eq!(decisions, [Decision::Drop("undecodable_image")]);
}

#[test]
fn texts_shared_by_too_many_distinct_images_are_dropped() {
    let cfg = AlignConfig {
        max_images_per_text: 2,
        ..small_images()
    };
    let same = png(50, 64, 64);
    let samples = [
        // Three images under one alt-text (case and punctuation do not make it another).
        sample("a.tar", "0", &png(1, 64, 64), b"a smiling yellow face"),
        sample("a.tar", "1", &png(2, 64, 64), b"A smiling yellow face!"),
        sample("a.tar", "2", &png(3, 64, 64), b"a smiling  yellow face"),
        // Two images: allowed.
        sample("a.tar", "3", &png(4, 64, 64), b"a red heart"),
        sample("a.tar", "4", &png(5, 64, 64), b"a red heart"),
        // One image five times with the same text is one pair, not five images.
        sample("a.tar", "5", &same, b"a green apple"),
        sample("a.tar", "6", &same, b"a green apple"),
        sample("a.tar", "7", &same, b"a green apple"),
    ];
    let mut expected = vec![Decision::Drop("text_many_images"); 3];
    expected.extend([Decision::Keep, Decision::Keep, Decision::Keep]);
    expected.extend(vec![Decision::Drop("duplicate"); 2]);
    assert_eq!(run(&cfg, &samples), expected);
}

#[test]
fn images_with_too_many_distinct_texts_are_dropped() {
    let cfg = AlignConfig {
        max_texts_per_image: 2,
        ..small_images()
    };
    let (x, y) = (png(1, 64, 64), png(2, 64, 64));
    let samples = [
        sample("a.tar", "0", &x, b"a cat face one"),
        sample("a.tar", "1", &x, b"a cat face two"),
        sample("a.tar", "2", &x, b"a cat face three"),
        sample("a.tar", "3", &y, b"a dog face one"),
        sample("a.tar", "4", &y, b"a dog face two"),
    ];
    assert_eq!(
        run(&cfg, &samples),
        [
            Decision::Drop("image_many_texts"),
            Decision::Drop("image_many_texts"),
            Decision::Drop("image_many_texts"),
            Decision::Keep,
            Decision::Drop("duplicate"),
        ]
    );
}

#[test]
fn rare_tokens_are_those_outside_the_top_k_ngrams() {
    // Counts: a 4, red 4, "a red" 4, heart 3, "red heart" 3, zebra 1, "red zebra" 1.
    let samples = [
        sample("a.tar", "0", &png(1, 64, 64), b"a red heart"),
        sample("a.tar", "1", &png(2, 64, 64), b"a red heart"),
        sample("a.tar", "2", &png(3, 64, 64), b"a red heart"),
        sample("a.tar", "3", &png(4, 64, 64), b"a red zebra"),
    ];
    let with_k = |k| AlignConfig {
        rare_token_top_k: k,
        ..small_images()
    };
    let rare = [
        Decision::Keep,
        Decision::Keep,
        Decision::Keep,
        Decision::Drop("rare_token"),
    ];
    // K = 4 cuts at a count of 3, K = 5 too (a tie at the cut keeps both).
    assert_eq!(run(&with_k(4), &samples), rare);
    assert_eq!(run(&with_k(5), &samples), rare);
    // K = 3 cuts at 4: "heart" and "red heart" are rare too.
    assert_eq!(run(&with_k(3), &samples), vec![Decision::Drop("rare_token"); 4]);
    // K = 6 reaches the count of 1: nothing is rare.
    assert_eq!(run(&with_k(6), &samples), vec![Decision::Keep; 4]);
}

#[test]
fn the_first_copy_by_shard_and_key_is_kept_whatever_the_order_seen() {
    let copy = png(7, 64, 64);
    let samples = [
        sample("b.tar", "1", &copy, b"the first shard is a"),
        sample("a.tar", "9", &copy, b"keys compare as bytes"),
        // The earliest copy fails a per-sample rule, so it does not count as the first.
        sample("a.tar", "0", &copy, b"short"),
        sample("a.tar", "10", &copy, b"so 10 comes before 9"),
        sample("a.tar", "5", &png(8, 64, 64), b"another image entirely"),
    ];
    let expected = [
        Decision::Drop("duplicate"),
        Decision::Drop("duplicate"),
        Decision::Drop("text_length"),
        Decision::Keep,
        Decision::Keep,
    ];
    assert_eq!(run(&small_images(), &samples), expected);
    let mut reversed = samples.to_vec();
    reversed.reverse();
    let mut expected_reversed = expected.to_vec();
    expected_reversed.reverse();
    assert_eq!(run(&small_images(), &reversed), expected_reversed);
    let keep_copies = AlignConfig {
        drop_duplicates: false,
        ..small_images()
    };
    assert_eq!(
        run(&keep_copies, &samples)
            .iter()
            .filter(|d| **d == Decision::Keep)
            .count(),
        4
    );
}

#[test]
fn near_duplicates_are_found_for_altered_copies_only() {
    let base = noise_image(11, 256, 256);
    let jpeg = encode(&base, image::ImageFormat::Jpeg);
    let mut brighter = base.clone();
    for p in brighter.pixels_mut() {
        p.0 = p.0.map(|c| c.saturating_add(12));
    }
    let brighter = encode(&brighter, image::ImageFormat::Png);
    let smaller = encode(
        &image::imageops::resize(&base, 224, 224, image::imageops::FilterType::Triangle),
        image::ImageFormat::Png,
    );
    let other = png(12, 256, 256);
    let hash = |bytes: &[u8]| phash::phash(dataloader::decode_rgb(bytes, u64::MAX).unwrap());
    let base_hash = hash(&encode(&base, image::ImageFormat::Png));
    for altered in [&jpeg, &brighter, &smaller] {
        let d = phash::hamming(base_hash, hash(altered));
        assert!(d <= DEFAULT_NEAR_DUPLICATE_MAX_DISTANCE, "altered copy at distance {d}");
    }
    let d = phash::hamming(base_hash, hash(&other));
    assert!(
        d > 3 * DEFAULT_NEAR_DUPLICATE_MAX_DISTANCE,
        "different image at distance {d}"
    );

    let samples = [
        sample(
            "a.tar",
            "0",
            &encode(&base, image::ImageFormat::Png),
            b"the original picture here",
        ),
        sample("a.tar", "1", &jpeg, b"the same picture as jpeg"),
        sample("a.tar", "2", &brighter, b"the same picture brighter"),
        sample("a.tar", "3", &smaller, b"the same picture smaller"),
        sample("a.tar", "4", &other, b"a different picture entirely"),
        sample("a.tar", "5", &jpeg, b"the jpeg copy again"),
    ];
    assert_eq!(
        run(&small_images(), &samples),
        [
            Decision::Keep,
            Decision::Drop("near_duplicate"),
            Decision::Drop("near_duplicate"),
            Decision::Drop("near_duplicate"),
            Decision::Keep,
            Decision::Drop("near_duplicate"),
        ]
    );
    let off = AlignConfig {
        drop_near_duplicates: false,
        ..small_images()
    };
    let decisions = run(&off, &samples);
    assert_eq!(decisions[..5], vec![Decision::Keep; 5]);
    assert_eq!(decisions[5], Decision::Drop("duplicate"));
}

fn write_shard(path: &std::path::Path, samples: &[(String, Vec<u8>, String)]) {
    let members = samples.iter().flat_map(|(key, image, text)| {
        [("png", image.as_slice()), ("txt", text.as_bytes())].map(|(ext, data)| (format!("{key}.{ext}"), data))
    });
    crate::test_shards::write_tar(path, members);
}

/// Keys of the samples in the output shards.
fn kept_keys(report: &crate::CurateReport) -> Vec<String> {
    let mut keys = Vec::new();
    for shard in &report.output_shards {
        dataloader::tar_reader::for_each_sample(shard, |item| {
            keys.push(item.unwrap().key);
            std::ops::ControlFlow::Continue(())
        });
    }
    keys.sort();
    keys
}

#[test]
fn pipeline_output_does_not_depend_on_threads_or_shard_order() {
    let dir = tempfile::tempdir().unwrap();
    let base = noise_image(3, 64, 64);
    let jpeg = encode(&base, image::ImageFormat::Jpeg);
    let mut shards = Vec::new();
    for s in 0..4u64 {
        let samples: Vec<(String, Vec<u8>, String)> = (0..12u64)
            .map(|i| {
                let key = format!("s{s}-{i:03}");
                let (image, text) = match (i % 6, s, i) {
                    // The same image in every shard: one copy survives.
                    (0, _, _) => (png(1000, 64, 64), format!("a shared picture number {s} {i}")),
                    // One alt-text under eight images (over the limit of 3).
                    (1, _, _) => (png(2000 + s * 100 + i, 64, 64), "the very same words".to_string()),
                    (2, _, _) => (png(s * 100 + i, 64, 64), "tiny".to_string()),
                    // A picture in shard 0 and its JPEG copy in shard 2.
                    (3, 0, 3) => (
                        encode(&base, image::ImageFormat::Png),
                        "the original".to_string() + " one",
                    ),
                    (3, 2, 3) => (jpeg.clone(), "its jpeg copy".to_string()),
                    _ => (png(s * 100 + i, 64, 64), format!("picture {i} of shard {s}")),
                };
                (key, image, text)
            })
            .collect();
        let path = dir.path().join(format!("{s}.tar"));
        write_shard(&path, &samples);
        shards.push(path);
    }
    let cfg = AlignConfig {
        max_images_per_text: 3,
        ..small_images()
    };
    let stage = || {
        vec![crate::NamedStage {
            name: "align".into(),
            stage: Box::new(AlignStage::new(&cfg)),
        }]
    };
    let single = crate::SingleProcess;
    let one = crate::run_pipeline(stage(), &shards, &dir.path().join("one"), 1, &single).unwrap();
    let three = crate::run_pipeline(stage(), &shards, &dir.path().join("three"), 3, &single).unwrap();
    let mut reversed_shards = shards.clone();
    reversed_shards.reverse();
    let reversed = crate::run_pipeline(stage(), &reversed_shards, &dir.path().join("rev"), 2, &single).unwrap();
    for (a, b) in one.output_shards.iter().zip(&three.output_shards) {
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    }
    assert_eq!(kept_keys(&one), kept_keys(&reversed));
    for report in [&one, &three, &reversed] {
        let stage = &report.stages[0];
        assert_eq!(stage.dropped["duplicate"], 7);
        assert_eq!(stage.dropped["text_many_images"], 8);
        assert_eq!(stage.dropped["text_length"], 8);
        assert_eq!(stage.dropped["near_duplicate"], 1);
        assert_eq!(stage.stats, one.stages[0].stats);
    }
    assert_eq!(one.output_samples, 48 - 7 - 8 - 8 - 1);
    let kept = kept_keys(&one);
    assert!(kept.contains(&"s0-000".to_string()) && kept.contains(&"s0-003".to_string()));
    assert!(!kept.contains(&"s2-003".to_string()));
}

#[test]
fn config_defaults_are_aligns_and_bad_values_are_named() {
    let cfg: AlignConfig = toml::from_str("name = \"filters\"").unwrap();
    assert_eq!(cfg.shorter_side_above, 200);
    assert_eq!(cfg.aspect_ratio_below, 3.0);
    assert_eq!((cfg.max_texts_per_image, cfg.max_images_per_text), (1000, 10));
    assert_eq!((cfg.min_unigrams, cfg.max_unigrams), (3, 20));
    assert_eq!(cfg.rare_token_top_k, 100_000_000);
    assert!(cfg.drop_duplicates && cfg.drop_near_duplicates);
    let err = toml::from_str::<AlignConfig>("min_side = 3").unwrap_err().to_string();
    assert!(err.contains("min_side"), "{err}");
    for (field, bad) in [
        (
            "aspect_ratio_below",
            AlignConfig {
                aspect_ratio_below: 1.0,
                ..AlignConfig::default()
            },
        ),
        (
            "min_unigrams",
            AlignConfig {
                min_unigrams: 5,
                max_unigrams: 4,
                ..AlignConfig::default()
            },
        ),
        (
            "rare_token_top_k",
            AlignConfig {
                rare_token_top_k: 0,
                ..AlignConfig::default()
            },
        ),
        (
            "near_duplicate_max_distance",
            AlignConfig {
                near_duplicate_max_distance: 40,
                ..AlignConfig::default()
            },
        ),
    ] {
        let err = bad.validate("stage[2]").unwrap_err().to_string();
        assert!(err.contains(&format!("stage[2].{field}")), "{err}");
    }
    let parsed = crate::CurateConfig::from_toml(
        "[[stage]]\nkind = \"align\"\nmax_images_per_text = 4\n",
        std::path::Path::new("align.toml"),
    )
    .unwrap();
    assert_eq!(parsed.stages[0].name(), "align");
    let err = crate::CurateConfig::from_toml(
        "[[stage]]\nkind = \"align\"\nmin_unigrams = 30\n",
        std::path::Path::new("align.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("stage[0].min_unigrams"), "{err}");
}

#[test]
fn kth_largest_counts_from_one_and_allows_short_lists() {
    assert_eq!(kth_largest(vec![1, 4, 3, 4], 1), 4);
    assert_eq!(kth_largest(vec![1, 4, 3, 4], 3), 3);
    assert_eq!(kth_largest(vec![1, 4, 3, 4], 5), 0);
    assert_eq!(kth_largest(Vec::new(), 1), 0);
}
