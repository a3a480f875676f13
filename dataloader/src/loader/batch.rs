//! What the loader yields, and how one raw sample becomes a row of it: [`Batch`], and the
//! sample-level steps (captions, label, image decode and transform) a worker runs per sample.
use rand::Rng;

use super::config::CaptionSource;
use super::pool::BatchImages;
use crate::error::SkipReason;
use crate::imaging::{ImageTransform, OutputPixel};
use crate::tar_reader::RawSample;

/// Member extensions tried for the image, in order (open_clip's `jpg;png;jpeg;webp`).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "png", "jpeg", "webp"];

/// One batch: plain buffers, ready for `Tensor::from_slice(..).view(..)` (or for wrapping
/// without a copy: [`BatchImages`] is one contiguous allocation that stays put).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `B × 3 × image_size × image_size`, contiguous CHW per image, CLIP-normalised. Derefs
    /// to `[f32]`; its allocation goes back to the loader for a later batch when dropped.
    /// Empty under [`PixelOutput::RawU8`].
    ///
    /// [`PixelOutput::RawU8`]: crate::PixelOutput::RawU8
    pub images: BatchImages,
    /// The same layout as `images`, the 8-bit levels before normalisation, under
    /// [`PixelOutput::RawU8`] (recycled the same way); empty otherwise.
    ///
    /// [`PixelOutput::RawU8`]: crate::PixelOutput::RawU8
    pub images_u8: BatchImages<u8>,
    /// `B × context_length` token ids (empty when `context_length` is 0). Each row is the
    /// tokenized caption text: all captions joined by newlines, which the tokenizer's
    /// whitespace cleaning turns into spaces — open_clip's treatment of a `.txt`.
    pub tokens: Vec<i64>,
    /// All captions of each sample (several for retrieval eval sets).
    pub captions: Vec<Vec<String>>,
    /// Class label from the `.cls` member, if any.
    pub labels: Vec<Option<i64>>,
    /// Sample keys.
    pub keys: Vec<String>,
    /// The epoch the samples belong to: a virtual epoch in resampled mode, always 0 in eval
    /// mode.
    pub epoch: u64,
    /// Image side length.
    pub image_size: u32,
    /// Tokens per row.
    pub context_length: usize,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    /// True when the batch holds no samples (never returned by the loader).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A decoded, transformed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Key.
    pub key: String,
    /// `3 × size × size` normalised CHW.
    pub image: Vec<f32>,
    /// Captions (at least one).
    pub captions: Vec<String>,
    /// Class label, if the sample has a `.cls` member.
    pub label: Option<i64>,
}

/// The captions of `raw` from `source`: non-empty trimmed lines of `.txt`, or the JSON field
/// (a string, or a list of strings).
pub fn captions_of(raw: &RawSample, source: &CaptionSource) -> Result<Vec<String>, SkipReason> {
    let captions: Vec<String> = match source {
        CaptionSource::Txt => {
            let bytes = raw.members.get("txt").ok_or(SkipReason::MissingCaption)?;
            let text = std::str::from_utf8(bytes).map_err(|_| SkipReason::InvalidCaption)?;
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(str::to_string)
                .collect()
        }
        CaptionSource::Json(field) => {
            let bytes = raw.members.get("json").ok_or(SkipReason::MissingCaption)?;
            let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| SkipReason::InvalidCaption)?;
            match value.get(field) {
                None | Some(serde_json::Value::Null) => return Err(SkipReason::MissingCaption),
                Some(serde_json::Value::String(s)) => vec![s.trim().to_string()],
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .map(|item| item.as_str().map(|s| s.trim().to_string()))
                    .collect::<Option<Vec<String>>>()
                    .ok_or(SkipReason::InvalidCaption)?
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect(),
                Some(_) => return Err(SkipReason::InvalidCaption),
            }
        }
    };
    if captions.is_empty() || captions.iter().all(String::is_empty) {
        return Err(SkipReason::MissingCaption);
    }
    Ok(captions)
}

/// The integer class label of the `.cls` member, `None` without one.
pub fn label_of(raw: &RawSample) -> Result<Option<i64>, SkipReason> {
    let Some(bytes) = raw.members.get("cls") else {
        return Ok(None);
    };
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok())
        .map(Some)
        .ok_or(SkipReason::InvalidLabel)
}

/// Decode and transform one raw sample, or say why it is skipped.
pub fn decode_sample<R: Rng + ?Sized>(
    raw: &RawSample,
    caption: &CaptionSource,
    transform: &ImageTransform,
    max_pixels: u64,
    rng: &mut R,
) -> Result<Sample, SkipReason> {
    let mut image = vec![0.0; transform.output_len()];
    let (captions, label) = decode_sample_into(raw, caption, transform, max_pixels, rng, &mut image)?;
    Ok(Sample {
        key: raw.key.clone(),
        image,
        captions,
        label,
    })
}

/// [`decode_sample`] writing the image into `image` (length
/// [`ImageTransform::output_len`]; f32 normalised or u8 levels, see [`OutputPixel`]) and
/// returning the captions and label; on a skip, `image` holds unspecified values.
pub fn decode_sample_into<R: Rng + ?Sized, P: OutputPixel>(
    raw: &RawSample,
    caption: &CaptionSource,
    transform: &ImageTransform,
    max_pixels: u64,
    rng: &mut R,
    image: &mut [P],
) -> Result<(Vec<String>, Option<i64>), SkipReason> {
    let captions = captions_of(raw, caption)?;
    let label = label_of(raw)?;
    let bytes = IMAGE_EXTENSIONS
        .iter()
        .find_map(|ext| raw.members.get(*ext))
        .ok_or(SkipReason::MissingImage)?;
    // Decode straight at the reduced JPEG scale the crop allows (same random draws).
    transform
        .decode_and_apply_into(bytes, max_pixels, rng, image)
        .map_err(|e| e.reason)?;
    Ok((captions, label))
}
