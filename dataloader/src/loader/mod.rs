//! Batches from shards on background threads, reproducibly.
//!
//! With [`Sampling::EveryShard`] (the default) shards are dealt round-robin to `threads`
//! workers (in train mode after a per-epoch shuffle seeded from (seed, epoch)), so every sample
//! is read once per epoch. With [`Sampling::Resampled`] (OpenCLIP's `--dataset-resampled`) each
//! worker draws shards with replacement, by weight, from a generator seeded from
//! (seed, epoch, thread), without end; an epoch is then a fixed number of batches (a "virtual
//! epoch"). Each worker reads its shards in order, passes raw samples through
//! a shuffle buffer seeded from (seed, epoch, thread) (train mode only), decodes and transforms
//! them, and builds whole batches. The consumer takes one batch from each worker in turn, in a
//! fixed order, so the same config and seed give the same batches regardless of timing.
//! Channels are bounded (two batches per worker); dropping the [`Loader`] stops the workers.
//!
//! Every batch travels with its worker's position right after it, so [`Loader::state`] is
//! exact after any batch and [`Loader::resume`] continues from it (see [`crate::position`]).
//! Augmentation randomness is seeded per sample from (seed, epoch, thread, sample index).
//!
//! The module is split by job: `config` (what to read and how), `sampling` (which shards each
//! worker reads), `worker` (one background thread), `pool` (recycled batch buffers), `batch`
//! (the batch type and one sample's decode) and this file, the consumer.
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

use crate::error::{DataError, SkipCounts};
use crate::imaging::ImageTransform;
use crate::position::{skips_by_name, ConfigFingerprint, LoaderState, ThreadCursor, ThreadPosition};
use crate::tokenizer::Tokenizer;

mod batch;
pub(crate) mod config;
mod pool;
mod sampling;
mod worker;

pub use batch::{captions_of, decode_sample, decode_sample_into, label_of, Batch, Sample, IMAGE_EXTENSIONS};
pub use config::{virtual_epoch_batches, CaptionSource, LoaderConfig, PixelOutput, Sampling};
pub use pool::BatchImages;
use pool::BufferPool;
use sampling::{thread_epoch_batches, worker_count};
use worker::{BatchMessage, Message, Worker};

/// Batches from shards on background threads. Use it as an `Iterator<Item = Batch>` (or call
/// [`Loader::next_batch`]); [`Loader::skip_counts`] tells what was skipped so far.
///
/// Train mode never ends (unless no worker can produce a sample); eval mode ends after one
/// pass. Dropping the loader stops and joins its threads. [`Loader::state`] after any batch
/// and [`Loader::resume`] continue exactly where it stood.
pub struct Loader {
    receivers: Vec<Option<Receiver<Message>>>,
    handles: Vec<Option<JoinHandle<()>>>,
    next_thread: usize,
    live: usize,
    stop: Arc<AtomicBool>,
    skips: SkipCounts,
    /// Each worker's position after the last batch taken from it.
    positions: Vec<ThreadPosition>,
    config: ConfigFingerprint,
    /// Samples the workers tried to decode.
    decode_attempts: Arc<AtomicU64>,
    /// Batch image buffers, recycled.
    pool: Arc<BufferPool<f32>>,
    /// The same for u8 batches ([`PixelOutput::RawU8`]).
    pool_u8: Arc<BufferPool<u8>>,
}

impl Loader {
    /// Validate `cfg` and start the worker threads.
    pub fn new(cfg: LoaderConfig) -> Result<Self, DataError> {
        cfg.validate()?;
        let threads = worker_count(&cfg);
        let positions = vec![ThreadPosition::Reading(ThreadCursor::epoch_start(0)); threads];
        Self::start(cfg, positions, 0, SkipCounts::new())
    }

    /// Start a loader that continues exactly where `state` was captured: it yields the batches
    /// (keys, image bytes, tokens) the saved loader would have yielded next, and its skip
    /// counts continue from the saved ones.
    ///
    /// Errors (naming the field) when `cfg` is invalid or differs from the saved loader's in
    /// what decides the batches: shard list, threads, batch size, seed, train mode, shuffle
    /// buffer, `drop_last`, pixel limit or caption source. Image size and context length may
    /// change.
    pub fn resume(cfg: LoaderConfig, state: &LoaderState) -> Result<Loader, DataError> {
        cfg.validate()?;
        let threads = worker_count(&cfg);
        state.config.check_matches(&ConfigFingerprint::of(&cfg, threads))?;
        let bad_state = |reason: String| DataError::BadConfig {
            field: "loader_state",
            reason,
        };
        if state.threads.len() != threads {
            return Err(bad_state(format!(
                "it has {} thread positions for {threads} threads",
                state.threads.len()
            )));
        }
        if state.next_thread >= threads {
            return Err(bad_state(format!(
                "next thread {} of {threads} threads",
                state.next_thread
            )));
        }
        let skips = state.skip_counts()?;
        Self::start(cfg, state.threads.clone(), state.next_thread, skips)
    }

    /// Position after the batches returned so far.
    pub fn state(&self) -> LoaderState {
        LoaderState {
            config: self.config.clone(),
            threads: self.positions.clone(),
            next_thread: self.next_thread,
            skips: skips_by_name(&self.skips),
        }
    }

    /// Start one worker per thread position that is still reading.
    fn start(
        cfg: LoaderConfig,
        positions: Vec<ThreadPosition>,
        next_thread: usize,
        skips: SkipCounts,
    ) -> Result<Self, DataError> {
        let threads = positions.len();
        let config = ConfigFingerprint::of(&cfg, threads);
        let tokenizer = (cfg.context_length > 0).then(|| Arc::new(Tokenizer::new()));
        let cfg = Arc::new(cfg);
        let stop = Arc::new(AtomicBool::new(false));
        let warned = Arc::new(Mutex::new(HashSet::new()));
        let decode_attempts = Arc::new(AtomicU64::new(0));
        let pool = Arc::new(BufferPool::new(threads));
        let pool_u8 = Arc::new(BufferPool::new(threads));
        let transform = if cfg.train {
            ImageTransform::train(cfg.image_size)
        } else {
            ImageTransform::eval(cfg.image_size)
        };
        let mut receivers = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for (thread, position) in positions.iter().enumerate() {
            let ThreadPosition::Reading(cursor) = position else {
                receivers.push(None);
                handles.push(None);
                continue;
            };
            let (sender, receiver) = crossbeam_channel::bounded(2);
            let worker = Worker {
                cfg: Arc::clone(&cfg),
                tokenizer: tokenizer.clone(),
                thread,
                threads,
                epoch_batches: thread_epoch_batches(&cfg, threads),
                sender,
                stop: Arc::clone(&stop),
                warned_shards: Arc::clone(&warned),
                decode_attempts: Arc::clone(&decode_attempts),
                transform: transform.clone(),
                pool: Arc::clone(&pool),
                pool_u8: Arc::clone(&pool_u8),
            };
            let cursor = cursor.clone();
            let handle = std::thread::Builder::new()
                .name(format!("loader-{thread}"))
                .spawn(move || worker.run(cursor))
                .map_err(|e| DataError::io("<loader thread>", e))?;
            receivers.push(Some(receiver));
            handles.push(Some(handle));
        }
        let live = receivers.iter().filter(|receiver| receiver.is_some()).count();
        Ok(Self {
            receivers,
            handles,
            next_thread,
            live,
            stop,
            skips,
            positions,
            config,
            decode_attempts,
            pool,
            pool_u8,
        })
    }

    /// The next batch, or `None` when every worker is done (eval pass finished).
    ///
    /// A worker that panicked (a bug, not bad data) re-raises its panic here.
    pub fn next_batch(&mut self) -> Option<Batch> {
        while self.live > 0 {
            let thread = self.next_thread;
            self.next_thread = (self.next_thread + 1) % self.receivers.len();
            let Some(receiver) = &self.receivers[thread] else {
                continue;
            };
            match receiver.recv() {
                Ok(Message::Batch(message)) => {
                    let BatchMessage { batch, skips, cursor } = *message;
                    self.skips.merge(&skips);
                    self.positions[thread] = ThreadPosition::Reading(cursor);
                    return Some(batch);
                }
                Ok(Message::Done(skips)) => {
                    self.skips.merge(&skips);
                    self.finish_thread(thread);
                }
                Err(_) => self.finish_thread(thread),
            }
        }
        None
    }

    /// Skipped samples and shards by reason, over the batches returned so far
    /// (deterministic: counts travel with the batches).
    pub fn skip_counts(&self) -> &SkipCounts {
        &self.skips
    }

    /// Samples the workers have tried to decode so far: those in returned batches, skipped
    /// ones, and those already in batches queued or being built (workers run ahead).
    pub fn decode_attempts(&self) -> u64 {
        self.decode_attempts.load(Ordering::Relaxed)
    }

    /// Batch image buffers allocated so far; the rest of the batches reused them.
    pub fn batch_buffers_allocated(&self) -> u64 {
        self.pool.allocated.load(Ordering::Relaxed) + self.pool_u8.allocated.load(Ordering::Relaxed)
    }

    fn finish_thread(&mut self, thread: usize) {
        self.receivers[thread] = None;
        self.positions[thread] = ThreadPosition::Finished;
        self.live -= 1;
        if let Some(handle) = self.handles[thread].take() {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Iterator for Loader {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.next_batch()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers wakes workers blocked on a full channel.
        self.receivers.clear();
        for handle in self.handles.iter_mut().filter_map(Option::take) {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests;
