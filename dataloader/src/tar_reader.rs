//! Webdataset samples from a local `.tar`: consecutive members sharing a key form one sample.
use std::collections::BTreeMap;
use std::io::Read;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::error::SkipReason;

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

/// Read the shard file at `shard` and call `visit` for each sample or skip, in file order.
///
/// An unopenable shard gives one `UnreadableShard` skip. A read error or a truncated member
/// ends the shard after reporting it; samples before it are delivered. `visit` returns
/// `ControlFlow::Break` to stop early.
pub fn for_each_sample(shard: &Path, visit: impl FnMut(Result<RawSample, TarSkip>) -> ControlFlow<()>) {
    let mut visit = visit;
    match std::fs::File::open(shard) {
        Ok(file) => for_each_sample_in(shard, std::io::BufReader::new(file), visit),
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

/// Like [`for_each_sample`] over any reader; `shard` only names it in samples and skips.
pub fn for_each_sample_in<R: Read>(
    shard: &Path,
    reader: R,
    mut visit: impl FnMut(Result<RawSample, TarSkip>) -> ControlFlow<()>,
) {
    let skip = |reason, member: Option<&str>, detail: String| TarSkip {
        reason,
        shard: shard.to_path_buf(),
        member: member.map(str::to_string),
        detail,
    };
    let mut archive = tar::Archive::new(reader);
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(e) => {
            let _ = visit(Err(skip(SkipReason::ShardReadError, None, e.to_string())));
            return;
        }
    };
    // The sample being assembled, and whether it saw the same extension twice.
    let mut current: Option<(RawSample, bool)> = None;
    let emit = |sample: Option<(RawSample, bool)>,
                visit: &mut dyn FnMut(Result<RawSample, TarSkip>) -> ControlFlow<()>| {
        match sample {
            None => ControlFlow::Continue(()),
            Some((sample, false)) => visit(Ok(sample)),
            Some((sample, true)) => visit(Err(TarSkip {
                reason: SkipReason::DuplicateMember,
                shard: sample.shard,
                member: Some(sample.key),
                detail: "the same extension appears twice in one sample".into(),
            })),
        }
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                // Like webdataset, the sample read so far is still delivered: later checks
                // (missing caption/image) catch it if it lost members.
                if emit(current.take(), &mut visit).is_continue() {
                    let _ = visit(Err(skip(SkipReason::ShardReadError, None, e.to_string())));
                }
                return;
            }
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some((key, ext)) = split_member_name(&path) else {
            continue;
        };
        if current.as_ref().is_some_and(|(s, _)| s.key != key) && emit(current.take(), &mut visit).is_break() {
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
        match &mut current {
            Some((sample, duplicate)) => {
                if sample.members.insert(ext, data).is_some() {
                    *duplicate = true;
                }
            }
            None => {
                let members = BTreeMap::from([(ext, data)]);
                current = Some((
                    RawSample {
                        key,
                        shard: shard.to_path_buf(),
                        members,
                    },
                    false,
                ));
            }
        }
    }
    let _ = emit(current.take(), &mut visit);
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
