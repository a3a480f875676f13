//! The `align` stage's section of a curate config; the defaults are ALIGN's numbers.
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::CurateError;

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
            max_caption_bytes: crate::fields::DEFAULT_MAX_CAPTION_BYTES,
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
        let bad = |field: &str, reason: &str| CurateError::bad_field(at, field, reason);
        crate::fields::validate_caption_fields(at, &self.caption_member, self.max_caption_bytes)?;
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
