//! One worker's training run, top to bottom: config → model → data → loop →
//! weights. Data, optimizer, schedule and metrics live behind small types so
//! the loop reads like a table of contents.

pub mod config;
pub mod ddp;
pub mod heartbeat;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod snapshot;
pub mod stop;

use std::path::PathBuf;
use std::time::Instant;

use tch::{nn, Kind, Tensor};
use tracing::{info, warn};

use crate::checkpoint::Checkpoints;
use crate::dist::{self, Dist};
use crate::loss_dist::{global_clip_loss, global_siglip_loss};
use crate::model::Clip;
use crate::precision::with_precision;
use crate::weights;
use crate::TrainError;
use config::{LossKind, TrainConfig};
use heartbeat::Heartbeat;
use metrics::MetricsWriter;
use optim::{AdamW, Gradients};
use snapshot::{Progress, ResumeFrom};
use stop::StopRequest;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Optimizer steps taken by this process (after a resume: since the resume).
    pub steps: u64,
    /// Loss of the first and of the last step.
    pub first_loss: f64,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Mean loss over the first and last 10% of steps (less noisy than single steps).
    pub early_mean_loss: f64,
    /// See `early_mean_loss`.
    pub late_mean_loss: f64,
    /// Steps skipped because the loss or gradient was not finite (whole run).
    pub skipped_steps: u64,
    /// Training throughput over this process's steps.
    pub samples_per_s: f64,
    /// The checkpoint the run resumed from, if any.
    pub resumed_from: Option<PathBuf>,
    /// Whether this process is rank 0 (the one that reports).
    pub is_main: bool,
}

/// How to start a run, beside its config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from a checkpoint (`--resume latest|PATH`).
    pub resume: Option<ResumeFrom>,
    /// Catch SIGTERM/SIGINT to save a checkpoint before stopping (the CLI sets it).
    pub handle_signals: bool,
}

/// Trains this worker as `cfg` says. With several workers (rank and world size
/// from the environment, DESIGN.md §4) each one runs this same function; the
/// loss covers the global batch and gradients are summed over ranks, so every
/// replica takes the same step. Rank 0 writes `runs/<name>/{config.toml,
/// metrics.jsonl, checkpoints/, model.safetensors}`. A resumed run continues
/// bit for bit where the checkpoint left off (CPU, fp32, fixed threads).
pub fn train(cfg: &TrainConfig, opts: &RunOptions) -> Result<TrainSummary, TrainError> {
    let dist = Dist::from_env().map_err(|e| TrainError::Dist(e.to_string()))?;
    let coll = dist::connect(&dist).map_err(|e| TrainError::Dist(e.to_string()))?;
    let coll = coll.as_ref();
    let stop = if opts.handle_signals {
        StopRequest::install().map_err(|e| TrainError::Config(format!("cannot install signal handlers: {e}")))?
    } else {
        StopRequest::never()
    };
    let mut heartbeat = Heartbeat::from_env(dist.rank);
    heartbeat.beat(0);
    let run_dir = cfg.run_dir();
    let model_cfg = cfg.model.resolve()?;
    let config_toml = toml::to_string(&cfg.resolved()?)
        .map_err(|e| TrainError::Config(format!("cannot write resolved config: {e}")))?;
    if dist.is_main() {
        prepare_run_dir(&run_dir, &config_toml)?;
    }
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    tch::manual_seed(cfg.seed as i64);

    let device = dist.device();
    let vs = nn::VarStore::new(device);
    let model = Clip::new(&vs.root(), &model_cfg);
    let mut opt = AdamW::new(vs.variables(), &cfg.optim);
    let checkpoints = Checkpoints::new(
        run_dir.join("checkpoints"),
        cfg.checkpoint.keep_last,
        cfg.checkpoint.keep_every,
    );
    let resumed = match &opts.resume {
        Some(from) => snapshot::resume(from, &checkpoints, &vs, &mut opt, &config_toml, coll, device)?,
        None => None,
    };
    if resumed.is_none() {
        if let (Some(path), true) = (&cfg.init_from, dist.is_main()) {
            let report = crate::interop::load_open_clip(&vs, path)
                .map_err(|e| TrainError::Model(format!("init_from {}: {e}", path.display())))?;
            info!(from = %path.display(), "initialised from open_clip weights: {report:?}");
        }
        ddp::broadcast_parameters(&vs, coll).map_err(dist_err)?;
    }
    ddp::verify_parameters_equal(&vs, coll).map_err(dist_err)?;
    let grad_sync = ddp::GradSync::default();
    let mut loader = crate::data::train_loader(
        &cfg.data,
        &model_cfg,
        cfg.seed,
        dist.rank,
        dist.world_size,
        resumed.as_ref().map(|r| &r.loader),
    )?;
    let mut progress = resumed.as_ref().map_or(Progress::default(), |r| r.progress);
    let start_samples = progress.samples_seen;
    let mut metrics = dist
        .is_main()
        .then(|| MetricsWriter::resume(&run_dir.join("metrics.jsonl"), progress.step))
        .transpose()?;
    let accum = cfg.data.accum_steps;
    let global_batch = cfg.data.batch_size * accum * dist.world_size;
    if dist.is_main() {
        info!(
            run = %run_dir.display(),
            params = model_cfg.num_params(),
            workers = dist.world_size,
            global_batch,
            steps = cfg.schedule.steps,
            start_step = progress.step,
            "training"
        );
    }

    let steps = cfg.schedule.steps;
    let save = |progress: Progress, loader: &crate::data::TrainLoader, opt: &AdamW| {
        snapshot::save(
            &checkpoints,
            &vs,
            opt,
            &loader.state(),
            progress,
            &config_toml,
            coll,
            device,
        )
    };
    let mut losses = Vec::with_capacity(steps.saturating_sub(progress.step) as usize);
    let mut window_samples = 0u64;
    let (run_start, mut window_start) = (Instant::now(), Instant::now());
    let (mut data_wait, mut comm) = (0f64, 0f64);
    while progress.step < steps {
        let step = progress.step;
        let lr = cfg.schedule.lr_at(step, cfg.optim.lr);
        // Forward + backward over the step's micro-batches: gradients summed
        // locally, exchanged between workers once.
        let (mut grads, mut loss_value, mut epoch) = (None::<Gradients>, 0.0, 0);
        for _ in 0..accum {
            let wait = Instant::now();
            let batch = loader.next_batch()?;
            data_wait += wait.elapsed().as_secs_f64();
            epoch = batch.epoch;
            let (images, tokens) = (batch.images_normalized(device), batch.tokens.to_device(device));
            let (image_features, text_features, scale) =
                with_precision(cfg.precision, device, || model.forward(&images, &tokens, true));
            let loss = match (cfg.loss, model.logit_bias()) {
                (LossKind::Siglip, Some(bias)) => {
                    global_siglip_loss(&image_features, &text_features, &scale, bias, coll)
                }
                _ => global_clip_loss(&image_features, &text_features, &scale, coll),
            }
            .map_err(dist_err)?;
            loss_value += loss.global_loss / accum as f64; // the same on every rank, so every rank decides alike
            if loss_value.is_finite() {
                let micro = opt.backward(&loss.surrogate);
                match grads.as_mut() {
                    Some(acc) => acc.accumulate(&micro),
                    None => grads = Some(micro),
                }
            }
        }
        if !loss_value.is_finite() {
            grads = None;
        }
        if let Some(grads) = grads.as_mut() {
            comm += grad_sync
                .all_reduce(grads, 1.0 / accum as f64, coll)
                .map_err(dist_err)?
                .seconds;
        }
        let grad_norm = grads.as_ref().map_or(f64::NAN, |g| g.norm());
        let stepped = if let (Some(grads), true) = (grads.as_mut(), grad_norm.is_finite()) {
            opt.step(grads, grad_norm, lr);
            model.clamp_logit_scale();
            progress.nonfinite_in_a_row = 0;
            losses.push(loss_value);
            true
        } else {
            progress.skipped_steps += 1;
            progress.nonfinite_in_a_row += 1;
            warn!(
                step,
                loss = loss_value,
                grad_norm,
                "non-finite loss or gradient: step skipped"
            );
            false
        };
        progress.step += 1;
        progress.samples_seen += global_batch as u64;
        window_samples += global_batch as u64;
        heartbeat.beat(progress.step);

        if let Some(metrics) = metrics
            .as_mut()
            .filter(|_| progress.step % cfg.log.every == 0 || progress.step == steps)
        {
            let secs = window_start.elapsed().as_secs_f64();
            let logit_scale = model.logit_scale().exp().double_value(&[]);
            let record = serde_json::json!({
                "step": progress.step,
                "epoch": epoch,
                "samples_seen": progress.samples_seen,
                "loss": loss_value,
                "lr": lr,
                "logit_scale": logit_scale,
                "grad_norm": grad_norm,
                "samples_per_s": window_samples as f64 / secs,
                "data_wait_frac": data_wait / secs,
                "comm_frac": comm / secs,
                "skipped_steps": progress.skipped_steps,
                "skipped_samples": loader.skip_counts(),
            });
            info!(
                "step {:>6}/{steps}  loss {loss_value:.4}  lr {lr:.2e}  scale {:.2}  {:.1} samples/s  data wait {:.0}%  comm {:.0}%",
                progress.step,
                logit_scale,
                window_samples as f64 / secs,
                100.0 * data_wait / secs,
                100.0 * comm / secs
            );
            metrics.write(&record)?;
            (window_start, window_samples, data_wait, comm) = (Instant::now(), 0, 0.0, 0.0);
        }

        // Faults and preemption: both end the run with a checkpoint to resume from.
        if !stepped && progress.nonfinite_in_a_row > cfg.max_nonfinite_steps {
            let saved = save(progress, &loader, &opt)?;
            if let Some(dir) = saved {
                warn!(checkpoint = %dir.display(), "stopping: too many non-finite steps; checkpoint holds the last good weights");
            }
            return Err(TrainError::Diverged {
                step,
                in_a_row: progress.nonfinite_in_a_row,
            });
        }
        if let Some(signal) = stop.agreed(coll, device).map_err(dist_err)? {
            let saved = save(progress, &loader, &opt)?;
            return Err(TrainError::Interrupted {
                signal,
                step: progress.step,
                checkpoint: saved.unwrap_or_else(|| checkpoints.root().join("latest")),
            });
        }
        if cfg.checkpoint.every > 0 && progress.step % cfg.checkpoint.every == 0 && progress.step < steps {
            save(progress, &loader, &opt)?;
        }
    }

    if dist.is_main() {
        let final_weights = run_dir.join("model.safetensors");
        weights::save_safetensors(&vs, &final_weights)
            .map_err(|e| TrainError::Model(format!("saving {}: {e}", final_weights.display())))?;
        info!(weights = %final_weights.display(), "saved final weights");
    }
    coll.barrier().map_err(dist_err)?;
    Ok(TrainSummary {
        is_main: dist.is_main(),
        resumed_from: resumed.map(|r| r.dir),
        ..summarise(
            run_dir,
            &losses,
            progress.skipped_steps,
            progress.samples_seen - start_samples,
            run_start.elapsed().as_secs_f64(),
        )
    })
}

fn dist_err(e: dist::DistError) -> TrainError {
    TrainError::Dist(e.to_string())
}

fn prepare_run_dir(run_dir: &std::path::Path, config_toml: &str) -> Result<(), TrainError> {
    let io = |path: &std::path::Path| {
        let path = path.to_owned();
        move |e| TrainError::Io { path, source: e }
    };
    std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    let path = run_dir.join("config.toml");
    std::fs::write(&path, config_toml).map_err(io(&path))
}

fn summarise(run_dir: PathBuf, losses: &[f64], skipped: u64, samples: u64, secs: f64) -> TrainSummary {
    let n = losses.len();
    let k = (n / 10).max(1).min(n.max(1));
    let mean = |xs: &[f64]| {
        if xs.is_empty() {
            f64::NAN
        } else {
            xs.iter().sum::<f64>() / xs.len() as f64
        }
    };
    TrainSummary {
        run_dir,
        steps: n as u64 + skipped,
        first_loss: losses.first().copied().unwrap_or(f64::NAN),
        last_loss: losses.last().copied().unwrap_or(f64::NAN),
        early_mean_loss: mean(&losses[..k.min(n)]),
        late_mean_loss: mean(&losses[n.saturating_sub(k)..]),
        skipped_steps: skipped,
        samples_per_s: samples as f64 / secs,
        resumed_from: None,
        is_main: true,
    }
}

/// A `(size, 3, image_size, image_size)` CPU tensor over the loader buffer at `ptr` holding
/// `len` elements of `kind`, without a copy.
///
/// Panics if `len` is not `size × 3 × image_size²`, which the loader guarantees (wrapping a
/// shorter buffer would read past its end).
///
/// # Safety
/// The buffer must stay allocated, unmoved and untouched by anything else for as long as the
/// tensor or any tensor sharing its storage lives ([`TensorBatch`] owns both and drops the
/// buffer last).
unsafe fn loader_buffer_tensor(ptr: *const u8, len: usize, kind: Kind, size: usize, image_size: usize) -> Tensor {
    assert_eq!(
        len,
        size * 3 * image_size * image_size,
        "loader batch of {size} images of {image_size} px"
    );
    let dims = [size as i64, 3, image_size as i64, image_size as i64];
    // SAFETY: `ptr` covers exactly the tensor's contiguous elements (checked above); the
    // caller keeps the allocation alive and unmoved (this function's contract).
    unsafe { Tensor::from_blob(ptr, &dims, &[], kind, tch::Device::Cpu) }
}

/// A batch as tensors (images `(B,3,H,W)` f32 normalised, or u8 levels with
/// `data.normalize = "device"`; tokens `(B,L)` i64). [`TensorBatch::images_normalized`] gives
/// the model's input on a device either way.
///
/// From the loader ([`TensorBatch::from_loader`], [`TensorBatch::from_loader_u8`]) `images`
/// wraps the loader's buffer, which
/// this struct owns, without a copy: `images` and every tensor that shares its memory (a
/// view, or `to_device` onto the CPU, which returns the same storage) must be dropped before
/// the batch. Copy it (`images.copy()`) to keep it longer. Moving it to a GPU copies.
pub struct TensorBatch {
    /// Normalised f32 images, or u8 levels (then `normalization` is set).
    pub images: Tensor,
    /// Token ids, padded.
    pub tokens: Tensor,
    /// Samples in the batch.
    pub size: usize,
    /// Data epoch the batch came from.
    pub epoch: u64,
    /// How u8 `images` become normalised f32; `None` for f32 images.
    normalization: Option<crate::data::PixelNormalization>,
    /// The loader buffer `images` points into, when it does; declared after `images` so that
    /// it is dropped (and handed back to the loader for reuse) after the tensor.
    images_storage: Option<LoaderImages>,
}

/// A loader buffer a [`TensorBatch`] wraps.
enum LoaderImages {
    /// Normalised values.
    F32(#[allow(dead_code)] dataloader::BatchImages),
    /// 8-bit levels.
    U8(#[allow(dead_code)] dataloader::BatchImages<u8>),
}

impl TensorBatch {
    /// Copies flat buffers into libtorch-owned tensors.
    pub fn from_flat(images: &[f32], tokens: &[i64], size: usize, image_size: usize, epoch: u64) -> Self {
        let images = Tensor::from_slice(images).view([size as i64, 3, image_size as i64, image_size as i64]);
        Self::assemble(images, None, None, tokens, size, epoch)
    }

    /// The batch of `images` (with the loader buffer they wrap, if any, and the normalisation
    /// still to apply, if any) and the token ids, copied into an `(size, L)` i64 tensor.
    fn assemble(
        images: Tensor,
        images_storage: Option<LoaderImages>,
        normalization: Option<crate::data::PixelNormalization>,
        tokens: &[i64],
        size: usize,
        epoch: u64,
    ) -> Self {
        let tokens = Tensor::from_slice(tokens).view([size as i64, -1]).to_kind(Kind::Int64);
        Self {
            images,
            tokens,
            size,
            epoch,
            normalization,
            images_storage,
        }
    }

    /// Wraps a loader batch: the images without a copy (the buffer moves into the returned
    /// value, see the type's note), the token ids copied (a few hundred KB at most).
    ///
    /// Panics if the buffer does not hold `size × 3 × image_size²` values, which the loader
    /// guarantees (wrapping a shorter buffer would read past its end).
    pub fn from_loader(
        mut images: dataloader::BatchImages,
        tokens: &[i64],
        size: usize,
        image_size: usize,
        epoch: u64,
    ) -> Self {
        // SAFETY: `images` moves into the returned struct, which drops it after the tensor.
        let images_tensor = unsafe {
            loader_buffer_tensor(
                images.as_mut_ptr() as *const u8,
                images.len(),
                Kind::Float,
                size,
                image_size,
            )
        };
        Self::assemble(
            images_tensor,
            Some(LoaderImages::F32(images)),
            None,
            tokens,
            size,
            epoch,
        )
    }

    /// Wraps a u8 loader batch ([`dataloader::PixelOutput::RawU8`]) without a copy, as
    /// [`TensorBatch::from_loader`] does; `images` is then u8 and
    /// [`TensorBatch::images_normalized`] applies `normalization` on the device.
    ///
    /// Panics if the buffer does not hold `size × 3 × image_size²` values, which the loader
    /// guarantees.
    pub fn from_loader_u8(
        mut images: dataloader::BatchImages<u8>,
        normalization: &crate::data::PixelNormalization,
        tokens: &[i64],
        size: usize,
        image_size: usize,
        epoch: u64,
    ) -> Self {
        // SAFETY: `images` moves into the returned struct, which drops it after the tensor.
        let images_tensor =
            unsafe { loader_buffer_tensor(images.as_mut_ptr(), images.len(), Kind::Uint8, size, image_size) };
        let normalization = Some(normalization.shallow_clone());
        Self::assemble(
            images_tensor,
            Some(LoaderImages::U8(images)),
            normalization,
            tokens,
            size,
            epoch,
        )
    }

    /// The model's input on `device`: f32 images moved there, or u8 images moved there (a
    /// quarter of the bytes) and then normalised there.
    pub fn images_normalized(&self, device: tch::Device) -> Tensor {
        match &self.normalization {
            None => self.images.to_device(device),
            Some(normalization) => normalization.apply(&self.images.to_device(device)),
        }
    }

    /// Whether `images` wraps the loader's buffer (no copy was made).
    pub fn wraps_loader_buffer(&self) -> bool {
        self.images_storage.is_some()
    }
}
