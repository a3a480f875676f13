//! The optimizer side of a step: [`AdamW`] over named tensors (its state is
//! checkpointable safetensors), the [`Gradients`] it consumes, and the learning-rate
//! schedule. The `[optim]` and `[schedule]` sections of a train config live here.

pub mod adamw;
pub mod schedule;

pub use adamw::{decays, AdamW, Gradients, OptimConfig, OptimStateMismatch};
pub use schedule::ScheduleConfig;
