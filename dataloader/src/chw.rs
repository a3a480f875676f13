//! Packed 8-bit RGB (HWC) → planar CHW, as u8 levels or CLIP-normalised f32: the last step of
//! every transformed image, writing into its slot of a batch buffer.
//!
//! On x86-64 with AVX2 (checked at run time) 16 pixels at a time are split into planes with
//! byte shuffles, and where the planes are aligned the writes are non-temporal: a batch
//! buffer (154 MB of f32 at batch 256) is far out of cache, and ordinary stores would first
//! read every line they write. Elsewhere, and for the last pixels, a scalar loop computes the
//! same values, so the output never depends on the CPU.
//!
//! Normalisation is `level · scale + shift` with [`CLIP_PIXEL_SCALE`] = 1/(255·std) and
//! [`CLIP_PIXEL_SHIFT`] = −mean/std, a multiply then an add, each rounded in f32 (never a fused
//! multiply-add). That is also what the trainer does on the device for u8 batches, so the two
//! `data.normalize` modes give bit-identical images.

/// CLIP (OpenAI) per-channel mean, RGB.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP (OpenAI) per-channel standard deviation, RGB.
// Digits as open_clip's constants.py writes them, beyond f32 precision on purpose.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Per channel, 1/(255·std): the factor of an 8-bit level in CLIP normalisation (computed in
/// f64, rounded once).
pub const CLIP_PIXEL_SCALE: [f32; 3] = [
    (1.0 / (255.0 * CLIP_STD[0] as f64)) as f32,
    (1.0 / (255.0 * CLIP_STD[1] as f64)) as f32,
    (1.0 / (255.0 * CLIP_STD[2] as f64)) as f32,
];

/// Per channel, −mean/std: the offset in CLIP normalisation (computed in f64, rounded once).
pub const CLIP_PIXEL_SHIFT: [f32; 3] = [
    (-(CLIP_MEAN[0] as f64) / CLIP_STD[0] as f64) as f32,
    (-(CLIP_MEAN[1] as f64) / CLIP_STD[1] as f64) as f32,
    (-(CLIP_MEAN[2] as f64) / CLIP_STD[2] as f64) as f32,
];

/// The CLIP-normalised value of 8-bit `level` in `channel` (0 = R, 1 = G, 2 = B), exactly as
/// the loader's f32 output holds it.
pub fn normalized_level(channel: usize, level: u8) -> f32 {
    f32::from(level) * CLIP_PIXEL_SCALE[channel] + CLIP_PIXEL_SHIFT[channel]
}

/// `rgb` (packed, 3 bytes per pixel) → three u8 planes in `out` (R, G, B; `rgb.len()` bytes).
pub fn rgb_to_planes_u8(rgb: &[u8], out: &mut [u8]) {
    if use_avx2(rgb, out.len()) {
        // SAFETY: AVX2 (and with it SSSE3) is present; `use_avx2` checked the lengths.
        #[cfg(target_arch = "x86_64")]
        return unsafe { avx2::planes_u8(rgb, out) };
    }
    planes_u8_scalar(rgb, out, 0);
}

/// `rgb` (packed, 3 bytes per pixel) → three CLIP-normalised f32 planes in `out` (R, G, B;
/// `rgb.len()` values).
pub fn rgb_to_planes_normalized(rgb: &[u8], out: &mut [f32]) {
    if use_avx2(rgb, out.len()) {
        // SAFETY: AVX2 (and with it SSSE3) is present; `use_avx2` checked the lengths.
        #[cfg(target_arch = "x86_64")]
        return unsafe { avx2::planes_normalized(rgb, out) };
    }
    planes_normalized_scalar(rgb, out, 0);
}

/// Whether the AVX2 code can run, after checking (for either code) that `rgb` is whole pixels
/// and the output has as many values.
fn use_avx2(rgb: &[u8], out_len: usize) -> bool {
    assert_eq!(out_len, rgb.len(), "output buffer length");
    assert_eq!(rgb.len() % 3, 0, "packed RGB length");
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The u8 planes of pixels `from..` (the SIMD code does the ones before).
fn planes_u8_scalar(rgb: &[u8], out: &mut [u8], from: usize) {
    planes_scalar(rgb, out, from, |_, level| level);
}

/// The normalised planes of pixels `from..`.
fn planes_normalized_scalar(rgb: &[u8], out: &mut [f32], from: usize) {
    let tables = normalization_table();
    planes_scalar(rgb, out, from, |channel, level| tables[channel][usize::from(level)]);
}

/// Pixels `from..` of `rgb` into the three planes of `out`, each byte mapped by
/// `value(channel, level)`.
#[inline(always)]
fn planes_scalar<T>(rgb: &[u8], out: &mut [T], from: usize, value: impl Fn(usize, u8) -> T) {
    let plane = rgb.len() / 3;
    let (red, rest) = out.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    // Zipped iterators rather than indexing: no bounds checks in the per-pixel loop.
    let pixels = rgb[3 * from..].chunks_exact(3);
    for (((pixel, r), g), b) in pixels
        .zip(&mut red[from..])
        .zip(&mut green[from..])
        .zip(&mut blue[from..])
    {
        *r = value(0, pixel[0]);
        *g = value(1, pixel[1]);
        *b = value(2, pixel[2]);
    }
}

/// [`normalized_level`] of every level, per channel.
fn normalization_table() -> &'static [[f32; 256]; 3] {
    static TABLE: std::sync::OnceLock<[[f32; 256]; 3]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|c| std::array::from_fn(|v| normalized_level(c, v as u8))))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{planes_normalized_scalar, planes_u8_scalar, CLIP_PIXEL_SCALE, CLIP_PIXEL_SHIFT};

    /// Pixels per step: 48 bytes in, 16 values out per plane.
    const STEP: usize = 16;

    /// `pshufb` masks picking one channel's bytes out of each of the three 16-byte loads
    /// (0x80 = zero); OR-ing the three results gives that channel's 16 values in order.
    const fn channel_masks(channel: usize) -> [[u8; 16]; 3] {
        let mut masks = [[0x80u8; 16]; 3];
        let mut pixel = 0;
        while pixel < STEP {
            let byte = 3 * pixel + channel;
            masks[byte / 16][pixel] = (byte % 16) as u8;
            pixel += 1;
        }
        masks
    }
    const MASKS: [[[u8; 16]; 3]; 3] = [channel_masks(0), channel_masks(1), channel_masks(2)];

    /// The R, G and B bytes of the 16 pixels at `src` (48 bytes).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn split16(src: *const u8) -> [__m128i; 3] {
        let loads = [
            _mm_loadu_si128(src.cast()),
            _mm_loadu_si128(src.add(16).cast()),
            _mm_loadu_si128(src.add(32).cast()),
        ];
        std::array::from_fn(|c| {
            let pick = |k: usize| _mm_shuffle_epi8(loads[k], _mm_loadu_si128(MASKS[c][k].as_ptr().cast()));
            _mm_or_si128(_mm_or_si128(pick(0), pick(1)), pick(2))
        })
    }

    /// Whether every plane starts on an `align`-byte boundary (then so does every store).
    fn planes_aligned<T>(out: &[T], plane: usize, align: usize) -> bool {
        (0..3).all(|c| (out.as_ptr() as usize + c * plane * std::mem::size_of::<T>()).is_multiple_of(align))
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn planes_u8(rgb: &[u8], out: &mut [u8]) {
        let plane = rgb.len() / 3;
        let steps = plane / STEP;
        let streaming = planes_aligned(out, plane, 16);
        let dst = out.as_mut_ptr();
        for step in 0..steps {
            let channels = split16(rgb.as_ptr().add(3 * STEP * step));
            for (c, values) in channels.into_iter().enumerate() {
                let at = dst.add(c * plane + STEP * step).cast::<__m128i>();
                if streaming {
                    _mm_stream_si128(at, values);
                } else {
                    _mm_storeu_si128(at, values);
                }
            }
        }
        if streaming {
            // Non-temporal stores are weakly ordered: make them visible before the buffer is
            // handed to another thread.
            _mm_sfence();
        }
        planes_u8_scalar(rgb, out, steps * STEP);
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn planes_normalized(rgb: &[u8], out: &mut [f32]) {
        let plane = rgb.len() / 3;
        let steps = plane / STEP;
        // 16 bytes, not 32: glibc's large allocations (the batch buffers) are 16 bytes past a
        // page boundary, so the streaming stores are 128-bit.
        let streaming = planes_aligned(out, plane, 16);
        let scale = CLIP_PIXEL_SCALE.map(|s| _mm256_set1_ps(s));
        let shift = CLIP_PIXEL_SHIFT.map(|s| _mm256_set1_ps(s));
        let dst = out.as_mut_ptr();
        for step in 0..steps {
            let channels = split16(rgb.as_ptr().add(3 * STEP * step));
            for (c, levels) in channels.into_iter().enumerate() {
                let at = dst.add(c * plane + STEP * step);
                for (half, bytes) in [levels, _mm_srli_si128::<8>(levels)].into_iter().enumerate() {
                    let level = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
                    // Multiply, then add: two roundings, as `normalized_level` and the device.
                    let value = _mm256_add_ps(_mm256_mul_ps(level, scale[c]), shift[c]);
                    if streaming {
                        _mm_stream_ps(at.add(8 * half), _mm256_castps256_ps128(value));
                        _mm_stream_ps(at.add(8 * half + 4), _mm256_extractf128_ps::<1>(value));
                    } else {
                        _mm256_storeu_ps(at.add(8 * half), value);
                    }
                }
            }
        }
        if streaming {
            _mm_sfence();
        }
        planes_normalized_scalar(rgb, out, steps * STEP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Pixel counts around the 16-pixel step, and the 224² of a real image.
    const PIXEL_COUNTS: [usize; 7] = [0, 1, 15, 16, 17, 161, 224 * 224];

    fn random_rgb(pixels: usize, seed: u64) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..3 * pixels).map(|_| rng.gen()).collect()
    }

    #[test]
    fn u8_planes_at_every_alignment_and_length() {
        for pixels in PIXEL_COUNTS {
            let rgb = random_rgb(pixels, pixels as u64);
            // Offsets 0..16 into a larger buffer: aligned (streaming) and unaligned stores.
            let mut backing = vec![0u8; 3 * pixels + 16];
            for offset in 0..16 {
                let out = &mut backing[offset..offset + 3 * pixels];
                rgb_to_planes_u8(&rgb, out);
                for (i, pixel) in rgb.chunks_exact(3).enumerate() {
                    for c in 0..3 {
                        assert_eq!(out[c * pixels + i], pixel[c], "pixel {i} channel {c} of {pixels}");
                    }
                }
            }
        }
    }

    #[test]
    fn normalized_planes_at_every_alignment_and_length() {
        for pixels in PIXEL_COUNTS {
            let rgb = random_rgb(pixels, 100 + pixels as u64);
            let mut backing = vec![0f32; 3 * pixels + 8];
            for offset in 0..8 {
                let out = &mut backing[offset..offset + 3 * pixels];
                rgb_to_planes_normalized(&rgb, out);
                for (i, pixel) in rgb.chunks_exact(3).enumerate() {
                    for c in 0..3 {
                        // Bit for bit, whichever code path ran.
                        assert_eq!(
                            out[c * pixels + i].to_bits(),
                            normalized_level(c, pixel[c]).to_bits(),
                            "pixel {i} channel {c} of {pixels}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn normalisation_is_clip_mean_and_std() {
        for c in 0..3 {
            for level in [0u8, 1, 77, 128, 254, 255] {
                let exact = (f64::from(level) / 255.0 - f64::from(CLIP_MEAN[c])) / f64::from(CLIP_STD[c]);
                let ours = f64::from(normalized_level(c, level));
                assert!(
                    (ours - exact).abs() < 1e-6,
                    "channel {c} level {level}: {ours} vs {exact}"
                );
            }
        }
        assert!(normalized_level(0, 0) < -1.7 && normalized_level(0, 255) > 1.9);
    }
}
