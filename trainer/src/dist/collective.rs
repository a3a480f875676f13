//! The one interface the losses and the gradient sync use, [`Collective`], its error,
//! and the argument checks every backend shares.

use tch::Tensor;

/// What can go wrong in rank discovery or a collective operation.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// An environment variable of a launcher convention is malformed or
    /// inconsistent with the others; `var` names it.
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        /// The variable at fault.
        var: String,
        /// Its value (empty when it is missing).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor cannot take part in the operation (wrong device, dtype or shape).
    #[error("{op}: {reason}")]
    Tensor {
        /// The collective operation, e.g. `all_gather`.
        op: &'static str,
        /// What is wrong with the tensor.
        reason: String,
    },
    /// The communication backend failed to start or to run an operation.
    #[error("{backend}: {reason}")]
    Backend {
        /// `mpi`, `local`, ...
        backend: &'static str,
        /// What failed.
        reason: String,
    },
}

/// Collective operations over CPU (or CUDA) tch tensors among `world_size` ranks.
///
/// Every rank must call the same operations in the same order with tensors of
/// the same shape and dtype; sums are computed in an order fixed for a given
/// world size, so results are identical run to run.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Every rank passes a tensor of the same shape (B, ...); returns the ranks' tensors concatenated along dim 0 in rank order (W·B, ...).
    fn all_gather(&self, t: &Tensor) -> Result<Tensor, DistError>;
    /// Sums `t` over ranks, in place; every rank ends with the sum.
    fn all_reduce_sum_(&self, t: &mut Tensor) -> Result<(), DistError>;
    /// Input (W·B, ...) on every rank; returns this rank's block r (B, ...) summed over ranks.
    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<Tensor, DistError>;
    /// Copies root's `t` into every rank's `t`, in place.
    fn broadcast_(&self, t: &mut Tensor, root: usize) -> Result<(), DistError>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<(), DistError>;
    /// One step around the ring: sends `t` to rank `r + 1` and returns what rank `r − 1`
    /// sent (indices mod W), a tensor of the same shape and dtype. Every rank passes the
    /// same shape. A world of one gets its own `t` back.
    fn ring_pass(&self, t: &Tensor) -> Result<Tensor, DistError>;
}

/// The error every backend gives for a broadcast root outside the world.
pub(crate) fn check_root(op: &'static str, root: usize, world_size: usize) -> Result<(), DistError> {
    if root >= world_size {
        return Err(DistError::Tensor {
            op,
            reason: format!("root {root} is not below the world size {world_size}"),
        });
    }
    Ok(())
}

/// Shape of one rank's block for `reduce_scatter_sum` of a `(W·B, ...)` tensor
/// of shape `shape`: `(B, ...)`, or an error when dim 0 is not a multiple of W.
pub(crate) fn scatter_block_shape(op: &'static str, shape: &[i64], world_size: usize) -> Result<Vec<i64>, DistError> {
    let world = world_size as i64;
    match shape.first() {
        Some(&rows) if rows % world == 0 => {
            let mut block = shape.to_vec();
            block[0] = rows / world;
            Ok(block)
        }
        Some(&rows) => Err(DistError::Tensor {
            op,
            reason: format!("dim 0 has {rows} rows, not a multiple of the world size {world}"),
        }),
        None => Err(DistError::Tensor {
            op,
            reason: "expected a tensor of shape (W·B, ...), got a scalar".into(),
        }),
    }
}

/// What every backend's `all_gather` starts from: `t` detached and contiguous (what is
/// sent) and the `(W·B, ...)` shape of the result, or the error for a scalar.
pub(crate) fn gather_input(op: &'static str, t: &Tensor, world_size: usize) -> Result<(Tensor, Vec<i64>), DistError> {
    if t.dim() == 0 {
        return Err(DistError::Tensor {
            op,
            reason: "expected a tensor of shape (B, ...), got a scalar".into(),
        });
    }
    let send = t.detach().contiguous();
    let mut shape = send.size();
    shape[0] *= world_size as i64;
    Ok((send, shape))
}
