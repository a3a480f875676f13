//! The CLIP model and its training on libtorch.
#![deny(missing_docs)]
pub use tch;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
mod error;
pub mod eval;
pub mod interop;
pub mod loss;
pub mod loss_dist;
pub mod macs;
pub mod model;
pub mod precision;
pub mod train;
pub mod weights;
pub use config::{ConfigError, ModelConfig, TextConfig, VisionConfig};
pub use error::TrainError;
pub use loss::clip_loss;
pub use model::Clip;
pub use weights::{load_safetensors, save_safetensors, LoadReport, WeightsError};
