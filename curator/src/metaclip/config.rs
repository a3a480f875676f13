//! The `metaclip` stage's section of a curate config.
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::metadata::Metadata;
use crate::error::CurateError;

/// MetaCLIP's default balancing threshold (pairs per entry).
pub const DEFAULT_T: u64 = 20_000;

/// The `[[stage]] kind = "metaclip"` section of a curate config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaclipConfig {
    /// Name in logs and the report (default `metaclip`).
    #[serde(default)]
    pub name: Option<String>,
    /// Balancing threshold: entries matched by more than `t` texts are sampled down to ≈ t.
    #[serde(default = "default_t")]
    pub t: u64,
    /// Seed of the balancing draws.
    #[serde(default)]
    pub seed: u64,
    /// Include the WordNet synset names.
    #[serde(default = "default_true")]
    pub wordnet: bool,
    /// Folder of the WordNet database (`data.noun`, ...).
    #[serde(default = "crate::fields::default_wordnet_dir")]
    pub wordnet_dir: PathBuf,
    /// Include the entries `0`..`99`, as MetaCLIP's metadata does.
    #[serde(default = "default_true")]
    pub numbers: bool,
    /// User entry lists (unigrams, bigrams, titles): one entry per line, or a `.json` list.
    /// Relative paths are relative to the config file.
    #[serde(default)]
    pub entry_files: Vec<PathBuf>,
    /// Extension of the member holding the text.
    #[serde(default = "crate::fields::default_caption_member")]
    pub caption_member: String,
    /// Longer texts are dropped (`caption_too_long`).
    #[serde(default = "crate::fields::default_max_caption_bytes")]
    pub max_caption_bytes: usize,
}

fn default_t() -> u64 {
    DEFAULT_T
}
fn default_true() -> bool {
    true
}

impl Default for MetaclipConfig {
    fn default() -> Self {
        Self {
            name: None,
            t: DEFAULT_T,
            seed: 0,
            wordnet: true,
            wordnet_dir: crate::fields::default_wordnet_dir(),
            numbers: true,
            entry_files: Vec::new(),
            caption_member: crate::fields::default_caption_member(),
            max_caption_bytes: crate::fields::DEFAULT_MAX_CAPTION_BYTES,
        }
    }
}

impl MetaclipConfig {
    /// Check the values; `at` prefixes field names in errors (`stage[0]`).
    pub fn validate(&self, at: &str) -> Result<(), CurateError> {
        let bad = |field: &str, reason: &str| CurateError::bad_field(at, field, reason);
        if self.t == 0 {
            return Err(bad("t", "must be at least 1"));
        }
        crate::fields::validate_caption_fields(at, &self.caption_member, self.max_caption_bytes)?;
        if !self.wordnet && !self.numbers && self.entry_files.is_empty() {
            return Err(bad(
                "entry_files",
                "no metadata: enable wordnet or numbers, or list entry files",
            ));
        }
        Ok(())
    }

    /// The metadata this config describes; relative entry files are resolved against `base_dir`.
    pub fn metadata(&self, base_dir: &Path) -> Result<Metadata, CurateError> {
        let mut metadata = Metadata::builtin(self.numbers, self.wordnet.then_some(self.wordnet_dir.as_path()))?;
        for file in &self.entry_files {
            metadata.extend_from_file(&base_dir.join(file))?;
        }
        Ok(metadata)
    }
}
