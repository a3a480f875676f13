//! Real training steps at a chosen global batch, inside a memory budget, for
//! `scripts/bench/max_batch`: the model (a preset, `--embed-dim` to widen its embedding),
//! AdamW, and the train loop's own step (`TrainStep`: gradient-cached micro-batches with
//! `--accum K > 1`, the ring-tiled loss with `--loss-tile T > 0`), on random images and
//! captions made per micro-batch (u8 levels normalised on use with `--u8`, as
//! `data.normalize = "device"` delivers them; f32 otherwise).
//!
//! ```text
//! MALLOC_MMAP_THRESHOLD_=65536 target/release/examples/max_batch --model tiny --embed-dim 512 \
//!     --micro 256 --accum 64 --loss-tile 1024 --u8 --budget-gib 4 --steps 2
//! ```
//!
//! `--budget-gib G` caps the process's address space at G GiB above what it holds once
//! libtorch is up, before the model exists: model, optimizer, data, activations and loss all
//! count. A step that needs more fails to allocate; the line then says `"over_budget": true`.
//! `--print-open-clip-config` prints the model as open_clip's JSON config (for the peer) and
//! exits. Prints one JSON line: peak RSS over that baseline, seconds per step (steps after
//! the first), samples per second.

use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};
use trainer::dist::Solo;
use trainer::loss::LossKind;
use trainer::model::{open_clip::open_clip_model_cfg, Clip, ModelConfig};
use trainer::optim::{AdamW, OptimConfig};
use trainer::precision::Precision;
use trainer::train::step::{StepSettings, TrainStep};
use trainer::TrainError;

#[path = "bench_support/batches.rs"]
mod batches;
#[path = "bench_support/memory.rs"]
mod memory;
use batches::RandomBatches;
use memory::{arg, cap_address_space, status_bytes};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mut cfg = ModelConfig::load(&arg(&args, "--model", "tiny"))?;
    if let Ok(embed) = arg(&args, "--embed-dim", "").parse::<i64>() {
        cfg.embed_dim = embed;
    }
    cfg.grad_checkpointing = args.iter().any(|a| a == "--grad-checkpointing");
    cfg.validate()?;
    if args.iter().any(|a| a == "--print-open-clip-config") {
        println!("{}", open_clip_model_cfg(&cfg));
        return Ok(());
    }
    if let Ok(world) = arg(&args, "--optimizer-memory", "").parse::<usize>() {
        return optimizer_memory(&cfg, world);
    }
    let micro: i64 = arg(&args, "--micro", "256").parse()?;
    let accum: usize = arg(&args, "--accum", "1").parse()?;
    let loss_tile: usize = arg(&args, "--loss-tile", "0").parse()?;
    let u8_levels = args.iter().any(|a| a == "--u8");
    let budget_gib: f64 = arg(&args, "--budget-gib", "0").parse()?;
    let steps: usize = arg(&args, "--steps", "2").parse()?;
    let threads: i32 = arg(&args, "--threads", "2").parse()?;
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    // libtorch up (a small op), then the budget, then everything the step needs.
    let _ = Tensor::ones([8, 8], (Kind::Float, Device::Cpu)).matmul(&Tensor::ones([8, 8], (Kind::Float, Device::Cpu)));
    if budget_gib > 0.0 {
        cap_address_space((budget_gib * (1u64 << 30) as f64) as u64)?;
    }
    let rss_before = status_bytes("VmRSS")?;
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let global = micro * accum as i64;
    let started = Instant::now();
    let mut step_seconds = Vec::new();
    // Peak RSS over what the process held just before a step after the first: the step's
    // own memory (activations, gradients), without the model and optimizer state.
    let (mut rss_before_step, mut step_peak, mut run_hwm) = (0u64, 0u64, 0u64);
    // An allocation past the budget makes libtorch throw, which tch turns into a panic.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<f64, TrainError> {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Clip::new(&vs.root(), &cfg);
        let optimizer = AdamW::new(vs.variables(), &OptimConfig::default());
        let settings = StepSettings {
            loss: LossKind::Clip,
            loss_tile,
            precision: Precision::Fp32,
            accum_steps: accum,
            overlap_reduce: false,
        };
        let mut step = TrainStep::new(&model, optimizer.into(), settings, &Solo, Device::Cpu);
        let mut batches = RandomBatches {
            rows: micro,
            image_size: cfg.vision.image_size,
            context: cfg.text.context_length,
            u8_levels,
        };
        let mut loss = f64::NAN;
        for index in 0..steps {
            if index > 0 {
                // The steady state: model, optimizer and gradients' first allocation exist.
                run_hwm = run_hwm.max(status_bytes("VmHWM").unwrap_or(0));
                rss_before_step = status_bytes("VmRSS").unwrap_or(0);
                let _ = std::fs::write("/proc/self/clear_refs", "5");
            }
            let t = Instant::now();
            loss = step.run(&mut batches, 1e-4)?.loss;
            step_seconds.push(t.elapsed().as_secs_f64());
            if index > 0 {
                step_peak = step_peak.max(status_bytes("VmHWM").unwrap_or(0).saturating_sub(rss_before_step));
            }
        }
        Ok(loss)
    }));
    // The HWM is reset before every step after the first: the run's peak is the largest
    // of the HWMs read before each reset and the last one.
    let peak = run_hwm.max(status_bytes("VmHWM")?).saturating_sub(rss_before);
    let (loss, over_budget) = match outcome {
        Ok(Ok(loss)) => (Some(loss), false),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => (None, true),
    };
    // Steps after the first (which allocates everything once); the first if there is one only.
    let timed: Vec<f64> = step_seconds
        .iter()
        .skip(1.min(step_seconds.len().saturating_sub(1)))
        .copied()
        .collect();
    let seconds = if over_budget || timed.is_empty() {
        None
    } else {
        Some(timed.iter().sum::<f64>() / timed.len() as f64)
    };
    println!(
        "{}",
        serde_json::json!({
            "impl": "ferroclip",
            "model": arg(&args, "--model", "tiny"),
            "embed_dim": cfg.embed_dim,
            "global_batch": global,
            "micro_batch": micro,
            "accum": accum,
            "loss_tile": loss_tile,
            "u8_images": u8_levels,
            "threads": threads,
            "budget_gib": budget_gib,
            "over_budget": over_budget,
            "peak_delta_bytes": peak,
            "grad_checkpointing": cfg.grad_checkpointing,
            "step_peak_delta_bytes": (step_seconds.len() > 1).then_some(step_peak),
            "steps_run": step_seconds.len(),
            "step_seconds": seconds,
            "samples_per_s": seconds.map(|s| global as f64 / s),
            "wall_seconds": started.elapsed().as_secs_f64(),
            "loss": loss,
        })
    );
    Ok(())
}

/// Optimizer state bytes per rank for `world` ranks: replicated AdamW, and rank 0's shard of
/// the sharded one (`optim.shard`). One JSON line.
fn optimizer_memory(cfg: &ModelConfig, world: usize) -> Result<(), Box<dyn std::error::Error>> {
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Clip::new(&vs.root(), cfg);
    let params: usize = vs.variables().values().map(|t| t.numel()).sum();
    let sharded = trainer::optim::ShardedAdamW::new(vs.variables(), &OptimConfig::default(), 0, world);
    println!(
        "{}",
        serde_json::json!({
            "impl": "ferroclip",
            "params": params,
            "world_size": world,
            "replicated_state_bytes": 2 * params * 4,
            "sharded_state_bytes": sharded.state_bytes(),
        })
    );
    Ok(())
}
