//! Tests of image decoding and the train/eval transforms.
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
fn png_alpha_is_dropped_like_pil_convert_rgb() {
    // PIL's convert("RGB") (open_clip_train's and CLIP_benchmark's decode) keeps the colour
    // stored under a transparent pixel; dataloader/tests/transform_parity.rs checks PIL's own
    // output for RGBA, LA and palette images.
    let mut rgba = RgbaImage::new(3, 1);
    rgba.put_pixel(0, 0, Rgba([0, 0, 0, 0]));
    rgba.put_pixel(1, 0, Rgba([10, 20, 30, 255]));
    rgba.put_pixel(2, 0, Rgba([200, 100, 50, 128]));
    let bytes = encode_png(DynamicImage::ImageRgba8(rgba));
    let rgb = decode_rgb(&bytes, DEFAULT_MAX_PIXELS).unwrap();
    assert_eq!(rgb.get_pixel(0, 0), &Rgb([0, 0, 0]));
    assert_eq!(rgb.get_pixel(1, 0), &Rgb([10, 20, 30]));
    assert_eq!(rgb.get_pixel(2, 0), &Rgb([200, 100, 50]));
}

#[test]
fn alpha_is_composited_onto_white_for_rewriting() {
    let mut rgba = RgbaImage::new(3, 1);
    rgba.put_pixel(0, 0, Rgba([0, 0, 0, 0])); // fully transparent black → white
    rgba.put_pixel(1, 0, Rgba([10, 20, 30, 255])); // opaque → unchanged
    rgba.put_pixel(2, 0, Rgba([0, 0, 0, 128])); // half black over white → ~127
    let bytes = encode_png(DynamicImage::ImageRgba8(rgba));
    let rgb = decode_rgb_over_white(&bytes, DEFAULT_MAX_PIXELS).unwrap();
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
    // A truncated JPEG is refused by both decoders (see cut_jpegs_are_rejected_on_every_path).
    let truncated = &jpeg[..jpeg.len() / 3];
    assert_eq!(
        reason(truncated, DEFAULT_MAX_PIXELS, &mut rng),
        SkipReason::UndecodableImage
    );
    assert!(decode_rgb_with_image_crate(truncated, DEFAULT_MAX_PIXELS).is_err());
    assert!(transform.decode_and_apply(&jpeg, 256 * 192, &mut rng).is_ok());
}

/// A 256×256 JPEG with photo-like texture (smooth gradients, noise, edges), as a real photo
/// has: every MCU carries data, so a cut anywhere leaves rows missing.
fn textured_jpeg() -> Vec<u8> {
    let mut noise = ChaCha8Rng::seed_from_u64(11);
    let image = RgbImage::from_fn(256, 256, |x, y| {
        let wave = ((f64::from(x) / 9.0).sin() * 40.0 + (f64::from(y) / 13.0).cos() * 40.0) as i32;
        let edge = if (x / 32 + y / 48) % 2 == 0 { 60 } else { 0 };
        let grain: i32 = noise.gen_range(-20..20);
        let level = |base: i32| (base + wave + edge + grain).clamp(0, 255) as u8;
        Rgb([level(x as i32 / 2 + 40), level(y as i32 / 2 + 30), level(120)])
    });
    let mut bytes = Vec::new();
    DynamicImage::ImageRgb8(image)
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
        .unwrap();
    bytes
}

/// The JPEG cut at 25%, 50%, 75%, 90% and without its final EOI marker, by name.
fn cut_points(jpeg: &[u8]) -> Vec<(String, &[u8])> {
    let mut cuts: Vec<(String, &[u8])> = [25, 50, 75, 90]
        .iter()
        .map(|&percent| (format!("{percent}%"), &jpeg[..jpeg.len() * percent / 100]))
        .collect();
    assert_eq!(jpeg[jpeg.len() - 2..], [0xFF, 0xD9], "ends with EOI");
    cuts.push(("without EOI".into(), &jpeg[..jpeg.len() - 2]));
    cuts
}

#[test]
fn cut_jpegs_are_rejected_on_every_path() {
    for (name, jpeg) in [("fixture", fixture("jpeg_input.jpg")), ("textured", textured_jpeg())] {
        // Negative control: whole, it decodes on every path.
        assert!(decode_rgb(&jpeg, DEFAULT_MAX_PIXELS).is_ok(), "{name}");
        assert!(decode_rgb_with_image_crate(&jpeg, DEFAULT_MAX_PIXELS).is_ok(), "{name}");
        // eval(64) decodes at a reduced scale, train(200) at full size.
        for transform in [ImageTransform::eval(64), ImageTransform::train(200)] {
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            assert!(
                transform.decode_and_apply(&jpeg, DEFAULT_MAX_PIXELS, &mut rng).is_ok(),
                "{name}"
            );
        }
        let mut through = Vec::new();
        for (cut, bytes) in cut_points(&jpeg) {
            let mut outcomes = vec![
                ("decode_rgb", decode_rgb(bytes, DEFAULT_MAX_PIXELS).map(|_| ())),
                (
                    "image crate",
                    decode_rgb_with_image_crate(bytes, DEFAULT_MAX_PIXELS).map(|_| ()),
                ),
            ];
            for (path, transform) in [
                ("reduced", ImageTransform::eval(64)),
                ("full", ImageTransform::train(200)),
            ] {
                let mut rng = ChaCha8Rng::seed_from_u64(1);
                outcomes.push((
                    path,
                    transform
                        .decode_and_apply(bytes, DEFAULT_MAX_PIXELS, &mut rng)
                        .map(|_| ()),
                ));
            }
            for (path, outcome) in outcomes {
                match outcome {
                    Err(e) if e.reason == SkipReason::UndecodableImage =>
                    {
                        #[cfg(feature = "turbojpeg")]
                        if path != "image crate" {
                            assert!(e.detail.contains("truncated"), "{name} {cut} {path}: {e}");
                        }
                    }
                    other => through.push(format!("{name} cut {cut} via {path}: {other:?}")),
                }
            }
        }
        assert!(through.is_empty(), "cut JPEGs got through:\n{}", through.join("\n"));
    }
}

/// `jpeg` with its SOF0 frame header claiming `width`×`height`.
fn with_sof_size(jpeg: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut forged = jpeg.to_vec();
    let sof = forged
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline JPEG");
    // FFC0, length (2), precision (1), height (2), width (2).
    forged[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    forged[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    forged
}

/// A PNG chunk: length, type, data, CRC.
fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    chunk.extend_from_slice(kind);
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(&crc.sum().to_be_bytes());
    chunk
}

/// An 8-bit RGB PNG claiming `width`×`height`, whose IDAT is `raw` zlib-compressed.
fn forged_png(width: u32, height: u32, raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    zlib.write_all(raw).unwrap();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(b"IDAT", &zlib.finish().unwrap()));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

#[test]
fn forged_huge_headers_are_too_large_before_decoding() {
    let started = std::time::Instant::now();
    let jpeg = with_sof_size(&textured_jpeg(), 65000, 65000);
    let png = forged_png(100_000, 100_000, &[0u8; 64]);
    for (name, bytes) in [("jpeg 65000x65000", &jpeg), ("png 100000x100000", &png)] {
        assert_eq!(
            decode_rgb(bytes, DEFAULT_MAX_PIXELS).unwrap_err().reason,
            SkipReason::ImageTooLarge,
            "{name}"
        );
        assert_eq!(
            decode_rgb_with_image_crate(bytes, DEFAULT_MAX_PIXELS)
                .unwrap_err()
                .reason,
            SkipReason::ImageTooLarge,
            "{name}"
        );
        for transform in [ImageTransform::eval(64), ImageTransform::train(64)] {
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let err = transform
                .decode_and_apply(bytes, DEFAULT_MAX_PIXELS, &mut rng)
                .unwrap_err();
            assert_eq!(err.reason, SkipReason::ImageTooLarge, "{name}: {err}");
        }
    }
    // Rejected from the header: no time spent on pixels that are not there.
    assert!(started.elapsed().as_secs_f64() < 5.0, "{:?}", started.elapsed());
    // Negative control: the same forged PNG at a size the data fits is decoded.
    let row = |y: u8| [&[0u8][..], &[y; 3 * 4]].concat();
    let small = forged_png(4, 2, &[row(10), row(200)].concat());
    assert_eq!(
        decode_rgb(&small, DEFAULT_MAX_PIXELS).unwrap().get_pixel(0, 1),
        &Rgb([200, 200, 200])
    );
}

#[test]
fn png_with_a_zlib_bomb_idat_is_bounded() {
    // 64×64 RGB needs 64 × (1 + 192) bytes; the IDAT inflates to 64 MiB of zeros (~64 KiB
    // compressed). The decoder stops at what the image needs or fails; either way quickly.
    let png = forged_png(64, 64, &vec![0u8; 64 << 20]);
    assert!(png.len() < 200_000, "{}", png.len());
    let started = std::time::Instant::now();
    let outcome = decode_rgb(&png, DEFAULT_MAX_PIXELS);
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "zlib-bomb PNG: {:?} in {seconds:.3}s",
        outcome.as_ref().map(|i| i.dimensions())
    );
    match outcome {
        Ok(image) => assert_eq!(image.dimensions(), (64, 64)),
        Err(e) => assert_eq!(e.reason, SkipReason::UndecodableImage, "{e}"),
    }
    assert!(seconds < 5.0, "{seconds}s");
}
