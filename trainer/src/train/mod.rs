//! One worker's training run, top to bottom: set-up, the loop, the finish. Each part
//! is a named call into a module with one job:
//!
//! - [`config`]: the train config, whose sections the components own;
//! - [`setup`]: the run folder, the seeds, and where the run starts (a checkpoint,
//!   open_clip weights, or the seed's initialisation);
//! - [`step`]: one optimizer step (micro-batches, global loss, gradient all-reduce,
//!   update or skip), with [`ddp`] for the gradient exchange;
//! - [`evaluate`]: the eval decision (`[eval]`, on every rank, results from rank 0);
//! - [`metrics`]: the log decision, `metrics.jsonl` and `tb/`, the summary;
//! - [`throughput`]: FLOPs per sample, TFLOP/s and MFU;
//! - [`stop`]: why a run stops early (a signal, divergence), each with a checkpoint;
//! - [`heartbeat`]: liveness for the launcher;
//! - checkpoints themselves: [`crate::checkpoint::Checkpointer`].

pub mod config;
pub mod ddp;
pub mod evaluate;
pub mod heartbeat;
pub mod metrics;
pub mod setup;
pub mod step;
pub mod stop;
pub mod throughput;

use tch::nn;
use tracing::info;

use crate::checkpoint::{Checkpointer, Progress, ResumeFrom, TrainState};
use crate::data::TrainLoader;
use crate::dist::{self, Dist};
use crate::model::Clip;
use crate::optim::{Ema, Optimizer};
use crate::TrainError;
use config::TrainConfig;
use evaluate::RunEval;
use heartbeat::Heartbeat;
use metrics::Metrics;
pub use metrics::TrainSummary;
use step::TrainStep;
use stop::StopRequest;
use throughput::{Peak, Throughput};

/// How to start a run, beside its config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from a checkpoint (`--resume latest|PATH`).
    pub resume: Option<ResumeFrom>,
    /// Catch SIGTERM/SIGINT to save a checkpoint before stopping (the CLI sets it).
    pub handle_signals: bool,
}

/// Trains this worker as `cfg` says. With several workers (rank and world size from the
/// environment, docs/architecture.md §4) each one runs this same function; the loss
/// covers the global batch and gradients are summed over ranks, so every replica takes
/// the same step. Rank 0 writes `runs/<name>/{config.toml, metrics.jsonl, checkpoints/,
/// model.safetensors}`. A resumed run continues bit for bit where the checkpoint left
/// off (CPU, fp32, fixed threads).
pub fn train(cfg: &TrainConfig, opts: &RunOptions) -> Result<TrainSummary, TrainError> {
    // Who this worker is, and how it talks to the others.
    let dist = Dist::from_env()?;
    let coll = dist::connect(&dist)?;
    let coll = coll.as_ref();
    let stop = StopRequest::for_run(opts.handle_signals)?;
    let mut heartbeat = Heartbeat::from_env(dist.rank);
    heartbeat.beat(0);

    // The run folder, holding the config as it runs.
    let run_dir = cfg.run_dir();
    let model_cfg = cfg.model.resolve()?;
    let config_toml = setup::resolved_config_toml(cfg)?;
    if dist.is_main() {
        setup::prepare_run_dir(&run_dir, &config_toml)?;
    }
    setup::seed_and_threads(cfg);

    // The model and its optimizer, at the state the run starts from.
    let device = dist.device();
    let vs = nn::VarStore::new(device);
    let model = Clip::new(&vs.root(), &model_cfg);
    let optimizer = Optimizer::new(vs.variables(), &cfg.optim, dist.rank, dist.world_size);
    let mut step = TrainStep::new(&model, optimizer, cfg.step_settings(), coll, device);
    let mut ema = cfg.optim.ema_decay.map(|decay| Ema::new(vs.variables(), decay));
    let checkpointer = Checkpointer::new(&run_dir, &cfg.checkpoint, &config_toml, coll, device);
    let resumed = setup::start_from(
        cfg,
        opts,
        &checkpointer,
        &vs,
        step.optimizer_mut(),
        ema.as_mut(),
        &dist,
        coll,
    )?;
    let mut progress = resumed.as_ref().map_or(Progress::default(), |r| r.progress);

    // The data, continuing where the checkpoint's loaders stood.
    let mut loader = TrainLoader::new(
        &cfg.data,
        &model_cfg,
        cfg.seed,
        dist.rank,
        dist.world_size,
        resumed.as_ref().map(|r| r.loaders.as_slice()),
    )?;
    if cfg.data.dump_keys {
        loader.dump_keys_to(&run_dir.join("batch_keys"), progress.step * cfg.data.accum_steps as u64)?;
    }
    let global_batch = cfg.global_batch(dist.world_size)?;
    let last_step = cfg.schedule.steps;
    let peak = Peak::resolve(cfg.log.peak_tflops, device, cfg.precision);
    let throughput = Throughput::new(&model_cfg, cfg.data.accum_steps, dist.world_size, peak.as_ref());
    let mut metrics = Metrics::open(
        &run_dir,
        &cfg.log,
        dist.is_main(),
        &progress,
        last_step,
        global_batch,
        throughput,
    )?;
    let mut evals = RunEval::new(&cfg.eval, &run_dir, dist.is_main())?;
    if dist.is_main() {
        throughput::log_peak(peak.as_ref());
        info!(
            run = %run_dir.display(),
            params = model_cfg.num_params(),
            workers = dist.world_size,
            global_batch,
            data_partitions = loader.partitions(),
            steps = last_step,
            start_step = progress.step,
            "training"
        );
    }

    // The loop: a step, its counters, its log line, and the decisions to stop or save.
    while progress.step < last_step {
        let lr = cfg.schedule.lr_at(progress.step, cfg.optim.lr);
        let outcome = step.run(&mut loader, lr)?;
        progress.record_step(outcome.stepped, global_batch);
        if let (Some(ema), true) = (ema.as_mut(), outcome.stepped) {
            ema.update();
        }
        heartbeat.beat(progress.step);
        metrics.record(&outcome, &progress, lr, &model, &loader)?;
        evals.maybe_run(progress.step, last_step, &model, &model_cfg, coll, device)?;
        let state = TrainState {
            vs: &vs,
            optimizer: step.optimizer(),
            loader: &loader,
            ema: ema.as_ref(),
        };
        stop::unless_finite(&outcome, progress, cfg.max_nonfinite_steps, &checkpointer, &state)?;
        stop.unless_signalled(progress, &checkpointer, &state, coll, device)?;
        checkpointer.maybe_save(progress, last_step, &state)?;
    }

    // The finish: the final weights, once every rank is done.
    if dist.is_main() {
        setup::save_final_weights(&vs, ema.as_ref(), &run_dir)?;
    }
    coll.barrier()?;
    Ok(metrics.summary(run_dir, &progress, resumed.map(|r| r.dir), dist.is_main()))
}
