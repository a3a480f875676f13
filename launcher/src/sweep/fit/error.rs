//! Why a scaling-law fit could not be made.
use std::path::PathBuf;

/// Why a scaling-law fit could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SweepFitError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The results file is not valid CSV.
    #[error("{path}: invalid CSV: {source}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: csv::Error,
    },
    /// A column named on the command line is not in the CSV header.
    #[error("{path}: no column `{column}` (columns: {available})")]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The missing column.
        column: String,
        /// The header's columns, comma-separated.
        available: String,
    },
    /// A cell holds a value that cannot be used.
    #[error("{path}: line {line}, column `{column}`: bad value {value:?}: {reason}")]
    BadValue {
        /// The file.
        path: PathBuf,
        /// 1-based line in the file (the header is line 1).
        line: u64,
        /// The column.
        column: String,
        /// The cell as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A point given directly (not from a file) is unusable.
    #[error("point {index} ({group}): {reason}")]
    BadPoint {
        /// Index in the input.
        index: usize,
        /// The point's group.
        group: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Not enough points for a fit.
    #[error("{what}: needs at least {needed} points with distinct compute, got {got}")]
    TooFewPoints {
        /// Which fit.
        what: &'static str,
        /// Points needed.
        needed: usize,
        /// Points available.
        got: usize,
    },
    /// An option is out of range.
    #[error("fit option `{field}`: {reason}")]
    BadOption {
        /// The option.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The nonlinear fit did not produce finite parameters.
    #[error("{what}: fit failed: {reason}")]
    FitFailed {
        /// Which fit.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// fit.json could not be serialised.
    #[error("{path}: cannot write JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
}
