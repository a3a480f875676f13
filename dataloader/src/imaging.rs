//! Image decode (JPEG/PNG, alpha over white, size limit) and open_clip's image transforms.
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
#[cfg(feature = "turbojpeg")]
use crate::turbojpeg::TurboDecoder;

/// Default pixel limit for decoding (about 89 megapixels, PIL's decompression-bomb limit).
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;
/// A thread's decode buffer is freed after an image bigger than this (bytes), so one huge
/// image does not pin its memory for the rest of the run.
const MAX_KEPT_DECODE_BUFFER: usize = 64 << 20;

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

#[cfg_attr(not(feature = "turbojpeg"), allow(dead_code))]
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

/// Decode image bytes to 8-bit RGB; transparent pixels are composited onto white.
///
/// Images with more than `max_pixels` pixels are rejected before their pixels are decoded.
/// JPEGs go through libjpeg-turbo (with the `turbojpeg` feature), falling back to the `image`
/// crate for what it rejects (CMYK, truncated or corrupt data), so that what the image crate
/// can decode is never skipped.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::empty());
    }
    #[cfg(feature = "turbojpeg")]
    if is_jpeg(bytes) {
        let turbo = with_workspace(|workspace| {
            let decoder = turbo_decoder(&mut workspace.turbo)?;
            let (width, height) = decoder.dimensions(bytes).ok()?;
            if let Err(e) = check_pixel_limit(width, height, max_pixels) {
                return Some(Err(e));
            }
            let mut pixels = Vec::new();
            let (width, height) = decoder.decode_into(bytes, 1, &mut pixels).ok()?;
            RgbImage::from_raw(width, height, pixels).map(Ok)
        });
        if let Some(result) = turbo {
            return result;
        }
    }
    decode_rgb_with_image_crate(bytes, max_pixels)
}

/// [`decode_rgb`] through the `image` crate only (zune-jpeg for JPEG).
pub fn decode_rgb_with_image_crate(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::empty());
    }
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| DecodeError::undecodable(e.to_string()))
    };
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| DecodeError::undecodable(e.to_string()))?;
    check_pixel_limit(width, height, max_pixels)?;
    let mut reader = reader()?;
    // Dimensions were checked above; the decoder's own default allocation cap (512 MiB)
    // would otherwise reject images that the configured pixel limit allows.
    reader.limits(Limits::no_limits());
    let decoded = reader.decode().map_err(|e| DecodeError::undecodable(e.to_string()))?;
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
            resample_region(
                image.as_raw(),
                image.width(),
                image.height(),
                region,
                self.size,
                &mut workspace.resizer,
                &mut workspace.resized,
            );
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
        let Ok((width, height)) = decoder.dimensions(bytes) else {
            return TurboOutcome::NotHandled;
        };
        if let Err(e) = check_pixel_limit(width, height, max_pixels) {
            return TurboOutcome::Rejected(e);
        }
        let region = self.source_region(width, height, rng);
        let eighths = self.jpeg_draft.eighths_for(region, self.size);
        let Ok((decoded_width, decoded_height)) =
            decoder.decode_scaled_into(bytes, (width, height), eighths, &mut workspace.decoded)
        else {
            return TurboOutcome::Failed((region, width, height));
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
        with_workspace(|workspace| {
            resample_region(
                image.as_raw(),
                image.width(),
                image.height(),
                region,
                self.size,
                &mut workspace.resizer,
                &mut resized,
            )
        });
        RgbImage::from_raw(self.size, self.size, resized).expect("resample_region fills size×size×3 bytes")
    }
}

/// What the libjpeg-turbo path did with a JPEG.
#[cfg(feature = "turbojpeg")]
enum TurboOutcome {
    /// Transformed into the output.
    Done,
    /// A definite rejection (too many pixels).
    Rejected(DecodeError),
    /// Header unreadable or no decoder: the generic path decides, RNG untouched.
    NotHandled,
    /// The crop was drawn (region, full width, full height) but decoding failed.
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
    fn u8_output_is_the_f32_output_before_normalisation() {
        // A JPEG (the libjpeg-turbo reduced-scale path) and a PNG (the generic path), train and
        // eval transforms: the same crop, the u8 levels normalise to the f32 values exactly.
        let image = RgbImage::from_fn(96, 64, |x, y| Rgb([(x * 5) as u8, (y * 3 + x) as u8, (x ^ y) as u8]));
        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(image.clone())
            .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        let png = encode_png(DynamicImage::ImageRgb8(image));
        for transform in [ImageTransform::train(16), ImageTransform::eval(16)] {
            for bytes in [&jpeg, &png] {
                let mut as_f32 = vec![0f32; transform.output_len()];
                let mut as_u8 = vec![0u8; transform.output_len()];
                let mut rng = ChaCha8Rng::seed_from_u64(9);
                transform
                    .decode_and_apply_into(bytes, DEFAULT_MAX_PIXELS, &mut rng, &mut as_f32)
                    .unwrap();
                let mut rng = ChaCha8Rng::seed_from_u64(9);
                transform
                    .decode_and_apply_into(bytes, DEFAULT_MAX_PIXELS, &mut rng, &mut as_u8)
                    .unwrap();
                let plane = 16 * 16;
                let normalised: Vec<f32> = as_u8
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| chw::normalized_level(i / plane, v))
                    .collect();
                assert_eq!(normalised, as_f32);
                assert!(as_u8.iter().any(|&v| v != as_u8[0]), "a flat image tests nothing");
            }
        }
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
    /// Tolerances of a reduced-scale decode against the full decode, in normalised units
    /// (one 8-bit level ≈ 0.015): at most 10 levels at any value (measured on the fixture:
    /// 7.5, at the emoji's sharp outline) and under one level on average (measured 0.6–0.7).
    const REDUCED_SCALE_MAX_DIFF: f32 = 0.15;
    const REDUCED_SCALE_MEAN_DIFF: f32 = 0.015;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn png_pixels(name: &str) -> RgbImage {
        image::load_from_memory(&fixture(name)).unwrap().to_rgb8()
    }

    /// Max and mean absolute difference of two normalised outputs.
    fn diff_stats(a: &[f32], b: &[f32]) -> (f32, f32) {
        assert_eq!(a.len(), b.len());
        let diffs: Vec<f32> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
        let max = diffs.iter().cloned().fold(0.0, f32::max);
        (max, diffs.iter().sum::<f32>() / diffs.len() as f32)
    }

    // Fixtures from scripts/reference/make_jpeg_fixture.py (PIL 12 with libjpeg-turbo).
    #[cfg(feature = "turbojpeg")]
    #[test]
    fn jpeg_decode_is_pils_pixel_for_pixel() {
        let decoded = decode_rgb(&fixture("jpeg_input.jpg"), DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(decoded, png_pixels("jpeg_pil_full.png"));
    }

    #[cfg(feature = "turbojpeg")]
    #[test]
    fn reduced_scale_jpeg_decode_is_pils_draft_mode() {
        let jpeg = fixture("jpeg_input.jpg");
        let mut decoder = TurboDecoder::new().unwrap();
        let mut pixels = Vec::new();
        for denominator in [2, 4] {
            let (width, height) = decoder.decode_into(&jpeg, denominator, &mut pixels).unwrap();
            let ours = RgbImage::from_raw(width, height, pixels.clone()).unwrap();
            assert_eq!(
                ours,
                png_pixels(&format!("jpeg_pil_draft{denominator}.png")),
                "1/{denominator}"
            );
        }
    }

    #[test]
    fn draft_scale_is_the_largest_reduction_that_still_covers_the_output() {
        let region = |width: f64, height: f64| SourceRegion {
            left: 0.0,
            top: 0.0,
            width,
            height,
        };
        let eighths = |width, height, size| JpegDraft::PowerOfTwo.eighths_for(region(width, height), size);
        assert_eq!(eighths(256.0, 192.0, 224), 8);
        assert_eq!(eighths(448.0, 500.0, 224), 4);
        assert_eq!(eighths(447.9, 2000.0, 224), 8);
        assert_eq!(eighths(1000.0, 900.0, 224), 2);
        assert_eq!(eighths(4000.0, 3000.0, 224), 1);
        assert_eq!(eighths(192.0, 192.0, 64), 4);
        assert_eq!(JpegDraft::Full.eighths_for(region(4000.0, 3000.0), 224), 8);
    }

    #[test]
    fn scaled_region_stays_inside_the_decoded_image() {
        let region = SourceRegion {
            left: 3.0,
            top: 1.0,
            width: 37.0,
            height: 20.0,
        };
        // 40×21 at 1/2 decodes to 20×11 (rounded up); the region maps to 1.5 + 18.5, 0.5 + 10.
        let half = region.scaled(4, 20, 11);
        assert_eq!((half.left, half.top, half.width, half.height), (1.5, 0.5, 18.5, 10.0));
        // Clamped where rounding would put it past the edge.
        let clamped = region.scaled(4, 19, 10);
        assert_eq!(
            (clamped.left + clamped.width, clamped.top + clamped.height),
            (19.0, 10.0)
        );
    }

    #[test]
    fn decode_and_apply_without_reduction_equals_decode_then_apply() {
        // 256×192 with outputs too big for a reduced decode: the very same floats.
        let jpeg = fixture("jpeg_input.jpg");
        let png = encode_png(DynamicImage::ImageRgb8(png_pixels("jpeg_pil_full.png")));
        for bytes in [&jpeg, &png] {
            for transform in [ImageTransform::train(112), ImageTransform::eval(100)] {
                let mut rng = ChaCha8Rng::seed_from_u64(7);
                let fused = transform.decode_and_apply(bytes, DEFAULT_MAX_PIXELS, &mut rng).unwrap();
                let after_fused: u64 = rng.gen();
                let mut rng = ChaCha8Rng::seed_from_u64(7);
                let image = decode_rgb(bytes, DEFAULT_MAX_PIXELS).unwrap();
                let separate = transform.apply(&image, &mut rng);
                assert_eq!(fused, separate, "{transform:?}");
                assert_eq!(after_fused, rng.gen::<u64>(), "same RNG draws");
            }
        }
    }

    #[test]
    fn full_draft_is_decode_then_apply_even_where_a_reduction_fits() {
        // eval(64) of the 256×192 fixture would decode at 1/2 by default.
        let jpeg = fixture("jpeg_input.jpg");
        let full = decode_rgb(&jpeg, DEFAULT_MAX_PIXELS).unwrap();
        for transform in [ImageTransform::eval(64), ImageTransform::train(40)] {
            let transform = ImageTransform {
                jpeg_draft: JpegDraft::Full,
                ..transform
            };
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let fused = transform.decode_and_apply(&jpeg, DEFAULT_MAX_PIXELS, &mut rng).unwrap();
            let separate = transform.apply(&full, &mut ChaCha8Rng::seed_from_u64(3));
            assert_eq!(fused, separate, "{transform:?}");
        }
    }

    #[test]
    fn reduced_scale_decode_stays_close_to_full_decode() {
        // eval(64) of 256×192 decodes at 1/2 (192/2 ≥ 64 > 192/4); train(40) at 1/4 for most
        // crops. The IDCT's downscaling is a different low-pass than the bicubic kernel's
        // (and works on the JPEG's chroma before upsampling), so sharp edges differ by a few
        // levels; smooth areas hardly at all.
        let jpeg = fixture("jpeg_input.jpg");
        let full = decode_rgb(&jpeg, DEFAULT_MAX_PIXELS).unwrap();
        for transform in [ImageTransform::eval(64), ImageTransform::train(40)] {
            for seed in 0..4 {
                let reduced = transform
                    .decode_and_apply(&jpeg, DEFAULT_MAX_PIXELS, &mut ChaCha8Rng::seed_from_u64(seed))
                    .unwrap();
                let reference = transform.apply(&full, &mut ChaCha8Rng::seed_from_u64(seed));
                let (max, mean) = diff_stats(&reduced, &reference);
                eprintln!("{transform:?} seed {seed}: max |diff| {max}, mean |diff| {mean}");
                // One 8-bit level is about 0.015 in normalised units.
                assert!(max < REDUCED_SCALE_MAX_DIFF, "max |diff| {max}");
                assert!(mean < REDUCED_SCALE_MEAN_DIFF, "mean |diff| {mean}");
                #[cfg(feature = "turbojpeg")]
                assert_ne!(reduced, reference, "the reduced decode was used");
            }
        }
    }

    #[test]
    fn decode_and_apply_rejects_bad_bytes_with_reasons() {
        let transform = ImageTransform::eval(8);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let reason = |bytes: &[u8], max_pixels: u64, rng: &mut ChaCha8Rng| {
            transform.decode_and_apply(bytes, max_pixels, rng).unwrap_err().reason
        };
        let jpeg = fixture("jpeg_input.jpg");
        assert_eq!(reason(&[], 100, &mut rng), SkipReason::EmptyImage);
        assert_eq!(
            reason(b"\xff\xd8\xff garbage", 100, &mut rng),
            SkipReason::UndecodableImage
        );
        assert_eq!(reason(&jpeg, 256 * 192 - 1, &mut rng), SkipReason::ImageTooLarge);
        // A truncated JPEG is left to the image crate, which pads the missing rows: the
        // same decision as before libjpeg-turbo was used.
        let truncated = &jpeg[..jpeg.len() / 3];
        assert_eq!(
            transform
                .decode_and_apply(truncated, DEFAULT_MAX_PIXELS, &mut rng)
                .is_ok(),
            decode_rgb_with_image_crate(truncated, DEFAULT_MAX_PIXELS).is_ok()
        );
        assert!(transform.decode_and_apply(&jpeg, 256 * 192, &mut rng).is_ok());
    }
}
