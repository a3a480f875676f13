//! Config fields that several stages share (the caption member, the caption size cap, the
//! WordNet folder): their serde defaults, their checks, and reading the caption they name
//! from a sample. Each stage's own section lives with the stage (`metaclip/config.rs`,
//! `klite/config.rs`, `align/config.rs`, `dfn/config.rs`); the top-level [`crate::config`]
//! composes them.
use dataloader::RawSample;

use crate::error::CurateError;

/// Captions longer than this many bytes are dropped as `caption_too_long` by default.
pub const DEFAULT_MAX_CAPTION_BYTES: usize = 1 << 20;

/// serde default of the stages' `caption_member`.
pub(crate) fn default_caption_member() -> String {
    "txt".into()
}

/// serde default of the stages' `max_caption_bytes`.
pub(crate) fn default_max_caption_bytes() -> usize {
    DEFAULT_MAX_CAPTION_BYTES
}

/// serde default of the stages' `wordnet_dir`.
pub(crate) fn default_wordnet_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(crate::metaclip::metadata::DEFAULT_WORDNET_DIR)
}

/// The checks of the caption fields every text stage has; `at` prefixes field names.
pub(crate) fn validate_caption_fields(
    at: &str,
    caption_member: &str,
    max_caption_bytes: usize,
) -> Result<(), CurateError> {
    let bad = |field: &str, reason: &str| CurateError::bad_field(at, field, reason);
    if caption_member.is_empty() || caption_member.contains('.') {
        return Err(bad("caption_member", "must be a member extension such as \"txt\""));
    }
    if max_caption_bytes == 0 {
        return Err(bad("max_caption_bytes", "must be at least 1"));
    }
    Ok(())
}

/// The text of the sample's `caption_member`, or the drop reason: `missing_caption`,
/// `caption_too_long` (over `max_caption_bytes`), `invalid_caption` (not UTF-8).
pub(crate) fn caption_text<'a>(
    sample: &'a RawSample,
    caption_member: &str,
    max_caption_bytes: usize,
) -> Result<&'a str, &'static str> {
    let bytes = sample.members.get(caption_member).ok_or("missing_caption")?;
    if bytes.len() > max_caption_bytes {
        return Err("caption_too_long");
    }
    std::str::from_utf8(bytes).map_err(|_| "invalid_caption")
}

/// [`caption_text`], and `empty_caption` for a text of whitespace only.
pub(crate) fn nonempty_caption_text<'a>(
    sample: &'a RawSample,
    caption_member: &str,
    max_caption_bytes: usize,
) -> Result<&'a str, &'static str> {
    let text = caption_text(sample, caption_member, max_caption_bytes)?;
    if text.trim().is_empty() {
        return Err("empty_caption");
    }
    Ok(text)
}
