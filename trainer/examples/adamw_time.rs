//! Times the AdamW update alone over a model's parameters: the elementwise update
//! (`optim.fused = false`) against libtorch's fused kernel (`optim.fused = true`), one after
//! the other in each round so machine noise falls on both; for scripts/bench/adamw, which
//! runs torch.optim.AdamW on the same shapes beside it.
//!
//! `cargo run --release -p trainer --example adamw_time -- --model vit-b-32 --threads 2 --rounds 5`
//! prints one JSON line per variant: median seconds per step and the largest difference of
//! the two variants' weights after the same steps.

use std::time::Instant;

use tch::{nn, Device, Tensor};
use trainer::model::{Clip, ModelConfig};
use trainer::optim::{AdamW, Gradients, OptimConfig};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// A model's parameters (fresh, seeded) and an AdamW over them.
fn model_and_optimizer(cfg: &ModelConfig, fused: bool) -> (nn::VarStore, AdamW) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Clip::new(&vs.root(), cfg);
    let optim = OptimConfig {
        fused,
        ..OptimConfig::default()
    };
    let adamw = AdamW::new(vs.variables(), &optim);
    (vs, adamw)
}

/// Deterministic gradients of every parameter for `step`, in the optimizer's (name) order.
fn gradients(vs: &nn::VarStore, step: usize) -> Gradients {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    tch::manual_seed(1000 + step as i64);
    Gradients::from_tensors(named.iter().map(|(_, p)| p.randn_like() * 1e-3).collect())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model = arg(&args, "--model", "vit-b-32");
    let threads: i32 = arg(&args, "--threads", "2").parse()?;
    let rounds: usize = arg(&args, "--rounds", "5").parse()?;
    tch::set_num_threads(threads);
    let cfg = ModelConfig::load(&model)?;
    let mut variants: Vec<(&str, nn::VarStore, AdamW, Vec<f64>)> = [("elementwise", false), ("fused", true)]
        .into_iter()
        .map(|(name, fused)| {
            let (vs, adamw) = model_and_optimizer(&cfg, fused);
            (name, vs, adamw, Vec::new())
        })
        .collect();
    // One warm-up step each (first-touch of the moments), then `rounds` timed steps each.
    for step in 0..=rounds {
        for (_, vs, adamw, times) in variants.iter_mut() {
            let mut grads = gradients(vs, step);
            let started = Instant::now();
            adamw.step(&mut grads, 0.5, 5e-4)?;
            if step > 0 {
                times.push(started.elapsed().as_secs_f64());
            }
        }
    }
    let weights = |vs: &nn::VarStore| {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    };
    let (a, b) = (weights(&variants[0].1), weights(&variants[1].1));
    let max_diff = a
        .iter()
        .zip(&b)
        .map(|((_, x), (_, y))| (x - y).abs().max().double_value(&[]))
        .fold(0f64, f64::max);
    let params: i64 = a.iter().map(|(_, t)| t.numel() as i64).sum();
    for (name, _, _, times) in variants.iter_mut() {
        times.sort_by(f64::total_cmp);
        println!(
            "{{\"impl\":\"ferroclip {name}\",\"model\":\"{model}\",\"params\":{params},\"threads\":{threads},\
             \"step_s\":{:.5},\"max_weight_diff_fused_vs_elementwise\":{max_diff:.3e}}}",
            times[times.len() / 2]
        );
    }
    Ok(())
}
