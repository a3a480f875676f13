//! Errors of the training side. Each names the file, field or step at fault.

use std::path::PathBuf;

/// What can go wrong while configuring or running training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A config value is invalid; the message names the field.
    #[error("config: {0}")]
    Config(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The data pipeline failed (no shards, no usable samples, ...).
    #[error("data: {0}")]
    Data(String),
    /// Building, loading or saving the model failed.
    #[error("model: {0}")]
    Model(String),
    /// Rank discovery or a collective operation failed.
    #[error("distributed: {0}")]
    Dist(String),
    /// Too many consecutive steps had a non-finite loss or gradient.
    #[error("training diverged: {in_a_row} non-finite steps in a row (at step {step})")]
    Diverged {
        /// 0-based step of the last failure.
        step: u64,
        /// How many in a row.
        in_a_row: u64,
    },
}
