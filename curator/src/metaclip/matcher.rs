//! MetaCLIP's substring matching: which metadata entries occur in a text.
//!
//! The rule (MetaCLIP's `substr_matching`): the text is padded with one space on each side,
//! each of `, . ; : ? !` and the backtick gets a space on each side, and tab, newline and
//! carriage return become spaces. An entry `e` matches when `" e "` occurs in that spaced text,
//! case-sensitively. Entries are not normalised, so an entry holding one of the wrapped
//! punctuation marks (`"St. Louis"`) can never match, exactly as in MetaCLIP.
//! All occurrences are found, overlapping ones included (`" New York "` and `" York "` both
//! match `"New York"`), with one Aho–Corasick pass over the spaced text.
use aho_corasick::{AhoCorasick, MatchKind};

use super::metadata::Metadata;
use crate::error::CurateError;

/// Characters MetaCLIP surrounds with spaces before matching.
const WRAPPED_PUNCTUATION: [char; 7] = [',', '.', ';', ':', '?', '!', '`'];
/// Characters MetaCLIP turns into spaces.
const SPACED_CONTROLS: [char; 3] = ['\t', '\n', '\r'];

/// Write MetaCLIP's spaced form of `text` into `out` (cleared first).
///
/// One pass is equivalent to MetaCLIP's successive `str.replace` calls: no replacement
/// introduces a character that a later one rewrites.
pub fn spaced_text_into(text: &str, out: &mut String) {
    out.clear();
    out.reserve(text.len() + 2);
    out.push(' ');
    for c in text.chars() {
        if WRAPPED_PUNCTUATION.contains(&c) {
            out.push(' ');
            out.push(c);
            out.push(' ');
        } else if SPACED_CONTROLS.contains(&c) {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out.push(' ');
}

/// MetaCLIP's spaced form of `text`.
pub fn spaced_text(text: &str) -> String {
    let mut out = String::new();
    spaced_text_into(text, &mut out);
    out
}

/// An Aho–Corasick automaton over the space-padded entries of a [`Metadata`].
pub struct Matcher {
    automaton: AhoCorasick,
    entries: usize,
}

/// Reusable buffers for [`Matcher::match_into`], one per thread.
#[derive(Default)]
pub struct MatchScratch {
    spaced: String,
}

impl Matcher {
    /// Build the automaton; entry ids are indices into `metadata`.
    pub fn new(metadata: &Metadata) -> Result<Self, CurateError> {
        let patterns = metadata.entries().iter().map(|e| format!(" {e} "));
        let automaton = AhoCorasick::builder()
            // Standard semantics are what overlapping search needs.
            .match_kind(MatchKind::Standard)
            .build(patterns)
            .map_err(|e| CurateError::Automaton(e.to_string()))?;
        Ok(Self {
            automaton,
            entries: metadata.len(),
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Ids of the entries matched by `text`, ascending and without repeats, into `matched`
    /// (cleared first).
    pub fn match_into(&self, text: &str, scratch: &mut MatchScratch, matched: &mut Vec<u32>) {
        matched.clear();
        spaced_text_into(text, &mut scratch.spaced);
        for m in self.automaton.find_overlapping_iter(scratch.spaced.as_str()) {
            matched.push(m.pattern().as_u32());
        }
        matched.sort_unstable();
        matched.dedup();
    }

    /// Ids of the entries matched by `text`, ascending.
    pub fn matched(&self, text: &str) -> Vec<u32> {
        let mut matched = Vec::new();
        self.match_into(text, &mut MatchScratch::default(), &mut matched);
        matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched_entries(entries: &[&str], text: &str) -> Vec<String> {
        let metadata = Metadata::from_entries(entries.iter().map(|s| s.to_string()));
        let matcher = Matcher::new(&metadata).unwrap();
        matcher
            .matched(text)
            .into_iter()
            .map(|id| metadata.entry(id).to_string())
            .collect()
    }

    #[test]
    fn spacing_follows_metaclip() {
        assert_eq!(spaced_text("a,b.c"), " a , b . c ");
        assert_eq!(spaced_text("x\ty\nz\r"), " x y z  ");
        assert_eq!(spaced_text("`q`?!;:"), "  ` q `  ?  !  ;  :  ");
        assert_eq!(spaced_text(""), "  ");
        // Other punctuation is left alone.
        assert_eq!(spaced_text("rock'n'roll (live)"), " rock'n'roll (live) ");
    }

    #[test]
    fn whole_words_only() {
        let entries = ["cat", "dog"];
        assert_eq!(matched_entries(&entries, "a cat on a mat"), ["cat"]);
        assert!(matched_entries(&entries, "concatenate dogs").is_empty());
        assert!(matched_entries(&entries, "cat's toy").is_empty());
        assert_eq!(matched_entries(&entries, "cat"), ["cat"]);
    }

    #[test]
    fn wrapped_punctuation_separates_words_but_others_do_not() {
        let entries = ["cat", "dog"];
        assert_eq!(matched_entries(&entries, "cat,dog."), ["cat", "dog"]);
        assert_eq!(matched_entries(&entries, "`cat`"), ["cat"]);
        assert_eq!(matched_entries(&entries, "dog?!"), ["dog"]);
        assert!(matched_entries(&entries, "(cat) \"dog\" cat-dog").is_empty());
        assert_eq!(matched_entries(&entries, "line\ncat\tdog"), ["cat", "dog"]);
    }

    #[test]
    fn case_sensitive() {
        let entries = ["Paris", "apple"];
        assert_eq!(matched_entries(&entries, "Paris in spring"), ["Paris"]);
        assert!(matched_entries(&entries, "paris APPLE Apple").is_empty());
    }

    #[test]
    fn overlapping_and_multiword_entries() {
        let entries = ["New York", "York", "New York City", "city", "hot dog", "dog"];
        assert_eq!(
            matched_entries(&entries, "New York City, hot dog"),
            ["New York", "York", "New York City", "hot dog", "dog"]
        );
        // The double space left by punctuation breaks a multiword entry.
        assert_eq!(matched_entries(&entries, "hot. dog"), ["dog"]);
        // Entries with wrapped punctuation can never match (MetaCLIP behaviour).
        assert!(matched_entries(&["St. Louis"], "St. Louis").is_empty());
        // Repeated occurrences count once.
        assert_eq!(matched_entries(&entries, "dog dog dog"), ["dog"]);
    }

    #[test]
    fn unicode_text() {
        let entries = ["café", "naïve art"];
        assert_eq!(matched_entries(&entries, "un café, naïve art!"), ["café", "naïve art"]);
        assert!(matched_entries(&entries, "cafés").is_empty());
    }
}
