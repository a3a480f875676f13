//! Which shards each worker thread reads, epoch by epoch: every shard once (shuffled per
//! epoch in train mode, dealt round-robin) or weighted draws with replacement, and the seed
//! derivation that keeps every random stream a function of (seed, domain, epoch, thread, ...).
use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::{LoaderConfig, Sampling};

/// A 64-bit seed from several parts (splitmix64 over the parts), so nearby inputs give
/// unrelated streams.
pub(super) fn derive_seed(parts: &[u64]) -> u64 {
    let mut state = 0x243F_6A88_85A3_08D3u64;
    for &part in parts {
        state ^= part;
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        state = z ^ (z >> 31);
    }
    state
}

// Distinct seed domains, so shard order, shuffle buffer and augmentation never share a stream.
const DOMAIN_SHARD_ORDER: u64 = 1;
pub(super) const DOMAIN_SHUFFLE: u64 = 2;
pub(super) const DOMAIN_AUGMENT: u64 = 3;
const DOMAIN_RESAMPLE: u64 = 4;

/// The shard draws of one worker thread in one epoch of a resampled loader: an endless
/// sequence, draw `n` from the 64-bit word at position `2n` of a ChaCha8 stream seeded from
/// (seed, epoch, thread). Each draw uses exactly that one word, so the generator's position
/// after `n` draws is the draw count itself: a [`ThreadCursor`] stores it as its shard index,
/// and any draw can be recomputed without replaying the earlier ones.
///
/// [`ThreadCursor`]: crate::position::ThreadCursor
pub(super) struct ShardDraws {
    seed: u64,
    /// Running sums of the shard weights; the last is the total.
    cumulative: Vec<f64>,
}

impl ShardDraws {
    pub(super) fn new(cfg: &LoaderConfig, shard_weights: &[f64], epoch: u64, thread: usize) -> Self {
        let mut total = 0.0;
        let cumulative = (0..cfg.shards.len())
            .map(|i| {
                total += shard_weights.get(i).copied().unwrap_or(1.0);
                total
            })
            .collect();
        Self {
            seed: derive_seed(&[cfg.seed, DOMAIN_RESAMPLE, epoch, thread as u64]),
            cumulative,
        }
    }

    /// Index (into the config's shards) of draw `n`.
    pub(super) fn shard(&self, n: usize) -> usize {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_word_pos(2 * n as u128);
        // 53 random bits → uniform in [0, 1).
        let unit = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let target = unit * total;
        // The first shard whose running sum exceeds the target: zero-weight shards, whose sum
        // equals their predecessor's, are never chosen.
        let index = self.cumulative.partition_point(|&sum| sum <= target);
        if index < self.cumulative.len() {
            return index;
        }
        // `unit * total` rounded up to `total`: take the last shard with a weight.
        self.cumulative
            .iter()
            .rposition(|&sum| sum < total)
            .map_or(0, |i| i + 1)
    }
}

/// The shards one worker thread reads in one epoch, by position in its read order.
pub(super) enum EpochShards<'a> {
    /// A finite list (every shard once per epoch).
    Listed(Vec<PathBuf>),
    /// Endless draws with replacement from `shards`.
    Drawn { shards: &'a [PathBuf], draws: ShardDraws },
}

impl EpochShards<'_> {
    /// The shard read at `position`; `None` past the end of a list.
    pub(super) fn get(&self, position: usize) -> Option<&PathBuf> {
        match self {
            EpochShards::Listed(list) => list.get(position),
            EpochShards::Drawn { shards, draws } => shards.get(draws.shard(position)),
        }
    }

    /// The list's length; `None` for endless draws.
    pub(super) fn listed_len(&self) -> Option<usize> {
        match self {
            EpochShards::Listed(list) => Some(list.len()),
            EpochShards::Drawn { .. } => None,
        }
    }
}

/// The shards worker `thread` of `threads` reads in `epoch`, in order.
pub(super) fn epoch_shards(cfg: &LoaderConfig, threads: usize, thread: usize, epoch: u64) -> EpochShards<'_> {
    match &cfg.sampling {
        Sampling::EveryShard => EpochShards::Listed(shards_for_thread(cfg, threads, thread, epoch)),
        Sampling::Resampled { shard_weights, .. } => EpochShards::Drawn {
            shards: &cfg.shards,
            draws: ShardDraws::new(cfg, shard_weights, epoch, thread),
        },
    }
}

/// With [`Sampling::EveryShard`]: the shards worker `thread` of `threads` reads in `epoch`.
pub(super) fn shards_for_thread(cfg: &LoaderConfig, threads: usize, thread: usize, epoch: u64) -> Vec<PathBuf> {
    let mut order = cfg.shards.clone();
    if cfg.train {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(&[cfg.seed, DOMAIN_SHARD_ORDER, epoch]));
        order.shuffle(&mut rng);
    }
    order.into_iter().skip(thread).step_by(threads).collect()
}

/// Streams for `cfg`: the partition count of a canonical stream; otherwise one per worker
/// thread, at most one per shard unless shards are drawn with replacement.
pub(super) fn worker_count(cfg: &LoaderConfig) -> usize {
    if let Some(partitions) = &cfg.partitions {
        return partitions.count;
    }
    match cfg.sampling {
        Sampling::EveryShard => cfg.threads.min(cfg.shards.len()).max(1),
        Sampling::Resampled { .. } => cfg.threads.max(1),
    }
}

/// Batches each worker makes per virtual epoch: the loader's `epoch_batches` split evenly,
/// rounded up; with partitions every partition makes one chunk of each of the epoch's
/// global batches. `None` when epochs are not virtual.
pub(super) fn thread_epoch_batches(cfg: &LoaderConfig, threads: usize) -> Option<u64> {
    match cfg.sampling {
        Sampling::EveryShard => None,
        Sampling::Resampled { epoch_batches, .. } if cfg.partitions.is_some() => Some(epoch_batches),
        Sampling::Resampled { epoch_batches, .. } => Some(epoch_batches.div_ceil(threads.max(1) as u64)),
    }
}
