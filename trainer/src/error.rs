//! Errors of the training side. Each names the file, field or step at fault; where
//! another module's or crate's error is the cause, it is kept as the source, and this
//! error's own message says only what it adds (print the chain, as the binary does with
//! `{:#}`, to read the whole story: `data: data.train: bad shard spec ...`).

use std::path::PathBuf;

use crate::checkpoint::CheckpointError;
use crate::dist::DistError;
use crate::field::FieldError;
use crate::model::open_clip::InteropError;
use crate::model::weights::WeightsError;
use crate::model::ModelSpecError;
use crate::optim::OptimStateMismatch;

impl From<FieldError> for TrainError {
    fn from(error: FieldError) -> Self {
        TrainError::Config(error)
    }
}

/// What can go wrong while configuring or running training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A config value is invalid; the error names the field. (Not a `#[source]`: the message
    /// is already in the text, and [`error_chain`] would print it twice.)
    #[error("config: {0}")]
    Config(FieldError),
    /// A config file does not parse, or a value in it has the wrong type or name.
    #[error("config: {}: {reason}", path.display())]
    ConfigFile {
        /// The config file.
        path: PathBuf,
        /// The parser's message, naming the field where it knows it.
        reason: String,
    },
    /// A `--set key=value` override that cannot be applied.
    #[error("config: --set {assignment}: {reason}")]
    Override {
        /// The override as given (or its key).
        assignment: String,
        /// Why it cannot be applied.
        reason: String,
    },
    /// The `model` entry of the config does not give a usable model.
    #[error("config")]
    ModelSpec(#[from] ModelSpecError),
    /// Reading or writing a file failed.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The training data cannot be read as configured.
    #[error("data: {context}")]
    Data {
        /// The field or step at fault, e.g. `data.train`.
        context: String,
        /// What the data loader reported.
        #[source]
        source: dataloader::DataError,
    },
    /// The training loader cannot start (no shards, a bad setting, a resume position of
    /// another config).
    #[error("data")]
    Loader(#[source] dataloader::DataError),
    /// The `[data]` section does not work with this run (e.g. fewer shards than ranks).
    #[error("data: {0}")]
    DataConfig(FieldError),
    /// The shards were read to the end without a single usable sample.
    #[error("data: the training shards produced no usable batch (skipped: {skipped})")]
    NoUsableBatch {
        /// The skip counts by reason, as JSON.
        skipped: String,
    },
    /// `init_from` weights cannot be loaded into the model.
    #[error("model: init_from {}", path.display())]
    InitFrom {
        /// The weights file.
        path: PathBuf,
        /// Why they do not load.
        #[source]
        source: InteropError,
    },
    /// The final weights cannot be written.
    #[error("model: saving {}", path.display())]
    SaveWeights {
        /// The weights file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: WeightsError,
    },
    /// A checkpoint's optimizer state does not fit this run's optimizer.
    #[error("model")]
    OptimizerState(#[from] OptimStateMismatch),
    /// Rank discovery or a collective operation failed.
    #[error("distributed")]
    Dist(#[from] DistError),
    /// libtorch refused the fused AdamW update (`optim.fused`).
    #[error("optimizer")]
    FusedAdamW(#[from] crate::optim::FusedError),
    /// Evaluation during training (`[eval]`) failed.
    #[error("eval")]
    Eval(#[from] crate::eval::error::TrainEvalError),
    /// Saving, finding or loading a checkpoint failed.
    #[error("checkpoint")]
    Checkpoint(#[from] CheckpointError),
    /// A checkpoint's train state (loader positions, counters) does not serialise or
    /// does not parse.
    #[error("checkpoint: {what}")]
    TrainState {
        /// Which part, e.g. `runs/x/checkpoints/step_00000010/state.json: counters`.
        what: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A checkpoint that this run cannot continue from; the message says why.
    #[error("checkpoint: {}{reason}", dir.display())]
    NotResumable {
        /// The checkpoint folder (or file) at fault.
        dir: PathBuf,
        /// Why, starting with the separator: `/state.json has no loader state for rank 1`.
        reason: String,
    },
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
    /// The signal handlers for a checkpoint on SIGTERM/SIGINT cannot be installed.
    #[error("config: cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

impl TrainError {
    /// `TrainError::Io` for `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
        let path = path.into();
        move |source| TrainError::Io { path, source }
    }
}

/// The whole chain of `error` as one line, `outer: inner: innermost` (what the binary
/// prints with `{:#}`); for tests and logs that need every cause.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<crate::optim::OptimStepError> for TrainError {
    fn from(e: crate::optim::OptimStepError) -> Self {
        match e {
            crate::optim::OptimStepError::Dist(e) => TrainError::Dist(e),
            crate::optim::OptimStepError::Fused(e) => TrainError::FusedAdamW(e),
        }
    }
}
