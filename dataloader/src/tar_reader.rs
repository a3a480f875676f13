//! Webdataset samples from a local `.tar`: consecutive members sharing a key form one sample.
//!
//! Every sample read comes with its [`SampleSpan`]: the byte offsets in the shard's tar stream
//! where it starts and where reading continues after it. Reading again from either offset
//! ([`for_each_sample_at`], [`read_samples_at`]) gives the same samples and skips as the first
//! pass did from that point on, which is what makes the loader's position resumable.
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

/// Read the shard file at `shard` and call `visit` for each sample or skip, in file order.
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
    mut visit: impl FnMut(Result<(RawSample, SampleSpan), TarSkip>) -> ControlFlow<()>,
) {
    match open_shard_at(shard, offset) {
        Ok(mut stream) => {
            let mut stopped = false;
            for_each_sample_in_at(shard, &mut stream, offset, |item| {
                let flow = visit(item);
                stopped = flow.is_break();
                flow
            });
            // The tar ends before its stream does: only finishing the stream checks
            // a zstd/gzip checksum or a pipe command's exit status.
            if let (false, Err(e)) = (stopped, stream.finish()) {
                let _ = visit(Err(TarSkip {
                    reason: SkipReason::ShardReadError,
                    shard: shard.to_path_buf(),
                    member: None,
                    detail: e.to_string(),
                }));
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
/// an earlier read), by start offset. The shard is read once, from the smallest offset to the
/// largest; samples in between are read as bytes but not kept. An offset where no sample
/// starts (the shard changed) is absent from the result; skips met on the way are ignored,
/// since they were counted when the shard was first read.
pub fn read_samples_at(shard: &Path, starts: &[u64]) -> Result<BTreeMap<u64, RawSample>, TarSkip> {
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
    for_each_sample_in_at(shard, reader, first, |item| {
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

/// Counts the bytes the tar parser consumes, so entry boundaries are known exactly (the tar
/// crate reads headers and data without read-ahead).
struct CountingReader<R> {
    inner: R,
    position: Rc<Cell<u64>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.position.set(self.position.get() + n as u64);
        Ok(n)
    }
}

/// A sample being assembled from consecutive members.
struct PartialSample {
    sample: RawSample,
    start: u64,
    /// The same extension appeared twice.
    duplicate: bool,
}

/// Like [`for_each_sample_in`] with spans, for a `reader` whose first byte is at `offset` in
/// the shard's tar stream (`offset` must be 0 or a header position).
pub fn for_each_sample_in_at<R: Read>(
    shard: &Path,
    reader: R,
    offset: u64,
    mut visit: impl FnMut(Result<(RawSample, SampleSpan), TarSkip>) -> ControlFlow<()>,
) {
    let skip = |reason, member: Option<&str>, detail: String| TarSkip {
        reason,
        shard: shard.to_path_buf(),
        member: member.map(str::to_string),
        detail,
    };
    let position = Rc::new(Cell::new(offset));
    let mut archive = tar::Archive::new(CountingReader {
        inner: reader,
        position: Rc::clone(&position),
    });
    let mut entries = match archive.entries() {
        Ok(entries) => entries,
        Err(e) => {
            let _ = visit(Err(skip(SkipReason::ShardReadError, None, e.to_string())));
            return;
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
                duplicate: false,
            }) => visit(Ok((sample, SampleSpan { start, next }))),
            Some(PartialSample { sample, .. }) => visit(Err(TarSkip {
                reason: SkipReason::DuplicateMember,
                shard: sample.shard,
                member: Some(sample.key),
                detail: "the same extension appears twice in one sample".into(),
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
                return;
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
            return;
        }
        let expected = entry.size();
        // Cap the up-front allocation: the header's size is data, not a promise.
        let mut data = Vec::with_capacity(expected.min(1 << 24) as usize);
        let read = entry.read_to_end(&mut data);
        let truncated = match read {
            Ok(n) if n as u64 == expected => None,
            Ok(n) => Some(format!("member has {n} of {expected} bytes")),
            Err(e) => Some(e.to_string()),
        };
        if let Some(detail) = truncated {
            // The sample holding this member is incomplete; it is dropped and the shard ends.
            let _ = visit(Err(skip(SkipReason::TruncatedMember, Some(&path), detail)));
            return;
        }
        next_entry_start = block_end();
        match &mut current {
            Some(partial) => {
                if partial.sample.members.insert(ext, data).is_some() {
                    partial.duplicate = true;
                }
            }
            None => {
                current = Some(PartialSample {
                    sample: RawSample {
                        key,
                        shard: shard.to_path_buf(),
                        members: BTreeMap::from([(ext, data)]),
                    },
                    start: entry_start,
                    duplicate: false,
                });
            }
        }
    }
    let _ = emit(current.take(), next_entry_start, &mut visit);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn collect(bytes: &[u8]) -> Vec<Result<RawSample, TarSkip>> {
        let mut out = Vec::new();
        for_each_sample_in(Path::new("t.tar"), bytes, |item| {
            out.push(item);
            ControlFlow::Continue(())
        });
        out
    }

    #[test]
    fn member_names_split_at_first_dot_of_basename() {
        assert_eq!(
            split_member_name("a.b/dir/000001.seg.PNG"),
            Some(("a.b/dir/000001".into(), "seg.png".into()))
        );
        assert_eq!(split_member_name("x/noext"), None);
        assert_eq!(split_member_name("x/.hidden"), None);
        assert_eq!(split_member_name("x/key."), None);
    }

    #[test]
    fn consecutive_members_group_into_samples() {
        let bytes = tar_of(&[
            ("d/1.jpg", b"J1"),
            ("d/1.txt", b"T1"),
            ("__index__", b"ignored"),
            ("d/2.TXT", b"T2"),
            ("d/2.cls", b"3"),
        ]);
        let items = collect(&bytes);
        assert_eq!(items.len(), 2);
        let first = items[0].as_ref().unwrap();
        assert_eq!(first.key, "d/1");
        assert_eq!(first.members["jpg"], b"J1");
        assert_eq!(first.members["txt"], b"T1");
        let second = items[1].as_ref().unwrap();
        assert_eq!(second.key, "d/2");
        assert_eq!(second.members.keys().collect::<Vec<_>>(), ["cls", "txt"]);
    }

    #[test]
    fn truncated_tar_reports_and_ends() {
        let bytes = tar_of(&[("1.txt", b"first"), ("2.txt", &[b'x'; 2000]), ("3.txt", b"third")]);
        // Cut inside the second member's data.
        let items = collect(&bytes[..512 + 512 + 512 + 700]);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].as_ref().unwrap().key, "1");
        let skip = items[1].as_ref().unwrap_err();
        assert_eq!(skip.reason, SkipReason::TruncatedMember);
        assert_eq!(skip.member.as_deref(), Some("2.txt"));
    }

    #[test]
    fn garbage_is_a_read_error_not_a_panic() {
        let items = collect(&[0x55u8; 1500]);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].as_ref().unwrap_err().reason, SkipReason::ShardReadError);
    }

    #[test]
    fn duplicate_extension_skips_the_sample() {
        let bytes = tar_of(&[("1.txt", b"a"), ("1.txt", b"b"), ("2.txt", b"c")]);
        let items = collect(&bytes);
        assert_eq!(items[0].as_ref().unwrap_err().reason, SkipReason::DuplicateMember);
        assert_eq!(items[1].as_ref().unwrap().key, "2");
    }

    /// A PAX `x` header giving `path`, as Python's tarfile writes for long or non-ASCII names.
    fn append_pax_path(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let record_body = format!(" path={path}\n");
        // The record length counts its own digits.
        let mut len = record_body.len() + 1;
        while format!("{len}{record_body}").len() != len {
            len += 1;
        }
        let record = format!("{len}{record_body}");
        let mut pax = tar::Header::new_ustar();
        pax.set_entry_type(tar::EntryType::XHeader);
        pax.set_path("PaxHeader/member").unwrap();
        pax.set_size(record.len() as u64);
        pax.set_mode(0o644);
        pax.set_cksum();
        builder.append(&pax, record.as_bytes()).unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_path("short-name-ignored.bin").unwrap();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }

    fn collect_at(bytes: &[u8], offset: u64) -> Vec<Result<(RawSample, SampleSpan), TarSkip>> {
        let mut out = Vec::new();
        for_each_sample_in_at(Path::new("t.tar"), &bytes[offset as usize..], offset, |item| {
            out.push(item);
            ControlFlow::Continue(())
        });
        out
    }

    /// Samples with GNU long names, PAX paths, a directory, an ignored member and a bad one.
    fn mixed_tar() -> Vec<u8> {
        let long_dir = "d".repeat(120);
        let mut builder = tar::Builder::new(Vec::new());
        let add = |builder: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, data).unwrap();
        };
        add(&mut builder, "a.txt", b"A");
        add(&mut builder, "a.png", &[7u8; 700]);
        add(&mut builder, &format!("{long_dir}/b.txt"), b"B");
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_size(0);
        dir.set_mode(0o755);
        builder.append_data(&mut dir, "somedir/", std::io::empty()).unwrap();
        add(&mut builder, &format!("{long_dir}/b.png"), &[8u8; 1030]);
        append_pax_path(&mut builder, "pax/c.txt", b"C");
        append_pax_path(&mut builder, "pax/c.png", &[9u8; 513]);
        add(&mut builder, "__index__", b"ignored");
        add(&mut builder, "d.txt", b"D1");
        add(&mut builder, "d.txt", b"D2");
        add(&mut builder, "e.txt", b"E");
        builder.into_inner().unwrap()
    }

    #[test]
    fn reading_from_a_span_offset_continues_exactly() {
        let bytes = mixed_tar();
        let all = collect_at(&bytes, 0);
        let keys: Vec<String> = all
            .iter()
            .map(|item| match item {
                Ok((sample, _)) => sample.key.clone(),
                Err(skip) => format!("skip:{}", skip.reason),
            })
            .collect();
        let long_key = format!("{}/b", "d".repeat(120));
        assert_eq!(keys, ["a", long_key.as_str(), "pax/c", "skip:duplicate_member", "e"]);
        for (i, item) in all.iter().enumerate() {
            let Ok((_, span)) = item else { continue };
            assert_eq!(span.start % 512, 0);
            assert_eq!(collect_at(&bytes, span.start), all[i..], "from the start of item {i}");
            assert_eq!(collect_at(&bytes, span.next), all[i + 1..], "from after item {i}");
        }
    }

    #[test]
    fn read_samples_at_finds_samples_by_start() {
        let bytes = mixed_tar();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mixed.tar");
        std::fs::write(&path, &bytes).unwrap();
        let spans: Vec<(String, SampleSpan)> = collect_at(&bytes, 0)
            .into_iter()
            .filter_map(Result::ok)
            .map(|(sample, span)| (sample.key, span))
            .collect();
        let (e_key, e_span) = &spans[3];
        let (c_key, c_span) = &spans[2];
        let inside_c = c_span.start + 512;
        let found = read_samples_at(&path, &[e_span.start, c_span.start, inside_c]).unwrap();
        assert_eq!(found.len(), 2, "no sample starts inside another");
        assert_eq!(&found[&e_span.start].key, e_key);
        assert_eq!(&found[&c_span.start].key, c_key);
        assert_eq!(found[&c_span.start].members["png"], [9u8; 513]);
        // The file-based reader agrees with the in-memory one from any offset.
        let mut from_file = Vec::new();
        for_each_sample_at(&path, c_span.start, |item| {
            from_file.push(item);
            ControlFlow::Continue(())
        });
        let mut from_memory = Vec::new();
        let offset = c_span.start as usize;
        for_each_sample_in_at(&path, &bytes[offset..], c_span.start, |item| {
            from_memory.push(item);
            ControlFlow::Continue(())
        });
        assert_eq!(from_file.len(), 3);
        assert_eq!(from_file, from_memory);
    }

    #[test]
    fn a_read_error_recurs_when_reading_again_from_the_span() {
        let bytes = tar_of(&[("1.txt", b"first"), ("2.txt", b"second")]);
        let mut broken = bytes.clone();
        // Corrupt the second header's checksum field.
        broken[1024 + 148] ^= 0x11;
        let all = collect_at(&broken, 0);
        assert_eq!(all.len(), 2);
        let (_, span) = all[0].as_ref().unwrap();
        assert_eq!(span.next, 1024);
        let again = collect_at(&broken, span.next);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].as_ref().unwrap_err().reason, SkipReason::ShardReadError);
    }

    #[test]
    fn missing_shard_is_one_unreadable_skip() {
        let mut items = Vec::new();
        for_each_sample(Path::new("/nonexistent/shard.tar"), |item| {
            items.push(item);
            ControlFlow::Continue(())
        });
        assert_eq!(items.len(), 1);
        let skip = items[0].as_ref().unwrap_err();
        assert_eq!(skip.reason, SkipReason::UnreadableShard);
        assert!(skip.to_string().contains("/nonexistent/shard.tar"));
    }
}
