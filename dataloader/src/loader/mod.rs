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
use crate::position::{skips_by_name, ConfigFingerprint, LoaderState, PartitionSkips, ThreadCursor, ThreadPosition};
use crate::tokenizer::Tokenizer;

mod assembly;
mod batch;
pub(crate) mod config;
mod pool;
pub mod ranks;
mod sampling;
mod worker;

use assembly::{AssembledBatch, DecodePermits, NoBatch, StepAssembly};
pub use batch::{captions_of, decode_sample, decode_sample_into, label_of, Batch, Sample, IMAGE_EXTENSIONS};
pub use config::{virtual_epoch_batches, CaptionSource, LoaderConfig, Partitions, PixelOutput, Sampling};
pub use pool::BatchImages;
use pool::BufferPool;
use sampling::{thread_epoch_batches, worker_count};
use worker::{BatchMessage, Message, Output, Worker};

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
    /// A canonical stream's batches, filled in place by the partitions' workers (then
    /// `positions` are the rank's partitions', from `first_partition` on).
    assembly: Option<Arc<StepAssembly>>,
    /// The first partition this loader runs (0 without partitions).
    first_partition: usize,
    /// Skips per partition this loader runs (canonical stream), so that a state split over
    /// another worker count keeps each partition's own counts.
    partition_skips: Vec<SkipCounts>,
    /// Whether the stream ended (a partition had no usable sample).
    ended: bool,
    image_size: u32,
    context_length: usize,
}

impl Loader {
    /// Validate `cfg` and start the worker threads.
    pub fn new(cfg: LoaderConfig) -> Result<Self, DataError> {
        cfg.validate()?;
        let streams = cfg.partitions.map_or(worker_count(&cfg), |p| p.per_rank());
        let positions = vec![ThreadPosition::Reading(ThreadCursor::epoch_start(0)); streams];
        let partition_skips = vec![SkipCounts::new(); if cfg.partitions.is_some() { streams } else { 0 }];
        Self::start(cfg, positions, 0, SkipCounts::new(), partition_skips)
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
        if let Some(partitions) = &cfg.partitions {
            // Any state covering this rank's partitions fits: the whole stream's (merged from
            // every rank of the saved run, whatever their number) or exactly this rank's.
            let owned = partitions.owned();
            let saved = state.first_partition..state.first_partition + state.threads.len();
            if owned.start < saved.start || owned.end > saved.end {
                return Err(bad_state(format!(
                    "it holds partitions {}..{} of {}, this loader runs {}..{}",
                    saved.start, saved.end, partitions.count, owned.start, owned.end
                )));
            }
            let local = owned.start - saved.start..owned.end - saved.start;
            let positions = state.threads[local.clone()].to_vec();
            let partition_skips = match &state.partition_skips {
                Some(per_partition) if per_partition.len() == state.threads.len() => per_partition[local]
                    .iter()
                    .map(crate::position::skip_counts_of)
                    .collect::<Result<Vec<_>, _>>()?,
                _ => {
                    return Err(bad_state(
                        "a partitioned state without per-partition skip counts".into(),
                    ))
                }
            };
            let mut skips = SkipCounts::new();
            for counts in &partition_skips {
                skips.merge(counts);
            }
            return Self::start(cfg, positions, 0, skips, partition_skips);
        }
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
        Self::start(cfg, state.threads.clone(), state.next_thread, skips, Vec::new())
    }

    /// Position after the batches returned so far.
    pub fn state(&self) -> LoaderState {
        LoaderState {
            config: self.config.clone(),
            threads: self.positions.clone(),
            next_thread: self.next_thread,
            skips: skips_by_name(&self.skips),
            first_partition: self.first_partition,
            partition_skips: self.assembly.as_ref().map(|_| {
                self.partition_skips
                    .iter()
                    .map(skips_by_name)
                    .collect::<Vec<PartitionSkips>>()
            }),
        }
    }

    /// Start one worker per thread position that is still reading.
    fn start(
        cfg: LoaderConfig,
        positions: Vec<ThreadPosition>,
        next_thread: usize,
        skips: SkipCounts,
        partition_skips: Vec<SkipCounts>,
    ) -> Result<Self, DataError> {
        // Streams: every partition of the run with partitions (this loader runs some), else
        // one per thread position.
        let threads = worker_count(&cfg);
        let config = ConfigFingerprint::of(&cfg, threads);
        let first_partition = cfg.partitions.map_or(0, |p| p.owned().start);
        let tokenizer = (cfg.context_length > 0).then(|| Arc::new(Tokenizer::new()));
        let cfg = Arc::new(cfg);
        let stop = Arc::new(AtomicBool::new(false));
        let warned = Arc::new(Mutex::new(HashSet::new()));
        let decode_attempts = Arc::new(AtomicU64::new(0));
        let pool = Arc::new(BufferPool::new(if cfg.partitions.is_some() { 1 } else { threads }));
        let pool_u8 = Arc::new(BufferPool::new(if cfg.partitions.is_some() { 1 } else { threads }));
        let transform = if cfg.train {
            ImageTransform::train(cfg.image_size)
        } else {
            ImageTransform::eval(cfg.image_size)
        };
        let assembly = cfg.partitions.map(|partitions| {
            Arc::new(StepAssembly::new(
                partitions.per_rank(),
                cfg.stream_batch() * transform.output_len(),
                cfg.pixel_output == PixelOutput::RawU8,
                Arc::clone(&pool),
                Arc::clone(&pool_u8),
            ))
        });
        let permits = Arc::new(DecodePermits::new(cfg.threads));
        let mut receivers = Vec::with_capacity(positions.len());
        let mut handles = Vec::with_capacity(positions.len());
        for (local, position) in positions.iter().enumerate() {
            let ThreadPosition::Reading(cursor) = position else {
                receivers.push(None);
                handles.push(None);
                continue;
            };
            let thread = first_partition + local;
            let (output, receiver) = match &assembly {
                Some(assembly) => (
                    Output::Assembly {
                        assembly: Arc::clone(assembly),
                        part: local,
                        permits: Arc::clone(&permits),
                    },
                    None,
                ),
                None => {
                    let (sender, receiver) = crossbeam_channel::bounded(2);
                    (Output::Channel(sender), Some(receiver))
                }
            };
            let worker = Worker {
                cfg: Arc::clone(&cfg),
                tokenizer: tokenizer.clone(),
                thread,
                threads,
                epoch_batches: thread_epoch_batches(&cfg, threads),
                output,
                chunks: std::cell::Cell::new(0),
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
            receivers.push(receiver);
            handles.push(Some(handle));
        }
        let live = match &assembly {
            Some(_) => handles.iter().filter(|handle| handle.is_some()).count(),
            None => receivers.iter().filter(|receiver| receiver.is_some()).count(),
        };
        // A canonical stream with a finished partition (saved that way) has no more batches.
        let ended = assembly.is_some() && live < positions.len();
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
            assembly,
            first_partition,
            partition_skips,
            ended,
            image_size: cfg.image_size,
            context_length: cfg.context_length,
        })
    }

    /// The next batch, or `None` when every worker is done (eval pass finished).
    ///
    /// A worker that panicked (a bug, not bad data) re-raises its panic here.
    pub fn next_batch(&mut self) -> Option<Batch> {
        if self.assembly.is_some() {
            return self.next_assembled();
        }
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

    /// The next batch of a canonical stream: every partition's chunk, side by side.
    fn next_assembled(&mut self) -> Option<Batch> {
        let assembly = Arc::clone(self.assembly.as_ref()?);
        if self.ended {
            return None;
        }
        match assembly.take_next() {
            Ok(batch) => Some(self.batch_of(batch)),
            Err((why, skips)) => {
                self.skips.merge(&skips);
                self.ended = true;
                if matches!(why, NoBatch::Ended) {
                    // Re-raise a worker's panic, as the per-thread path does.
                    self.stop.store(true, Ordering::Relaxed);
                    assembly.stop();
                    for handle in self.handles.iter_mut().filter_map(Option::take) {
                        if let Err(panic) = handle.join() {
                            std::panic::resume_unwind(panic);
                        }
                    }
                }
                None
            }
        }
    }

    /// A batch from the chunks of an assembled one, recording each partition's position.
    fn batch_of(&mut self, assembled: AssembledBatch) -> Batch {
        let AssembledBatch {
            images,
            images_u8,
            parts,
        } = assembled;
        let samples: usize = parts.iter().map(|part| part.keys.len()).sum();
        let mut batch = Batch {
            images: BatchImages::pooled(images, &self.pool),
            images_u8: BatchImages::pooled(images_u8, &self.pool_u8),
            tokens: Vec::new(),
            captions: Vec::with_capacity(samples),
            labels: Vec::with_capacity(samples),
            keys: Vec::with_capacity(samples),
            epoch: parts.iter().map(|part| part.epoch).min().unwrap_or(0),
            image_size: self.image_size,
            context_length: self.context_length,
        };
        for (local, part) in parts.into_iter().enumerate() {
            self.skips.merge(&part.skips);
            self.partition_skips[local].merge(&part.skips);
            self.positions[local] = ThreadPosition::Reading(part.cursor);
            batch.tokens.extend(part.tokens);
            batch.captions.extend(part.captions);
            batch.labels.extend(part.labels);
            batch.keys.extend(part.keys);
        }
        batch
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
        if let Some(assembly) = &self.assembly {
            assembly.stop();
        }
        // Dropping the receivers wakes workers blocked on a full channel.
        self.receivers.clear();
        for handle in self.handles.iter_mut().filter_map(Option::take) {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests;
