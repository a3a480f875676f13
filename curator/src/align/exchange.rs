//! The `align` stage's observation tables across processes: each rank serialises what it
//! observed, every rank gathers all of them and merges them into the table one process
//! would have built over the whole input. Pairs and n-gram texts are sets (union), n-gram
//! counts add up, duplicate candidates are concatenated (their order is fixed later by
//! shard path and key), pHashes and embeddings of candidate images are united, and shard
//! ids are renumbered by path.
//!
//! The encoding is private to one run (all ranks run the same binary): little-endian
//! integers, length-prefixed byte strings, a leading format tag.
use std::collections::hash_map::Entry;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use super::observed::{Candidate, Observed};
use crate::error::CurateError;

const FORMAT: u32 = 0x414c_4e31; // "ALN1"

/// `observed` as bytes.
pub(super) fn encode(observed: &Observed) -> Vec<u8> {
    let mut out = Vec::new();
    put_u32(&mut out, FORMAT);
    let mut paths: Vec<(&PathBuf, u32)> = observed.shard_ids.iter().map(|(p, &id)| (p, id)).collect();
    paths.sort_by_key(|&(_, id)| id);
    put_len(&mut out, paths.len());
    for (path, id) in paths {
        put_u32(&mut out, id);
        put_bytes(&mut out, path.as_os_str().as_bytes());
    }
    put_len(&mut out, observed.pairs.len());
    for &(text, image) in &observed.pairs {
        put_u64(&mut out, text);
        put_u128(&mut out, image);
    }
    put_len(&mut out, observed.ngram_counts.len());
    for (&ngram, &count) in &observed.ngram_counts {
        put_u64(&mut out, ngram);
        put_u64(&mut out, count);
    }
    put_len(&mut out, observed.text_ngrams.len());
    for (&text, ngrams) in &observed.text_ngrams {
        put_u64(&mut out, text);
        put_len(&mut out, ngrams.len());
        for &h in ngrams.iter() {
            put_u64(&mut out, h);
        }
    }
    put_len(&mut out, observed.candidates.len());
    for c in &observed.candidates {
        put_u32(&mut out, c.shard);
        put_bytes(&mut out, c.key.as_bytes());
        put_u128(&mut out, c.image);
        put_u64(&mut out, c.text);
    }
    put_len(&mut out, observed.phashes.len());
    for (&image, &hash) in &observed.phashes {
        put_u128(&mut out, image);
        match hash {
            Some(h) => {
                out.push(1);
                put_u64(&mut out, h);
            }
            None => out.push(0),
        }
    }
    put_len(&mut out, observed.embeddings.len());
    for (&image, embedding) in &observed.embeddings {
        put_u128(&mut out, image);
        match embedding {
            Some(e) => {
                out.push(1);
                put_len(&mut out, e.len());
                for &x in e.iter() {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
            None => out.push(0),
        }
    }
    out
}

/// Merges the table `bytes` (from rank `rank`) into `into`.
pub(super) fn merge(into: &mut Observed, bytes: &[u8], rank: usize) -> Result<(), CurateError> {
    let mut r = Reader { bytes, at: 0, rank };
    if r.u32()? != FORMAT {
        return Err(r.error("unknown table format"));
    }
    // Their shard ids → ours (new paths get the next free id).
    let mut shard_map = std::collections::HashMap::new();
    for _ in 0..r.len()? {
        let theirs = r.u32()?;
        let path = PathBuf::from(std::ffi::OsString::from_vec(r.bytes()?.to_vec()));
        let next = into.shard_ids.len() as u32;
        let ours = *into.shard_ids.entry(path).or_insert(next);
        shard_map.insert(theirs, ours);
    }
    for _ in 0..r.len()? {
        let text = r.u64()?;
        let image = r.u128()?;
        into.pairs.insert((text, image));
    }
    for _ in 0..r.len()? {
        let ngram = r.u64()?;
        let count = r.u64()?;
        *into.ngram_counts.entry(ngram).or_default() += count;
    }
    for _ in 0..r.len()? {
        let text = r.u64()?;
        let n = r.len()?;
        let ngrams = (0..n).map(|_| r.u64()).collect::<Result<Vec<u64>, _>>()?;
        into.text_ngrams
            .entry(text)
            .or_insert_with(|| ngrams.into_boxed_slice());
    }
    for _ in 0..r.len()? {
        let theirs = r.u32()?;
        let shard = *shard_map
            .get(&theirs)
            .ok_or_else(|| r.error(&format!("candidate names unknown shard id {theirs}")))?;
        let key = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| r.error("a sample key is not UTF-8"))?;
        let image = r.u128()?;
        let text = r.u64()?;
        into.candidates.push(Candidate {
            shard,
            key,
            image,
            text,
        });
    }
    for _ in 0..r.len()? {
        let image = r.u128()?;
        let hash = match r.take(1)?[0] {
            0 => None,
            1 => Some(r.u64()?),
            _ => return Err(r.error("bad pHash tag")),
        };
        unite(&mut into.phashes, image, hash);
    }
    for _ in 0..r.len()? {
        let image = r.u128()?;
        let embedding = match r.take(1)?[0] {
            0 => None,
            1 => {
                let n = r.len()?;
                let raw = r.take(n.checked_mul(4).ok_or_else(|| r.error("embedding too long"))?)?;
                let values: Box<[f32]> = raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect();
                Some(values)
            }
            _ => return Err(r.error("bad embedding tag")),
        };
        unite(&mut into.embeddings, image, embedding);
    }
    if r.at != bytes.len() {
        return Err(r.error("trailing bytes"));
    }
    Ok(())
}

/// Files `value` (a pHash or an embedding; `None` = the image did not decode) for `image`. The
/// value is a function of the image bytes, so ranks agree, except that a failed decode on any
/// rank marks the image undecodable, as it would in one process.
fn unite<T>(map: &mut std::collections::HashMap<u128, Option<T>>, image: u128, value: Option<T>) {
    match map.entry(image) {
        Entry::Vacant(slot) => {
            slot.insert(value);
        }
        Entry::Occupied(mut slot) => {
            if value.is_none() {
                slot.insert(None);
            }
        }
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u128(out: &mut Vec<u8>, v: u128) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_len(out: &mut Vec<u8>, n: usize) {
    put_u64(out, n as u64);
}
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    rank: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, what: &str) -> CurateError {
        CurateError::Reduce(format!(
            "align tables from rank {}: {what} at byte {} of {}",
            self.rank,
            self.at,
            self.bytes.len()
        ))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], CurateError> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.error("truncated"));
        };
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn u32(&mut self) -> Result<u32, CurateError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, CurateError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn u128(&mut self) -> Result<u128, CurateError> {
        Ok(u128::from_le_bytes(self.take(16)?.try_into().expect("16 bytes")))
    }
    /// A length, checked against the bytes left so a corrupt one cannot ask for a huge
    /// allocation (every element takes at least one byte).
    fn len(&mut self) -> Result<usize, CurateError> {
        let n = self.u64()?;
        let left = (self.bytes.len() - self.at) as u64;
        if n > left {
            return Err(self.error(&format!("length {n} exceeds the {left} bytes left")));
        }
        Ok(n as usize)
    }
    fn bytes(&mut self) -> Result<&'a [u8], CurateError> {
        let n = self.len()?;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(shard: &str, seed: u64) -> Observed {
        let mut o = Observed::default();
        o.shard_ids.insert(PathBuf::from(shard), 0);
        o.shard_ids.insert(PathBuf::from("common.tar"), 1);
        for i in 0..20u64 {
            o.pairs.insert((seed * 100 + i % 7, u128::from(i % 5)));
            *o.ngram_counts.entry(i % 9).or_default() += seed + 1;
            o.text_ngrams
                .insert(seed * 100 + i % 7, vec![i, i + 1].into_boxed_slice());
            o.candidates.push(Candidate {
                shard: (i % 2) as u32,
                key: format!("{seed}-{i:04}"),
                image: u128::from(i % 5) << 70,
                text: seed * 100 + i % 7,
            });
            o.phashes
                .insert(u128::from(i % 5) << 70, (i % 4 != 0).then_some(i * 31));
            o.embeddings.insert(
                u128::from(seed * 10 + i % 3),
                (i % 3 != 2).then(|| vec![i as f32, 0.5, -1.0].into_boxed_slice()),
            );
        }
        o
    }

    #[test]
    fn merging_two_ranks_tables_equals_building_one() {
        let (a, b) = (observed("a.tar", 1), observed("b.tar", 2));
        let mut merged = observed("a.tar", 1);
        merge(&mut merged, &encode(&b), 1).unwrap();

        let pairs: std::collections::HashSet<_> = a.pairs.union(&b.pairs).copied().collect();
        assert_eq!(merged.pairs, pairs);
        for (ngram, count) in &merged.ngram_counts {
            assert_eq!(*count, a.ngram_counts[ngram] + b.ngram_counts[ngram]);
        }
        assert_eq!(merged.text_ngrams.len(), a.text_ngrams.len() + b.text_ngrams.len());
        assert_eq!(merged.candidates.len(), 40);
        // b's shard ids are renumbered by path: "common.tar" keeps a's id 1, "b.tar" is new.
        assert_eq!(merged.shard_ids.len(), 3);
        let b_id = merged.shard_ids[&PathBuf::from("b.tar")];
        assert_eq!(b_id, 2);
        let from_b: Vec<_> = merged.candidates[20..].iter().map(|c| c.shard).collect();
        assert!(from_b.iter().all(|&s| s == b_id || s == 1), "{from_b:?}");
        assert_eq!(merged.phashes, a.phashes);
        assert_eq!(merged.embeddings.len(), 6);
        assert_eq!(merged.embeddings[&20], b.embeddings[&20]);
        assert!(merged.embeddings[&12].is_none());
    }

    #[test]
    fn an_undecodable_image_on_any_rank_stays_undecodable() {
        let mut a = Observed::default();
        a.phashes.insert(7, Some(99));
        let mut b = Observed::default();
        b.phashes.insert(7, None);
        merge(&mut a, &encode(&b), 1).unwrap();
        assert_eq!(a.phashes[&7], None);
    }

    #[test]
    fn corrupt_tables_are_errors_naming_the_rank() {
        let bytes = encode(&observed("a.tar", 3));
        for cut in [0, 3, 10, bytes.len() / 2, bytes.len() - 1] {
            let e = merge(&mut Observed::default(), &bytes[..cut], 4)
                .unwrap_err()
                .to_string();
            assert!(e.contains("rank 4"), "{e}");
        }
        let mut huge = bytes.clone();
        huge[4..12].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = merge(&mut Observed::default(), &huge, 1).unwrap_err().to_string();
        assert!(e.contains("exceeds"), "{e}");
    }
}
