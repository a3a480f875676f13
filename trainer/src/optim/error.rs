//! What can go wrong in an optimizer step.

use crate::dist::DistError;

/// libtorch refused the fused AdamW step (its message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fused AdamW (optim.fused): {0}")]
pub struct FusedError(pub String);

/// A gradient exchange or an update that failed.
#[derive(Debug, thiserror::Error)]
pub enum OptimStepError {
    /// The collective failed.
    #[error(transparent)]
    Dist(#[from] DistError),
    /// libtorch refused the fused update (`optim.fused`).
    #[error(transparent)]
    Fused(#[from] FusedError),
}
