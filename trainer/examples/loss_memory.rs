//! Peak memory of one rank's contrastive loss (forward + backward), for
//! `scripts/bench/scaling`: the distributed ClipLoss should need O(B·N) for a
//! local batch B and a global batch N, where a plain N×N loss needs O(N²).
//!
//! ```text
//! MALLOC_MMAP_THRESHOLD_=65536 target/release/examples/loss_memory --mode dist --batch 256 --global 4096 --dim 512
//! MALLOC_MMAP_THRESHOLD_=65536 target/release/examples/loss_memory --mode full --global 4096 --dim 512
//! ```
//!
//! `--mode dist`: rank 0 of N/B simulated ranks runs `global_clip_loss` (the
//! trainer's code path: gather, B×N logits, backward, reduce-scatter of the
//! column gradients) and then backpropagates the surrogate into its (B, D)
//! features. The simulated collective returns the other ranks' rows from a
//! tensor made before the measurement, so the gathered (N, D) outputs are
//! allocated inside it just as a real all-gather allocates them.
//! `--mode full`: `clip_loss` of one process holding all N rows, then backward.
//!
//! Measurement: peak RSS (VmHWM) minus RSS just before the loss, with the peak
//! reset through /proc/self/clear_refs. Run it in a fresh process per size with
//! a fixed glibc mmap threshold (`MALLOC_MMAP_THRESHOLD_`), so large freed
//! blocks leave RSS at once and the peak is the loss's own. Prints one JSON line.

use std::sync::Mutex;

use tch::{Device, Kind, Tensor};
use trainer::dist::{Collective, DistError};
use trainer::loss::clip_loss;
use trainer::loss::global_clip_loss;
use trainer::model::l2_normalize;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// A `/proc/self/status` field in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(field: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("/proc/self/status has no {field} line"))
}

/// Rank 0 of `world_size` ranks, the other ranks' features simulated.
struct SimulatedRanks {
    world_size: usize,
    /// The other ranks' rows, ((W-1)·B, D); stands in for both towers. In a
    /// mutex because a collective must be `Sync` and a tensor is not.
    others: Mutex<Tensor>,
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
        let others = self.others.lock().map_err(|_| DistError::Tensor {
            op: "all_gather",
            reason: "poisoned".into(),
        })?;
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
        // The previous rank's block: a fresh tensor of t's shape from the other ranks' rows.
        let others = self.others.lock().map_err(|_| DistError::Tensor {
            op: "ring_pass",
            reason: "poisoned".into(),
        })?;
        Ok(others.narrow(0, 0, t.size()[0]).copy())
    }
}

fn features(rows: i64, dim: i64) -> Tensor {
    l2_normalize(&Tensor::randn([rows, dim], (Kind::Float, Device::Cpu))).set_requires_grad(true)
}

/// One loss forward + backward; returns the loss value.
fn run(
    mode: &str,
    batch: i64,
    global: i64,
    dim: i64,
    sim: Option<&SimulatedRanks>,
) -> Result<f64, Box<dyn std::error::Error>> {
    let scale = Tensor::scalar_tensor(1.0 / 0.07, (Kind::Float, Device::Cpu)).set_requires_grad(true);
    match (mode, sim) {
        ("dist", Some(sim)) => {
            let (image, text) = (features(batch, dim), features(batch, dim));
            let loss = global_clip_loss(&image, &text, &scale, sim)?;
            loss.surrogate.backward();
            Ok(loss.share)
        }
        ("full", _) => {
            let (image, text) = (features(global, dim), features(global, dim));
            let loss = clip_loss(&image, &text, &scale);
            loss.backward();
            Ok(loss.double_value(&[]))
        }
        _ => Err(format!("--mode must be dist or full, not {mode}").into()),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mode = arg(&args, "--mode", "dist");
    let batch: i64 = arg(&args, "--batch", "256").parse()?;
    let global: i64 = arg(&args, "--global", "1024").parse()?;
    let dim: i64 = arg(&args, "--dim", "512").parse()?;
    if batch <= 0 || global < batch || global % batch != 0 {
        return Err(format!("--global ({global}) must be a positive multiple of --batch ({batch})").into());
    }
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let world_size = (global / batch) as usize;
    let sim = (mode == "dist").then(|| SimulatedRanks {
        world_size,
        others: Mutex::new(l2_normalize(&Tensor::randn(
            [global - batch, dim],
            (Kind::Float, Device::Cpu),
        ))),
    });

    // Warm up libtorch's kernels on a small problem so one-time allocations
    // (thread pools, kernel caches) are not counted.
    let small = SimulatedRanks {
        world_size: 2,
        others: Mutex::new(l2_normalize(&Tensor::randn([8, dim], (Kind::Float, Device::Cpu)))),
    };
    run(&mode, 8, 16, dim, Some(&small))?;

    let rss_before = status_bytes("VmRSS")?;
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let hwm_before = status_bytes("VmHWM")?;
    let loss = run(&mode, batch, global, dim, sim.as_ref())?;
    let hwm_after = status_bytes("VmHWM")?;
    let peak_delta = hwm_after.saturating_sub(rss_before);
    let rows = if mode == "dist" { batch } else { global };
    println!(
        "{}",
        serde_json::json!({
            "mode": mode,
            "batch": batch,
            "global": global,
            "dim": dim,
            "world_size": if mode == "dist" { world_size } else { 1 },
            "peak_delta_bytes": peak_delta,
            "bytes_per_row_x_column": peak_delta as f64 / (rows * global) as f64,
            "logits_bytes": 2 * rows * global * 4,
            "rss_before_bytes": rss_before,
            "hwm_before_bytes": hwm_before,
            "peak_reset": peak_reset,
            "mmap_threshold": std::env::var("MALLOC_MMAP_THRESHOLD_").ok(),
            "loss": loss,
        })
    );
    Ok(())
}
