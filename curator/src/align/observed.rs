//! What the `align` stage's observation pass collects, shared by the stage, the embedding
//! queue ([`super::embed`]) and the exchange between ranks ([`super::exchange`]).
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;

/// A sample that passed the per-sample rules, as the observation remembers it.
pub(super) struct Candidate {
    pub(super) shard: u32,
    pub(super) key: String,
    pub(super) image: u128,
    pub(super) text: u64,
}

/// What the observation pass collects (behind a mutex: `observe` runs on many threads).
#[derive(Default)]
pub(super) struct Observed {
    /// Distinct (text hash, image hash) pairs.
    pub(super) pairs: HashSet<(u64, u128)>,
    /// Occurrences of each unigram and bigram hash.
    pub(super) ngram_counts: HashMap<u64, u64>,
    /// The n-gram hashes of each distinct candidate text.
    pub(super) text_ngrams: HashMap<u64, Box<[u64]>>,
    pub(super) candidates: Vec<Candidate>,
    /// pHash per candidate image; `None` when the full decode failed.
    pub(super) phashes: HashMap<u128, Option<u64>>,
    /// Shard path → id, in first-seen order (ids are only names; order comes from paths).
    pub(super) shard_ids: HashMap<PathBuf, u32>,
    /// Embedding per candidate image when a model decides near duplicates; `None` when the
    /// model could not decode it.
    pub(super) embeddings: HashMap<u128, Option<Box<[f32]>>>,
    /// Candidate images handed to the embedding queue (not exchanged between ranks).
    pub(super) queued: HashSet<u128>,
}

/// The observation lock; a panic on another thread cannot leave the tables half-updated
/// in a way that matters here (the run fails anyway), so a poisoned lock is still used.
pub(super) fn lock(observed: &Mutex<Observed>) -> std::sync::MutexGuard<'_, Observed> {
    observed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
