//! `ferroclip shard`: JSONL manifest, CSV/TSV table or image folder → webdataset tar shards.
use std::path::PathBuf;

use anyhow::Context;
use dataloader::{read_manifest, ShardWriter, SkipCounts, WriteError, DEFAULT_MAX_PIXELS};

/// Write webdataset shards (`00000.tar`, ... + `sizes.json`) from raw image–text pairs.
#[derive(clap::Args)]
pub struct Args {
    /// A `.jsonl` manifest ("image", "caption"/"captions", optional "cls", "key"), a `.csv`/`.tsv`
    /// with `image` and `caption` columns, or a folder of images with sidecar `.txt`/`.json`.
    #[arg(long)]
    pub input: PathBuf,
    /// Output folder (created; must not already hold shards).
    #[arg(long)]
    pub output: PathBuf,
    /// At most this many samples per shard.
    #[arg(long, default_value_t = 10_000)]
    pub samples_per_shard: u64,
    /// Rows whose image has more pixels are skipped.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

/// Rows with a bad image or caption are skipped, counted and named in a warning; the command
/// fails only if nothing could be written.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rows = read_manifest(&args.input)?;
    let mut writer = ShardWriter::new(&args.output, args.samples_per_shard)?;
    let mut skips = SkipCounts::new();
    let progress = indicatif::ProgressBar::new_spinner().with_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} rows {per_sec} {msg}")
            .context("progress bar template")?,
    );
    for row in rows {
        progress.inc(1);
        let sample = match row.and_then(|row| row.load(&args.input, args.max_pixels)) {
            Ok(sample) => sample,
            Err(skip) => {
                progress.suspend(|| tracing::warn!("skipped {skip}"));
                skips.add(skip.reason);
                continue;
            }
        };
        match writer.write(&sample) {
            Ok(_) => {}
            Err(WriteError::Key { key, reason }) => {
                progress.suspend(|| tracing::warn!("{}: skipped key {key:?}: {reason}", args.input.display()));
                skips.add(reason);
            }
            Err(WriteError::Data(e)) => return Err(e.into()),
        }
        progress.set_message(format!("written {}", writer.samples_written()));
    }
    progress.finish_and_clear();
    let summary = writer.finish()?;
    println!(
        "{}: {} shard(s), {} sample(s), skipped: {}",
        args.output.display(),
        summary.shards.len(),
        summary.samples,
        skips
    );
    if summary.samples == 0 {
        anyhow::bail!(
            "no sample written from {} ({} row(s) skipped)",
            args.input.display(),
            skips.total()
        );
    }
    Ok(())
}
