//! What a loader reads and how it batches: [`LoaderConfig`] and its parts ([`Sampling`],
//! [`PixelOutput`], [`CaptionSource`]), the virtual-epoch arithmetic and the checks that
//! name the bad field.
use std::path::PathBuf;

use crate::error::DataError;
use crate::imaging::DEFAULT_MAX_PIXELS;
use crate::shard_spec::ShardSource;
use crate::tar_reader::{ReadLimits, DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_SHARD_BYTES};

/// Where a sample's caption(s) come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptionSource {
    /// The `.txt` member; each non-empty line is one caption.
    Txt,
    /// A field of the `.json` member: a string, or a list of strings.
    Json(String),
}

impl CaptionSource {
    /// `txt` or `json:<field>`, as configs and command lines spell it; `None` otherwise.
    pub fn parse(text: &str) -> Option<Self> {
        match text.strip_prefix("json:") {
            Some(field) => Some(CaptionSource::Json(field.to_string())),
            None => (text == "txt").then_some(CaptionSource::Txt),
        }
    }
}

/// How a loader chooses the shards its workers read.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    /// Every shard once per epoch: the shards (shuffled per epoch in train mode) are dealt
    /// round-robin to the worker threads. Pass each rank only its share of the shards.
    EveryShard,
    /// Shards drawn with replacement (OpenCLIP's `--dataset-resampled`), train mode only.
    ///
    /// Each worker thread draws from its own generator, seeded from (seed, epoch, thread),
    /// and never runs out; shard `i` is drawn with probability `shard_weights[i] / Σ weights`.
    /// An epoch is a *virtual* epoch of `epoch_batches` batches of this loader, rounded up to
    /// a multiple of the thread count so every thread makes the same number (as OpenCLIP
    /// rounds its per-worker batch count up). Give every rank all shards and a seed that
    /// includes the rank, so the ranks draw different streams.
    Resampled {
        /// Relative weight of each shard, parallel to [`LoaderConfig::shards`]; empty means
        /// all shards equally likely.
        shard_weights: Vec<f64>,
        /// Batches per virtual epoch (see [`virtual_epoch_batches`]).
        epoch_batches: u64,
    },
}

/// Batches one loader yields per virtual epoch when `epoch_samples` samples make an epoch
/// over `world_size` ranks of `batch_size` samples each: ⌈epoch_samples / (batch_size ×
/// world_size)⌉, at least 1 (OpenCLIP's `--train-num-samples` arithmetic).
pub fn virtual_epoch_batches(epoch_samples: u64, batch_size: usize, world_size: usize) -> u64 {
    let global_batch = (batch_size as u64).saturating_mul(world_size as u64).max(1);
    epoch_samples.div_ceil(global_batch).max(1)
}

/// The canonical stream: the run's samples flow through `count` partition streams, each
/// with its own shards, shuffle buffer and augmentation seeds, none of them depending on how
/// many ranks or threads read them. Global batch `s` is chunk `s` of every partition, in
/// partition order; this loader runs partitions `[rank·P/W, (rank+1)·P/W)` and yields their
/// chunks side by side as one batch, so the ranks' batches, gathered in rank order, are the
/// global batch whatever `world_size` is (docs/architecture.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitions {
    /// P, the partition count of the run (fixed when it starts).
    pub count: usize,
    /// This loader's rank.
    pub rank: usize,
    /// Ranks reading the stream; must divide `count`.
    pub world_size: usize,
}

impl Partitions {
    /// Partitions each rank runs.
    pub fn per_rank(&self) -> usize {
        self.count / self.world_size.max(1)
    }

    /// The partitions this rank runs.
    pub fn owned(&self) -> std::ops::Range<usize> {
        let per_rank = self.per_rank();
        self.rank * per_rank..(self.rank + 1) * per_rank
    }
}

/// What a batch's image values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PixelOutput {
    /// f32 CHW, CLIP-normalised, in [`Batch::images`] (the default).
    ///
    /// [`Batch::images`]: crate::Batch::images
    #[default]
    NormalizedF32,
    /// u8 CHW, the resized 8-bit levels before normalisation, in [`Batch::images_u8`]; the
    /// consumer normalises (`(v / 255 − mean) / std`, e.g. on the GPU after a transfer of a
    /// quarter of the bytes). The same samples, crops and order as `NormalizedF32`.
    ///
    /// [`Batch::images_u8`]: crate::Batch::images_u8
    RawU8,
}

impl PixelOutput {
    /// Where images are normalised, as configs spell it: `loader` (f32 from the loader) or
    /// `device` (u8 levels, normalised by the consumer); `None` otherwise.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "loader" => Some(PixelOutput::NormalizedF32),
            "device" => Some(PixelOutput::RawU8),
            _ => None,
        }
    }
}

/// What the loader reads and how it batches. Build with [`LoaderConfig::new`] (or
/// [`LoaderConfig::resampled`]) and adjust fields.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Shard files (see [`crate::expand_shards`]); with [`Sampling::EveryShard`] pass only
    /// this rank's share.
    pub shards: Vec<PathBuf>,
    /// Every shard once per epoch, or shards drawn with replacement.
    pub sampling: Sampling,
    /// Samples per batch.
    pub batch_size: usize,
    /// Output image side length.
    pub image_size: u32,
    /// Train (random crop, shuffle, endless epochs) or eval (center crop, one pass in order).
    pub train: bool,
    /// Caption source.
    pub caption: CaptionSource,
    /// Token ids per caption; 0 = do not tokenize (`Batch::tokens` stays empty).
    pub context_length: usize,
    /// Decoding threads (capped at the number of shards unless resampled).
    pub threads: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Shuffle buffer size in samples, train mode only; 0 or 1 = no shuffling.
    pub shuffle_buffer: usize,
    /// Drop each worker's last partial batch of an epoch.
    pub drop_last: bool,
    /// Images with more pixels are skipped as `image_too_large`.
    pub max_pixels: u64,
    /// A tar member with more bytes is drained unread and its sample skipped as
    /// `oversized_member` (default [`DEFAULT_MAX_MEMBER_BYTES`], 64 MiB).
    pub max_member_bytes: u64,
    /// A shard whose tar stream (after decompression) gives more bytes has its rest skipped
    /// as `oversized_shard` (default [`DEFAULT_MAX_SHARD_BYTES`], 16 GiB).
    pub max_shard_bytes: u64,
    /// f32 normalised images (default) or u8 levels; does not change which samples come, so
    /// a loader may resume with the other setting.
    pub pixel_output: PixelOutput,
    /// The canonical stream (train mode): `None` makes every thread its own stream and every
    /// batch one thread's (the batches then depend on `threads` and on each rank's shards).
    /// With partitions, `shards` is the whole run's list, `batch_size` this rank's share of a
    /// global batch, and `threads` only bounds how many samples decode at once.
    pub partitions: Option<Partitions>,
}

impl LoaderConfig {
    /// Defaults: batch 256, 224 px, `.txt` captions, context 77, 4 threads, seed 0;
    /// train mode shuffles with a 1000-sample buffer and drops the last partial batch,
    /// eval mode does neither.
    pub fn new(shards: Vec<PathBuf>, train: bool) -> Self {
        Self {
            shards,
            sampling: Sampling::EveryShard,
            batch_size: 256,
            image_size: 224,
            train,
            caption: CaptionSource::Txt,
            context_length: 77,
            threads: 4,
            seed: 0,
            shuffle_buffer: if train { 1000 } else { 0 },
            drop_last: train,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_member_bytes: DEFAULT_MAX_MEMBER_BYTES,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            pixel_output: PixelOutput::NormalizedF32,
            partitions: None,
        }
    }

    /// The tar reader's limits from [`Self::max_member_bytes`] and [`Self::max_shard_bytes`].
    pub fn read_limits(&self) -> ReadLimits {
        ReadLimits {
            max_member_bytes: self.max_member_bytes,
            max_shard_bytes: self.max_shard_bytes,
        }
    }

    /// Samples one stream contributes to a batch: a partition's chunk with partitions, the
    /// whole batch without.
    pub fn stream_batch(&self) -> usize {
        match &self.partitions {
            Some(partitions) => self.batch_size / partitions.per_rank().max(1),
            None => self.batch_size,
        }
    }

    /// A train-mode config that draws shards with replacement from `sources`
    /// ([`Sampling::Resampled`]), `epoch_batches` batches per virtual epoch, other settings
    /// as [`LoaderConfig::new`].
    ///
    /// Every shard of a source gets the source's weight, as OpenCLIP applies
    /// `--train-data-upsampling-factors`: a source's share of the draws is its weight times
    /// its shard count, so equal weights draw every shard equally often, and weight 2
    /// reads a source twice as often as its size alone would.
    pub fn resampled(sources: &[ShardSource], epoch_batches: u64) -> Self {
        let mut shards = Vec::new();
        let mut shard_weights = Vec::new();
        for source in sources {
            shards.extend(source.shards.iter().cloned());
            shard_weights.extend(std::iter::repeat_n(source.weight, source.shards.len()));
        }
        let mut cfg = Self::new(shards, true);
        cfg.sampling = Sampling::Resampled {
            shard_weights,
            epoch_batches,
        };
        cfg
    }

    /// Check that the settings can work; the error names the bad field.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.shards.is_empty() {
            return Err(DataError::BadConfig {
                field: "shards",
                reason: "no shards".into(),
            });
        }
        self.validate_settings()?;
        match (&self.partitions, &self.sampling) {
            (Some(partitions), Sampling::EveryShard) if self.shards.len() < partitions.count => {
                Err(DataError::BadConfig {
                    field: "partitions",
                    reason: format!(
                        "{} partitions for {} shard(s): when every sample is read once per epoch each partition \
                     needs a shard (use at most {} partitions, or resampled shards)",
                        partitions.count,
                        self.shards.len(),
                        self.shards.len()
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// Bytes of one batch's pixels and token ids (f32 pixels, the larger output), or `None`
    /// when that does not fit in a u64.
    pub fn batch_bytes(&self) -> Option<u64> {
        let side = u64::from(self.image_size);
        let per_image = side.checked_mul(side)?.checked_mul(3 * 4)?;
        let per_caption = (self.context_length as u64).checked_mul(8)?;
        (self.batch_size as u64).checked_mul(per_image.checked_add(per_caption)?)
    }

    /// A batch larger than this machine's memory is refused here, with the figures, instead
    /// of aborting the process when its buffer is allocated.
    fn check_batch_fits_memory(&self) -> Result<(), DataError> {
        let too_big = |reason: String| {
            Err(DataError::BadConfig {
                field: "batch_size",
                reason,
            })
        };
        let Some(bytes) = self.batch_bytes() else {
            return too_big(format!(
                "{} samples of {} px: the batch's size in bytes overflows",
                self.batch_size, self.image_size
            ));
        };
        match physical_memory_bytes() {
            Some(memory) if bytes > memory => too_big(format!(
                "{} samples of {} px are {:.1} GiB of pixels and tokens per batch, more than this machine's {:.1} GiB of memory",
                self.batch_size,
                self.image_size,
                bytes as f64 / (1u64 << 30) as f64,
                memory as f64 / (1u64 << 30) as f64
            )),
            _ => Ok(()),
        }
    }

    /// The checks of [`LoaderConfig::validate`] that need no shard list: what a config
    /// section can check before its shard spec is expanded (the trainer's `[data]` runs
    /// them on the settings it gives the loader, so each check is written once).
    pub fn validate_settings(&self) -> Result<(), DataError> {
        let bad = |field, reason: &str| {
            Err(DataError::BadConfig {
                field,
                reason: reason.to_string(),
            })
        };
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.image_size == 0 {
            return bad("image_size", "must be at least 1");
        }
        if self.threads == 0 {
            return bad("threads", "must be at least 1");
        }
        if self.max_pixels == 0 {
            return bad("max_pixels", "must be at least 1");
        }
        if self.max_member_bytes == 0 {
            return bad("max_member_bytes", "must be at least 1");
        }
        if self.max_shard_bytes == 0 {
            return bad("max_shard_bytes", "must be at least 1");
        }
        if matches!(&self.caption, CaptionSource::Json(field) if field.is_empty()) {
            return bad("caption", "empty JSON field name");
        }
        self.check_batch_fits_memory()?;
        if let Some(partitions) = &self.partitions {
            let Partitions {
                count,
                rank,
                world_size,
            } = *partitions;
            if count == 0 {
                return bad("partitions", "must be at least 1");
            }
            if !self.train {
                return bad("partitions", "the canonical stream is for training (train mode)");
            }
            if !self.drop_last {
                return bad(
                    "drop_last",
                    "a canonical stream drops each partition's last partial chunk of an epoch, so every batch is whole",
                );
            }
            if world_size == 0 || !count.is_multiple_of(world_size) {
                return bad(
                    "partitions",
                    &format!("{count} partitions cannot be split evenly over {world_size} workers; the worker count must divide the partition count"),
                );
            }
            if rank >= world_size {
                return bad("partitions", &format!("rank {rank} of {world_size} workers"));
            }
            if !self.batch_size.is_multiple_of(partitions.per_rank()) {
                return bad(
                    "batch_size",
                    &format!(
                        "{} per worker is not a whole number of samples from each of the worker's {} partitions \
                         ({count} partitions over {world_size} workers): the global batch must be a multiple of \
                         the partition count",
                        self.batch_size,
                        partitions.per_rank()
                    ),
                );
            }
        }
        if let Sampling::Resampled {
            shard_weights,
            epoch_batches,
        } = &self.sampling
        {
            if !self.train {
                return bad("sampling", "resampled shards need train mode");
            }
            if *epoch_batches == 0 {
                return bad("epoch_batches", "a virtual epoch needs at least 1 batch");
            }
            if !shard_weights.is_empty() {
                if shard_weights.len() != self.shards.len() {
                    return bad(
                        "shard_weights",
                        &format!("{} weights for {} shards", shard_weights.len(), self.shards.len()),
                    );
                }
                if let Some(w) = shard_weights.iter().find(|w| !w.is_finite() || **w < 0.0) {
                    return bad("shard_weights", &format!("weight {w} must be a finite number >= 0"));
                }
                if shard_weights.iter().all(|&w| w == 0.0) {
                    return bad("shard_weights", "all weights are zero");
                }
            }
        }
        Ok(())
    }
}

/// This machine's physical memory (`MemTotal` of /proc/meminfo), when the OS says.
fn physical_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}
