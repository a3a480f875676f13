//! The cargo-fuzz harness (`dataloader::fuzz_harness`, fuzzed by `fuzz/`) on stable Rust:
//! a few thousand seeded pseudo-random and mutated real shards, read and decoded without a
//! panic. Runs in CI; the nightly fuzzer explores further from the same harness.
use std::io::Cursor;

use dataloader::fuzz_harness::{tar_reader_harness, HarnessReport};
use dataloader::{ShardSample, ShardWriter};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TAR_BLOCK: usize = 512;

fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let image = image::RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([
            (x * 9) as u8 ^ seed,
            (y * 13) as u8,
            seed,
            if x % 3 == 0 { 128 } else { 255 },
        ])
    });
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 20) as u8, (y * 20) as u8, 77]));
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Jpeg)
        .unwrap();
    out
}

/// Shards as `ferroclip shard` writes them: images, captions, json, labels.
fn writer_shard() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = ShardWriter::new(dir.path(), 100).unwrap();
    for i in 0..4u8 {
        let (image, ext) = if i % 2 == 0 {
            (png(6 + u32::from(i), 5, i), "png")
        } else {
            (jpeg(8, 8), "jpg")
        };
        let mut json = serde_json::Map::new();
        json.insert("caption".into(), format!("json caption {i}").into());
        writer
            .write(&ShardSample {
                key: None,
                image,
                image_ext: ext.into(),
                captions: vec![format!("caption {i}"), "second line".into()],
                label: (i != 2).then_some(i64::from(i)),
                json,
            })
            .unwrap();
    }
    let summary = writer.finish().unwrap();
    std::fs::read(&summary.shards[0]).unwrap()
}

/// A shard as other tools write it: PAX and GNU long-name headers, a directory entry, an
/// unrelated member, a duplicate extension.
fn foreign_shard() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8], pax: bool| {
        let mut header = if pax {
            tar::Header::new_ustar()
        } else {
            tar::Header::new_gnu()
        };
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        if pax {
            // Python's tarfile writes long names as a PAX `path` record.
            builder.append_pax_extensions([("path", name.as_bytes())]).unwrap();
            header.set_path("short.bin").unwrap();
            header.set_cksum();
            builder.append(&header, data).unwrap();
        } else {
            builder.append_data(&mut header, name, data).unwrap();
        }
    };
    let long = "d".repeat(130);
    add(&format!("{long}/a.png"), &png(4, 4, 3), false);
    add(&format!("{long}/a.txt"), b"long name caption", false);
    add("pax/b.jpg", &jpeg(5, 3), true);
    add("pax/b.txt", "caption with \u{e9}".as_bytes(), true);
    add("__index__", b"not a sample", false);
    add("c.txt", b"one", false);
    add("c.txt", b"two", false);
    add("e.json", br#"{"caption": ["x", "y"]}"#, false);
    add("e.png", &png(3, 2, 9), false);
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_size(0);
    dir.set_mode(0o755);
    builder.append_data(&mut dir, "somedir/", std::io::empty()).unwrap();
    builder.into_inner().unwrap()
}

/// Recompute a tar header's checksum so that a mutated header still parses and the reader
/// goes on to the member behind it.
fn fix_checksum(block: &mut [u8]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    let field = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(field.as_bytes());
}

/// One mutation of `input`, chosen by `rng`.
fn mutate(rng: &mut ChaCha8Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    if out.is_empty() {
        return (0..rng.gen_range(0..2048)).map(|_| rng.gen()).collect();
    }
    match rng.gen_range(0..8) {
        0 => {
            for _ in 0..rng.gen_range(1..9) {
                let i = rng.gen_range(0..out.len());
                out[i] ^= 1 << rng.gen_range(0..8);
            }
        }
        1 => {
            let interesting = [0u8, 0xff, b'0', b'7', b'9', b' ', b'.', b'/', 0x80];
            for _ in 0..rng.gen_range(1..5) {
                let i = rng.gen_range(0..out.len());
                out[i] = interesting[rng.gen_range(0..interesting.len())];
            }
        }
        2 => out.truncate(rng.gen_range(0..out.len())),
        3 => {
            let start = rng.gen_range(0..out.len());
            let end = rng.gen_range(start..=out.len().min(start + 2048));
            out.drain(start..end);
        }
        4 => {
            let start = rng.gen_range(0..out.len());
            let end = rng.gen_range(start..=out.len().min(start + 1024));
            let chunk: Vec<u8> = out[start..end].to_vec();
            let at = rng.gen_range(0..=out.len());
            out.splice(at..at, chunk);
        }
        5 => {
            // Splice: the head of one shard, the tail of another, at block boundaries.
            let cut = rng.gen_range(0..=out.len() / TAR_BLOCK) * TAR_BLOCK;
            let other_cut = rng.gen_range(0..=other.len() / TAR_BLOCK) * TAR_BLOCK;
            out.truncate(cut);
            out.extend_from_slice(&other[other_cut..]);
        }
        _ => {
            // A header field rewritten, checksum fixed: size, type, name, mode or magic.
            let blocks = out.len() / TAR_BLOCK;
            if blocks == 0 {
                return out;
            }
            let start = rng.gen_range(0..blocks) * TAR_BLOCK;
            let block = &mut out[start..start + TAR_BLOCK];
            match rng.gen_range(0..5) {
                0 => {
                    let size = [0u64, 1, 511, 512, 513, 1 << 20, 1 << 33, u64::MAX >> 1][rng.gen_range(0..8)];
                    let digits = format!("{:011o}\0", size % (1 << 33));
                    block[124..136].copy_from_slice(digits.as_bytes());
                }
                1 => block[156] = [b'0', b'5', b'x', b'g', b'L', b'K', b'S', b'2', 0][rng.gen_range(0..9)],
                2 => {
                    let name = ["", ".", "a.", ".b", "a/b/../c.txt", "x.TXT", "k.jpg.txt"][rng.gen_range(0..7)];
                    block[..100].fill(0);
                    block[..name.len()].copy_from_slice(name.as_bytes());
                }
                3 => block[100..108].copy_from_slice(b"9999999\0"),
                _ => block[257..265].copy_from_slice([b"ustar\x0000", b"ustar  \0", b"garbage!"][rng.gen_range(0..3)]),
            }
            fix_checksum(block);
        }
    }
    out
}

#[test]
fn tar_reader_survives_random_and_mutated_shards() {
    let seeds = [writer_shard(), foreign_shard()];
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_f022);
    let mut total = HarnessReport::default();
    // The untouched seeds read cleanly: the harness reaches the decoder.
    for seed in &seeds {
        let report = tar_reader_harness(seed);
        assert!(report.decoded >= 2, "seed decodes: {report:?}");
        total.add(report);
    }
    for round in 0..5000 {
        let input = match round % 10 {
            // Pure noise, and noise behind a valid header block.
            0 => (0..rng.gen_range(0..4096)).map(|_| rng.gen()).collect(),
            1 => {
                let mut bytes = seeds[0][..TAR_BLOCK].to_vec();
                bytes.extend((0..rng.gen_range(0..4096)).map(|_| rng.gen::<u8>()));
                bytes
            }
            _ => {
                let pick = rng.gen_range(0..seeds.len());
                let mut bytes = mutate(&mut rng, &seeds[pick], &seeds[1 - pick]);
                // Stack a few mutations now and then, as a fuzzer's corpus grows.
                for _ in 0..rng.gen_range(0..3) {
                    bytes = mutate(&mut rng, &bytes, &seeds[pick]);
                }
                bytes
            }
        };
        total.add(tar_reader_harness(&input));
    }
    // The mutated inputs reached every path: samples read, skipped, and decoded.
    assert!(
        total.samples > 1000 && total.skips > 1000 && total.decoded > 1000,
        "{total:?}"
    );
}
