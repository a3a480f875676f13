//! ferroclip's side of scripts/bench/loader (run.sh runs it next to the Python peer).
//!
//! ```text
//! cargo run --release -p dataloader --example loader_bench -- MODE SHARD...
//!   loader N    the Loader, N decode threads, train transform (RandomResizedCrop 224),
//!               normalise, tokenize (context 77), batches of 256, one pass over the samples
//!   loader_u8 N the same with `PixelOutput::RawU8`: u8 CHW batches, no normalisation (it
//!               moves to the device, see scripts/bench/loader/device_normalize_cost.py)
//!   fused       one thread, no Loader: ImageTransform::decode_and_apply (reduced-scale JPEG
//!               decode where it applies) + tokenize, per sample
//!   raw         one thread: full-size JPEG decode to RGB of every image, libjpeg-turbo
//!               (`decode_rgb`) and the image crate (zune-jpeg)
//!   draft       one thread: decode + RandomResizedCrop 224 + normalise per sample (no
//!               tokenizer) with each `JpegDraft` (full-size decode, 1/2-1/4-1/8), alternating,
//!               twice; then the pixel difference of the reduced decode vs full; then raw
//!               libjpeg-turbo decode rates at each scale M/8, M = 8..4
//!   resize      one thread: crop+bicubic resize to 224 of decoded images, fast_image_resize
//!               (ours) vs the image crate's resize (what imaging.rs used before); then
//!               fast_image_resize's two passes alone: the horizontal one (crop → 224 wide,
//!               all crop rows) and the vertical one (crop → 224 high, crop width kept)
//! ```
//! Prints one JSON line per measurement (`images_per_s`, `threads`, peak RSS in MiB).
use std::path::PathBuf;
use std::time::Instant;

use dataloader::imaging::JpegDraft;
use dataloader::imaging::{decode_rgb_with_image_crate, RandomResizedCrop};
use dataloader::{
    decode_rgb, ImageTransform, Loader, LoaderConfig, Partitions, PixelOutput, Tokenizer, DEFAULT_MAX_PIXELS,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const IMAGE_SIZE: u32 = 224;
const BATCH_SIZE: usize = 256;
const CONTEXT_LENGTH: usize = 77;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: loader_bench (loader N | loader_u8 N | canonical N | canonical_u8 N | fused | raw | draft | resize) SHARD...";
    let Some(mode) = args.first() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let (threads, shard_args) = if ["loader", "loader_u8", "canonical", "canonical_u8"].contains(&mode.as_str()) {
        let threads = args.get(1).and_then(|n| n.parse::<usize>().ok()).unwrap_or_else(|| {
            eprintln!("{usage}");
            std::process::exit(2)
        });
        (threads, &args[2..])
    } else {
        (1, &args[1..])
    };
    let shards: Vec<PathBuf> = shard_args.iter().map(PathBuf::from).collect();
    if shards.is_empty() {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    match mode.as_str() {
        "loader" => bench_loader(shards, threads, PixelOutput::NormalizedF32, None),
        "loader_u8" => bench_loader(shards, threads, PixelOutput::RawU8, None),
        "canonical" => bench_loader(
            shards,
            threads,
            PixelOutput::NormalizedF32,
            Some(canonical_partitions()),
        ),
        "canonical_u8" => bench_loader(shards, threads, PixelOutput::RawU8, Some(canonical_partitions())),
        "fused" => bench_fused(&read_samples(&shards)),
        "raw" => bench_raw(&read_samples(&shards)),
        "draft" => bench_draft(&read_samples(&shards)),
        "resize" => bench_resize(&read_samples(&shards)),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}

/// (JPEG bytes, caption) of every sample, read into memory first so that only decoding is timed.
fn read_samples(shards: &[PathBuf]) -> Vec<(Vec<u8>, String)> {
    let mut samples = Vec::new();
    for shard in shards {
        dataloader::tar_reader::for_each_sample(shard, |sample| {
            if let Ok(sample) = sample {
                if let Some(jpg) = sample.members.get("jpg") {
                    let caption = sample
                        .members
                        .get("txt")
                        .map(|t| String::from_utf8_lossy(t).into_owned())
                        .unwrap_or_default();
                    samples.push((jpg.clone(), caption));
                }
            }
            std::ops::ControlFlow::Continue(())
        });
    }
    samples
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// User + system CPU seconds of this process so far (all threads), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let ticks_per_second = 100.0; // USER_HZ, 100 on Linux
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which is in parentheses and may hold spaces).
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / ticks_per_second)
        })
        .unwrap_or(f64::NAN)
}

/// One JSON line. `cpu_s` is the CPU time spent during the measurement: on a machine shared
/// with other work, images per CPU-second is the steadier per-core figure.
/// Wall and CPU time since [`Stopwatch::start`].
struct Stopwatch {
    start: Instant,
    cpu_start: f64,
}

impl Stopwatch {
    fn start() -> Self {
        Self {
            start: Instant::now(),
            cpu_start: cpu_seconds(),
        }
    }

    /// Print the measurement of `images` done since the start.
    fn report(&self, name: &str, threads: usize, images: usize) {
        report(
            name,
            threads,
            images,
            self.start.elapsed().as_secs_f64(),
            cpu_seconds() - self.cpu_start,
        );
    }
}

fn report(name: &str, threads: usize, images: usize, seconds: f64, cpu_s: f64) {
    println!(
        "{{\"name\": \"{name}\", \"threads\": {threads}, \"images\": {images}, \"seconds\": {seconds:.3}, \
         \"images_per_s\": {:.1}, \"cpu_s\": {cpu_s:.2}, \"images_per_cpu_s\": {:.1}, \"peak_rss_mib\": {:.1}}}",
        images as f64 / seconds,
        images as f64 / cpu_s,
        peak_rss_mib()
    );
}

/// Partitions of the `canonical` rows: the stream training reads by default, as one worker
/// runs it (4 partitions of the 6 bench shards, chunks of 64 of each batch of 256).
const CANONICAL_PARTITIONS: usize = 4;

/// [`CANONICAL_PARTITIONS`], or `LOADER_BENCH_PARTITIONS` (to see what the count costs).
fn canonical_partitions() -> usize {
    std::env::var("LOADER_BENCH_PARTITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CANONICAL_PARTITIONS)
}

/// The Loader over `shards` with `threads` decode threads: per-thread streams, or with
/// `partitions` a canonical stream of that many partitions read by one worker.
fn bench_loader(shards: Vec<PathBuf>, threads: usize, pixel_output: PixelOutput, partitions: Option<usize>) {
    let mut cfg = LoaderConfig::new(shards.clone(), true);
    cfg.partitions = partitions.map(|count| Partitions {
        count,
        rank: 0,
        world_size: 1,
    });
    cfg.pixel_output = pixel_output;
    cfg.threads = threads;
    if let Some(buffer) = std::env::var("LOADER_BENCH_SHUFFLE").ok().and_then(|v| v.parse().ok()) {
        cfg.shuffle_buffer = buffer;
    }
    cfg.batch_size = BATCH_SIZE;
    cfg.image_size = IMAGE_SIZE;
    cfg.context_length = CONTEXT_LENGTH;
    // One pass: the sample count of the shards, less each thread's dropped partial batch.
    let total: u64 = dataloader::count_samples(&shards).unwrap_or(0);
    let batches = (total as usize / BATCH_SIZE).saturating_sub(threads).max(1);
    // LOADER_BENCH_BATCHES: a longer run (train mode never ends), so that the batches the
    // workers build ahead when the run stops (two per thread, or two global batches of a
    // canonical stream) weigh less.
    let batches = std::env::var("LOADER_BENCH_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(batches);
    let clock = Stopwatch::start();
    let mut loader = match Loader::new(cfg) {
        Ok(loader) => loader,
        Err(e) => {
            eprintln!("loader: {e}");
            std::process::exit(1);
        }
    };
    let mut images = 0;
    let mut checksum = 0.0f64;
    for batch in loader.by_ref().take(batches) {
        images += batch.len();
        let first_value = match pixel_output {
            PixelOutput::NormalizedF32 => f64::from(batch.images[0]),
            PixelOutput::RawU8 => f64::from(batch.images_u8[0]),
        };
        checksum += first_value + batch.tokens[1] as f64;
    }
    clock.report(
        match (pixel_output, partitions.is_some()) {
            (PixelOutput::NormalizedF32, false) => "ferroclip_loader",
            (PixelOutput::RawU8, false) => "ferroclip_loader_u8_no_normalize",
            (PixelOutput::NormalizedF32, true) => "ferroclip_loader_canonical",
            (PixelOutput::RawU8, true) => "ferroclip_loader_canonical_u8_no_normalize",
        },
        threads,
        images,
    );
    eprintln!("(checksum {checksum}, skipped {:?})", loader.skip_counts());
}

fn bench_fused(samples: &[(Vec<u8>, String)]) {
    let tokenizer = Tokenizer::new();
    let transform = ImageTransform::train(IMAGE_SIZE);
    let mut out = vec![0.0f32; transform.output_len()];
    let mut tokens = 0i64;
    let clock = Stopwatch::start();
    for (index, (jpg, caption)) in samples.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(index as u64);
        if transform
            .decode_and_apply_into(jpg, DEFAULT_MAX_PIXELS, &mut rng, &mut out)
            .is_err()
        {
            continue;
        }
        tokens += tokenizer.tokenize(caption, CONTEXT_LENGTH)[1];
    }
    clock.report("ferroclip_fused", 1, samples.len());
    eprintln!("(token checksum {tokens})");
}

fn bench_draft(samples: &[(Vec<u8>, String)]) {
    let drafts = [JpegDraft::Full, JpegDraft::PowerOfTwo];
    let transform_of = |jpeg_draft| ImageTransform {
        jpeg_draft,
        ..ImageTransform::train(IMAGE_SIZE)
    };
    let mut out = vec![0.0f32; 3 * IMAGE_SIZE as usize * IMAGE_SIZE as usize];
    for _round in 0..2 {
        for draft in drafts {
            let transform = transform_of(draft);
            let clock = Stopwatch::start();
            let mut decoded = 0;
            for (index, (jpg, _)) in samples.iter().enumerate() {
                let mut rng = ChaCha8Rng::seed_from_u64(index as u64);
                decoded += usize::from(
                    transform
                        .decode_and_apply_into(jpg, DEFAULT_MAX_PIXELS, &mut rng, &mut out)
                        .is_ok(),
                );
            }
            clock.report(&format!("decode_crop_normalize_draft_{draft:?}"), 1, decoded);
        }
    }
    // Pixel difference of the reduced decodes against the full one, normalised units (one
    // 8-bit level is about 0.015), over every 10th sample.
    let mut full = vec![0.0f32; out.len()];
    for draft in [JpegDraft::PowerOfTwo] {
        let (mut max, mut sum, mut count, mut reduced_samples) = (0.0f32, 0.0f64, 0usize, 0usize);
        for (index, (jpg, _)) in samples.iter().enumerate().step_by(10) {
            let seed = || ChaCha8Rng::seed_from_u64(index as u64);
            let ok = transform_of(JpegDraft::Full)
                .decode_and_apply_into(jpg, DEFAULT_MAX_PIXELS, &mut seed(), &mut full)
                .is_ok()
                && transform_of(draft)
                    .decode_and_apply_into(jpg, DEFAULT_MAX_PIXELS, &mut seed(), &mut out)
                    .is_ok();
            if !ok {
                continue;
            }
            reduced_samples += usize::from(out != full);
            for (a, b) in out.iter().zip(&full) {
                max = max.max((a - b).abs());
                sum += f64::from((a - b).abs());
            }
            count += out.len();
        }
        println!(
            "{{\"name\": \"draft_{draft:?}_vs_full\", \"samples_differing\": {reduced_samples}, \"max_abs_diff\": {max:.4}, \"mean_abs_diff\": {:.5}}}",
            sum / count as f64
        );
    }
    #[cfg(feature = "turbojpeg")]
    decode_rates_by_scale(samples);
}

/// Raw libjpeg-turbo decode rate at each DCT scale M/8 (M = 8, 7, 6, 5, 4), alternating, twice:
/// whether scales other than 1/2 would pay (on x86-64 only 1/2, 1/4 and 1/8 have SIMD IDCTs).
#[cfg(feature = "turbojpeg")]
fn decode_rates_by_scale(samples: &[(Vec<u8>, String)]) {
    let Ok(mut decoder) = dataloader::turbojpeg::TurboDecoder::new() else {
        return;
    };
    let mut pixels = Vec::new();
    for _round in 0..2 {
        for eighths in [8u32, 7, 6, 5, 4] {
            let clock = Stopwatch::start();
            let mut decoded = 0;
            for (jpg, _) in samples {
                let Ok(dimensions) = decoder.dimensions(jpg) else {
                    continue;
                };
                decoded += usize::from(
                    decoder
                        .decode_scaled_into(jpg, dimensions, eighths, &mut pixels)
                        .is_ok(),
                );
            }
            clock.report(&format!("raw_decode_libjpeg_turbo_scale_{eighths}_8"), 1, decoded);
        }
    }
}

fn bench_raw(samples: &[(Vec<u8>, String)]) {
    let clock = Stopwatch::start();
    let mut pixels = 0usize;
    for (jpg, _) in samples {
        pixels += decode_rgb(jpg, DEFAULT_MAX_PIXELS).map_or(0, |image| image.len());
    }
    clock.report("raw_decode_libjpeg_turbo", 1, samples.len());
    let clock = Stopwatch::start();
    for (jpg, _) in samples {
        pixels += decode_rgb_with_image_crate(jpg, DEFAULT_MAX_PIXELS).map_or(0, |image| image.len());
    }
    clock.report("raw_decode_image_crate", 1, samples.len());
    eprintln!("(pixels {pixels})");
}

fn bench_resize(samples: &[(Vec<u8>, String)]) {
    let images: Vec<image::RgbImage> = samples
        .iter()
        .take(2000)
        .filter_map(|(jpg, _)| decode_rgb(jpg, DEFAULT_MAX_PIXELS).ok())
        .collect();
    let transform = ImageTransform::train(IMAGE_SIZE);
    let clock = Stopwatch::start();
    let mut sum = 0u64;
    for (index, image) in images.iter().enumerate() {
        let out = transform.resize_and_crop(image, &mut ChaCha8Rng::seed_from_u64(index as u64));
        sum += u64::from(out.as_raw()[0]);
    }
    clock.report("resize_fast_image_resize", 1, images.len());
    let clock = Stopwatch::start();
    for (index, image) in images.iter().enumerate() {
        let crop = bench_crop(image, index);
        let cropped = image::imageops::crop_imm(image, crop.left, crop.top, crop.width, crop.height).to_image();
        let out = image::imageops::resize(
            &cropped,
            IMAGE_SIZE,
            IMAGE_SIZE,
            image::imageops::FilterType::CatmullRom,
        );
        sum += u64::from(out.as_raw()[0]);
    }
    clock.report("resize_image_crate", 1, images.len());
    sum += bench_resize_passes(&images);
    eprintln!("(sum {sum})");
}

/// The train crop of the `index`-th image, as `resize_and_crop` draws it with that seed.
fn bench_crop(image: &image::RgbImage, index: usize) -> dataloader::imaging::CropBox {
    RandomResizedCrop::default().sample(
        image.width(),
        image.height(),
        &mut ChaCha8Rng::seed_from_u64(index as u64),
    )
}

/// fast_image_resize's horizontal and vertical convolution passes timed apart: resizing the
/// crop to 224 × crop height runs only the first, to crop width × 224 only the second.
fn bench_resize_passes(images: &[image::RgbImage]) -> u64 {
    use fast_image_resize as fir;
    let mut resizer = fir::Resizer::new();
    let mut out = Vec::new();
    let mut sum = 0u64;
    for (name, horizontal) in [
        ("resize_horizontal_pass_only", true),
        ("resize_vertical_pass_only", false),
    ] {
        let clock = Stopwatch::start();
        for (index, image) in images.iter().enumerate() {
            let crop = bench_crop(image, index);
            let (width, height) = if horizontal {
                (IMAGE_SIZE, crop.height)
            } else {
                (crop.width, IMAGE_SIZE)
            };
            out.resize(3 * width as usize * height as usize, 0);
            let src = fir::images::ImageRef::new(image.width(), image.height(), image.as_raw(), fir::PixelType::U8x3)
                .expect("decoded image");
            let mut dst = fir::images::Image::from_slice_u8(width, height, &mut out, fir::PixelType::U8x3)
                .expect("output buffer");
            let options = fir::ResizeOptions::new()
                .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::CatmullRom))
                .crop(
                    f64::from(crop.left),
                    f64::from(crop.top),
                    f64::from(crop.width),
                    f64::from(crop.height),
                );
            resizer.resize(&src, &mut dst, &options).expect("crop inside the image");
            sum += u64::from(out[0]);
        }
        clock.report(name, 1, images.len());
    }
    sum
}
