//! `ferroclip data inspect SPEC`: the check a user runs on a new dataset before a long job
//! (and `ferroclip data dump`, in data_dump.rs: the loader's batches as files).
//!
//! Two passes over the shards:
//! 1. the loader in eval mode (decode, resize + center crop, normalise, tokenize — what a
//!    training run does to every sample), which gives the samples that would be trained on
//!    and the skips by reason ([`dataloader::Loader::skip_counts`]);
//! 2. a raw pass over the tar samples that reads only image headers (width, height) and
//!    `.txt` captions (length in characters and words), and notes which shards ended early.
//!
//! The report is a readable table or, with `--json`, one JSON object on stdout.
use std::collections::BTreeSet;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::Context;
use dataloader::loader::{captions_of, IMAGE_EXTENSIONS};
use dataloader::tar_reader::for_each_sample;
use dataloader::{expand_shards, CaptionSource, Loader, LoaderConfig, SkipReason};
use serde::Serialize;

/// Arguments of `ferroclip data`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: DataCmd,
}

#[derive(clap::Subcommand)]
enum DataCmd {
    /// Read every sample through the loader and report counts, skips by reason, and image size
    /// and caption length distributions.
    Inspect(InspectArgs),
    /// Write the loader's batches as .npy and JSON files (to look at, or to compare with
    /// another loader).
    Dump(super::data_dump::DumpArgs),
}

/// Arguments of `ferroclip data inspect`.
#[derive(clap::Args)]
struct InspectArgs {
    /// Shard spec: `data/{00000..00099}.tar`, a folder, several joined by `::`.
    spec: String,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Image side the loader transforms to (as a training run would).
    #[arg(long, default_value_t = 224)]
    image_size: u32,
    /// Loader decoding threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
}

/// Runs a `ferroclip data` subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        DataCmd::Inspect(a) => inspect(a),
        DataCmd::Dump(a) => super::data_dump::dump(a),
    }
}

/// Order statistics and a power-of-two histogram of some non-negative integers.
#[derive(Debug, Serialize, PartialEq)]
struct Distribution {
    count: usize,
    min: u64,
    p50: u64,
    p90: u64,
    max: u64,
    /// Non-empty buckets `[lo, hi)`: `[0, 1)`, `[1, 2)`, `[2, 4)`, `[4, 8)`, ...
    histogram: Vec<Bucket>,
}

/// One histogram bucket: values `lo <= v < hi`.
#[derive(Debug, Serialize, PartialEq)]
struct Bucket {
    lo: u64,
    hi: u64,
    count: usize,
}

impl Distribution {
    /// `None` for no values (a distribution of nothing has no minimum).
    fn of(mut values: Vec<u64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        let n = values.len();
        // Nearest-rank percentile: the smallest value with at least p·n values at or below it.
        let percentile = |p: f64| values[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        let mut histogram: Vec<Bucket> = Vec::new();
        for &v in &values {
            let (lo, hi) = if v == 0 {
                (0, 1)
            } else {
                let lo = 1u64 << (63 - v.leading_zeros());
                (lo, lo.saturating_mul(2))
            };
            match histogram.last_mut() {
                Some(bucket) if bucket.lo == lo => bucket.count += 1,
                _ => histogram.push(Bucket { lo, hi, count: 1 }),
            }
        }
        Some(Self {
            count: n,
            min: values[0],
            p50: percentile(0.5),
            p90: percentile(0.9),
            max: values[n - 1],
            histogram,
        })
    }
}

/// Everything `data inspect` reports.
#[derive(Debug, Serialize)]
struct Report {
    /// Shard files the spec expanded to.
    shards: usize,
    /// Shards that could not be opened or ended early (truncated member, read error).
    shards_failed: usize,
    /// Their paths.
    failed_shards: Vec<PathBuf>,
    /// Samples the loader delivered (decoded and transformed).
    samples_read: u64,
    /// Loader skips by reason (`reason` → count).
    skipped: serde_json::Value,
    /// Sum of `skipped`.
    skipped_total: u64,
    /// Samples the raw tar pass found (before decoding).
    raw_samples: u64,
    /// Raw samples whose image header could not be read (or that have no image member).
    image_header_unreadable: u64,
    image_width: Option<Distribution>,
    image_height: Option<Distribution>,
    /// Per caption (each non-empty `.txt` line is one caption).
    caption_chars: Option<Distribution>,
    caption_words: Option<Distribution>,
}

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.threads >= 1, "--threads must be at least 1");
    anyhow::ensure!(args.image_size >= 1, "--image-size must be at least 1");
    let shards = expand_shards(&args.spec).with_context(|| format!("expanding shard spec {:?}", args.spec))?;

    let mut cfg = LoaderConfig::new(shards.clone(), false);
    cfg.image_size = args.image_size;
    cfg.threads = args.threads;
    cfg.batch_size = 64;
    let mut loader = Loader::new(cfg).context("starting the loader")?;
    let mut samples_read = 0u64;
    for batch in loader.by_ref() {
        samples_read += batch.len() as u64;
    }
    let skips = loader.skip_counts().clone();

    let mut widths = Vec::new();
    let mut heights = Vec::new();
    let mut caption_chars = Vec::new();
    let mut caption_words = Vec::new();
    let mut raw_samples = 0u64;
    let mut image_header_unreadable = 0u64;
    let mut failed_shards = BTreeSet::new();
    for shard in &shards {
        for_each_sample(shard, |item| {
            match item {
                Ok(raw) => {
                    raw_samples += 1;
                    match image_dimensions(&raw) {
                        Some((w, h)) => {
                            widths.push(u64::from(w));
                            heights.push(u64::from(h));
                        }
                        None => image_header_unreadable += 1,
                    }
                    // A sample without a usable caption is counted by the loader pass.
                    for caption in captions_of(&raw, &CaptionSource::Txt).unwrap_or_default() {
                        caption_chars.push(caption.chars().count() as u64);
                        caption_words.push(caption.split_whitespace().count() as u64);
                    }
                }
                Err(skip) => {
                    if matches!(
                        skip.reason,
                        SkipReason::TruncatedMember
                            | SkipReason::ShardReadError
                            | SkipReason::UnreadableShard
                            | SkipReason::OversizedShard
                    ) {
                        failed_shards.insert(skip.shard);
                    }
                }
            }
            ControlFlow::Continue(())
        });
    }

    let report = Report {
        shards: shards.len(),
        shards_failed: failed_shards.len(),
        failed_shards: failed_shards.into_iter().collect(),
        samples_read,
        skipped: skips.to_json(),
        skipped_total: skips.total(),
        raw_samples,
        image_header_unreadable,
        image_width: Distribution::of(widths),
        image_height: Distribution::of(heights),
        caption_chars: Distribution::of(caption_chars),
        caption_words: Distribution::of(caption_words),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_table(&mut out, &report)?;
    }
    Ok(())
}

/// Width and height from the first image member's header, without decoding pixels.
fn image_dimensions(raw: &dataloader::RawSample) -> Option<(u32, u32)> {
    let bytes = IMAGE_EXTENSIONS.iter().find_map(|ext| raw.members.get(*ext))?;
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

fn write_table(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    writeln!(
        out,
        "shards          {} ({} failed)",
        report.shards, report.shards_failed
    )?;
    for shard in &report.failed_shards {
        writeln!(out, "  failed: {}", shard.display())?;
    }
    writeln!(out, "samples read    {}", report.samples_read)?;
    let skipped: Vec<String> = report
        .skipped
        .as_object()
        .map(|counts| counts.iter().map(|(reason, n)| format!("{reason}={n}")).collect())
        .unwrap_or_default();
    let skipped = if skipped.is_empty() {
        "none".to_string()
    } else {
        skipped.join(", ")
    };
    writeln!(out, "skipped         {} ({skipped})", report.skipped_total)?;
    writeln!(
        out,
        "raw samples     {} ({} without a readable image header)",
        report.raw_samples, report.image_header_unreadable
    )?;
    let rows = [
        ("image width", &report.image_width),
        ("image height", &report.image_height),
        ("caption chars", &report.caption_chars),
        ("caption words", &report.caption_words),
    ];
    writeln!(out)?;
    writeln!(
        out,
        "{:<14} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "", "count", "min", "p50", "p90", "max"
    )?;
    for (name, dist) in rows {
        match dist {
            Some(d) => writeln!(
                out,
                "{name:<14} {:>8} {:>8} {:>8} {:>8} {:>8}",
                d.count, d.min, d.p50, d.p90, d.max
            )?,
            None => writeln!(out, "{name:<14} {:>8}", 0)?,
        }
    }
    for (name, dist) in rows {
        let Some(d) = dist else { continue };
        writeln!(out)?;
        writeln!(out, "{name} histogram")?;
        for bucket in &d.histogram {
            writeln!(out, "  [{:>6}, {:>6})  {}", bucket.lo, bucket.hi, bucket.count)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_percentiles_and_power_of_two_buckets() {
        let d = Distribution::of(vec![10, 0, 3, 5, 1, 2, 8, 7, 6, 4]).expect("values");
        assert_eq!((d.count, d.min, d.p50, d.p90, d.max), (10, 0, 4, 8, 10));
        let buckets: Vec<(u64, u64, usize)> = d.histogram.iter().map(|b| (b.lo, b.hi, b.count)).collect();
        assert_eq!(buckets, [(0, 1, 1), (1, 2, 1), (2, 4, 2), (4, 8, 4), (8, 16, 2)]);
    }

    #[test]
    fn distribution_of_nothing_is_none() {
        assert_eq!(Distribution::of(Vec::new()), None);
    }
}
