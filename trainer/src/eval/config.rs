//! The `[eval]` section of a train config: zero-shot and retrieval evaluation while the
//! run trains (every `eval.every` steps and at the end), and the lists it reads.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::field::FieldError;

/// The template used when no templates file is given (as `ferroclip eval`).
pub const DEFAULT_TEMPLATE: &str = "a photo of a {c}.";

/// The `[eval]` section; nothing set: no evaluation during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate every this many steps (0: only at the end).
    pub every: u64,
    /// Evaluate the final weights.
    pub at_end: bool,
    /// Zero-shot shards (image + `.cls`), with `classnames`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zeroshot: Option<String>,
    /// Class names, one per line (label i = line i + 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classnames: Option<PathBuf>,
    /// Prompt templates with `{c}`, one per line (default: "a photo of a {c}.").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub templates: Option<PathBuf>,
    /// Retrieval shards (image + `.txt`, a caption per line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<String>,
    /// The k of recall@k.
    pub recall_k: Vec<usize>,
    /// Images (and texts) encoded per forward pass.
    pub batch_size: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every: 0,
            at_end: true,
            zeroshot: None,
            classnames: None,
            templates: None,
            retrieval: None,
            recall_k: vec![1, 5, 10],
            batch_size: 64,
        }
    }
}

impl EvalConfig {
    /// Whether the section is left out (kept out of the resolved config then).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Whether there is anything to evaluate.
    pub fn enabled(&self) -> bool {
        self.zeroshot.is_some() || self.retrieval.is_some()
    }

    /// Checks the section; errors name the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.zeroshot.is_some() != self.classnames.is_some() {
            return Err(FieldError::new(
                "eval.classnames",
                "eval.zeroshot and eval.classnames go together (labels index the class names)",
            ));
        }
        if self.templates.is_some() && self.zeroshot.is_none() {
            return Err(FieldError::new("eval.templates", "templates are for eval.zeroshot"));
        }
        if self.batch_size == 0 {
            return Err(FieldError::new("eval.batch_size", "must be at least 1"));
        }
        if self.recall_k.is_empty() || self.recall_k.contains(&0) {
            return Err(FieldError::new("eval.recall_k", "give one or more k ≥ 1"));
        }
        if !self.enabled() && self.every > 0 {
            return Err(FieldError::new(
                "eval.every",
                "nothing to evaluate: set eval.zeroshot (with eval.classnames) and/or eval.retrieval",
            ));
        }
        Ok(())
    }
}

/// Class names, one per line; trailing blank lines are dropped, a blank line inside is an
/// error (labels are line numbers).
pub fn read_classnames(path: &Path) -> Result<Vec<String>, FieldError> {
    let bad = |why: String| FieldError::new("classnames", format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut names: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    while names.last().is_some_and(|n| n.is_empty()) {
        names.pop();
    }
    if let Some(line) = names.iter().position(|n| n.is_empty()) {
        return Err(bad(format!(
            "line {} is empty (labels are line numbers, so every line must name a class)",
            line + 1
        )));
    }
    if names.is_empty() {
        return Err(bad("no class names".into()));
    }
    Ok(names)
}

/// Templates, one per non-blank line, each with a `{c}` placeholder.
pub fn read_templates(path: &Path) -> Result<Vec<String>, FieldError> {
    let bad = |why: String| FieldError::new("templates", format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut templates = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if !line.contains("{c}") {
            return Err(bad(format!(
                "line {} ({line:?}) has no {{c}} placeholder for the class name",
                number + 1
            )));
        }
        templates.push(line.to_string());
    }
    if templates.is_empty() {
        return Err(bad("no templates".into()));
    }
    Ok(templates)
}
