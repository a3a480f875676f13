//! Webdataset samples from a local `.tar`: consecutive members sharing a key form one sample.
//!
//! Every sample read comes with its [`SampleSpan`]: the byte offsets in the shard's tar stream
//! where it starts and where reading continues after it. Reading again from either offset
//! ([`for_each_sample_at`], [`read_samples_at`]) gives the same samples and skips as the first
//! pass did from that point on, which is what makes the loader's position resumable.
//!
//! What one shard may cost is bounded whatever its headers claim ([`ReadLimits`]): a member
//! over `max_member_bytes` is drained without being buffered and its sample skipped as
//! `oversized_member`; a tar stream (after decompression) longer than `max_shard_bytes` ends
//! as `oversized_shard`. The bounds apply by absolute stream offset, so reading again from a
//! span meets the same skips.
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::error::SkipReason;
use crate::shard_source::{open_shard, ShardStream};

/// Size of a tar block; headers start at multiples of it.
const TAR_BLOCK: u64 = 512;

/// Default [`ReadLimits::max_member_bytes`]: 64 MiB, far above any image a CLIP loader wants.
pub const DEFAULT_MAX_MEMBER_BYTES: u64 = 64 << 20;
/// Default [`ReadLimits::max_shard_bytes`]: 16 GiB of uncompressed tar per shard.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 16 << 30;

/// Bounds on what reading one shard may cost, whatever its headers claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// A member whose header gives more bytes is drained without being buffered, and the
    /// sample it belongs to is skipped as `oversized_member`.
    pub max_member_bytes: u64,
    /// Once the shard's tar stream (after gzip/zstd decompression) gives more bytes than
    /// this, the rest of the shard is skipped as `oversized_shard`: a decompression bomb
    /// costs bounded time, not only bounded memory.
    pub max_shard_bytes: u64,
}

impl Default for ReadLimits {
    /// [`DEFAULT_MAX_MEMBER_BYTES`] and [`DEFAULT_MAX_SHARD_BYTES`].
    fn default() -> Self {
        Self {
            max_member_bytes: DEFAULT_MAX_MEMBER_BYTES,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
        }
    }
}

/// One sample as stored: its members' bytes by extension, not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSample {
    /// Member path up to the first dot of its basename, directory kept (`dir/000000001`).
    pub key: String,
    /// The shard it came from.
    pub shard: PathBuf,
    /// Extension (after the basename's first dot, lowercased) → member bytes.
    pub members: BTreeMap<String, Vec<u8>>,
}

/// Where a sample lies in its shard's (uncompressed) tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleSpan {
    /// Offset of the first header (PAX / GNU long-name headers included) of the sample's
    /// first member: reading from here yields this sample first.
    pub start: u64,
    /// Offset where reading continues after this sample: reading from here yields exactly what
    /// followed it (the next sample, a skip, or the end of the shard).
    pub next: u64,
}

/// A sample or a whole shard that could not be read; `reason` says which and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarSkip {
    /// Why it was skipped.
    pub reason: SkipReason,
    /// The shard.
    pub shard: PathBuf,
    /// The member concerned, when there is one.
    pub member: Option<String>,
    /// Human-readable detail (the underlying error).
    pub detail: String,
}

impl std::fmt::Display for TarSkip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.shard.display(), self.reason)?;
        if let Some(member) = &self.member {
            write!(f, " at member {member:?}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// Split a member path into (key, lowercased extension); `None` for names webdataset ignores
/// (no dot in the basename, empty stem or empty extension).
pub fn split_member_name(path: &str) -> Option<(String, String)> {
    let base_start = path.rfind('/').map_or(0, |i| i + 1);
    let dot = base_start + path[base_start..].find('.')?;
    let (key, ext) = (&path[..dot], &path[dot + 1..]);
    if dot == base_start || ext.is_empty() {
        return None;
    }
    Some((key.to_string(), ext.to_lowercase()))
}

/// Opens `path` (a `.tar`, `.tar.gz`, `.tar.zst` or `pipe:` shard, see
/// [`crate::shard_source`]) positioned `offset` bytes into its tar stream: the
/// one place that turns a shard path into bytes. Plain files seek; compressed
/// and piped streams read and discard.
fn open_shard_at(path: &Path, offset: u64) -> std::io::Result<ShardStream> {
    let mut stream = open_shard(path).map_err(std::io::Error::other)?;
    if offset > 0 {
        stream.skip(offset)?;
    }
    Ok(stream)
}

/// Read the shard file at `shard` and call `visit` for each sample or skip, in file order,
/// with the default [`ReadLimits`].
///
/// An unopenable shard gives one `UnreadableShard` skip. A read error or a truncated member
/// ends the shard after reporting it; samples before it are delivered. `visit` returns
/// `ControlFlow::Break` to stop early.
pub fn for_each_sample(shard: &Path, mut visit: impl FnMut(Result<RawSample, TarSkip>) -> ControlFlow<()>) {
    for_each_sample_at(shard, 0, |item| visit(item.map(|(sample, _)| sample)));
}

/// Like [`for_each_sample`], starting `offset` bytes into the shard's tar stream (0, or a
/// [`SampleSpan`] offset from an earlier read), with each sample's span.
pub fn for_each_sample_at(
    shard: &Path,
    offset: u64,
    visit: impl FnMut(Result<(RawSample, SampleSpan), TarSkip>) -> ControlFlow<()>,
) {
    for_each_sample_at_with_limits(shard, offset, ReadLimits::default(), visit);
}

/// [`for_each_sample_at`] with the given limits.
pub fn for_each_sample_at_with_limits(
    shard: &Path,
    offset: u64,
    limits: ReadLimits,
    mut visit: impl FnMut(Result<(RawSample, SampleSpan), TarSkip>) -> ControlFlow<()>,
) {
    match open_shard_at(shard, offset) {
        Ok(mut stream) => {
            let mut stopped = false;
            let ended = read_tar(shard, &mut stream, offset, limits, |item| {
                let flow = visit(item);
                stopped = flow.is_break();
                flow
            });
            // The tar ends before its stream does: only finishing the stream checks
            // a zstd/gzip checksum or a pipe command's exit status. Not after the shard was
            // cut short on purpose: the rest was not meant to be read.
            if ended == TarEnd::Finished && !stopped {
                if let Err(e) = stream.finish() {
                    let _ = visit(Err(TarSkip {
                        reason: SkipReason::ShardReadError,
                        shard: shard.to_path_buf(),
                        member: None,
                        detail: e.to_string(),
                    }));
                }
            }
        }
        Err(e) => {
            let _ = visit(Err(TarSkip {
                reason: SkipReason::UnreadableShard,
                shard: shard.to_path_buf(),
                member: None,
                detail: e.to_string(),
            }));
        }
    }
}

/// The samples of `shard` that start at the given offsets ([`SampleSpan::start`] values from
/// an earlier read), by start offset, with the default [`ReadLimits`]. The shard is read
/// once, from the smallest offset to the largest; samples in between are read as bytes but
/// not kept. An offset where no sample starts (the shard changed) is absent from the result;
/// skips met on the way are ignored, since they were counted when the shard was first read.
pub fn read_samples_at(shard: &Path, starts: &[u64]) -> Result<BTreeMap<u64, RawSample>, TarSkip> {
    read_samples_at_with_limits(shard, starts, ReadLimits::default())
}

/// [`read_samples_at`] with the given limits (those of the first read, so the same samples
/// are found).
pub fn read_samples_at_with_limits(
    shard: &Path,
    starts: &[u64],
    limits: ReadLimits,
) -> Result<BTreeMap<u64, RawSample>, TarSkip> {
    let wanted: BTreeSet<u64> = starts.iter().copied().collect();
    let mut found = BTreeMap::new();
    let (Some(&first), Some(&last)) = (wanted.first(), wanted.last()) else {
        return Ok(found);
    };
    let reader = open_shard_at(shard, first).map_err(|e| TarSkip {
        reason: SkipReason::UnreadableShard,
        shard: shard.to_path_buf(),
        member: None,
        detail: e.to_string(),
    })?;
    read_tar(shard, reader, first, limits, |item| {
        if let Ok((sample, span)) = item {
            if wanted.contains(&span.start) {
                found.insert(span.start, sample);
            }
            if span.next > last || found.len() == wanted.len() {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    Ok(found)
}

/// Like [`for_each_sample`] over any reader; `shard` only names it in samples and skips.
pub fn for_each_sample_in<R: Read>(
    shard: &Path,
    reader: R,
    mut visit: impl FnMut(Result<RawSample, TarSkip>) -> ControlFlow<()>,
) {
    for_each_sample_in_at(shard, reader, 0, |item| visit(item.map(|(sample, _)| sample)));
}

/// Like [`for_each_sample_in`] with spans, for a `reader` whose first byte is at `offset` in
/// the shard's tar stream (`offset` must be 0 or a header position).
pub fn for_each_sample_in_at<R: Read>(
    shard: &Path,
    reader: R,
    offset: u64,
    visit: impl FnMut(Result<(RawSample, SampleSpan), TarSkip>) -> ControlFlow<()>,
) {
    for_each_sample_in_at_with_limits(shard, reader, offset, ReadLimits::default(), visit);
}

/// [`for_each_sample_in_at`] with the given limits.
pub fn for_each_sample_in_at_with_limits<R: Read>(
    shard: &Path,
    reader: R,
    offset: u64,
    limits: ReadLimits,
    visit: impl FnMut(Result<(RawSample, SampleSpan), TarSkip>) -> ControlFlow<()>,
) {
    read_tar(shard, reader, offset, limits, visit);
}

/// Counts the bytes the tar parser consumes, so entry boundaries are known exactly (the tar
/// crate reads headers and data without read-ahead), and refuses to give more than
/// `max_position`: past it, a read that still finds data fails and sets `over`.
struct CountingReader<R> {
    inner: R,
    position: Rc<Cell<u64>>,
    max_position: u64,
    over: Rc<Cell<bool>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let position = self.position.get();
        if position >= self.max_position && !buf.is_empty() {
            // At the limit: one more byte means the stream is longer than allowed (the end
            // of the stream right here is fine).
            if self.inner.read(&mut buf[..1])? == 0 {
                return Ok(0);
            }
            self.over.set(true);
            return Err(std::io::Error::other(format!(
                "the tar stream is longer than max_shard_bytes ({} bytes)",
                self.max_position
            )));
        }
        let room = usize::try_from(self.max_position - position).unwrap_or(usize::MAX);
        let len = buf.len().min(room);
        let n = self.inner.read(&mut buf[..len])?;
        self.position.set(position + n as u64);
        Ok(n)
    }
}

/// What is wrong with a sample being assembled; it is skipped (once) when complete.
struct Flaw {
    reason: SkipReason,
    member: String,
    detail: String,
}

/// A sample being assembled from consecutive members.
struct PartialSample {
    sample: RawSample,
    start: u64,
    /// The first problem found (a repeated extension, an oversized member); `None` for a
    /// good sample.
    flaw: Option<Flaw>,
}

/// How [`read_tar`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TarEnd {
    /// At the end of the archive, at an error, or because `visit` stopped it.
    Finished,
    /// The stream went past `max_shard_bytes`; its rest was left unread.
    OverShardLimit,
}

/// The reader behind every public entry point: samples and skips of the tar stream in
/// `reader`, whose first byte is at `offset` (0 or a header position).
fn read_tar<R: Read>(
    shard: &Path,
    reader: R,
    offset: u64,
    limits: ReadLimits,
    mut visit: impl FnMut(Result<(RawSample, SampleSpan), TarSkip>) -> ControlFlow<()>,
) -> TarEnd {
    let over = Rc::new(Cell::new(false));
    let skip = |reason, member: Option<&str>, detail: String| TarSkip {
        // A read error caused by the shard limit is that limit, whatever the tar parser made
        // of it.
        reason: if over.get() { SkipReason::OversizedShard } else { reason },
        shard: shard.to_path_buf(),
        member: member.map(str::to_string),
        detail,
    };
    let end = || match over.get() {
        true => TarEnd::OverShardLimit,
        false => TarEnd::Finished,
    };
    let position = Rc::new(Cell::new(offset));
    let mut archive = tar::Archive::new(CountingReader {
        inner: reader,
        position: Rc::clone(&position),
        max_position: limits.max_shard_bytes,
        over: Rc::clone(&over),
    });
    let mut entries = match archive.entries() {
        Ok(entries) => entries,
        Err(e) => {
            let _ = visit(Err(skip(SkipReason::ShardReadError, None, e.to_string())));
            return end();
        }
    };
    // After an entry's data is fully read, the next entry's first header starts at the next
    // block boundary (counted from `offset`, itself a boundary).
    let block_end = || offset + (position.get() - offset).div_ceil(TAR_BLOCK) * TAR_BLOCK;
    let emit = |sample: Option<PartialSample>,
                next: u64,
                visit: &mut dyn FnMut(Result<(RawSample, SampleSpan), TarSkip>) -> ControlFlow<()>| {
        match sample {
            None => ControlFlow::Continue(()),
            Some(PartialSample {
                sample,
                start,
                flaw: None,
            }) => visit(Ok((sample, SampleSpan { start, next }))),
            Some(PartialSample {
                sample,
                flaw: Some(flaw),
                ..
            }) => visit(Err(TarSkip {
                reason: flaw.reason,
                shard: sample.shard,
                member: Some(flaw.member),
                detail: flaw.detail,
            })),
        }
    };
    let mut current: Option<PartialSample> = None;
    // Where the next entry (with its extension headers) starts.
    let mut next_entry_start = offset;
    loop {
        let entry_start = next_entry_start;
        let mut entry = match entries.next() {
            None => break,
            Some(Ok(entry)) => entry,
            Some(Err(e)) => {
                // Like webdataset, the sample read so far is still delivered: later checks
                // (missing caption/image) catch it if it lost members. Reading again from
                // `entry_start` meets the same error.
                if emit(current.take(), entry_start, &mut visit).is_continue() {
                    let _ = visit(Err(skip(SkipReason::ShardReadError, None, e.to_string())));
                }
                return end();
            }
        };
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let member = if entry.header().entry_type().is_file() {
            split_member_name(&path)
        } else {
            None
        };
        let Some((key, ext)) = member else {
            // Not part of any sample. Consume it here so its end (the next entry's start) is
            // known; on a short read the tar parser reports the error at the next entry.
            let size = entry.size();
            if matches!(std::io::copy(&mut entry, &mut std::io::sink()), Ok(n) if n == size) {
                next_entry_start = block_end();
            }
            continue;
        };
        if current.as_ref().is_some_and(|partial| partial.sample.key != key)
            && emit(current.take(), entry_start, &mut visit).is_break()
        {
            return TarEnd::Finished;
        }
        let expected = entry.size();
        let oversized = expected > limits.max_member_bytes;
        let mut data = Vec::new();
        let read = if oversized {
            // Drained through a fixed-size buffer: the header's size is data, not a promise.
            std::io::copy(&mut entry, &mut std::io::sink())
        } else {
            // Cap the up-front allocation: a short member must not reserve its claimed size.
            data.reserve(expected.min(1 << 24) as usize);
            entry.read_to_end(&mut data).map(|n| n as u64)
        };
        let truncated = match read {
            Ok(n) if n == expected => None,
            Ok(n) => Some(format!("member has {n} of {expected} bytes")),
            Err(e) => Some(e.to_string()),
        };
        if let Some(detail) = truncated {
            // The sample holding this member is incomplete; it is dropped and the shard ends.
            let _ = visit(Err(skip(SkipReason::TruncatedMember, Some(&path), detail)));
            return end();
        }
        next_entry_start = block_end();
        let flaw = oversized.then(|| Flaw {
            reason: SkipReason::OversizedMember,
            member: path.clone(),
            detail: format!("{expected} bytes, over max_member_bytes ({})", limits.max_member_bytes),
        });
        let partial = current.get_or_insert_with(|| PartialSample {
            sample: RawSample {
                key,
                shard: shard.to_path_buf(),
                members: BTreeMap::new(),
            },
            start: entry_start,
            flaw: None,
        });
        let repeated = partial.sample.members.contains_key(&ext);
        if partial.flaw.is_none() {
            partial.flaw = flaw.or_else(|| {
                repeated.then(|| Flaw {
                    reason: SkipReason::DuplicateMember,
                    member: partial.sample.key.clone(),
                    detail: "the same extension appears twice in one sample".into(),
                })
            });
        }
        if partial.flaw.is_some() {
            // The sample is skipped: keep none of its bytes.
            partial.sample.members.clear();
        } else {
            partial.sample.members.insert(ext, data);
        }
    }
    let _ = emit(current.take(), next_entry_start, &mut visit);
    end()
}

#[cfg(test)]
mod tests;
