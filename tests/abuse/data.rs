//! D1–D4: hostile shards through the real loader (`ferroclip data inspect --json`, which
//! reads every sample the way training does), peak memory measured per child.
use std::io::{Cursor, Write};
use std::path::Path;

use dataloader::{ShardSample, ShardWriter};

use crate::{ferroclip, row, run_measured, Measured};

/// `data inspect --json` of `spec`, measured.
fn inspect(spec: &Path) -> (serde_json::Value, Measured) {
    let mut cmd = ferroclip();
    cmd.args(["data", "inspect", "--json", "--threads", "2", "--image-size", "32"])
        .arg(spec);
    let measured = run_measured(cmd);
    let stdout = String::from_utf8_lossy(&measured.output.stdout).into_owned();
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&measured.output.stderr)
        )
    });
    (report, measured)
}

fn skipped(report: &serde_json::Value, reason: &str) -> u64 {
    report["skipped"][reason].as_u64().unwrap_or(0)
}

fn png(seed: u8, width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7) as u8 ^ seed, (y * 11) as u8, (x + y) as u8 ^ seed])
    });
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// A textured 256 × 256 JPEG (photo-like detail, so a cut falls inside entropy-coded data).
fn jpeg() -> Vec<u8> {
    let image = image::RgbImage::from_fn(256, 256, |x, y| {
        let v = ((x * x + y * 3) ^ (y * y + x * 5)) as u8;
        image::Rgb([v, v.wrapping_mul(3), (x as u8) ^ (y as u8)])
    });
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Jpeg)
        .unwrap();
    out
}

fn sample(image: Vec<u8>, ext: &str, caption: &str) -> ShardSample {
    ShardSample {
        key: None,
        image,
        image_ext: ext.into(),
        captions: vec![caption.into()],
        label: None,
        json: Default::default(),
    }
}

fn write_shard(dir: &Path, samples: &[ShardSample]) -> std::path::PathBuf {
    let mut writer = ShardWriter::new(dir, 1000).unwrap();
    for s in samples {
        writer.write(s).unwrap();
    }
    writer.finish().unwrap().shards.remove(0)
}

/// A tar header block for a regular file of `size` bytes.
fn tar_header(name: &str, size: u64) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path(name).unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    header.as_bytes().to_vec()
}

fn tar_member(name: &str, data: &[u8]) -> Vec<u8> {
    let mut out = tar_header(name, data.len() as u64);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

#[test]
fn d1_a_zstd_bomb_member_is_skipped_in_bounded_memory() {
    const ZEROS: u64 = 4 << 30;
    const CHUNK: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.tar.zst");
    // Sample 0's caption, then its 4 GiB "image" of zeros, then a good sample 1: each part
    // its own zstd frame, the zeros one compressed MiB repeated (never held whole here).
    let mut head = tar_member("0.txt", b"the bomb");
    head.extend(tar_header("0.png", ZEROS));
    let mut tail = tar_member("1.txt", b"a good caption");
    tail.extend(tar_member("1.png", &png(1, 40, 40)));
    tail.extend([0u8; 1024]);
    let chunk = zstd::stream::encode_all(&vec![0u8; CHUNK][..], 3).unwrap();
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    file.write_all(&zstd::stream::encode_all(&head[..], 3).unwrap())
        .unwrap();
    for _ in 0..ZEROS / CHUNK as u64 {
        file.write_all(&chunk).unwrap();
    }
    file.write_all(&zstd::stream::encode_all(&tail[..], 3).unwrap())
        .unwrap();
    drop(file);
    let on_disk = std::fs::metadata(&path).unwrap().len();

    let (report, measured) = inspect(&path);
    assert_eq!(skipped(&report, "oversized_member"), 1, "{report}");
    assert_eq!(report["samples_read"], 1, "the good sample after the bomb: {report}");
    // The same command on a shard of one ordinary sample: the process's own baseline
    // (libtorch and the loader), which the bomb may exceed by little.
    let plain = write_shard(
        &dir.path().join("plain"),
        &[sample(png(1, 40, 40), "png", "a good caption")],
    );
    let (_, baseline) = inspect(&plain);
    let growth = measured.peak_rss_mib - baseline.peak_rss_mib;
    assert!(growth < 64.0, "the bomb added {growth:.0} MiB to the peak RSS");
    row(
        "D1",
        &format!("4 GiB zstd member in a {} KB shard", on_disk / 1000),
        &format!(
            "oversized_member 1, next sample read; peak RSS {:.0} MiB ({growth:+.0} MiB over a one-sample shard), {:.1} s",
            measured.peak_rss_mib, measured.seconds
        ),
    );
}

#[test]
fn d2_forged_huge_image_headers_are_skipped_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    // A PNG whose IHDR claims 100000 × 100000 (valid CRCs, a tiny IDAT).
    let mut huge_png = b"\x89PNG\r\n\x1a\n".to_vec();
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
        out
    };
    let mut ihdr = 100_000u32.to_be_bytes().to_vec();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    huge_png.extend(chunk(b"IHDR", &ihdr));
    let mut idat = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    idat.write_all(&[0u8; 4096]).unwrap();
    huge_png.extend(chunk(b"IDAT", &idat.finish().unwrap()));
    huge_png.extend(chunk(b"IEND", b""));
    // A real JPEG whose SOF0 is rewritten to claim 65000 × 65000.
    let mut huge_jpeg = jpeg();
    let sof = huge_jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline JPEG");
    huge_jpeg[sof + 5..sof + 7].copy_from_slice(&65000u16.to_be_bytes());
    huge_jpeg[sof + 7..sof + 9].copy_from_slice(&65000u16.to_be_bytes());
    let shard = write_shard(
        dir.path(),
        &[
            sample(huge_png, "png", "a forged png"),
            sample(huge_jpeg, "jpg", "a forged jpeg"),
            sample(png(3, 40, 40), "png", "a real png"),
        ],
    );
    let (report, measured) = inspect(&shard);
    assert_eq!(skipped(&report, "image_too_large"), 2, "{report}");
    assert_eq!(report["samples_read"], 1, "{report}");
    assert!(
        measured.peak_rss_mib < 512.0,
        "peak RSS {:.0} MiB",
        measured.peak_rss_mib
    );
    row(
        "D2",
        "PNG claiming 100000², JPEG claiming 65000²",
        &format!(
            "2 × image_too_large; peak RSS {:.0} MiB, {:.2} s",
            measured.peak_rss_mib, measured.seconds
        ),
    );
}

#[test]
fn d3_cut_jpegs_are_all_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let whole = jpeg();
    let mut samples: Vec<ShardSample> = [25, 50, 75, 90]
        .iter()
        .map(|pct| {
            sample(
                whole[..whole.len() * pct / 100].to_vec(),
                "jpg",
                &format!("cut at {pct}%"),
            )
        })
        .collect();
    samples.push(sample(whole[..whole.len() - 2].to_vec(), "jpg", "no end marker"));
    samples.push(sample(whole.clone(), "jpg", "the whole jpeg"));
    let shard = write_shard(dir.path(), &samples);
    let (report, _) = inspect(&shard);
    assert_eq!(skipped(&report, "undecodable_image"), 5, "{report}");
    assert_eq!(report["samples_read"], 1, "the whole JPEG is read: {report}");
    row(
        "D3",
        "JPEGs cut at 25/50/75/90 % and without EOI",
        "5 of 5 undecodable_image; the whole one read",
    );
}

#[test]
fn d4_cut_and_random_shards_are_counted_and_the_rest_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let good = crate::common::write_shape_shards(&dir.path().join("good"), 24, 24);
    let cut_dir = dir.path().join("cut");
    let cut = crate::common::write_shape_shards(&cut_dir, 24, 24).remove(0);
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2 + 100]).unwrap();
    let random = dir.path().join("random.tar");
    std::fs::write(
        &random,
        (0..200_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let spec = format!("{}::{}::{}", good[0].display(), cut.display(), random.display());
    let (report, _) = inspect(Path::new(&spec));
    let read = report["samples_read"].as_u64().unwrap();
    assert!(
        read >= 24 + 1,
        "the good shard in full and the cut one's start: {report}"
    );
    assert_eq!(skipped(&report, "truncated_member"), 1, "{report}");
    assert!(
        skipped(&report, "shard_read_error") + report["shards_failed"].as_u64().unwrap_or(0) >= 1,
        "{report}"
    );
    row(
        "D4",
        "a shard cut mid-member; 200 KB of random bytes as a shard",
        &format!(
            "{read} samples read (24 + the cut shard's first {}); skips {}",
            read - 24,
            report["skipped"]
        ),
    );
}
