//! Eval sets read from webdataset shards, in file order, with the eval image transform.
//!
//! Unlike the training [`dataloader::Loader`], a zero-shot set needs no caption (image +
//! `.cls` is a complete sample), and order is the file order, so embeddings line up with
//! keys. Member parsing is the dataloader's own ([`dataloader::loader::captions_of`],
//! [`dataloader::loader::label_of`], [`dataloader::decode_rgb`]), so both read a shard the
//! same way. Decoding runs on a few scoped threads per batch.

use std::ops::ControlFlow;
use std::path::PathBuf;

use dataloader::loader::{captions_of, label_of, CaptionSource, IMAGE_EXTENSIONS};
use dataloader::tar_reader::{for_each_sample, RawSample};
use dataloader::{decode_rgb, ImageTransform, SkipCounts, SkipReason, DEFAULT_MAX_PIXELS};
use serde::Serialize;

use super::error::EvalError;

/// What a sample must have to be part of the set (an image always).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// A `.cls` integer label (zero-shot classification).
    Label,
    /// A `.txt` with one or more captions, one per line (retrieval).
    Captions,
    /// Only the image.
    ImageOnly,
}

/// A batch of decoded eval samples, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalBatch {
    /// Sample keys.
    pub keys: Vec<String>,
    /// `B × 3 × size × size` CLIP-normalised CHW images.
    pub images: Vec<f32>,
    /// Captions of each sample (empty unless the sample has a `.txt`).
    pub captions: Vec<Vec<String>>,
    /// `.cls` label of each sample, if any.
    pub labels: Vec<Option<i64>>,
}

impl EvalBatch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    /// True without samples.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Samples left out of an eval set, by reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EvalSkips {
    /// Bad data, by the dataloader's reasons (`missing_caption`, `undecodable_image`, …).
    #[serde(serialize_with = "skip_counts_as_map")]
    pub data: SkipCounts,
    /// Samples without a `.cls` label in a zero-shot set.
    pub missing_label: u64,
}

impl EvalSkips {
    /// All skipped samples and shards.
    pub fn total(&self) -> u64 {
        self.data.total() + self.missing_label
    }
}

fn skip_counts_as_map<S: serde::Serializer>(counts: &SkipCounts, s: S) -> Result<S::Ok, S::Error> {
    counts.to_json().serialize(s)
}

/// Reads `shards` in order and calls `visit` with batches of up to `batch_size` samples
/// that have what `needs` asks for; the others are counted in the returned [`EvalSkips`].
/// An error from `visit` stops the reading and is returned.
pub fn read_eval_set(
    shards: &[PathBuf],
    image_size: u32,
    batch_size: usize,
    needs: Needs,
    mut visit: impl FnMut(EvalBatch) -> Result<(), EvalError>,
) -> Result<EvalSkips, EvalError> {
    let transform = ImageTransform::eval(image_size);
    let batch_size = batch_size.max(1);
    let mut skips = EvalSkips::default();
    let mut pending: Vec<RawSample> = Vec::with_capacity(batch_size);
    let mut result = Ok(());
    for shard in shards {
        for_each_sample(shard, |item| {
            match item {
                Err(skip) => {
                    tracing::warn!(shard = %skip.shard.display(), reason = %skip.reason, detail = %skip.detail, "skipped");
                    skips.data.add(skip.reason);
                }
                Ok(raw) => {
                    pending.push(raw);
                    if pending.len() == batch_size {
                        let batch = decode_batch(std::mem::take(&mut pending), &transform, needs, &mut skips);
                        if !batch.is_empty() {
                            if let Err(e) = visit(batch) {
                                result = Err(e);
                                return ControlFlow::Break(());
                            }
                        }
                    }
                }
            }
            ControlFlow::Continue(())
        });
        std::mem::replace(&mut result, Ok(()))?;
    }
    let batch = decode_batch(pending, &transform, needs, &mut skips);
    if !batch.is_empty() {
        visit(batch)?;
    }
    Ok(skips)
}

/// One decoded sample, or why it is left out.
enum Decoded {
    Kept {
        image: Vec<f32>,
        captions: Vec<String>,
        label: Option<i64>,
    },
    Skipped(SkipReason),
    MissingLabel,
}

/// `f` of every item, in order, with the items split into `threads` contiguous chunks that
/// run on scoped threads (decoding is the CPU-heavy part of preparing a batch). A panic in
/// `f` is re-raised here.
pub fn map_in_threads<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let chunk = items.len().div_ceil(threads.max(1)).max(1);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
}

fn decode_batch(raws: Vec<RawSample>, transform: &ImageTransform, needs: Needs, skips: &mut EvalSkips) -> EvalBatch {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(raws.len())
        .max(1);
    let decoded: Vec<Decoded> = map_in_threads(&raws, threads, |raw| decode_one(raw, transform, needs));
    let mut batch = EvalBatch {
        keys: Vec::new(),
        images: Vec::with_capacity(raws.len() * transform.output_len()),
        captions: Vec::new(),
        labels: Vec::new(),
    };
    for (raw, outcome) in raws.into_iter().zip(decoded) {
        match outcome {
            Decoded::Kept { image, captions, label } => {
                batch.keys.push(raw.key);
                batch.images.extend_from_slice(&image);
                batch.captions.push(captions);
                batch.labels.push(label);
            }
            Decoded::Skipped(reason) => {
                tracing::debug!(key = %raw.key, shard = %raw.shard.display(), %reason, "sample skipped");
                skips.data.add(reason);
            }
            Decoded::MissingLabel => skips.missing_label += 1,
        }
    }
    batch
}

fn decode_one(raw: &RawSample, transform: &ImageTransform, needs: Needs) -> Decoded {
    let label = match label_of(raw) {
        Ok(label) => label,
        Err(reason) => return Decoded::Skipped(reason),
    };
    if needs == Needs::Label && label.is_none() {
        return Decoded::MissingLabel;
    }
    let captions = match captions_of(raw, &CaptionSource::Txt) {
        Ok(captions) => captions,
        Err(reason) if needs == Needs::Captions => return Decoded::Skipped(reason),
        Err(_) => Vec::new(),
    };
    let Some(bytes) = IMAGE_EXTENSIONS.iter().find_map(|ext| raw.members.get(*ext)) else {
        return Decoded::Skipped(SkipReason::MissingImage);
    };
    match decode_rgb(bytes, DEFAULT_MAX_PIXELS) {
        // The eval transform draws no random numbers; the RNG only satisfies the signature.
        Ok(rgb) => Decoded::Kept {
            image: transform.apply(&rgb, &mut rand::rngs::mock::StepRng::new(0, 0)),
            captions,
            label,
        },
        Err(e) => Decoded::Skipped(e.reason),
    }
}

/// One image file decoded and eval-transformed (3 × size × size, CLIP-normalised), for
/// embedding single files; the error names the file.
pub fn load_image_file(path: &std::path::Path, image_size: u32) -> Result<Vec<f32>, EvalError> {
    let bytes = std::fs::read(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let rgb = decode_rgb(&bytes, DEFAULT_MAX_PIXELS).map_err(|e| EvalError::Image {
        path: path.to_path_buf(),
        reason: format!("{}: {}", e.reason, e.detail),
    })?;
    Ok(ImageTransform::eval(image_size).apply(&rgb, &mut rand::rngs::mock::StepRng::new(0, 0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataloader::{ShardSample, ShardWriter};

    fn png(shade: u8) -> Vec<u8> {
        let mut bytes = Vec::new();
        image::RgbImage::from_pixel(12, 8, image::Rgb([shade, 0, 255 - shade]))
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        bytes
    }

    fn sample(key: &str, image: Vec<u8>, captions: &[&str], label: Option<i64>) -> ShardSample {
        ShardSample {
            key: Some(key.to_string()),
            image,
            image_ext: "png".into(),
            captions: captions.iter().map(|c| c.to_string()).collect(),
            label,
            json: Default::default(),
        }
    }

    fn write_set(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut writer = ShardWriter::new(dir, 2).unwrap();
        writer.write(&sample("a", png(10), &["one", "two"], Some(1))).unwrap();
        writer.write(&sample("b", png(20), &[], Some(0))).unwrap();
        writer.write(&sample("c", png(30), &["three"], None)).unwrap();
        writer
            .write(&sample("d", b"not an image".to_vec(), &["four"], Some(2)))
            .unwrap();
        writer.write(&sample("e", png(50), &["five"], Some(2))).unwrap();
        writer.finish().unwrap().shards
    }

    fn collect(shards: &[PathBuf], needs: Needs) -> (Vec<EvalBatch>, EvalSkips) {
        let mut batches = Vec::new();
        let skips = read_eval_set(shards, 4, 2, needs, |b| {
            batches.push(b);
            Ok(())
        })
        .unwrap();
        (batches, skips)
    }

    #[test]
    fn zeroshot_set_needs_a_label_but_no_caption() {
        let dir = tempfile::tempdir().unwrap();
        let shards = write_set(dir.path());
        let (batches, skips) = collect(&shards, Needs::Label);
        let keys: Vec<&str> = batches.iter().flat_map(|b| b.keys.iter().map(String::as_str)).collect();
        assert_eq!(keys, ["a", "b", "e"]);
        let labels: Vec<Option<i64>> = batches.iter().flat_map(|b| b.labels.clone()).collect();
        assert_eq!(labels, [Some(1), Some(0), Some(2)]);
        assert_eq!(skips.missing_label, 1);
        assert_eq!(skips.data.get(SkipReason::UndecodableImage), 1);
        for b in &batches {
            assert_eq!(b.images.len(), b.len() * 3 * 4 * 4);
        }
    }

    #[test]
    fn retrieval_set_keeps_every_caption_line() {
        let dir = tempfile::tempdir().unwrap();
        let shards = write_set(dir.path());
        let (batches, skips) = collect(&shards, Needs::Captions);
        let captions: Vec<Vec<String>> = batches.iter().flat_map(|b| b.captions.clone()).collect();
        assert_eq!(
            captions,
            vec![
                vec!["one".to_string(), "two".to_string()],
                vec!["three".into()],
                vec!["five".into()]
            ]
        );
        assert_eq!(skips.data.get(SkipReason::MissingCaption), 1);
        assert_eq!(skips.total(), 2);
    }

    #[test]
    fn single_image_file_is_transformed_or_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("x.png");
        std::fs::write(&good, png(7)).unwrap();
        assert_eq!(load_image_file(&good, 6).unwrap().len(), 3 * 6 * 6);
        let bad = dir.path().join("bad.png");
        std::fs::write(&bad, b"nope").unwrap();
        assert!(load_image_file(&bad, 6).unwrap_err().to_string().contains("bad.png"));
    }

    #[test]
    fn an_error_from_visit_stops_reading() {
        let dir = tempfile::tempdir().unwrap();
        let shards = write_set(dir.path());
        let mut calls = 0;
        let result = read_eval_set(&shards, 4, 1, Needs::ImageOnly, |_| {
            calls += 1;
            Err(EvalError::NoClassnames)
        });
        assert!(matches!(result, Err(EvalError::NoClassnames)));
        assert_eq!(calls, 1);
    }
}
