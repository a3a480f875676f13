//! Batches from shards on background threads, reproducibly.
//!
//! Shards are dealt round-robin to `threads` workers (in train mode after a per-epoch shuffle
//! seeded from (seed, epoch)). Each worker reads its shards in order, passes raw samples through
//! a shuffle buffer seeded from (seed, epoch, thread) (train mode only), decodes and transforms
//! them, and builds whole batches. The consumer takes one batch from each worker in turn, in a
//! fixed order, so the same config and seed give the same batches regardless of timing.
//! Channels are bounded (two batches per worker); dropping the [`Loader`] stops the workers.
use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, SkipCounts, SkipReason};
use crate::imaging::{decode_rgb, ImageTransform, DEFAULT_MAX_PIXELS};
use crate::tar_reader::{for_each_sample, RawSample, TarSkip};
use crate::tokenizer::Tokenizer;

/// Member extensions tried for the image, in order (open_clip's `jpg;png;jpeg;webp`).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "png", "jpeg", "webp"];

/// Where a sample's caption(s) come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptionSource {
    /// The `.txt` member; each non-empty line is one caption.
    Txt,
    /// A field of the `.json` member: a string, or a list of strings.
    Json(String),
}

/// What the loader reads and how it batches. Build with [`LoaderConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Shard files (see [`crate::expand_shards`]); pass only this rank's share.
    pub shards: Vec<PathBuf>,
    /// Samples per batch.
    pub batch_size: usize,
    /// Output image side length.
    pub image_size: u32,
    /// Train (random crop, shuffle, endless epochs) or eval (center crop, one pass in order).
    pub train: bool,
    /// Caption source.
    pub caption: CaptionSource,
    /// Token ids per caption; 0 = do not tokenize (`Batch::tokens` stays empty).
    pub context_length: usize,
    /// Decoding threads (capped at the number of shards).
    pub threads: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Shuffle buffer size in samples, train mode only; 0 or 1 = no shuffling.
    pub shuffle_buffer: usize,
    /// Drop each worker's last partial batch of an epoch.
    pub drop_last: bool,
    /// Images with more pixels are skipped as `image_too_large`.
    pub max_pixels: u64,
}

impl LoaderConfig {
    /// Defaults: batch 256, 224 px, `.txt` captions, context 77, 4 threads, seed 0;
    /// train mode shuffles with a 1000-sample buffer and drops the last partial batch,
    /// eval mode does neither.
    pub fn new(shards: Vec<PathBuf>, train: bool) -> Self {
        Self {
            shards,
            batch_size: 256,
            image_size: 224,
            train,
            caption: CaptionSource::Txt,
            context_length: 77,
            threads: 4,
            seed: 0,
            shuffle_buffer: if train { 1000 } else { 0 },
            drop_last: train,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }

    /// Check that the settings can work; the error names the bad field.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |field, reason: &str| {
            Err(DataError::BadConfig {
                field,
                reason: reason.to_string(),
            })
        };
        if self.shards.is_empty() {
            return bad("shards", "no shards");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.image_size == 0 {
            return bad("image_size", "must be at least 1");
        }
        if self.threads == 0 {
            return bad("threads", "must be at least 1");
        }
        if self.max_pixels == 0 {
            return bad("max_pixels", "must be at least 1");
        }
        if matches!(&self.caption, CaptionSource::Json(field) if field.is_empty()) {
            return bad("caption", "empty JSON field name");
        }
        Ok(())
    }
}

/// One batch: plain buffers, ready for `Tensor::from_slice(..).view(..)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `B × 3 × image_size × image_size`, contiguous CHW per image, CLIP-normalised.
    pub images: Vec<f32>,
    /// `B × context_length` token ids (empty when `context_length` is 0). Each row is the
    /// tokenized caption text: all captions joined by newlines, which the tokenizer's
    /// whitespace cleaning turns into spaces — open_clip's treatment of a `.txt`.
    pub tokens: Vec<i64>,
    /// All captions of each sample (several for retrieval eval sets).
    pub captions: Vec<Vec<String>>,
    /// Class label from the `.cls` member, if any.
    pub labels: Vec<Option<i64>>,
    /// Sample keys.
    pub keys: Vec<String>,
    /// The epoch the samples belong to (always 0 in eval mode).
    pub epoch: u64,
    /// Image side length.
    pub image_size: u32,
    /// Tokens per row.
    pub context_length: usize,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    /// True when the batch holds no samples (never returned by the loader).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A decoded, transformed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Key.
    pub key: String,
    /// `3 × size × size` normalised CHW.
    pub image: Vec<f32>,
    /// Captions (at least one).
    pub captions: Vec<String>,
    /// Class label, if the sample has a `.cls` member.
    pub label: Option<i64>,
}

/// The captions of `raw` from `source`: non-empty trimmed lines of `.txt`, or the JSON field
/// (a string, or a list of strings).
pub fn captions_of(raw: &RawSample, source: &CaptionSource) -> Result<Vec<String>, SkipReason> {
    let captions: Vec<String> = match source {
        CaptionSource::Txt => {
            let bytes = raw.members.get("txt").ok_or(SkipReason::MissingCaption)?;
            let text = std::str::from_utf8(bytes).map_err(|_| SkipReason::InvalidCaption)?;
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(str::to_string)
                .collect()
        }
        CaptionSource::Json(field) => {
            let bytes = raw.members.get("json").ok_or(SkipReason::MissingCaption)?;
            let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| SkipReason::InvalidCaption)?;
            match value.get(field) {
                None | Some(serde_json::Value::Null) => return Err(SkipReason::MissingCaption),
                Some(serde_json::Value::String(s)) => vec![s.trim().to_string()],
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .map(|item| item.as_str().map(|s| s.trim().to_string()))
                    .collect::<Option<Vec<String>>>()
                    .ok_or(SkipReason::InvalidCaption)?
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect(),
                Some(_) => return Err(SkipReason::InvalidCaption),
            }
        }
    };
    if captions.is_empty() || captions.iter().all(String::is_empty) {
        return Err(SkipReason::MissingCaption);
    }
    Ok(captions)
}

/// The integer class label of the `.cls` member, `None` without one.
pub fn label_of(raw: &RawSample) -> Result<Option<i64>, SkipReason> {
    let Some(bytes) = raw.members.get("cls") else {
        return Ok(None);
    };
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok())
        .map(Some)
        .ok_or(SkipReason::InvalidLabel)
}

/// Decode and transform one raw sample, or say why it is skipped.
pub fn decode_sample<R: Rng + ?Sized>(
    raw: &RawSample,
    caption: &CaptionSource,
    transform: &ImageTransform,
    max_pixels: u64,
    rng: &mut R,
) -> Result<Sample, SkipReason> {
    let captions = captions_of(raw, caption)?;
    let label = label_of(raw)?;
    let bytes = IMAGE_EXTENSIONS
        .iter()
        .find_map(|ext| raw.members.get(*ext))
        .ok_or(SkipReason::MissingImage)?;
    let rgb = decode_rgb(bytes, max_pixels).map_err(|e| e.reason)?;
    Ok(Sample {
        key: raw.key.clone(),
        image: transform.apply(&rgb, rng),
        captions,
        label,
    })
}

/// A 64-bit seed from several parts (splitmix64 over the parts), so nearby inputs give
/// unrelated streams.
fn derive_seed(parts: &[u64]) -> u64 {
    let mut state = 0x243F_6A88_85A3_08D3u64;
    for &part in parts {
        state ^= part;
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        state = z ^ (z >> 31);
    }
    state
}

// Distinct seed domains, so shard order, shuffle buffer and augmentation never share a stream.
const DOMAIN_SHARD_ORDER: u64 = 1;
const DOMAIN_SHUFFLE: u64 = 2;
const DOMAIN_AUGMENT: u64 = 3;

/// The shards worker `thread` of `threads` reads in `epoch`, in order.
fn shards_for_thread(cfg: &LoaderConfig, threads: usize, thread: usize, epoch: u64) -> Vec<PathBuf> {
    let mut order = cfg.shards.clone();
    if cfg.train {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(&[cfg.seed, DOMAIN_SHARD_ORDER, epoch]));
        order.shuffle(&mut rng);
    }
    order.into_iter().skip(thread).step_by(threads).collect()
}

/// What a worker sends: a batch plus the skips counted since its previous message, or its end.
enum Message {
    Batch(Batch, SkipCounts),
    Done(SkipCounts),
}

/// Batches from shards on background threads. Use it as an `Iterator<Item = Batch>` (or call
/// [`Loader::next_batch`]); [`Loader::skip_counts`] tells what was skipped so far.
///
/// Train mode never ends (unless no worker can produce a sample); eval mode ends after one
/// pass. Dropping the loader stops and joins its threads.
pub struct Loader {
    receivers: Vec<Option<Receiver<Message>>>,
    handles: Vec<Option<JoinHandle<()>>>,
    next_thread: usize,
    live: usize,
    stop: Arc<AtomicBool>,
    skips: SkipCounts,
}

impl Loader {
    /// Validate `cfg` and start the worker threads.
    pub fn new(cfg: LoaderConfig) -> Result<Self, DataError> {
        cfg.validate()?;
        let threads = cfg.threads.min(cfg.shards.len()).max(1);
        let tokenizer = (cfg.context_length > 0).then(|| Arc::new(Tokenizer::new()));
        let cfg = Arc::new(cfg);
        let stop = Arc::new(AtomicBool::new(false));
        let warned = Arc::new(Mutex::new(HashSet::new()));
        let mut receivers = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for thread in 0..threads {
            let (sender, receiver) = crossbeam_channel::bounded(2);
            let worker = Worker {
                cfg: Arc::clone(&cfg),
                tokenizer: tokenizer.clone(),
                thread,
                threads,
                sender,
                stop: Arc::clone(&stop),
                warned_shards: Arc::clone(&warned),
            };
            let handle = std::thread::Builder::new()
                .name(format!("loader-{thread}"))
                .spawn(move || worker.run())
                .map_err(|e| DataError::io("<loader thread>", e))?;
            receivers.push(Some(receiver));
            handles.push(Some(handle));
        }
        Ok(Self {
            receivers,
            handles,
            next_thread: 0,
            live: threads,
            stop,
            skips: SkipCounts::new(),
        })
    }

    /// The next batch, or `None` when every worker is done (eval pass finished).
    ///
    /// A worker that panicked (a bug, not bad data) re-raises its panic here.
    pub fn next_batch(&mut self) -> Option<Batch> {
        while self.live > 0 {
            let thread = self.next_thread;
            self.next_thread = (self.next_thread + 1) % self.receivers.len();
            let Some(receiver) = &self.receivers[thread] else {
                continue;
            };
            match receiver.recv() {
                Ok(Message::Batch(batch, skips)) => {
                    self.skips.merge(&skips);
                    return Some(batch);
                }
                Ok(Message::Done(skips)) => {
                    self.skips.merge(&skips);
                    self.finish_thread(thread);
                }
                Err(_) => self.finish_thread(thread),
            }
        }
        None
    }

    /// Skipped samples and shards by reason, over the batches returned so far
    /// (deterministic: counts travel with the batches).
    pub fn skip_counts(&self) -> &SkipCounts {
        &self.skips
    }

    fn finish_thread(&mut self, thread: usize) {
        self.receivers[thread] = None;
        self.live -= 1;
        if let Some(handle) = self.handles[thread].take() {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Iterator for Loader {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.next_batch()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers wakes workers blocked on a full channel.
        self.receivers.clear();
        for handle in self.handles.iter_mut().filter_map(Option::take) {
            let _ = handle.join();
        }
    }
}

/// One background thread: its shards → shuffle buffer → decode → batches.
struct Worker {
    cfg: Arc<LoaderConfig>,
    tokenizer: Option<Arc<Tokenizer>>,
    thread: usize,
    threads: usize,
    sender: Sender<Message>,
    stop: Arc<AtomicBool>,
    warned_shards: Arc<Mutex<HashSet<PathBuf>>>,
}

/// Per-epoch state of a worker.
struct EpochState {
    epoch: u64,
    shuffle_rng: ChaCha8Rng,
    augment_rng: ChaCha8Rng,
    buffer: Vec<RawSample>,
    pending: Vec<Sample>,
    skips: SkipCounts,
    samples: u64,
}

impl Worker {
    fn run(self) {
        let mut skips_left = SkipCounts::new();
        for epoch in 0.. {
            let shards = shards_for_thread(&self.cfg, self.threads, self.thread, epoch);
            let seed = |domain| derive_seed(&[self.cfg.seed, domain, epoch, self.thread as u64]);
            let mut state = EpochState {
                epoch,
                shuffle_rng: ChaCha8Rng::seed_from_u64(seed(DOMAIN_SHUFFLE)),
                augment_rng: ChaCha8Rng::seed_from_u64(seed(DOMAIN_AUGMENT)),
                buffer: Vec::new(),
                pending: Vec::new(),
                skips: std::mem::take(&mut skips_left),
                samples: 0,
            };
            if self.run_epoch(&shards, &mut state).is_break() {
                return;
            }
            skips_left = std::mem::take(&mut state.skips);
            if !self.cfg.train || shards.is_empty() {
                break;
            }
            if state.samples == 0 {
                tracing::warn!(
                    thread = self.thread,
                    "loader thread stops: no usable sample in its {} shard(s)",
                    shards.len()
                );
                break;
            }
        }
        let _ = self.sender.send(Message::Done(skips_left));
    }

    /// Read, shuffle, decode and send one epoch; `Break` when the loader is gone.
    fn run_epoch(&self, shards: &[PathBuf], state: &mut EpochState) -> ControlFlow<()> {
        let buffer_size = if self.cfg.train { self.cfg.shuffle_buffer } else { 0 };
        for shard in shards {
            let mut flow = ControlFlow::Continue(());
            for_each_sample(shard, |item| {
                if self.stop.load(Ordering::Relaxed) {
                    flow = ControlFlow::Break(());
                    return flow;
                }
                match item {
                    Err(skip) => {
                        self.report_skip(&skip, state);
                        ControlFlow::Continue(())
                    }
                    Ok(raw) if buffer_size <= 1 => {
                        flow = self.process(raw, state);
                        flow
                    }
                    Ok(raw) => {
                        state.buffer.push(raw);
                        if state.buffer.len() >= buffer_size {
                            let pick = state.shuffle_rng.gen_range(0..state.buffer.len());
                            let raw = state.buffer.swap_remove(pick);
                            flow = self.process(raw, state);
                        }
                        flow
                    }
                }
            });
            flow?;
        }
        while !state.buffer.is_empty() {
            let pick = state.shuffle_rng.gen_range(0..state.buffer.len());
            let raw = state.buffer.swap_remove(pick);
            self.process(raw, state)?;
        }
        if !state.pending.is_empty() && !self.cfg.drop_last {
            self.send_batch(state)?;
        }
        state.pending.clear();
        ControlFlow::Continue(())
    }

    fn report_skip(&self, skip: &TarSkip, state: &mut EpochState) {
        state.skips.add(skip.reason);
        let shard_level = matches!(
            skip.reason,
            SkipReason::UnreadableShard | SkipReason::ShardReadError | SkipReason::TruncatedMember
        );
        if !shard_level {
            tracing::debug!("skipped: {skip}");
            return;
        }
        let first_time = self
            .warned_shards
            .lock()
            .map(|mut warned| warned.insert(skip.shard.clone()))
            .unwrap_or(true);
        if first_time {
            tracing::warn!("bad shard {}: {skip}", skip.shard.display());
        }
    }

    /// Decode one raw sample into the pending batch; send the batch when full.
    fn process(&self, raw: RawSample, state: &mut EpochState) -> ControlFlow<()> {
        let transform = if self.cfg.train {
            ImageTransform::train(self.cfg.image_size)
        } else {
            ImageTransform::eval(self.cfg.image_size)
        };
        match decode_sample(
            &raw,
            &self.cfg.caption,
            &transform,
            self.cfg.max_pixels,
            &mut state.augment_rng,
        ) {
            Ok(sample) => {
                state.samples += 1;
                state.pending.push(sample);
                if state.pending.len() == self.cfg.batch_size {
                    return self.send_batch(state);
                }
            }
            Err(reason) => {
                tracing::debug!(shard = %raw.shard.display(), key = %raw.key, "skipped sample: {reason}");
                state.skips.add(reason);
            }
        }
        ControlFlow::Continue(())
    }

    fn send_batch(&self, state: &mut EpochState) -> ControlFlow<()> {
        let samples = std::mem::take(&mut state.pending);
        let context_length = if self.tokenizer.is_some() {
            self.cfg.context_length
        } else {
            0
        };
        let image_len = 3 * self.cfg.image_size as usize * self.cfg.image_size as usize;
        let mut batch = Batch {
            images: Vec::with_capacity(samples.len() * image_len),
            tokens: Vec::with_capacity(samples.len() * context_length),
            captions: Vec::with_capacity(samples.len()),
            labels: Vec::with_capacity(samples.len()),
            keys: Vec::with_capacity(samples.len()),
            epoch: state.epoch,
            image_size: self.cfg.image_size,
            context_length,
        };
        for sample in samples {
            batch.images.extend_from_slice(&sample.image);
            if let Some(tokenizer) = &self.tokenizer {
                batch
                    .tokens
                    .extend(tokenizer.tokenize(&sample.captions.join("\n"), context_length));
            }
            batch.captions.push(sample.captions);
            batch.labels.push(sample.label);
            batch.keys.push(sample.key);
        }
        let skips = std::mem::take(&mut state.skips);
        match self.sender.send(Message::Batch(batch, skips)) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

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
}
