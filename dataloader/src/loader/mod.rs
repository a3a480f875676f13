//! Batches from shards on background threads, reproducibly.
//!
//! With [`Sampling::EveryShard`] (the default) shards are dealt round-robin to `threads`
//! workers (in train mode after a per-epoch shuffle seeded from (seed, epoch)), so every sample
//! is read once per epoch. With [`Sampling::Resampled`] (OpenCLIP's `--dataset-resampled`) each
//! worker draws shards with replacement, by weight, from a generator seeded from
//! (seed, epoch, thread), without end; an epoch is then a fixed number of batches (a "virtual
//! epoch"). Each worker reads its shards in order, passes raw samples through
//! a shuffle buffer seeded from (seed, epoch, thread) (train mode only), decodes and transforms
//! them, and builds whole batches. The consumer takes one batch from each worker in turn, in a
//! fixed order, so the same config and seed give the same batches regardless of timing.
//! Channels are bounded (two batches per worker); dropping the [`Loader`] stops the workers.
//!
//! Every batch travels with its worker's position right after it, so [`Loader::state`] is
//! exact after any batch and [`Loader::resume`] continues from it (see [`crate::position`]).
//! Augmentation randomness is seeded per sample from (seed, epoch, thread, sample index).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, SkipCounts, SkipReason};
use crate::imaging::{ImageTransform, OutputPixel, DEFAULT_MAX_PIXELS};
use crate::position::{skips_by_name, ConfigFingerprint, LoaderState, SampleRef, ThreadCursor, ThreadPosition};
use crate::shard_spec::ShardSource;
use crate::tar_reader::{for_each_sample_at, read_samples_at, RawSample, TarSkip};
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

/// How a loader chooses the shards its workers read.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    /// Every shard once per epoch: the shards (shuffled per epoch in train mode) are dealt
    /// round-robin to the worker threads. Pass each rank only its share of the shards.
    EveryShard,
    /// Shards drawn with replacement (OpenCLIP's `--dataset-resampled`), train mode only.
    ///
    /// Each worker thread draws from its own generator, seeded from (seed, epoch, thread),
    /// and never runs out; shard `i` is drawn with probability `shard_weights[i] / Σ weights`.
    /// An epoch is a *virtual* epoch of `epoch_batches` batches of this loader, rounded up to
    /// a multiple of the thread count so every thread makes the same number (as OpenCLIP
    /// rounds its per-worker batch count up). Give every rank all shards and a seed that
    /// includes the rank, so the ranks draw different streams.
    Resampled {
        /// Relative weight of each shard, parallel to [`LoaderConfig::shards`]; empty means
        /// all shards equally likely.
        shard_weights: Vec<f64>,
        /// Batches per virtual epoch (see [`virtual_epoch_batches`]).
        epoch_batches: u64,
    },
}

/// Batches one loader yields per virtual epoch when `epoch_samples` samples make an epoch
/// over `world_size` ranks of `batch_size` samples each: ⌈epoch_samples / (batch_size ×
/// world_size)⌉, at least 1 (OpenCLIP's `--train-num-samples` arithmetic).
pub fn virtual_epoch_batches(epoch_samples: u64, batch_size: usize, world_size: usize) -> u64 {
    let global_batch = (batch_size as u64).saturating_mul(world_size as u64).max(1);
    epoch_samples.div_ceil(global_batch).max(1)
}

/// What a batch's image values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PixelOutput {
    /// f32 CHW, CLIP-normalised, in [`Batch::images`] (the default).
    #[default]
    NormalizedF32,
    /// u8 CHW, the resized 8-bit levels before normalisation, in [`Batch::images_u8`]; the
    /// consumer normalises (`(v / 255 − mean) / std`, e.g. on the GPU after a transfer of a
    /// quarter of the bytes). The same samples, crops and order as `NormalizedF32`.
    RawU8,
}

/// What the loader reads and how it batches. Build with [`LoaderConfig::new`] (or
/// [`LoaderConfig::resampled`]) and adjust fields.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Shard files (see [`crate::expand_shards`]); with [`Sampling::EveryShard`] pass only
    /// this rank's share.
    pub shards: Vec<PathBuf>,
    /// Every shard once per epoch, or shards drawn with replacement.
    pub sampling: Sampling,
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
    /// Decoding threads (capped at the number of shards unless resampled).
    pub threads: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Shuffle buffer size in samples, train mode only; 0 or 1 = no shuffling.
    pub shuffle_buffer: usize,
    /// Drop each worker's last partial batch of an epoch.
    pub drop_last: bool,
    /// Images with more pixels are skipped as `image_too_large`.
    pub max_pixels: u64,
    /// f32 normalised images (default) or u8 levels; does not change which samples come, so
    /// a loader may resume with the other setting.
    pub pixel_output: PixelOutput,
}

impl LoaderConfig {
    /// Defaults: batch 256, 224 px, `.txt` captions, context 77, 4 threads, seed 0;
    /// train mode shuffles with a 1000-sample buffer and drops the last partial batch,
    /// eval mode does neither.
    pub fn new(shards: Vec<PathBuf>, train: bool) -> Self {
        Self {
            shards,
            sampling: Sampling::EveryShard,
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
            pixel_output: PixelOutput::NormalizedF32,
        }
    }

    /// A train-mode config that draws shards with replacement from `sources`
    /// ([`Sampling::Resampled`]), `epoch_batches` batches per virtual epoch, other settings
    /// as [`LoaderConfig::new`].
    ///
    /// Every shard of a source gets the source's weight, as OpenCLIP applies
    /// `--train-data-upsampling-factors`: a source's share of the draws is its weight times
    /// its shard count, so equal weights draw every shard equally often, and weight 2
    /// reads a source twice as often as its size alone would.
    pub fn resampled(sources: &[ShardSource], epoch_batches: u64) -> Self {
        let mut shards = Vec::new();
        let mut shard_weights = Vec::new();
        for source in sources {
            shards.extend(source.shards.iter().cloned());
            shard_weights.extend(std::iter::repeat_n(source.weight, source.shards.len()));
        }
        let mut cfg = Self::new(shards, true);
        cfg.sampling = Sampling::Resampled {
            shard_weights,
            epoch_batches,
        };
        cfg
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
        if let Sampling::Resampled {
            shard_weights,
            epoch_batches,
        } = &self.sampling
        {
            if !self.train {
                return bad("sampling", "resampled shards need train mode");
            }
            if *epoch_batches == 0 {
                return bad("epoch_batches", "a virtual epoch needs at least 1 batch");
            }
            if !shard_weights.is_empty() {
                if shard_weights.len() != self.shards.len() {
                    return bad(
                        "shard_weights",
                        &format!("{} weights for {} shards", shard_weights.len(), self.shards.len()),
                    );
                }
                if let Some(w) = shard_weights.iter().find(|w| !w.is_finite() || **w < 0.0) {
                    return bad("shard_weights", &format!("weight {w} must be a finite number >= 0"));
                }
                if shard_weights.iter().all(|&w| w == 0.0) {
                    return bad("shard_weights", "all weights are zero");
                }
            }
        }
        Ok(())
    }
}

/// One batch: plain buffers, ready for `Tensor::from_slice(..).view(..)` (or for wrapping
/// without a copy: [`BatchImages`] is one contiguous allocation that stays put).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `B × 3 × image_size × image_size`, contiguous CHW per image, CLIP-normalised. Derefs
    /// to `[f32]`; its allocation goes back to the loader for a later batch when dropped.
    /// Empty under [`PixelOutput::RawU8`].
    pub images: BatchImages,
    /// The same layout as `images`, the 8-bit levels before normalisation, under
    /// [`PixelOutput::RawU8`] (recycled the same way); empty otherwise.
    pub images_u8: BatchImages<u8>,
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
    /// The epoch the samples belong to: a virtual epoch in resampled mode, always 0 in eval
    /// mode.
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

/// The image values of a [`Batch`]: a `Vec<T>` (`f32` normalised, or `u8` levels) that,
/// when dropped, goes back to the [`Loader`] it came from for a later batch, so a running
/// loader allocates (and the OS zero-fills) its batch buffers once instead of once per batch.
/// Derefs to `[T]`; [`BatchImages::into_vec`] takes the plain vector out (it is then not
/// recycled).
pub struct BatchImages<T: OutputPixel = f32> {
    values: Vec<T>,
    pool: Option<Arc<BufferPool<T>>>,
}

impl<T: OutputPixel> BatchImages<T> {
    /// The values as a plain vector, no longer recycled.
    pub fn into_vec(mut self) -> Vec<T> {
        std::mem::take(&mut self.values)
    }
}

impl<T: OutputPixel> From<Vec<T>> for BatchImages<T> {
    /// Values that belong to no loader (dropped normally).
    fn from(values: Vec<T>) -> Self {
        Self { values, pool: None }
    }
}

impl<T: OutputPixel> Default for BatchImages<T> {
    /// No values.
    fn default() -> Self {
        Self::from(Vec::new())
    }
}

impl<T: OutputPixel> std::ops::Deref for BatchImages<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.values
    }
}

impl<T: OutputPixel> std::ops::DerefMut for BatchImages<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.values
    }
}

impl<T: OutputPixel> AsRef<[T]> for BatchImages<T> {
    fn as_ref(&self) -> &[T] {
        &self.values
    }
}

impl<T: OutputPixel> Clone for BatchImages<T> {
    /// A copy that belongs to no loader.
    fn clone(&self) -> Self {
        Self::from(self.values.clone())
    }
}

impl<T: OutputPixel + PartialEq> PartialEq for BatchImages<T> {
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values
    }
}

impl<T: OutputPixel + std::fmt::Debug> std::fmt::Debug for BatchImages<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.values.fmt(f)
    }
}

impl<T: OutputPixel> Drop for BatchImages<T> {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.give_back(std::mem::take(&mut self.values));
        }
    }
}

/// Batch image buffers handed back by dropped [`BatchImages`], for the workers to fill again.
struct BufferPool<T> {
    free: Mutex<Vec<Vec<T>>>,
    /// Buffers allocated so far (not recycled).
    allocated: AtomicU64,
    /// At most this many are kept: as many as can be alive at once (queued, being built,
    /// held by the consumer), so recycling never holds more memory than the loader at its
    /// peak did.
    capacity: usize,
}

impl<T: OutputPixel> BufferPool<T> {
    fn new(threads: usize) -> Self {
        Self {
            free: Mutex::new(Vec::new()),
            allocated: AtomicU64::new(0),
            capacity: 3 * threads + 2,
        }
    }

    fn give_back(&self, buffer: Vec<T>) {
        if buffer.capacity() == 0 {
            return;
        }
        if let Ok(mut free) = self.free.lock() {
            if free.len() < self.capacity {
                free.push(buffer);
            }
        }
    }

    /// A buffer of `len` values: a recycled one (its old values left in place, to be
    /// overwritten) or a new zeroed one.
    fn take(&self, len: usize) -> Vec<T> {
        let recycled = self.free.lock().ok().and_then(|mut free| free.pop());
        match recycled {
            Some(mut buffer) => {
                buffer.resize(len, T::default());
                buffer
            }
            None => {
                self.allocated.fetch_add(1, Ordering::Relaxed);
                vec![T::default(); len]
            }
        }
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
    let mut image = vec![0.0; transform.output_len()];
    let (captions, label) = decode_sample_into(raw, caption, transform, max_pixels, rng, &mut image)?;
    Ok(Sample {
        key: raw.key.clone(),
        image,
        captions,
        label,
    })
}

/// [`decode_sample`] writing the image into `image` (length
/// [`ImageTransform::output_len`]; f32 normalised or u8 levels, see [`OutputPixel`]) and
/// returning the captions and label; on a skip, `image` holds unspecified values.
pub fn decode_sample_into<R: Rng + ?Sized, P: OutputPixel>(
    raw: &RawSample,
    caption: &CaptionSource,
    transform: &ImageTransform,
    max_pixels: u64,
    rng: &mut R,
    image: &mut [P],
) -> Result<(Vec<String>, Option<i64>), SkipReason> {
    let captions = captions_of(raw, caption)?;
    let label = label_of(raw)?;
    let bytes = IMAGE_EXTENSIONS
        .iter()
        .find_map(|ext| raw.members.get(*ext))
        .ok_or(SkipReason::MissingImage)?;
    // Decode straight at the reduced JPEG scale the crop allows (same random draws).
    transform
        .decode_and_apply_into(bytes, max_pixels, rng, image)
        .map_err(|e| e.reason)?;
    Ok((captions, label))
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
const DOMAIN_RESAMPLE: u64 = 4;

/// The shard draws of one worker thread in one epoch of a resampled loader: an endless
/// sequence, draw `n` from the 64-bit word at position `2n` of a ChaCha8 stream seeded from
/// (seed, epoch, thread). Each draw uses exactly that one word, so the generator's position
/// after `n` draws is the draw count itself: a [`ThreadCursor`] stores it as its shard index,
/// and any draw can be recomputed without replaying the earlier ones.
struct ShardDraws {
    seed: u64,
    /// Running sums of the shard weights; the last is the total.
    cumulative: Vec<f64>,
}

impl ShardDraws {
    fn new(cfg: &LoaderConfig, shard_weights: &[f64], epoch: u64, thread: usize) -> Self {
        let mut total = 0.0;
        let cumulative = (0..cfg.shards.len())
            .map(|i| {
                total += shard_weights.get(i).copied().unwrap_or(1.0);
                total
            })
            .collect();
        Self {
            seed: derive_seed(&[cfg.seed, DOMAIN_RESAMPLE, epoch, thread as u64]),
            cumulative,
        }
    }

    /// Index (into the config's shards) of draw `n`.
    fn shard(&self, n: usize) -> usize {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_word_pos(2 * n as u128);
        // 53 random bits → uniform in [0, 1).
        let unit = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let target = unit * total;
        // The first shard whose running sum exceeds the target: zero-weight shards, whose sum
        // equals their predecessor's, are never chosen.
        let index = self.cumulative.partition_point(|&sum| sum <= target);
        if index < self.cumulative.len() {
            return index;
        }
        // `unit * total` rounded up to `total`: take the last shard with a weight.
        self.cumulative
            .iter()
            .rposition(|&sum| sum < total)
            .map_or(0, |i| i + 1)
    }
}

/// The shards one worker thread reads in one epoch, by position in its read order.
enum EpochShards<'a> {
    /// A finite list (every shard once per epoch).
    Listed(Vec<PathBuf>),
    /// Endless draws with replacement from `shards`.
    Drawn { shards: &'a [PathBuf], draws: ShardDraws },
}

impl EpochShards<'_> {
    /// The shard read at `position`; `None` past the end of a list.
    fn get(&self, position: usize) -> Option<&PathBuf> {
        match self {
            EpochShards::Listed(list) => list.get(position),
            EpochShards::Drawn { shards, draws } => shards.get(draws.shard(position)),
        }
    }

    /// The list's length; `None` for endless draws.
    fn listed_len(&self) -> Option<usize> {
        match self {
            EpochShards::Listed(list) => Some(list.len()),
            EpochShards::Drawn { .. } => None,
        }
    }
}

/// A worker gives up after this many shard draws in a row without a usable sample (plus one
/// per shard), so resampled shards that are all bad end the loader instead of spinning. With
/// a fraction `p` of the weight on good shards a false stop has probability `(1 - p)^1000`.
const MAX_DRAWS_WITHOUT_SAMPLE: usize = 1000;

/// The shards worker `thread` of `threads` reads in `epoch`, in order.
fn epoch_shards(cfg: &LoaderConfig, threads: usize, thread: usize, epoch: u64) -> EpochShards<'_> {
    match &cfg.sampling {
        Sampling::EveryShard => EpochShards::Listed(shards_for_thread(cfg, threads, thread, epoch)),
        Sampling::Resampled { shard_weights, .. } => EpochShards::Drawn {
            shards: &cfg.shards,
            draws: ShardDraws::new(cfg, shard_weights, epoch, thread),
        },
    }
}

/// With [`Sampling::EveryShard`]: the shards worker `thread` of `threads` reads in `epoch`.
fn shards_for_thread(cfg: &LoaderConfig, threads: usize, thread: usize, epoch: u64) -> Vec<PathBuf> {
    let mut order = cfg.shards.clone();
    if cfg.train {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(&[cfg.seed, DOMAIN_SHARD_ORDER, epoch]));
        order.shuffle(&mut rng);
    }
    order.into_iter().skip(thread).step_by(threads).collect()
}

/// What a worker sends: a batch plus the skips counted since its previous message and its
/// position right after the batch, or its end.
enum Message {
    Batch(Box<BatchMessage>),
    Done(SkipCounts),
}

/// A batch as sent by a worker (boxed: much larger than `Done`).
struct BatchMessage {
    batch: Batch,
    skips: SkipCounts,
    cursor: ThreadCursor,
}

/// Batches from shards on background threads. Use it as an `Iterator<Item = Batch>` (or call
/// [`Loader::next_batch`]); [`Loader::skip_counts`] tells what was skipped so far.
///
/// Train mode never ends (unless no worker can produce a sample); eval mode ends after one
/// pass. Dropping the loader stops and joins its threads. [`Loader::state`] after any batch
/// and [`Loader::resume`] continue exactly where it stood.
pub struct Loader {
    receivers: Vec<Option<Receiver<Message>>>,
    handles: Vec<Option<JoinHandle<()>>>,
    next_thread: usize,
    live: usize,
    stop: Arc<AtomicBool>,
    skips: SkipCounts,
    /// Each worker's position after the last batch taken from it.
    positions: Vec<ThreadPosition>,
    config: ConfigFingerprint,
    /// Samples the workers tried to decode.
    decode_attempts: Arc<AtomicU64>,
    /// Batch image buffers, recycled.
    pool: Arc<BufferPool<f32>>,
    /// The same for u8 batches ([`PixelOutput::RawU8`]).
    pool_u8: Arc<BufferPool<u8>>,
}

impl Loader {
    /// Validate `cfg` and start the worker threads.
    pub fn new(cfg: LoaderConfig) -> Result<Self, DataError> {
        cfg.validate()?;
        let threads = worker_count(&cfg);
        let positions = vec![ThreadPosition::Reading(ThreadCursor::epoch_start(0)); threads];
        Self::start(cfg, positions, 0, SkipCounts::new())
    }

    /// Start a loader that continues exactly where `state` was captured: it yields the batches
    /// (keys, image bytes, tokens) the saved loader would have yielded next, and its skip
    /// counts continue from the saved ones.
    ///
    /// Errors (naming the field) when `cfg` is invalid or differs from the saved loader's in
    /// what decides the batches: shard list, threads, batch size, seed, train mode, shuffle
    /// buffer, `drop_last`, pixel limit or caption source. Image size and context length may
    /// change.
    pub fn resume(cfg: LoaderConfig, state: &LoaderState) -> Result<Loader, DataError> {
        cfg.validate()?;
        let threads = worker_count(&cfg);
        state.config.check_matches(&ConfigFingerprint::of(&cfg, threads))?;
        let bad_state = |reason: String| DataError::BadConfig {
            field: "loader_state",
            reason,
        };
        if state.threads.len() != threads {
            return Err(bad_state(format!(
                "it has {} thread positions for {threads} threads",
                state.threads.len()
            )));
        }
        if state.next_thread >= threads {
            return Err(bad_state(format!(
                "next thread {} of {threads} threads",
                state.next_thread
            )));
        }
        let skips = state.skip_counts()?;
        Self::start(cfg, state.threads.clone(), state.next_thread, skips)
    }

    /// Position after the batches returned so far.
    pub fn state(&self) -> LoaderState {
        LoaderState {
            config: self.config.clone(),
            threads: self.positions.clone(),
            next_thread: self.next_thread,
            skips: skips_by_name(&self.skips),
        }
    }

    /// Start one worker per thread position that is still reading.
    fn start(
        cfg: LoaderConfig,
        positions: Vec<ThreadPosition>,
        next_thread: usize,
        skips: SkipCounts,
    ) -> Result<Self, DataError> {
        let threads = positions.len();
        let config = ConfigFingerprint::of(&cfg, threads);
        let tokenizer = (cfg.context_length > 0).then(|| Arc::new(Tokenizer::new()));
        let cfg = Arc::new(cfg);
        let stop = Arc::new(AtomicBool::new(false));
        let warned = Arc::new(Mutex::new(HashSet::new()));
        let decode_attempts = Arc::new(AtomicU64::new(0));
        let pool = Arc::new(BufferPool::new(threads));
        let pool_u8 = Arc::new(BufferPool::new(threads));
        let transform = if cfg.train {
            ImageTransform::train(cfg.image_size)
        } else {
            ImageTransform::eval(cfg.image_size)
        };
        let mut receivers = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for (thread, position) in positions.iter().enumerate() {
            let ThreadPosition::Reading(cursor) = position else {
                receivers.push(None);
                handles.push(None);
                continue;
            };
            let (sender, receiver) = crossbeam_channel::bounded(2);
            let worker = Worker {
                cfg: Arc::clone(&cfg),
                tokenizer: tokenizer.clone(),
                thread,
                threads,
                epoch_batches: thread_epoch_batches(&cfg, threads),
                sender,
                stop: Arc::clone(&stop),
                warned_shards: Arc::clone(&warned),
                decode_attempts: Arc::clone(&decode_attempts),
                transform: transform.clone(),
                pool: Arc::clone(&pool),
                pool_u8: Arc::clone(&pool_u8),
            };
            let cursor = cursor.clone();
            let handle = std::thread::Builder::new()
                .name(format!("loader-{thread}"))
                .spawn(move || worker.run(cursor))
                .map_err(|e| DataError::io("<loader thread>", e))?;
            receivers.push(Some(receiver));
            handles.push(Some(handle));
        }
        let live = receivers.iter().filter(|receiver| receiver.is_some()).count();
        Ok(Self {
            receivers,
            handles,
            next_thread,
            live,
            stop,
            skips,
            positions,
            config,
            decode_attempts,
            pool,
            pool_u8,
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
                Ok(Message::Batch(message)) => {
                    let BatchMessage { batch, skips, cursor } = *message;
                    self.skips.merge(&skips);
                    self.positions[thread] = ThreadPosition::Reading(cursor);
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

    /// Samples the workers have tried to decode so far: those in returned batches, skipped
    /// ones, and those already in batches queued or being built (workers run ahead).
    pub fn decode_attempts(&self) -> u64 {
        self.decode_attempts.load(Ordering::Relaxed)
    }

    /// Batch image buffers allocated so far; the rest of the batches reused them.
    pub fn batch_buffers_allocated(&self) -> u64 {
        self.pool.allocated.load(Ordering::Relaxed) + self.pool_u8.allocated.load(Ordering::Relaxed)
    }

    fn finish_thread(&mut self, thread: usize) {
        self.receivers[thread] = None;
        self.positions[thread] = ThreadPosition::Finished;
        self.live -= 1;
        if let Some(handle) = self.handles[thread].take() {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

/// Worker threads for `cfg`: at most one per shard, unless shards are drawn with replacement.
fn worker_count(cfg: &LoaderConfig) -> usize {
    match cfg.sampling {
        Sampling::EveryShard => cfg.threads.min(cfg.shards.len()).max(1),
        Sampling::Resampled { .. } => cfg.threads.max(1),
    }
}

/// Batches each worker makes per virtual epoch: the loader's `epoch_batches` split evenly,
/// rounded up. `None` when epochs are not virtual.
fn thread_epoch_batches(cfg: &LoaderConfig, threads: usize) -> Option<u64> {
    match cfg.sampling {
        Sampling::EveryShard => None,
        Sampling::Resampled { epoch_batches, .. } => Some(epoch_batches.div_ceil(threads.max(1) as u64)),
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
    /// Batches per virtual epoch of this thread (resampled mode), `None` otherwise.
    epoch_batches: Option<u64>,
    sender: Sender<Message>,
    stop: Arc<AtomicBool>,
    warned_shards: Arc<Mutex<HashSet<PathBuf>>>,
    decode_attempts: Arc<AtomicU64>,
    /// The image transform of the loader's mode.
    transform: ImageTransform,
    /// Where batch image buffers come from and go back to.
    pool: Arc<BufferPool<f32>>,
    /// The same for u8 batches.
    pool_u8: Arc<BufferPool<u8>>,
}

/// The batch a worker is filling: each sample is decoded straight into its slot of the
/// batch's image buffer, so no per-sample image is allocated or copied.
#[derive(Default)]
struct PendingBatch {
    /// `batch_size` image slots once the first sample is placed (empty before), f32 mode.
    images: Vec<f32>,
    /// The same in u8 mode ([`PixelOutput::RawU8`]).
    images_u8: Vec<u8>,
    tokens: Vec<i64>,
    captions: Vec<Vec<String>>,
    labels: Vec<Option<i64>>,
    keys: Vec<String>,
}

impl PendingBatch {
    fn len(&self) -> usize {
        self.keys.len()
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Why a worker stopped reading an epoch early.
enum Halt {
    /// The loader is gone.
    Disconnected,
    /// The virtual epoch has all its batches (resampled mode).
    EpochFull,
    /// Resampled shards gave no usable sample in too many draws in a row.
    Starved,
}

/// Per-epoch state of a worker.
struct EpochState {
    epoch: u64,
    shuffle_rng: ChaCha8Rng,
    /// Raw samples waiting to be picked, with where to read them again.
    buffer: Vec<(SampleRef, RawSample)>,
    pending: PendingBatch,
    skips: SkipCounts,
    samples: u64,
    /// Position of the shard being read in the epoch's read order (the list's length once
    /// all are read; in resampled mode the draw count, which is the draw generator's position).
    shard: usize,
    /// Tar offset in that shard where reading continues after the samples taken so far.
    offset: u64,
    /// Whether a sample was decoded while reading the current shard. A saved position lies
    /// right after a decoded sample, so a restored mid-epoch state starts with `true`.
    sample_in_shard: bool,
}

impl EpochState {
    /// The position to resume from; taken right after a batch is built, when no decoded sample
    /// is pending.
    fn cursor(&self) -> ThreadCursor {
        ThreadCursor {
            epoch: self.epoch,
            shard: self.shard,
            offset: self.offset,
            buffer: self.buffer.iter().map(|(at, _)| at.clone()).collect(),
            // The generator is re-seeded every epoch and draws a few words per sample, so
            // its word position stays far below 2^64.
            shuffle_words: u64::try_from(self.shuffle_rng.get_word_pos()).unwrap_or(u64::MAX),
            samples: self.samples,
        }
    }
}

impl Worker {
    /// Produce batches from `start` on, epoch after epoch (train) or to the end of the pass.
    fn run(self, start: ThreadCursor) {
        let mut skips_left = SkipCounts::new();
        let mut cursor = start;
        loop {
            let epoch = cursor.epoch;
            let shards = epoch_shards(&self.cfg, self.threads, self.thread, epoch);
            let mut state = self.restore(&shards, cursor, std::mem::take(&mut skips_left));
            match self.run_epoch(&shards, &mut state) {
                ControlFlow::Break(Halt::Disconnected) => return,
                ControlFlow::Break(Halt::EpochFull) => {
                    skips_left = std::mem::take(&mut state.skips);
                    cursor = ThreadCursor::epoch_start(epoch + 1);
                    continue;
                }
                ControlFlow::Break(Halt::Starved) => {
                    tracing::warn!(
                        thread = self.thread,
                        "loader thread stops: {} resampled shard draws in a row gave no usable sample",
                        self.max_draws_without_sample()
                    );
                    skips_left = std::mem::take(&mut state.skips);
                    break;
                }
                ControlFlow::Continue(()) => {}
            }
            skips_left = std::mem::take(&mut state.skips);
            let listed = shards.listed_len().unwrap_or(0);
            if !self.cfg.train || listed == 0 {
                break;
            }
            if state.samples == 0 {
                tracing::warn!(
                    thread = self.thread,
                    "loader thread stops: no usable sample in its {listed} shard(s)"
                );
                break;
            }
            cursor = ThreadCursor::epoch_start(epoch + 1);
        }
        let _ = self.sender.send(Message::Done(skips_left));
    }

    fn max_draws_without_sample(&self) -> usize {
        MAX_DRAWS_WITHOUT_SAMPLE + self.cfg.shards.len()
    }

    /// The epoch state at `cursor`: the shuffle generator at its saved position and the
    /// buffered samples read again from their shards (raw bytes only, nothing decoded).
    fn restore(&self, shards: &EpochShards<'_>, cursor: ThreadCursor, skips: SkipCounts) -> EpochState {
        let seed = |domain| derive_seed(&[self.cfg.seed, domain, cursor.epoch, self.thread as u64]);
        let mut shuffle_rng = ChaCha8Rng::seed_from_u64(seed(DOMAIN_SHUFFLE));
        shuffle_rng.set_word_pos(u128::from(cursor.shuffle_words));
        let mut state = EpochState {
            epoch: cursor.epoch,
            shuffle_rng,
            buffer: Vec::with_capacity(cursor.buffer.len()),
            pending: PendingBatch::default(),
            skips,
            samples: cursor.samples,
            shard: cursor.shard,
            offset: cursor.offset,
            sample_in_shard: cursor.samples > 0,
        };
        if cursor.buffer.is_empty() {
            return state;
        }
        let mut starts_by_shard: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for at in &cursor.buffer {
            starts_by_shard.entry(at.shard).or_default().push(at.start);
        }
        let mut found: HashMap<SampleRef, RawSample> = HashMap::with_capacity(cursor.buffer.len());
        for (shard, starts) in starts_by_shard {
            let Some(path) = shards.get(shard) else {
                continue;
            };
            match read_samples_at(path, &starts) {
                Ok(samples) => found.extend(
                    samples
                        .into_iter()
                        .map(|(start, raw)| (SampleRef { shard, start }, raw)),
                ),
                Err(skip) => tracing::warn!("resuming: {skip}"),
            }
        }
        for at in cursor.buffer {
            match found.remove(&at) {
                Some(raw) => state.buffer.push((at, raw)),
                None => {
                    // The shard changed or vanished since the state was saved: the run goes
                    // on, but no longer exactly as the saved one would have.
                    tracing::warn!(
                        thread = self.thread,
                        shard = at.shard,
                        offset = at.start,
                        "resuming: a buffered sample cannot be read again; the resumed run differs from the saved one"
                    );
                    state.skips.add(SkipReason::ShardReadError);
                }
            }
        }
        state
    }

    /// Read, shuffle, decode and send the rest of an epoch from `state`'s shard and offset.
    /// `Continue` when every listed shard is read; resampled epochs end only by `Break`.
    fn run_epoch(&self, shards: &EpochShards<'_>, state: &mut EpochState) -> ControlFlow<Halt> {
        let buffer_size = if self.cfg.train { self.cfg.shuffle_buffer } else { 0 };
        let (first_shard, first_offset) = (state.shard, state.offset);
        let mut draws_without_sample = 0;
        let mut index = first_shard;
        while let Some(shard) = shards.get(index) {
            let offset = if index == first_shard { first_offset } else { 0 };
            if index != first_shard {
                state.sample_in_shard = false;
            }
            state.shard = index;
            state.offset = offset;
            let mut flow = ControlFlow::Continue(());
            for_each_sample_at(shard, offset, |item| {
                if self.stop.load(Ordering::Relaxed) {
                    flow = ControlFlow::Break(Halt::Disconnected);
                    return ControlFlow::Break(());
                }
                match item {
                    Err(skip) => {
                        self.report_skip(&skip, state);
                    }
                    Ok((raw, span)) => {
                        state.offset = span.next;
                        if buffer_size <= 1 {
                            flow = self.process(raw, state);
                        } else {
                            let at = SampleRef {
                                shard: index,
                                start: span.start,
                            };
                            state.buffer.push((at, raw));
                            if state.buffer.len() >= buffer_size {
                                flow = self.process_pick(state);
                            }
                        }
                    }
                }
                match flow {
                    ControlFlow::Continue(()) => ControlFlow::Continue(()),
                    ControlFlow::Break(_) => ControlFlow::Break(()),
                }
            });
            flow?;
            if shards.listed_len().is_none() {
                draws_without_sample = if state.sample_in_shard {
                    0
                } else {
                    draws_without_sample + 1
                };
                if draws_without_sample >= self.max_draws_without_sample() {
                    return ControlFlow::Break(Halt::Starved);
                }
            }
            index += 1;
        }
        state.shard = index;
        state.offset = 0;
        while !state.buffer.is_empty() {
            self.process_pick(state)?;
        }
        if !state.pending.is_empty() && !self.cfg.drop_last {
            self.send_batch(state)?;
        }
        // A dropped partial batch: its samples go, its buffer is kept for the next epoch.
        let dropped = std::mem::take(&mut state.pending);
        self.pool.give_back(dropped.images);
        ControlFlow::Continue(())
    }

    /// Take a random sample out of the shuffle buffer and process it.
    fn process_pick(&self, state: &mut EpochState) -> ControlFlow<Halt> {
        let pick = state.shuffle_rng.gen_range(0..state.buffer.len());
        let (_, raw) = state.buffer.swap_remove(pick);
        self.process(raw, state)
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

    /// Decode one raw sample into its slot of the pending batch; send the batch when full.
    fn process(&self, raw: RawSample, state: &mut EpochState) -> ControlFlow<Halt> {
        self.decode_attempts.fetch_add(1, Ordering::Relaxed);
        // One generator per sample, seeded by its place in the thread's epoch output, so a
        // resumed loader draws the same crops without replaying earlier samples.
        let mut augment_rng = ChaCha8Rng::seed_from_u64(derive_seed(&[
            self.cfg.seed,
            DOMAIN_AUGMENT,
            state.epoch,
            self.thread as u64,
            state.samples,
        ]));
        let image_len = self.transform.output_len();
        let pending = &mut state.pending;
        // The slot after the samples placed so far; a skipped sample's partial output there
        // is overwritten by the next one.
        let slot_range = pending.len() * image_len..(pending.len() + 1) * image_len;
        let decoded = match self.cfg.pixel_output {
            PixelOutput::NormalizedF32 => {
                if pending.images.is_empty() {
                    pending.images = self.pool.take(self.cfg.batch_size * image_len);
                }
                self.decode_into(&raw, &mut augment_rng, &mut pending.images[slot_range])
            }
            PixelOutput::RawU8 => {
                if pending.images_u8.is_empty() {
                    pending.images_u8 = self.pool_u8.take(self.cfg.batch_size * image_len);
                }
                self.decode_into(&raw, &mut augment_rng, &mut pending.images_u8[slot_range])
            }
        };
        match decoded {
            Ok((captions, label)) => {
                state.samples += 1;
                state.sample_in_shard = true;
                if let Some(tokenizer) = &self.tokenizer {
                    pending
                        .tokens
                        .extend(tokenizer.tokenize(&captions.join("\n"), self.cfg.context_length));
                }
                pending.captions.push(captions);
                pending.labels.push(label);
                pending.keys.push(raw.key);
                if pending.len() == self.cfg.batch_size {
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

    /// Decode `raw` into `slot` with the loader's transform.
    fn decode_into<P: OutputPixel>(
        &self,
        raw: &RawSample,
        rng: &mut ChaCha8Rng,
        slot: &mut [P],
    ) -> Result<(Vec<String>, Option<i64>), SkipReason> {
        decode_sample_into(raw, &self.cfg.caption, &self.transform, self.cfg.max_pixels, rng, slot)
    }

    /// Send the pending samples as a batch with the position after it; `Break(EpochFull)` once
    /// a virtual epoch has all its batches (the position sent is then the next epoch's start).
    fn send_batch(&self, state: &mut EpochState) -> ControlFlow<Halt> {
        let pending = std::mem::take(&mut state.pending);
        let context_length = if self.tokenizer.is_some() {
            self.cfg.context_length
        } else {
            0
        };
        let len = pending.keys.len() * self.transform.output_len();
        let mut images = pending.images;
        images.truncate(len);
        let mut images_u8 = pending.images_u8;
        images_u8.truncate(len);
        let batch = Batch {
            images: BatchImages {
                values: images,
                pool: Some(Arc::clone(&self.pool)),
            },
            images_u8: BatchImages {
                values: images_u8,
                pool: Some(Arc::clone(&self.pool_u8)),
            },
            tokens: pending.tokens,
            captions: pending.captions,
            labels: pending.labels,
            keys: pending.keys,
            epoch: state.epoch,
            image_size: self.cfg.image_size,
            context_length,
        };
        let skips = std::mem::take(&mut state.skips);
        // Only whole batches are sent in resampled mode (it never drains a partial one), so
        // the samples so far are a whole number of batches.
        let epoch_full = self
            .epoch_batches
            .is_some_and(|batches| state.samples >= batches.saturating_mul(self.cfg.batch_size as u64));
        let cursor = if epoch_full {
            ThreadCursor::epoch_start(state.epoch + 1)
        } else {
            state.cursor()
        };
        let message = BatchMessage { batch, skips, cursor };
        match self.sender.send(Message::Batch(Box::new(message))) {
            Ok(()) if epoch_full => ControlFlow::Break(Halt::EpochFull),
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(Halt::Disconnected),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
}
