//! A 64-bit perceptual hash (DCT pHash) and the Hamming distance between two of them.
//!
//! The image is decoded (`dataloader::decode_rgb`: alpha dropped, as PIL does), turned grey
//! (Rec. 601 luma, as the `image` crate's `to_luma8` does), scaled to 32×32, and transformed
//! with a 2-D DCT-II; the 8×8 lowest frequencies (the DC term included) are compared with their
//! median: bit `63 − (8u + v)` is set when coefficient (u, v) is above it. Re-encoding, mild resizing
//! or a brightness shift moves few of these bits; a different picture moves about half.
use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, RgbImage};

/// Side of the grey square the DCT runs on.
const GRID: usize = 32;
/// Side of the block of low frequencies that make up the hash.
const LOW: usize = 8;

/// The pHash of a decoded image.
pub fn phash(rgb: RgbImage) -> u64 {
    let grey = DynamicImage::ImageRgb8(rgb).to_luma8();
    let small = downscale(&grey);
    let coefficients = low_frequency_dct(&small);
    let mut sorted = coefficients;
    sorted.sort_by(f64::total_cmp);
    let median = (sorted[LOW * LOW / 2 - 1] + sorted[LOW * LOW / 2]) / 2.0;
    coefficients
        .iter()
        .fold(0u64, |bits, &c| (bits << 1) | u64::from(c > median))
}

/// Number of differing bits.
pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

fn downscale(grey: &GrayImage) -> Vec<f64> {
    let side = GRID as u32;
    // The box-filtered thumbnail is fast and fine for shrinking; it is not meant for growing,
    // so images under 32 px on a side go through a triangle filter instead.
    let small = if grey.width() >= side && grey.height() >= side {
        image::imageops::thumbnail(grey, side, side)
    } else {
        image::imageops::resize(grey, side, side, FilterType::Triangle)
    };
    small.pixels().map(|p| f64::from(p.0[0])).collect()
}

/// DCT-II coefficients (u, v) for u, v < 8 of a 32×32 row-major grid, row-major.
fn low_frequency_dct(pixels: &[f64]) -> [f64; LOW * LOW] {
    // cos((2x + 1) u π / 2N), the basis shared by rows and columns.
    let mut basis = [[0.0f64; GRID]; LOW];
    for (u, row) in basis.iter_mut().enumerate() {
        for (x, value) in row.iter_mut().enumerate() {
            *value = ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / (2 * GRID) as f64).cos();
        }
    }
    // Along rows first: per image row y, the 8 horizontal frequencies v.
    let mut by_rows = [[0.0f64; LOW]; GRID];
    for (y, out) in by_rows.iter_mut().enumerate() {
        let row = &pixels[y * GRID..(y + 1) * GRID];
        for (v, value) in out.iter_mut().enumerate() {
            *value = row.iter().zip(&basis[v]).map(|(p, b)| p * b).sum();
        }
    }
    // Then down columns: the vertical frequencies u. Orthonormal scaling (α₀ = √(1/N),
    // αₖ = √(2/N)) weighs the DC row and column less, which moves them against the median,
    // so it is applied as in the textbook pHash.
    let mut out = [0.0f64; LOW * LOW];
    for u in 0..LOW {
        for v in 0..LOW {
            let sum: f64 = (0..GRID).map(|y| by_rows[y][v] * basis[u][y]).sum();
            let scale_u = if u == 0 {
                (1.0 / GRID as f64).sqrt()
            } else {
                (2.0 / GRID as f64).sqrt()
            };
            let scale_v = if v == 0 {
                (1.0 / GRID as f64).sqrt()
            } else {
                (2.0 / GRID as f64).sqrt()
            };
            out[u * LOW + v] = sum * scale_u * scale_v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dct_of_a_flat_image_is_only_dc() {
        let flat = vec![100.0; GRID * GRID];
        let c = low_frequency_dct(&flat);
        // Orthonormal DC of a constant c over N×N is c·N.
        assert!((c[0] - 100.0 * GRID as f64).abs() < 1e-9, "{}", c[0]);
        assert!(c[1..].iter().all(|x| x.abs() < 1e-9));
    }

    #[test]
    fn dct_matches_the_textbook_sum_on_a_ramp() {
        let pixels: Vec<f64> = (0..GRID * GRID).map(|i| ((i * 37) % 251) as f64).collect();
        let c = low_frequency_dct(&pixels);
        let n = GRID as f64;
        let alpha = |k: usize| if k == 0 { (1.0 / n).sqrt() } else { (2.0 / n).sqrt() };
        for (u, v) in [(0, 0), (1, 0), (0, 3), (5, 7)] {
            let mut sum = 0.0;
            for y in 0..GRID {
                for x in 0..GRID {
                    sum += pixels[y * GRID + x]
                        * ((2 * y + 1) as f64 * u as f64 * std::f64::consts::PI / (2.0 * n)).cos()
                        * ((2 * x + 1) as f64 * v as f64 * std::f64::consts::PI / (2.0 * n)).cos();
                }
            }
            let expected = alpha(u) * alpha(v) * sum;
            assert!((c[u * LOW + v] - expected).abs() < 1e-6, "({u},{v})");
        }
    }

    #[test]
    fn hamming_counts_bits() {
        assert_eq!(hamming(0, u64::MAX), 64);
        assert_eq!(hamming(0b1011, 0b0001), 2);
    }
}
