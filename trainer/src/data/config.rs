//! The `[data]` section of a train config, and the one place it becomes the loader's
//! config ([`DataConfig::loader_config`]): which shards this rank reads, how they are
//! sampled, and the batch and image settings the model implies.

use dataloader::shard_spec::WEIGHTS_FIELD;
use std::path::PathBuf;

use dataloader::{
    dataset_size, expand_shards, expand_sources, virtual_epoch_batches, CaptionSource, DataError, LoaderConfig,
    Partitions, PixelOutput, Sampling,
};
use serde::{Deserialize, Serialize};

use crate::field::FieldError;
use crate::model::ModelConfig;
use crate::TrainError;

/// The `[data]` section: which shards, how they are sampled and batched, and where
/// images are normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Shard spec: brace ranges, several specs joined by `::`, or a folder of `.tar`.
    pub train: String,
    /// Samples per micro-batch and worker: a step sees
    /// `batch_size × accum_steps × workers` samples.
    pub batch_size: usize,
    /// Micro-batches per optimizer step. The step's loss is over all of them: a global
    /// batch of `batch_size × accum_steps × workers`, gradient-cached (encoded once
    /// without graphs for the loss, once with graphs for the backward pass), so memory
    /// holds one micro-batch's activations (docs/architecture.md §3).
    pub accum_steps: usize,
    /// Loader threads working at once on each worker (per-rank streams: the decode
    /// threads). The canonical stream runs a thread per partition and lets this many read and
    /// decode at a time.
    pub workers: usize,
    /// Caption source: `"txt"` for the `.txt` member, or `"json:<field>"`.
    pub caption: String,
    /// Shuffle buffer size in samples (0 = no shuffling), per stream: per partition of
    /// the canonical stream (a worker holds `partitions / workers` of them).
    pub shuffle_buffer: usize,
    /// Images with more pixels than this are skipped (decompression-bomb guard).
    pub max_pixels: u64,
    /// A tar member (image, caption, …) larger than this is skipped unread, with its sample,
    /// as `oversized_member` (default 64 MiB): no member is ever held whole beyond it.
    pub max_member_bytes: u64,
    /// A shard stream that decompresses to more than this is cut there, as `oversized_shard`
    /// (default 16 GiB): a compression bomb costs bounded time, not only bounded memory.
    pub max_shard_bytes: u64,
    /// Draw shards with replacement (OpenCLIP's `--dataset-resampled`): every rank draws its
    /// own stream from all shards, and an epoch is `epoch_samples` samples. Off: every sample
    /// once per epoch, shards split across ranks.
    pub resampled: bool,
    /// Sampling weight of each `::`-joined source of `train`, `::`-joined (`"1::0.5"`,
    /// OpenCLIP's `--train-data-upsampling-factors`); every shard of a source gets its
    /// weight. Needs `resampled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_weights: Option<String>,
    /// Samples per virtual epoch over all ranks (OpenCLIP's `--train-num-samples`);
    /// resampled mode only. Unset: the dataset size from `sizes.json` / img2dataset
    /// `*_stats.json` next to the shards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch_samples: Option<u64>,
    /// Where images are CLIP-normalised: `"loader"` (default; the loader writes f32) or
    /// `"device"` (the loader writes u8 levels, a quarter of the bytes to build and
    /// transfer, and the train step normalises them after moving them to the device). The
    /// same samples and crops either way; the values agree to f32 rounding.
    pub normalize: NormalizeOn,
    /// How the samples are split over workers: `"canonical"` (default), one stream of
    /// global batches for the run, whatever the worker count (its partitions are dealt to
    /// the workers); or `"per_rank"`, every worker its own stream from its share of the
    /// shards (the batches then depend on the worker count, and a checkpoint resumes only on
    /// the same count).
    pub stream: StreamKind,
    /// Partitions P of the canonical stream: a global batch is an equal chunk from each.
    /// Fixed when a run starts (a resume keeps the checkpoint's); the worker count must
    /// divide it, so it decides which counts a run may resume on. 0 (default): the largest
    /// number up to 64 that the worker count divides, that divides the global micro-batch
    /// and (every sample once per epoch) that has a shard for each partition.
    pub partitions: usize,
    /// Samples per optimizer step over all workers. When set, each worker's micro-batch is
    /// `global_batch / (accum_steps × workers)` and `batch_size` is not used, so the same
    /// config runs (and resumes) on any worker count that divides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_batch: Option<usize>,
    /// Debugging: every worker appends each batch's sample keys to
    /// `<run>/batch_keys/rank<R>-of<W>-from<N>.jsonl` (N: the first batch of the process).
    pub dump_keys: bool,
}

/// How samples are split over workers (`data.stream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// One stream of global batches for the run, partitioned over the workers.
    #[default]
    Canonical,
    /// Every worker its own stream from its share of the shards.
    PerRank,
}

/// Where training images are normalised (`data.normalize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormalizeOn {
    /// In the loader threads, f32 batches.
    #[default]
    Loader,
    /// On the training device, from u8 batches.
    Device,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: String::new(),
            batch_size: 64,
            accum_steps: 1,
            workers: 2,
            caption: "txt".into(),
            shuffle_buffer: 1000,
            max_pixels: 64 * 1024 * 1024,
            max_member_bytes: dataloader::DEFAULT_MAX_MEMBER_BYTES,
            max_shard_bytes: dataloader::DEFAULT_MAX_SHARD_BYTES,
            resampled: false,
            train_weights: None,
            epoch_samples: None,
            normalize: NormalizeOn::Loader,
            stream: StreamKind::Canonical,
            partitions: 0,
            global_batch: None,
            dump_keys: false,
        }
    }
}

impl DataConfig {
    /// Checks the section; errors name the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.train.trim().is_empty() {
            return Err(FieldError::new(
                "data.train",
                "no shards given (e.g. \"data/{00000..00009}.tar\")",
            ));
        }
        if self.accum_steps == 0 {
            return Err(FieldError::new("data.accum_steps", "must be > 0"));
        }
        if self.global_batch == Some(0) {
            return Err(FieldError::new("data.global_batch", "must be > 0"));
        }
        if self.stream == StreamKind::PerRank && self.partitions != 0 {
            return Err(FieldError::new(
                "data.partitions",
                format!("{} partitions need data.stream = \"canonical\"", self.partitions),
            ));
        }
        if self.caption != "txt" && !self.caption.starts_with("json:") {
            return Err(FieldError::new(
                "data.caption",
                format!("expected \"txt\" or \"json:<field>\", got {:?}", self.caption),
            ));
        }
        if let Some(weights) = &self.train_weights {
            if !self.resampled {
                return Err(FieldError::new(
                    "data.train_weights",
                    format!(
                        "weights {weights:?} need resampled mode (set data.resampled = true); without it every \
                         sample is read once per epoch (OpenCLIP likewise needs --dataset-resampled)"
                    ),
                ));
            }
            let sources = self.train.split("::").count();
            let given = weights.split("::").count();
            if given != sources {
                return Err(FieldError::new(
                    "data.train_weights",
                    format!("{given} weight(s) in {weights:?} for {sources} `::`-joined source(s) in data.train"),
                ));
            }
            for weight in weights.split("::") {
                let weight = weight.trim();
                if !weight.parse::<f64>().is_ok_and(|w| w.is_finite() && w >= 0.0) {
                    return Err(FieldError::new(
                        "data.train_weights",
                        format!("weight {weight:?} must be a finite number >= 0"),
                    ));
                }
            }
        }
        match self.epoch_samples {
            Some(0) => return Err(FieldError::new("data.epoch_samples", "must be > 0")),
            Some(n) if !self.resampled => {
                return Err(FieldError::new(
                    "data.epoch_samples",
                    format!("{n} is only used with data.resampled = true; without it an epoch reads every sample once"),
                ))
            }
            _ => {}
        }
        // The loader's own checks of the settings this section gives it, named as this
        // section names them.
        self.loader_settings().validate_settings().map_err(|e| match e {
            DataError::BadConfig { field, reason } => FieldError::new(section_field(field), reason),
            other => FieldError::new("data", other.to_string()),
        })
    }

    /// The loader settings this section gives, before shards and model sizes are known:
    /// the one place `[data]` fields become [`LoaderConfig`] fields.
    fn loader_settings(&self) -> LoaderConfig {
        let mut lc = LoaderConfig::new(Vec::new(), true);
        lc.batch_size = self.batch_size;
        lc.threads = self.workers;
        lc.shuffle_buffer = self.shuffle_buffer;
        lc.drop_last = true;
        lc.max_pixels = self.max_pixels;
        lc.max_member_bytes = self.max_member_bytes;
        lc.max_shard_bytes = self.max_shard_bytes;
        lc.caption = caption_source(&self.caption);
        lc.pixel_output = match self.normalize {
            NormalizeOn::Loader => PixelOutput::NormalizedF32,
            NormalizeOn::Device => PixelOutput::RawU8,
        };
        lc
    }

    /// Samples per micro-batch on each of `world_size` workers: `data.batch_size`, or
    /// `data.global_batch / (accum_steps × workers)` when that is set.
    pub fn micro_batch(&self, world_size: usize) -> Result<usize, FieldError> {
        let Some(global) = self.global_batch else {
            return Ok(self.batch_size);
        };
        let split = self.accum_steps * world_size.max(1);
        if global % split != 0 {
            return Err(FieldError::new(
                "data.global_batch",
                format!(
                    "{global} samples per step cannot be split evenly into {} micro-batch(es) on each of {world_size} \
                     worker(s)",
                    self.accum_steps
                ),
            ));
        }
        Ok(global / split)
    }

    /// The loader config of rank `rank` of `world_size` for `model`: the one place `[data]`
    /// becomes a [`LoaderConfig`] (which the loader checks again as a whole when it starts).
    ///
    /// The canonical stream (default): every rank lists all shards and runs its partitions
    /// of the stream, `partitions` of them in all (a resumed run passes its checkpoint's
    /// count; `None` chooses as `data.partitions` says). Per-rank streams: the rank is
    /// mixed into the seed, and when every sample is read once per epoch the shards are
    /// dealt to ranks round-robin (each rank needs one). `data.resampled`: shards are drawn
    /// with replacement from all of them, and an epoch is `data.epoch_samples` samples over
    /// all ranks.
    pub fn loader_config(
        &self,
        model: &ModelConfig,
        seed: u64,
        rank: usize,
        world_size: usize,
        saved_partitions: Option<usize>,
    ) -> Result<LoaderConfig, TrainError> {
        self.validate().map_err(TrainError::Config)?;
        let batch_size = self.micro_batch(world_size).map_err(TrainError::Config)?;
        let canonical = self.stream == StreamKind::Canonical;
        let (shards, sampling) = match (self.resampled, canonical) {
            (true, _) => self.resampled_shards(rank, world_size, batch_size)?,
            (false, true) => self.every_shard_once(0, 1)?,
            (false, false) => self.every_shard_once(rank, world_size)?,
        };
        let partitions = canonical.then(|| Partitions {
            count: self.partition_count(saved_partitions, world_size, batch_size, &shards, &sampling),
            rank,
            world_size,
        });
        Ok(LoaderConfig {
            shards,
            sampling,
            batch_size,
            image_size: model.vision.image_size as u32,
            context_length: model.text.context_length as usize,
            // Per-rank streams: the rank in the seed gives every rank its own draws. The
            // canonical stream's partitions draw their own, whoever runs them.
            seed: match canonical {
                true => seed,
                false => dataloader::loader::ranks::rank_seed(seed, rank),
            },
            partitions,
            ..self.loader_settings()
        })
    }

    /// P for the canonical stream: the checkpoint's, else `data.partitions`, else the largest
    /// count up to 64 that `world_size` divides, that divides the global micro-batch and (every
    /// sample once per epoch) has a shard per partition. The loader refuses a count that
    /// does not fit, naming the field.
    fn partition_count(
        &self,
        saved: Option<usize>,
        world_size: usize,
        batch_size: usize,
        shards: &[PathBuf],
        sampling: &Sampling,
    ) -> usize {
        if let Some(saved) = saved {
            return saved;
        }
        if self.partitions > 0 {
            return self.partitions;
        }
        dataloader::loader::ranks::default_partition_count(world_size, batch_size, shards.len(), sampling)
    }

    /// Every sample once per epoch: this rank's round-robin share of the shards.
    fn every_shard_once(&self, rank: usize, world_size: usize) -> Result<(Vec<PathBuf>, Sampling), TrainError> {
        let all = expand_shards(&self.train).map_err(|source| TrainError::Data {
            context: "data.train".into(),
            source,
        })?;
        if all.len() < world_size {
            return Err(TrainError::DataConfig(FieldError::new(
                "data.train",
                format!(
                    "{} shard(s) for {world_size} ranks; every rank needs at least one shard (or set \
                     data.resampled = true to draw shards with replacement)",
                    all.len()
                ),
            )));
        }
        Ok((
            dataloader::loader::ranks::round_robin_share(&all, rank, world_size),
            Sampling::EveryShard,
        ))
    }

    /// Resampled: all shards with their source weights, and this rank's batches per
    /// virtual epoch.
    fn resampled_shards(
        &self,
        rank: usize,
        world_size: usize,
        batch_size: usize,
    ) -> Result<(Vec<PathBuf>, Sampling), TrainError> {
        let sources = expand_sources(&self.train, self.train_weights.as_deref()).map_err(|e| match e {
            DataError::BadConfig { field, reason } if field == WEIGHTS_FIELD => {
                TrainError::DataConfig(FieldError::new("data.train_weights", reason))
            }
            source => TrainError::Data {
                context: "data.train".into(),
                source,
            },
        })?;
        let epoch_samples = match self.epoch_samples {
            Some(n) => n,
            None => {
                let shards: Vec<_> = sources.iter().flat_map(|s| s.shards.iter().cloned()).collect();
                let size = dataset_size(&shards).map_err(|source| TrainError::Data {
                    context: "data.epoch_samples: not set, and the dataset size is unknown, so a virtual epoch \
                              has no length; set data.epoch_samples"
                        .into(),
                    source,
                })?;
                if size == 0 {
                    return Err(TrainError::DataConfig(FieldError::new(
                        "data.epoch_samples",
                        "not set, and the size files next to data.train's shards count 0 samples",
                    )));
                }
                if rank == 0 {
                    tracing::info!(
                        epoch_samples = size,
                        shards = shards.len(),
                        "data.epoch_samples not set: a virtual epoch is the dataset size, {size} samples, \
                         from sizes.json / *_stats.json next to data.train's shards"
                    );
                }
                size
            }
        };
        let weighted = LoaderConfig::resampled(&sources, virtual_epoch_batches(epoch_samples, batch_size, world_size));
        Ok((weighted.shards, weighted.sampling))
    }
}

/// The `[data]` name of a [`LoaderConfig`] field.
pub(crate) fn section_field(loader_field: &str) -> String {
    match loader_field {
        "threads" => "data.workers".into(),
        field => format!("data.{field}"),
    }
}

/// `"txt"` or `"json:<field>"` (validated by [`DataConfig::validate`]).
fn caption_source(spec: &str) -> CaptionSource {
    match spec.strip_prefix("json:") {
        Some(field) => CaptionSource::Json(field.to_string()),
        None => CaptionSource::Txt,
    }
}
