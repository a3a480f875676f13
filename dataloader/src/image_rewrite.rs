//! Optional image rewriting for `ferroclip shard`: shrink to a maximum side and/or re-encode
//! as JPEG. Without options the image bytes are kept exactly as they are.
//!
//! - `resize_max_side = N`: an image whose longer side exceeds `N` is scaled down (Lanczos3,
//!   aspect ratio kept) so that its longer side is `N`; smaller images are never enlarged.
//! - `jpeg_quality = Q`: every image is re-encoded as JPEG at quality `Q` (1–100).
//! - A resized image without `jpeg_quality` keeps its kind where that can be encoded: a JPEG
//!   stays JPEG at quality [`DEFAULT_JPEG_QUALITY`] (img2dataset's default), anything else
//!   becomes PNG (lossless).
//!
//! Rewritten images go through [`decode_rgb_over_white`]: transparency is composited onto
//! white, as img2dataset does for the images it writes (the loader, like PIL, drops alpha).
use std::io::Cursor;
use std::str::FromStr;

use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{ImageEncoder, ImageReader, RgbImage};

use crate::error::{DataError, SkipReason};
use crate::imaging::{decode_rgb_over_white, sniff_extension, DecodeError};

/// JPEG quality used when a JPEG is resized without an explicit `--reencode`.
pub const DEFAULT_JPEG_QUALITY: u8 = 95;

/// What to do to each image; the default does nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageRewrite {
    /// Shrink images whose longer side is above this.
    pub resize_max_side: Option<u32>,
    /// Re-encode every image as JPEG at this quality.
    pub jpeg_quality: Option<u8>,
}

/// An image after [`ImageRewrite::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrittenImage {
    /// Encoded bytes (the input bytes when nothing was changed).
    pub bytes: Vec<u8>,
    /// Member extension (`jpg`, `png`, ...).
    pub ext: &'static str,
    /// Final width and height.
    pub size: (u32, u32),
    /// Width and height of the input image.
    pub original_size: (u32, u32),
}

/// The `jpeg:QUALITY` argument of `--reencode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReencodeSpec {
    /// JPEG quality, 1–100.
    pub jpeg_quality: u8,
}

impl FromStr for ReencodeSpec {
    type Err = DataError;

    /// `jpeg` (quality [`DEFAULT_JPEG_QUALITY`]) or `jpeg:Q` with Q in 1..=100.
    fn from_str(text: &str) -> Result<Self, DataError> {
        let bad = |reason: String| DataError::BadConfig {
            field: "reencode",
            reason: format!("{text:?}: {reason}"),
        };
        let (format, quality) = match text.split_once(':') {
            Some((format, quality)) => (format, Some(quality)),
            None => (text, None),
        };
        if !format.eq_ignore_ascii_case("jpeg") && !format.eq_ignore_ascii_case("jpg") {
            return Err(bad("only jpeg[:QUALITY] is supported".into()));
        }
        let jpeg_quality = match quality {
            None => DEFAULT_JPEG_QUALITY,
            Some(q) => match q.trim().parse::<u8>() {
                Ok(q) if (1..=100).contains(&q) => q,
                _ => return Err(bad("QUALITY must be an integer from 1 to 100".into())),
            },
        };
        Ok(Self { jpeg_quality })
    }
}

impl ImageRewrite {
    /// True when [`ImageRewrite::apply`] may change bytes.
    pub fn is_active(&self) -> bool {
        self.resize_max_side.is_some() || self.jpeg_quality.is_some()
    }

    /// Check the settings; the error names the bad field.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.resize_max_side == Some(0) {
            return Err(DataError::BadConfig {
                field: "resize_max_side",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(q) = self.jpeg_quality {
            if !(1..=100).contains(&q) {
                return Err(DataError::BadConfig {
                    field: "jpeg_quality",
                    reason: format!("{q} is not in 1..=100"),
                });
            }
        }
        Ok(())
    }

    /// Rewrite `bytes` as configured. Undecodable images, images over `max_pixels` and
    /// formats that cannot be identified are errors (the sample is skipped by the caller).
    pub fn apply(&self, bytes: &[u8], max_pixels: u64) -> Result<RewrittenImage, DecodeError> {
        let undecodable = |detail: &str| DecodeError {
            reason: SkipReason::UndecodableImage,
            detail: detail.to_string(),
        };
        let ext = sniff_extension(bytes).ok_or_else(|| undecodable("unknown image format"))?;
        if !self.is_active() {
            let size = ImageReader::new(Cursor::new(bytes))
                .with_guessed_format()
                .map_err(|e| undecodable(&e.to_string()))?
                .into_dimensions()
                .map_err(|e| undecodable(&e.to_string()))?;
            return Ok(RewrittenImage {
                bytes: bytes.to_vec(),
                ext,
                size,
                original_size: size,
            });
        }
        let rgb = decode_rgb_over_white(bytes, max_pixels)?;
        let original_size = rgb.dimensions();
        let (rgb, resized) = match self.resize_max_side {
            Some(max_side) if original_size.0.max(original_size.1) > max_side => {
                let (width, height) = fit_longer_side(original_size, max_side);
                (image::imageops::resize(&rgb, width, height, FilterType::Lanczos3), true)
            }
            _ => (rgb, false),
        };
        let quality = match (self.jpeg_quality, resized, ext) {
            (Some(q), _, _) => Some(q),
            (None, true, "jpg") => Some(DEFAULT_JPEG_QUALITY),
            (None, true, _) => None,
            (None, false, _) => {
                // Nothing to do: a small image and no re-encoding asked for.
                return Ok(RewrittenImage {
                    bytes: bytes.to_vec(),
                    ext,
                    size: original_size,
                    original_size,
                });
            }
        };
        let encoded = encode(&rgb, quality).map_err(|e| DecodeError {
            reason: SkipReason::UndecodableImage,
            detail: format!("re-encoding failed: {e}"),
        })?;
        Ok(RewrittenImage {
            bytes: encoded,
            ext: if quality.is_some() { "jpg" } else { "png" },
            size: rgb.dimensions(),
            original_size,
        })
    }
}

/// `(width, height)` scaled so that the longer side is `max_side`, each side at least 1.
fn fit_longer_side((width, height): (u32, u32), max_side: u32) -> (u32, u32) {
    let scale = f64::from(max_side) / f64::from(width.max(height));
    let side = |s: u32| ((f64::from(s) * scale).round() as u32).clamp(1, max_side);
    (side(width), side(height))
}

/// JPEG at `quality`, or PNG when `None`.
fn encode(rgb: &RgbImage, quality: Option<u8>) -> image::ImageResult<Vec<u8>> {
    let mut out = Vec::new();
    let (width, height) = rgb.dimensions();
    match quality {
        Some(q) => JpegEncoder::new_with_quality(&mut out, q).write_image(
            rgb.as_raw(),
            width,
            height,
            image::ExtendedColorType::Rgb8,
        )?,
        None => image::codecs::png::PngEncoder::new(&mut out).write_image(
            rgb.as_raw(),
            width,
            height,
            image::ExtendedColorType::Rgb8,
        )?,
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::DEFAULT_MAX_PIXELS;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
        let mut out = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn without_options_bytes_are_kept() {
        let bytes = png(30, 20);
        let out = ImageRewrite::default().apply(&bytes, DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(out.bytes, bytes);
        assert_eq!((out.ext, out.size, out.original_size), ("png", (30, 20), (30, 20)));
    }

    #[test]
    fn resize_shrinks_the_longer_side_and_keeps_png() {
        let bytes = png(40, 10);
        let rewrite = ImageRewrite {
            resize_max_side: Some(16),
            jpeg_quality: None,
        };
        let out = rewrite.apply(&bytes, DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!((out.ext, out.size, out.original_size), ("png", (16, 4), (40, 10)));
        assert_eq!(
            crate::imaging::decode_rgb(&out.bytes, DEFAULT_MAX_PIXELS)
                .unwrap()
                .dimensions(),
            (16, 4)
        );
        // Small images are left alone, byte for byte.
        let small = png(8, 8);
        assert_eq!(rewrite.apply(&small, DEFAULT_MAX_PIXELS).unwrap().bytes, small);
    }

    #[test]
    fn reencode_gives_jpeg_of_the_asked_quality() {
        let bytes = png(32, 32);
        let low = ImageRewrite {
            resize_max_side: None,
            jpeg_quality: Some(10),
        }
        .apply(&bytes, DEFAULT_MAX_PIXELS)
        .unwrap();
        let high = ImageRewrite {
            resize_max_side: None,
            jpeg_quality: Some(100),
        }
        .apply(&bytes, DEFAULT_MAX_PIXELS)
        .unwrap();
        assert_eq!((low.ext, sniff_extension(&low.bytes)), ("jpg", Some("jpg")));
        assert!(low.bytes.len() < high.bytes.len(), "quality 10 is smaller than 100");
        assert_eq!(low.size, (32, 32));
    }

    #[test]
    fn reencode_spec_parsing_names_the_field() {
        assert_eq!("jpeg:80".parse::<ReencodeSpec>().unwrap().jpeg_quality, 80);
        assert_eq!(
            "jpeg".parse::<ReencodeSpec>().unwrap().jpeg_quality,
            DEFAULT_JPEG_QUALITY
        );
        for bad in ["png:3", "jpeg:0", "jpeg:101", "jpeg:x"] {
            let err = bad.parse::<ReencodeSpec>().unwrap_err().to_string();
            assert!(err.contains("reencode") && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn undecodable_bytes_are_an_error_not_a_panic() {
        let rewrite = ImageRewrite {
            resize_max_side: Some(8),
            jpeg_quality: Some(90),
        };
        let err = rewrite.apply(b"not an image", DEFAULT_MAX_PIXELS).unwrap_err();
        assert_eq!(err.reason, SkipReason::UndecodableImage);
        let err = rewrite.apply(&png(20, 20), 100).unwrap_err();
        assert_eq!(err.reason, SkipReason::ImageTooLarge);
    }
}
