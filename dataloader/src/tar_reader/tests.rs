//! Tests of the tar reader: sample grouping, spans and resuming, limits.
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

fn collect_limited(bytes: &[u8], offset: u64, limits: ReadLimits) -> Vec<Result<(RawSample, SampleSpan), TarSkip>> {
    let mut out = Vec::new();
    for_each_sample_in_at_with_limits(Path::new("t.tar"), &bytes[offset as usize..], offset, limits, |item| {
        out.push(item);
        ControlFlow::Continue(())
    });
    out
}

fn outcome(items: &[Result<(RawSample, SampleSpan), TarSkip>]) -> Vec<String> {
    items
        .iter()
        .map(|item| match item {
            Ok((sample, _)) => sample.key.clone(),
            Err(skip) => format!("skip:{}:{}", skip.reason, skip.member.as_deref().unwrap_or("")),
        })
        .collect()
}

fn member_limit(max_member_bytes: u64) -> ReadLimits {
    ReadLimits {
        max_member_bytes,
        ..ReadLimits::default()
    }
}

/// Sample 1's second member is 3000 bytes; sample 3 starts with a 5000-byte member; a big
/// member outside any sample (`__index__`) is not a skip.
fn tar_with_big_members() -> Vec<u8> {
    tar_of(&[
        ("0.txt", b"zero"),
        ("1.txt", b"one"),
        ("1.bin", &[1u8; 3000]),
        ("1.json", b"{}"),
        ("2.txt", b"two"),
        ("__index__", &[9u8; 4000]),
        ("3.bin", &[3u8; 5000]),
        ("3.txt", b"three"),
        ("4.txt", b"four"),
    ])
}

#[test]
fn oversized_member_skips_its_sample_once_and_the_shard_goes_on() {
    let bytes = tar_with_big_members();
    let items = collect_limited(&bytes, 0, member_limit(2048));
    assert_eq!(
        outcome(&items),
        [
            "0",
            "skip:oversized_member:1.bin",
            "2",
            "skip:oversized_member:3.bin",
            "4"
        ]
    );
    let Err(skip) = &items[1] else { unreachable!() };
    assert!(
        skip.detail.contains("3000") && skip.detail.contains("max_member_bytes"),
        "{skip}"
    );
    // Negative control: a limit above the members reads them all.
    let items = collect_limited(&bytes, 0, member_limit(5000));
    assert_eq!(outcome(&items), ["0", "1", "2", "3", "4"]);
    let (sample, _) = items[1].as_ref().unwrap();
    assert_eq!(sample.members["bin"], [1u8; 3000]);
    // The default limit (64 MiB) reads them too.
    assert_eq!(collect_at(&bytes, 0).len(), 5);
}

#[test]
fn reading_resumes_exactly_right_after_an_oversized_member() {
    let bytes = tar_with_big_members();
    let limits = member_limit(2048);
    let all = collect_limited(&bytes, 0, limits);
    let (_, before) = all[0].as_ref().unwrap();
    let (_, after) = all[2].as_ref().unwrap();
    // Sample 2 starts right after sample 1's last member (1.json): 1.txt, 1.bin (3000 bytes
    // in 6 blocks) and 1.json follow sample 0's end, each with a header block.
    assert_eq!(after.start, before.next + 11 * 512);
    assert_eq!(collect_limited(&bytes, after.start, limits), all[2..]);
    // From right after the sample before it, the same skip comes first.
    assert_eq!(collect_limited(&bytes, before.next, limits), all[1..]);
    for (i, item) in all.iter().enumerate() {
        let Ok((_, span)) = item else { continue };
        assert_eq!(collect_limited(&bytes, span.start, limits), all[i..], "from item {i}");
        assert_eq!(
            collect_limited(&bytes, span.next, limits),
            all[i + 1..],
            "after item {i}"
        );
    }
}

#[test]
fn shard_limit_ends_the_shard_as_oversized_shard() {
    let members: Vec<(String, Vec<u8>)> = (0..10)
        .flat_map(|i| {
            [
                (format!("{i}.txt"), vec![b'c'; 100]),
                (format!("{i}.bin"), vec![i as u8; 1000]),
            ]
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = members.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    let bytes = tar_of(&refs);
    let unlimited = collect_at(&bytes, 0);
    assert_eq!(unlimited.len(), 10);
    // Each sample is 2 + 1 + 2 blocks = 2560 bytes: a limit inside the header of the fifth
    // sample's second member. As after a read error, what was read of that sample is
    // delivered (later checks find it incomplete) and the shard ends.
    let limits = ReadLimits {
        max_shard_bytes: 4 * 2560 + 1000,
        ..ReadLimits::default()
    };
    let items = collect_limited(&bytes, 0, limits);
    assert_eq!(outcome(&items), ["0", "1", "2", "3", "4", "skip:oversized_shard:"]);
    assert_eq!(items[4].as_ref().unwrap().0.members.keys().collect::<Vec<_>>(), ["txt"]);
    let Err(skip) = &items[5] else { unreachable!() };
    assert!(skip.detail.contains("max_shard_bytes"), "{skip}");
    // Resuming after a sample meets the same end; inside a member's data it is a skip too.
    let (_, span) = items[3].as_ref().unwrap();
    assert_eq!(collect_limited(&bytes, span.next, limits), items[4..]);
    let inside_data = ReadLimits {
        max_shard_bytes: 4 * 2560 + 1536 + 100,
        ..ReadLimits::default()
    };
    assert_eq!(
        outcome(&collect_limited(&bytes, 0, inside_data)),
        ["0", "1", "2", "3", "skip:oversized_shard:4.bin"]
    );
    // A limit at the tar's exact length is not exceeded.
    let exact = ReadLimits {
        max_shard_bytes: bytes.len() as u64,
        ..ReadLimits::default()
    };
    assert_eq!(collect_limited(&bytes, 0, exact), unlimited);
}

#[test]
fn shard_limit_applies_to_the_decompressed_stream_of_a_file() {
    let members: Vec<(String, Vec<u8>)> = (0..8).map(|i| (format!("{i}.txt"), vec![0u8; 4096])).collect();
    let refs: Vec<(&str, &[u8])> = members.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    let tar = tar_of(&refs);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zeros.tar.zst");
    std::fs::write(&path, zstd::stream::encode_all(&tar[..], 3).unwrap()).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 1000, "compressed to little");
    let read = |limits| {
        let mut items = Vec::new();
        for_each_sample_at_with_limits(&path, 0, limits, |item| {
            items.push(item.map(|(sample, _)| sample.key).map_err(|skip| skip.reason));
            ControlFlow::Continue(())
        });
        items
    };
    let limits = ReadLimits {
        max_shard_bytes: 3 * (512 + 4096),
        ..ReadLimits::default()
    };
    // Three whole members fit; the fourth's header crosses the limit. The stream is not
    // finished afterwards (no shard read error for the rest left unread).
    assert_eq!(
        read(limits),
        [
            Ok("0".into()),
            Ok("1".into()),
            Ok("2".into()),
            Err(SkipReason::OversizedShard)
        ]
    );
    assert_eq!(read(ReadLimits::default()).len(), 8);
}
