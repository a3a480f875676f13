//! The `dfn` stage's section of a curate config.
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::CurateError;

/// The `[[stage]] kind = "dfn"` section of a curate config. Give exactly one of `fraction`
/// and `threshold`, and a `checkpoint` to score with or saved `scores`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DfnConfig {
    /// Name in logs and the report (default `dfn`).
    #[serde(default)]
    pub name: Option<String>,
    /// Keep this fraction of the pool (DataComp's rule), in (0, 1].
    #[serde(default)]
    pub fraction: Option<f64>,
    /// Keep pairs scoring at least this (cosine similarity, in [-1, 1]).
    #[serde(default)]
    pub threshold: Option<f32>,
    /// The filtering model: a ferroclip run or checkpoint folder. Relative to the config file.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// Saved scores (a folder of `*.jsonl` written by an earlier run, or one file) used
    /// instead of scoring. Relative to the config file.
    #[serde(default)]
    pub scores: Option<PathBuf>,
    /// Pairs per forward pass.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Extension of the member holding the caption that is scored (its first line).
    #[serde(default = "crate::fields::default_caption_member")]
    pub caption_member: String,
    /// Device of the filtering model: `cpu`, `cuda`, `cuda:N` (default: cuda if available).
    #[serde(default)]
    pub device: Option<String>,
}

fn default_batch_size() -> usize {
    256
}

impl Default for DfnConfig {
    fn default() -> Self {
        Self {
            name: None,
            fraction: Some(0.3),
            threshold: None,
            checkpoint: None,
            scores: None,
            batch_size: default_batch_size(),
            caption_member: crate::fields::default_caption_member(),
            device: None,
        }
    }
}

/// How the stage's threshold is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeepRule {
    /// The top fraction of the pool.
    Fraction(f64),
    /// A fixed score.
    Threshold(f32),
}

impl DfnConfig {
    /// Check the fields; `at` names the stage (`stage[2]`).
    pub fn validate(&self, at: &str) -> Result<(), CurateError> {
        let bad = |field: &str, reason: &str| Err(CurateError::bad_field(at, field, reason));
        match (self.fraction, self.threshold) {
            (Some(_), Some(_)) => return bad("fraction", "give either fraction or threshold, not both"),
            (None, None) => return bad("fraction", "give fraction (keep the top fraction) or threshold"),
            (Some(f), None) if !(f > 0.0 && f <= 1.0) => return bad("fraction", "must be in (0, 1]"),
            (None, Some(t)) if !t.is_finite() => return bad("threshold", "must be a finite number"),
            _ => {}
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.caption_member.is_empty() {
            return bad("caption_member", "must name a member extension (txt)");
        }
        Ok(())
    }

    /// The keep rule (after [`DfnConfig::validate`]).
    pub fn rule(&self) -> KeepRule {
        match (self.fraction, self.threshold) {
            (_, Some(t)) => KeepRule::Threshold(t),
            (Some(f), None) => KeepRule::Fraction(f),
            (None, None) => KeepRule::Fraction(1.0),
        }
    }
}
