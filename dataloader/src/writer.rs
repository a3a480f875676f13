//! Webdataset shard writer: `00000.tar, 00001.tar, ...` plus OpenCLIP's `sizes.json`.
//!
//! Each sample becomes `<key>.<ext>` (the original image bytes), `<key>.txt` (captions joined
//! by newlines; omitted for a labelled sample without captions), `<key>.json` (the manifest row plus `"key"`) and, with a label, `<key>.cls`.
//! Keys default to a 9-digit counter (`000000000`, img2dataset style). A shard is written
//! under `NNNNN.tar.tmp` and renamed when complete, so readers never see half a shard.
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{DataError, SkipReason};
use crate::sizes::SIZES_FILE;

/// One sample to write.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSample {
    /// Key to use; `None` = the next 9-digit counter value.
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
    builder: tar::Builder<BufWriter<File>>,
    temp_path: PathBuf,
    final_path: PathBuf,
    name: String,
    samples: u64,
}

/// Writes samples into numbered tar shards of at most `samples_per_shard` samples.
pub struct ShardWriter {
    out_dir: PathBuf,
    samples_per_shard: u64,
    open: Option<OpenShard>,
    next_shard: usize,
    next_counter: u64,
    used_keys: HashSet<String>,
    sizes: BTreeMap<String, u64>,
    shards: Vec<PathBuf>,
}

impl ShardWriter {
    /// Create `out_dir` if needed. It must not already hold shards or a `sizes.json`.
    pub fn new(out_dir: &Path, samples_per_shard: u64) -> Result<Self, DataError> {
        if samples_per_shard == 0 {
            return Err(DataError::BadConfig {
                field: "samples_per_shard",
                reason: "must be at least 1".into(),
            });
        }
        std::fs::create_dir_all(out_dir).map_err(|e| DataError::io(out_dir, e))?;
        let entries = std::fs::read_dir(out_dir).map_err(|e| DataError::io(out_dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| DataError::io(out_dir, e))?.path();
            let is_tar = path.extension().is_some_and(|x| x == "tar");
            if is_tar || path.file_name().is_some_and(|n| n == SIZES_FILE) {
                return Err(DataError::BadFile {
                    path,
                    reason: "output folder already holds shards; choose an empty folder".into(),
                });
            }
        }
        Ok(Self {
            out_dir: out_dir.to_path_buf(),
            samples_per_shard,
            open: None,
            next_shard: 0,
            next_counter: 0,
            used_keys: HashSet::new(),
            sizes: BTreeMap::new(),
            shards: Vec::new(),
        })
    }

    /// Samples written so far.
    pub fn samples_written(&self) -> u64 {
        self.sizes.values().sum::<u64>() + self.open.as_ref().map_or(0, |s| s.samples)
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
        let key = match &sample.key {
            Some(key) => {
                self.check_key(key).map_err(|reason| WriteError::Key {
                    key: key.clone(),
                    reason,
                })?;
                key.clone()
            }
            None => self.next_counter_key(),
        };
        let mut json = sample.json.clone();
        json.insert("key".into(), serde_json::Value::String(key.clone()));
        let json_bytes = serde_json::to_vec(&json).map_err(|e| DataError::BadFile {
            path: self.out_dir.clone(),
            reason: format!("sample {key}: JSON encoding failed: {e}"),
        })?;

        let text = sample.captions.join("\n").into_bytes();
        let label = sample.label.map(|l| l.to_string().into_bytes());
        let mut members: Vec<(String, &[u8])> = vec![(format!("{key}.{}", sample.image_ext), &sample.image)];
        if !sample.captions.is_empty() {
            members.push((format!("{key}.txt"), &text));
        }
        members.push((format!("{key}.json"), &json_bytes));
        if let Some(label) = &label {
            members.push((format!("{key}.cls"), label));
        }
        let shard = self.open_shard()?;
        for (name, data) in members {
            append_member(&mut shard.builder, &name, data).map_err(|e| DataError::io(&shard.temp_path, e))?;
        }
        shard.samples += 1;
        let full = shard.samples >= self.samples_per_shard;
        self.used_keys.insert(key.clone());
        if full {
            self.close_shard()?;
        }
        Ok(key)
    }

    /// Close the last shard and write `sizes.json`.
    pub fn finish(mut self) -> Result<WriteSummary, DataError> {
        self.close_shard()?;
        let samples = self.sizes.values().sum();
        let sizes_file = if self.shards.is_empty() {
            None
        } else {
            let path = self.out_dir.join(SIZES_FILE);
            let text = serde_json::to_string_pretty(&self.sizes).map_err(|e| DataError::BadFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            write_atomically(&path, text.as_bytes())?;
            Some(path)
        };
        Ok(WriteSummary {
            shards: std::mem::take(&mut self.shards),
            samples,
            sizes_file,
        })
    }

    fn next_counter_key(&mut self) -> String {
        loop {
            let key = format!("{:09}", self.next_counter);
            self.next_counter += 1;
            if !self.used_keys.contains(&key) {
                return key;
            }
        }
    }

    fn open_shard(&mut self) -> Result<&mut OpenShard, DataError> {
        if self.open.is_none() {
            let name = format!("{:05}.tar", self.next_shard);
            self.next_shard += 1;
            let final_path = self.out_dir.join(&name);
            let temp_path = self.out_dir.join(format!("{name}.tmp"));
            let file = File::create(&temp_path).map_err(|e| DataError::io(&temp_path, e))?;
            self.open = Some(OpenShard {
                builder: tar::Builder::new(BufWriter::new(file)),
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
        let writer = shard.builder.into_inner().map_err(io)?;
        let file = writer.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&shard.temp_path, &shard.final_path).map_err(io)?;
        self.sizes.insert(shard.name, shard.samples);
        self.shards.push(shard.final_path);
        Ok(())
    }
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

/// Write `bytes` to `path` through a temporary file and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    std::fs::write(&temp, bytes).map_err(|e| DataError::io(&temp, e))?;
    std::fs::rename(&temp, path).map_err(|e| DataError::io(path, e))
}
