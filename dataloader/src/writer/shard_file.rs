//! One shard file being written: a tar of members with fixed metadata (mode 644, mtime 0),
//! plain or through zstd, under `NAME.tmp` until it is complete and renamed to `NAME`.
//! [`super::ShardWriter`] writes numbered shards through it; a caller that decides itself
//! which sample goes to which file (the curator mirrors each input shard) uses it directly.
use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::DataError;
use crate::tar_reader::RawSample;

/// Size of a tar block.
pub(super) const TAR_BLOCK: u64 = 512;
/// The two zero blocks that end a tar archive.
pub(super) const TAR_END_BYTES: u64 = 2 * TAR_BLOCK;
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

/// One shard file being written (see the module docs).
pub struct ShardFile {
    builder: tar::Builder<CountingSink>,
    temp_path: PathBuf,
    final_path: PathBuf,
    samples: u64,
}

/// What [`ShardFile::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedShard {
    /// The shard file, at its final path.
    pub path: PathBuf,
    /// Samples in it.
    pub samples: u64,
    /// Uncompressed tar bytes, end-of-archive blocks included.
    pub tar_bytes: u64,
    /// Bytes of the file (compressed, when it is).
    pub file_bytes: u64,
}

impl ShardFile {
    /// Starts the shard `final_path`, written as `<final_path>.tmp` until [`ShardFile::finish`].
    pub fn create(final_path: &Path, compression: Compression) -> Result<Self, DataError> {
        let mut temp = final_path.as_os_str().to_owned();
        temp.push(".tmp");
        let temp_path = PathBuf::from(temp);
        let file = File::create(&temp_path).map_err(|e| DataError::io(&temp_path, e))?;
        let file = BufWriter::with_capacity(1 << 20, file);
        let sink = match compression {
            Compression::None => Sink::Plain(file),
            Compression::Zstd { level } => {
                Sink::Zstd(zstd::Encoder::new(file, level).map_err(|e| DataError::io(&temp_path, e))?)
            }
        };
        Ok(Self {
            builder: tar::Builder::new(CountingSink { sink, bytes: 0 }),
            temp_path,
            final_path: final_path.to_path_buf(),
            samples: 0,
        })
    }

    /// Appends an existing sample: every member as `<key>.<ext>`, byte for byte. The key is
    /// not checked ([`super::ShardWriter::write_raw`] checks it; the curator writes back the
    /// keys it read).
    pub fn append_raw(&mut self, sample: &RawSample) -> Result<(), DataError> {
        self.append(&raw_members(sample))
    }

    /// Appends one sample's members (name, bytes).
    pub(super) fn append(&mut self, members: &[(String, Cow<[u8]>)]) -> Result<(), DataError> {
        for (name, data) in members {
            append_member(&mut self.builder, name, data).map_err(|e| DataError::io(&self.temp_path, e))?;
        }
        self.samples += 1;
        Ok(())
    }

    /// Samples appended so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Uncompressed tar bytes written so far.
    pub(super) fn tar_bytes(&self) -> u64 {
        self.builder.get_ref().bytes
    }

    /// Ends the archive (and the compressed stream), syncs the file and renames it to its
    /// final path.
    pub fn finish(self) -> Result<FinishedShard, DataError> {
        let io = |e| DataError::io(&self.temp_path, e);
        let counting = self.builder.into_inner().map_err(io)?;
        let tar_bytes = counting.bytes;
        let file = counting.sink.finish().map_err(io)?;
        file.sync_all().map_err(io)?;
        let file_bytes = file.metadata().map_err(io)?.len();
        std::fs::rename(&self.temp_path, &self.final_path).map_err(io)?;
        Ok(FinishedShard {
            path: self.final_path,
            samples: self.samples,
            tar_bytes,
            file_bytes,
        })
    }
}

/// The members of an existing sample as `(<key>.<ext>, bytes)`.
pub(super) fn raw_members(sample: &RawSample) -> Vec<(String, Cow<'_, [u8]>)> {
    sample
        .members
        .iter()
        .map(|(ext, data)| (format!("{}.{ext}", sample.key), Cow::Borrowed(data.as_slice())))
        .collect()
}

/// Tar bytes of one member: header, data padded to a block, and a GNU long-name entry when
/// the name does not fit the header's 100 bytes.
pub(super) fn tar_member_bytes(name_len: usize, data_len: usize) -> u64 {
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
