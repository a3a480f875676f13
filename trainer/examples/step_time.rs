//! Times one training step (forward + ClipLoss + backward + AdamW) on random
//! data, for `scripts/bench/step_time` to compare with open_clip's step.
//!
//! `cargo run --release -p trainer --example step_time -- --model tiny --batch 32 --threads 1 --warmup 2 --steps 10`
//! prints one JSON line.

use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};
use trainer::config::ModelConfig;
use trainer::loss::clip_loss;
use trainer::model::Clip;
use trainer::train::optim::{AdamW, OptimConfig};

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model_name = arg(&args, "--model", "tiny");
    let batch: i64 = arg(&args, "--batch", "32").parse()?;
    let threads: i32 = arg(&args, "--threads", "1").parse()?;
    let warmup: usize = arg(&args, "--warmup", "2").parse()?;
    let steps: usize = arg(&args, "--steps", "10").parse()?;
    tch::set_num_threads(threads);
    tch::manual_seed(0);

    let cfg = ModelConfig::load(&model_name)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Clip::new(&vs.root(), &cfg);
    // open_clip_train's defaults (decay every tensor with ≥ 2 dims, no gradient
    // clipping) so both sides do the same math.
    let optim_cfg = OptimConfig { decay_embeddings: true, grad_clip_norm: 0.0, ..OptimConfig::default() };
    let mut opt = AdamW::new(vs.variables(), &optim_cfg);

    let size = cfg.vision.image_size as i64;
    let ctx = cfg.text.context_length as i64;
    let images = Tensor::randn([batch, 3, size, size], (Kind::Float, Device::Cpu));
    let tokens = Tensor::randint_low(1, 49000, [batch, ctx], (Kind::Int64, Device::Cpu));
    let _ = tokens.narrow(1, ctx - 1, 1).fill_(49407);

    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let (img, txt, scale) = model.forward(&images, &tokens, true);
        let loss = clip_loss(&img, &txt, &scale);
        let mut grads = opt.backward(&loss);
        opt.step(&mut grads, 0.0, 5e-4);
        model.clamp_logit_scale();
        let dt = t0.elapsed().as_secs_f64();
        if i >= warmup {
            times.push(dt);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
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
        })
    );
    Ok(())
}
