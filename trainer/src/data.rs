//! The bridge from the `[data]` config section to the dataloader crate, and
//! from its flat batches to tensors.

use dataloader::{expand_shards, CaptionSource, Loader, LoaderConfig, LoaderState, SkipCounts};

use crate::config::ModelConfig;
use crate::train::config::DataConfig;
use crate::train::TensorBatch;
use crate::TrainError;

/// The training loader: endless, shuffled, train transform.
pub struct TrainLoader {
    loader: Loader,
    image_size: usize,
}

/// Builds rank `rank`'s training loader for `model` from the `[data]` section:
/// shards are dealt to ranks round-robin, and the rank is mixed into the seed.
/// With `position` (from [`TrainLoader::state`] in a checkpoint) it continues
/// at exactly the next sample the saved run would have read.
pub fn train_loader(
    cfg: &DataConfig,
    model: &ModelConfig,
    seed: u64,
    rank: usize,
    world_size: usize,
    position: Option<&serde_json::Value>,
) -> Result<TrainLoader, TrainError> {
    let all = expand_shards(&cfg.train).map_err(|e| TrainError::Data(format!("data.train: {e}")))?;
    if all.len() < world_size {
        return Err(TrainError::Data(format!(
            "data.train: {} shard(s) for {world_size} ranks; every rank needs at least one shard",
            all.len()
        )));
    }
    let shards: Vec<_> = all.into_iter().skip(rank).step_by(world_size).collect();
    let seed = seed ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut lc = LoaderConfig::new(shards, true);
    lc.batch_size = cfg.batch_size;
    lc.image_size = model.vision.image_size as u32;
    lc.context_length = model.text.context_length as usize;
    lc.threads = cfg.workers;
    lc.seed = seed;
    lc.shuffle_buffer = cfg.shuffle_buffer;
    lc.drop_last = true;
    lc.max_pixels = cfg.max_pixels;
    lc.caption = caption_source(&cfg.caption);
    let loader = match position {
        None => Loader::new(lc),
        Some(position) => {
            let state: LoaderState = serde_json::from_value(position.clone())
                .map_err(|e| TrainError::Checkpoint(format!("loader state of rank {rank}: {e}")))?;
            Loader::resume(lc, &state)
        }
    }
    .map_err(|e| TrainError::Data(e.to_string()))?;
    Ok(TrainLoader {
        loader,
        image_size: model.vision.image_size as usize,
    })
}

/// `"txt"` or `"json:<field>"` (validated by [`DataConfig::validate`]).
pub fn caption_source(spec: &str) -> CaptionSource {
    match spec.strip_prefix("json:") {
        Some(field) => CaptionSource::Json(field.to_string()),
        None => CaptionSource::Txt,
    }
}

impl TrainLoader {
    /// The next batch as tensors. Errors when the shards yield no usable sample at all.
    pub fn next_batch(&mut self) -> Result<TensorBatch, TrainError> {
        let batch = self.loader.next_batch().ok_or_else(|| {
            TrainError::Data(format!(
                "the training shards produced no usable batch (skipped: {})",
                self.loader.skip_counts().to_json()
            ))
        })?;
        Ok(TensorBatch::from_flat(
            &batch.images,
            &batch.tokens,
            batch.len(),
            self.image_size,
            batch.epoch,
        ))
    }

    /// The loader's position after the batches returned so far (opaque JSON
    /// for `state.json`).
    pub fn state(&self) -> serde_json::Value {
        serde_json::to_value(self.loader.state()).unwrap_or(serde_json::Value::Null)
    }

    /// What was skipped so far, by reason (JSON object).
    pub fn skip_counts(&self) -> serde_json::Value {
        self.loader.skip_counts().to_json()
    }

    /// The raw counts.
    pub fn skips(&self) -> &SkipCounts {
        self.loader.skip_counts()
    }
}
