//! The CLIP model and its training on libtorch.
//!
//! - [`model`]: the model, its config, weights and open_clip interop;
//! - [`loss`]: the contrastive losses, per process and over the global batch;
//! - [`data`]: the `[data]` section, the training loader, batches as tensors;
//! - [`optim`]: AdamW and the learning-rate schedule;
//! - [`dist`]: ranks and collectives (solo, in-process, MPI, NCCL);
//! - [`checkpoint`]: checkpoint folders, the train loop's snapshots, export;
//! - [`train`]: one worker's run, top to bottom;
//! - [`tensorboard`]: TensorBoard event files of the logged scalars;
//! - [`eval`]: zero-shot classification and retrieval;
//! - [`precision`]: bf16 autocast.
//!
//! docs/architecture.md tells how they fit together.
#![deny(missing_docs)]
pub use tch;
pub mod checkpoint;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod field;
pub mod loss;
pub mod model;
pub mod optim;
pub mod precision;
pub mod tensorboard;
pub mod train;
pub use error::TrainError;
pub use field::FieldError;
pub use loss::clip_loss;
pub use model::weights::{load_safetensors, save_safetensors, LoadReport, WeightsError};
pub use model::{Clip, ConfigError, ModelConfig, TextConfig, VisionConfig};
