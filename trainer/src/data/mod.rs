//! The trainer's data side: the `[data]` section ([`config`]), the training loader built
//! from it ([`TrainLoader`]), and batches as tensors ([`batch`]). The dataloader crate
//! does the reading and decoding; this module adds what needs the model and libtorch.

pub mod batch;
pub mod config;

use dataloader::{DataError, Loader, LoaderState, SkipCounts};

pub use batch::{PixelNormalization, TensorBatch};
pub use config::{DataConfig, NormalizeOn, StreamKind};

use crate::field::FieldError;
use crate::model::ModelConfig;
use crate::TrainError;

/// Where a train step's micro-batches come from: the [`TrainLoader`], or batches in hand
/// (tests that feed every rank its slice of a known global batch).
pub trait BatchSource {
    /// The next batch.
    fn next_batch(&mut self) -> Result<TensorBatch, TrainError>;
}

impl BatchSource for TrainLoader {
    fn next_batch(&mut self) -> Result<TensorBatch, TrainError> {
        TrainLoader::next_batch(self)
    }
}

/// The training loader: endless, shuffled, train transform.
pub struct TrainLoader {
    loader: Loader,
    image_size: usize,
    /// Set with `data.normalize = "device"`: the loader yields u8 levels, normalised by this.
    device_normalization: Option<PixelNormalization>,
    /// Partitions of the canonical stream (`None`: per-rank streams).
    partitions: Option<usize>,
    /// `data.dump_keys`: where each batch's keys go, and the next batch's number.
    key_dump: Option<(std::io::BufWriter<std::fs::File>, u64)>,
    rank: usize,
    world_size: usize,
}

impl TrainLoader {
    /// Rank `rank`'s training loader for `model` (see [`DataConfig::loader_config`]). With
    /// `saved` (every rank's [`TrainLoader::state`] from a checkpoint, in rank order) it
    /// continues at exactly the next sample the saved run would have read: the canonical
    /// stream on any worker count that divides its partition count, per-rank streams on the
    /// same worker count.
    pub fn new(
        cfg: &DataConfig,
        model: &ModelConfig,
        seed: u64,
        rank: usize,
        world_size: usize,
        saved: Option<&[serde_json::Value]>,
    ) -> Result<TrainLoader, TrainError> {
        let states = match saved {
            None => None,
            Some(saved) => Some(
                saved
                    .iter()
                    .enumerate()
                    .map(|(saved_rank, state)| {
                        serde_json::from_value::<LoaderState>(state.clone()).map_err(|source| TrainError::TrainState {
                            what: format!("loader state of rank {saved_rank}"),
                            source,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let saved_partitions = states.as_ref().and_then(|s| s.first()?.partition_count());
        let lc = cfg.loader_config(model, seed, rank, world_size, saved_partitions)?;
        let partitions = lc.partitions.map(|p| p.count);
        let loader = match (&states, partitions) {
            (None, _) => Loader::new(lc),
            (Some(states), Some(_)) if saved_partitions.is_none() => {
                return Err(TrainError::DataConfig(FieldError::new(
                    "data.stream",
                    format!(
                        "the checkpoint's {} loader state(s) are per-rank streams; resume it with data.stream = \
                         \"per_rank\" on {} worker(s)",
                        states.len(),
                        states.len()
                    ),
                )))
            }
            (Some(states), Some(_)) => LoaderState::merge(states).and_then(|merged| Loader::resume(lc, &merged)),
            (Some(states), None) => match states.get(rank) {
                Some(state) => Loader::resume(lc, state),
                None => {
                    return Err(TrainError::DataConfig(FieldError::new(
                        "data.stream",
                        format!("the checkpoint has no loader state for rank {rank}"),
                    )))
                }
            },
        }
        .map_err(|e| match e {
            // What the loader refuses in the settings of [data] is named as [data] names it.
            DataError::BadConfig { field, reason } if ["partitions", "batch_size", "drop_last"].contains(&field) => {
                // The per-worker batch comes from data.global_batch when that is set.
                let named = match (field, cfg.global_batch) {
                    ("batch_size", Some(global)) => {
                        format!("data.global_batch ({global} over {world_size} worker(s))")
                    }
                    _ => config::section_field(field),
                };
                TrainError::DataConfig(FieldError::new(named, reason))
            }
            other => TrainError::Loader(other),
        })?;
        Ok(TrainLoader {
            loader,
            image_size: model.vision.image_size as usize,
            device_normalization: (cfg.normalize == NormalizeOn::Device).then(PixelNormalization::clip),
            partitions,
            key_dump: None,
            rank,
            world_size,
        })
    }

    /// Partitions of the canonical stream; `None` for per-rank streams.
    pub fn partitions(&self) -> Option<usize> {
        self.partitions
    }

    /// `data.dump_keys`: append every batch's sample keys, numbered from `first_batch`, to
    /// `<dir>/rank<R>-of<W>-from<first_batch>.jsonl`.
    pub fn dump_keys_to(&mut self, dir: &std::path::Path, first_batch: u64) -> Result<(), TrainError> {
        let io = |source| TrainError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(format!(
            "rank{}-of{}-from{first_batch}.jsonl",
            self.rank, self.world_size
        ));
        let file = std::fs::File::create(&path).map_err(|source| TrainError::Io { path, source })?;
        self.key_dump = Some((std::io::BufWriter::new(file), first_batch));
        Ok(())
    }

    fn dump_keys(&mut self, keys: &[String]) -> Result<(), TrainError> {
        use std::io::Write;
        let Some((out, batch)) = &mut self.key_dump else {
            return Ok(());
        };
        let line =
            serde_json::json!({ "batch": *batch, "rank": self.rank, "world_size": self.world_size, "keys": keys });
        *batch += 1;
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|source| TrainError::Io {
                path: "batch_keys".into(),
                source,
            })
    }

    /// The next batch as tensors, the images wrapping the loader's buffer without a copy (see
    /// [`TensorBatch`] for how long tensors sharing it may live). Errors when the shards yield
    /// no usable sample at all.
    pub fn next_batch(&mut self) -> Result<TensorBatch, TrainError> {
        let batch = self.loader.next_batch().ok_or_else(|| TrainError::NoUsableBatch {
            skipped: self.loader.skip_counts().to_json().to_string(),
        })?;
        self.dump_keys(&batch.keys)?;
        let size = batch.len();
        Ok(match &self.device_normalization {
            None => TensorBatch::from_loader(batch.images, &batch.tokens, size, self.image_size, batch.epoch),
            Some(normalization) => TensorBatch::from_loader_u8(
                batch.images_u8,
                normalization,
                &batch.tokens,
                size,
                self.image_size,
                batch.epoch,
            ),
        })
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use dataloader::{ShardSample, ShardWriter};

    use super::*;
    use crate::train::config::TrainConfig;
    use tch::{Device, Kind};

    /// `samples` small PNG samples in shards of `per_shard` under `dir`, with sizes.json.
    fn write_shards(dir: &Path, samples: usize, per_shard: u64) -> Vec<PathBuf> {
        let mut writer = ShardWriter::new(dir, per_shard).unwrap();
        for i in 0..samples {
            let image = image::RgbImage::from_fn(9 + i as u32 % 4, 7, |x, y| {
                image::Rgb([(x * 29 + i as u32 * 53) as u8, (y * 31) as u8, (i * 7) as u8])
            });
            let mut png = Vec::new();
            image
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .unwrap();
            writer
                .write(&ShardSample {
                    key: None,
                    image: png,
                    image_ext: "png".into(),
                    captions: vec![format!("sample number {i}")],
                    label: None,
                    json: Default::default(),
                })
                .unwrap();
        }
        writer.finish().unwrap().shards
    }

    fn data_config(train: &str) -> DataConfig {
        DataConfig {
            train: train.to_string(),
            batch_size: 2,
            workers: 1,
            shuffle_buffer: 4,
            ..DataConfig::default()
        }
    }

    fn nano() -> ModelConfig {
        ModelConfig::preset("nano").unwrap()
    }

    fn error_of(result: Result<TrainLoader, TrainError>) -> String {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(e) => crate::error::error_chain(&e),
        }
    }

    #[test]
    fn loader_setting_errors_name_the_data_field() {
        // The loader checks these settings (written once, in LoaderConfig::validate_settings);
        // the section reports them under its own names, before any shard is read.
        let cases: [(&str, fn(&mut DataConfig)); 6] = [
            ("data.batch_size: must be at least 1", |c| c.batch_size = 0),
            ("data.workers: must be at least 1", |c| c.workers = 0),
            ("data.max_pixels: must be at least 1", |c| c.max_pixels = 0),
            ("data.max_member_bytes: must be at least 1", |c| c.max_member_bytes = 0),
            ("data.max_shard_bytes: must be at least 1", |c| c.max_shard_bytes = 0),
            ("data.caption: empty JSON field name", |c| c.caption = "json:".into()),
        ];
        for (want, break_it) in cases {
            let mut cfg = data_config("shards/{0..3}.tar");
            assert_eq!(cfg.validate(), Ok(()));
            break_it(&mut cfg);
            assert_eq!(cfg.validate().map_err(|e| e.to_string()), Err(want.to_string()));
        }
    }

    #[test]
    fn loader_batches_become_tensors_without_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        write_shards(dir.path(), 8, 8);
        let cfg = data_config(&dir.path().display().to_string());
        let mut loader = TrainLoader::new(&cfg, &nano(), 1, 0, 1, None).unwrap();
        let size = nano().vision.image_size as i64;
        for _ in 0..6 {
            let batch = loader.next_batch().unwrap();
            assert!(batch.wraps_loader_buffer());
            // SAFETY: `shared` is dropped before `batch`.
            let shared = unsafe { batch.model_input(Device::Cpu) };
            assert_eq!(shared.size(), [2, 3, size, size]);
            // The safe accessors copy: what they return outlives the batch (whose buffer
            // goes back to the loader for reuse) and never points into the buffer.
            let (kept, normalized) = (batch.images(), batch.images_normalized(Device::Cpu));
            assert_ne!(kept.data_ptr(), shared.data_ptr(), "images() shares the loader buffer");
            assert_ne!(
                normalized.data_ptr(),
                shared.data_ptr(),
                "images_normalized() shares it"
            );
            assert_eq!(shared.data_ptr(), shared.to_device(Device::Cpu).data_ptr());
            let values = Vec::<f32>::try_from(shared.flatten(0, -1)).unwrap();
            drop(shared);
            drop(batch);
            assert_eq!(Vec::<f32>::try_from(kept.flatten(0, -1)).unwrap(), values);
            assert_eq!(Vec::<f32>::try_from(normalized.flatten(0, -1)).unwrap(), values);
        }
        // The same values as the copying constructor gives.
        let values: Vec<f32> = (0..2 * 3 * 4 * 4).map(|i| i as f32 * 0.5).collect();
        let wrapped = TensorBatch::from_loader(values.clone().into(), &[1, 2, 3, 4], 2, 4, 0);
        let copied = TensorBatch::from_flat(&values, &[1, 2, 3, 4], 2, 4, 0);
        assert!(wrapped.images().equal(&copied.images()));
        assert!(wrapped.tokens.equal(&copied.tokens));
        assert!(!copied.wraps_loader_buffer());
    }

    #[test]
    fn device_normalization_of_u8_batches_matches_the_loader_f32_batches() {
        let dir = tempfile::tempdir().unwrap();
        write_shards(dir.path(), 8, 4);
        let mut cfg = data_config(&dir.path().display().to_string());
        let mut on_loader = TrainLoader::new(&cfg, &nano(), 5, 0, 1, None).unwrap();
        cfg.normalize = NormalizeOn::Device;
        let mut on_device = TrainLoader::new(&cfg, &nano(), 5, 0, 1, None).unwrap();
        let size = nano().vision.image_size as i64;
        for _ in 0..6 {
            let want = on_loader.next_batch().unwrap();
            let got = on_device.next_batch().unwrap();
            assert!(got.wraps_loader_buffer());
            assert_eq!(got.images_kind(), Kind::Uint8);
            assert_eq!(got.images().size(), [2, 3, size, size]);
            assert!(got.tokens.equal(&want.tokens));
            // f32 batches pass through unchanged.
            assert!(want.images_normalized(Device::Cpu).equal(&want.images()));
            let normalized = got.images_normalized(Device::Cpu);
            assert_eq!(normalized.kind(), Kind::Float);
            // Bit for bit: the loader and the device both compute level·scale + shift.
            assert!(normalized.equal(&want.images()));
        }
    }

    /// Runs `steps` steps of the nano model on `train` with `data.normalize = normalize`.
    fn first_loss(dir: &Path, train: &Path, normalize: &str) -> f64 {
        let text = format!(
            "name = \"norm_{normalize}\"\nmodel = \"nano\"\nseed = 3\nthreads = 1\nout_dir = {out:?}\n\
             [data]\ntrain = {train:?}\nbatch_size = 4\nworkers = 1\nshuffle_buffer = 4\nnormalize = \"{normalize}\"\n\
             [schedule]\nsteps = 1\nwarmup_steps = 0\n[checkpoint]\nevery = 0\n",
            out = dir.display().to_string(),
            train = train.display().to_string(),
        );
        let path = dir.join(format!("{normalize}.toml"));
        std::fs::write(&path, text).unwrap();
        let cfg = TrainConfig::load(&path, &[]).unwrap();
        assert_eq!(cfg.data.normalize == NormalizeOn::Device, normalize == "device");
        crate::train::train(&cfg, &Default::default()).unwrap().first_loss
    }

    #[test]
    fn data_normalize_on_device_gives_the_same_first_loss() {
        let dir = tempfile::tempdir().unwrap();
        let shards = dir.path().join("shards");
        std::fs::create_dir(&shards).unwrap();
        write_shards(&shards, 8, 8);
        let on_loader = first_loss(dir.path(), &shards, "loader");
        let on_device = first_loss(dir.path(), &shards, "device");
        assert!(on_loader.is_finite());
        eprintln!("first loss {on_loader} (loader), {on_device} (device)");
        // The same input bits, so the same loss.
        assert_eq!(on_loader, on_device, "first loss, loader vs device normalisation");
        // A misspelt value is refused, naming the field and the value.
        std::fs::write(
            dir.path().join("bad.toml"),
            "name = \"x\"\nmodel = \"nano\"\n[data]\ntrain = \"a.tar\"\nnormalize = \"gpu\"\n",
        )
        .unwrap();
        let err = TrainConfig::load(&dir.path().join("bad.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("data.normalize") && err.contains("gpu"), "{err}");
        assert_eq!(DataConfig::default().normalize, NormalizeOn::Loader);
    }

    #[test]
    fn data_resampled_ranks_draw_their_own_batches_from_fewer_shards_than_ranks() {
        let dir = tempfile::tempdir().unwrap();
        write_shards(dir.path(), 8, 8);
        let mut cfg = data_config(&dir.path().display().to_string());
        // One shard for three ranks: refused when every sample is read once per epoch, by
        // per-rank streams (a shard per rank) and the canonical one (a shard per partition) ...
        let err = error_of(TrainLoader::new(&cfg, &nano(), 7, 1, 3, None));
        assert!(err.contains("data.partitions") && err.contains("resampled"), "{err}");
        cfg.stream = StreamKind::PerRank;
        let err = error_of(TrainLoader::new(&cfg, &nano(), 7, 1, 3, None));
        assert!(err.contains("data.resampled"), "{err}");
        cfg.stream = StreamKind::Canonical;
        // ... fine when shards are drawn with replacement, each rank its own stream.
        cfg.resampled = true;
        cfg.epoch_samples = Some(12);
        let first_batches: Vec<Vec<f32>> = (0..3)
            .map(|rank| {
                let mut loader = TrainLoader::new(&cfg, &nano(), 7, rank, 3, None).unwrap();
                let batch = loader.next_batch().unwrap();
                Vec::<f32>::try_from(batch.images().flatten(0, -1)).unwrap()
            })
            .collect();
        assert_ne!(first_batches[0], first_batches[1]);
        assert_ne!(first_batches[1], first_batches[2]);
        // The same rank again: the same batch.
        let mut again = TrainLoader::new(&cfg, &nano(), 7, 2, 3, None).unwrap();
        let batch = Vec::<f32>::try_from(again.next_batch().unwrap().images().flatten(0, -1)).unwrap();
        assert_eq!(batch, first_batches[2]);
    }

    #[test]
    fn data_epoch_samples_default_to_the_dataset_size() {
        let dir = tempfile::tempdir().unwrap();
        write_shards(dir.path(), 6, 3);
        let mut cfg = data_config(&dir.path().display().to_string());
        cfg.resampled = true;
        // sizes.json says 6 samples: 3 batches of 2 per virtual epoch on one rank.
        let mut loader = TrainLoader::new(&cfg, &nano(), 0, 0, 1, None).unwrap();
        let epochs: Vec<u64> = (0..7).map(|_| loader.next_batch().unwrap().epoch).collect();
        assert_eq!(epochs, [0, 0, 0, 1, 1, 1, 2]);
        // Given explicitly, it wins: 8 samples over 2 ranks of 2 = 2 batches per rank.
        cfg.epoch_samples = Some(8);
        let mut loader = TrainLoader::new(&cfg, &nano(), 0, 1, 2, None).unwrap();
        let epochs: Vec<u64> = (0..3).map(|_| loader.next_batch().unwrap().epoch).collect();
        assert_eq!(epochs, [0, 0, 1]);
        // Neither given nor known: the error says which field to set.
        cfg.epoch_samples = None;
        std::fs::remove_file(dir.path().join("sizes.json")).unwrap();
        let err = error_of(TrainLoader::new(&cfg, &nano(), 0, 0, 1, None));
        assert!(err.contains("data.epoch_samples"), "{err}");
    }

    #[test]
    fn data_weighted_sources_need_resampled_mode() {
        let dir = tempfile::tempdir().unwrap();
        let shards = write_shards(dir.path(), 4, 2);
        let spec = format!("{}::{}", shards[0].display(), shards[1].display());
        let mut cfg = data_config(&spec);
        cfg.train_weights = Some("1::3".into());
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("data.train_weights") && err.contains("data.resampled"),
            "{err}"
        );
        let err = error_of(TrainLoader::new(&cfg, &nano(), 0, 0, 1, None));
        assert!(err.contains("data.train_weights"), "{err}");

        cfg.resampled = true;
        cfg.validate().unwrap();
        let mut loader = TrainLoader::new(&cfg, &nano(), 0, 0, 1, None).unwrap();
        loader.next_batch().unwrap();

        for bad in ["1", "1::x", "1::-2", "1::2::3"] {
            cfg.train_weights = Some(bad.into());
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains("data.train_weights"), "{bad}: {err}");
        }
        // All zero passes the syntax check; the loader refuses it, naming the field.
        cfg.train_weights = Some("0::0".into());
        let err = error_of(TrainLoader::new(&cfg, &nano(), 0, 0, 1, None));
        assert!(err.contains("data.train_weights"), "{err}");
    }

    #[test]
    fn data_epoch_samples_needs_resampled_mode_and_a_positive_count() {
        let mut cfg = data_config("a.tar");
        cfg.epoch_samples = Some(100);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("data.epoch_samples"), "{err}");
        cfg.resampled = true;
        cfg.validate().unwrap();
        cfg.epoch_samples = Some(0);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("data.epoch_samples"), "{err}");
    }

    #[test]
    fn data_resampled_position_resumes_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let shards = write_shards(dir.path(), 6, 2);
        let spec = format!("{}::{}/{{00001..00002}}.tar", shards[0].display(), dir.path().display());
        let mut cfg = data_config(&spec);
        cfg.resampled = true;
        cfg.train_weights = Some("2::1".into());
        cfg.epoch_samples = Some(6);
        cfg.workers = 2;
        let mut loader = TrainLoader::new(&cfg, &nano(), 3, 0, 1, None).unwrap();
        for _ in 0..4 {
            loader.next_batch().unwrap();
        }
        let state = loader.state();
        let expected: Vec<Vec<f32>> = (0..5)
            .map(|_| Vec::<f32>::try_from(loader.next_batch().unwrap().images().flatten(0, -1)).unwrap())
            .collect();
        let mut resumed = TrainLoader::new(&cfg, &nano(), 3, 0, 1, Some(std::slice::from_ref(&state))).unwrap();
        let got: Vec<Vec<f32>> = (0..5)
            .map(|_| Vec::<f32>::try_from(resumed.next_batch().unwrap().images().flatten(0, -1)).unwrap())
            .collect();
        assert_eq!(got, expected);
        // Another epoch length does not fit the saved position.
        cfg.epoch_samples = Some(8);
        let err = error_of(TrainLoader::new(
            &cfg,
            &nano(),
            3,
            0,
            1,
            Some(std::slice::from_ref(&state)),
        ));
        assert!(err.contains("epoch_batches"), "{err}");
    }
}
