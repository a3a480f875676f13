//! The crate's typed error: every message names the offending file, field or stage.
use std::path::PathBuf;

/// An error that stops curation. Bad *data* (an unreadable sample, an invalid caption) is
/// not an error: it is dropped and counted in the report.
#[derive(Debug, thiserror::Error)]
pub enum CurateError {
    /// A config file that does not parse (the message from `toml` names the field and line).
    #[error("{}: {reason}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A setting whose value cannot work.
    #[error("bad config: {field}: {reason}")]
    BadField {
        /// The field, as a path (`stage[0].t`).
        field: String,
        /// Why.
        reason: String,
    },
    /// A metadata (entry list) file that cannot be read or parsed.
    #[error("metadata {}: {reason}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The WordNet database is not installed where it was looked for.
    #[error(
        "WordNet not found: {} is missing; install it with `apt-get install wordnet-base` \
         (Debian/Ubuntu) or point `wordnet_dir` at a folder holding data.noun, data.verb, data.adj, data.adv",
        missing.display()
    )]
    WordNetMissing {
        /// The file that was looked for.
        missing: PathBuf,
    },
    /// An I/O error on a named file or folder.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Reading the input shards failed as a whole (a bad shard spec, ...).
    #[error("input: {0}")]
    Input(#[from] dataloader::DataError),
    /// An output shard could not be written (the message names the file).
    #[error(transparent)]
    OutputShard(dataloader::DataError),
    /// The output folder cannot be used.
    #[error("output {}: {reason}", path.display())]
    Output {
        /// The folder or file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The Aho–Corasick automaton could not be built (too many or too long entries).
    #[error("metadata automaton: {0}")]
    Automaton(String),
    /// Drawing report.png failed.
    #[error("plot {}: {reason}", path.display())]
    Plot {
        /// The image file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A DFN score file that cannot be read, or a scorer that failed.
    #[error("scores {}: {reason}", path.display())]
    Scores {
        /// The score file, or the shard being scored.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reducing counts across processes failed.
    #[error("count reduction: {0}")]
    Reduce(String),
}

impl CurateError {
    /// `CurateError::Io` for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CurateError::Io {
            path: path.into(),
            source,
        }
    }

    /// `CurateError::BadField` for `field` of the config section at `at` (`stage[0]`, `t`
    /// → `stage[0].t`).
    pub(crate) fn bad_field(at: &str, field: &str, reason: &str) -> Self {
        CurateError::BadField {
            field: format!("{at}.{field}"),
            reason: reason.into(),
        }
    }
}
