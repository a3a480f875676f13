//! The optimizer side of a step: [`AdamW`] over named tensors (its state is
//! checkpointable safetensors), the same AdamW with its state sharded over the ranks
//! ([`ShardedAdamW`], ZeRO stage 1), the gradient all-reduce ([`GradSync`]), both behind
//! [`Optimizer`], the [`Gradients`] they consume, and the learning-rate schedule. The `[optim]` and `[schedule]` sections of a train config live here.

pub mod adamw;
pub mod optimizer;
pub mod schedule;
pub mod sharded;
pub mod sync;

pub use adamw::{decays, AdamW, GradReduce, Gradients, OptimConfig, OptimStateMismatch};
pub use optimizer::{Optimizer, UpdateReport};
pub use schedule::ScheduleConfig;
pub use sharded::ShardedAdamW;
pub use sync::GradSync;
