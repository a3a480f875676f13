//! The settings of a [`super::ShardWriter`]: shard size limits, compression, keys, stats.
use crate::error::DataError;

use super::shard_file::{Compression, TAR_BLOCK, TAR_END_BYTES};

/// How keys are made for samples without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyScheme {
    /// A running 9-digit counter over the whole output (`000000000`, `000000001`, ...).
    Counter,
    /// img2dataset's keys: `shard × 10^d + index in shard`, where `d` is the number of
    /// digits needed for `samples_per_shard − 1`, zero-padded to `max(9, 5 + d)` digits. With
    /// 10,000 samples per shard, sample 7 of shard 3 is `000030007`.
    ShardPrefixed,
}

/// Settings of a [`ShardWriter`]; [`WriterOptions::new`] gives plain tars, counter keys and
/// no per-shard stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterOptions {
    /// At most this many samples per shard (at least 1).
    pub samples_per_shard: u64,
    /// At most this many uncompressed tar bytes per shard, unless one sample alone is larger.
    pub bytes_per_shard: Option<u64>,
    /// Output compression.
    pub compression: Compression,
    /// Keys for samples without one.
    pub keys: KeyScheme,
    /// Also write img2dataset's `<stem>_stats.json` next to each shard.
    pub shard_stats: bool,
}

impl WriterOptions {
    /// Plain `.tar` shards of at most `samples_per_shard` samples, counter keys, no stats files.
    pub fn new(samples_per_shard: u64) -> Self {
        Self {
            samples_per_shard,
            bytes_per_shard: None,
            compression: Compression::None,
            keys: KeyScheme::Counter,
            shard_stats: false,
        }
    }

    /// Check the settings; the error names the bad field.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.samples_per_shard == 0 {
            return Err(DataError::BadConfig {
                field: "samples_per_shard",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(bytes) = self.bytes_per_shard {
            // Below one member plus the archive end, every sample would get its own shard:
            // almost surely a unit mistake.
            if bytes < TAR_BLOCK * 2 + TAR_END_BYTES {
                return Err(DataError::BadConfig {
                    field: "bytes_per_shard",
                    reason: format!("{bytes} bytes is smaller than the smallest possible sample"),
                });
            }
        }
        Ok(())
    }
}

/// Parse a byte size: `1048576`, `512k`, `256MB`, `1.5G`, `2GiB` (k/M/G/T are powers of
/// 1000, Ki/Mi/Gi/Ti powers of 1024, a trailing `B` optional, case-insensitive).
pub fn parse_byte_size(text: &str, field: &'static str) -> Result<u64, DataError> {
    let bad = |reason: &str| DataError::BadConfig {
        field,
        reason: format!("{text:?}: {reason}"),
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| bad("expected a number with an optional unit"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let multiplier: u64 = match unit {
        "" => 1,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        "t" => 1_000_000_000_000,
        "ki" => 1 << 10,
        "mi" => 1 << 20,
        "gi" => 1 << 30,
        "ti" => 1 << 40,
        _ => return Err(bad("unknown unit (use k, M, G, T, KiB, MiB, GiB, TiB)")),
    };
    let bytes = (number * multiplier as f64).round();
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(bad("must be at least 1 byte"));
    }
    Ok(bytes as u64)
}
