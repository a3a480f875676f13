//! Times one training step (forward + ClipLoss + backward + AdamW) on random
//! data, for `scripts/bench/step_time` to compare with open_clip's step.
//!
//! `cargo run --release -p trainer --example step_time -- --model tiny --batch 32 --threads 1 --warmup 2 --steps 10`
//! prints one JSON line.
//!
//! `--device cuda` runs on `cuda:(LOCAL_RANK mod devices)` (needs the `cuda`
//! feature so libtorch_cuda is linked). `--collective nccl` (feature `nccl`)
//! runs the data-parallel step instead: global-batch ClipLoss over NCCL and the
//! bucketed gradient all-reduce, in a world of one (no environment needed) or
//! of `WORLD_SIZE` processes started by `ferroclip launch --backend nccl
//! --worker-cmd <this example>`. `--collective env` uses `dist::connect` as the
//! train loop does. The CUDA and NCCL paths ran on an H200 through
//! scripts/gpu_check.sh (docs/benchmarks.md). `--precision bf16` runs the forward pass
//! under bf16 autocast (open_clip's `--precision amp_bf16`).

use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};
use trainer::dist::{self, Collective, Dist};
use trainer::loss::clip_loss;
use trainer::loss::global_clip_loss;
use trainer::model::Clip;
use trainer::model::ModelConfig;
use trainer::optim::{AdamW, OptimConfig};
use trainer::precision::{with_precision, Precision};
use trainer::train::ddp;
use trainer::train::throughput::Peak;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The device named by `--device`: cpu, or cuda:(local rank mod visible devices).
fn pick_device(name: &str, dist: &Dist) -> Result<Device, Box<dyn std::error::Error>> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if !tch::Cuda::is_available() {
                return Err(
                    "--device cuda: libtorch sees no CUDA device (built without the `cuda` feature, \
                            or libtorch_cuda / the driver not found at run time)"
                        .into(),
                );
            }
            let visible = tch::Cuda::device_count().max(1) as usize;
            Ok(Device::Cuda(dist.local_rank % visible))
        }
        other => Err(format!("--device: expected cpu or cuda, got {other:?}").into()),
    }
}

/// The collective named by `--collective`: none (single-process step with the
/// plain ClipLoss), nccl, or env (`dist::connect`).
fn pick_collective(
    name: &str,
    dist: &Dist,
    device: Device,
) -> Result<Option<Box<dyn Collective>>, Box<dyn std::error::Error>> {
    match name {
        "none" => Ok(None),
        "env" => Ok(Some(dist::connect(dist)?)),
        "nccl" => nccl_collective(dist, device).map(Some),
        other => Err(format!("--collective: expected none, nccl or env, got {other:?}").into()),
    }
}

#[cfg(feature = "nccl")]
fn nccl_collective(dist: &Dist, device: Device) -> Result<Box<dyn Collective>, Box<dyn std::error::Error>> {
    let Device::Cuda(ordinal) = device else {
        return Err("--collective nccl needs --device cuda".into());
    };
    let nccl = if dist.world_size == 1 {
        dist::Nccl::with_unique_id(0, 1, ordinal, &dist::new_unique_id()?, None)?
    } else {
        dist::Nccl::over_tcp(dist, ordinal, &dist::rendezvous::Rendezvous::from_env()?)?
    };
    Ok(Box::new(nccl))
}

#[cfg(not(feature = "nccl"))]
fn nccl_collective(_dist: &Dist, _device: Device) -> Result<Box<dyn Collective>, Box<dyn std::error::Error>> {
    Err("--collective nccl: built without the `nccl` feature".into())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("step_time: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model_name = arg(&args, "--model", "tiny");
    let batch: i64 = arg(&args, "--batch", "32").parse()?;
    let threads: i32 = arg(&args, "--threads", "1").parse()?;
    let warmup: usize = arg(&args, "--warmup", "2").parse()?;
    let steps: usize = arg(&args, "--steps", "10").parse()?;
    let dist = Dist::from_env()?;
    let device = pick_device(&arg(&args, "--device", "cpu"), &dist)?;
    let collective_name = arg(&args, "--collective", "none");
    let precision = match arg(&args, "--precision", "fp32").as_str() {
        "fp32" => Precision::Fp32,
        "bf16" => Precision::Bf16,
        other => return Err(format!("--precision: expected fp32 or bf16, got {other:?}").into()),
    };
    let coll = pick_collective(&collective_name, &dist, device)?;
    tch::set_num_threads(threads);
    tch::manual_seed(0);

    let cfg = ModelConfig::load(&model_name)?;
    let vs = nn::VarStore::new(device);
    let model = Clip::new(&vs.root(), &cfg);
    // open_clip_train's defaults (decay every tensor with ≥ 2 dims, no gradient
    // clipping) so both sides do the same math.
    // `--optim elementwise` times the unfused update (`optim.fused = false`).
    let fused = arg(&args, "--optim", "fused") != "elementwise";
    let optim_cfg = OptimConfig {
        decay_embeddings: true,
        grad_clip_norm: 0.0,
        fused,
        ..OptimConfig::default()
    };
    let mut opt = AdamW::new(vs.variables(), &optim_cfg);
    let grad_sync = trainer::optim::GradSync::default();
    if let Some(coll) = coll.as_deref() {
        ddp::broadcast_parameters(&vs, coll)?;
    }
    let world_size = coll.as_deref().map_or(1, |c| c.world_size());

    let size = cfg.vision.image_size as i64;
    let ctx = cfg.text.context_length as i64;
    let images = Tensor::randn([batch, 3, size, size], (Kind::Float, device));
    let tokens = Tensor::randint_low(1, 49000, [batch, ctx], (Kind::Int64, device));
    let _ = tokens.narrow(1, ctx - 1, 1).fill_(49407);

    let mut times = Vec::with_capacity(steps);
    let mut comm_times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let (img, txt, scale) = with_precision(precision, device, || model.forward(&images, &tokens, true));
        let mut comm = 0.0;
        let mut grads = match coll.as_deref() {
            None => opt.backward(&clip_loss(&img, &txt, &scale)),
            Some(coll) => {
                let loss = global_clip_loss(&img, &txt, &scale, coll)?;
                let mut grads = opt.backward(&loss.surrogate);
                comm = grad_sync.all_reduce(&mut grads, 1.0, coll)?.seconds;
                grads
            }
        };
        opt.step(&mut grads, 0.0, 5e-4).expect("AdamW step");
        model.clamp_logit_scale();
        if let Device::Cuda(ordinal) = device {
            // Kernels run asynchronously: time the step to its end.
            tch::Cuda::synchronize(ordinal as i64);
        }
        let dt = t0.elapsed().as_secs_f64();
        if i >= warmup {
            times.push(dt);
            comm_times.push(comm);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    comm_times.sort_by(|a, b| a.total_cmp(b));
    // MFU as the train loop logs it: forward MACs × 2 FLOPs × 3 (forward + backward) per
    // sample, against a known GPU's dense bf16 peak (none for fp32 or a CPU).
    let samples_per_s = (batch as f64) * (world_size as f64) / median;
    let macs = cfg.macs_per_sample();
    let peak = Peak::resolve(None, device, precision);
    let mfu = peak
        .as_ref()
        .map(|p| macs as f64 * 6.0 * samples_per_s / (p.tflops * 1e12 * world_size as f64));
    println!(
        "{}",
        serde_json::json!({
            "impl": "ferroclip",
            "model": model_name,
            "threads": threads,
            "batch": batch,
            "steps": steps,
            "median_step_s": median,
            "min_step_s": times[0],
            "peak_rss_mib": peak_rss_mib(),
            "params": cfg.num_params(),
            "device": format!("{device:?}"),
            "collective": collective_name,
            "precision": format!("{precision:?}").to_lowercase(),
            "optim": if fused { "fused" } else { "elementwise" },
            "rank": coll.as_deref().map_or(0, |c| c.rank()),
            "world_size": world_size,
            "samples_per_s": samples_per_s,
            "macs_per_sample": macs,
            "peak_tflops": peak.as_ref().map(|p| p.tflops),
            "mfu": mfu,
            // Host-side time in the gradient all-reduce (kernels are asynchronous on CUDA).
            "median_grad_sync_s": comm_times.get(comm_times.len() / 2).copied().unwrap_or(0.0),
        })
    );
    Ok(())
}
