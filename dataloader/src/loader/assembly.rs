//! A canonical stream's batches, assembled in place: each partition's worker thread decodes
//! its chunk straight into its region of the rank's batch buffer (no per-chunk buffer, no
//! copy), and the consumer takes a batch once every region is filled. Workers run at most
//! [`LOOKAHEAD`] batches ahead of the consumer; [`DecodePermits`] keeps the number of samples
//! decoding at once at the configured thread count, however many partitions a rank runs.
//!
//! The one `unsafe` of the loader is here: regions of one buffer written from several threads.
//! Its rule, kept by [`StepAssembly`]: a region belongs to one partition's worker from
//! [`StepAssembly::begin`] until [`StepAssembly::complete`], regions of a batch never overlap,
//! and the buffer is neither moved, resized nor read until every region is complete.
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::pool::BufferPool;
use crate::error::SkipCounts;
use crate::position::ThreadCursor;

/// Batches the workers may build ahead of the one the consumer takes next.
pub(super) const LOOKAHEAD: u64 = 2;

/// One partition's chunk of a batch, as its worker hands it over (the images are already in
/// the batch buffer).
pub(super) struct ChunkDone {
    pub(super) tokens: Vec<i64>,
    pub(super) captions: Vec<Vec<String>>,
    pub(super) labels: Vec<Option<i64>>,
    pub(super) keys: Vec<String>,
    /// Skips since the partition's previous chunk.
    pub(super) skips: SkipCounts,
    /// The partition's position right after this chunk.
    pub(super) cursor: ThreadCursor,
    pub(super) epoch: u64,
}

/// A batch the consumer took: the filled buffer and each partition's chunk, in partition
/// order.
pub(super) struct AssembledBatch {
    pub(super) images: Vec<f32>,
    pub(super) images_u8: Vec<u8>,
    pub(super) parts: Vec<ChunkDone>,
}

/// Why no batch comes: a partition stream ended (with the skips it counted since its last
/// chunk), or the loader is stopping.
pub(super) enum NoBatch {
    Ended,
    Stopped,
}

/// A worker's region of a batch buffer: `len` values from `ptr`, written only by that worker.
pub(super) struct ChunkRegion<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: a region is a unique handle on its values (see the module note); sending it to the
// worker thread that fills it is like sending a `&mut [T]`.
unsafe impl<T: Send> Send for ChunkRegion<T> {}

impl<T> ChunkRegion<T> {
    /// The region's values.
    pub(super) fn values_mut(&mut self) -> &mut [T] {
        // SAFETY: `ptr..ptr+len` lies inside a live slot buffer that nothing else writes, reads,
        // moves or frees until this region's chunk is completed (module note); `&mut self`
        // makes the returned slice the only one.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// A batch being filled.
struct Slot {
    images: Vec<f32>,
    images_u8: Vec<u8>,
    parts: Vec<Option<ChunkDone>>,
    filled: usize,
}

struct State {
    /// The batch the consumer takes next (counted from the loader's start).
    next: u64,
    slots: BTreeMap<u64, Slot>,
    /// Set when a partition stream ends: no later batch can be complete.
    ended: bool,
    ended_skips: SkipCounts,
    stopped: bool,
}

/// The batches of one rank's partitions, filled in place (module note).
pub(super) struct StepAssembly {
    state: Mutex<State>,
    changed: Condvar,
    /// Partitions (chunks) per batch.
    parts: usize,
    /// Values per chunk.
    chunk_len: usize,
    /// Whether batches hold u8 levels (else f32).
    raw_u8: bool,
    pool: Arc<BufferPool<f32>>,
    pool_u8: Arc<BufferPool<u8>>,
}

impl StepAssembly {
    pub(super) fn new(
        parts: usize,
        chunk_len: usize,
        raw_u8: bool,
        pool: Arc<BufferPool<f32>>,
        pool_u8: Arc<BufferPool<u8>>,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                next: 0,
                slots: BTreeMap::new(),
                ended: false,
                ended_skips: SkipCounts::new(),
                stopped: false,
            }),
            changed: Condvar::new(),
            parts,
            chunk_len,
            raw_u8,
            pool,
            pool_u8,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A worker that panicked while holding the lock re-raises in the consumer anyway.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Region `part` of batch `batch`, for a worker about to decode into it (the same region
    /// again if the worker asks twice, e.g. after dropping a partial chunk at an epoch end);
    /// waits while `batch` is more than [`LOOKAHEAD`] ahead. `None` once the loader stops.
    pub(super) fn begin<T: SlotPixel>(&self, part: usize, batch: u64) -> Option<ChunkRegion<T>> {
        let mut state = self.lock();
        while !state.stopped && batch >= state.next + LOOKAHEAD {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if state.stopped {
            return None;
        }
        let total = self.parts * self.chunk_len;
        let (pool, pool_u8, parts, raw_u8) = (&self.pool, &self.pool_u8, self.parts, self.raw_u8);
        let slot = state.slots.entry(batch).or_insert_with(|| Slot {
            images: if raw_u8 { Vec::new() } else { pool.take(total) },
            images_u8: if raw_u8 { pool_u8.take(total) } else { Vec::new() },
            parts: (0..parts).map(|_| None).collect(),
            filled: 0,
        });
        let buffer: &mut [T] = T::pick(&mut slot.images, &mut slot.images_u8);
        assert_eq!(buffer.len(), total, "batch buffer of {total} values");
        assert!(
            part < self.parts && slot.parts[part].is_none(),
            "region {part} handed out once"
        );
        // SAFETY: `part < parts`, so the range lies inside the buffer; the slot (and its
        // buffer) stays in the map until every part is complete (module note).
        let ptr = unsafe { buffer.as_mut_ptr().add(part * self.chunk_len) };
        Some(ChunkRegion {
            ptr,
            len: self.chunk_len,
        })
    }

    /// Hands over `part`'s chunk of `batch`, whose region (`region`, consumed) is filled.
    pub(super) fn complete<T>(&self, part: usize, batch: u64, region: ChunkRegion<T>, chunk: ChunkDone) {
        // The region is given up here, before the slot can be taken.
        let ChunkRegion { .. } = region;
        let mut state = self.lock();
        if let Some(slot) = state.slots.get_mut(&batch) {
            slot.parts[part] = Some(chunk);
            slot.filled += 1;
        }
        self.changed.notify_all();
    }

    /// A partition stream ended (no usable sample): batches from now on cannot be complete.
    pub(super) fn stream_ended(&self, skips: SkipCounts) {
        let mut state = self.lock();
        state.ended = true;
        state.ended_skips.merge(&skips);
        self.changed.notify_all();
    }

    /// The next batch, once every partition filled its chunk.
    pub(super) fn take_next(&self) -> Result<AssembledBatch, (NoBatch, SkipCounts)> {
        let mut state = self.lock();
        loop {
            let next = state.next;
            if state.slots.get(&next).is_some_and(|slot| slot.filled == self.parts) {
                let slot = state.slots.remove(&next).expect("checked above");
                state.next += 1;
                self.changed.notify_all();
                return Ok(AssembledBatch {
                    images: slot.images,
                    images_u8: slot.images_u8,
                    parts: slot.parts.into_iter().map(|part| part.expect("all filled")).collect(),
                });
            }
            if state.stopped {
                return Err((NoBatch::Stopped, SkipCounts::new()));
            }
            if state.ended {
                return Err((NoBatch::Ended, std::mem::take(&mut state.ended_skips)));
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Wakes every waiting worker to stop. Slots still being filled keep their buffers until
    /// the assembly is dropped, after the workers are joined.
    pub(super) fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }
}

/// The pixel types a batch buffer holds; picks the slot's buffer of that type.
pub(super) trait SlotPixel: Sized {
    fn pick<'a>(images: &'a mut Vec<f32>, images_u8: &'a mut Vec<u8>) -> &'a mut [Self];
}

impl SlotPixel for f32 {
    fn pick<'a>(images: &'a mut Vec<f32>, _: &'a mut Vec<u8>) -> &'a mut [f32] {
        images
    }
}

impl SlotPixel for u8 {
    fn pick<'a>(_: &'a mut Vec<f32>, images_u8: &'a mut Vec<u8>) -> &'a mut [u8] {
        images_u8
    }
}

/// At most `permits` samples decoding at once (a counting semaphore).
pub(super) struct DecodePermits {
    free: Mutex<usize>,
    released: Condvar,
}

/// A held permit; released when dropped.
pub(super) struct Permit(Arc<DecodePermits>);

impl DecodePermits {
    pub(super) fn new(permits: usize) -> Self {
        Self {
            free: Mutex::new(permits.max(1)),
            released: Condvar::new(),
        }
    }

    /// Waits for a permit. A worker holds one while it decodes a chunk (so a thread keeps
    /// its caches warm over a whole chunk, instead of handing over after every sample) and
    /// never waits on another worker while holding it, so this ends.
    pub(super) fn acquire(self: &Arc<Self>) -> Permit {
        let mut free = self.free.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while *free == 0 {
            free = self
                .released
                .wait(free)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        *free -= 1;
        Permit(Arc::clone(self))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) += 1;
        self.0.released.notify_one();
    }
}
