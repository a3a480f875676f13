//! The seam for multi-process curation: summing count vectors across ranks.
//!
//! The pipeline splits the input shards over ranks (shard i goes to rank i mod world size)
//! and reduces every global statistic as a vector of counts, so an MPI implementation only
//! needs an in-place all-reduce of `u64` sums.
use crate::error::CurateError;

/// Sums count vectors over all processes of a curation run.
pub trait CountReducer: Sync {
    /// This process's rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn world_size(&self) -> usize;
    /// Replace `counts` on every rank with the element-wise sum over all ranks. Every rank
    /// calls this with vectors of the same length, in the same order.
    fn all_reduce_sum(&self, counts: &mut [u64]) -> Result<(), CurateError>;
}

/// A world of one process: the reduction is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl CountReducer for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _counts: &mut [u64]) -> Result<(), CurateError> {
        Ok(())
    }
}
