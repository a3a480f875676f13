//! Times saving and loading a full checkpoint (model + AdamW state, with fsync
//! and sha256 verification) beside one training step of the same model, for
//! `scripts/bench/checkpoint`: what a checkpoint costs as a share of the steps
//! between two saves.
//!
//! `cargo run --release -p trainer --example checkpoint_time -- --model vit-b-32 --batch 32 --threads 2 --steps 2 --every 500 --dir /tmp/ck`
//! prints one JSON line.

use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};
use trainer::checkpoint::{CheckpointConfig, CheckpointState, Checkpoints};
use trainer::loss::clip_loss;
use trainer::model::Clip;
use trainer::model::ModelConfig;
use trainer::optim::{AdamW, OptimConfig};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model_name = arg(&args, "--model", "vit-b-32");
    let batch: i64 = arg(&args, "--batch", "32").parse()?;
    let threads: i32 = arg(&args, "--threads", "2").parse()?;
    let steps: usize = arg(&args, "--steps", "2").parse()?;
    let every: f64 = arg(&args, "--every", "500").parse()?;
    let dir = std::path::PathBuf::from(arg(&args, "--dir", "/tmp/ferroclip-checkpoint-bench"));
    tch::set_num_threads(threads);
    tch::manual_seed(0);

    let cfg = ModelConfig::preset(&model_name)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Clip::new(&vs.root(), &cfg);
    let mut opt = AdamW::new(vs.variables(), &OptimConfig::default());
    let size = cfg.vision.image_size;
    let images = Tensor::randn([batch, 3, size, size], (Kind::Float, Device::Cpu));
    let tokens = Tensor::randint(1000, [batch, cfg.text.context_length], (Kind::Int64, Device::Cpu));

    // One untimed step fills AdamW's moments (a checkpoint holds 3× the weights).
    let mut step_times = Vec::new();
    for i in 0..=steps {
        let start = Instant::now();
        let (img, txt, scale) = model.forward(&images, &tokens, true);
        let loss = clip_loss(&img, &txt, &scale);
        let mut grads = opt.backward(&loss);
        let norm = grads.norm();
        opt.step(&mut grads, norm, 1e-4).expect("AdamW step");
        if i > 0 {
            step_times.push(start.elapsed().as_secs_f64());
        }
    }
    step_times.sort_by(f64::total_cmp);
    let step_s = step_times[step_times.len() / 2];

    let _ = std::fs::remove_dir_all(&dir);
    let checkpoints = Checkpoints::new(
        &dir,
        &CheckpointConfig {
            keep_last: 2,
            ..CheckpointConfig::default()
        },
    );
    let loader = vec![serde_json::json!({ "bench": true })];
    let mut saves = Vec::new();
    for step in 1..=2u64 {
        let state = CheckpointState::new(step, step * batch as u64, loader.clone(), serde_json::json!({}));
        let start = Instant::now();
        checkpoints.save(&vs, &opt.state_tensors(), "name = \"bench\"\n", state)?;
        saves.push(start.elapsed().as_secs_f64());
    }
    let bytes: u64 = std::fs::read_dir(dir.join("step_00000002"))?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();

    let start = Instant::now();
    let found = checkpoints.latest_valid()?.ok_or("no checkpoint found after saving")?;
    let verify_s = start.elapsed().as_secs_f64();
    let optim = found.load_into(&vs, 0)?;
    opt.load_state_tensors(optim)?;
    let load_s = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);

    let save_s = saves.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{}",
        serde_json::json!({
            "model": model_name,
            "params": cfg.num_params(),
            "batch": batch,
            "threads": threads,
            "checkpoint_bytes": bytes,
            "step_s": step_s,
            "save_s": save_s,
            "save_s_all": saves,
            "load_s": load_s,
            "verify_s": verify_s,
            "every": every,
            "save_share_of_interval": save_s / (save_s + every * step_s),
        })
    );
    Ok(())
}
