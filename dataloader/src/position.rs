//! Where a [`Loader`](crate::Loader) stands, so a run can stop and continue at the exact next
//! batch.
//!
//! Each worker thread attaches to every batch a [`ThreadCursor`]: its state right after
//! building that batch (no decoded sample is pending then). The cursor names samples by where
//! they lie in their shard (shard index, tar offset), never by content, so it stays small, and
//! restoring it costs re-reading the shuffle buffer's samples and seeking in one shard, not
//! replaying the epoch. Augmentation draws from a per-sample seed, so it has no state to save.
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, SkipCounts, SkipReason};
use crate::loader::config::{CaptionSource, LoaderConfig, Sampling};
use crate::tar_reader::{DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_SHARD_BYTES};

/// A sample waiting in a shuffle buffer, by where to read it again.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct SampleRef {
    /// Index of its shard in the thread's shard list (or draw sequence) for the epoch.
    pub shard: usize,
    /// Tar offset where the sample starts ([`crate::tar_reader::SampleSpan::start`]).
    pub start: u64,
}

/// One worker's position after a batch it built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ThreadCursor {
    /// The epoch being read.
    pub epoch: u64,
    /// Index of the shard being read in the thread's shard list for the epoch; the list's
    /// length once every shard is read (the shuffle buffer is draining). In resampled mode the
    /// number of shards drawn before the current one in the epoch: the shard-draw generator's
    /// position (one 64-bit word per draw), from which every draw is recomputed.
    pub shard: usize,
    /// Tar offset in that shard where reading continues.
    pub offset: u64,
    /// The shuffle buffer, in its internal order (the order the random picks index into).
    pub buffer: Vec<SampleRef>,
    /// 32-bit words the epoch's shuffle generator has used. Never near 2^64: the generator is
    /// re-seeded every epoch and uses a few words per sample.
    pub shuffle_words: u64,
    /// Samples decoded successfully so far in the epoch (the next one's augmentation index).
    pub samples: u64,
}

impl ThreadCursor {
    /// The position before the first sample of `epoch`.
    pub fn epoch_start(epoch: u64) -> Self {
        Self {
            epoch,
            shard: 0,
            offset: 0,
            buffer: Vec::new(),
            shuffle_words: 0,
            samples: 0,
        }
    }
}

/// A worker thread's position as the consumer last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ThreadPosition {
    /// Still producing; continues after this cursor.
    Reading(ThreadCursor),
    /// Said it is done (eval pass over, or no usable sample); produces nothing more.
    Finished,
}

/// The settings that decide which samples land in which batch; a state only fits a config
/// with the same ones. Image size and context length change the batches' contents but not the
/// position, so they may change across a resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConfigFingerprint {
    /// Number of shards.
    pub shard_count: usize,
    /// FNV-1a hash of the shard paths, in order.
    pub shards_hash: u64,
    /// Worker threads actually used.
    pub threads: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub train: bool,
    /// The buffer size actually used (0 in eval mode).
    pub shuffle_buffer: usize,
    pub drop_last: bool,
    pub max_pixels: u64,
    /// `txt` or `json:<field>`.
    pub caption: String,
    /// Batches per virtual epoch when shards are resampled; 0 when every shard is read once
    /// per epoch (and in states saved before resampling existed).
    #[serde(default)]
    pub epoch_batches: u64,
    /// FNV-1a hash of the resampling weights (all 1 when none are given); 0 when not
    /// resampled.
    #[serde(default)]
    pub shard_weights_hash: u64,
    /// Whether `threads` counts the partitions of a canonical stream (and `batch_size` is a
    /// partition's chunk, the global batch over the partition count); such a state does not
    /// depend on how many ranks read the stream.
    #[serde(default)]
    pub partitioned: bool,
    /// The member size limit (decides which samples are skipped); states saved before it
    /// existed read as the default.
    #[serde(default = "default_max_member_bytes")]
    pub max_member_bytes: u64,
    /// The shard stream limit, likewise.
    #[serde(default = "default_max_shard_bytes")]
    pub max_shard_bytes: u64,
}

fn default_max_member_bytes() -> u64 {
    DEFAULT_MAX_MEMBER_BYTES
}

fn default_max_shard_bytes() -> u64 {
    DEFAULT_MAX_SHARD_BYTES
}

impl ConfigFingerprint {
    /// The fingerprint of `cfg` run with `threads` workers.
    pub fn of(cfg: &LoaderConfig, threads: usize) -> Self {
        Self {
            shard_count: cfg.shards.len(),
            shards_hash: hash_paths(&cfg.shards),
            threads,
            batch_size: cfg.stream_batch(),
            seed: cfg.seed,
            train: cfg.train,
            shuffle_buffer: if cfg.train { cfg.shuffle_buffer } else { 0 },
            drop_last: cfg.drop_last,
            max_pixels: cfg.max_pixels,
            caption: match &cfg.caption {
                CaptionSource::Txt => "txt".to_string(),
                CaptionSource::Json(field) => format!("json:{field}"),
            },
            epoch_batches: match &cfg.sampling {
                Sampling::EveryShard => 0,
                Sampling::Resampled { epoch_batches, .. } => *epoch_batches,
            },
            shard_weights_hash: match &cfg.sampling {
                Sampling::EveryShard => 0,
                Sampling::Resampled { shard_weights, .. } => hash_weights(shard_weights, cfg.shards.len()),
            },
            partitioned: cfg.partitions.is_some(),
            max_member_bytes: cfg.max_member_bytes,
            max_shard_bytes: cfg.max_shard_bytes,
        }
    }

    /// `Ok` when `self` (from a saved state) equals `now` (from the config); otherwise an error
    /// naming the first config field that differs.
    pub fn check_matches(&self, now: &ConfigFingerprint) -> Result<(), DataError> {
        let mismatch = |field: &'static str, saved: String, current: String| {
            Err(DataError::BadConfig {
                field,
                reason: format!("the saved loader state was made with {saved}, the config has {current}"),
            })
        };
        if (self.shard_count, self.shards_hash) != (now.shard_count, now.shards_hash) {
            return mismatch(
                "shards",
                format!("{} shards (list hash {:016x})", self.shard_count, self.shards_hash),
                format!("{} shards (list hash {:016x})", now.shard_count, now.shards_hash),
            );
        }
        macro_rules! same {
            ($($field:ident),*) => {$(
                if self.$field != now.$field {
                    return mismatch(
                        stringify!($field),
                        format!("{:?}", self.$field),
                        format!("{:?}", now.$field),
                    );
                }
            )*};
        }
        if self.partitioned != now.partitioned {
            let kind = |partitioned| match partitioned {
                true => "a canonical (partitioned) stream",
                false => "per-rank streams",
            };
            return mismatch(
                "partitions",
                kind(self.partitioned).into(),
                kind(now.partitioned).into(),
            );
        }
        if self.partitioned && self.threads != now.threads {
            return mismatch(
                "partitions",
                format!("{} partitions", self.threads),
                format!("{} partitions", now.threads),
            );
        }
        if self.partitioned && self.batch_size != now.batch_size {
            return mismatch(
                "batch_size",
                format!(
                    "a global batch of {} ({} per partition)",
                    self.batch_size * self.threads,
                    self.batch_size
                ),
                format!(
                    "a global batch of {} ({} per partition); the global batch must stay the same",
                    now.batch_size * now.threads,
                    now.batch_size
                ),
            );
        }
        same!(
            threads,
            batch_size,
            seed,
            train,
            shuffle_buffer,
            drop_last,
            max_pixels,
            max_member_bytes,
            max_shard_bytes,
            caption,
            epoch_batches,
            shard_weights_hash
        );
        Ok(())
    }
}

/// FNV-1a over the weights' bit patterns; no weights count as `shards` weights of 1, which
/// draw alike.
fn hash_weights(weights: &[f64], shards: usize) -> u64 {
    let ones;
    let weights = if weights.is_empty() {
        ones = vec![1.0; shards];
        &ones
    } else {
        weights
    };
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for weight in weights {
        for byte in weight.to_bits().to_le_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// FNV-1a over the paths' bytes, each path followed by a 0xff separator (a byte UTF-8 never
/// contains), so the hash is stable across runs and builds.
fn hash_paths(paths: &[PathBuf]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for path in paths {
        for &byte in path.as_os_str().as_encoded_bytes().iter().chain(&[0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// A [`Loader`](crate::Loader)'s position after the batches it returned so far: per worker
/// thread its epoch, shard, tar offset, shuffle buffer and generator position, plus the
/// consumer's next thread and the skip counts so far, and a fingerprint of the config.
///
/// Get it from [`Loader::state`](crate::Loader::state), store it (it is serde, a few bytes
/// per buffered sample), and continue with [`Loader::resume`](crate::Loader::resume).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoaderState {
    pub(crate) config: ConfigFingerprint,
    pub(crate) threads: Vec<ThreadPosition>,
    pub(crate) next_thread: usize,
    /// Skip counts by [`SkipReason::as_str`] name.
    pub(crate) skips: BTreeMap<String, u64>,
    /// With partitions: the partition `threads[0]` is the position of (the rest follow).
    #[serde(default)]
    pub(crate) first_partition: usize,
    /// With partitions: each partition's skip counts, parallel to `threads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) partition_skips: Option<Vec<PartitionSkips>>,
}

/// One partition's skip counts by reason name.
pub(crate) type PartitionSkips = BTreeMap<String, u64>;

impl LoaderState {
    /// The partition count of a canonical stream's state; `None` for per-thread streams.
    pub fn partition_count(&self) -> Option<usize> {
        self.config.partitioned.then_some(self.config.threads)
    }

    /// The whole canonical stream's position from the states of every rank that read it (in
    /// any order): what a loader on any worker count that divides the partition count resumes
    /// from ([`Loader::resume`](crate::Loader::resume) takes its own partitions out of it).
    ///
    /// Errors when a state is not partitioned, the states come from differently configured
    /// loaders, or their partitions do not cover the stream exactly once.
    pub fn merge(states: &[LoaderState]) -> Result<LoaderState, DataError> {
        let bad = |reason: String| DataError::BadConfig {
            field: "loader_state",
            reason,
        };
        let Some(first) = states.first() else {
            return Err(bad("no states to merge".into()));
        };
        let Some(count) = first.partition_count() else {
            return Err(bad(
                "per-thread loader states (no partitions) cannot be merged: their batches depend on the worker count"
                    .into(),
            ));
        };
        let mut sorted: Vec<&LoaderState> = states.iter().collect();
        sorted.sort_by_key(|state| state.first_partition);
        let mut merged = LoaderState {
            config: first.config.clone(),
            threads: Vec::with_capacity(count),
            next_thread: 0,
            skips: BTreeMap::new(),
            first_partition: 0,
            partition_skips: Some(Vec::with_capacity(count)),
        };
        for state in sorted {
            state.config.check_matches(&first.config)?;
            if state.first_partition != merged.threads.len() {
                return Err(bad(format!(
                    "the states do not cover the {count} partitions exactly once: partition {} expected, a state \
                     starts at {}",
                    merged.threads.len(),
                    state.first_partition
                )));
            }
            let skips = match &state.partition_skips {
                Some(skips) if skips.len() == state.threads.len() => skips,
                _ => return Err(bad("a partitioned state without per-partition skip counts".into())),
            };
            merged.threads.extend(state.threads.iter().cloned());
            if let Some(all) = &mut merged.partition_skips {
                all.extend(skips.iter().cloned());
            }
            for (name, n) in &state.skips {
                *merged.skips.entry(name.clone()).or_default() += n;
            }
        }
        if merged.threads.len() != count {
            return Err(bad(format!(
                "the states cover {} of the {count} partitions",
                merged.threads.len()
            )));
        }
        Ok(merged)
    }

    /// The lowest epoch any still-reading worker is in (the last epoch when all are done).
    pub fn epoch(&self) -> u64 {
        self.threads
            .iter()
            .filter_map(|position| match position {
                ThreadPosition::Reading(cursor) => Some(cursor.epoch),
                ThreadPosition::Finished => None,
            })
            .min()
            .unwrap_or(0)
    }

    /// What was skipped up to this position, by reason.
    pub fn skip_counts(&self) -> Result<SkipCounts, DataError> {
        skip_counts_of(&self.skips)
    }
}

/// Skip counts from their by-name form.
pub(crate) fn skip_counts_of(skips: &BTreeMap<String, u64>) -> Result<SkipCounts, DataError> {
    let mut counts = SkipCounts::new();
    for (name, &n) in skips {
        let reason = ALL_SKIP_REASONS
            .iter()
            .copied()
            .find(|reason| reason.as_str() == name)
            .ok_or_else(|| DataError::BadConfig {
                field: "loader_state",
                reason: format!("unknown skip reason {name:?}"),
            })?;
        counts.merge(&repeated(reason, n));
    }
    Ok(counts)
}

/// `n` skips for `reason`. `SkipCounts` adds one at a time; doubling keeps this O(log n).
fn repeated(reason: SkipReason, n: u64) -> SkipCounts {
    let mut total = SkipCounts::new();
    let mut power = SkipCounts::new();
    power.add(reason);
    let mut remaining = n;
    while remaining > 0 {
        if remaining & 1 == 1 {
            total.merge(&power);
        }
        let copy = power.clone();
        power.merge(&copy);
        remaining >>= 1;
    }
    total
}

/// Skip counts as stored in a [`LoaderState`].
pub(crate) fn skips_by_name(skips: &SkipCounts) -> BTreeMap<String, u64> {
    skips
        .iter()
        .map(|(reason, n)| (reason.as_str().to_string(), n))
        .collect()
}

/// Every [`SkipReason`], for reading names back. `skip_reason_index` fails to compile when a
/// reason is added, and a test checks this list against it.
const ALL_SKIP_REASONS: [SkipReason; 17] = SkipReason::ALL;

/// Position of `reason` in [`ALL_SKIP_REASONS`]; exhaustive on purpose (see there).
#[cfg_attr(not(test), allow(dead_code))]
const fn skip_reason_index(reason: SkipReason) -> usize {
    match reason {
        SkipReason::MissingImage => 0,
        SkipReason::EmptyImage => 1,
        SkipReason::UndecodableImage => 2,
        SkipReason::ImageTooLarge => 3,
        SkipReason::MissingCaption => 4,
        SkipReason::InvalidCaption => 5,
        SkipReason::InvalidLabel => 6,
        SkipReason::TruncatedMember => 7,
        SkipReason::DuplicateMember => 8,
        SkipReason::ShardReadError => 9,
        SkipReason::UnreadableShard => 10,
        SkipReason::InvalidRow => 11,
        SkipReason::UnreadableImage => 12,
        SkipReason::InvalidKey => 13,
        SkipReason::DuplicateKey => 14,
        SkipReason::OversizedMember => 15,
        SkipReason::OversizedShard => 16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_skip_reason_is_listed_once() {
        for (i, reason) in ALL_SKIP_REASONS.iter().enumerate() {
            assert_eq!(skip_reason_index(*reason), i, "{reason}");
        }
    }

    #[test]
    fn skip_counts_survive_the_state() {
        let mut skips = SkipCounts::new();
        for _ in 0..13 {
            skips.add(SkipReason::UndecodableImage);
        }
        skips.add(SkipReason::DuplicateKey);
        let state = LoaderState {
            config: ConfigFingerprint::of(&LoaderConfig::new(vec!["a.tar".into()], true), 1),
            threads: vec![ThreadPosition::Finished],
            next_thread: 0,
            skips: skips_by_name(&skips),
            first_partition: 0,
            partition_skips: None,
        };
        assert_eq!(state.skip_counts().unwrap(), skips);
        let mut bad = state.clone();
        bad.skips.insert("cosmic_ray".into(), 1);
        let err = bad.skip_counts().unwrap_err().to_string();
        assert!(err.contains("cosmic_ray"), "{err}");
    }

    #[test]
    fn fingerprint_names_the_differing_field() {
        let cfg = LoaderConfig::new(vec!["a.tar".into(), "b.tar".into()], true);
        let saved = ConfigFingerprint::of(&cfg, 2);
        assert!(saved.check_matches(&ConfigFingerprint::of(&cfg, 2)).is_ok());
        let mut reordered = cfg.clone();
        reordered.shards.reverse();
        let err = saved
            .check_matches(&ConfigFingerprint::of(&reordered, 2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("shards"), "{err}");
        let err = saved
            .check_matches(&ConfigFingerprint::of(&cfg, 1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("threads") && err.contains('2') && err.contains('1'),
            "{err}"
        );
        let mut json = cfg.clone();
        json.caption = CaptionSource::Json("caption".into());
        let err = saved
            .check_matches(&ConfigFingerprint::of(&json, 2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("caption") && err.contains("json:caption"), "{err}");
    }
}
