//! Near duplicates by image embedding, the alternative to the pHash when the `align` stage
//! is given a model (`near_duplicate_checkpoint`): two images are near duplicates when the
//! cosine similarity of their L2-normalised embeddings is at least
//! `near_duplicate_min_cosine` (SemDeDup's criterion). The greedy rule is the pHash one:
//! in (shard path, key) order, an image is kept unless a kept image is that close.
//!
//! The search is exact and brute force, O(candidates × kept × dim) multiply-adds; about a
//! second per 10,000 candidate images at dim 256 on one core. Beyond a few hundred thousand
//! images per run, split the input or use the pHash.
use std::sync::{Arc, Mutex};

use super::observed::{lock, Observed};
use crate::error::CurateError;

/// Image embeddings from a model; the binary wires a ferroclip checkpoint (this crate links
/// no model code).
pub trait ImageEmbedder: Send + Sync {
    /// One L2-normalised embedding per image (encoded bytes), in order; `None` for an image
    /// that cannot be decoded. Every embedding has the same length.
    fn embed(&self, images: &[&[u8]]) -> Result<Vec<Option<Vec<f32>>>, String>;
}

/// Candidate images waiting to be embedded in batches, filled by the observing threads.
pub(super) struct EmbedQueue {
    embedder: Arc<dyn ImageEmbedder>,
    batch_size: usize,
    pending: Mutex<Vec<(u128, Vec<u8>)>>,
    /// The first embedding failure; observation cannot return errors, so it is kept here and
    /// reported when the observation is exchanged.
    failure: Mutex<Option<String>>,
}

impl EmbedQueue {
    pub(super) fn new(embedder: Arc<dyn ImageEmbedder>, batch_size: usize) -> Self {
        Self {
            embedder,
            batch_size: batch_size.max(1),
            pending: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
        }
    }

    /// Queue `image` (its content hash and bytes); when a batch is full, the calling thread
    /// embeds it and files the results in `observed`.
    pub(super) fn push(&self, image: u128, bytes: &[u8], observed: &Mutex<Observed>) {
        let full = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.push((image, bytes.to_vec()));
            (pending.len() >= self.batch_size).then(|| std::mem::take(&mut *pending))
        };
        if let Some(batch) = full {
            if let Err(e) = self.embed_into(&batch, &mut lock(observed)) {
                self.failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
            }
        }
    }

    /// Embed what is still queued; the first failure of the whole pass, if any.
    pub(super) fn finish(&self, observed: &mut Observed) -> Result<(), CurateError> {
        let rest = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let last = self.embed_into(&rest, observed);
        let earlier = self.failure.lock().unwrap_or_else(|p| p.into_inner()).take();
        match earlier.map_or(last, Err) {
            Ok(()) => Ok(()),
            Err(reason) => Err(CurateError::Reduce(format!(
                "align near-duplicate embeddings: {reason}"
            ))),
        }
    }

    fn embed_into(&self, batch: &[(u128, Vec<u8>)], observed: &mut Observed) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        let images: Vec<&[u8]> = batch.iter().map(|(_, bytes)| bytes.as_slice()).collect();
        let embeddings = self.embedder.embed(&images)?;
        if embeddings.len() != batch.len() {
            return Err(format!(
                "the model gave {} embeddings for {} images",
                embeddings.len(),
                batch.len()
            ));
        }
        for ((image, _), embedding) in batch.iter().zip(embeddings) {
            let embedding = embedding.filter(|e| !e.is_empty() && e.iter().all(|x| x.is_finite()));
            observed.embeddings.insert(*image, embedding.map(Vec::into_boxed_slice));
        }
        Ok(())
    }
}

/// Kept embeddings, searched exhaustively for one at cosine ≥ `min_cosine`.
pub(super) struct CosineIndex {
    min_cosine: f32,
    dim: usize,
    kept: Vec<f32>,
}

impl CosineIndex {
    pub(super) fn new(min_cosine: f32) -> Self {
        Self {
            min_cosine,
            dim: 0,
            kept: Vec::new(),
        }
    }

    /// Whether a kept embedding lies within the threshold of `e` (normalised).
    pub(super) fn has_near(&self, e: &[f32]) -> bool {
        if self.dim == 0 || e.len() != self.dim {
            return false;
        }
        self.kept.chunks_exact(self.dim).any(|k| dot(k, e) >= self.min_cosine)
    }

    pub(super) fn insert(&mut self, e: &[f32]) {
        if self.dim == 0 {
            self.dim = e.len();
        }
        if e.len() == self.dim {
            self.kept.extend_from_slice(e);
        }
    }
}

/// Dot product in eight independent lanes, which the compiler vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalised(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn cosine_index_finds_only_close_embeddings() {
        let mut index = CosineIndex::new(0.95);
        let a = normalised(&[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]);
        assert!(!index.has_near(&a));
        index.insert(&a);
        let close = normalised(&[1.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]);
        let far = normalised(&[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]);
        assert!(dot(&a, &close) > 0.95 && dot(&a, &far) < 0.95);
        assert!(index.has_near(&close));
        assert!(!index.has_near(&far));
        // A wrong length never matches (and is not stored).
        assert!(!index.has_near(&[1.0]));
    }

    #[test]
    fn dot_matches_the_plain_sum() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-5);
    }

    struct FirstByte;
    impl ImageEmbedder for FirstByte {
        fn embed(&self, images: &[&[u8]]) -> Result<Vec<Option<Vec<f32>>>, String> {
            Ok(images
                .iter()
                .map(|b| b.first().map(|&x| normalised(&[f32::from(x), 1.0])))
                .collect())
        }
    }

    #[test]
    fn the_queue_embeds_in_batches_and_at_the_end() {
        let queue = EmbedQueue::new(Arc::new(FirstByte), 2);
        let observed = Mutex::new(Observed::default());
        queue.push(1, &[3], &observed);
        assert!(lock(&observed).embeddings.is_empty());
        queue.push(2, &[], &observed);
        assert_eq!(lock(&observed).embeddings.len(), 2);
        queue.push(3, &[5], &observed);
        let mut observed = observed.into_inner().unwrap();
        queue.finish(&mut observed).unwrap();
        assert_eq!(observed.embeddings.len(), 3);
        assert!(observed.embeddings[&2].is_none(), "an empty image is undecodable");
        assert!(observed.embeddings[&3].is_some());
    }

    struct Broken;
    impl ImageEmbedder for Broken {
        fn embed(&self, _images: &[&[u8]]) -> Result<Vec<Option<Vec<f32>>>, String> {
            Err("out of memory".into())
        }
    }

    #[test]
    fn an_embedding_failure_is_reported_when_the_pass_ends() {
        let queue = EmbedQueue::new(Arc::new(Broken), 1);
        let observed = Mutex::new(Observed::default());
        queue.push(1, &[3], &observed);
        let e = queue
            .finish(&mut observed.into_inner().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("out of memory"), "{e}");
    }
}
