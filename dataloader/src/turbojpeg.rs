//! JPEG decoding through libjpeg-turbo's TurboJPEG API (statically linked, see build.rs),
//! including reduced-scale decoding: the IDCT produces 1/2, 1/4 or 1/8 of the pixels
//! directly, which is much cheaper than decoding everything and resizing.
//!
//! libjpeg-turbo is what PIL decodes with, and its defaults here (accurate integer IDCT,
//! fancy upsampling) are PIL's, so full-size decodes give PIL's pixels.
//!
//! Decoding stops at the library's first warning (`TJFLAG_STOPONWARNING`): a premature end
//! of data or corrupt entropy-coded data would otherwise decode "successfully" with the
//! missing part filled in grey. [`TurboError::warning`] tells such data apart from what the
//! library cannot decode at all (an unsupported colour conversion, say).
use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_uchar, c_ulong, c_void};

type TjHandle = *mut c_void;
/// TurboJPEG's `TJPF_RGB`: packed 8-bit R, G, B.
const PIXEL_FORMAT_RGB: c_int = 0;
/// `TJFLAG_STOPONWARNING` (turbojpeg.h of libjpeg-turbo 2.1.5, as linked by build.rs): a
/// warning ends the decode with an error instead of finishing with made-up pixels.
const FLAG_STOP_ON_WARNING: c_int = 8192;
/// `TJERR_WARNING` from `tjGetErrorCode` (`TJERR_FATAL` is 1).
const ERROR_CODE_WARNING: c_int = 0;

/// A failed TurboJPEG call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TurboError {
    /// The library's message.
    pub message: String,
    /// A warning turned into an error: the data is truncated or corrupt (and would have
    /// decoded with made-up pixels). `false` for what the library cannot decode at all.
    pub warning: bool,
}

impl TurboError {
    fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            warning: false,
        }
    }
}

extern "C" {
    fn tjInitDecompress() -> TjHandle;
    fn tjDestroy(handle: TjHandle) -> c_int;
    fn tjDecompressHeader3(
        handle: TjHandle,
        jpeg: *const c_uchar,
        jpeg_size: c_ulong,
        width: *mut c_int,
        height: *mut c_int,
        subsampling: *mut c_int,
        colorspace: *mut c_int,
    ) -> c_int;
    fn tjDecompress2(
        handle: TjHandle,
        jpeg: *const c_uchar,
        jpeg_size: c_ulong,
        dst: *mut c_uchar,
        width: c_int,
        pitch: c_int,
        height: c_int,
        pixel_format: c_int,
        flags: c_int,
    ) -> c_int;
    fn tjGetErrorStr2(handle: TjHandle) -> *mut c_char;
    fn tjGetErrorCode(handle: TjHandle) -> c_int;
}

/// A TurboJPEG decompressor (one per thread; it is not shared).
pub struct TurboDecoder {
    handle: TjHandle,
}

// The handle is owned exclusively and only used through `&mut self`; TurboJPEG instances
// may move between threads, they just must not be used by two at once.
unsafe impl Send for TurboDecoder {}

impl TurboDecoder {
    /// A new decompressor, or the library's message if it cannot be created.
    pub fn new() -> Result<Self, TurboError> {
        // SAFETY: no arguments; a null return is handled.
        let handle = unsafe { tjInitDecompress() };
        if handle.is_null() {
            return Err(TurboError::fatal("tjInitDecompress failed"));
        }
        Ok(Self { handle })
    }

    /// The library's error for the failed call, after which the handle is replaced: a
    /// TurboJPEG 2.x handle can keep state from a failed decode that breaks the next one.
    fn fail(&mut self) -> TurboError {
        // SAFETY: the handle is valid; the call only reads its error state.
        let warning = unsafe { tjGetErrorCode(self.handle) } == ERROR_CODE_WARNING;
        let error = TurboError {
            message: self.last_error(),
            warning,
        };
        // SAFETY: no arguments; a null return keeps the old handle, which is still valid.
        let fresh = unsafe { tjInitDecompress() };
        if !fresh.is_null() {
            // SAFETY: the old handle came from tjInitDecompress and is destroyed once.
            unsafe {
                tjDestroy(self.handle);
            }
            self.handle = fresh;
        }
        error
    }

    fn last_error(&self) -> String {
        // SAFETY: the handle is valid; the library returns a NUL-terminated static or
        // per-handle buffer that stays valid until the next call on the handle.
        unsafe {
            let message = tjGetErrorStr2(self.handle);
            if message.is_null() {
                "unknown TurboJPEG error".into()
            } else {
                CStr::from_ptr(message).to_string_lossy().into_owned()
            }
        }
    }

    /// Width and height from the JPEG header, without decoding pixels.
    pub fn dimensions(&mut self, jpeg: &[u8]) -> Result<(u32, u32), TurboError> {
        let (mut width, mut height, mut subsampling, mut colorspace) = (0, 0, 0, 0);
        // SAFETY: pointer and length describe `jpeg`; the out-pointers are live locals.
        let status = unsafe {
            tjDecompressHeader3(
                self.handle,
                jpeg.as_ptr(),
                jpeg.len() as c_ulong,
                &mut width,
                &mut height,
                &mut subsampling,
                &mut colorspace,
            )
        };
        if status != 0 {
            return Err(self.fail());
        }
        if width <= 0 || height <= 0 {
            return Err(TurboError::fatal(format!("zero dimension {width}x{height}")));
        }
        Ok((width as u32, height as u32))
    }

    /// Decode to packed RGB at 1/`denominator` scale (1, 2, 4 or 8) into `pixels` (resized
    /// to fit; its allocation is reused). Returns the decoded width and height, which are
    /// the full ones divided by `denominator`, rounded up. Library warnings (a truncated
    /// file, corrupt data) are errors with [`TurboError::warning`] set: the pixels would be
    /// partly made up.
    pub fn decode_into(
        &mut self,
        jpeg: &[u8],
        denominator: u32,
        pixels: &mut Vec<u8>,
    ) -> Result<(u32, u32), TurboError> {
        if !matches!(denominator, 1 | 2 | 4 | 8) {
            return Err(TurboError::fatal(format!("unsupported scale 1/{denominator}")));
        }
        let dimensions = self.dimensions(jpeg)?;
        self.decode_scaled_into(jpeg, dimensions, 8 / denominator, pixels)
    }

    /// Decode to packed RGB at `eighths`/8 scale (1 to 8; libjpeg-turbo's DCT scaling factors
    /// M/8) into `pixels`, for a JPEG whose header said `(width, height)` (from
    /// [`Self::dimensions`]). `pixels` is resized to fit and its allocation reused; every
    /// byte is overwritten on success. Returns the decoded size, the full one times
    /// `eighths`/8 rounded up (TurboJPEG's `TJSCALED`). Library warnings are errors, as in
    /// [`Self::decode_into`].
    pub fn decode_scaled_into(
        &mut self,
        jpeg: &[u8],
        (width, height): (u32, u32),
        eighths: u32,
        pixels: &mut Vec<u8>,
    ) -> Result<(u32, u32), TurboError> {
        if !(1..=8).contains(&eighths) {
            return Err(TurboError::fatal(format!("unsupported scale {eighths}/8")));
        }
        let scaled = |full: u32| ((u64::from(full) * u64::from(eighths)).div_ceil(8)) as u32;
        let (scaled_width, scaled_height) = (scaled(width), scaled(height));
        let len = 3 * scaled_width as usize * scaled_height as usize;
        // No clear(): bytes already there are overwritten by the decode, so only a grown
        // tail is zeroed (a full memset per image cost several percent of the loader's time).
        pixels.resize(len, 0);
        // SAFETY: `pixels` holds exactly 3·w·h bytes for the scaled size; TurboJPEG picks the
        // largest scaling factor whose output fits the requested width/height, which is
        // exactly eighths/8 since those sizes are its TJSCALED values and every factor M/8
        // is offered (the header is read again from these same bytes); pitch 0 means packed
        // rows.
        let status = unsafe {
            tjDecompress2(
                self.handle,
                jpeg.as_ptr(),
                jpeg.len() as c_ulong,
                pixels.as_mut_ptr(),
                scaled_width as c_int,
                0,
                scaled_height as c_int,
                PIXEL_FORMAT_RGB,
                FLAG_STOP_ON_WARNING,
            )
        };
        if status != 0 {
            return Err(self.fail());
        }
        Ok((scaled_width, scaled_height))
    }
}

impl Drop for TurboDecoder {
    fn drop(&mut self) {
        // SAFETY: the handle came from tjInitDecompress and is destroyed once.
        unsafe {
            tjDestroy(self.handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgb8(image)
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
            .unwrap();
        bytes
    }

    #[test]
    fn scaled_sizes_round_up() {
        let bytes = jpeg(37, 21);
        let mut decoder = TurboDecoder::new().unwrap();
        assert_eq!(decoder.dimensions(&bytes).unwrap(), (37, 21));
        let mut pixels = Vec::new();
        for (denominator, size) in [(1, (37, 21)), (2, (19, 11)), (4, (10, 6)), (8, (5, 3))] {
            assert_eq!(decoder.decode_into(&bytes, denominator, &mut pixels).unwrap(), size);
            assert_eq!(pixels.len(), 3 * (size.0 * size.1) as usize);
        }
        assert!(decoder.decode_into(&bytes, 3, &mut pixels).is_err());
    }

    #[test]
    fn truncated_and_garbage_are_errors() {
        let bytes = jpeg(64, 64);
        let mut decoder = TurboDecoder::new().unwrap();
        let mut pixels = Vec::new();
        let cut = decoder
            .decode_into(&bytes[..bytes.len() / 2], 1, &mut pixels)
            .unwrap_err();
        assert!(cut.warning, "a cut JPEG is a warning (premature end): {cut:?}");
        assert!(decoder.decode_into(b"\xff\xd8\xff not a jpeg", 1, &mut pixels).is_err());
        assert!(decoder.dimensions(&[]).is_err());
        // The handle still works after errors.
        assert_eq!(decoder.decode_into(&bytes, 2, &mut pixels).unwrap(), (32, 32));
    }
}
