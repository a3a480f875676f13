//! One background thread of a loader: its shards → shuffle buffer → decode into the batch
//! buffer → a [`Message`] with the batch and the thread's position right after it.
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::assembly::{ChunkDone, ChunkRegion, DecodePermits, Permit, StepAssembly};
use super::batch::{decode_sample_into, Batch};
use super::config::{LoaderConfig, PixelOutput};
use super::pool::{BatchImages, BufferPool};
use super::sampling::{derive_seed, epoch_shards, EpochShards, DOMAIN_AUGMENT, DOMAIN_SHUFFLE};
use crate::error::{SkipCounts, SkipReason};
use crate::imaging::{ImageTransform, OutputPixel};
use crate::position::{SampleRef, ThreadCursor};
use crate::tar_reader::{for_each_sample_at_with_limits, read_samples_at_with_limits, RawSample, TarSkip};
use crate::tokenizer::Tokenizer;

/// A worker gives up after this many shard draws in a row without a usable sample (plus one
/// per shard), so resampled shards that are all bad end the loader instead of spinning. With
/// a fraction `p` of the weight on good shards a false stop has probability `(1 - p)^1000`.
pub(super) const MAX_DRAWS_WITHOUT_SAMPLE: usize = 1000;

/// A partition of a canonical stream gives up after this many epochs in a row without a
/// usable sample. Its shards are dealt anew every epoch, so with a fraction `f` of the shards
/// unusable a false stop has probability about `f^32`.
pub(super) const MAX_EMPTY_EPOCHS: u32 = 32;

/// What a worker sends: a batch plus the skips counted since its previous message and its
/// position right after the batch, or its end.
pub(super) enum Message {
    Batch(Box<BatchMessage>),
    Done(SkipCounts),
}

/// A batch as sent by a worker (boxed: much larger than `Done`).
pub(super) struct BatchMessage {
    pub(super) batch: Batch,
    pub(super) skips: SkipCounts,
    pub(super) cursor: ThreadCursor,
}

/// Where a worker's batches go.
pub(super) enum Output {
    /// Whole batches, one stream's each, through a channel.
    Channel(Sender<Message>),
    /// One partition's chunk of each batch of a canonical stream, decoded in place.
    Assembly {
        assembly: Arc<StepAssembly>,
        /// The partition's place among the rank's partitions (its region of each batch).
        part: usize,
        permits: Arc<DecodePermits>,
    },
}

/// One background thread: its shards → shuffle buffer → decode → batches (or chunks).
pub(super) struct Worker {
    pub(super) cfg: Arc<LoaderConfig>,
    pub(super) tokenizer: Option<Arc<Tokenizer>>,
    pub(super) thread: usize,
    pub(super) threads: usize,
    /// Batches per virtual epoch of this thread (resampled mode), `None` otherwise.
    pub(super) epoch_batches: Option<u64>,
    pub(super) output: Output,
    /// Chunks handed over so far (canonical stream): the batch the next one belongs to.
    pub(super) chunks: Cell<u64>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) warned_shards: Arc<Mutex<HashSet<PathBuf>>>,
    pub(super) decode_attempts: Arc<AtomicU64>,
    /// The image transform of the loader's mode.
    pub(super) transform: ImageTransform,
    /// Where batch image buffers come from and go back to.
    pub(super) pool: Arc<BufferPool<f32>>,
    /// The same for u8 batches.
    pub(super) pool_u8: Arc<BufferPool<u8>>,
}

/// The batch a worker is filling: each sample is decoded straight into its slot of the
/// batch's image buffer, so no per-sample image is allocated or copied.
#[derive(Default)]
struct PendingBatch {
    /// `batch_size` image slots once the first sample is placed (empty before), f32 mode.
    images: Vec<f32>,
    /// The same in u8 mode ([`PixelOutput::RawU8`]).
    images_u8: Vec<u8>,
    tokens: Vec<i64>,
    captions: Vec<Vec<String>>,
    labels: Vec<Option<i64>>,
    keys: Vec<String>,
    /// The chunk's region of the rank's batch (canonical stream), f32 mode.
    region: Option<ChunkRegion<f32>>,
    /// The same in u8 mode.
    region_u8: Option<ChunkRegion<u8>>,
    /// The decode permit held while the chunk is filled (canonical stream).
    permit: Option<Permit>,
}

impl PendingBatch {
    fn len(&self) -> usize {
        self.keys.len()
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Why a worker stopped reading an epoch early.
enum Halt {
    /// The loader is gone.
    Disconnected,
    /// The virtual epoch has all its batches (resampled mode).
    EpochFull,
    /// Resampled shards gave no usable sample in too many draws in a row.
    Starved,
}

/// Per-epoch state of a worker.
struct EpochState {
    epoch: u64,
    shuffle_rng: ChaCha8Rng,
    /// Raw samples waiting to be picked, with where to read them again.
    buffer: Vec<(SampleRef, RawSample)>,
    pending: PendingBatch,
    skips: SkipCounts,
    samples: u64,
    /// Position of the shard being read in the epoch's read order (the list's length once
    /// all are read; in resampled mode the draw count, which is the draw generator's position).
    shard: usize,
    /// Tar offset in that shard where reading continues after the samples taken so far.
    offset: u64,
    /// Whether a sample was decoded while reading the current shard. A saved position lies
    /// right after a decoded sample, so a restored mid-epoch state starts with `true`.
    sample_in_shard: bool,
}

impl EpochState {
    /// The position to resume from; taken right after a batch is built, when no decoded sample
    /// is pending.
    fn cursor(&self) -> ThreadCursor {
        ThreadCursor {
            epoch: self.epoch,
            shard: self.shard,
            offset: self.offset,
            buffer: self.buffer.iter().map(|(at, _)| at.clone()).collect(),
            // The generator is re-seeded every epoch and draws a few words per sample, so
            // its word position stays far below 2^64.
            shuffle_words: u64::try_from(self.shuffle_rng.get_word_pos()).unwrap_or(u64::MAX),
            samples: self.samples,
        }
    }
}

impl Worker {
    /// Produce batches from `start` on, epoch after epoch (train) or to the end of the pass.
    pub(super) fn run(self, start: ThreadCursor) {
        let mut skips_left = SkipCounts::new();
        let mut cursor = start;
        let mut empty_epochs = 0;
        loop {
            let epoch = cursor.epoch;
            let shards = epoch_shards(&self.cfg, self.threads, self.thread, epoch);
            let mut state = self.restore(&shards, cursor, std::mem::take(&mut skips_left));
            match self.run_epoch(&shards, &mut state) {
                ControlFlow::Break(Halt::Disconnected) => return,
                ControlFlow::Break(Halt::EpochFull) => {
                    skips_left = std::mem::take(&mut state.skips);
                    cursor = ThreadCursor::epoch_start(epoch + 1);
                    continue;
                }
                ControlFlow::Break(Halt::Starved) => {
                    tracing::warn!(
                        thread = self.thread,
                        "loader thread stops: {} resampled shard draws in a row gave no usable sample",
                        self.max_draws_without_sample()
                    );
                    skips_left = std::mem::take(&mut state.skips);
                    break;
                }
                ControlFlow::Continue(()) => {}
            }
            skips_left = std::mem::take(&mut state.skips);
            let listed = shards.listed_len().unwrap_or(0);
            if !self.cfg.train || listed == 0 {
                break;
            }
            if state.samples == 0 {
                empty_epochs += 1;
                // A partition of a canonical stream cannot stop while others go on (every batch
                // needs its chunk): its next epoch deals it other shards, so it tries again, up
                // to a bound that only data without any usable sample reaches.
                if self.cfg.partitions.is_none() || empty_epochs >= MAX_EMPTY_EPOCHS {
                    tracing::warn!(
                        thread = self.thread,
                        "loader thread stops: no usable sample in its {listed} shard(s){}",
                        if empty_epochs > 1 {
                            format!(", {empty_epochs} epochs in a row")
                        } else {
                            String::new()
                        }
                    );
                    break;
                }
                tracing::debug!(
                    partition = self.thread,
                    epoch,
                    "no usable sample in this epoch's shards"
                );
            } else {
                empty_epochs = 0;
            }
            cursor = ThreadCursor::epoch_start(epoch + 1);
        }
        match &self.output {
            Output::Channel(sender) => {
                let _ = sender.send(Message::Done(skips_left));
            }
            Output::Assembly { assembly, .. } => assembly.stream_ended(skips_left),
        }
    }

    fn max_draws_without_sample(&self) -> usize {
        MAX_DRAWS_WITHOUT_SAMPLE + self.cfg.shards.len()
    }

    /// The epoch state at `cursor`: the shuffle generator at its saved position and the
    /// buffered samples read again from their shards (raw bytes only, nothing decoded).
    fn restore(&self, shards: &EpochShards<'_>, cursor: ThreadCursor, skips: SkipCounts) -> EpochState {
        let seed = |domain| derive_seed(&[self.cfg.seed, domain, cursor.epoch, self.thread as u64]);
        let mut shuffle_rng = ChaCha8Rng::seed_from_u64(seed(DOMAIN_SHUFFLE));
        shuffle_rng.set_word_pos(u128::from(cursor.shuffle_words));
        let mut state = EpochState {
            epoch: cursor.epoch,
            shuffle_rng,
            buffer: Vec::with_capacity(cursor.buffer.len()),
            pending: PendingBatch::default(),
            skips,
            samples: cursor.samples,
            shard: cursor.shard,
            offset: cursor.offset,
            sample_in_shard: cursor.samples > 0,
        };
        if cursor.buffer.is_empty() {
            return state;
        }
        let mut starts_by_shard: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for at in &cursor.buffer {
            starts_by_shard.entry(at.shard).or_default().push(at.start);
        }
        let mut found: HashMap<SampleRef, RawSample> = HashMap::with_capacity(cursor.buffer.len());
        for (shard, starts) in starts_by_shard {
            let Some(path) = shards.get(shard) else {
                continue;
            };
            match read_samples_at_with_limits(path, &starts, self.cfg.read_limits()) {
                Ok(samples) => found.extend(
                    samples
                        .into_iter()
                        .map(|(start, raw)| (SampleRef { shard, start }, raw)),
                ),
                Err(skip) => tracing::warn!("resuming: {skip}"),
            }
        }
        for at in cursor.buffer {
            match found.remove(&at) {
                Some(raw) => state.buffer.push((at, raw)),
                None => {
                    // The shard changed or vanished since the state was saved: the run goes
                    // on, but no longer exactly as the saved one would have.
                    tracing::warn!(
                        thread = self.thread,
                        shard = at.shard,
                        offset = at.start,
                        "resuming: a buffered sample cannot be read again; the resumed run differs from the saved one"
                    );
                    state.skips.add(SkipReason::ShardReadError);
                }
            }
        }
        state
    }

    /// Read, shuffle, decode and send the rest of an epoch from `state`'s shard and offset.
    /// `Continue` when every listed shard is read; resampled epochs end only by `Break`.
    fn run_epoch(&self, shards: &EpochShards<'_>, state: &mut EpochState) -> ControlFlow<Halt> {
        let buffer_size = if self.cfg.train { self.cfg.shuffle_buffer } else { 0 };
        let (first_shard, first_offset) = (state.shard, state.offset);
        let mut draws_without_sample = 0;
        let mut index = first_shard;
        while let Some(shard) = shards.get(index) {
            let offset = if index == first_shard { first_offset } else { 0 };
            if index != first_shard {
                state.sample_in_shard = false;
            }
            state.shard = index;
            state.offset = offset;
            let mut flow = ControlFlow::Continue(());
            for_each_sample_at_with_limits(shard, offset, self.cfg.read_limits(), |item| {
                if self.stop.load(Ordering::Relaxed) {
                    flow = ControlFlow::Break(Halt::Disconnected);
                    return ControlFlow::Break(());
                }
                match item {
                    Err(skip) => {
                        self.report_skip(&skip, state);
                    }
                    Ok((raw, span)) => {
                        if let ControlFlow::Break(halt) = self.claim_chunk(&mut state.pending) {
                            flow = ControlFlow::Break(halt);
                            return ControlFlow::Break(());
                        }
                        state.offset = span.next;
                        if buffer_size <= 1 {
                            flow = self.process(raw, state);
                        } else {
                            let at = SampleRef {
                                shard: index,
                                start: span.start,
                            };
                            state.buffer.push((at, raw));
                            if state.buffer.len() >= buffer_size {
                                flow = self.process_pick(state);
                            }
                        }
                    }
                }
                match flow {
                    ControlFlow::Continue(()) => ControlFlow::Continue(()),
                    ControlFlow::Break(_) => ControlFlow::Break(()),
                }
            });
            flow?;
            if shards.listed_len().is_none() {
                draws_without_sample = if state.sample_in_shard {
                    0
                } else {
                    draws_without_sample + 1
                };
                if draws_without_sample >= self.max_draws_without_sample() {
                    return ControlFlow::Break(Halt::Starved);
                }
            }
            index += 1;
        }
        state.shard = index;
        state.offset = 0;
        while !state.buffer.is_empty() {
            self.process_pick(state)?;
        }
        if !state.pending.is_empty() && !self.cfg.drop_last {
            self.send_batch(state)?;
        }
        // A dropped partial batch: its samples go, its buffer is kept for the next epoch.
        let dropped = std::mem::take(&mut state.pending);
        self.pool.give_back(dropped.images);
        ControlFlow::Continue(())
    }

    /// Take a random sample out of the shuffle buffer and process it.
    fn process_pick(&self, state: &mut EpochState) -> ControlFlow<Halt> {
        let pick = state.shuffle_rng.gen_range(0..state.buffer.len());
        let (_, raw) = state.buffer.swap_remove(pick);
        self.process(raw, state)
    }

    fn report_skip(&self, skip: &TarSkip, state: &mut EpochState) {
        state.skips.add(skip.reason);
        let shard_level = matches!(
            skip.reason,
            SkipReason::UnreadableShard
                | SkipReason::ShardReadError
                | SkipReason::TruncatedMember
                | SkipReason::OversizedShard
        );
        if !shard_level {
            tracing::debug!("skipped: {skip}");
            return;
        }
        let first_time = self
            .warned_shards
            .lock()
            .map(|mut warned| warned.insert(skip.shard.clone()))
            .unwrap_or(true);
        if first_time {
            tracing::warn!("bad shard {}: {skip}", skip.shard.display());
        }
    }

    /// Decode one raw sample into its slot of the pending batch; send the batch when full.
    fn process(&self, raw: RawSample, state: &mut EpochState) -> ControlFlow<Halt> {
        self.decode_attempts.fetch_add(1, Ordering::Relaxed);
        // One generator per sample, seeded by its place in the thread's epoch output, so a
        // resumed loader draws the same crops without replaying earlier samples.
        let mut augment_rng = ChaCha8Rng::seed_from_u64(derive_seed(&[
            self.cfg.seed,
            DOMAIN_AUGMENT,
            state.epoch,
            self.thread as u64,
            state.samples,
        ]));
        let image_len = self.transform.output_len();
        let pending = &mut state.pending;
        // The slot after the samples placed so far; a skipped sample's partial output there
        // is overwritten by the next one.
        let slot_range = pending.len() * image_len..(pending.len() + 1) * image_len;
        let decoded = match &self.output {
            Output::Channel(_) => match self.cfg.pixel_output {
                PixelOutput::NormalizedF32 => {
                    if pending.images.is_empty() {
                        pending.images = self.pool.take(self.cfg.batch_size * image_len);
                    }
                    self.decode_into(&raw, &mut augment_rng, &mut pending.images[slot_range])
                }
                PixelOutput::RawU8 => {
                    if pending.images_u8.is_empty() {
                        pending.images_u8 = self.pool_u8.take(self.cfg.batch_size * image_len);
                    }
                    self.decode_into(&raw, &mut augment_rng, &mut pending.images_u8[slot_range])
                }
            },
            Output::Assembly { .. } => {
                // Normally claimed when the chunk's first sample was read; again here for
                // samples drained from the buffer at an epoch's end.
                self.claim_chunk(pending)?;
                match self.cfg.pixel_output {
                    PixelOutput::NormalizedF32 => {
                        let region = pending.region.as_mut().expect("claimed");
                        self.decode_into(&raw, &mut augment_rng, &mut region.values_mut()[slot_range])
                    }
                    PixelOutput::RawU8 => {
                        let region = pending.region_u8.as_mut().expect("claimed");
                        self.decode_into(&raw, &mut augment_rng, &mut region.values_mut()[slot_range])
                    }
                }
            }
        };
        match decoded {
            Ok((captions, label)) => {
                state.samples += 1;
                state.sample_in_shard = true;
                if let Some(tokenizer) = &self.tokenizer {
                    pending
                        .tokens
                        .extend(tokenizer.tokenize(&captions.join("\n"), self.cfg.context_length));
                }
                pending.captions.push(captions);
                pending.labels.push(label);
                pending.keys.push(raw.key);
                if pending.len() == self.cfg.stream_batch() {
                    return self.send_batch(state);
                }
            }
            Err(reason) => {
                tracing::debug!(shard = %raw.shard.display(), key = %raw.key, "skipped sample: {reason}");
                state.skips.add(reason);
            }
        }
        ControlFlow::Continue(())
    }

    /// Canonical stream: the pending chunk's region of its batch and a decode permit, taken
    /// (in that order: a worker waiting for its region must not hold a permit another
    /// partition needs) before the chunk's first sample is read, and kept until the chunk is
    /// handed over. So reading and decoding together run on at most `threads` partitions at
    /// once, as with per-thread streams, and `data.workers` bounds the CPUs the loader uses.
    fn claim_chunk(&self, pending: &mut PendingBatch) -> ControlFlow<Halt> {
        let Output::Assembly {
            assembly,
            part,
            permits,
        } = &self.output
        else {
            return ControlFlow::Continue(());
        };
        let batch = self.chunks.get();
        let claimed = match self.cfg.pixel_output {
            PixelOutput::NormalizedF32 => {
                if pending.region.is_none() {
                    pending.region = assembly.begin(*part, batch);
                }
                pending.region.is_some()
            }
            PixelOutput::RawU8 => {
                if pending.region_u8.is_none() {
                    pending.region_u8 = assembly.begin(*part, batch);
                }
                pending.region_u8.is_some()
            }
        };
        if !claimed {
            return ControlFlow::Break(Halt::Disconnected);
        }
        if pending.permit.is_none() {
            pending.permit = Some(permits.acquire());
        }
        ControlFlow::Continue(())
    }

    /// Decode `raw` into `slot` with the loader's transform.
    fn decode_into<P: OutputPixel>(
        &self,
        raw: &RawSample,
        rng: &mut ChaCha8Rng,
        slot: &mut [P],
    ) -> Result<(Vec<String>, Option<i64>), SkipReason> {
        decode_sample_into(raw, &self.cfg.caption, &self.transform, self.cfg.max_pixels, rng, slot)
    }

    /// Send the pending samples as a batch with the position after it; `Break(EpochFull)` once
    /// a virtual epoch has all its batches (the position sent is then the next epoch's start).
    fn send_batch(&self, state: &mut EpochState) -> ControlFlow<Halt> {
        if let Output::Assembly { assembly, part, .. } = &self.output {
            return self.complete_chunk(state, assembly, *part);
        }
        let pending = std::mem::take(&mut state.pending);
        let context_length = if self.tokenizer.is_some() {
            self.cfg.context_length
        } else {
            0
        };
        let len = pending.keys.len() * self.transform.output_len();
        let mut images = pending.images;
        images.truncate(len);
        let mut images_u8 = pending.images_u8;
        images_u8.truncate(len);
        let batch = Batch {
            images: BatchImages::pooled(images, &self.pool),
            images_u8: BatchImages::pooled(images_u8, &self.pool_u8),
            tokens: pending.tokens,
            captions: pending.captions,
            labels: pending.labels,
            keys: pending.keys,
            epoch: state.epoch,
            image_size: self.cfg.image_size,
            context_length,
        };
        let skips = std::mem::take(&mut state.skips);
        let (cursor, epoch_full) = self.position_after_batch(state);
        let message = BatchMessage { batch, skips, cursor };
        let Output::Channel(sender) = &self.output else {
            unreachable!("send_batch handles the channel output");
        };
        match sender.send(Message::Batch(Box::new(message))) {
            Ok(()) if epoch_full => ControlFlow::Break(Halt::EpochFull),
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(Halt::Disconnected),
        }
    }

    /// The position right after the batch (or chunk) just built, and whether it completed a
    /// virtual epoch (the position is then the next epoch's start). Only whole batches are
    /// made in resampled mode (it never drains a partial one), so the samples so far are a
    /// whole number of batches.
    fn position_after_batch(&self, state: &EpochState) -> (ThreadCursor, bool) {
        let epoch_full = self
            .epoch_batches
            .is_some_and(|batches| state.samples >= batches.saturating_mul(self.cfg.stream_batch() as u64));
        match epoch_full {
            true => (ThreadCursor::epoch_start(state.epoch + 1), true),
            false => (state.cursor(), false),
        }
    }

    /// Hand the pending chunk to the assembly with the position after it (canonical stream);
    /// `Break(EpochFull)` as [`Worker::send_batch`].
    fn complete_chunk(&self, state: &mut EpochState, assembly: &StepAssembly, part: usize) -> ControlFlow<Halt> {
        let mut pending = std::mem::take(&mut state.pending);
        // Decoding is done: another partition may decode while this one hands over.
        drop(pending.permit.take());
        let batch = self.chunks.get();
        let skips = std::mem::take(&mut state.skips);
        let (cursor, epoch_full) = self.position_after_batch(state);
        let chunk = ChunkDone {
            tokens: pending.tokens,
            captions: pending.captions,
            labels: pending.labels,
            keys: pending.keys,
            skips,
            cursor,
            epoch: state.epoch,
        };
        match (pending.region.take(), pending.region_u8.take()) {
            (Some(region), _) => assembly.complete(part, batch, region, chunk),
            (None, Some(region)) => assembly.complete(part, batch, region, chunk),
            (None, None) => unreachable!("a full chunk has its region"),
        }
        self.chunks.set(batch + 1);
        if epoch_full {
            ControlFlow::Break(Halt::EpochFull)
        } else {
            ControlFlow::Continue(())
        }
    }
}
