//! The optimizer side of a step: [`AdamW`] over named tensors (its state is
//! checkpointable safetensors), the same AdamW with its state sharded over the ranks
//! ([`ShardedAdamW`], ZeRO stage 1), the gradient all-reduce ([`GradSync`]) and its overlap with the backward pass, both behind
//! [`Optimizer`], the [`Gradients`] they consume, and the learning-rate schedule, and the [`Ema`] of the weights. The `[optim]` and `[schedule]` sections of a train config live here.

pub mod adamw;
pub mod ema;
pub mod error;
pub mod fused;
pub mod optimizer;
pub mod overlap;
pub mod schedule;
pub mod sharded;
pub mod sync;

pub use adamw::{decays, AdamW, GradReduce, Gradients, OptimConfig, OptimStateMismatch};
pub use ema::{Ema, EMA_FILE};
pub use error::{FusedError, OptimStepError};
pub use optimizer::{Optimizer, UpdateReport};
pub use overlap::{reduce_during, OverlapReport};
pub use schedule::ScheduleConfig;
pub use sharded::ShardedAdamW;
pub use sync::GradSync;
