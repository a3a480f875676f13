//! Image decode (JPEG/PNG, alpha dropped as PIL's `convert("RGB")` does, size limit) and open_clip's image transforms.
//!
//! Train: `RandomResizedCrop(size, scale=(0.9, 1.0), ratio=(3/4, 4/3), bicubic)`, to float,
//! CLIP normalisation. Eval: bicubic resize of the shorter side to `size`, center crop, the
//! same normalisation. Output is f32 CHW, or u8 CHW before normalisation ([`OutputPixel`]). The crop parameters follow torchvision's
//! `RandomResizedCrop.get_params` and `CenterCrop` rounding; random draws come from the
//! caller's RNG, so they differ from torch's but are reproducible.
//!
//! Speed: JPEGs decode through libjpeg-turbo (feature `turbojpeg`, on by default; PIL's
//! decoder, so full-size pixels are PIL's), and [`ImageTransform::decode_and_apply`] decodes
//! them at a reduced DCT scale (1/2, 1/4, 1/8) when the region the transform keeps is at
//! least twice the output size; the largest reduction whose output still covers the output
//! size is taken ([`JpegDraft`]). Resampling is `fast_image_resize`'s SIMD convolution with the bicubic
//! (Catmull-Rom, a = −0.5) kernel, Pillow's algorithm, 8-bit between passes like Pillow.
//! Decode and resize buffers are reused per thread.
use std::cell::RefCell;
use std::io::Cursor;

use fast_image_resize as fir;
use image::{DynamicImage, ImageReader, Limits, RgbImage};
use rand::Rng;

use crate::chw;
pub use crate::chw::{CLIP_MEAN, CLIP_STD};
use crate::error::SkipReason;
use crate::jpeg_structure::reaches_end_of_image;
#[cfg(feature = "turbojpeg")]
use crate::turbojpeg::{TurboDecoder, TurboError};

/// Default pixel limit for decoding (about 89 megapixels, PIL's decompression-bomb limit).
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;
/// A thread's decode buffer is freed after an image bigger than this (bytes), so one huge
/// image does not pin its memory for the rest of the run.
const MAX_KEPT_DECODE_BUFFER: usize = 64 << 20;
/// Bytes a decoder may allocate per allowed pixel: 16-bit RGBA, the widest the `image`
/// crate decodes to.
const DECODE_BYTES_PER_PIXEL: u64 = 8;
/// Allocation allowed beyond the pixels: ICC profiles, text chunks, decoder tables.
const DECODE_ALLOC_MARGIN: u64 = 64 << 20;

/// Why image bytes were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct DecodeError {
    /// `EmptyImage`, `UndecodableImage` or `ImageTooLarge`.
    pub reason: SkipReason,
    /// The decoder's message or the offending dimensions.
    pub detail: String,
}

impl DecodeError {
    fn undecodable(detail: impl Into<String>) -> Self {
        Self {
            reason: SkipReason::UndecodableImage,
            detail: detail.into(),
        }
    }

    /// A JPEG that libjpeg-turbo warned about: its pixels would be partly made up.
    #[cfg(feature = "turbojpeg")]
    fn corrupt_jpeg(error: &TurboError) -> Self {
        Self::undecodable(format!("truncated or corrupt JPEG data: {}", error.message))
    }

    fn empty() -> Self {
        Self {
            reason: SkipReason::EmptyImage,
            detail: "zero bytes".into(),
        }
    }
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

/// Per-thread decoder and buffers, reused from one image to the next.
struct Workspace {
    /// `None` until the first JPEG, and if the library could not create a decoder.
    #[cfg(feature = "turbojpeg")]
    turbo: Option<TurboDecoder>,
    /// Decoded RGB pixels of the current JPEG.
    decoded: Vec<u8>,
    /// The `size`×`size` RGB result of the resize.
    resized: Vec<u8>,
    resizer: fir::Resizer,
}

impl Workspace {
    fn new() -> Self {
        Self {
            #[cfg(feature = "turbojpeg")]
            turbo: None,
            decoded: Vec::new(),
            resized: Vec::new(),
            resizer: fir::Resizer::new(),
        }
    }

    fn release_oversized_buffers(&mut self) {
        if self.decoded.capacity() > MAX_KEPT_DECODE_BUFFER {
            self.decoded = Vec::new();
        }
    }
}

/// The decoder in `slot`, created on first use (`None` if the library cannot make one).
#[cfg(feature = "turbojpeg")]
fn turbo_decoder(slot: &mut Option<TurboDecoder>) -> Option<&mut TurboDecoder> {
    if slot.is_none() {
        match TurboDecoder::new() {
            Ok(decoder) => *slot = Some(decoder),
            Err(message) => tracing::warn!("libjpeg-turbo unavailable, using the image crate: {message}"),
        }
    }
    slot.as_mut()
}

thread_local! {
    static WORKSPACE: RefCell<Workspace> = RefCell::new(Workspace::new());
}

/// Run `f` with this thread's workspace (a fresh one in the never-expected case that it is
/// already in use further up the stack).
fn with_workspace<T>(f: impl FnOnce(&mut Workspace) -> T) -> T {
    WORKSPACE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut workspace) => {
            let result = f(&mut workspace);
            workspace.release_oversized_buffers();
            result
        }
        Err(_) => f(&mut Workspace::new()),
    })
}

fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

fn check_pixel_limit(width: u32, height: u32, max_pixels: u64) -> Result<(), DecodeError> {
    if width == 0 || height == 0 {
        return Err(DecodeError::undecodable(format!("zero dimension {width}x{height}")));
    }
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(DecodeError {
            reason: SkipReason::ImageTooLarge,
            detail: format!("{width}x{height} is over the limit of {max_pixels} pixels"),
        });
    }
    Ok(())
}

/// Decode image bytes to 8-bit RGB the way PIL's `Image.open(…).convert("RGB")` does, which is
/// what open_clip_train (webdataset's `"pilrgb"`) and CLIP_benchmark (`_convert_to_rgb`) train
/// and evaluate on: an alpha channel is dropped, not composited (a transparent pixel keeps the
/// colour stored under it), a palette image takes its palette colours, grey becomes three equal
/// channels. [`decode_rgb_over_white`] composites onto white instead.
///
/// Images with more than `max_pixels` pixels are rejected before their pixels are decoded.
/// JPEGs go through libjpeg-turbo (with the `turbojpeg` feature). Truncated or corrupt JPEG
/// data (anything libjpeg-turbo warns about) is rejected as PIL rejects it, not decoded with
/// made-up pixels; what libjpeg-turbo cannot decode at all (CMYK to RGB) falls back to the
/// `image` crate, which refuses JPEGs that do not reach their end-of-image marker.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::empty());
    }
    #[cfg(feature = "turbojpeg")]
    if is_jpeg(bytes) {
        let turbo = with_workspace(|workspace| {
            let decoder = turbo_decoder(&mut workspace.turbo)?;
            let (width, height) = match decoder.dimensions(bytes) {
                Ok(dimensions) => dimensions,
                Err(e) if e.warning => return Some(Err(DecodeError::corrupt_jpeg(&e))),
                Err(_) => return None,
            };
            if let Err(e) = check_pixel_limit(width, height, max_pixels) {
                return Some(Err(e));
            }
            let mut pixels = Vec::new();
            match decoder.decode_into(bytes, 1, &mut pixels) {
                Ok((width, height)) => RgbImage::from_raw(width, height, pixels).map(Ok),
                Err(e) if e.warning => Some(Err(DecodeError::corrupt_jpeg(&e))),
                Err(_) => None,
            }
        });
        if let Some(result) = turbo {
            return result;
        }
    }
    decode_rgb_with_image_crate(bytes, max_pixels)
}

/// [`decode_rgb`], with transparent pixels composited onto white (img2dataset's rule for the
/// images it writes; `ferroclip shard`'s rewriting uses it).
pub fn decode_rgb_over_white(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    if is_jpeg(bytes) {
        return decode_rgb(bytes, max_pixels); // no alpha channel
    }
    decode_with_image_crate(bytes, max_pixels).map(to_rgb_over_white)
}

/// [`decode_rgb`] through the `image` crate only (zune-jpeg for JPEG); a JPEG must reach its
/// end-of-image marker.
pub fn decode_rgb_with_image_crate(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    // `to_rgb8` drops alpha, as PIL's `convert("RGB")`.
    decode_with_image_crate(bytes, max_pixels).map(|image| image.to_rgb8())
}

/// The decoded image, alpha channel and all.
fn decode_with_image_crate(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::empty());
    }
    let reader = || {
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| DecodeError::undecodable(e.to_string()))?;
        reader.limits(decode_limits(max_pixels));
        Ok::<_, DecodeError>(reader)
    };
    // Only the header is read here, so a forged size is rejected before any pixel buffer.
    let (width, height) = reader()?.into_dimensions().map_err(limit_or_undecodable)?;
    check_pixel_limit(width, height, max_pixels)?;
    if is_jpeg(bytes) && !reaches_end_of_image(bytes) {
        // zune-jpeg would fill the missing part and succeed.
        return Err(DecodeError::undecodable("truncated JPEG data: no end-of-image marker"));
    }
    reader()?.decode().map_err(limit_or_undecodable)
}

/// The `image` crate's limits for images of at most `max_pixels` pixels: the dimensions are
/// checked against `max_pixels` separately, and allocations are capped at what such an image
/// needs at the widest pixel type plus a margin (the crate's default, 512 MiB, would reject
/// images the pixel limit allows; no limit would let a forged header or chunk allocate freely).
fn decode_limits(max_pixels: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(
        max_pixels
            .saturating_mul(DECODE_BYTES_PER_PIXEL)
            .saturating_add(DECODE_ALLOC_MARGIN),
    );
    limits
}

/// An `image` crate error as a skip: a limit it hit means the image is too large.
fn limit_or_undecodable(error: image::ImageError) -> DecodeError {
    match error {
        image::ImageError::Limits(_) => DecodeError {
            reason: SkipReason::ImageTooLarge,
            detail: error.to_string(),
        },
        other => DecodeError::undecodable(other.to_string()),
    }
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

/// open_clip's image transform for one mode, producing CHW images of `size`×`size`: f32
/// normalised, or the u8 levels before normalisation ([`OutputPixel`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTransform {
    /// Output side length.
    pub size: u32,
    /// `Some` for the train transform: the RandomResizedCrop parameters.
    pub random_crop: Option<RandomResizedCrop>,
    /// How far below full size a JPEG may be decoded before the resize.
    pub jpeg_draft: JpegDraft,
}

/// How far below full size [`ImageTransform::decode_and_apply_into`] may decode a JPEG, like
/// PIL's `Image.draft`: libjpeg-turbo's IDCT can output a fraction of the pixels directly,
/// which costs less than decoding everything and then resampling. The reduction chosen is
/// always the largest that leaves the region the transform keeps at least `size` pixels on
/// both sides, so the bicubic resize after it still only shrinks (or keeps) the image.
///
/// Only 1/2, 1/4 and 1/8 are offered. libjpeg-turbo also scales by 7/8, 3/4, 5/8, 3/8, but
/// measured on the loader benchmark's 256-512 px JPEGs (libjpeg-turbo 2.1.5, x86-64) those
/// decode 30-50% *slower* than full size (their IDCTs have no SIMD code), and differ more
/// from the full decode (up to 25 8-bit levels); see docs/benchmarks.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JpegDraft {
    /// Always decode at full size: exactly [`decode_rgb`] then [`ImageTransform::apply_into`].
    Full,
    /// 1/2, 1/4 or 1/8 (PIL's draft scales) where the kept region allows; the default.
    #[default]
    PowerOfTwo,
}

impl JpegDraft {
    /// The JPEG scale, in eighths (8 = full size), at which `region` of the full image still
    /// has at least `size` pixels on both sides.
    #[cfg_attr(not(feature = "turbojpeg"), allow(dead_code))]
    fn eighths_for(self, region: SourceRegion, size: u32) -> u32 {
        let size = f64::from(size);
        let covers = |eighths: u32| {
            let scale = f64::from(eighths) / 8.0;
            region.width * scale >= size && region.height * scale >= size
        };
        let allowed: &[u32] = match self {
            JpegDraft::Full => &[],
            JpegDraft::PowerOfTwo => &[1, 2, 4],
        };
        allowed.iter().copied().find(|&eighths| covers(eighths)).unwrap_or(8)
    }
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

/// The part of the source image that is resampled onto the whole `size`×`size` output, in
/// source pixel units (fractional when the eval resize scale does not divide evenly).
#[derive(Debug, Clone, Copy, PartialEq)]
struct SourceRegion {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
}

impl SourceRegion {
    /// The same region in an image decoded at `eighths`/8 scale, clamped into the decoded
    /// `width`×`height` (its size is the full one scaled and rounded up, so the scaled region
    /// can only stick out by rounding).
    #[cfg_attr(not(feature = "turbojpeg"), allow(dead_code))]
    fn scaled(self, eighths: u32, width: u32, height: u32) -> Self {
        let scale = f64::from(eighths) / 8.0;
        let left = (self.left * scale).min(f64::from(width));
        let top = (self.top * scale).min(f64::from(height));
        Self {
            left,
            top,
            width: (self.width * scale).min(f64::from(width) - left),
            height: (self.height * scale).min(f64::from(height) - top),
        }
    }
}

impl ImageTransform {
    /// The train transform: RandomResizedCrop with open_clip's defaults, then normalise.
    pub fn train(size: u32) -> Self {
        Self {
            size,
            random_crop: Some(RandomResizedCrop::default()),
            jpeg_draft: JpegDraft::default(),
        }
    }

    /// The eval transform: shorter side to `size` (bicubic), center crop, normalise.
    pub fn eval(size: u32) -> Self {
        Self {
            size,
            random_crop: None,
            jpeg_draft: JpegDraft::default(),
        }
    }

    /// Number of values (f32 or u8) one output image has (3·size·size).
    pub fn output_len(&self) -> usize {
        3 * self.size as usize * self.size as usize
    }

    /// Transform `image` and write the normalised CHW result into `out`
    /// (length [`Self::output_len`]). The RNG is only used by the train transform.
    ///
    /// `out` is f32 (CLIP-normalised) or u8 (the resized 8-bit levels, planar), see
    /// [`OutputPixel`].
    pub fn apply_into<R: Rng + ?Sized, P: OutputPixel>(&self, image: &RgbImage, rng: &mut R, out: &mut [P]) {
        let region = self.source_region(image.width(), image.height(), rng);
        self.resample_into(image, region, out);
    }

    /// Resample `region` of `image` onto the `size`×`size` output and write it into `out`.
    fn resample_into<P: OutputPixel>(&self, image: &RgbImage, region: SourceRegion, out: &mut [P]) {
        with_workspace(|workspace| {
            self.resample(image, region, &mut workspace.resizer, &mut workspace.resized);
            P::write_chw(&workspace.resized, out);
        });
    }

    /// Like [`Self::apply_into`], returning a new buffer.
    pub fn apply<R: Rng + ?Sized>(&self, image: &RgbImage, rng: &mut R) -> Vec<f32> {
        let mut out = vec![0.0; self.output_len()];
        self.apply_into(image, rng, &mut out);
        out
    }

    /// Decode image bytes and transform them into `out` (length [`Self::output_len`]).
    ///
    /// The same result as [`decode_rgb`] then [`Self::apply_into`] (same crop, same RNG
    /// draws), except that a JPEG may be decoded below full size first, as
    /// [`Self::jpeg_draft`] allows; the crop is then mapped onto the smaller image. `out` is
    /// f32 (CLIP-normalised) or u8 (the 8-bit levels before normalisation), see [`OutputPixel`].
    pub fn decode_and_apply_into<R: Rng + ?Sized, P: OutputPixel>(
        &self,
        bytes: &[u8],
        max_pixels: u64,
        rng: &mut R,
        out: &mut [P],
    ) -> Result<(), DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::empty());
        }
        #[cfg(feature = "turbojpeg")]
        if is_jpeg(bytes) {
            let done = with_workspace(|workspace| self.turbo_decode_and_apply(workspace, bytes, max_pixels, rng, out));
            match done {
                TurboOutcome::Done => return Ok(()),
                TurboOutcome::Rejected(e) => return Err(e),
                TurboOutcome::NotHandled => {}
                TurboOutcome::Failed(region) => {
                    // The crop was already drawn for the header's size: keep it, so the RNG
                    // stream does not depend on which decoder succeeded.
                    let image = decode_rgb_with_image_crate(bytes, max_pixels)?;
                    if (image.width(), image.height()) != (region.1, region.2) {
                        return Err(DecodeError::undecodable(format!(
                            "header says {}x{}, pixels are {}x{}",
                            region.1,
                            region.2,
                            image.width(),
                            image.height()
                        )));
                    }
                    self.resample_into(&image, region.0, out);
                    return Ok(());
                }
            }
        }
        let image = decode_rgb(bytes, max_pixels)?;
        self.apply_into(&image, rng, out);
        Ok(())
    }

    /// Like [`Self::decode_and_apply_into`], returning a new buffer.
    pub fn decode_and_apply<R: Rng + ?Sized>(
        &self,
        bytes: &[u8],
        max_pixels: u64,
        rng: &mut R,
    ) -> Result<Vec<f32>, DecodeError> {
        let mut out = vec![0.0; self.output_len()];
        self.decode_and_apply_into(bytes, max_pixels, rng, &mut out)?;
        Ok(out)
    }

    #[cfg(feature = "turbojpeg")]
    fn turbo_decode_and_apply<R: Rng + ?Sized, P: OutputPixel>(
        &self,
        workspace: &mut Workspace,
        bytes: &[u8],
        max_pixels: u64,
        rng: &mut R,
        out: &mut [P],
    ) -> TurboOutcome {
        let Some(decoder) = turbo_decoder(&mut workspace.turbo) else {
            return TurboOutcome::NotHandled;
        };
        let (width, height) = match decoder.dimensions(bytes) {
            Ok(dimensions) => dimensions,
            Err(e) if e.warning => return TurboOutcome::Rejected(DecodeError::corrupt_jpeg(&e)),
            Err(_) => return TurboOutcome::NotHandled,
        };
        if let Err(e) = check_pixel_limit(width, height, max_pixels) {
            return TurboOutcome::Rejected(e);
        }
        let region = self.source_region(width, height, rng);
        let eighths = self.jpeg_draft.eighths_for(region, self.size);
        let (decoded_width, decoded_height) =
            match decoder.decode_scaled_into(bytes, (width, height), eighths, &mut workspace.decoded) {
                Ok(decoded) => decoded,
                // Truncated or corrupt: rejected at any scale, as a full decode rejects it.
                Err(e) if e.warning => return TurboOutcome::Rejected(DecodeError::corrupt_jpeg(&e)),
                Err(_) => return TurboOutcome::Failed((region, width, height)),
            };
        resample_region(
            &workspace.decoded,
            decoded_width,
            decoded_height,
            region.scaled(eighths, decoded_width, decoded_height),
            self.size,
            &mut workspace.resizer,
            &mut workspace.resized,
        );
        P::write_chw(&workspace.resized, out);
        TurboOutcome::Done
    }

    /// Where the output comes from in a `width`×`height` image: the random crop (train), or
    /// the center crop of the shorter-side resize mapped back to source pixels (eval).
    fn source_region<R: Rng + ?Sized>(&self, width: u32, height: u32, rng: &mut R) -> SourceRegion {
        match &self.random_crop {
            Some(params) => {
                let crop = params.sample(width, height, rng);
                SourceRegion {
                    left: f64::from(crop.left),
                    top: f64::from(crop.top),
                    width: f64::from(crop.width),
                    height: f64::from(crop.height),
                }
            }
            None => {
                // Resizing the whole image and cropping equals resampling the crop's preimage:
                // each output pixel's filter taps depend only on its position and the scale,
                // and taps still reach outside the region into the image, as in Pillow.
                let (resized_width, resized_height) = shorter_side_resized(width, height, self.size);
                let crop = center_crop_box(resized_width, resized_height, self.size);
                let scale_x = f64::from(width) / f64::from(resized_width);
                let scale_y = f64::from(height) / f64::from(resized_height);
                SourceRegion {
                    left: f64::from(crop.left) * scale_x,
                    top: f64::from(crop.top) * scale_y,
                    width: f64::from(crop.width) * scale_x,
                    height: f64::from(crop.height) * scale_y,
                }
            }
        }
    }

    /// The 8-bit `size`×`size` image before normalisation.
    pub fn resize_and_crop<R: Rng + ?Sized>(&self, image: &RgbImage, rng: &mut R) -> RgbImage {
        let region = self.source_region(image.width(), image.height(), rng);
        let mut resized = Vec::new();
        with_workspace(|workspace| self.resample(image, region, &mut workspace.resizer, &mut resized));
        RgbImage::from_raw(self.size, self.size, resized).expect("resample_region fills size×size×3 bytes")
    }

    /// Resample `region` of `image` to `size`×`size` packed RGB in `resized`.
    fn resample(&self, image: &RgbImage, region: SourceRegion, resizer: &mut fir::Resizer, resized: &mut Vec<u8>) {
        resample_region(
            image.as_raw(),
            image.width(),
            image.height(),
            region,
            self.size,
            resizer,
            resized,
        );
    }
}

/// What the libjpeg-turbo path did with a JPEG.
#[cfg(feature = "turbojpeg")]
enum TurboOutcome {
    /// Transformed into the output.
    Done,
    /// A definite rejection (too many pixels, truncated or corrupt data).
    Rejected(DecodeError),
    /// Header unreadable or no decoder: the generic path decides, RNG untouched.
    NotHandled,
    /// The crop was drawn (region, full width, full height) but libjpeg-turbo cannot decode
    /// this JPEG (a fatal error, not a warning about the data).
    Failed((SourceRegion, u32, u32)),
}

/// Resample `region` of the packed RGB `src` (`width`×`height`) onto `size`×`size` with the
/// bicubic kernel, into `dst` (resized to 3·size² bytes).
fn resample_region(
    src: &[u8],
    width: u32,
    height: u32,
    region: SourceRegion,
    size: u32,
    resizer: &mut fir::Resizer,
    dst: &mut Vec<u8>,
) {
    // No clear(): the resize overwrites every byte, so only a grown tail needs zeroing.
    dst.resize(3 * size as usize * size as usize, 0);
    // Callers pass buffers of 3·width·height bytes and regions inside the image (crops are
    // drawn inside it, eval regions lie within it, scaled regions inside the rounded-up
    // scaled image), so these cannot fail on any input data.
    let src =
        fir::images::ImageRef::new(width, height, src, fir::PixelType::U8x3).expect("source buffer is width×height×3");
    let mut dst = fir::images::Image::from_slice_u8(size, size, dst, fir::PixelType::U8x3)
        .expect("destination buffer is size×size×3");
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::CatmullRom))
        .crop(region.left, region.top, region.width, region.height);
    resizer
        .resize(&src, &mut dst, &options)
        .expect("same pixel types, crop inside the source");
}

/// The pixel type a transform writes: `f32` for CLIP-normalised values, or `u8` for the
/// resized 8-bit levels, left for the consumer to normalise (e.g. on the GPU, after a
/// transfer of a quarter of the bytes). Both are planar CHW, 3 × size × size values.
pub trait OutputPixel: Copy + Default + Send + Sync + 'static {
    /// Packed 8-bit RGB (HWC) → CHW planes of this type into `out` (3 × pixels long).
    fn write_chw(rgb: &[u8], out: &mut [Self]);
}

impl OutputPixel for f32 {
    /// CLIP-normalised per channel, `level · 1/(255·std) − mean/std` in f32
    /// ([`crate::chw::normalized_level`]).
    fn write_chw(rgb: &[u8], out: &mut [f32]) {
        chw::rgb_to_planes_normalized(rgb, out);
    }
}

impl OutputPixel for u8 {
    /// The levels as they are, only reordered from HWC to CHW.
    fn write_chw(rgb: &[u8], out: &mut [u8]) {
        chw::rgb_to_planes_u8(rgb, out);
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

/// 8-bit RGB (HWC) → CLIP-normalised f32 CHW ([`crate::chw::normalized_level`]).
pub fn normalize_chw(image: &RgbImage, out: &mut [f32]) {
    chw::rgb_to_planes_normalized(image.as_raw(), out);
}

#[cfg(test)]
mod tests;
