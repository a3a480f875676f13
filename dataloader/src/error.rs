//! Typed errors of the crate and the per-reason counts of skipped samples.
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// An error that stops an operation (a bad shard spec, an unwritable output, ...).
///
/// Bad *data* inside shards is not an error: it is skipped and counted in [`SkipCounts`].
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A shard spec that cannot be expanded (unbalanced brace, bad range, empty).
    #[error("bad shard spec {spec:?}: {reason}")]
    BadSpec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A shard named by a spec does not exist.
    #[error("shard not found: {}", path.display())]
    MissingShard {
        /// The missing file.
        path: PathBuf,
    },
    /// An I/O error on a named file or folder.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file whose content is not what was expected (a manifest without the needed columns,
    /// img2dataset stats without `successes`, an input of unknown kind).
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A JSON file (sizes.json, img2dataset stats) that does not parse as expected.
    #[error("{}: {what}: {source}", path.display())]
    BadJson {
        /// The file.
        path: PathBuf,
        /// What was expected of it.
        what: &'static str,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A CSV/TSV manifest that cannot be opened or whose header row cannot be read.
    #[error("{}: {source}", path.display())]
    BadCsv {
        /// The file.
        path: PathBuf,
        /// The reader's error.
        source: csv::Error,
    },
    /// A manifest that is not a readable parquet file.
    #[error("{}: not a readable parquet file: {source}", path.display())]
    BadParquet {
        /// The file.
        path: PathBuf,
        /// The reader's error.
        source: parquet::errors::ParquetError,
    },
    /// A loader or writer setting that cannot work.
    #[error("bad config: {field}: {reason}")]
    BadConfig {
        /// The offending field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl DataError {
    /// `DataError::Io` for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Why a sample, a manifest row or a shard was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// No `jpg|jpeg|png|webp` member (sample) or the image file does not exist (manifest row).
    MissingImage,
    /// A zero-byte image.
    EmptyImage,
    /// Image bytes that do not decode (or an unsupported format).
    UndecodableImage,
    /// Width × height over the configured pixel limit, or a zero dimension.
    ImageTooLarge,
    /// No `.txt` member / no caption field / an empty caption.
    MissingCaption,
    /// Caption bytes that are not UTF-8 or a `.json` that does not parse.
    InvalidCaption,
    /// A `.cls` member that is not an integer.
    InvalidLabel,
    /// A member whose data ends before its header's size (truncated tar); ends the shard.
    TruncatedMember,
    /// The same extension twice within one sample.
    DuplicateMember,
    /// A tar read error (corrupt header, I/O error); ends the shard.
    ShardReadError,
    /// A shard that cannot be opened.
    UnreadableShard,
    /// A manifest row that cannot be parsed (bad JSON line, missing column).
    InvalidRow,
    /// An image file that exists but cannot be read.
    UnreadableImage,
    /// A manifest key that is empty or contains `.` or `/` (it would break tar grouping).
    InvalidKey,
    /// A manifest key already used by an earlier row.
    DuplicateKey,
    /// A sample with a tar member (or a manifest row with an image file) over the
    /// `max_member_bytes` limit; the member is drained unread and the shard goes on.
    OversizedMember,
    /// A shard whose tar stream (after decompression) is longer than `max_shard_bytes`;
    /// its rest is skipped.
    OversizedShard,
}

impl SkipReason {
    /// Every reason, in declaration order.
    pub const ALL: [SkipReason; 17] = [
        SkipReason::MissingImage,
        SkipReason::EmptyImage,
        SkipReason::UndecodableImage,
        SkipReason::ImageTooLarge,
        SkipReason::MissingCaption,
        SkipReason::InvalidCaption,
        SkipReason::InvalidLabel,
        SkipReason::TruncatedMember,
        SkipReason::DuplicateMember,
        SkipReason::ShardReadError,
        SkipReason::UnreadableShard,
        SkipReason::InvalidRow,
        SkipReason::UnreadableImage,
        SkipReason::InvalidKey,
        SkipReason::DuplicateKey,
        SkipReason::OversizedMember,
        SkipReason::OversizedShard,
    ];

    /// Stable snake_case name, used in logs and metrics files.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::MissingImage => "missing_image",
            SkipReason::EmptyImage => "empty_image",
            SkipReason::UndecodableImage => "undecodable_image",
            SkipReason::ImageTooLarge => "image_too_large",
            SkipReason::MissingCaption => "missing_caption",
            SkipReason::InvalidCaption => "invalid_caption",
            SkipReason::InvalidLabel => "invalid_label",
            SkipReason::TruncatedMember => "truncated_member",
            SkipReason::DuplicateMember => "duplicate_member",
            SkipReason::ShardReadError => "shard_read_error",
            SkipReason::UnreadableShard => "unreadable_shard",
            SkipReason::InvalidRow => "invalid_row",
            SkipReason::UnreadableImage => "unreadable_image",
            SkipReason::InvalidKey => "invalid_key",
            SkipReason::DuplicateKey => "duplicate_key",
            SkipReason::OversizedMember => "oversized_member",
            SkipReason::OversizedShard => "oversized_shard",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many samples (or shards, for the shard-level reasons) were skipped, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkipCounts {
    counts: BTreeMap<SkipReason, u64>,
}

impl SkipCounts {
    /// No skips.
    pub fn new() -> Self {
        Self::default()
    }
    /// Count one skip for `reason`.
    pub fn add(&mut self, reason: SkipReason) {
        self.add_n(reason, 1);
    }
    /// Count `n` skips for `reason`.
    pub fn add_n(&mut self, reason: SkipReason, n: u64) {
        if n > 0 {
            *self.counts.entry(reason).or_insert(0) += n;
        }
    }
    /// Add all counts of `other`.
    pub fn merge(&mut self, other: &SkipCounts) {
        for (&reason, &n) in &other.counts {
            *self.counts.entry(reason).or_insert(0) += n;
        }
    }
    /// The count for `reason` (0 if never seen).
    pub fn get(&self, reason: SkipReason) -> u64 {
        self.counts.get(&reason).copied().unwrap_or(0)
    }
    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
    /// True when nothing was skipped.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }
    /// `(reason, count)` pairs with a non-zero count, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (SkipReason, u64)> + '_ {
        self.counts.iter().filter(|(_, &n)| n > 0).map(|(&r, &n)| (r, n))
    }
    /// `{"reason": count, ...}`, for metrics files.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.iter()
                .map(|(r, n)| (r.as_str().to_string(), serde_json::Value::from(n)))
                .collect(),
        )
    }
}

impl fmt::Display for SkipCounts {
    /// `reason=count, ...` or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self.iter().map(|(r, n)| format!("{r}={n}")).collect();
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_merge_and_display() {
        let mut a = SkipCounts::new();
        assert!(a.is_empty());
        assert_eq!(a.to_string(), "none");
        a.add(SkipReason::MissingCaption);
        a.add(SkipReason::MissingCaption);
        let mut b = SkipCounts::new();
        b.add(SkipReason::EmptyImage);
        a.merge(&b);
        assert_eq!(a.get(SkipReason::MissingCaption), 2);
        assert_eq!(a.total(), 3);
        assert_eq!(a.to_string(), "empty_image=1, missing_caption=2");
        assert_eq!(a.to_json()["missing_caption"], 2);
    }

    #[test]
    fn unparsable_files_keep_the_parser_error_as_source() {
        use std::error::Error;
        let dir = tempfile::tempdir().unwrap();
        let sizes = dir.path().join(crate::sizes::SIZES_FILE);
        std::fs::write(&sizes, "[1, 2]").unwrap();
        let err = crate::sizes::read_sizes(dir.path()).unwrap_err();
        let parser = serde_json::from_str::<BTreeMap<String, u64>>("[1, 2]").unwrap_err();
        let want = format!("{}: expected {{\"shard.tar\": count, ...}}: {parser}", sizes.display());
        assert_eq!(err.to_string(), want);
        assert_eq!(err.source().map(|s| s.to_string()), Some(parser.to_string()));

        let table = dir.path().join("rows.parquet");
        std::fs::write(&table, "not parquet").unwrap();
        let err = crate::manifest::read_manifest(&table).err().unwrap();
        let message = err.to_string();
        let prefix = format!("{}: not a readable parquet file: ", table.display());
        assert!(message.starts_with(&prefix), "{message}");
        assert_eq!(
            err.source().map(|s| s.to_string()).as_deref(),
            Some(&message[prefix.len()..])
        );

        let csv = dir.path().join("missing.csv");
        let err = crate::manifest::read_manifest(&csv).err().unwrap();
        let message = err.to_string();
        assert!(message.starts_with(&format!("{}: ", csv.display())), "{message}");
        assert!(err.source().is_some(), "{message}");
    }
}
