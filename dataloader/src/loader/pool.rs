//! Batch image buffers, recycled: a dropped [`BatchImages`] hands its allocation back to the
//! [`BufferPool`] of the loader it came from, and the workers fill it again for a later batch.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::imaging::OutputPixel;

/// The image values of a [`Batch`]: a `Vec<T>` (`f32` normalised, or `u8` levels) that,
/// when dropped, goes back to the [`Loader`] it came from for a later batch, so a running
/// loader allocates (and the OS zero-fills) its batch buffers once instead of once per batch.
/// Derefs to `[T]`; [`BatchImages::into_vec`] takes the plain vector out (it is then not
/// recycled).
///
/// [`Batch`]: crate::Batch
/// [`Loader`]: crate::Loader
pub struct BatchImages<T: OutputPixel = f32> {
    pub(super) values: Vec<T>,
    pub(super) pool: Option<Arc<BufferPool<T>>>,
}

impl<T: OutputPixel> BatchImages<T> {
    /// `values`, going back to `pool` when dropped.
    pub(super) fn pooled(values: Vec<T>, pool: &Arc<BufferPool<T>>) -> Self {
        Self {
            values,
            pool: Some(Arc::clone(pool)),
        }
    }

    /// The values as a plain vector, no longer recycled.
    pub fn into_vec(mut self) -> Vec<T> {
        std::mem::take(&mut self.values)
    }
}

impl<T: OutputPixel> From<Vec<T>> for BatchImages<T> {
    /// Values that belong to no loader (dropped normally).
    fn from(values: Vec<T>) -> Self {
        Self { values, pool: None }
    }
}

impl<T: OutputPixel> Default for BatchImages<T> {
    /// No values.
    fn default() -> Self {
        Self::from(Vec::new())
    }
}

impl<T: OutputPixel> std::ops::Deref for BatchImages<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.values
    }
}

impl<T: OutputPixel> std::ops::DerefMut for BatchImages<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.values
    }
}

impl<T: OutputPixel> AsRef<[T]> for BatchImages<T> {
    fn as_ref(&self) -> &[T] {
        &self.values
    }
}

impl<T: OutputPixel> Clone for BatchImages<T> {
    /// A copy that belongs to no loader.
    fn clone(&self) -> Self {
        Self::from(self.values.clone())
    }
}

impl<T: OutputPixel + PartialEq> PartialEq for BatchImages<T> {
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values
    }
}

impl<T: OutputPixel + std::fmt::Debug> std::fmt::Debug for BatchImages<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.values.fmt(f)
    }
}

impl<T: OutputPixel> Drop for BatchImages<T> {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.give_back(std::mem::take(&mut self.values));
        }
    }
}

/// Batch image buffers handed back by dropped [`BatchImages`], for the workers to fill again.
pub(super) struct BufferPool<T> {
    free: Mutex<Vec<Vec<T>>>,
    /// Buffers allocated so far (not recycled).
    pub(super) allocated: AtomicU64,
    /// At most this many are kept: as many as can be alive at once (queued, being built,
    /// held by the consumer), so recycling never holds more memory than the loader at its
    /// peak did.
    capacity: usize,
}

impl<T: OutputPixel> BufferPool<T> {
    pub(super) fn new(threads: usize) -> Self {
        Self {
            free: Mutex::new(Vec::new()),
            allocated: AtomicU64::new(0),
            capacity: 3 * threads + 2,
        }
    }

    pub(super) fn give_back(&self, buffer: Vec<T>) {
        if buffer.capacity() == 0 {
            return;
        }
        if let Ok(mut free) = self.free.lock() {
            if free.len() < self.capacity {
                free.push(buffer);
            }
        }
    }

    /// A buffer of `len` values: a recycled one (its old values left in place, to be
    /// overwritten) or a new zeroed one.
    pub(super) fn take(&self, len: usize) -> Vec<T> {
        let recycled = self.free.lock().ok().and_then(|mut free| free.pop());
        match recycled {
            Some(mut buffer) => {
                buffer.resize(len, T::default());
                buffer
            }
            None => {
                self.allocated.fetch_add(1, Ordering::Relaxed);
                vec![T::default(); len]
            }
        }
    }
}
