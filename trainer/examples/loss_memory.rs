//! Peak memory of one rank's contrastive loss (forward + backward), for
//! `scripts/bench/loss_memory` and `scripts/bench/scaling`.
//!
//! ```text
//! MALLOC_MMAP_THRESHOLD_=65536 target/release/examples/loss_memory --mode tiled --tile 1024 --batch 2048 --global 262144 --dim 512
//! MALLOC_MMAP_THRESHOLD_=65536 target/release/examples/loss_memory --mode dist --batch 256 --global 4096 --dim 512
//! MALLOC_MMAP_THRESHOLD_=65536 target/release/examples/loss_memory --mode full --global 4096 --dim 512
//! ```
//!
//! - `--mode tiled`: rank 0 of N/B simulated ranks runs the ring-tiled ClipLoss
//!   (`loss_tile = --tile`): the other ranks' feature blocks and returning gradient blocks
//!   arrive through a simulated `ring_pass` as fresh (B, 2D) tensors, as real receives
//!   allocate them; memory should not depend on N.
//! - `--mode dist`: rank 0 runs the untiled global ClipLoss (gather, B×N logits, backward,
//!   reduce-scatter of the column gradients); the simulated collective returns the other
//!   ranks' rows from a tensor made before the measurement, so the gathered (N, D) outputs
//!   are allocated inside it just as a real all-gather allocates them.
//! - `--mode full`: `clip_loss` of one process holding all N rows, then backward.
//!
//! Measurement: peak RSS (VmHWM) minus RSS just before the loss, with the peak reset through
//! /proc/self/clear_refs. Run it in a fresh process per size with a fixed glibc mmap
//! threshold (`MALLOC_MMAP_THRESHOLD_`), so large freed blocks leave RSS at once and the peak
//! is the loss's own. `--budget-gib G` caps the address space at G GiB above what the
//! process holds before the loss: a loss that needs more fails to allocate and the line
//! says `"over_budget": true`. Prints one JSON line.

use std::sync::Mutex;

use tch::{Device, Kind, Tensor};
use trainer::dist::{Collective, DistError};
use trainer::loss::{clip_loss, global_clip_loss, LossKind};
use trainer::model::l2_normalize;

#[path = "bench_support/memory.rs"]
mod memory;
use memory::{arg, cap_address_space, status_bytes};

/// Rank 0 of `world_size` ranks, the other ranks simulated.
struct SimulatedRanks {
    world_size: usize,
    /// For the untiled loss: the other ranks' rows, ((W-1)·B, D), standing in for both
    /// towers. In a mutex because a collective must be `Sync` and a tensor is not.
    others: Mutex<Tensor>,
}

fn poisoned(op: &'static str) -> DistError {
    DistError::Tensor {
        op,
        reason: "poisoned".into(),
    }
}

impl Collective for SimulatedRanks {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        self.world_size
    }
    fn all_gather(&self, t: &Tensor) -> Result<Tensor, DistError> {
        // A fresh (N, D) tensor, as a real gather returns; rank 0's block first.
        let others = self.others.lock().map_err(|_| poisoned("all_gather"))?;
        Ok(Tensor::cat(&[t, &*others], 0))
    }
    fn all_reduce_sum_(&self, _t: &mut Tensor) -> Result<(), DistError> {
        // Only the loss value goes through here; its sum does not matter for memory.
        Ok(())
    }
    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<Tensor, DistError> {
        // Rank 0's block of the column gradients, a fresh (B, D) tensor as a
        // real reduce-scatter returns (the other ranks' terms would add to it).
        let rows = t.size()[0] / self.world_size as i64;
        Ok(t.narrow(0, 0, rows).copy())
    }
    fn broadcast_(&self, _t: &mut Tensor, _root: usize) -> Result<(), DistError> {
        Ok(())
    }
    fn barrier(&self) -> Result<(), DistError> {
        Ok(())
    }
    fn ring_pass(&self, t: &Tensor) -> Result<Tensor, DistError> {
        // The previous rank's block: fresh values of t's shape, rows of about unit norm.
        Ok(Tensor::randn(t.size(), (t.kind(), t.device())) / (t.size()[1] as f64 / 2.0).sqrt())
    }
}

fn features(rows: i64, dim: i64) -> Tensor {
    l2_normalize(&Tensor::randn([rows, dim], (Kind::Float, Device::Cpu))).set_requires_grad(true)
}

/// One loss forward + backward; returns the loss value.
fn run(mode: &str, batch: i64, global: i64, dim: i64, tile: usize, sim: &SimulatedRanks) -> Result<f64, String> {
    let scale = Tensor::scalar_tensor(1.0 / 0.07, (Kind::Float, Device::Cpu)).set_requires_grad(true);
    match mode {
        "tiled" => {
            let (image, text) = (features(batch, dim), features(batch, dim));
            let loss = LossKind::Clip
                .feature_grads(&image, &text, &scale, None, tile, sim)
                .map_err(|e| e.to_string())?;
            loss.grads.surrogate(&image, &text, &scale, None).backward();
            Ok(loss.share)
        }
        "dist" => {
            let (image, text) = (features(batch, dim), features(batch, dim));
            let loss = global_clip_loss(&image, &text, &scale, sim).map_err(|e| e.to_string())?;
            loss.surrogate.backward();
            Ok(loss.share)
        }
        "full" => {
            let (image, text) = (features(global, dim), features(global, dim));
            let loss = clip_loss(&image, &text, &scale);
            loss.backward();
            Ok(loss.double_value(&[]))
        }
        _ => Err(format!("--mode must be tiled, dist or full, not {mode}")),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mode = arg(&args, "--mode", "dist");
    let batch: i64 = arg(&args, "--batch", "256").parse()?;
    let global: i64 = arg(&args, "--global", "1024").parse()?;
    let dim: i64 = arg(&args, "--dim", "512").parse()?;
    let tile: usize = arg(&args, "--tile", "1024").parse()?;
    let budget_gib: f64 = arg(&args, "--budget-gib", "0").parse()?;
    if batch <= 0 || global < batch || global % batch != 0 {
        return Err(format!("--global ({global}) must be a positive multiple of --batch ({batch})").into());
    }
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let world_size = (global / batch) as usize;
    let others_rows = if mode == "dist" { global - batch } else { 0 };
    let sim = SimulatedRanks {
        world_size,
        others: Mutex::new(l2_normalize(&Tensor::randn(
            [others_rows, dim],
            (Kind::Float, Device::Cpu),
        ))),
    };

    // Warm up libtorch's kernels on a small problem of the same mode so one-time allocations
    // (thread pools, kernel caches) are not counted.
    let small = SimulatedRanks {
        world_size: 2,
        others: Mutex::new(l2_normalize(&Tensor::randn([8, dim], (Kind::Float, Device::Cpu)))),
    };
    run(&mode, 8, 16, dim, 4, &small)?;

    if budget_gib > 0.0 {
        cap_address_space((budget_gib * (1u64 << 30) as f64) as u64)?;
    }
    let rss_before = status_bytes("VmRSS")?;
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let hwm_before = status_bytes("VmHWM")?;
    let started = std::time::Instant::now();
    // An allocation past the budget makes libtorch throw, which tch turns into a panic.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(&mode, batch, global, dim, tile, &sim)
    }));
    let seconds = started.elapsed().as_secs_f64();
    let hwm_after = status_bytes("VmHWM")?;
    let peak_delta = hwm_after.saturating_sub(rss_before);
    let (loss, over_budget) = match outcome {
        Ok(Ok(loss)) => (Some(loss), false),
        Ok(Err(e)) if e.contains("alloc") => (None, true),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => (None, true),
    };
    let rows = if mode == "full" { global } else { batch };
    println!(
        "{}",
        serde_json::json!({
            "impl": "ferroclip",
            "mode": mode,
            "tile": if mode == "tiled" { Some(tile) } else { None },
            "batch": batch,
            "global": global,
            "dim": dim,
            "world_size": if mode == "full" { 1 } else { world_size },
            "budget_gib": budget_gib,
            "over_budget": over_budget,
            "peak_delta_bytes": peak_delta,
            "bytes_per_row_x_column": peak_delta as f64 / (rows * global) as f64,
            "logits_bytes": 2 * rows * global * 4,
            "seconds": seconds,
            "rss_before_bytes": rss_before,
            "hwm_before_bytes": hwm_before,
            "peak_reset": peak_reset,
            "mmap_threshold": std::env::var("MALLOC_MMAP_THRESHOLD_").ok(),
            "loss": loss,
        })
    );
    Ok(())
}
