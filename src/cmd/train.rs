//! `ferroclip train`: one worker trains from a TOML config.
use std::path::PathBuf;

use anyhow::Context;
use trainer::train::{self, config::TrainConfig};

/// Train one worker.
#[derive(clap::Args)]
pub struct Args {
    /// Train config (TOML), e.g. configs/train/demo.toml.
    #[arg(long)]
    config: PathBuf,
    /// Override a config value: `--set optim.lr=1e-3 --set schedule.steps=200`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = TrainConfig::load(&args.config, &args.overrides)?;
    let summary = train::train(&cfg).with_context(|| format!("run {}", cfg.name))?;
    if !summary.is_main {
        return Ok(());
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
