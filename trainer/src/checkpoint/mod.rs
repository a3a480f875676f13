//! Checkpoints and run folders (docs/architecture.md §6).
//!
//! - [`store`]: crash-safe checkpoint folders on disk (atomic save, SHA-256 verification,
//!   retention) and the `[checkpoint]` section; it knows nothing of the train loop.
//! - [`snapshot`]: what the train loop puts into a checkpoint (weights, optimizer state,
//!   every rank's loader position, counters), when it saves ([`Checkpointer`]), and how a
//!   run picks one up again.
//! - [`export`]: a run's or checkpoint's weights as a folder open_clip loads.

pub mod export;
pub mod snapshot;
pub mod state;
pub mod store;

pub use export::{
    export_open_clip, export_open_clip_files, locate_checkpoint, model_config_from_run_config, CheckpointFiles,
    OpenClipExport,
};
pub use snapshot::{Checkpointer, Progress, ResumeFrom, Resumed, TrainState};
pub use store::{
    config_compatibility, sha256_hex, step_dir_name, Checkpoint, CheckpointConfig, CheckpointError, CheckpointState,
    Checkpoints, FileDigest, CONFIG_FILE, FORMAT, LATEST_FILE, MODEL_FILE, OPTIM_FILE, STATE_FILE,
};
