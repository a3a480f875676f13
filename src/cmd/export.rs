//! `ferroclip export`: a checkpoint as a folder open_clip loads with its
//! `local-dir:` schema (`open_clip_model.safetensors` + `open_clip_config.json`).
use std::path::PathBuf;

use anyhow::Context;
use trainer::checkpoint;

/// Arguments of `ferroclip export`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run folder (runs/NAME), a checkpoint folder (runs/NAME/checkpoints/step_N), or a
    /// `checkpoints` folder (its `latest` file is followed).
    #[arg(long, value_name = "PATH")]
    checkpoint: PathBuf,
    /// Output folder (created if needed); its two files are overwritten.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Export the moving average of the weights (`ema.safetensors`, `optim.ema_decay`).
    #[arg(long)]
    ema: bool,
}

/// Writes the export and prints where it came from and how to load it in open_clip.
pub fn run(args: Args) -> anyhow::Result<()> {
    let export = checkpoint::locate_checkpoint(&args.checkpoint)
        .and_then(|files| if args.ema { files.ema() } else { Ok(files) })
        .and_then(|files| checkpoint::export_open_clip_files(files, &args.out))
        .with_context(|| format!("exporting {}", args.checkpoint.display()))?;
    let dir = args.out.canonicalize().unwrap_or_else(|_| args.out.clone());
    let dir = dir.display();
    println!(
        "exported {} ({} tensors, config {})",
        export.source.weights.display(),
        export.tensors,
        export.source.config.display()
    );
    println!("  {}", export.weights.display());
    println!("  {}", export.config.display());
    println!();
    println!("load it in open_clip (its local-dir: schema; tested with open_clip 3.3.0):");
    println!("  import open_clip");
    println!("  model, _, preprocess = open_clip.create_model_and_transforms('local-dir:{dir}')");
    println!("  tokenizer = open_clip.get_tokenizer('local-dir:{dir}')");
    Ok(())
}
