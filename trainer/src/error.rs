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
    /// Saving, finding or loading a checkpoint failed; the message names the folder.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// SIGTERM or SIGINT arrived: the run saved a checkpoint and stopped.
    #[error("stopped by {signal} after step {step}; checkpoint {}", checkpoint.display())]
    Interrupted {
        /// `SIGTERM` or `SIGINT`.
        signal: &'static str,
        /// Optimizer steps done.
        step: u64,
        /// The checkpoint a restart resumes from.
        checkpoint: PathBuf,
    },
    /// Too many consecutive steps had a non-finite loss or gradient.
    #[error("training diverged: {in_a_row} non-finite steps in a row (at step {step})")]
    Diverged {
        /// 0-based step of the last failure.
        step: u64,
        /// How many in a row.
        in_a_row: u64,
    },
}
