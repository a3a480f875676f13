//! The `align` stage: ALIGN's filters (Jia et al. 2021, §3) plus duplicate removal.
//!
//! Per sample (image = the first of the `jpg`, `png`, `jpeg`, `webp` members, text = the
//! caption member, UTF-8), in this order, the first failing rule names the drop reason:
//!
//! | reason | rule (defaults are ALIGN's numbers) |
//! |---|---|
//! | `missing_image`, `missing_caption`, `invalid_caption`, `caption_too_long` | the members are there, the text is UTF-8 and at most `max_caption_bytes` |
//! | `undecodable_image` | the image header gives its size (only the header is read); later, with near-duplicate removal on, the full decode for the pHash must work too |
//! | `small_image` | shorter side > `shorter_side_above` (200) px |
//! | `aspect_ratio` | longer side / shorter side < `aspect_ratio_below` (3) |
//! | `text_length` | `min_unigrams` (3) ≤ unigrams ≤ `max_unigrams` (20) ([`text::unigrams`]) |
//! | `image_many_texts` | the image (by content hash) appears with at most `max_texts_per_image` (1000) distinct alt-texts |
//! | `text_many_images` | the alt-text (by [`text::text_hash`]) appears with at most `max_images_per_text` (10) distinct images |
//! | `rare_token` | every unigram and bigram of the text is in the vocabulary (below) |
//! | `duplicate` | the sample is the first, in (shard path, key) byte order, of those with the same image bytes that pass every other rule |
//! | `near_duplicate` | its image's pHash is more than `near_duplicate_max_distance` bits from every image kept before it in that order |
//!
//! **Global counts** come from the observation pass over every sample that reaches the stage
//! with an image member and a usable text: distinct (text, image) pairs give texts per image
//! and images per text (a pair repeated in the corpus counts once); unigram and bigram
//! frequencies count occurrences over all those texts.
//!
//! **Rare tokens.** ALIGN drops alt-texts holding a token outside the 100 million most
//! frequent unigrams and bigrams of the raw data. Here the vocabulary is the unigrams and
//! bigrams ranked together by frequency, cut at the `rare_token_top_k`-th (default 100
//! million): every n-gram at least as frequent as the K-th one is in it (ties at the cut are
//! all kept, so the result does not depend on an arbitrary order among equals). A text is
//! dropped when any of its unigrams or bigrams falls outside. On a corpus with fewer than K
//! distinct n-grams nothing is rare.
//!
//! **Duplicates.** Exact duplicates share the SHA-256 of their image bytes (first 128 bits).
//! Near duplicates are found greedily in (shard path, key) order among the samples that pass
//! every other rule: an image is kept when no earlier kept image lies within the Hamming
//! threshold of its [`phash`]; lookups go through a multi-index ([`mih::NearIndex`]), not
//! all pairs. Every copy of a near-duplicate image is dropped as `near_duplicate`. The
//! result depends on neither the thread count nor the order in which shards are read.
//! With `near_duplicate_checkpoint` (a ferroclip run), near duplicates are decided by the
//! cosine similarity of the model's image embeddings instead (`near_duplicate_min_cosine`,
//! [`embed`]); images the model cannot decode count as `undecodable_image`.
//!
//! **Memory.** Texts and n-grams are kept as 64-bit hashes (see [`text`] for the collision
//! trade-off), images as 128-bit content hashes. The observation keeps, per distinct (text,
//! image) pair 24 bytes, per distinct n-gram 16, and per sample that passes the per-sample
//! rules its key, a pHash and the n-gram hashes of its (distinct) text; that is fine for
//! tens of millions of samples per process, beyond which inputs should be split.
//!
//! **Processes.** With several processes (`mpirun -n N ferroclip curate`), each rank observes
//! its own shards, then every rank gathers all ranks' tables and merges them
//! ([`exchange`]): pairs and texts by union, n-gram counts by sum, duplicate candidates by
//! concatenation. Every rank thus decides on the whole input's statistics and the output
//! equals a one-process run's. Each rank holds the merged tables, so the memory above is
//! per rank for the whole input.
mod embed;
mod exchange;
pub mod mih;
pub mod phash;
pub mod text;

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dataloader::loader::IMAGE_EXTENSIONS;
use dataloader::RawSample;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::CurateError;
use crate::reduce::CountReducer;
use crate::stage::{Decision, Stage};
pub use embed::ImageEmbedder;
use embed::{CosineIndex, EmbedQueue};

const DROP_REASONS: &[&str] = &[
    "missing_image",
    "missing_caption",
    "invalid_caption",
    "caption_too_long",
    "undecodable_image",
    "small_image",
    "aspect_ratio",
    "text_length",
    "image_many_texts",
    "text_many_images",
    "rare_token",
    "duplicate",
    "near_duplicate",
];

/// ALIGN: the image's shorter side must be larger than this many pixels.
pub const DEFAULT_SHORTER_SIDE_ABOVE: u32 = 200;
/// ALIGN: the aspect ratio (longer / shorter side) must be smaller than this.
pub const DEFAULT_ASPECT_RATIO_BELOW: f64 = 3.0;
/// ALIGN: images with more alt-texts than this are dropped.
pub const DEFAULT_MAX_TEXTS_PER_IMAGE: u64 = 1000;
/// ALIGN: alt-texts shared by more images than this are dropped.
pub const DEFAULT_MAX_IMAGES_PER_TEXT: u64 = 10;
/// ALIGN: fewer unigrams than this is too short.
pub const DEFAULT_MIN_UNIGRAMS: usize = 3;
/// ALIGN: more unigrams than this is too long.
pub const DEFAULT_MAX_UNIGRAMS: usize = 20;
/// ALIGN: the vocabulary is the 100 million most frequent unigrams and bigrams.
pub const DEFAULT_RARE_TOKEN_TOP_K: u64 = 100_000_000;
/// pHash bits two images may differ in and still count as near duplicates.
pub const DEFAULT_NEAR_DUPLICATE_MAX_DISTANCE: u32 = 6;

/// Cosine similarity of image embeddings at which two images are near duplicates.
pub const DEFAULT_NEAR_DUPLICATE_MIN_COSINE: f32 = 0.95;

/// The `[[stage]] kind = "align"` section of a curate config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlignConfig {
    /// Name in logs and the report (default `align`).
    pub name: Option<String>,
    /// Extension of the member holding the alt-text.
    pub caption_member: String,
    /// Longer texts are dropped (`caption_too_long`).
    pub max_caption_bytes: usize,
    /// Images with more pixels are not decoded for the pHash (`undecodable_image`).
    pub max_pixels: u64,
    /// Keep images whose shorter side is larger than this (px).
    pub shorter_side_above: u32,
    /// Keep images whose longer / shorter side is smaller than this.
    pub aspect_ratio_below: f64,
    /// Drop images that appear with more distinct alt-texts than this.
    pub max_texts_per_image: u64,
    /// Drop alt-texts that appear with more distinct images than this.
    pub max_images_per_text: u64,
    /// Drop texts with fewer unigrams.
    pub min_unigrams: usize,
    /// Drop texts with more unigrams.
    pub max_unigrams: usize,
    /// Vocabulary size K of the rare-token rule (unigrams and bigrams ranked together).
    pub rare_token_top_k: u64,
    /// Drop exact duplicates of an image (same bytes), keeping the first.
    pub drop_duplicates: bool,
    /// Drop near duplicates (pHash within `near_duplicate_max_distance` bits).
    pub drop_near_duplicates: bool,
    /// Hamming threshold of the near-duplicate rule (0..=32).
    pub near_duplicate_max_distance: u32,
    /// Decide near duplicates by image embeddings of this model (a ferroclip run or
    /// checkpoint folder, relative to the config file) instead of the pHash.
    pub near_duplicate_checkpoint: Option<PathBuf>,
    /// With a checkpoint: images whose embeddings have at least this cosine similarity are
    /// near duplicates.
    pub near_duplicate_min_cosine: f32,
    /// With a checkpoint: images per forward pass.
    pub embed_batch_size: usize,
    /// With a checkpoint: `cpu`, `cuda` or `cuda:N` (default: CUDA when present).
    pub device: Option<String>,
}

impl Default for AlignConfig {
    fn default() -> Self {
        Self {
            name: None,
            caption_member: "txt".into(),
            max_caption_bytes: crate::metaclip::DEFAULT_MAX_CAPTION_BYTES,
            max_pixels: dataloader::DEFAULT_MAX_PIXELS,
            shorter_side_above: DEFAULT_SHORTER_SIDE_ABOVE,
            aspect_ratio_below: DEFAULT_ASPECT_RATIO_BELOW,
            max_texts_per_image: DEFAULT_MAX_TEXTS_PER_IMAGE,
            max_images_per_text: DEFAULT_MAX_IMAGES_PER_TEXT,
            min_unigrams: DEFAULT_MIN_UNIGRAMS,
            max_unigrams: DEFAULT_MAX_UNIGRAMS,
            rare_token_top_k: DEFAULT_RARE_TOKEN_TOP_K,
            drop_duplicates: true,
            drop_near_duplicates: true,
            near_duplicate_max_distance: DEFAULT_NEAR_DUPLICATE_MAX_DISTANCE,
            near_duplicate_checkpoint: None,
            near_duplicate_min_cosine: DEFAULT_NEAR_DUPLICATE_MIN_COSINE,
            embed_batch_size: 64,
            device: None,
        }
    }
}

impl AlignConfig {
    /// Check the values; `at` prefixes field names in errors (`stage[0]`).
    pub fn validate(&self, at: &str) -> Result<(), CurateError> {
        let bad = |field: &str, reason: &str| CurateError::BadField {
            field: format!("{at}.{field}"),
            reason: reason.into(),
        };
        crate::config::validate_caption_fields(at, &self.caption_member, self.max_caption_bytes)?;
        if self.max_pixels == 0 {
            return Err(bad("max_pixels", "must be at least 1"));
        }
        if self.aspect_ratio_below.is_nan() || self.aspect_ratio_below <= 1.0 {
            return Err(bad(
                "aspect_ratio_below",
                "must be above 1 (every aspect ratio is at least 1)",
            ));
        }
        if self.max_texts_per_image == 0 {
            return Err(bad("max_texts_per_image", "must be at least 1"));
        }
        if self.max_images_per_text == 0 {
            return Err(bad("max_images_per_text", "must be at least 1"));
        }
        if self.min_unigrams > self.max_unigrams {
            return Err(bad("min_unigrams", "must not exceed max_unigrams"));
        }
        if self.rare_token_top_k == 0 {
            return Err(bad("rare_token_top_k", "must be at least 1"));
        }
        if self.near_duplicate_max_distance > 32 {
            return Err(bad(
                "near_duplicate_max_distance",
                "must be at most 32 of the 64 bits (unrelated images differ in about 32)",
            ));
        }
        if !(self.near_duplicate_min_cosine > -1.0 && self.near_duplicate_min_cosine <= 1.0) {
            return Err(bad("near_duplicate_min_cosine", "must be in (-1, 1]"));
        }
        if self.embed_batch_size == 0 {
            return Err(bad("embed_batch_size", "must be at least 1"));
        }
        Ok(())
    }
}

/// A sample's image bytes and the unigrams of its text.
struct Parsed<'a> {
    image: &'a [u8],
    unigrams: Vec<String>,
}

/// A sample that passed the per-sample rules, as the observation remembers it.
struct Candidate {
    shard: u32,
    key: String,
    image: u128,
    text: u64,
}

/// What the observation pass collects (behind a mutex: `observe` runs on many threads).
#[derive(Default)]
struct Observed {
    /// Distinct (text hash, image hash) pairs.
    pairs: HashSet<(u64, u128)>,
    /// Occurrences of each unigram and bigram hash.
    ngram_counts: HashMap<u64, u64>,
    /// The n-gram hashes of each distinct candidate text.
    text_ngrams: HashMap<u64, Box<[u64]>>,
    candidates: Vec<Candidate>,
    /// pHash per candidate image; `None` when the full decode failed.
    phashes: HashMap<u128, Option<u64>>,
    /// Shard path → id, in first-seen order (ids are only names; order comes from paths).
    shard_ids: HashMap<PathBuf, u32>,
    /// Embedding per candidate image when a model decides near duplicates; `None` when the
    /// model could not decode it.
    embeddings: HashMap<u128, Option<Box<[f32]>>>,
    /// Candidate images handed to the embedding queue (not exchanged between ranks).
    queued: HashSet<u128>,
}

/// The decision tables built from the observation.
#[derive(Default)]
struct Tables {
    texts_per_image: HashMap<u128, u64>,
    images_per_text: HashMap<u64, u64>,
    rare_texts: HashSet<u64>,
    undecodable: HashSet<u128>,
    shard_ids: HashMap<PathBuf, u32>,
    /// The sample (shard id, key) kept for each image that survives deduplication.
    representatives: HashMap<u128, (u32, String)>,
    near_duplicates: HashSet<u128>,
    stats: serde_json::Value,
}

/// The ALIGN stage (see the module doc).
pub struct AlignStage {
    cfg: AlignConfig,
    observed: Mutex<Observed>,
    /// Set when a model decides near duplicates.
    embed_queue: Option<EmbedQueue>,
    tables: Tables,
}

impl AlignStage {
    /// A stage applying `cfg`'s rules (validate it first).
    pub fn new(cfg: &AlignConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            observed: Mutex::new(Observed::default()),
            embed_queue: None,
            tables: Tables::default(),
        }
    }

    /// A stage deciding near duplicates by `embedder`'s image embeddings (the config's
    /// `near_duplicate_checkpoint`) instead of the pHash.
    pub fn with_embedder(cfg: &AlignConfig, embedder: Arc<dyn ImageEmbedder>) -> Self {
        Self {
            embed_queue: Some(EmbedQueue::new(embedder, cfg.embed_batch_size)),
            ..Self::new(cfg)
        }
    }

    /// The image bytes and the text's unigrams, or the drop reason.
    fn parse<'a>(&self, sample: &'a RawSample) -> Result<Parsed<'a>, &'static str> {
        let image = IMAGE_EXTENSIONS
            .iter()
            .find_map(|ext| sample.members.get(*ext))
            .ok_or("missing_image")?;
        let bytes = sample.members.get(&self.cfg.caption_member).ok_or("missing_caption")?;
        if bytes.len() > self.cfg.max_caption_bytes {
            return Err("caption_too_long");
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "invalid_caption")?;
        Ok(Parsed {
            image,
            unigrams: text::unigrams(text),
        })
    }

    /// The rules that look at this sample alone (image header and text length).
    fn sample_rules(&self, parsed: &Parsed) -> Result<(), &'static str> {
        let (width, height) = image_dimensions(parsed.image).ok_or("undecodable_image")?;
        let (shorter, longer) = (width.min(height), width.max(height));
        if shorter <= self.cfg.shorter_side_above {
            return Err("small_image");
        }
        if f64::from(longer) / f64::from(shorter) >= self.cfg.aspect_ratio_below {
            return Err("aspect_ratio");
        }
        let words = parsed.unigrams.len();
        if words < self.cfg.min_unigrams || words > self.cfg.max_unigrams {
            return Err("text_length");
        }
        Ok(())
    }

    /// The pHash of `image`, `None` when it cannot be decoded within the pixel limit.
    fn phash_of(&self, image: &[u8]) -> Option<u64> {
        dataloader::decode_rgb(image, self.cfg.max_pixels)
            .ok()
            .map(phash::phash)
    }

    /// Turn the observation into decision tables.
    fn build_tables(&self, observed: Observed) -> Tables {
        let Observed {
            pairs,
            ngram_counts,
            text_ngrams,
            mut candidates,
            phashes,
            shard_ids,
            embeddings,
            queued: _,
        } = observed;
        let mut texts_per_image: HashMap<u128, u64> = HashMap::new();
        let mut images_per_text: HashMap<u64, u64> = HashMap::new();
        for &(text, image) in &pairs {
            *texts_per_image.entry(image).or_default() += 1;
            *images_per_text.entry(text).or_default() += 1;
        }
        drop(pairs);

        let min_frequency = kth_largest(ngram_counts.values().copied().collect(), self.cfg.rare_token_top_k);
        let rare_texts: HashSet<u64> = text_ngrams
            .iter()
            .filter(|(_, ngrams)| {
                ngrams
                    .iter()
                    .any(|h| ngram_counts.get(h).copied().unwrap_or(0) < min_frequency)
            })
            .map(|(&text, _)| text)
            .collect();
        let undecodable: HashSet<u128> = phashes
            .iter()
            .filter(|(_, p)| p.is_none())
            .map(|(&image, _)| image)
            .chain(embeddings.iter().filter(|(_, e)| e.is_none()).map(|(&image, _)| image))
            .collect();

        // Deduplicate among the candidates that pass every other rule, in (shard path, key)
        // order, so the first copy wins whatever the threads did.
        let mut shard_order: Vec<(&PathBuf, u32)> = shard_ids.iter().map(|(p, &id)| (p, id)).collect();
        shard_order.sort();
        let mut shard_rank = vec![0usize; shard_order.len()];
        for (rank, (_, id)) in shard_order.iter().enumerate() {
            shard_rank[*id as usize] = rank;
        }
        candidates.retain(|c| {
            !undecodable.contains(&c.image)
                && texts_per_image.get(&c.image).copied().unwrap_or(0) <= self.cfg.max_texts_per_image
                && images_per_text.get(&c.text).copied().unwrap_or(0) <= self.cfg.max_images_per_text
                && !rare_texts.contains(&c.text)
        });
        candidates.sort_by(|a, b| (shard_rank[a.shard as usize], &a.key).cmp(&(shard_rank[b.shard as usize], &b.key)));
        let survivors = candidates.len();
        let mut representatives: HashMap<u128, (u32, String)> = HashMap::new();
        let mut near_duplicates: HashSet<u128> = HashSet::new();
        let mut index = mih::NearIndex::new(self.cfg.near_duplicate_max_distance);
        let mut by_embedding = CosineIndex::new(self.cfg.near_duplicate_min_cosine);
        for candidate in candidates {
            if representatives.contains_key(&candidate.image) || near_duplicates.contains(&candidate.image) {
                continue;
            }
            if self.cfg.drop_near_duplicates && self.embed_queue.is_some() {
                if let Some(Some(embedding)) = embeddings.get(&candidate.image) {
                    if by_embedding.has_near(embedding) {
                        near_duplicates.insert(candidate.image);
                        continue;
                    }
                    by_embedding.insert(embedding);
                }
            } else if self.cfg.drop_near_duplicates {
                if let Some(Some(hash)) = phashes.get(&candidate.image) {
                    if index.find_near(*hash).is_some() {
                        near_duplicates.insert(candidate.image);
                        continue;
                    }
                    index.insert(*hash);
                }
            }
            representatives.insert(candidate.image, (candidate.shard, candidate.key));
        }

        let stats = serde_json::json!({
            "distinct_images": texts_per_image.len(),
            "distinct_texts": images_per_text.len(),
            "distinct_ngrams": ngram_counts.len(),
            "vocabulary_min_frequency": min_frequency,
            "vocabulary_size": ngram_counts.values().filter(|&&c| c >= min_frequency).count(),
            "images_over_max_texts": texts_per_image.values().filter(|&&c| c > self.cfg.max_texts_per_image).count(),
            "texts_over_max_images": images_per_text.values().filter(|&&c| c > self.cfg.max_images_per_text).count(),
            "rare_texts": rare_texts.len(),
            "dedup_candidates": survivors,
            "images_kept": representatives.len(),
            "near_duplicate_images": near_duplicates.len(),
            "undecodable_images": undecodable.len(),
            "near_duplicate_method": if self.embed_queue.is_some() { "embedding" } else { "phash" },
            "config": {
                "shorter_side_above": self.cfg.shorter_side_above,
                "aspect_ratio_below": self.cfg.aspect_ratio_below,
                "max_texts_per_image": self.cfg.max_texts_per_image,
                "max_images_per_text": self.cfg.max_images_per_text,
                "min_unigrams": self.cfg.min_unigrams,
                "max_unigrams": self.cfg.max_unigrams,
                "rare_token_top_k": self.cfg.rare_token_top_k,
                "drop_duplicates": self.cfg.drop_duplicates,
                "drop_near_duplicates": self.cfg.drop_near_duplicates,
                "near_duplicate_max_distance": self.cfg.near_duplicate_max_distance,
                "near_duplicate_min_cosine": self.cfg.near_duplicate_min_cosine,
                "near_duplicate_checkpoint": self.cfg.near_duplicate_checkpoint,
            },
        });
        Tables {
            texts_per_image,
            images_per_text,
            rare_texts,
            undecodable,
            shard_ids,
            representatives,
            near_duplicates,
            stats,
        }
    }
}

/// Width and height from the image header alone (no pixel decode); `None` when the format
/// is unknown, the header is broken, or a side is zero.
fn image_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let (width, height) = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()?;
    (width > 0 && height > 0).then_some((width, height))
}

/// The first 128 bits of the SHA-256 of the image bytes.
fn image_hash(bytes: &[u8]) -> u128 {
    let digest = Sha256::digest(bytes);
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

/// The `k`-th largest of `values` (1-based); 0 when there are fewer than `k`, so that every
/// value is at least it.
fn kth_largest(mut values: Vec<u64>, k: u64) -> u64 {
    let Ok(k) = usize::try_from(k) else { return 0 };
    if k == 0 || values.len() < k {
        return 0;
    }
    let (_, kth, _) = values.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
    *kth
}

impl Stage for AlignStage {
    fn kind(&self) -> &'static str {
        "align"
    }

    fn drop_reasons(&self) -> &'static [&'static str] {
        DROP_REASONS
    }

    /// Two counts: samples that entered the global statistics, and those that passed the
    /// per-sample rules. The tables themselves live in the stage (see the module doc).
    fn observation_len(&self) -> usize {
        2
    }

    fn observe(&self, sample: &RawSample, counts: &mut [u64]) {
        let Ok(parsed) = self.parse(sample) else { return };
        counts[0] += 1;
        let image = image_hash(parsed.image);
        let text = text::text_hash(&parsed.unigrams);
        let ngrams = text::ngram_hashes(&parsed.unigrams);
        let candidate = self.sample_rules(&parsed).is_ok();
        if candidate {
            counts[1] += 1;
        }
        if let (Some(queue), true) = (&self.embed_queue, candidate && self.cfg.drop_near_duplicates) {
            // Each distinct candidate image is embedded once, in batches.
            if lock(&self.observed).queued.insert(image) {
                queue.push(image, parsed.image, &self.observed);
            }
        }
        // Decode for the pHash outside the lock, once per distinct image where possible
        // (two threads may both decode the same new image; they get the same hash).
        let needs_phash = candidate
            && self.cfg.drop_near_duplicates
            && self.embed_queue.is_none()
            && !lock(&self.observed).phashes.contains_key(&image);
        let new_phash = needs_phash.then(|| self.phash_of(parsed.image));

        let mut observed = lock(&self.observed);
        observed.pairs.insert((text, image));
        for &h in &ngrams {
            *observed.ngram_counts.entry(h).or_default() += 1;
        }
        if !candidate {
            return;
        }
        if let Some(hash) = new_phash {
            observed.phashes.insert(image, hash);
        }
        observed.text_ngrams.entry(text).or_insert_with(|| {
            let mut distinct = ngrams;
            distinct.sort_unstable();
            distinct.dedup();
            distinct.into_boxed_slice()
        });
        let next_id = observed.shard_ids.len() as u32;
        let shard = *observed.shard_ids.entry(sample.shard.clone()).or_insert(next_id);
        observed.candidates.push(Candidate {
            shard,
            key: sample.key.clone(),
            image,
            text,
        });
    }

    fn exchange_observation(&mut self, reducer: &dyn CountReducer) -> Result<(), CurateError> {
        let observed = self.observed.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(queue) = &self.embed_queue {
            queue.finish(observed)?;
        }
        if reducer.world_size() == 1 {
            return Ok(());
        }
        let local = exchange::encode(observed);
        let parts = reducer.all_gather_bytes(&local)?;
        drop(local);
        for (rank, part) in parts.iter().enumerate() {
            if rank != reducer.rank() {
                exchange::merge(observed, part, rank)?;
            }
        }
        Ok(())
    }

    fn set_observation(&mut self, _counts: Vec<u64>) {
        let observed = std::mem::take(&mut *lock(&self.observed));
        self.tables = self.build_tables(observed);
    }

    fn decide(&self, sample: &RawSample, _tally: &mut [u64]) -> Decision {
        let parsed = match self.parse(sample) {
            Ok(parsed) => parsed,
            Err(reason) => return Decision::Drop(reason),
        };
        if let Err(reason) = self.sample_rules(&parsed) {
            return Decision::Drop(reason);
        }
        let tables = &self.tables;
        let image = image_hash(parsed.image);
        let text = text::text_hash(&parsed.unigrams);
        if tables.undecodable.contains(&image) {
            return Decision::Drop("undecodable_image");
        }
        if tables.texts_per_image.get(&image).copied().unwrap_or(0) > self.cfg.max_texts_per_image {
            return Decision::Drop("image_many_texts");
        }
        if tables.images_per_text.get(&text).copied().unwrap_or(0) > self.cfg.max_images_per_text {
            return Decision::Drop("text_many_images");
        }
        if tables.rare_texts.contains(&text) {
            return Decision::Drop("rare_token");
        }
        if tables.near_duplicates.contains(&image) {
            return Decision::Drop("near_duplicate");
        }
        if self.cfg.drop_duplicates {
            if let Some((shard, key)) = tables.representatives.get(&image) {
                let same_shard = tables.shard_ids.get(&sample.shard) == Some(shard);
                if !(same_shard && *key == sample.key) {
                    return Decision::Drop("duplicate");
                }
            }
        }
        Decision::Keep
    }

    fn stats(&self, _tally: &[u64]) -> serde_json::Value {
        self.tables.stats.clone()
    }
}

/// The observation lock; a panic on another thread cannot leave the tables half-updated
/// in a way that matters here (the run fails anyway), so a poisoned lock is still used.
fn lock(observed: &Mutex<Observed>) -> std::sync::MutexGuard<'_, Observed> {
    observed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
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
        let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
        for (key, image, text) in samples {
            for (ext, data) in [("png", image.as_slice()), ("txt", text.as_bytes())] {
                let mut header = tar::Header::new_gnu();
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                builder.append_data(&mut header, format!("{key}.{ext}"), data).unwrap();
            }
        }
        builder.finish().unwrap();
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
}
