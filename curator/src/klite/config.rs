//! The `klite` stage's section of a curate config.
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::CurateError;
use crate::fields::DEFAULT_MAX_CAPTION_BYTES;

/// Default share of captions (with a glossed term) that get knowledge appended.
pub const DEFAULT_PROBABILITY: f64 = 0.5;

/// The `[[stage]] kind = "klite"` section of a curate config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KliteConfig {
    /// Name in logs and the report (default `klite`).
    #[serde(default)]
    pub name: Option<String>,
    /// Probability that a caption with a glossed term gets the knowledge appended.
    #[serde(default = "default_probability")]
    pub probability: f64,
    /// Seed of the per-sample draws.
    #[serde(default)]
    pub seed: u64,
    /// Folder of the WordNet database (`index.noun`, `data.noun`, `noun.exc`).
    #[serde(default = "crate::fields::default_wordnet_dir")]
    pub wordnet_dir: PathBuf,
    /// Extension of the member holding the text (rewritten in place).
    #[serde(default = "crate::fields::default_caption_member")]
    pub caption_member: String,
    /// Longer texts are dropped (`caption_too_long`).
    #[serde(default = "crate::fields::default_max_caption_bytes")]
    pub max_caption_bytes: usize,
}

fn default_probability() -> f64 {
    DEFAULT_PROBABILITY
}

impl Default for KliteConfig {
    fn default() -> Self {
        Self {
            name: None,
            probability: DEFAULT_PROBABILITY,
            seed: 0,
            wordnet_dir: crate::fields::default_wordnet_dir(),
            caption_member: crate::fields::default_caption_member(),
            max_caption_bytes: DEFAULT_MAX_CAPTION_BYTES,
        }
    }
}

impl KliteConfig {
    /// Check the values; `at` prefixes field names in errors (`stage[0]`).
    pub fn validate(&self, at: &str) -> Result<(), CurateError> {
        let bad = |field: &str, reason: &str| CurateError::bad_field(at, field, reason);
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(bad("probability", "must be between 0 and 1"));
        }
        crate::fields::validate_caption_fields(at, &self.caption_member, self.max_caption_bytes)?;
        Ok(())
    }
}
