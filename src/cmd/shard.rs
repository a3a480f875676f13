//! `ferroclip shard`: raw image–text pairs (JSONL, CSV/TSV, parquet, image folder) or existing
//! shards → webdataset shards in img2dataset's layout (`00000.tar[.zst]`, 9-digit keys,
//! `.jpg/.txt/.json` members, `00000_stats.json`, `sizes.json`).
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::Context;
use dataloader::loader::IMAGE_EXTENSIONS;
use dataloader::tar_reader::for_each_sample;
use dataloader::{
    dataset_size, expand_shards, parse_byte_size, read_manifest_with, row_count_hint, Compression, ImageRewrite,
    KeyScheme, ManifestColumns, RawSample, ReencodeSpec, ShardWriter, SkipCounts, WriteError, WriterOptions,
    DEFAULT_MAX_PIXELS,
};

/// Write webdataset shards (`00000.tar`, ... + `sizes.json`) from raw image–text pairs or
/// from existing shards.
#[derive(clap::Args)]
pub struct Args {
    /// A `.jsonl` manifest ("image", "caption"/"captions", optional "cls", "key"), a
    /// `.csv`/`.tsv`/`.parquet` table (an `image`, `path` or `url` column of local paths and a
    /// `caption` column; other columns go to the `.json`), or a folder of images with sidecar
    /// `.txt`/`.json`.
    #[arg(long, required_unless_present = "input_shards", conflicts_with = "input_shards")]
    pub input: Option<PathBuf>,
    /// Existing shards to re-shard or recompress: any shard spec (`in/{00000..00009}.tar`,
    /// `.tar.zst`, `pipe:CMD`, a folder). Keys and members are kept byte for byte.
    #[arg(long)]
    pub input_shards: Option<String>,
    /// Output folder (created; must not already hold shards).
    #[arg(long)]
    pub output: PathBuf,
    /// At most this many samples per shard.
    #[arg(long, default_value_t = 10_000)]
    pub samples_per_shard: u64,
    /// At most this many (uncompressed) tar bytes per shard, e.g. `256MB`, `1GiB`; a shard
    /// closes at whichever limit comes first.
    #[arg(long)]
    pub bytes_per_shard: Option<String>,
    /// `none` (plain `.tar`), `zstd` or `zstd:LEVEL` (`.tar.zst`).
    #[arg(long, default_value = "none")]
    pub compress: String,
    /// Shrink images whose longer side is above N pixels (never enlarges).
    #[arg(long)]
    pub resize_max_side: Option<u32>,
    /// Re-encode every image: `jpeg` or `jpeg:QUALITY`.
    #[arg(long)]
    pub reencode: Option<String>,
    /// Table column holding the image path (img2dataset's `--url_col`).
    #[arg(long, conflicts_with = "input_shards")]
    pub image_column: Option<String>,
    /// Table column holding the caption (img2dataset's `--caption_col`).
    #[arg(long, conflicts_with = "input_shards")]
    pub caption_column: Option<String>,
    /// Rows whose image has more pixels are skipped.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Do not write the per-shard `<shard>_stats.json` files.
    #[arg(long)]
    pub no_stats: bool,
}

/// Bad rows and samples are skipped, counted and named in a warning; the command fails only if
/// nothing could be written.
pub fn run(args: Args) -> anyhow::Result<()> {
    let options = WriterOptions {
        samples_per_shard: args.samples_per_shard,
        bytes_per_shard: args
            .bytes_per_shard
            .as_deref()
            .map(|size| parse_byte_size(size, "bytes_per_shard"))
            .transpose()?,
        compression: args.compress.parse::<Compression>()?,
        keys: KeyScheme::ShardPrefixed,
        shard_stats: !args.no_stats,
    };
    let rewrite = ImageRewrite {
        resize_max_side: args.resize_max_side,
        jpeg_quality: args
            .reencode
            .as_deref()
            .map(str::parse::<ReencodeSpec>)
            .transpose()?
            .map(|spec| spec.jpeg_quality),
    };
    rewrite.validate()?;
    let mut writer = ShardWriter::with_options(&args.output, options)?;
    let (input_name, skips) = match (&args.input, &args.input_shards) {
        (Some(input), _) => (
            input.display().to_string(),
            from_manifest(&args, input, &rewrite, &mut writer)?,
        ),
        (None, Some(spec)) => (spec.clone(), from_shards(&args, spec, &rewrite, &mut writer)?),
        (None, None) => anyhow::bail!("give --input or --input-shards"),
    };
    let summary = writer.finish()?;
    println!(
        "{}: {} shard(s), {} sample(s), skipped: {}",
        args.output.display(),
        summary.shards.len(),
        summary.samples,
        skips
    );
    if summary.samples == 0 {
        anyhow::bail!("no sample written from {input_name} ({} skipped)", skips.total());
    }
    Ok(())
}

/// A bar with a length when the total is known, else a spinner; drawn only on a terminal.
fn progress_bar(total: Option<u64>, unit: &str) -> anyhow::Result<indicatif::ProgressBar> {
    let (bar, template) = match total {
        Some(total) => (
            indicatif::ProgressBar::new(total),
            format!("{{bar:40}} {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}} {{msg}}"),
        ),
        None => (
            indicatif::ProgressBar::new_spinner(),
            format!("{{spinner}} {{pos}} {unit} {{per_sec}} {{msg}}"),
        ),
    };
    Ok(bar.with_style(indicatif::ProgressStyle::with_template(&template).context("progress bar template")?))
}

fn from_manifest(
    args: &Args,
    input: &Path,
    rewrite: &ImageRewrite,
    writer: &mut ShardWriter,
) -> anyhow::Result<SkipCounts> {
    let columns = ManifestColumns {
        image: args.image_column.clone(),
        caption: args.caption_column.clone(),
    };
    let rows = read_manifest_with(input, &columns)?;
    let progress = progress_bar(row_count_hint(input), "rows")?;
    let mut skips = SkipCounts::new();
    let mut skip = |writer: &mut ShardWriter, reason, message: String| {
        progress.suspend(|| tracing::warn!("skipped {message}"));
        skips.add(reason);
        writer.record_skip(reason);
    };
    for row in rows {
        progress.inc(1);
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                skip(writer, e.reason, e.to_string());
                continue;
            }
        };
        let mut sample = match row.load(input, args.max_pixels) {
            Ok(sample) => sample,
            Err(e) => {
                skip(writer, e.reason, e.to_string());
                continue;
            }
        };
        let image = match rewrite.apply(&sample.image, args.max_pixels) {
            Ok(image) => image,
            Err(e) => {
                let message = format!("{}: row {}: {}: {e}", input.display(), row.row, row.image.display());
                skip(writer, e.reason, message);
                continue;
            }
        };
        // img2dataset's metadata fields, so tools reading its `.json` find them.
        sample.json.insert("width".into(), image.size.0.into());
        sample.json.insert("height".into(), image.size.1.into());
        sample
            .json
            .insert("original_width".into(), image.original_size.0.into());
        sample
            .json
            .insert("original_height".into(), image.original_size.1.into());
        sample.image = image.bytes;
        sample.image_ext = image.ext.to_string();
        match writer.write(&sample) {
            Ok(_) => {}
            Err(WriteError::Key { key, reason }) => {
                skip(
                    writer,
                    reason,
                    format!("{}: row {}: key {key:?}: {reason}", input.display(), row.row),
                );
            }
            Err(WriteError::Data(e)) => return Err(e.into()),
        }
        progress.set_message(format!("written {}", writer.samples_written()));
    }
    progress.finish_and_clear();
    Ok(skips)
}

fn from_shards(
    args: &Args,
    spec: &str,
    rewrite: &ImageRewrite,
    writer: &mut ShardWriter,
) -> anyhow::Result<SkipCounts> {
    let shards = expand_shards(spec)?;
    // Sizes come from sizes.json / *_stats.json when present; otherwise a spinner.
    let progress = progress_bar(dataset_size(&shards).ok(), "samples")?;
    let mut skips = SkipCounts::new();
    let mut failure = None;
    for shard in &shards {
        for_each_sample(shard, |item| {
            progress.inc(1);
            let written = match item {
                Ok(mut sample) => match rewrite_raw(&mut sample, rewrite, args.max_pixels) {
                    Ok(()) => writer.write_raw(&sample).map(|_| ()),
                    Err(e) => Err(WriteError::Key {
                        key: format!("{} (image: {})", sample.key, e.detail),
                        reason: e.reason,
                    }),
                },
                Err(skip) => {
                    progress.suspend(|| tracing::warn!("skipped {skip}"));
                    skips.add(skip.reason);
                    writer.record_skip(skip.reason);
                    Ok(())
                }
            };
            match written {
                Ok(()) => ControlFlow::Continue(()),
                Err(WriteError::Key { key, reason }) => {
                    progress.suspend(|| tracing::warn!("skipped {}: sample {key}: {reason}", shard.display()));
                    skips.add(reason);
                    writer.record_skip(reason);
                    ControlFlow::Continue(())
                }
                Err(WriteError::Data(e)) => {
                    failure = Some(e);
                    ControlFlow::Break(())
                }
            }
        });
        if let Some(e) = failure.take() {
            return Err(e.into());
        }
        progress.set_message(format!("written {}", writer.samples_written()));
    }
    progress.finish_and_clear();
    Ok(skips)
}

/// Apply `rewrite` to the sample's image member (the first of open_clip's image extensions);
/// samples without an image pass unchanged, since re-sharding keeps whatever is there.
fn rewrite_raw(
    sample: &mut RawSample,
    rewrite: &ImageRewrite,
    max_pixels: u64,
) -> Result<(), dataloader::imaging::DecodeError> {
    if !rewrite.is_active() {
        return Ok(());
    }
    let Some(ext) = IMAGE_EXTENSIONS.iter().find(|ext| sample.members.contains_key(**ext)) else {
        return Ok(());
    };
    let Some(bytes) = sample.members.remove(*ext) else {
        return Ok(());
    };
    let image = rewrite.apply(&bytes, max_pixels)?;
    sample.members.insert(image.ext.to_string(), image.bytes);
    Ok(())
}
