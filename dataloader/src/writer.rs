//! Webdataset shard writer: `00000.tar, 00001.tar, ...` (or `.tar.zst`) plus OpenCLIP's
//! `sizes.json`, and optionally img2dataset's per-shard `<stem>_stats.json`.
//!
//! Each sample becomes `<key>.<ext>` (the image bytes), `<key>.txt` (captions joined by
//! newlines; omitted for a labelled sample without captions), `<key>.json` (the manifest row
//! plus `"key"`) and, with a label, `<key>.cls`. [`ShardWriter::write_raw`] instead copies the
//! members of an existing sample byte for byte (re-sharding, recompression).
//!
//! A shard is closed when it holds [`WriterOptions::samples_per_shard`] samples, or before a
//! sample that would take it over [`WriterOptions::bytes_per_shard`] (uncompressed tar bytes,
//! end-of-archive blocks included; a single larger sample still gets a shard of its own).
//! A shard is written under `NAME.tmp` and renamed when complete, so readers never see half a
//! shard. Members have fixed metadata (mode 644, mtime 0), so shards are reproducible.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{DataError, SkipCounts, SkipReason};
use crate::shard_source::is_shard_file_name;
use crate::sizes::SIZES_FILE;
use crate::tar_reader::{split_member_name, RawSample};

/// Size of a tar block.
const TAR_BLOCK: u64 = 512;
/// The two zero blocks that end a tar archive.
const TAR_END_BYTES: u64 = 2 * TAR_BLOCK;
/// Digits of the shard index in [`KeyScheme::ShardPrefixed`] keys (img2dataset's default
/// `oom_shard_count`).
const SHARD_INDEX_DIGITS: u32 = 5;
/// Minimum key width: img2dataset's keys are 9 digits with its default 10,000 samples per shard.
const MIN_KEY_DIGITS: u32 = 9;

/// One sample to write.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSample {
    /// Key to use; `None` = the next key of the writer's [`KeyScheme`].
    pub key: Option<String>,
    /// Encoded image bytes, written unchanged.
    pub image: Vec<u8>,
    /// Image member extension (`png`, `jpg`, ...).
    pub image_ext: String,
    /// Captions (one or several).
    pub captions: Vec<String>,
    /// Class label for a `.cls` member.
    pub label: Option<i64>,
    /// Fields of the `.json` member (`"key"` is set to the sample's key).
    pub json: serde_json::Map<String, serde_json::Value>,
}

/// Why [`ShardWriter::write`] did not write a sample.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The sample's key cannot be used (`InvalidKey` or `DuplicateKey`); skip the sample.
    #[error("key {key:?}: {reason}")]
    Key {
        /// The key.
        key: String,
        /// Why.
        reason: SkipReason,
    },
    /// Writing failed; stop.
    #[error(transparent)]
    Data(#[from] DataError),
}

/// What [`ShardWriter::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    /// Shard files, in order.
    pub shards: Vec<PathBuf>,
    /// Samples written.
    pub samples: u64,
    /// The `sizes.json` written (`None` when nothing was written).
    pub sizes_file: Option<PathBuf>,
}

/// How shards are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain `.tar`.
    None,
    /// `.tar.zst` at this zstd level.
    Zstd {
        /// zstd compression level (1–22; negative levels are faster).
        level: i32,
    },
}

impl Compression {
    /// The shard file suffix: `.tar` or `.tar.zst`.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => ".tar",
            Compression::Zstd { .. } => ".tar.zst",
        }
    }
}

impl FromStr for Compression {
    type Err = DataError;

    /// `none`, `zstd` (level 3) or `zstd:LEVEL`.
    fn from_str(text: &str) -> Result<Self, DataError> {
        let bad = |reason: String| DataError::BadConfig {
            field: "compress",
            reason: format!("{text:?}: {reason}"),
        };
        let (kind, level) = match text.split_once(':') {
            Some((kind, level)) => (kind, Some(level)),
            None => (text, None),
        };
        match (kind.to_ascii_lowercase().as_str(), level) {
            ("none", None) => Ok(Compression::None),
            ("zstd", None) => Ok(Compression::Zstd {
                level: zstd::DEFAULT_COMPRESSION_LEVEL,
            }),
            ("zstd", Some(level)) => {
                let range = zstd::compression_level_range();
                match level.trim().parse::<i32>() {
                    Ok(level) if range.contains(&level) && level != 0 => Ok(Compression::Zstd { level }),
                    _ => Err(bad(format!(
                        "LEVEL must be a non-zero integer in {}..={}",
                        range.start(),
                        range.end()
                    ))),
                }
            }
            _ => Err(bad("expected none, zstd or zstd:LEVEL".into())),
        }
    }
}

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

/// Where a shard's bytes go: the file, directly or through zstd.
enum Sink {
    Plain(BufWriter<File>),
    Zstd(zstd::Encoder<'static, BufWriter<File>>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Zstd(w) => w.flush(),
        }
    }
}

impl Sink {
    /// End the compressed stream (if any) and flush; the file, for syncing.
    fn finish(self) -> std::io::Result<File> {
        let buffered = match self {
            Sink::Plain(w) => w,
            Sink::Zstd(w) => w.finish()?,
        };
        buffered.into_inner().map_err(|e| e.into_error())
    }
}

/// Counts the (uncompressed) tar bytes written.
struct CountingSink {
    sink: Sink,
    bytes: u64,
}

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.sink.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sink.flush()
    }
}

/// The shard being written.
struct OpenShard {
    builder: tar::Builder<CountingSink>,
    index: u64,
    temp_path: PathBuf,
    final_path: PathBuf,
    name: String,
    samples: u64,
}

/// Writes samples into numbered shards; see the module docs.
pub struct ShardWriter {
    out_dir: PathBuf,
    options: WriterOptions,
    open: Option<OpenShard>,
    next_shard: u64,
    next_counter: u64,
    used_keys: HashSet<String>,
    sizes: BTreeMap<String, u64>,
    shards: Vec<PathBuf>,
    /// Skips reported by the caller since the last shard was closed (for `_stats.json`).
    pending_skips: SkipCounts,
}

impl ShardWriter {
    /// Plain `.tar` shards of at most `samples_per_shard` samples with counter keys
    /// ([`WriterOptions::new`]). See [`ShardWriter::with_options`].
    pub fn new(out_dir: &Path, samples_per_shard: u64) -> Result<Self, DataError> {
        Self::with_options(out_dir, WriterOptions::new(samples_per_shard))
    }

    /// Create `out_dir` if needed. It must not already hold shards, a `sizes.json` or
    /// `*_stats.json` files.
    pub fn with_options(out_dir: &Path, options: WriterOptions) -> Result<Self, DataError> {
        options.validate()?;
        std::fs::create_dir_all(out_dir).map_err(|e| DataError::io(out_dir, e))?;
        let entries = std::fs::read_dir(out_dir).map_err(|e| DataError::io(out_dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| DataError::io(out_dir, e))?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if is_shard_file_name(&path) || name == SIZES_FILE || name.ends_with("_stats.json") {
                return Err(DataError::BadFile {
                    path,
                    reason: "output folder already holds shards; choose an empty folder".into(),
                });
            }
        }
        Ok(Self {
            out_dir: out_dir.to_path_buf(),
            options,
            open: None,
            next_shard: 0,
            next_counter: 0,
            used_keys: HashSet::new(),
            sizes: BTreeMap::new(),
            shards: Vec::new(),
            pending_skips: SkipCounts::new(),
        })
    }

    /// Samples written so far.
    pub fn samples_written(&self) -> u64 {
        self.sizes.values().sum::<u64>() + self.open.as_ref().map_or(0, |s| s.samples)
    }

    /// Note an input row or sample that was skipped; it is counted in the `_stats.json` of the
    /// shard being written (or the next one).
    pub fn record_skip(&mut self, reason: SkipReason) {
        self.pending_skips.add(reason);
    }

    /// Check a user-given key: non-empty, no `.`, `/` or whitespace at its ends, unused.
    pub fn check_key(&self, key: &str) -> Result<(), SkipReason> {
        let valid = !key.is_empty() && !key.contains(['.', '/', '\\', '\n', '\0']) && key.trim() == key;
        if !valid {
            return Err(SkipReason::InvalidKey);
        }
        if self.used_keys.contains(key) {
            return Err(SkipReason::DuplicateKey);
        }
        Ok(())
    }

    /// Append one sample; returns its key.
    pub fn write(&mut self, sample: &ShardSample) -> Result<String, WriteError> {
        if let Some(key) = &sample.key {
            self.check_key(key).map_err(|reason| WriteError::Key {
                key: key.clone(),
                reason,
            })?;
        }
        let (mut key, mut members) = self.sample_members(sample)?;
        if self.needs_new_shard(&members) {
            self.close_shard()?;
            // A generated key depends on the shard it lands in.
            (key, members) = self.sample_members(sample)?;
        }
        if self.used_keys.contains(&key) {
            return Err(WriteError::Key {
                key,
                reason: SkipReason::DuplicateKey,
            });
        }
        if sample.key.is_none() && self.options.keys == KeyScheme::Counter {
            self.next_counter = self.peek_counter() + 1;
        }
        self.append(key.clone(), &members)?;
        Ok(key)
    }

    /// Append an existing sample with its key and every member byte for byte (member names
    /// are `<key>.<ext>`, the extension as the reader lowercased it). The key may keep a
    /// directory (`dir/000001`), as webdataset allows.
    pub fn write_raw(&mut self, sample: &RawSample) -> Result<String, WriteError> {
        let key_error = |reason| WriteError::Key {
            key: sample.key.clone(),
            reason,
        };
        let safe_path = !sample.key.starts_with('/')
            && !sample.key.contains(['\0', '\n'])
            && !sample.key.split('/').any(|part| part.is_empty() || part == "..");
        // Each member must read back as this key and extension, or the sample would split.
        let round_trips = sample
            .members
            .keys()
            .all(|ext| split_member_name(&format!("{}.{ext}", sample.key)) == Some((sample.key.clone(), ext.clone())));
        if sample.members.is_empty() || !safe_path || !round_trips {
            return Err(key_error(SkipReason::InvalidKey));
        }
        if self.used_keys.contains(&sample.key) {
            return Err(key_error(SkipReason::DuplicateKey));
        }
        let members: Vec<(String, Cow<[u8]>)> = sample
            .members
            .iter()
            .map(|(ext, data)| (format!("{}.{ext}", sample.key), Cow::Borrowed(data.as_slice())))
            .collect();
        if self.needs_new_shard(&members) {
            self.close_shard()?;
        }
        self.append(sample.key.clone(), &members)?;
        Ok(sample.key.clone())
    }

    /// Close the last shard and write `sizes.json`.
    pub fn finish(mut self) -> Result<WriteSummary, DataError> {
        self.close_shard()?;
        let samples = self.sizes.values().sum();
        let sizes_file = if self.shards.is_empty() {
            None
        } else {
            let path = self.out_dir.join(SIZES_FILE);
            write_json_atomically(&path, &serde_json::to_value(&self.sizes).unwrap_or_default())?;
            Some(path)
        };
        Ok(WriteSummary {
            shards: std::mem::take(&mut self.shards),
            samples,
            sizes_file,
        })
    }

    /// The key and members `sample` would get if written now.
    fn sample_members<'s>(&self, sample: &'s ShardSample) -> Result<(String, Vec<(String, Cow<'s, [u8]>)>), DataError> {
        let key = match &sample.key {
            Some(key) => key.clone(),
            None => self.next_generated_key(),
        };
        let mut json = sample.json.clone();
        json.insert("key".into(), serde_json::Value::String(key.clone()));
        let json_bytes = serde_json::to_vec(&json).map_err(|e| DataError::BadFile {
            path: self.out_dir.clone(),
            reason: format!("sample {key}: JSON encoding failed: {e}"),
        })?;
        let mut members: Vec<(String, Cow<[u8]>)> = vec![(
            format!("{key}.{}", sample.image_ext),
            Cow::Borrowed(sample.image.as_slice()),
        )];
        if !sample.captions.is_empty() {
            members.push((
                format!("{key}.txt"),
                Cow::Owned(sample.captions.join("\n").into_bytes()),
            ));
        }
        members.push((format!("{key}.json"), Cow::Owned(json_bytes)));
        if let Some(label) = sample.label {
            members.push((format!("{key}.cls"), Cow::Owned(label.to_string().into_bytes())));
        }
        Ok((key, members))
    }

    fn next_generated_key(&self) -> String {
        match self.options.keys {
            KeyScheme::Counter => format!("{:09}", self.peek_counter()),
            KeyScheme::ShardPrefixed => {
                let (shard, index) = match &self.open {
                    Some(open) => (open.index, open.samples),
                    None => (self.next_shard, 0),
                };
                let digits = digits_for(self.options.samples_per_shard);
                let width = MIN_KEY_DIGITS.max(SHARD_INDEX_DIGITS + digits) as usize;
                let value = u128::from(shard) * 10u128.pow(digits) + u128::from(index);
                format!("{value:0width$}")
            }
        }
    }

    /// The next unused counter value.
    fn peek_counter(&self) -> u64 {
        let mut counter = self.next_counter;
        while self.used_keys.contains(&format!("{counter:09}")) {
            counter += 1;
        }
        counter
    }

    /// True when the open shard cannot take `members` within the byte limit.
    fn needs_new_shard(&self, members: &[(String, Cow<[u8]>)]) -> bool {
        let (Some(limit), Some(open)) = (self.options.bytes_per_shard, &self.open) else {
            return false;
        };
        let sample_bytes: u64 = members
            .iter()
            .map(|(name, data)| tar_member_bytes(name.len(), data.len()))
            .sum();
        open.samples > 0 && open.builder.get_ref().bytes + sample_bytes + TAR_END_BYTES > limit
    }

    fn append(&mut self, key: String, members: &[(String, Cow<[u8]>)]) -> Result<(), DataError> {
        let shard = self.open_shard()?;
        for (name, data) in members {
            append_member(&mut shard.builder, name, data).map_err(|e| DataError::io(&shard.temp_path, e))?;
        }
        shard.samples += 1;
        let full = shard.samples >= self.options.samples_per_shard;
        self.used_keys.insert(key);
        if full {
            self.close_shard()?;
        }
        Ok(())
    }

    fn open_shard(&mut self) -> Result<&mut OpenShard, DataError> {
        if self.open.is_none() {
            let index = self.next_shard;
            let name = format!("{index:05}{}", self.options.compression.suffix());
            self.next_shard += 1;
            let final_path = self.out_dir.join(&name);
            let temp_path = self.out_dir.join(format!("{name}.tmp"));
            let file = File::create(&temp_path).map_err(|e| DataError::io(&temp_path, e))?;
            let file = BufWriter::with_capacity(1 << 20, file);
            let sink = match self.options.compression {
                Compression::None => Sink::Plain(file),
                Compression::Zstd { level } => {
                    Sink::Zstd(zstd::Encoder::new(file, level).map_err(|e| DataError::io(&temp_path, e))?)
                }
            };
            self.open = Some(OpenShard {
                builder: tar::Builder::new(CountingSink { sink, bytes: 0 }),
                index,
                temp_path,
                final_path,
                name,
                samples: 0,
            });
        }
        Ok(self.open.as_mut().expect("opened above"))
    }

    fn close_shard(&mut self) -> Result<(), DataError> {
        let Some(shard) = self.open.take() else {
            return Ok(());
        };
        let io = |e| DataError::io(&shard.temp_path, e);
        let counting = shard.builder.into_inner().map_err(io)?;
        let tar_bytes = counting.bytes;
        let file = counting.sink.finish().map_err(io)?;
        file.sync_all().map_err(io)?;
        let file_bytes = file.metadata().map_err(io)?.len();
        std::fs::rename(&shard.temp_path, &shard.final_path).map_err(io)?;
        if self.options.shard_stats {
            let skips = std::mem::take(&mut self.pending_skips);
            let stem = shard
                .name
                .strip_suffix(self.options.compression.suffix())
                .unwrap_or(&shard.name);
            let stats = serde_json::json!({
                "shard": shard.name,
                "count": shard.samples + skips.total(),
                "successes": shard.samples,
                "failed": skips.to_json(),
                "tar_bytes": tar_bytes,
                "file_bytes": file_bytes,
            });
            write_json_atomically(&self.out_dir.join(format!("{stem}_stats.json")), &stats)?;
        }
        self.sizes.insert(shard.name, shard.samples);
        self.shards.push(shard.final_path);
        Ok(())
    }
}

/// Decimal digits needed to number `0..count` (img2dataset's `ceil(log10(count))`).
fn digits_for(count: u64) -> u32 {
    let mut digits = 0;
    while 10u128.pow(digits) < u128::from(count) {
        digits += 1;
    }
    digits
}

/// Tar bytes of one member: header, data padded to a block, and a GNU long-name entry when
/// the name does not fit the header's 100 bytes.
fn tar_member_bytes(name_len: usize, data_len: usize) -> u64 {
    let padded = |n: u64| n.div_ceil(TAR_BLOCK) * TAR_BLOCK;
    let long_name = if name_len > 100 {
        TAR_BLOCK + padded(name_len as u64 + 1)
    } else {
        0
    };
    TAR_BLOCK + padded(data_len as u64) + long_name
}

/// One regular-file member with fixed metadata (mode 644, mtime 0), so shards are
/// reproducible byte for byte.
fn append_member<W: Write>(builder: &mut tar::Builder<W>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, name, data)
}

/// Write `value` (pretty JSON) to `path` through a temporary file and a rename.
fn write_json_atomically(path: &Path, value: &serde_json::Value) -> Result<(), DataError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| DataError::BadFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    std::fs::write(&temp, text.as_bytes()).map_err(|e| DataError::io(&temp, e))?;
    std::fs::rename(&temp, path).map_err(|e| DataError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::ControlFlow;

    fn sample(caption: &str, image: Vec<u8>) -> ShardSample {
        ShardSample {
            key: None,
            image,
            image_ext: "png".into(),
            captions: vec![caption.into()],
            label: None,
            json: Default::default(),
        }
    }

    fn read_all(shards: &[PathBuf]) -> Vec<RawSample> {
        let mut out = Vec::new();
        for shard in shards {
            crate::tar_reader::for_each_sample(shard, |item| {
                out.push(item.expect("a clean shard"));
                ControlFlow::Continue(())
            });
        }
        out
    }

    #[test]
    fn shard_prefixed_keys_follow_img2dataset() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = WriterOptions::new(10_000);
        options.keys = KeyScheme::ShardPrefixed;
        let writer = ShardWriter::with_options(dir.path(), options).unwrap();
        assert_eq!(writer.next_generated_key(), "000000000");
        // 3 per shard: one digit for the index, shard index in front.
        let mut options = WriterOptions::new(3);
        options.keys = KeyScheme::ShardPrefixed;
        let mut writer = ShardWriter::with_options(&dir.path().join("small"), options).unwrap();
        let keys: Vec<String> = (0..7)
            .map(|i| writer.write(&sample(&format!("c{i}"), vec![1])).unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "000000000",
                "000000001",
                "000000002",
                "000000010",
                "000000011",
                "000000012",
                "000000020"
            ]
        );
        let mut options = WriterOptions::new(100_000);
        options.keys = KeyScheme::ShardPrefixed;
        let writer = ShardWriter::with_options(&dir.path().join("big"), options).unwrap();
        assert_eq!(writer.next_generated_key(), "0000000000", "5 + 5 digits");
        assert_eq!(
            (digits_for(1), digits_for(10), digits_for(11), digits_for(10_000)),
            (0, 1, 2, 4)
        );
    }

    #[test]
    fn bytes_per_shard_limits_file_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = WriterOptions::new(1000);
        options.bytes_per_shard = Some(8 * 1024);
        options.shard_stats = true;
        let mut writer = ShardWriter::with_options(dir.path(), options).unwrap();
        writer.record_skip(SkipReason::MissingImage);
        for i in 0..20 {
            // 1500 image bytes: image + txt + json take 4 KiB of tar, so one sample per shard
            // would be 5 KiB and two would be 9 KiB: over the limit.
            writer
                .write(&sample(&format!("caption {i}"), vec![i as u8; 1500]))
                .unwrap();
        }
        let summary = writer.finish().unwrap();
        assert_eq!(summary.samples, 20);
        assert_eq!(summary.shards.len(), 20);
        for shard in &summary.shards {
            let len = std::fs::metadata(shard).unwrap().len();
            assert!(len <= 8 * 1024, "{} is {len} bytes", shard.display());
        }
        let stats: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("00000_stats.json")).unwrap()).unwrap();
        assert_eq!(stats["successes"], 1);
        assert_eq!(stats["count"], 2);
        assert_eq!(stats["failed"]["missing_image"], 1);
        assert_eq!(stats["tar_bytes"], 5 * 1024);
        // The loader's size lookup agrees with sizes.json.
        assert_eq!(crate::shard_spec::dataset_size(&summary.shards).unwrap(), 20);

        // A larger limit packs several samples per shard, each file within it.
        let dir = tempfile::tempdir().unwrap();
        let mut options = WriterOptions::new(1000);
        options.bytes_per_shard = Some(20 * 1024);
        let mut writer = ShardWriter::with_options(dir.path(), options).unwrap();
        for i in 0..20 {
            writer
                .write(&sample(&format!("caption {i}"), vec![i as u8; 1500]))
                .unwrap();
        }
        let summary = writer.finish().unwrap();
        // (20 KiB − 1 KiB end) / 4 KiB per sample = 4 samples per shard.
        assert_eq!(summary.shards.len(), 5);
        for shard in &summary.shards {
            assert_eq!(std::fs::metadata(shard).unwrap().len(), 4 * 4096 + 1024);
        }
        assert_eq!(read_all(&summary.shards).len(), 20);
    }

    #[test]
    fn zstd_shards_read_back_and_are_reproducible() {
        let write = |dir: &Path| {
            let mut options = WriterOptions::new(3);
            options.compression = "zstd:5".parse().unwrap();
            let mut writer = ShardWriter::with_options(dir, options).unwrap();
            for i in 0..5 {
                writer.write(&sample(&format!("caption {i}"), vec![7; 3000])).unwrap();
            }
            writer.finish().unwrap()
        };
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let summary = write(a.path());
        assert_eq!(
            summary.shards,
            [a.path().join("00000.tar.zst"), a.path().join("00001.tar.zst")]
        );
        let compressed = std::fs::metadata(&summary.shards[0]).unwrap().len();
        assert!(compressed < 3000, "zstd shrinks repeated bytes: {compressed}");
        let samples = read_all(&summary.shards);
        assert_eq!(samples.len(), 5);
        assert_eq!(samples[4].members["txt"], b"caption 4");
        assert_eq!(samples[4].members["png"], vec![7; 3000]);
        let sizes: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(a.path().join("sizes.json")).unwrap()).unwrap();
        assert_eq!(sizes, serde_json::json!({"00000.tar.zst": 3, "00001.tar.zst": 2}));
        write(b.path());
        for name in ["00000.tar.zst", "00001.tar.zst"] {
            assert_eq!(
                std::fs::read(a.path().join(name)).unwrap(),
                std::fs::read(b.path().join(name)).unwrap()
            );
        }
    }

    #[test]
    fn write_raw_keeps_keys_and_members_and_rejects_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = ShardWriter::new(dir.path(), 10).unwrap();
        let raw = |key: &str| RawSample {
            key: key.into(),
            shard: PathBuf::from("in.tar"),
            members: BTreeMap::from([
                ("jpg".to_string(), vec![1, 2, 3]),
                ("seg.png".to_string(), vec![4]),
                ("json".to_string(), br#"{"a": 1}"#.to_vec()),
            ]),
        };
        assert_eq!(writer.write_raw(&raw("dir.v1/000001")).unwrap(), "dir.v1/000001");
        for bad in ["", "a.b", "/abs", "../up", "x//y"] {
            let err = writer.write_raw(&raw(bad)).unwrap_err();
            assert!(
                matches!(
                    err,
                    WriteError::Key {
                        reason: SkipReason::InvalidKey,
                        ..
                    }
                ),
                "{bad:?}"
            );
        }
        let err = writer.write_raw(&raw("dir.v1/000001")).unwrap_err();
        assert!(matches!(
            err,
            WriteError::Key {
                reason: SkipReason::DuplicateKey,
                ..
            }
        ));
        let summary = writer.finish().unwrap();
        let samples = read_all(&summary.shards);
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].key, "dir.v1/000001");
        assert_eq!(samples[0].members, raw("").members);
    }

    #[test]
    fn option_parsing_names_the_field() {
        assert_eq!(parse_byte_size("256MB", "bytes_per_shard").unwrap(), 256_000_000);
        assert_eq!(parse_byte_size("1GiB", "bytes_per_shard").unwrap(), 1 << 30);
        assert_eq!(parse_byte_size("1.5k", "bytes_per_shard").unwrap(), 1500);
        assert_eq!(parse_byte_size(" 4096 ", "bytes_per_shard").unwrap(), 4096);
        for bad in ["", "MB", "12 parsecs", "0", "-5M"] {
            let err = parse_byte_size(bad, "bytes_per_shard").unwrap_err().to_string();
            assert!(err.contains("bytes_per_shard"), "{bad:?}: {err}");
        }
        assert_eq!("none".parse::<Compression>().unwrap(), Compression::None);
        assert_eq!(
            "zstd".parse::<Compression>().unwrap(),
            Compression::Zstd {
                level: zstd::DEFAULT_COMPRESSION_LEVEL
            }
        );
        for bad in ["gzip", "zstd:99", "zstd:x", "none:3"] {
            let err = bad.parse::<Compression>().unwrap_err().to_string();
            assert!(err.contains("compress") && err.contains(bad), "{err}");
        }
        let mut options = WriterOptions::new(0);
        assert!(options
            .validate()
            .unwrap_err()
            .to_string()
            .contains("samples_per_shard"));
        options.samples_per_shard = 1;
        options.bytes_per_shard = Some(100);
        assert!(options.validate().unwrap_err().to_string().contains("bytes_per_shard"));
    }

    #[test]
    fn output_folder_with_shards_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00000.tar.zst"), b"").unwrap();
        let err = ShardWriter::new(dir.path(), 1).err().unwrap().to_string();
        assert!(err.contains("00000.tar.zst"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00003_stats.json"), b"{}").unwrap();
        assert!(ShardWriter::new(dir.path(), 1).is_err());
    }
}
