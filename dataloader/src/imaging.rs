//! Image decode (PNG/JPEG, alpha over white, size limit) and open_clip's image transforms.
//!
//! Train: `RandomResizedCrop(size, scale=(0.9, 1.0), ratio=(3/4, 4/3), bicubic)`, to float,
//! CLIP normalisation. Eval: bicubic resize of the shorter side to `size`, center crop, the
//! same normalisation. Output is f32 CHW. The crop parameters follow torchvision's
//! `RandomResizedCrop.get_params` and `CenterCrop` rounding; random draws come from the
//! caller's RNG, so they differ from torch's but are reproducible.
use std::io::Cursor;

use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, Limits, RgbImage};
use rand::Rng;

use crate::error::SkipReason;

/// CLIP (OpenAI) per-channel mean, RGB.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP (OpenAI) per-channel standard deviation, RGB.
// Digits as open_clip's constants.py writes them, beyond f32 precision on purpose.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// Default pixel limit for decoding (about 89 megapixels, PIL's decompression-bomb limit).
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// Why image bytes were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct DecodeError {
    /// `EmptyImage`, `UndecodableImage` or `ImageTooLarge`.
    pub reason: SkipReason,
    /// The decoder's message or the offending dimensions.
    pub detail: String,
}

/// The image format of `bytes` by its magic number, as a member extension (`png`, `jpg`,
/// `webp`, ...); `None` if unknown.
pub fn sniff_extension(bytes: &[u8]) -> Option<&'static str> {
    match image::guess_format(bytes).ok()? {
        image::ImageFormat::Png => Some("png"),
        image::ImageFormat::Jpeg => Some("jpg"),
        image::ImageFormat::WebP => Some("webp"),
        image::ImageFormat::Gif => Some("gif"),
        image::ImageFormat::Bmp => Some("bmp"),
        image::ImageFormat::Tiff => Some("tiff"),
        _ => None,
    }
}

/// Decode PNG/JPEG bytes to 8-bit RGB; transparent pixels are composited onto white.
///
/// Images with more than `max_pixels` pixels are rejected before their pixels are decoded.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    let undecodable = |detail: String| DecodeError {
        reason: SkipReason::UndecodableImage,
        detail,
    };
    if bytes.is_empty() {
        return Err(DecodeError {
            reason: SkipReason::EmptyImage,
            detail: "zero bytes".into(),
        });
    }
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| undecodable(e.to_string()))
    };
    let (width, height) = reader()?.into_dimensions().map_err(|e| undecodable(e.to_string()))?;
    if width == 0 || height == 0 {
        return Err(undecodable(format!("zero dimension {width}x{height}")));
    }
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(DecodeError {
            reason: SkipReason::ImageTooLarge,
            detail: format!("{width}x{height} is over the limit of {max_pixels} pixels"),
        });
    }
    let mut reader = reader()?;
    // Dimensions were checked above; the decoder's own default allocation cap (512 MiB)
    // would otherwise reject images that the configured pixel limit allows.
    reader.limits(Limits::no_limits());
    let decoded = reader.decode().map_err(|e| undecodable(e.to_string()))?;
    Ok(to_rgb_over_white(decoded))
}

/// RGB copy of `image`; with an alpha channel, each pixel is blended over white.
pub fn to_rgb_over_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let (width, height) = rgba.dimensions();
    let mut rgb = RgbImage::new(width, height);
    for (dst, src) in rgb.pixels_mut().zip(rgba.pixels()) {
        let alpha = u32::from(src.0[3]);
        for c in 0..3 {
            // c·a + 255·(1 − a), in 8-bit fixed point with rounding.
            let blended = (u32::from(src.0[c]) * alpha + 255 * (255 - alpha) + 127) / 255;
            dst.0[c] = blended as u8;
        }
    }
    rgb
}

/// open_clip's image transform for one mode, producing f32 CHW tensors of `size`×`size`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTransform {
    /// Output side length.
    pub size: u32,
    /// `Some` for the train transform: the RandomResizedCrop parameters.
    pub random_crop: Option<RandomResizedCrop>,
}

/// `RandomResizedCrop` parameters (torchvision semantics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomResizedCrop {
    /// Range of the crop area as a fraction of the image area.
    pub scale: (f64, f64),
    /// Range of the crop aspect ratio (width / height), sampled log-uniformly.
    pub ratio: (f64, f64),
}

impl Default for RandomResizedCrop {
    /// open_clip's default train augmentation: scale (0.9, 1.0), ratio (3/4, 4/3).
    fn default() -> Self {
        Self {
            scale: (0.9, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }
}

/// A crop box: top row, left column, height, width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// First row.
    pub top: u32,
    /// First column.
    pub left: u32,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
}

impl ImageTransform {
    /// The train transform: RandomResizedCrop with open_clip's defaults, then normalise.
    pub fn train(size: u32) -> Self {
        Self {
            size,
            random_crop: Some(RandomResizedCrop::default()),
        }
    }

    /// The eval transform: shorter side to `size` (bicubic), center crop, normalise.
    pub fn eval(size: u32) -> Self {
        Self {
            size,
            random_crop: None,
        }
    }

    /// Number of f32 values one output image has (3·size·size).
    pub fn output_len(&self) -> usize {
        3 * self.size as usize * self.size as usize
    }

    /// Transform `image` and write the normalised CHW result into `out`
    /// (length [`Self::output_len`]). The RNG is only used by the train transform.
    pub fn apply_into<R: Rng + ?Sized>(&self, image: &RgbImage, rng: &mut R, out: &mut [f32]) {
        let resized = self.resize_and_crop(image, rng);
        normalize_chw(&resized, out);
    }

    /// Like [`Self::apply_into`], returning a new buffer.
    pub fn apply<R: Rng + ?Sized>(&self, image: &RgbImage, rng: &mut R) -> Vec<f32> {
        let mut out = vec![0.0; self.output_len()];
        self.apply_into(image, rng, &mut out);
        out
    }

    /// The 8-bit `size`×`size` image before normalisation.
    pub fn resize_and_crop<R: Rng + ?Sized>(&self, image: &RgbImage, rng: &mut R) -> RgbImage {
        let size = self.size;
        match &self.random_crop {
            Some(params) => {
                let crop = params.sample(image.width(), image.height(), rng);
                let cropped = image::imageops::crop_imm(image, crop.left, crop.top, crop.width, crop.height).to_image();
                image::imageops::resize(&cropped, size, size, FilterType::CatmullRom)
            }
            None => {
                let (width, height) = shorter_side_resized(image.width(), image.height(), size);
                let resized = image::imageops::resize(image, width, height, FilterType::CatmullRom);
                let crop = center_crop_box(width, height, size);
                image::imageops::crop_imm(&resized, crop.left, crop.top, crop.width, crop.height).to_image()
            }
        }
    }
}

impl RandomResizedCrop {
    /// Draw a crop box for a `width`×`height` image (torchvision's `get_params`: ten tries
    /// at a random area and log-uniform aspect ratio, else a center crop clamped to `ratio`).
    pub fn sample<R: Rng + ?Sized>(&self, width: u32, height: u32, rng: &mut R) -> CropBox {
        let area = f64::from(width) * f64::from(height);
        let (log_lo, log_hi) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * uniform(rng, self.scale.0, self.scale.1);
            let aspect = uniform(rng, log_lo, log_hi).exp();
            let w = (target_area * aspect).sqrt().round_ties_even();
            let h = (target_area / aspect).sqrt().round_ties_even();
            if w > 0.0 && h > 0.0 && w <= f64::from(width) && h <= f64::from(height) {
                let (w, h) = (w as u32, h as u32);
                let top = rng.gen_range(0..=height - h);
                let left = rng.gen_range(0..=width - w);
                return CropBox {
                    top,
                    left,
                    height: h,
                    width: w,
                };
            }
        }
        let in_ratio = f64::from(width) / f64::from(height);
        let (w, h) = if in_ratio < self.ratio.0 {
            let h = (f64::from(width) / self.ratio.0).round_ties_even() as u32;
            (width, h.clamp(1, height))
        } else if in_ratio > self.ratio.1 {
            let w = (f64::from(height) * self.ratio.1).round_ties_even() as u32;
            (w.clamp(1, width), height)
        } else {
            (width, height)
        };
        CropBox {
            top: (height - h) / 2,
            left: (width - w) / 2,
            height: h,
            width: w,
        }
    }
}

/// Uniform in [lo, hi) (or exactly `lo` when the range is empty).
fn uniform<R: Rng + ?Sized>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.gen::<f64>()
}

/// torchvision `Resize(size)` output for a `width`×`height` image: shorter side → `size`,
/// longer side scaled and truncated.
pub fn shorter_side_resized(width: u32, height: u32, size: u32) -> (u32, u32) {
    let long_of = |short: u32, long: u32| ((f64::from(size) * f64::from(long) / f64::from(short)) as u32).max(size);
    if width <= height {
        (size, long_of(width, height))
    } else {
        (long_of(height, width), size)
    }
}

/// torchvision `CenterCrop(size)` box inside a `width`×`height` image that is at least `size`
/// on both sides (offsets rounded half to even, as Python's `round`).
pub fn center_crop_box(width: u32, height: u32, size: u32) -> CropBox {
    let offset = |full: u32| (f64::from(full.saturating_sub(size)) / 2.0).round_ties_even() as u32;
    CropBox {
        top: offset(height),
        left: offset(width),
        height: size.min(height),
        width: size.min(width),
    }
}

/// 8-bit RGB (HWC) → normalised f32 CHW: `(v / 255 − mean) / std` per channel.
pub fn normalize_chw(image: &RgbImage, out: &mut [f32]) {
    let plane = image.width() as usize * image.height() as usize;
    assert_eq!(out.len(), 3 * plane, "output buffer length");
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(pixel.0[c]) / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, Rgba, RgbaImage};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn encode_png(image: DynamicImage) -> Vec<u8> {
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        bytes
    }

    #[test]
    fn alpha_is_composited_onto_white() {
        let mut rgba = RgbaImage::new(3, 1);
        rgba.put_pixel(0, 0, Rgba([0, 0, 0, 0])); // fully transparent black → white
        rgba.put_pixel(1, 0, Rgba([10, 20, 30, 255])); // opaque → unchanged
        rgba.put_pixel(2, 0, Rgba([0, 0, 0, 128])); // half black over white → ~127
        let bytes = encode_png(DynamicImage::ImageRgba8(rgba));
        let rgb = decode_rgb(&bytes, DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(rgb.get_pixel(0, 0), &Rgb([255, 255, 255]));
        assert_eq!(rgb.get_pixel(1, 0), &Rgb([10, 20, 30]));
        assert_eq!(rgb.get_pixel(2, 0), &Rgb([127, 127, 127]));
    }

    #[test]
    fn jpeg_decodes() {
        let image = RgbImage::from_pixel(16, 8, Rgb([200, 100, 50]));
        let mut bytes = Vec::new();
        DynamicImage::ImageRgb8(image)
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
            .unwrap();
        assert_eq!(sniff_extension(&bytes), Some("jpg"));
        let rgb = decode_rgb(&bytes, DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(rgb.dimensions(), (16, 8));
        let p = rgb.get_pixel(5, 5).0;
        assert!((i32::from(p[0]) - 200).abs() <= 3, "{p:?}");
    }

    #[test]
    fn bad_bytes_get_typed_reasons() {
        assert_eq!(decode_rgb(&[], 100).unwrap_err().reason, SkipReason::EmptyImage);
        assert_eq!(
            decode_rgb(b"not an image at all", 100).unwrap_err().reason,
            SkipReason::UndecodableImage
        );
        let png = encode_png(DynamicImage::ImageRgb8(RgbImage::new(20, 10)));
        assert_eq!(decode_rgb(&png, 199).unwrap_err().reason, SkipReason::ImageTooLarge);
        assert!(decode_rgb(&png, 200).is_ok());
        // A PNG cut in the middle of its pixel data.
        let cut = &png[..png.len() - 20];
        assert_eq!(decode_rgb(cut, 200).unwrap_err().reason, SkipReason::UndecodableImage);
    }

    #[test]
    fn eval_geometry_matches_torchvision() {
        assert_eq!(shorter_side_resized(640, 480, 224), (298, 224));
        assert_eq!(shorter_side_resized(100, 333, 224), (224, 745));
        assert_eq!(shorter_side_resized(50, 50, 224), (224, 224));
        // (298 - 224) / 2 = 37; (225 - 224) / 2 = 0.5 rounds to even 0; 1.5 → 2.
        assert_eq!(center_crop_box(298, 224, 224).left, 37);
        assert_eq!(center_crop_box(225, 224, 224).left, 0);
        assert_eq!(center_crop_box(227, 224, 224).left, 2);
    }

    #[test]
    fn eval_of_uniform_image_is_normalised_constant() {
        let image = RgbImage::from_pixel(40, 30, Rgb([255, 128, 0]));
        let out = ImageTransform::eval(16).apply(&image, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(out.len(), 3 * 16 * 16);
        let expected = [
            (1.0 - CLIP_MEAN[0]) / CLIP_STD[0],
            (128.0 / 255.0 - CLIP_MEAN[1]) / CLIP_STD[1],
            (0.0 - CLIP_MEAN[2]) / CLIP_STD[2],
        ];
        for c in 0..3 {
            for &v in &out[c * 256..(c + 1) * 256] {
                assert!((v - expected[c]).abs() < 1e-5, "channel {c}: {v}");
            }
        }
    }

    #[test]
    fn eval_center_crop_keeps_the_middle() {
        // 24 wide × 8 high: left third red, middle green, right blue. Resizing to 8 keeps it
        // as is; the center crop is exactly the green middle.
        let image = RgbImage::from_fn(24, 8, |x, _| match x / 8 {
            0 => Rgb([255, 0, 0]),
            1 => Rgb([0, 255, 0]),
            _ => Rgb([0, 0, 255]),
        });
        let out = ImageTransform::eval(8).resize_and_crop(&image, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(out.dimensions(), (8, 8));
        assert!(out.pixels().all(|p| p.0 == [0, 255, 0]));
    }

    #[test]
    fn train_crop_is_seeded_and_in_range() {
        let image = RgbImage::from_fn(64, 48, |x, y| Rgb([x as u8 * 3, y as u8 * 5, 7]));
        let transform = ImageTransform::train(32);
        let a = transform.apply(&image, &mut ChaCha8Rng::seed_from_u64(42));
        let b = transform.apply(&image, &mut ChaCha8Rng::seed_from_u64(42));
        assert_eq!(a, b);
        let crops: Vec<CropBox> = (0..200)
            .map(|s| RandomResizedCrop::default().sample(64, 48, &mut ChaCha8Rng::seed_from_u64(s)))
            .collect();
        for crop in &crops {
            let area = f64::from(crop.width * crop.height) / (64.0 * 48.0);
            assert!(crop.left + crop.width <= 64 && crop.top + crop.height <= 48);
            assert!((0.85..=1.0).contains(&area), "{crop:?}");
        }
        assert!(crops.iter().any(|c| *c != crops[0]), "crops vary with the seed");
    }

    #[test]
    fn train_crop_falls_back_to_center_for_extreme_aspect() {
        // 100×10 cannot hold 90% of its area at ratio ≤ 4/3: center crop 13×10.
        let crop = RandomResizedCrop::default().sample(100, 10, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(
            crop,
            CropBox {
                top: 0,
                left: 43,
                height: 10,
                width: 13
            }
        );
    }
}
