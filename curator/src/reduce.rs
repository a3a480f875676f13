//! The seam for multi-process curation: summing count vectors across ranks.
//!
//! The pipeline splits the input shards over ranks (shard i goes to rank i mod world size)
//! and reduces every global statistic as a vector of counts (an in-place all-reduce of
//! `u64` sums) or, for tables, by gathering every rank's serialised table on every rank.
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

    /// Every rank's `local` bytes, in rank order, on every rank: how stages whose global
    /// statistics are tables rather than count vectors (the `align` stage's pairs, n-gram
    /// counts and duplicate candidates) merge them. Every rank calls this the same number
    /// of times, in the same order; lengths may differ between ranks.
    ///
    /// The default serves a world of one and refuses larger ones, so that a reducer which
    /// cannot exchange bytes fails loudly instead of deciding on partial statistics.
    fn all_gather_bytes(&self, local: &[u8]) -> Result<Vec<Vec<u8>>, CurateError> {
        if self.world_size() == 1 {
            Ok(vec![local.to_vec()])
        } else {
            Err(CurateError::Reduce(format!(
                "this reducer cannot exchange tables between {} processes",
                self.world_size()
            )))
        }
    }
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
