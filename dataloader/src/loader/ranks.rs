//! How a run's data is split over its ranks, written once for every front end (the
//! trainer's `[data]`, the Python `Loader`, `ferroclip data dump`): each rank's seed and
//! shards for per-rank streams, and the partition count of the canonical stream.
use std::path::PathBuf;

use super::config::{virtual_epoch_batches, LoaderConfig, Partitions, Sampling};
use crate::error::DataError;
use crate::shard_spec::{dataset_size, expand_shards, expand_sources};

/// The most partitions the canonical stream gets when the user does not choose.
pub const MAX_DEFAULT_PARTITIONS: usize = 64;

/// How a run's ranks share its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamKind {
    /// One stream of partitions whose global batches do not depend on the worker count
    /// (see [`super::Partitions`]).
    #[default]
    Canonical,
    /// Every rank its own stream: the rank mixed into the seed, and (every sample once per
    /// epoch) the shards dealt to ranks round-robin.
    PerRank,
}

impl StreamKind {
    /// `canonical` or `per_rank`, as configs spell it.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "canonical" => Some(Self::Canonical),
            "per_rank" => Some(Self::PerRank),
            _ => None,
        }
    }
}

/// One rank's view of a run's data: which stream, how many partitions, whether shards are
/// drawn with replacement. [`RankedStream::loader_config`] turns it and a shard spec into
/// that rank's [`LoaderConfig`], the way `ferroclip train` does for `[data]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedStream {
    /// This rank, `0..world_size`.
    pub rank: usize,
    /// Ranks reading the data.
    pub world_size: usize,
    /// Canonical stream or per-rank streams (train mode; eval reads each rank's
    /// round-robin share of the shards once).
    pub kind: StreamKind,
    /// Partitions of the canonical stream; 0 chooses ([`default_partition_count`]).
    pub partitions: usize,
    /// Draw shards with replacement (OpenCLIP's `--dataset-resampled`).
    pub resampled: bool,
    /// Samples per virtual epoch when resampled; `None` reads the dataset size from the
    /// shards' `sizes.json`.
    pub epoch_samples: Option<u64>,
    /// Source weights when resampled (`1::2`, one per `::`-joined source).
    pub weights: Option<String>,
}

impl RankedStream {
    /// One process reading everything: a canonical stream with chosen partitions.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            kind: StreamKind::Canonical,
            partitions: 0,
            resampled: false,
            epoch_samples: None,
            weights: None,
        }
    }

    /// This rank's loader config for `spec`, every other setting (batch size per rank, image
    /// size, seed, ...) from `settings`; errors name the field.
    pub fn loader_config(&self, spec: &str, settings: LoaderConfig) -> Result<LoaderConfig, DataError> {
        let bad = |field, reason: String| DataError::BadConfig { field, reason };
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(bad("rank", format!("rank {} of {} ranks", self.rank, self.world_size)));
        }
        if self.resampled && !settings.train {
            return Err(bad(
                "resampled",
                "shards are drawn with replacement in train mode only".into(),
            ));
        }
        if self.weights.is_some() && !self.resampled {
            return Err(bad(
                "weights",
                "source weights choose how often shards are drawn: set resampled".into(),
            ));
        }
        let canonical = settings.train && self.kind == StreamKind::Canonical;
        let (shards, sampling) = if self.resampled {
            let sources = expand_sources(spec, self.weights.as_deref())?;
            let epoch_samples = match self.epoch_samples {
                Some(n) if n > 0 => n,
                Some(_) => return Err(bad("epoch_samples", "must be at least 1".into())),
                None => {
                    let all: Vec<PathBuf> = sources.iter().flat_map(|s| s.shards.iter().cloned()).collect();
                    match dataset_size(&all)? {
                        0 => {
                            return Err(bad(
                                "epoch_samples",
                                "not set, and the size files next to the shards count 0 samples".into(),
                            ))
                        }
                        n => n,
                    }
                }
            };
            let batches = virtual_epoch_batches(epoch_samples, settings.batch_size, self.world_size);
            let weighted = LoaderConfig::resampled(&sources, batches);
            (weighted.shards, weighted.sampling)
        } else {
            let all = expand_shards(spec)?;
            if canonical {
                (all, Sampling::EveryShard)
            } else {
                if all.len() < self.world_size {
                    return Err(bad(
                        "world_size",
                        format!(
                            "{} shard(s) for {} ranks: every rank needs a shard (or draw shards with replacement)",
                            all.len(),
                            self.world_size
                        ),
                    ));
                }
                (
                    round_robin_share(&all, self.rank, self.world_size),
                    Sampling::EveryShard,
                )
            }
        };
        let partitions = canonical.then(|| Partitions {
            count: match self.partitions {
                0 => default_partition_count(self.world_size, settings.batch_size, shards.len(), &sampling),
                p => p,
            },
            rank: self.rank,
            world_size: self.world_size,
        });
        let seed = match canonical || !settings.train {
            true => settings.seed,
            false => rank_seed(settings.seed, self.rank),
        };
        Ok(LoaderConfig {
            shards,
            sampling,
            seed,
            partitions,
            ..settings
        })
    }
}

/// The seed of rank `rank`'s own stream (per-rank streams): ranks draw different samples
/// and augmentations from one run seed.
pub fn rank_seed(seed: u64, rank: usize) -> u64 {
    seed ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Rank `rank`'s round-robin share of `shards` (shards `rank`, `rank + world_size`, ...).
pub fn round_robin_share(shards: &[PathBuf], rank: usize, world_size: usize) -> Vec<PathBuf> {
    shards.iter().skip(rank).step_by(world_size.max(1)).cloned().collect()
}

/// P for a canonical stream whose user chose none: the largest count up to
/// [`MAX_DEFAULT_PARTITIONS`] that `world_size` divides, that divides the global batch
/// (`batch_size × world_size`) and, when every sample is read once per epoch, has a shard
/// per partition; `world_size` when none does (the loader then names what does not fit).
pub fn default_partition_count(world_size: usize, batch_size: usize, shards: usize, sampling: &Sampling) -> usize {
    let world_size = world_size.max(1);
    let global = batch_size * world_size;
    let most = match sampling {
        Sampling::EveryShard => shards.min(MAX_DEFAULT_PARTITIONS),
        Sampling::Resampled { .. } => MAX_DEFAULT_PARTITIONS,
    };
    (1..=most)
        .rev()
        .find(|&p| p % world_size == 0 && global % p == 0)
        .unwrap_or(world_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_divide_the_global_batch_and_fit_the_shards() {
        // 8 shards, 2 ranks of 9: 18 samples per step, which 8 does not divide; 6 does.
        assert_eq!(default_partition_count(2, 9, 8, &Sampling::EveryShard), 6);
        assert_eq!(default_partition_count(2, 12, 8, &Sampling::EveryShard), 8);
        let resampled = Sampling::Resampled {
            shard_weights: Vec::new(),
            epoch_batches: 1,
        };
        assert_eq!(default_partition_count(1, 256, 1, &resampled), 64);
        // Nothing fits (3 ranks, 1 shard): the world size, which the loader refuses by name.
        assert_eq!(default_partition_count(3, 4, 1, &Sampling::EveryShard), 3);
    }

    #[test]
    fn ranks_get_disjoint_shares_and_seeds() {
        let shards: Vec<PathBuf> = (0..5).map(|i| PathBuf::from(format!("{i}.tar"))).collect();
        assert_eq!(
            round_robin_share(&shards, 1, 2),
            [PathBuf::from("1.tar"), PathBuf::from("3.tar")]
        );
        assert_eq!(rank_seed(7, 0), 7);
        assert_ne!(rank_seed(7, 1), rank_seed(7, 2));
    }
}
