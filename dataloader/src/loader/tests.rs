//! Tests of the loader: sample helpers, shard dealing and draws, config checks, and whole
//! loaders over small flawed shards (determinism, exact resume at every cut, buffer reuse).
use super::sampling::{derive_seed, shards_for_thread, ShardDraws};
use super::worker::MAX_DRAWS_WITHOUT_SAMPLE;
use super::*;
use crate::error::SkipReason;
use crate::shard_spec::ShardSource;
use crate::tar_reader::RawSample;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

fn raw(members: &[(&str, &[u8])]) -> RawSample {
    RawSample {
        key: "k".into(),
        shard: PathBuf::from("s.tar"),
        members: members
            .iter()
            .map(|(ext, data)| (ext.to_string(), data.to_vec()))
            .collect::<BTreeMap<_, _>>(),
    }
}

#[test]
fn txt_captions_are_trimmed_lines() {
    let sample = raw(&[("txt", b"  a cat \n\n a dog\r\n")]);
    assert_eq!(captions_of(&sample, &CaptionSource::Txt).unwrap(), ["a cat", "a dog"]);
}

#[test]
fn caption_problems_have_reasons() {
    let txt = CaptionSource::Txt;
    assert_eq!(captions_of(&raw(&[]), &txt), Err(SkipReason::MissingCaption));
    assert_eq!(
        captions_of(&raw(&[("txt", b" \n ")]), &txt),
        Err(SkipReason::MissingCaption)
    );
    assert_eq!(
        captions_of(&raw(&[("txt", &[0xff, 0xfe, b'a'])]), &txt),
        Err(SkipReason::InvalidCaption)
    );
    let json = CaptionSource::Json("caption".into());
    assert_eq!(
        captions_of(&raw(&[("json", br#"{"caption": " hi "}"#)]), &json).unwrap(),
        ["hi"]
    );
    assert_eq!(
        captions_of(&raw(&[("json", br#"{"caption": ["a", "b"]}"#)]), &json).unwrap(),
        ["a", "b"]
    );
    assert_eq!(
        captions_of(&raw(&[("json", br#"{"other": 1}"#)]), &json),
        Err(SkipReason::MissingCaption)
    );
    assert_eq!(
        captions_of(&raw(&[("json", b"{not json")]), &json),
        Err(SkipReason::InvalidCaption)
    );
}

#[test]
fn labels_parse_or_are_invalid() {
    assert_eq!(label_of(&raw(&[])), Ok(None));
    assert_eq!(label_of(&raw(&[("cls", b" 7\n")])), Ok(Some(7)));
    assert_eq!(label_of(&raw(&[("cls", b"seven")])), Err(SkipReason::InvalidLabel));
}

#[test]
fn seeds_differ_by_part() {
    assert_ne!(derive_seed(&[0, 1, 0]), derive_seed(&[0, 1, 1]));
    assert_ne!(derive_seed(&[0, 1]), derive_seed(&[1, 0]));
    assert_eq!(derive_seed(&[5, 2, 3]), derive_seed(&[5, 2, 3]));
}

#[test]
fn shards_are_dealt_round_robin() {
    let shards: Vec<PathBuf> = (0..5).map(|i| PathBuf::from(format!("{i}.tar"))).collect();
    let cfg = LoaderConfig::new(shards.clone(), false);
    assert_eq!(
        shards_for_thread(&cfg, 2, 0, 0),
        [shards[0].clone(), shards[2].clone(), shards[4].clone()]
    );
    assert_eq!(shards_for_thread(&cfg, 2, 1, 0), [shards[1].clone(), shards[3].clone()]);
    // Train mode: each epoch is a permutation, and the threads still partition it.
    let cfg = LoaderConfig::new(shards.clone(), true);
    for epoch in 0..3 {
        let mut all = shards_for_thread(&cfg, 2, 0, epoch);
        all.extend(shards_for_thread(&cfg, 2, 1, epoch));
        all.sort();
        assert_eq!(all, shards);
    }
}

#[test]
fn config_errors_name_the_field() {
    let mut cfg = LoaderConfig::new(vec![PathBuf::from("a.tar")], true);
    cfg.batch_size = 0;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("batch_size"), "{err}");
    assert!(LoaderConfig::new(vec![], false).validate().is_err());
}

/// A small PNG whose pixels and size depend on `seed`, so crops and keys are distinct.
fn png(seed: u32) -> Vec<u8> {
    let (width, height) = (12 + seed % 5, 10 + seed % 3);
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 7 + seed * 31) as u8,
            (y * 13 + seed * 17) as u8,
            ((x + y) * 5 + seed) as u8,
        ])
    });
    let mut out = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// What is wrong with a test sample.
#[derive(Clone, Copy, PartialEq)]
enum Flaw {
    UndecodableImage,
    NoCaption,
}

/// `shards` tar files of `per_shard` png+txt samples in `dir`; `flaws` lists
/// (shard, index, flaw) for the bad ones.
fn write_shards(dir: &Path, shards: usize, per_shard: usize, flaws: &[(usize, usize, Flaw)]) -> Vec<PathBuf> {
    write_named_shards(dir, "s", shards, per_shard, flaws)
}

/// As [`write_shards`], keys `{prefix}{shard}/{index}`, so samples tell their source.
fn write_named_shards(
    dir: &Path,
    prefix: &str,
    shards: usize,
    per_shard: usize,
    flaws: &[(usize, usize, Flaw)],
) -> Vec<PathBuf> {
    (0..shards)
        .map(|shard| {
            let mut builder = tar::Builder::new(Vec::new());
            for index in 0..per_shard {
                let flaw = flaws
                    .iter()
                    .find(|(s, i, _)| (*s, *i) == (shard, index))
                    .map(|(_, _, flaw)| *flaw);
                let key = format!("{prefix}{shard}/{index:04}");
                let image = match flaw {
                    Some(Flaw::UndecodableImage) => b"not a png at all".to_vec(),
                    _ => png((shard * per_shard + index) as u32),
                };
                let caption = format!("sample {index} of shard {shard}");
                let mut members: Vec<(String, &[u8])> = vec![(format!("{key}.png"), &image)];
                if flaw != Some(Flaw::NoCaption) {
                    members.push((format!("{key}.txt"), caption.as_bytes()));
                }
                for (name, data) in members {
                    let mut header = tar::Header::new_gnu();
                    header.set_size(data.len() as u64);
                    header.set_mode(0o644);
                    builder.append_data(&mut header, name, data).unwrap();
                }
            }
            let path = dir.join(format!("{shard:05}.tar"));
            std::fs::write(&path, builder.into_inner().unwrap()).unwrap();
            path
        })
        .collect()
}

/// Two threads, batches of 3 of 8-pixel images, 16-token captions, a shuffle buffer of 5,
/// over [`flawed_shards`] in `dir`.
fn small_flawed_config(dir: &Path, train: bool, seed: u64) -> LoaderConfig {
    let mut cfg = LoaderConfig::new(flawed_shards(dir), train);
    cfg.batch_size = 3;
    cfg.threads = 2;
    cfg.image_size = 8;
    cfg.context_length = 16;
    cfg.seed = seed;
    cfg.shuffle_buffer = 5;
    cfg
}

fn flawed_shards(dir: &Path) -> Vec<PathBuf> {
    write_shards(
        dir,
        5,
        7,
        &[
            (1, 2, Flaw::UndecodableImage),
            (3, 5, Flaw::UndecodableImage),
            (4, 0, Flaw::UndecodableImage),
            (2, 3, Flaw::NoCaption),
        ],
    )
}

/// The first `n` batches of `loader` and its state before each and after the last.
fn run_recording(mut loader: Loader, n: usize) -> (Vec<Batch>, Vec<LoaderState>) {
    let mut states = vec![loader.state()];
    let mut batches = Vec::new();
    for _ in 0..n {
        let Some(batch) = loader.next_batch() else { break };
        batches.push(batch);
        states.push(loader.state());
    }
    (batches, states)
}

/// For every cut k: the state after k batches survives JSON, and a loader resumed from it
/// yields batches k.. exactly, ending in the same state.
fn assert_resume_at_every_cut(cfg: &LoaderConfig, batches: &[Batch], states: &[LoaderState]) {
    let n = batches.len();
    for k in 0..=n {
        let json = serde_json::to_string(&states[k]).unwrap();
        let state: LoaderState = serde_json::from_str(&json).unwrap();
        assert_eq!(state, states[k], "cut {k}: state changed through JSON");
        let resumed = Loader::resume(cfg.clone(), &state).unwrap();
        let (rest, rest_states) = run_recording(resumed, n - k);
        assert_eq!(rest.len(), n - k, "cut {k}: resumed loader ended early");
        for (i, (got, want)) in rest.iter().zip(&batches[k..]).enumerate() {
            assert_eq!(got.keys, want.keys, "cut {k}: keys of batch {} differ", k + i);
            assert!(got == want, "cut {k}: batch {} differs beyond its keys", k + i);
        }
        assert_eq!(rest_states.last(), states.last(), "cut {k}: final state differs");
    }
}

#[test]
fn train_resume_at_every_cut_gives_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_flawed_config(dir.path(), true, 11);
    let n = 16;
    let (batches, states) = run_recording(Loader::new(cfg.clone()).unwrap(), n);
    assert_eq!(batches.len(), n);
    // The run crosses into the second epoch and met every flaw.
    assert_eq!(batches[0].epoch, 0);
    assert_eq!(batches[n - 1].epoch, 1);
    let skips = states[n].skip_counts().unwrap();
    assert!(skips.get(SkipReason::UndecodableImage) >= 3, "{skips}");
    assert!(skips.get(SkipReason::MissingCaption) >= 1, "{skips}");
    // Shuffled across shards: keys of one batch come from more than one shard somewhere.
    assert!(batches.iter().any(|b| b.keys.iter().any(|k| k[..2] != b.keys[0][..2])));
    assert_resume_at_every_cut(&cfg, &batches, &states);
}

/// The normalised value of every level of u8 CHW images, as the f32 mode computes it.
fn normalised(images_u8: &[u8], image_size: u32) -> Vec<f32> {
    let plane = image_size as usize * image_size as usize;
    images_u8
        .iter()
        .enumerate()
        .map(|(i, &v)| crate::chw::normalized_level(i / plane % 3, v))
        .collect()
}

#[test]
fn raw_u8_batches_are_the_f32_batches_before_normalisation() {
    let dir = tempfile::tempdir().unwrap();
    for train in [true, false] {
        let cfg = small_flawed_config(dir.path(), train, 4);
        let n = 14;
        let (expected, states) = run_recording(Loader::new(cfg.clone()).unwrap(), n);
        let mut raw_cfg = cfg.clone();
        raw_cfg.pixel_output = PixelOutput::RawU8;
        // Batches dropped as read, so the u8 buffers are recycled with stale values.
        let mut raw_loader = Loader::new(raw_cfg.clone()).unwrap();
        let mut compared = 0;
        for want in &expected {
            let got = raw_loader.next_batch().unwrap();
            assert_eq!(got.keys, want.keys);
            assert_eq!(got.tokens, want.tokens);
            assert_eq!(got.epoch, want.epoch);
            assert!(got.images.is_empty() && want.images_u8.is_empty());
            assert_eq!(got.images_u8.len(), want.images.len());
            // Computed as the f32 mode's table is: equal to the bit.
            assert!(normalised(&got.images_u8, cfg.image_size) == *want.images);
            compared += 1;
        }
        assert!(raw_loader.next_batch().is_none() || train);
        assert!(compared >= 10, "train {train}: {compared} batches");
        assert!(raw_loader.batch_buffers_allocated() <= 3 * 2 + 2);
        // The pixel type does not move the position: an f32 state resumes in u8 mode.
        let cut = compared / 2;
        let mut resumed = Loader::resume(raw_cfg, &states[cut]).unwrap();
        let batch = resumed.next_batch().unwrap();
        assert_eq!(batch.keys, expected[cut].keys);
        assert!(normalised(&batch.images_u8, cfg.image_size) == *expected[cut].images);
    }
}

#[test]
fn recycled_batch_buffers_give_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_flawed_config(dir.path(), true, 4);
    let n = 40;
    // Every batch kept alive: no buffer can come back, each batch has its own.
    let mut holding = Loader::new(cfg.clone()).unwrap();
    let kept: Vec<Batch> = holding.by_ref().take(n).collect();
    assert!(holding.batch_buffers_allocated() >= n as u64);
    // Each batch dropped once read (a copy kept): the buffers go round, holding stale
    // values of earlier batches (and of skipped samples) that must all be overwritten.
    let mut recycling = Loader::new(cfg.clone()).unwrap();
    let copies: Vec<Batch> = (0..n).map(|_| recycling.next_batch().unwrap().clone()).collect();
    assert!(copies == kept, "recycled buffers changed the batches");
    let allocated = recycling.batch_buffers_allocated();
    assert!(allocated <= 3 * 2 + 2, "{allocated} buffers for {n} batches");
    // Eval mode ends each thread with a partial batch: shorter, then reused at full size.
    cfg.train = false;
    cfg.drop_last = false;
    let kept: Vec<Batch> = Loader::new(cfg.clone()).unwrap().collect();
    let mut recycling = Loader::new(cfg).unwrap();
    let mut copies = Vec::new();
    while let Some(batch) = recycling.next_batch() {
        // The copy belongs to no loader; `batch` goes back when this iteration ends.
        copies.push(batch.clone());
    }
    assert!(copies == kept);
    assert!(kept.iter().any(|b| b.len() < 3));
}

#[test]
fn eval_resume_at_every_cut_gives_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = LoaderConfig::new(flawed_shards(dir.path()), false);
    cfg.batch_size = 4;
    cfg.threads = 2;
    cfg.image_size = 8;
    cfg.context_length = 0;
    let (batches, states) = run_recording(Loader::new(cfg.clone()).unwrap(), usize::MAX);
    // 35 samples, 4 skipped, each thread's last batch partial.
    assert_eq!(batches.iter().map(Batch::len).sum::<usize>(), 31);
    assert_resume_at_every_cut(&cfg, &batches, &states);
    // After the pass, a resumed loader is done at once.
    let mut done = Loader::resume(cfg.clone(), &states[batches.len()]).unwrap();
    assert!(done.next_batch().is_none());
    assert_eq!(done.skip_counts(), &states[batches.len()].skip_counts().unwrap());
}

#[test]
fn resume_rejects_a_state_of_another_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = LoaderConfig::new(flawed_shards(dir.path()), true);
    cfg.batch_size = 3;
    cfg.threads = 2;
    cfg.image_size = 8;
    cfg.context_length = 0;
    let mut loader = Loader::new(cfg.clone()).unwrap();
    loader.next_batch().unwrap();
    let state = loader.state();
    drop(loader);
    let error_of = |change: &dyn Fn(&mut LoaderConfig)| {
        let mut other = cfg.clone();
        change(&mut other);
        match Loader::resume(other, &state) {
            Ok(_) => panic!("resume accepted a different config"),
            Err(e) => e.to_string(),
        }
    };
    let err = error_of(&|c| {
        c.shards.pop();
    });
    assert!(err.contains("shards"), "{err}");
    let err = error_of(&|c| c.shards.swap(0, 1));
    assert!(err.contains("shards"), "{err}");
    let err = error_of(&|c| c.threads = 1);
    assert!(err.contains("threads"), "{err}");
    let err = error_of(&|c| c.batch_size = 4);
    assert!(err.contains("batch_size"), "{err}");
    let err = error_of(&|c| c.seed = 12);
    assert!(err.contains("seed"), "{err}");
    // The output size does not move the position.
    let mut bigger = cfg.clone();
    bigger.image_size = 16;
    let batch = Loader::resume(bigger, &state).unwrap().next_batch().unwrap();
    assert_eq!(batch.images.len(), 3 * 3 * 16 * 16);
}

#[test]
fn resuming_late_in_a_big_shard_decodes_no_skipped_sample() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = LoaderConfig::new(write_shards(dir.path(), 1, 2000, &[]), true);
    cfg.batch_size = 4;
    cfg.threads = 1;
    cfg.image_size = 8;
    cfg.context_length = 0;
    cfg.shuffle_buffer = 64;
    let cut = 400; // 1,600 samples into the 2,000-sample shard
    let started = std::time::Instant::now();
    let mut loader = Loader::new(cfg.clone()).unwrap();
    for _ in 0..cut {
        loader.next_batch().unwrap();
    }
    let state = loader.state();
    let expected = loader.next_batch().unwrap();
    let uninterrupted = started.elapsed();
    let replayed = loader.decode_attempts();
    drop(loader);

    let started = std::time::Instant::now();
    let mut resumed = Loader::resume(cfg, &state).unwrap();
    let batch = resumed.next_batch().unwrap();
    let resume_time = started.elapsed();
    assert_eq!(batch, expected);
    // The first batch, at most two queued and one being built: nothing from before the cut.
    let decoded = resumed.decode_attempts();
    assert!(decoded <= 4 * 4, "resume decoded {decoded} samples");
    eprintln!(
        "cut after {cut} batches: uninterrupted {uninterrupted:?} ({replayed} decodes), \
         resume + first batch {resume_time:?} ({decoded} decodes)"
    );
}

#[test]
fn virtual_epoch_batches_round_up_over_the_global_batch() {
    assert_eq!(virtual_epoch_batches(100, 10, 2), 5);
    assert_eq!(virtual_epoch_batches(101, 10, 2), 6);
    assert_eq!(virtual_epoch_batches(1, 10, 4), 1);
    assert_eq!(virtual_epoch_batches(0, 10, 4), 1);
}

fn source(shards: &[&str], weight: f64) -> ShardSource {
    ShardSource {
        shards: shards.iter().map(PathBuf::from).collect(),
        weight,
    }
}

#[test]
fn resampled_draws_follow_the_weights() {
    // Per-shard weights 1, 1 (source a), 3 (source b), 0 (source c): OpenCLIP gives every
    // shard of a source the source's factor.
    let sources = [source(&["a0", "a1"], 1.0), source(&["b0"], 3.0), source(&["c0"], 0.0)];
    let mut cfg = LoaderConfig::resampled(&sources, 10);
    cfg.seed = 3;
    let Sampling::Resampled { shard_weights, .. } = cfg.sampling.clone() else {
        panic!("not resampled")
    };
    assert_eq!(shard_weights, [1.0, 1.0, 3.0, 0.0]);
    let draws = ShardDraws::new(&cfg, &shard_weights, 0, 0);
    let n = 50_000;
    let mut counts = [0u64; 4];
    for i in 0..n {
        counts[draws.shard(i)] += 1;
    }
    assert_eq!(counts[3], 0, "a zero-weight shard was drawn: {counts:?}");
    // Pearson chi-square over the three drawable shards (2 degrees of freedom): 13.8 is
    // the 0.1% critical value.
    let expected = [0.2, 0.2, 0.6].map(|p| p * n as f64);
    let chi2: f64 = (0..3)
        .map(|i| (counts[i] as f64 - expected[i]).powi(2) / expected[i])
        .sum();
    assert!(
        chi2 < 13.8,
        "draw counts {counts:?} do not follow weights 1:1:3 (chi2 {chi2:.1})"
    );
    // Draws are random access: draw i is the same computed alone.
    assert_eq!(draws.shard(12_345), draws.shard(12_345));
    // Each (epoch, thread) has its own stream.
    let first = |epoch, thread| {
        let draws = ShardDraws::new(&cfg, &shard_weights, epoch, thread);
        (0..40).map(|i| draws.shard(i)).collect::<Vec<_>>()
    };
    assert_ne!(first(0, 0), first(0, 1));
    assert_ne!(first(0, 0), first(1, 0));
    assert_eq!(first(2, 1), first(2, 1));
}

#[test]
fn resampled_config_errors_name_the_field() {
    let sources = [source(&["a0", "a1"], 1.0)];
    let error_of = |change: &dyn Fn(&mut LoaderConfig)| {
        let mut cfg = LoaderConfig::resampled(&sources, 4);
        assert!(cfg.validate().is_ok());
        change(&mut cfg);
        cfg.validate().unwrap_err().to_string()
    };
    assert!(error_of(&|c| c.train = false).contains("sampling"));
    let err = error_of(&|c| {
        c.sampling = Sampling::Resampled {
            shard_weights: vec![],
            epoch_batches: 0,
        }
    });
    assert!(err.contains("epoch_batches"), "{err}");
    for weights in [vec![1.0], vec![1.0, f64::NAN], vec![0.0, 0.0], vec![1.0, -1.0]] {
        let err = error_of(&|c| {
            c.sampling = Sampling::Resampled {
                shard_weights: weights.clone(),
                epoch_batches: 4,
            }
        });
        assert!(err.contains("shard_weights"), "{weights:?}: {err}");
    }
}

/// Two weighted sources (weights 1 and 3) with flaws, resampled, 2 threads.
fn two_weighted_sources(root: &Path, epoch_batches: u64) -> LoaderConfig {
    let a = root.join("a");
    let b = root.join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let sources = [
        ShardSource {
            shards: write_named_shards(&a, "a", 2, 5, &[(0, 1, Flaw::UndecodableImage)]),
            weight: 1.0,
        },
        ShardSource {
            shards: write_named_shards(&b, "b", 3, 4, &[(2, 3, Flaw::NoCaption)]),
            weight: 3.0,
        },
    ];
    let mut cfg = LoaderConfig::resampled(&sources, epoch_batches);
    cfg.batch_size = 3;
    cfg.threads = 2;
    cfg.image_size = 8;
    cfg.context_length = 16;
    cfg.seed = 5;
    cfg.shuffle_buffer = 5;
    cfg
}

#[test]
fn resampled_resume_at_every_cut_gives_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    // 5 batches per virtual epoch: 3 per thread (rounded up), so 6 in all.
    let cfg = two_weighted_sources(dir.path(), 5);
    let n = 20;
    let (batches, states) = run_recording(Loader::new(cfg.clone()).unwrap(), n);
    assert_eq!(batches.len(), n);
    let epochs: Vec<u64> = batches.iter().map(|b| b.epoch).collect();
    let expected: Vec<u64> = (0..n as u64).map(|i| i / 6).collect();
    assert_eq!(epochs, expected, "virtual epochs of 6 batches");
    // 60 samples from 7 shards of 4-5: shards were drawn again.
    let keys: Vec<&String> = batches.iter().flat_map(|b| &b.keys).collect();
    let distinct: HashSet<&&String> = keys.iter().collect();
    assert!(distinct.len() < keys.len(), "no sample was read twice");
    assert!(keys.iter().any(|k| k.starts_with('a')) && keys.iter().any(|k| k.starts_with('b')));
    // The same config gives the same batches.
    let (again, _) = run_recording(Loader::new(cfg.clone()).unwrap(), n);
    assert!(again == batches, "two loaders with the same config differ");
    // Another seed (another rank) draws another stream.
    let mut other_rank = cfg.clone();
    other_rank.seed = 6;
    let (other, _) = run_recording(Loader::new(other_rank).unwrap(), 4);
    assert_ne!(
        other.iter().map(|b| &b.keys).collect::<Vec<_>>(),
        batches[..4].iter().map(|b| &b.keys).collect::<Vec<_>>()
    );
    assert_resume_at_every_cut(&cfg, &batches, &states);
}

#[test]
fn resampled_sources_are_read_in_proportion_to_their_weight() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = two_weighted_sources(dir.path(), 1_000);
    cfg.batch_size = 8;
    cfg.image_size = 4;
    cfg.context_length = 0;
    cfg.shuffle_buffer = 0;
    let batches: Vec<Batch> = Loader::new(cfg).unwrap().take(150).collect();
    let keys: Vec<&String> = batches.iter().flat_map(|b| &b.keys).collect();
    let from_b = keys.iter().filter(|k| k.starts_with('b')).count() as f64 / keys.len() as f64;
    // Draws: a-shards 1/11 each, b-shards 3/11 each. Samples per draw: a 5 (one undecodable
    // in a0), b 4 (one without caption in b2), so the b share of samples is
    // (3·4 + 3·4 + 3·3) / (4 + 5 + 33) = 33/42 ≈ 0.786.
    let expected = 33.0 / 42.0;
    assert!(
        (from_b - expected).abs() < 0.06,
        "share of source b {from_b:.3}, expected {expected:.3}"
    );
}

#[test]
fn resampled_threads_need_not_have_a_shard_each() {
    let dir = tempfile::tempdir().unwrap();
    let sources = [ShardSource {
        shards: write_shards(dir.path(), 1, 6, &[]),
        weight: 1.0,
    }];
    let mut cfg = LoaderConfig::resampled(&sources, 3);
    cfg.batch_size = 2;
    cfg.threads = 3;
    cfg.image_size = 4;
    cfg.context_length = 0;
    cfg.shuffle_buffer = 4;
    let batches: Vec<Batch> = Loader::new(cfg).unwrap().take(6).collect();
    assert_eq!(batches.len(), 6);
    // Three threads, each its own shuffle of the one shard.
    assert!(batches[0].keys != batches[1].keys || batches[1].keys != batches[2].keys);
    assert_eq!(batches.iter().map(|b| b.epoch).collect::<Vec<_>>(), [0, 0, 0, 1, 1, 1]);
}

#[test]
fn resampled_shards_without_a_usable_sample_end_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let flaws: Vec<_> = (0..3).map(|i| (0, i, Flaw::UndecodableImage)).collect();
    let sources = [ShardSource {
        shards: write_shards(dir.path(), 1, 3, &flaws),
        weight: 1.0,
    }];
    let mut cfg = LoaderConfig::resampled(&sources, 3);
    cfg.batch_size = 2;
    cfg.threads = 1;
    cfg.image_size = 4;
    cfg.context_length = 0;
    cfg.shuffle_buffer = 0; // decode as read, so every draw's samples are counted
    let mut loader = Loader::new(cfg).unwrap();
    assert!(loader.next_batch().is_none());
    let skipped = loader.skip_counts().get(SkipReason::UndecodableImage);
    assert_eq!(skipped, 3 * (MAX_DRAWS_WITHOUT_SAMPLE as u64 + 1));
}

#[test]
fn resume_rejects_a_state_of_another_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_weighted_sources(dir.path(), 5);
    let mut loader = Loader::new(cfg.clone()).unwrap();
    loader.next_batch().unwrap();
    let state = loader.state();
    drop(loader);
    let error_of = |sampling: Sampling| {
        let mut other = cfg.clone();
        other.sampling = sampling;
        match Loader::resume(other, &state) {
            Ok(_) => panic!("resume accepted a different sampling"),
            Err(e) => e.to_string(),
        }
    };
    let err = error_of(Sampling::Resampled {
        shard_weights: vec![],
        epoch_batches: 6,
    });
    assert!(err.contains("epoch_batches"), "{err}");
    let err = error_of(Sampling::Resampled {
        shard_weights: vec![],
        epoch_batches: 5,
    });
    assert!(err.contains("shard_weights"), "{err}");
    let err = error_of(Sampling::EveryShard);
    assert!(err.contains("epoch_batches"), "{err}");
}

/// `cfg` as rank `rank` of `world_size` reading a canonical stream of `partitions`
/// partitions, with `global_batch / world_size` samples per batch and `threads` threads.
fn partitioned(
    cfg: &LoaderConfig,
    partitions: usize,
    rank: usize,
    world_size: usize,
    global_batch: usize,
    threads: usize,
) -> LoaderConfig {
    let mut cfg = cfg.clone();
    cfg.partitions = Some(Partitions {
        count: partitions,
        rank,
        world_size,
    });
    cfg.batch_size = global_batch / world_size;
    cfg.threads = threads;
    cfg
}

/// The first `n` global batches of a canonical stream read by `world_size` loaders: each
/// rank's batches, and each rank's state after every batch.
fn global_batches(
    cfg: &LoaderConfig,
    partitions: usize,
    world_size: usize,
    global_batch: usize,
    threads: usize,
    n: usize,
    from: Option<&LoaderState>,
) -> (Vec<Vec<Batch>>, Vec<Vec<LoaderState>>) {
    let mut per_rank = Vec::new();
    let mut states = Vec::new();
    for rank in 0..world_size {
        let cfg = partitioned(cfg, partitions, rank, world_size, global_batch, threads);
        let loader = match from {
            Some(state) => Loader::resume(cfg, state).unwrap(),
            None => Loader::new(cfg).unwrap(),
        };
        let (batches, rank_states) = run_recording(loader, n);
        assert_eq!(batches.len(), n, "rank {rank} of {world_size} ended early");
        per_rank.push(batches);
        states.push(rank_states);
    }
    (per_rank, states)
}

/// Rank batches side by side, in rank order: (keys, images, tokens) of the global batch.
fn joined(per_rank: &[Vec<Batch>], step: usize) -> (Vec<String>, Vec<f32>, Vec<i64>) {
    let mut joined = (Vec::new(), Vec::new(), Vec::new());
    for batches in per_rank {
        let batch = &batches[step];
        joined.0.extend(batch.keys.iter().cloned());
        joined.1.extend(batch.images.iter().copied());
        joined.2.extend(batch.tokens.iter().copied());
    }
    joined
}

fn assert_same_global_batches(cfg: &LoaderConfig, partitions: usize, global_batch: usize, n: usize) {
    let (one, one_states) = global_batches(cfg, partitions, 1, global_batch, 1, n, None);
    for (world_size, threads) in [(2, 2), (4, 3), (partitions, 1)] {
        let (many, many_states) = global_batches(cfg, partitions, world_size, global_batch, threads, n, None);
        for step in 0..n {
            let (keys, images, tokens) = joined(&many, step);
            assert_eq!(
                keys, one[0][step].keys,
                "{world_size} workers: keys of global batch {step}"
            );
            assert!(
                images == *one[0][step].images,
                "{world_size} workers: images of global batch {step}"
            );
            assert_eq!(
                tokens, one[0][step].tokens,
                "{world_size} workers: tokens of global batch {step}"
            );
            // Skips are per partition, so the ranks' counts add up to one loader's.
            let mut skips = SkipCounts::new();
            for rank_states in &many_states {
                skips.merge(&rank_states[step + 1].skip_counts().unwrap());
            }
            assert_eq!(
                skips,
                one_states[0][step + 1].skip_counts().unwrap(),
                "skips after global batch {step}"
            );
        }
    }
}

#[test]
fn partitioned_global_batches_do_not_depend_on_workers_or_threads() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_flawed_config(dir.path(), true, 11);
    // 4 partitions over 5 shards of 7 samples with flaws: 16 global batches of 8 cross epochs.
    assert_same_global_batches(&cfg, 4, 8, 16);
    let (one, states) = global_batches(&cfg, 4, 1, 8, 1, 16, None);
    assert!(one[0][15].epoch >= 1, "the run crosses an epoch boundary");
    let skips = states[0][16].skip_counts().unwrap();
    assert!(skips.get(SkipReason::UndecodableImage) >= 3, "{skips}");
    // Negative control: per-thread streams (no partitions) with the same batch size give
    // other global batches for 2 workers (each rank its share of the shards).
    let mut rank_batches = Vec::new();
    for rank in 0..2 {
        let mut rank_cfg = cfg.clone();
        rank_cfg.shards = cfg.shards.iter().skip(rank).step_by(2).cloned().collect();
        rank_cfg.batch_size = 4;
        rank_batches.push(run_recording(Loader::new(rank_cfg).unwrap(), 4).0);
    }
    let differs = (0..4).any(|step| joined(&rank_batches, step).0 != one[0][step].keys);
    assert!(differs, "per-rank streams should not match the canonical stream");
}

#[test]
fn partitioned_resampled_and_u8_batches_do_not_depend_on_workers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_weighted_sources(dir.path(), 3);
    assert_same_global_batches(&cfg, 4, 8, 9);
    let mut u8_cfg = small_flawed_config(dir.path(), true, 3);
    u8_cfg.pixel_output = PixelOutput::RawU8;
    let (one, _) = global_batches(&u8_cfg, 4, 1, 8, 2, 6, None);
    let (two, _) = global_batches(&u8_cfg, 4, 2, 8, 1, 6, None);
    for step in 0..6 {
        let joined_u8: Vec<u8> = two.iter().flat_map(|b| b[step].images_u8.iter().copied()).collect();
        assert!(joined_u8 == *one[0][step].images_u8, "u8 global batch {step}");
        assert!(one[0][step].images.is_empty());
    }
}

#[test]
fn partitioned_state_resumes_on_another_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_flawed_config(dir.path(), true, 7);
    let n = 12;
    let (one, one_states) = global_batches(&cfg, 4, 1, 8, 2, n, None);
    // Every cut of a 1-worker run resumes exactly (its state is the whole stream's).
    let cfg1 = partitioned(&cfg, 4, 0, 1, 8, 2);
    assert_resume_at_every_cut(&cfg1, &one[0], &one_states[0]);
    for (saved_world, resumed_world, cut) in [(4, 2, 5), (2, 4, 3), (4, 1, 7), (1, 2, 9)] {
        let (_, saved_states) = global_batches(&cfg, 4, saved_world, 8, 1, cut, None);
        let rank_states: Vec<LoaderState> = saved_states.iter().map(|states| states[cut].clone()).collect();
        let json = serde_json::to_string(&rank_states).unwrap();
        let rank_states: Vec<LoaderState> = serde_json::from_str(&json).unwrap();
        let merged = LoaderState::merge(&rank_states).unwrap();
        assert_eq!(merged.partition_count(), Some(4));
        assert_eq!(merged.skip_counts().unwrap(), one_states[0][cut].skip_counts().unwrap());
        let (rest, _) = global_batches(&cfg, 4, resumed_world, 8, 2, n - cut, Some(&merged));
        for step in 0..n - cut {
            let (keys, images, _) = joined(&rest, step);
            assert_eq!(
                keys,
                one[0][cut + step].keys,
                "{saved_world}→{resumed_world} at {cut}: keys of batch {}",
                cut + step
            );
            assert!(
                images == *one[0][cut + step].images,
                "{saved_world}→{resumed_world}: images of batch {}",
                cut + step
            );
        }
    }
}

#[test]
fn partition_errors_name_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_flawed_config(dir.path(), true, 1);
    let err = |cfg: LoaderConfig| Loader::new(cfg).err().expect("an error").to_string();
    let e = err(partitioned(&cfg, 4, 0, 3, 12, 1));
    assert!(e.contains("partitions") && e.contains('4') && e.contains('3'), "{e}");
    let e = err(partitioned(&cfg, 4, 0, 2, 6, 1));
    assert!(e.contains("batch_size") && e.contains('3'), "{e}");
    let e = err(partitioned(&cfg, 8, 0, 1, 8, 1));
    assert!(e.contains("partitions") && e.contains("5 shard"), "{e}");
    let mut eval = partitioned(&cfg, 4, 0, 1, 8, 1);
    eval.train = false;
    assert!(err(eval).contains("partitions"));
    // States that do not cover the stream, or of per-thread streams, do not merge.
    let (_, states) = global_batches(&cfg, 4, 2, 8, 1, 2, None);
    let e = LoaderState::merge(&[states[1][2].clone()]).unwrap_err().to_string();
    assert!(e.contains("partition 0"), "{e}");
    let (_, plain) = run_recording(Loader::new(cfg.clone()).unwrap(), 1);
    assert!(LoaderState::merge(&plain[1..])
        .unwrap_err()
        .to_string()
        .contains("per-thread"));
    // Another global batch is refused, naming both.
    let merged = LoaderState::merge(&[states[0][2].clone(), states[1][2].clone()]).unwrap();
    let e = Loader::resume(partitioned(&cfg, 4, 0, 2, 16, 1), &merged)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("global batch of 8") && e.contains("global batch of 16"),
        "{e}"
    );
    // A per-thread state does not fit a canonical stream.
    let e = Loader::resume(partitioned(&cfg, 4, 0, 1, 8, 1), &plain[1])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("partitions"), "{e}");
}

/// Train mode over `shards`: 8-pixel images, 16-token captions, a shuffle buffer of 3.
fn tiny_train_config(shards: Vec<PathBuf>, seed: u64) -> LoaderConfig {
    let mut cfg = LoaderConfig::new(shards, true);
    cfg.image_size = 8;
    cfg.context_length = 16;
    cfg.shuffle_buffer = 3;
    cfg.seed = seed;
    cfg
}

#[test]
fn a_partition_whose_shard_is_all_bad_tries_its_next_epoch_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // 4 shards, one of them all undecodable, 4 partitions: every epoch one partition gets
    // the bad shard, reads nothing, and starts its next epoch with another shard.
    let flaws: Vec<(usize, usize, Flaw)> = (0..6).map(|i| (2, i, Flaw::UndecodableImage)).collect();
    let cfg = tiny_train_config(write_shards(dir.path(), 4, 6, &flaws), 4);
    assert_same_global_batches(&cfg, 4, 8, 12);
    let (one, states) = global_batches(&cfg, 4, 1, 8, 2, 12, None);
    assert!(one[0]
        .iter()
        .all(|batch| batch.keys.iter().all(|key| !key.starts_with("s2/"))));
    let skips = states[0][12].skip_counts().unwrap();
    assert!(skips.get(SkipReason::UndecodableImage) >= 6, "{skips}");
    // Without any usable sample the stream ends instead of spinning.
    let all_bad: Vec<(usize, usize, Flaw)> = (0..2)
        .flat_map(|s| (0..3).map(move |i| (s, i, Flaw::UndecodableImage)))
        .collect();
    std::fs::create_dir_all(dir.path().join("bad")).unwrap();
    let mut bad = LoaderConfig::new(write_shards(&dir.path().join("bad"), 2, 3, &all_bad), true);
    bad.image_size = 8;
    let mut loader = Loader::new(partitioned(&bad, 2, 0, 1, 2, 1)).unwrap();
    assert!(loader.next_batch().is_none());
}

#[test]
fn partitioned_pipe_and_multi_source_shards_do_not_depend_on_workers() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    // Two sources (as a `::` spec expands), the second read through `pipe:cat`.
    let mut shards = write_named_shards(&a, "a", 2, 5, &[(1, 2, Flaw::UndecodableImage)]);
    shards.extend(
        write_named_shards(&b, "b", 2, 6, &[])
            .into_iter()
            .map(|path| PathBuf::from(format!("pipe:cat {}", path.display()))),
    );
    let cfg = tiny_train_config(shards, 2);
    assert_same_global_batches(&cfg, 4, 8, 8);
    let (one, _) = global_batches(&cfg, 4, 1, 8, 1, 8, None);
    assert!(one
        .iter()
        .flatten()
        .any(|batch| batch.keys.iter().any(|k| k.starts_with('b'))));
    // A state of 2 workers resumes on 4 through the pipes (read again up to their offsets).
    let (_, states) = global_batches(&cfg, 4, 2, 8, 1, 3, None);
    let merged = LoaderState::merge(&[states[0][3].clone(), states[1][3].clone()]).unwrap();
    let (rest, _) = global_batches(&cfg, 4, 4, 8, 1, 5, Some(&merged));
    for step in 0..5 {
        assert_eq!(joined(&rest, step).0, one[0][3 + step].keys, "batch {}", 3 + step);
    }
}
