//! `ferroclip data dump SPEC --out DIR`: the loader's batches as files, to look at or to
//! compare with another loader (the Python `ferroclip.Loader` is checked against it).
//!
//! Batch i becomes `DIR/batch_{i:05}.images.npy` (`(B, 3, S, S)` float32, or uint8 with
//! `--normalize device`), `batch_{i:05}.tokens.npy` (`(B, context_length)` int64) and
//! `batch_{i:05}.json` (keys, labels, captions, epoch); after the last batch the loader's
//! state (`state.json`, what a resume continues from) and its skips (`skips.json`). The
//! options are the Python `Loader`'s and build the same stream ([`RankedStream`]).
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use dataloader::loader::ranks::{RankedStream, StreamKind};
use dataloader::{CaptionSource, Loader, LoaderConfig, LoaderState, PixelOutput};

use super::npy::npy_header;

/// Arguments of `ferroclip data dump`.
#[derive(clap::Args)]
pub struct DumpArgs {
    /// Shard spec: `data/{00000..00099}.tar`, a folder, several joined by `::`.
    spec: String,
    /// Output folder (created; existing batch files in it are replaced).
    #[arg(long)]
    out: PathBuf,
    /// Batches to write.
    #[arg(long, default_value_t = 1)]
    batches: u64,
    /// Samples per batch (per rank).
    #[arg(long)]
    batch_size: usize,
    /// Image side.
    #[arg(long, default_value_t = 224)]
    image_size: u32,
    /// Eval mode: center crops, no shuffle, one pass (default: train mode).
    #[arg(long)]
    eval: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 0)]
    rank: usize,
    #[arg(long, default_value_t = 1)]
    world_size: usize,
    /// `canonical` or `per_rank`.
    #[arg(long, default_value = "canonical")]
    stream: String,
    /// Partitions of the canonical stream (0 = chosen as `ferroclip train` chooses).
    #[arg(long, default_value_t = 0)]
    partitions: usize,
    /// `txt` or `json:<field>`.
    #[arg(long, default_value = "txt")]
    caption: String,
    #[arg(long, default_value_t = 77)]
    context_length: usize,
    /// Decoding threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// `loader` (float32, CLIP-normalised) or `device` (uint8 levels).
    #[arg(long, default_value = "loader")]
    normalize: String,
    /// Start from this saved loader state (a `state.json` of an earlier dump).
    #[arg(long)]
    resume: Option<PathBuf>,
}

/// Writes the batches.
pub fn dump(args: DumpArgs) -> anyhow::Result<()> {
    let config = loader_config(&args)?;
    let u8_pixels = config.pixel_output == PixelOutput::RawU8;
    let mut loader = match &args.resume {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("--resume {}", path.display()))?;
            let state: LoaderState = serde_json::from_str(&text)
                .with_context(|| format!("--resume {}: not a loader state", path.display()))?;
            Loader::resume(config, &state)?
        }
        None => Loader::new(config)?,
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    for i in 0..args.batches {
        let Some(batch) = loader.next_batch() else {
            tracing::info!(batches = i, "the stream ended");
            break;
        };
        let stem = args.out.join(format!("batch_{i:05}"));
        let side = batch.image_size as usize;
        let shape = [batch.len(), 3, side, side];
        match u8_pixels {
            true => write_npy(&stem.with_extension("images.npy"), "|u1", &shape, &batch.images_u8)?,
            _ => write_npy(
                &stem.with_extension("images.npy"),
                "<f4",
                &shape,
                &as_bytes_f32(&batch.images),
            )?,
        }
        let tokens: Vec<u8> = batch.tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        write_npy(
            &stem.with_extension("tokens.npy"),
            "<i8",
            &[batch.len(), batch.context_length],
            &tokens,
        )?;
        let meta = serde_json::json!({
            "keys": batch.keys, "labels": batch.labels, "captions": batch.captions, "epoch": batch.epoch,
        });
        write_file(&stem.with_extension("json"), serde_json::to_string(&meta)?.as_bytes())?;
    }
    write_file(
        &args.out.join("state.json"),
        serde_json::to_string(&loader.state())?.as_bytes(),
    )?;
    write_file(
        &args.out.join("skips.json"),
        loader.skip_counts().to_json().to_string().as_bytes(),
    )?;
    Ok(())
}

fn loader_config(args: &DumpArgs) -> anyhow::Result<LoaderConfig> {
    let Some(kind) = StreamKind::parse(&args.stream) else {
        bail!("--stream {:?}: expected canonical or per_rank", args.stream)
    };
    let mut settings = LoaderConfig::new(Vec::new(), !args.eval);
    settings.batch_size = args.batch_size;
    settings.image_size = args.image_size;
    settings.seed = args.seed;
    settings.threads = args.threads;
    settings.context_length = args.context_length;
    let Some(caption) = CaptionSource::parse(&args.caption) else {
        bail!("--caption {:?}: expected txt or json:<field>", args.caption)
    };
    let Some(pixel_output) = PixelOutput::parse(&args.normalize) else {
        bail!("--normalize {:?}: expected loader or device", args.normalize)
    };
    settings.caption = caption;
    settings.pixel_output = pixel_output;
    let ranked = RankedStream {
        rank: args.rank,
        world_size: args.world_size,
        kind,
        partitions: args.partitions,
        ..RankedStream::single()
    };
    Ok(ranked.loader_config(&args.spec, settings)?)
}

fn as_bytes_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> anyhow::Result<()> {
    let mut bytes = npy_header(descr, shape);
    bytes.extend_from_slice(data);
    write_file(path, &bytes)
}

fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}
