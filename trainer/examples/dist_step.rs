//! Times one data-parallel training step (forward + global ClipLoss + backward +
//! gradient all-reduce + AdamW) on random data, and the part of it spent in
//! communication, for `scripts/bench/scaling` (weak scaling: the same batch per
//! worker with 1 and with 2 workers).
//!
//! ```text
//! mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 \
//!     target/release/examples/dist_step --model tiny --batch 32 --threads 1 --warmup 2 --steps 20
//! ```
//!
//! Rank 0 prints one JSON line. The collective is the one the trainer uses
//! (`dist::connect`: `Solo` for a world of one, MPI otherwise). Communication
//! time is the wall time inside collective calls (the loss's all-gathers,
//! reduce-scatters and loss all-reduce, and GradSync's all-reduces), so it
//! includes waiting for the slower rank; GradSync's bucket copies are reported
//! apart (`grad_sync_s` is GradSync's whole wall time, copies included).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};
use trainer::dist::{self, Collective, Dist, DistError};
use trainer::loss::global_clip_loss;
use trainer::model::Clip;
use trainer::model::ModelConfig;
use trainer::optim::GradSync;
use trainer::optim::{AdamW, OptimConfig};
use trainer::train::ddp::broadcast_parameters;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// Wraps a collective and adds up the wall time spent inside its calls.
struct Timed<'a> {
    inner: &'a dyn Collective,
    nanos: AtomicU64,
}

impl Timed<'_> {
    fn seconds(&self) -> f64 {
        self.nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }

    fn time<T>(&self, call: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = call();
        self.nanos
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }
}

impl Collective for Timed<'_> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn all_gather(&self, t: &Tensor) -> Result<Tensor, DistError> {
        self.time(|| self.inner.all_gather(t))
    }
    fn all_reduce_sum_(&self, t: &mut Tensor) -> Result<(), DistError> {
        self.time(|| self.inner.all_reduce_sum_(t))
    }
    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<Tensor, DistError> {
        self.time(|| self.inner.reduce_scatter_sum(t))
    }
    fn broadcast_(&self, t: &mut Tensor, root: usize) -> Result<(), DistError> {
        self.time(|| self.inner.broadcast_(t, root))
    }
    fn barrier(&self) -> Result<(), DistError> {
        self.time(|| self.inner.barrier())
    }
    fn ring_pass(&self, t: &Tensor) -> Result<Tensor, DistError> {
        self.time(|| self.inner.ring_pass(t))
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model_name = arg(&args, "--model", "tiny");
    let batch: i64 = arg(&args, "--batch", "32").parse()?;
    let threads: i32 = arg(&args, "--threads", "1").parse()?;
    let warmup: usize = arg(&args, "--warmup", "2").parse()?;
    let steps: usize = arg(&args, "--steps", "20").parse()?;
    if steps == 0 {
        return Err("--steps must be at least 1".into());
    }
    tch::set_num_threads(threads);

    let dist = Dist::from_env()?;
    let backend = dist::connect(&dist)?;
    let coll = Timed {
        inner: backend.as_ref(),
        nanos: AtomicU64::new(0),
    };

    tch::manual_seed(0);
    let cfg = ModelConfig::load(&model_name)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Clip::new(&vs.root(), &cfg);
    broadcast_parameters(&vs, &coll)?;
    let optim_cfg = OptimConfig {
        decay_embeddings: true,
        grad_clip_norm: 0.0,
        ..OptimConfig::default()
    };
    let mut opt = AdamW::new(vs.variables(), &optim_cfg);
    let grad_sync = GradSync::default();

    // Each rank its own random batch, as each worker reads its own shards.
    tch::manual_seed(1000 + dist.rank as i64);
    let size = cfg.vision.image_size as i64;
    let ctx = cfg.text.context_length as i64;
    let images = Tensor::randn([batch, 3, size, size], (Kind::Float, Device::Cpu));
    let tokens = Tensor::randint_low(1, 49000, [batch, ctx], (Kind::Int64, Device::Cpu));
    let _ = tokens.narrow(1, ctx - 1, 1).fill_(49407);

    let (mut step_times, mut comm_times, mut loss_comm_times, mut grad_comm_times, mut grad_sync_times) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut last_loss = f64::NAN;
    let mut grad_bytes = 0;
    // Start every rank's clock together, so rank 0's first step does not count
    // the others' start-up.
    coll.barrier()?;
    for i in 0..warmup + steps {
        let start = Instant::now();
        let comm_at_start = coll.seconds();

        let (image_features, text_features, logit_scale) = model.forward(&images, &tokens, true);
        let loss = global_clip_loss(&image_features, &text_features, &logit_scale, &coll)?;
        let loss_comm = coll.seconds() - comm_at_start;
        let mut grads = opt.backward(&loss.surrogate);
        let comm_before_sync = coll.seconds();
        let sync = grad_sync.all_reduce(&mut grads, 1.0, &coll)?;
        let grad_comm = coll.seconds() - comm_before_sync;
        opt.step(&mut grads, 0.0, 5e-4).expect("AdamW step");
        model.clamp_logit_scale();

        let elapsed = start.elapsed().as_secs_f64();
        if i >= warmup {
            step_times.push(elapsed);
            comm_times.push(loss_comm + grad_comm);
            loss_comm_times.push(loss_comm);
            grad_comm_times.push(grad_comm);
            grad_sync_times.push(sync.seconds);
        }
        last_loss = loss.global_loss;
        grad_bytes = sync.bytes;
    }

    if dist.rank == 0 {
        let total_step: f64 = step_times.iter().sum();
        let total_comm: f64 = comm_times.iter().sum();
        let min_step = step_times.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "{}",
            serde_json::json!({
                "model": model_name,
                "world_size": dist.world_size,
                "threads": threads,
                "batch_per_worker": batch,
                "global_batch": batch * dist.world_size as i64,
                "steps": steps,
                "median_step_s": median(&mut step_times),
                "min_step_s": min_step,
                "median_comm_s": median(&mut comm_times),
                "median_loss_comm_s": median(&mut loss_comm_times),
                "median_grad_comm_s": median(&mut grad_comm_times),
                "median_grad_sync_s": median(&mut grad_sync_times),
                "comm_frac": total_comm / total_step,
                "grad_bytes": grad_bytes,
                "loss": last_loss,
            })
        );
    }
    Ok(())
}
