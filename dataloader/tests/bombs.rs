//! Decompression bombs through the loader: a `.tar.zst` with a 4 GiB member of zeros and a
//! `.tar.gz` with a 1 GiB one, each followed by a good sample. The bomb member is skipped as
//! `oversized_member` without being buffered, the good sample still comes, and peak memory
//! stays bounded; with a small `max_shard_bytes` the shard ends early as `oversized_shard`.
//!
//! Peak memory is measured in a child process (this test binary run again for one scenario,
//! selected by [`SCENARIO_ENV`]), so other tests running in this process do not disturb it.
//! The bombs are built at test time from one compressed chunk of zeros repeated as
//! concatenated zstd frames / gzip members: tiny files, never materialised.
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use dataloader::{Loader, LoaderConfig, SkipReason};

/// Selects the scenario a child run performs; unset in a normal test run.
const SCENARIO_ENV: &str = "FERROCLIP_BOMB_SCENARIO";
/// The shard the child reads.
const SHARD_ENV: &str = "FERROCLIP_BOMB_SHARD";
/// The child's `max_shard_bytes`, when set.
const SHARD_LIMIT_ENV: &str = "FERROCLIP_BOMB_SHARD_LIMIT";
/// The child's name, for `--exact`.
const CHILD_TEST: &str = "bomb_scenario_child";

/// Peak memory a bomb may add to the child's baseline.
const MAX_PEAK_GROWTH_KIB: u64 = 200 << 10;
/// Chunk of zeros compressed once and repeated.
const CHUNK: usize = 1 << 20;

fn png(seed: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(16, 12, |x, y| image::Rgb([(x * 9) as u8 ^ seed, (y * 13) as u8, seed]));
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// A tar header block for a regular file.
fn header(name: &str, size: u64) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path(name).unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    header.as_bytes().to_vec()
}

/// Complete tar members (header, data, padding) for `(name, data)` pairs.
fn members(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        out.extend(header(name, data.len() as u64));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out
}

/// The parts of a bomb shard, uncompressed: what comes before the zeros (the first sample's
/// caption and the bomb's header), how many zero bytes, and what follows (a good sample and
/// the end of the archive).
fn bomb_parts(zeros: u64) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(zeros % 512, 0, "no padding needed after the zeros");
    let mut head = members(&[("0.txt", b"the bomb's caption")]);
    head.extend(header("0.png", zeros));
    let mut tail = members(&[("1.txt", b"a good caption"), ("1.png", &png(1))]);
    tail.extend([0u8; 1024]);
    (head, tail)
}

fn zstd_frame(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(bytes, 3).unwrap()
}

fn gzip_member(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Write a bomb shard: `head`, `zeros` zero bytes and `tail`, each part its own compressed
/// frame (zstd) or member (gzip); the zeros are one compressed chunk repeated.
fn write_bomb(path: &Path, zeros: u64, compress: fn(&[u8]) -> Vec<u8>) -> u64 {
    let (head, tail) = bomb_parts(zeros);
    let chunk = compress(&vec![0u8; CHUNK]);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    file.write_all(&compress(&head)).unwrap();
    for _ in 0..zeros / CHUNK as u64 {
        file.write_all(&chunk).unwrap();
    }
    file.write_all(&compress(&vec![0u8; (zeros % CHUNK as u64) as usize]))
        .unwrap();
    file.write_all(&compress(&tail)).unwrap();
    file.flush().unwrap();
    drop(file);
    std::fs::metadata(path).unwrap().len()
}

/// What a child run reports.
#[derive(Debug)]
struct ChildReport {
    keys: Vec<String>,
    oversized_member: u64,
    oversized_shard: u64,
    other_skips: u64,
    seconds: f64,
    baseline_kib: u64,
    peak_kib: u64,
}

/// `VmHWM` (peak resident set) of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The shard through a loader (eval mode, one thread), as configured by the environment.
fn load(shard: PathBuf, max_shard_bytes: Option<u64>) -> (Vec<String>, dataloader::SkipCounts) {
    let mut cfg = LoaderConfig::new(vec![shard], false);
    cfg.batch_size = 4;
    cfg.image_size = 8;
    cfg.context_length = 0;
    cfg.threads = 1;
    if let Some(limit) = max_shard_bytes {
        cfg.max_shard_bytes = limit;
    }
    let mut loader = Loader::new(cfg).unwrap();
    let keys = loader.by_ref().flat_map(|batch| batch.keys.clone()).collect();
    (keys, loader.skip_counts().clone())
}

/// Run in a child process: read the shard named by the environment and print the outcome.
#[test]
fn bomb_scenario_child() {
    let Ok(scenario) = std::env::var(SCENARIO_ENV) else {
        return;
    };
    let shard = PathBuf::from(std::env::var(SHARD_ENV).unwrap());
    let limit = std::env::var(SHARD_LIMIT_ENV).ok().map(|v| v.parse().unwrap());
    let baseline_kib = peak_rss_kib();
    let started = Instant::now();
    let (keys, skips) = load(shard, limit);
    let seconds = started.elapsed().as_secs_f64();
    let peak_kib = peak_rss_kib();
    let oversized_member = skips.get(SkipReason::OversizedMember);
    let oversized_shard = skips.get(SkipReason::OversizedShard);
    println!(
        "BOMB {scenario} keys={} oversized_member={oversized_member} oversized_shard={oversized_shard} other={} \
         seconds={seconds:.3} baseline_kib={baseline_kib} peak_kib={peak_kib}",
        keys.join(","),
        skips.total() - oversized_member - oversized_shard,
    );
}

/// Run [`bomb_scenario_child`] for `shard` in a child process and parse its report.
fn run_child(scenario: &str, shard: &Path, max_shard_bytes: Option<u64>) -> ChildReport {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(SCENARIO_ENV, scenario)
        .env(SHARD_ENV, shard);
    match max_shard_bytes {
        Some(limit) => command.env(SHARD_LIMIT_ENV, limit.to_string()),
        None => command.env_remove(SHARD_LIMIT_ENV),
    };
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child {scenario}: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // The harness may have printed the test's name on the same line.
    let marker = format!("BOMB {scenario} ");
    let line = stdout
        .lines()
        .find_map(|l| l.find(&marker).map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no report from the child:\n{stdout}"));
    eprintln!("{line}");
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|part| part.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} missing in {line}"))
            .to_string()
    };
    ChildReport {
        keys: field("keys")
            .split(',')
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect(),
        oversized_member: field("oversized_member").parse().unwrap(),
        oversized_shard: field("oversized_shard").parse().unwrap(),
        other_skips: field("other").parse().unwrap(),
        seconds: field("seconds").parse().unwrap(),
        baseline_kib: field("baseline_kib").parse().unwrap(),
        peak_kib: field("peak_kib").parse().unwrap(),
    }
}

fn assert_bomb_skipped(report: &ChildReport, what: &str) {
    assert_eq!(
        report.keys,
        ["1"],
        "{what}: the good sample after the bomb comes: {report:?}"
    );
    assert_eq!(
        (report.oversized_member, report.oversized_shard, report.other_skips),
        (1, 0, 0),
        "{what}: {report:?}"
    );
    let growth = report.peak_kib.saturating_sub(report.baseline_kib);
    assert!(
        growth < MAX_PEAK_GROWTH_KIB,
        "{what}: peak RSS grew by {growth} KiB (limit {MAX_PEAK_GROWTH_KIB} KiB): {report:?}"
    );
}

#[test]
fn zstd_bomb_member_is_skipped_in_bounded_memory_and_the_shard_limit_ends_it_early() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("bomb.tar.zst");
    let size = write_bomb(&shard, 4 << 30, zstd_frame);
    eprintln!("4 GiB zstd bomb: {size} bytes on disk");
    let full = run_child("zstd-4GiB", &shard, None);
    assert_bomb_skipped(&full, "zstd 4 GiB");

    // With a 64 MiB shard limit the rest of the shard (the rest of the zeros and the good
    // sample behind them) is skipped, after reading at most 64 MiB.
    let cut = run_child("zstd-4GiB-shard-limit", &shard, Some(64 << 20));
    assert!(cut.keys.is_empty(), "{cut:?}");
    assert_eq!(
        (cut.oversized_member, cut.oversized_shard, cut.other_skips),
        (0, 1, 0),
        "{cut:?}"
    );
    assert!(
        cut.seconds < full.seconds / 2.0,
        "the shard limit bounds the time: {:.3}s with it, {:.3}s without",
        cut.seconds,
        full.seconds
    );
}

#[test]
fn gzip_bomb_member_is_skipped_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("bomb.tar.gz");
    let size = write_bomb(&shard, 1 << 30, gzip_member);
    eprintln!("1 GiB gzip bomb: {size} bytes on disk");
    let report = run_child("gzip-1GiB", &shard, None);
    assert_bomb_skipped(&report, "gzip 1 GiB");
}

#[test]
fn member_limit_decides_whether_a_member_is_read() {
    // Negative control: a 2 MiB member is skipped under a 1 MiB limit and read under 4 MiB.
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("two-mib.tar");
    let big = vec![7u8; 2 << 20];
    let mut tar = members(&[
        ("0.txt", b"caption zero"),
        ("0.png", &png(0)),
        ("0.bin", &big),
        ("1.txt", b"caption one"),
        ("1.png", &png(1)),
    ]);
    tar.extend([0u8; 1024]);
    std::fs::write(&shard, tar).unwrap();
    let read = |limit: u64| {
        let mut cfg = LoaderConfig::new(vec![shard.clone()], false);
        (cfg.batch_size, cfg.image_size, cfg.context_length, cfg.threads) = (4, 8, 0, 1);
        cfg.max_member_bytes = limit;
        let mut loader = Loader::new(cfg).unwrap();
        let keys: Vec<String> = loader.by_ref().flat_map(|batch| batch.keys.clone()).collect();
        (keys, loader.skip_counts().get(SkipReason::OversizedMember))
    };
    assert_eq!(read(1 << 20), (vec!["1".to_string()], 1));
    assert_eq!(read(4 << 20), (vec!["0".to_string(), "1".to_string()], 0));
    // Exactly at the limit is within it.
    assert_eq!(read(2 << 20).1, 0);
}

#[test]
fn bad_limits_are_refused_by_name() {
    let mut cfg = LoaderConfig::new(vec!["a.tar".into()], false);
    cfg.max_member_bytes = 0;
    let err = cfg.validate_settings().unwrap_err().to_string();
    assert!(err.contains("max_member_bytes"), "{err}");
    let mut cfg = LoaderConfig::new(vec!["a.tar".into()], false);
    cfg.max_shard_bytes = 0;
    let err = cfg.validate_settings().unwrap_err().to_string();
    assert!(err.contains("max_shard_bytes"), "{err}");
    let cfg = LoaderConfig::new(vec!["a.tar".into()], false);
    assert_eq!(cfg.max_member_bytes, dataloader::DEFAULT_MAX_MEMBER_BYTES);
    assert_eq!(cfg.max_shard_bytes, dataloader::DEFAULT_MAX_SHARD_BYTES);
    assert_eq!(dataloader::DEFAULT_MAX_MEMBER_BYTES, 64 << 20);
    assert_eq!(dataloader::DEFAULT_MAX_SHARD_BYTES, 16 << 30);
}

#[test]
fn batches_larger_than_memory_are_refused_before_allocation() {
    let mut cfg = LoaderConfig::new(vec!["a.tar".into()], true);
    cfg.batch_size = 1_000_000_000_000;
    let err = cfg.validate_settings().unwrap_err().to_string();
    assert!(
        err.contains("batch_size") && err.contains("more than this machine's"),
        "{err}"
    );
    cfg.batch_size = 1 << 62;
    let err = cfg.validate_settings().unwrap_err().to_string();
    assert!(err.contains("batch_size") && err.contains("overflows"), "{err}");
    // An ordinary batch passes.
    cfg.batch_size = 256;
    cfg.validate_settings().unwrap();
    assert_eq!(cfg.batch_bytes(), Some(256 * (224 * 224 * 3 * 4 + 77 * 8)));
}
