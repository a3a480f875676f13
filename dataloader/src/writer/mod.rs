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
mod options;
mod shard_file;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{DataError, SkipCounts, SkipReason};
use crate::shard_source::is_shard_file_name;
use crate::sizes::SIZES_FILE;
use crate::tar_reader::{split_member_name, RawSample};
pub use options::{parse_byte_size, KeyScheme, WriterOptions};
use shard_file::{raw_members, tar_member_bytes, TAR_END_BYTES};
pub use shard_file::{Compression, FinishedShard, ShardFile};

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

/// The shard being written.
struct OpenShard {
    file: ShardFile,
    index: u64,
    name: String,
}

/// A sample's members as written: (member name, bytes), borrowed where unchanged.
type Members<'s> = Vec<(String, Cow<'s, [u8]>)>;

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
        self.sizes.values().sum::<u64>() + self.open.as_ref().map_or(0, |s| s.file.samples())
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
        let members = raw_members(sample);
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
    fn sample_members<'s>(&self, sample: &'s ShardSample) -> Result<(String, Members<'s>), DataError> {
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
                    Some(open) => (open.index, open.file.samples()),
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
        open.file.samples() > 0 && open.file.tar_bytes() + sample_bytes + TAR_END_BYTES > limit
    }

    fn append(&mut self, key: String, members: &[(String, Cow<[u8]>)]) -> Result<(), DataError> {
        let shard = self.open_shard()?;
        shard.file.append(members)?;
        let full = shard.file.samples() >= self.options.samples_per_shard;
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
            let file = ShardFile::create(&self.out_dir.join(&name), self.options.compression)?;
            self.open = Some(OpenShard { file, index, name });
        }
        Ok(self.open.as_mut().expect("opened above"))
    }

    fn close_shard(&mut self) -> Result<(), DataError> {
        let Some(shard) = self.open.take() else {
            return Ok(());
        };
        let finished = shard.file.finish()?;
        if self.options.shard_stats {
            let skips = std::mem::take(&mut self.pending_skips);
            let stem = shard
                .name
                .strip_suffix(self.options.compression.suffix())
                .unwrap_or(&shard.name);
            let stats = serde_json::json!({
                "shard": shard.name,
                "count": finished.samples + skips.total(),
                "successes": finished.samples,
                "failed": skips.to_json(),
                "tar_bytes": finished.tar_bytes,
                "file_bytes": finished.file_bytes,
            });
            write_json_atomically(&self.out_dir.join(format!("{stem}_stats.json")), &stats)?;
        }
        self.sizes.insert(shard.name, finished.samples);
        self.shards.push(finished.path);
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
mod tests;
