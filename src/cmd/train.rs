//! `ferroclip train`: one worker trains from a TOML config.
use std::path::PathBuf;

use anyhow::Context;
use trainer::checkpoint::ResumeFrom;
use trainer::train::{self, config::TrainConfig, RunOptions};
use trainer::TrainError;

/// Train one worker.
#[derive(clap::Args)]
pub struct Args {
    /// Train config (TOML), e.g. configs/train/demo.toml.
    #[arg(long)]
    config: PathBuf,
    /// Override a config value: `--set optim.lr=1e-3 --set schedule.steps=200`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue from a checkpoint: `latest` (the run's newest checkpoint that
    /// verifies, or a fresh start when there is none) or a checkpoint folder.
    #[arg(long, value_name = "latest|PATH")]
    resume: Option<ResumeFrom>,
    /// Start from open_clip weights (safetensors state_dict); same as `--set init_from=PATH`.
    #[arg(long, value_name = "PATH")]
    init_from: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = TrainConfig::load(&args.config, &args.overrides)?;
    if let Some(path) = args.init_from {
        cfg.init_from = Some(path);
    }
    let opts = RunOptions {
        resume: args.resume,
        handle_signals: true,
    };
    let summary = match train::train(&cfg, &opts) {
        Ok(summary) => summary,
        Err(TrainError::Interrupted {
            signal,
            step,
            checkpoint,
        }) => {
            // Preemption is not a failure of the run: say where it can resume, and
            // exit the way a process killed by the signal would.
            eprintln!(
                "stopped by {signal} after step {step}; resume with --resume latest (checkpoint {})",
                checkpoint.display()
            );
            std::process::exit(train::stop::exit_code(signal));
        }
        Err(e) => return Err(e).with_context(|| format!("run {}", cfg.name)),
    };
    if !summary.is_main {
        return Ok(());
    }
    if let Some(dir) = &summary.resumed_from {
        println!("resumed from {}", dir.display());
    }
    println!(
        "trained {} steps ({} skipped) in {}: loss {:.4} -> {:.4} (mean of first/last 10%: {:.4} -> {:.4}), {:.1} samples/s",
        summary.steps,
        summary.skipped_steps,
        summary.run_dir.display(),
        summary.first_loss,
        summary.last_loss,
        summary.early_mean_loss,
        summary.late_mean_loss,
        summary.samples_per_s
    );
    Ok(())
}
