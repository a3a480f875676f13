//! MetaCLIP metadata: the list of entries to match, built as MetaCLIP builds it.
//!
//! MetaCLIP's list is the numbers `0`–`99`, then the WordNet synset names, then user lists
//! (Wikipedia unigrams, bigrams, titles), as a set: empty entries and entries that are a
//! single ASCII punctuation character are left out. A synset's name is its first lemma,
//! lowercased, `_` → space, without an adjective's syntactic marker (`(a)`, `(p)`, `(ip)`), as
//! NLTK's `Synset.name()` gives it. Here WordNet is read from Debian's `wordnet-base`
//! (`/usr/share/wordnet/data.{noun,verb,adj,adv}`, WordNet 3.0, the version NLTK ships).
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::CurateError;

/// Where Debian's `wordnet-base` puts the database.
pub const DEFAULT_WORDNET_DIR: &str = "/usr/share/wordnet";

/// The WordNet data files, one per part of speech.
const WORDNET_DATA_FILES: [&str; 4] = ["data.noun", "data.verb", "data.adj", "data.adv"];

/// Ordered, duplicate-free metadata entries; an entry's id is its index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<String>,
    seen: HashSet<String>,
}

impl Metadata {
    /// Metadata from `entries`, keeping the first of repeated entries and leaving out the
    /// ones MetaCLIP leaves out (empty, or one punctuation character).
    pub fn from_entries(entries: impl IntoIterator<Item = String>) -> Self {
        let mut metadata = Self::default();
        metadata.extend(entries);
        metadata
    }

    /// Append entries (same rules as [`Metadata::from_entries`]).
    pub fn extend(&mut self, entries: impl IntoIterator<Item = String>) {
        for entry in entries {
            let single_punct = entry.len() == 1 && entry.as_bytes()[0].is_ascii_punctuation();
            if entry.is_empty() || single_punct || self.seen.contains(&entry) {
                continue;
            }
            self.seen.insert(entry.clone());
            self.entries.push(entry);
        }
    }

    /// The entries, by id.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// Entry `id`.
    pub fn entry(&self, id: u32) -> &str {
        &self.entries[id as usize]
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// MetaCLIP's built-in part: `0`..`99` when `numbers`, then WordNet synset names from
    /// `wordnet_dir` when given.
    pub fn builtin(numbers: bool, wordnet_dir: Option<&Path>) -> Result<Self, CurateError> {
        let mut metadata = Self::default();
        if numbers {
            metadata.extend((0..100).map(|n| n.to_string()));
        }
        if let Some(dir) = wordnet_dir {
            metadata.extend(wordnet_synset_names(dir)?);
        }
        Ok(metadata)
    }

    /// Append the entries of a user file: a JSON list of strings when the name ends in
    /// `.json` (MetaCLIP's `metadata.json`), otherwise one entry per line (ends trimmed,
    /// blank lines skipped).
    pub fn extend_from_file(&mut self, path: &Path) -> Result<(), CurateError> {
        let bad = |reason: String| CurateError::Metadata {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| CurateError::io(path, e))?;
        let text = String::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8: {e}")))?;
        if path.extension().is_some_and(|x| x == "json") {
            let list: Vec<String> =
                serde_json::from_str(&text).map_err(|e| bad(format!("expected a JSON list of strings: {e}")))?;
            self.extend(list);
        } else {
            self.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            );
        }
        Ok(())
    }
}

/// The names of all WordNet synsets under `dir`, in file order (nouns, verbs, adjectives,
/// adverbs), repeats included.
pub fn wordnet_synset_names(dir: &Path) -> Result<Vec<String>, CurateError> {
    let mut names = Vec::new();
    for file in WORDNET_DATA_FILES {
        let path = dir.join(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CurateError::WordNetMissing { missing: path })
            }
            Err(e) => return Err(CurateError::io(path, e)),
        };
        for (line_no, line) in text.lines().enumerate() {
            // The licence header's lines start with two spaces.
            if line.starts_with("  ") || line.is_empty() {
                continue;
            }
            names.push(synset_name(line).ok_or_else(|| bad_line(&path, line_no))?);
        }
    }
    Ok(names)
}

fn bad_line(path: &Path, line_no: usize) -> CurateError {
    CurateError::Metadata {
        path: PathBuf::from(path),
        reason: format!("line {}: not a WordNet data line", line_no + 1),
    }
}

/// The synset name of a data line: `offset lex_filenum ss_type w_cnt word lex_id ...` → the
/// first word, marker dropped, lowercased, `_` → space.
fn synset_name(line: &str) -> Option<String> {
    let word = line.split(' ').nth(4).filter(|w| !w.is_empty())?;
    // Adjective markers: `able(a)`, `galore(ip)`; NLTK strips a trailing parenthesised group.
    let word = match (word.ends_with(')'), word.find('(')) {
        (true, Some(open)) => &word[..open],
        _ => word,
    };
    Some(word.to_lowercase().replace('_', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedups_and_drops_what_metaclip_drops() {
        let m = Metadata::from_entries(["cat", "", "!", "cat", "C++", "a b", "."].map(String::from));
        assert_eq!(m.entries(), ["cat", "C++", "a b"]);
        assert_eq!(m.entry(1), "C++");
    }

    #[test]
    fn synset_names_from_data_lines() {
        let noun = "00001930 03 n 01 physical_entity 0 007 @ 00001740 n 0000 | an entity";
        assert_eq!(synset_name(noun).as_deref(), Some("physical entity"));
        let adj = "00002312 00 a 02 Abaxial(a) 0 dorsal 4 002 ;c 06037666 n 0000 | facing away";
        assert_eq!(synset_name(adj).as_deref(), Some("abaxial"));
        assert_eq!(synset_name("00001 03 n"), None);
    }

    #[test]
    fn wordnet_folder_is_read_and_missing_one_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let header = "  1 This software and database is being provided\n";
        std::fs::write(
            dir.path().join("data.noun"),
            format!("{header}00001740 03 n 01 entity 0 003 | x\n00002 03 n 02 Hot_dog 0 frank 0 000 | y\n"),
        )
        .unwrap();
        for f in ["data.verb", "data.adj"] {
            std::fs::write(dir.path().join(f), header).unwrap();
        }
        let err = Metadata::builtin(false, Some(dir.path())).unwrap_err();
        assert!(err.to_string().contains("data.adv") && err.to_string().contains("apt-get install wordnet-base"));
        std::fs::write(dir.path().join("data.adv"), "00003 02 r 01 entity 0 000 | z\n").unwrap();
        let m = Metadata::builtin(true, Some(dir.path())).unwrap();
        assert_eq!(m.len(), 102);
        assert_eq!(&m.entries()[..2], ["0", "1"]);
        assert_eq!(&m.entries()[100..], ["entity", "hot dog"]);
    }

    #[test]
    fn user_files_lines_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let lines = dir.path().join("bigrams.txt");
        std::fs::write(&lines, "hot dog\n\n  New York \r\n").unwrap();
        let json = dir.path().join("metadata.json");
        std::fs::write(&json, r#"["cat", "hot dog"]"#).unwrap();
        let mut m = Metadata::default();
        m.extend_from_file(&lines).unwrap();
        m.extend_from_file(&json).unwrap();
        assert_eq!(m.entries(), ["hot dog", "New York", "cat"]);
        std::fs::write(&json, "{}").unwrap();
        let err = m.extend_from_file(&json).unwrap_err().to_string();
        assert!(err.contains("metadata.json"), "{err}");
    }
}
