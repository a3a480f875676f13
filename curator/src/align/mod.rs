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
mod config;
mod embed;
mod exchange;
pub mod mih;
mod observed;
pub mod phash;
pub mod text;
mod text_rules;

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dataloader::loader::IMAGE_EXTENSIONS;
use dataloader::RawSample;
use sha2::{Digest, Sha256};

use crate::error::CurateError;
use crate::reduce::CountReducer;
use crate::stage::{Decision, Stage};
pub use config::{
    AlignConfig, DEFAULT_ASPECT_RATIO_BELOW, DEFAULT_MAX_IMAGES_PER_TEXT, DEFAULT_MAX_TEXTS_PER_IMAGE,
    DEFAULT_MAX_UNIGRAMS, DEFAULT_MIN_UNIGRAMS, DEFAULT_NEAR_DUPLICATE_MAX_DISTANCE, DEFAULT_NEAR_DUPLICATE_MIN_COSINE,
    DEFAULT_RARE_TOKEN_TOP_K, DEFAULT_SHORTER_SIDE_ABOVE,
};
pub use embed::ImageEmbedder;
use embed::{CosineIndex, EmbedQueue};
use observed::{lock, Candidate, Observed};
pub use text_rules::align_text_rules;
use text_rules::kth_largest;

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

/// A sample's image bytes and the unigrams of its text.
struct Parsed<'a> {
    image: &'a [u8],
    unigrams: Vec<String>,
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
        let text = crate::fields::caption_text(sample, &self.cfg.caption_member, self.cfg.max_caption_bytes)?;
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

#[cfg(test)]
mod tests;
