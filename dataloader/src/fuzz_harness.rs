//! The fuzzing harness of the tar/sample reader, shared by the cargo-fuzz target
//! (`fuzz/fuzz_targets/tar_reader.rs`, nightly) and the seeded stable-Rust test
//! (`tests/fuzz_tar_reader.rs`, run in CI), so both exercise exactly the same code.
//!
//! [`tar_reader_harness`] reads arbitrary bytes as a webdataset shard and pushes every sample
//! through the loader's decode path. Bad data must come out as skips, never as a panic, the
//! reader's resume promise must hold (reading again from a sample's start offset yields that
//! same sample first), and the two pixel outputs must agree: a sample decoded as u8 levels
//! and as f32 gives the same outcome, and the levels normalise to exactly the f32 values.
//! The reader runs with small [`ReadLimits`] ([`FUZZ_LIMITS`]) so that inputs of a few KiB
//! reach the oversized-member and oversized-shard paths too; no sample may hold a member over
//! the member limit.
use std::ops::ControlFlow;
use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::chw::normalized_level;
use crate::imaging::ImageTransform;
use crate::loader::{decode_sample, decode_sample_into, label_of, CaptionSource};
use crate::tar_reader::{for_each_sample_in_at_with_limits, RawSample, ReadLimits, SampleSpan, TarSkip};

/// Size of a tar block: sample spans start on block boundaries.
const TAR_BLOCK_BYTES: u64 = 512;

/// Pixel limit while fuzzing: small, so a forged header cannot make one input slow.
const FUZZ_MAX_PIXELS: u64 = 1 << 20;
/// The reader's limits while fuzzing: small enough for fuzzer-sized inputs to cross them.
pub const FUZZ_LIMITS: ReadLimits = ReadLimits {
    max_member_bytes: 8 << 10,
    max_shard_bytes: 48 << 10,
};
/// Items read from one input at most (a few bytes cannot hold more samples than this).
const MAX_ITEMS: usize = 4096;
/// Samples whose resume offset is re-read (each re-read parses the rest of the input again).
const RESUME_CHECKS: usize = 4;

/// What one harness run saw; lets a test check that its inputs reach the deeper paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HarnessReport {
    /// Samples read from the tar.
    pub samples: usize,
    /// Skips reported by the tar reader.
    pub skips: usize,
    /// Samples that decoded into an image tensor with a caption.
    pub decoded: usize,
}

impl HarnessReport {
    /// Add another run's counts.
    pub fn add(&mut self, other: HarnessReport) {
        self.samples += other.samples;
        self.skips += other.skips;
        self.decoded += other.decoded;
    }
}

/// Read `bytes` as a shard and decode every sample; panics only when the reader breaks one of
/// its promises (which is what a fuzzer should find).
pub fn tar_reader_harness(bytes: &[u8]) -> HarnessReport {
    let shard = Path::new("fuzz-input.tar");
    let items = read_items(shard, bytes, 0);
    let mut report = HarnessReport::default();
    let padded_len = (bytes.len() as u64).div_ceil(TAR_BLOCK_BYTES) * TAR_BLOCK_BYTES;
    let transform = ImageTransform::eval(8);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut resume_checks = 0;
    for (index, item) in items.iter().enumerate() {
        let (sample, span) = match item {
            Ok(found) => found,
            Err(_) => {
                report.skips += 1;
                continue;
            }
        };
        report.samples += 1;
        assert!(
            span.start % TAR_BLOCK_BYTES == 0 && span.start < span.next && span.next <= padded_len,
            "bad span {span:?} for an input of {} bytes",
            bytes.len()
        );
        assert!(
            !sample.key.is_empty() && !sample.members.is_empty(),
            "empty sample {sample:?}"
        );
        assert!(
            sample
                .members
                .values()
                .all(|data| data.len() as u64 <= FUZZ_LIMITS.max_member_bytes),
            "sample {:?} holds a member over the member limit",
            sample.key
        );
        assert!(
            span.next <= FUZZ_LIMITS.max_shard_bytes + TAR_BLOCK_BYTES,
            "span {span:?} ends past the shard limit"
        );
        let _ = label_of(sample);
        for caption in [CaptionSource::Txt, CaptionSource::Json("caption".into())] {
            if decode_sample(sample, &caption, &transform, FUZZ_MAX_PIXELS, &mut rng).is_ok() {
                report.decoded += 1;
            }
        }
        check_pixel_outputs_agree(sample, index as u64);
        if resume_checks < RESUME_CHECKS {
            resume_checks += 1;
            let rest = bytes.get(span.start as usize..);
            assert!(rest.is_some(), "span {span:?} starts past the input's end");
            let again = read_items(shard, rest.unwrap_or_default(), span.start);
            assert_eq!(
                again.first(),
                Some(&items[index]),
                "reading again from offset {} gives another first item",
                span.start
            );
        }
    }
    report
}

/// Decode `sample` with the train transform (random crop) into u8 levels and into f32, with
/// the same random draws: both succeed or fail alike, and the levels normalise to the floats
/// bit for bit.
fn check_pixel_outputs_agree(sample: &RawSample, seed: u64) {
    let transform = ImageTransform::train(8);
    let caption = CaptionSource::Txt;
    let mut levels = vec![0u8; transform.output_len()];
    let mut values = vec![0f32; transform.output_len()];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let as_u8 = decode_sample_into(sample, &caption, &transform, FUZZ_MAX_PIXELS, &mut rng, &mut levels);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let as_f32 = decode_sample_into(sample, &caption, &transform, FUZZ_MAX_PIXELS, &mut rng, &mut values);
    assert_eq!(as_u8, as_f32, "u8 and f32 decodes of sample {:?} disagree", sample.key);
    if as_u8.is_ok() {
        let plane = levels.len() / 3;
        for (i, (&level, &value)) in levels.iter().zip(&values).enumerate() {
            assert_eq!(
                normalized_level(i / plane, level).to_bits(),
                value.to_bits(),
                "value {i} of sample {:?}",
                sample.key
            );
        }
    }
}

/// Every item the reader gives for `bytes` (which start `offset` bytes into the shard).
fn read_items(shard: &Path, bytes: &[u8], offset: u64) -> Vec<Result<(RawSample, SampleSpan), TarSkip>> {
    let mut items = Vec::new();
    for_each_sample_in_at_with_limits(shard, bytes, offset, FUZZ_LIMITS, |item| {
        items.push(item);
        if items.len() >= MAX_ITEMS {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    items
}
