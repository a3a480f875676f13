//! Config-grid sweeps: grid → runs → results → scaling-law fit → plot (docs/architecture.md §8).
//!
//! - [`grid`]: the sweep file (`configs/sweeps/*.toml`) and its expansion into
//!   [`grid::RunSpec`]s with stable names and `key=value` overrides of the base
//!   train config.
//! - [`runner`]: runs the runs' steps (train, eval) as processes, K at a time,
//!   skipping finished ones, retrying failed ones, with a progress view.
//! - [`collect`]: one `results.csv` row per finished run.
//! - [`fit`], [`plot`]: scaling-law fits and their figure.
//!
//! The launcher does not read train configs beyond the TOML tree: MACs per sample
//! and samples seen come from the caller (the binary computes them with the trainer).

use std::path::PathBuf;

pub mod collect;
pub mod fit;
pub mod grid;
pub mod plot;
pub mod runner;

/// Errors of sweep planning, running and collecting; each names the file, field or run.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The sweep file is not valid TOML or has a field of the wrong type.
    #[error("sweep file {path}: {message}")]
    Parse {
        /// The sweep file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The sweep file parses but asks for something impossible.
    #[error("sweep file {path}: {field}: {message}")]
    Invalid {
        /// The sweep file.
        path: PathBuf,
        /// The offending field, e.g. `axis[1].values`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A run's output file could not be understood.
    #[error("run {run}: {path}: {message}")]
    RunOutput {
        /// The run name.
        run: String,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Some runs still failed after their retries.
    #[error("{} run(s) failed: {}", .failed.len(), .failed.join("; "))]
    RunsFailed {
        /// One line per failed run: name, step and log file.
        failed: Vec<String>,
    },
    /// The sweep was stopped by a signal; running steps were stopped and resume on re-run.
    #[error("interrupted by {name}; running steps were stopped and resume on the next `sweep run`", name = crate::signal_name(*.signal))]
    Interrupted {
        /// The signal (SIGTERM when stopped through a StopHandle).
        signal: i32,
    },
}
