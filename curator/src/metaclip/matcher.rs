//! MetaCLIP's substring matching: which metadata entries occur in a text.
//!
//! The rule (MetaCLIP's `substr_matching`): the text is padded with one space on each side,
//! each of `, . ; : ? !` and the backtick gets a space on each side, and tab, newline and
//! carriage return become spaces. An entry `e` matches when `" e "` occurs in that spaced text,
//! case-sensitively. Entries are not normalised, so an entry holding one of the wrapped
//! punctuation marks (`"St. Louis"`) can never match, exactly as in MetaCLIP.
//! All occurrences are found, overlapping ones included (`" New York "` and `" York "` both
//! match `"New York"`).
//!
//! How [`Matcher`] finds them: every occurrence of `" e "` starts and ends at a space of the
//! spaced text, so it is a run of consecutive space-separated tokens of that text (empty
//! tokens for double spaces) equal to the tokens of `e`, followed by a space. The matcher
//! maps each distinct entry token to an id (one hash lookup per text token) and walks a trie
//! over token ids from every token; most walks end after one step. This is exact for any
//! entry (spaces inside entries, double spaces, unicode), with no search automaton; the
//! Aho–Corasick formulation is kept as [`AhoCorasickMatcher`] for comparison and tests.
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

use super::metadata::Metadata;
use crate::error::CurateError;

/// Characters MetaCLIP surrounds with spaces before matching.
const WRAPPED_PUNCTUATION: [u8; 7] = [b',', b'.', b';', b':', b'?', b'!', b'`'];
/// Characters MetaCLIP turns into spaces.
const SPACED_CONTROLS: [u8; 3] = [b'\t', b'\n', b'\r'];

/// What the spacing rule does with one byte.
#[derive(Clone, Copy, PartialEq)]
enum ByteRule {
    Keep,
    Wrap,
    Space,
}

/// The rule for every byte. All rewritten characters are ASCII, and in UTF-8 an ASCII byte
/// never occurs inside a multi-byte character, so rewriting bytes equals rewriting chars.
const BYTE_RULES: [ByteRule; 256] = {
    let mut rules = [ByteRule::Keep; 256];
    let mut i = 0;
    while i < WRAPPED_PUNCTUATION.len() {
        rules[WRAPPED_PUNCTUATION[i] as usize] = ByteRule::Wrap;
        i += 1;
    }
    let mut i = 0;
    while i < SPACED_CONTROLS.len() {
        rules[SPACED_CONTROLS[i] as usize] = ByteRule::Space;
        i += 1;
    }
    rules
};

/// Write MetaCLIP's spaced form of `text` into `out` (cleared first), as bytes.
///
/// One pass is equivalent to MetaCLIP's successive `str.replace` calls: no replacement
/// introduces a character that a later one rewrites.
fn spaced_bytes_into(text: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(text.len() + 2);
    out.push(b' ');
    for &b in text {
        match BYTE_RULES[b as usize] {
            ByteRule::Keep => out.push(b),
            ByteRule::Wrap => out.extend_from_slice(&[b' ', b, b' ']),
            ByteRule::Space => out.push(b' '),
        }
    }
    out.push(b' ');
}

/// Write MetaCLIP's spaced form of `text` into `out` (cleared first).
pub fn spaced_text_into(text: &str, out: &mut String) {
    let mut bytes = std::mem::take(out).into_bytes();
    spaced_bytes_into(text.as_bytes(), &mut bytes);
    // Only ASCII bytes were inserted or replaced by ASCII bytes, so this stays UTF-8; the
    // checked conversion cannot fail and costs one pass over a short text.
    *out = String::from_utf8(bytes).unwrap_or_default();
}

/// MetaCLIP's spaced form of `text`.
pub fn spaced_text(text: &str) -> String {
    let mut out = String::new();
    spaced_text_into(text, &mut out);
    out
}

/// FxHash (rustc's hasher): a multiply-rotate hash, fast on short keys. The keys are entry
/// tokens and trie edges built from the metadata, not untrusted input that could be chosen to
/// collide (a collision only costs time anyway).
#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // The multiply leaves the low bits depending on the low input bits only, and the
        // table indexes by the low bits: fold the high half in.
        self.hash ^ (self.hash >> 32)
    }
}

type FxBuild = BuildHasherDefault<FxHasher>;

/// No token id: the text token occurs in no entry.
const NO_TOKEN: u32 = u32::MAX;
/// No entry ends at this trie node.
const NO_ENTRY: u32 = u32::MAX;

/// A trie node: the entry spelled by the path to it, and whether it has children.
#[derive(Clone, Copy)]
struct TrieNode {
    entry: u32,
    has_children: bool,
}

/// What the first token of an occurrence leads to: the entry it ends (if any) and the trie
/// node to go on from (`NO_NODE` when no longer entry starts with it).
#[derive(Clone, Copy)]
struct RootStep {
    entry: u32,
    node: u32,
}

/// No trie node to go on from.
const NO_NODE: u32 = u32::MAX;

/// A slot of [`TokenTable`]: a token's length, its first 8 bytes, and its id.
#[derive(Clone, Copy)]
struct TokenSlot {
    head: u64,
    len: u32,
    token: u32,
}

/// `len` of an empty slot.
const EMPTY_SLOT: u32 = u32::MAX;

/// Open-addressing table of the distinct entry tokens: bytes → token id. A slot holds the
/// first 8 bytes, so most lookups compare in registers without following a pointer (most
/// tokens are short words).
struct TokenTable {
    slots: Vec<TokenSlot>,
    /// 64 − log2(slots): the slot of a hash is its top bits.
    shift: u32,
    /// Bytes past the first 8 of token `id`: `tails[tail_start[id]..tail_start[id + 1]]`.
    tails: Vec<u8>,
    tail_start: Vec<u32>,
}

/// A token's first 8 bytes, zero-padded, as a little-endian word.
#[inline]
fn head_of(token: &[u8]) -> u64 {
    let n = token.len().min(8);
    let mut word = [0u8; 8];
    word[..n].copy_from_slice(&token[..n]);
    u64::from_le_bytes(word)
}

#[inline]
fn token_hash(token: &[u8], head: u64) -> u64 {
    let mut hash = ((token.len() as u64).wrapping_mul(FX_SEED) ^ head).wrapping_mul(FX_SEED);
    if token.len() > 8 {
        for chunk in token[8..].chunks(8) {
            hash = (hash.rotate_left(5) ^ head_of(chunk)).wrapping_mul(FX_SEED);
        }
    }
    hash
}

impl TokenTable {
    /// The table of `tokens`, token id = index.
    fn new(tokens: &[&[u8]]) -> Result<Self, CurateError> {
        let mut tails = Vec::new();
        let mut tail_start = Vec::with_capacity(tokens.len() + 1);
        for token in tokens {
            if token.len() >= EMPTY_SLOT as usize {
                return Err(CurateError::Automaton(format!(
                    "an entry token of {} bytes",
                    token.len()
                )));
            }
            tail_start.push(tails.len() as u32);
            tails.extend_from_slice(token.get(8..).unwrap_or_default());
        }
        tail_start.push(tails.len() as u32);
        // At most half full: short probe runs.
        let bits = (2 * tokens.len()).max(16).next_power_of_two().trailing_zeros();
        let mut table = Self {
            slots: vec![
                TokenSlot {
                    head: 0,
                    len: EMPTY_SLOT,
                    token: NO_TOKEN,
                };
                1 << bits
            ],
            shift: 64 - bits,
            tails,
            tail_start,
        };
        let mask = table.slots.len() - 1;
        for (id, token) in tokens.iter().enumerate() {
            let head = head_of(token);
            let mut slot = (token_hash(token, head) >> table.shift) as usize;
            while table.slots[slot].len != EMPTY_SLOT {
                slot = (slot + 1) & mask;
            }
            table.slots[slot] = TokenSlot {
                head,
                len: token.len() as u32,
                token: id as u32,
            };
        }
        Ok(table)
    }

    /// The id of `token`, or `NO_TOKEN`.
    #[inline]
    fn get(&self, token: &[u8]) -> u32 {
        let head = head_of(token);
        let mask = self.slots.len() - 1;
        let mut slot = (token_hash(token, head) >> self.shift) as usize;
        loop {
            let s = self.slots[slot];
            if s.len == EMPTY_SLOT {
                return NO_TOKEN;
            }
            if s.len as usize == token.len() && s.head == head {
                if token.len() <= 8 {
                    return s.token;
                }
                let id = s.token as usize;
                let tail = &self.tails[self.tail_start[id] as usize..self.tail_start[id + 1] as usize];
                if tail == &token[8..] {
                    return s.token;
                }
            }
            slot = (slot + 1) & mask;
        }
    }
}

/// Split `text` into the tokens of its spaced form (see [`spaced_text`]) without building it:
/// the tokens between its spaces, leading and trailing padding left out. Each is a slice of
/// `text`: a run of kept bytes, or one wrapped punctuation byte; tab, newline, carriage
/// return and space end a token; a wrapped byte ends the token before it and is one itself.
#[inline]
fn for_each_spaced_token(text: &[u8], mut token: impl FnMut(&[u8])) {
    let mut start = 0;
    for (i, &b) in text.iter().enumerate() {
        match BYTE_RULES[b as usize] {
            ByteRule::Keep if b != b' ' => {}
            ByteRule::Keep | ByteRule::Space => {
                token(&text[start..i]);
                start = i + 1;
            }
            ByteRule::Wrap => {
                token(&text[start..i]);
                token(&text[i..i + 1]);
                start = i + 1;
            }
        }
    }
    token(&text[start..]);
}

/// MetaCLIP's matching over the entries of a [`Metadata`] (see the module doc for the method).
pub struct Matcher {
    /// Distinct tokens of all entries → token id.
    tokens: TokenTable,
    /// By token id: what an occurrence starting with that token gives.
    roots: Vec<RootStep>,
    /// Deeper edges: (node << 32 | token id) → child node.
    edges: HashMap<u64, u32, FxBuild>,
    /// Nodes by id; node 0 is the root.
    nodes: Vec<TrieNode>,
    entries: usize,
}

/// Reusable buffers for [`Matcher::match_into`], one per thread.
#[derive(Default)]
pub struct MatchScratch {
    spaced: Vec<u8>,
    token_ids: Vec<u32>,
}

/// The trie while it is built.
struct TrieBuilder {
    tokens: HashMap<Box<[u8]>, u32, FxBuild>,
    /// Child of the root for each token id, or `NO_NODE`.
    root_children: Vec<u32>,
    edges: HashMap<u64, u32, FxBuild>,
    nodes: Vec<TrieNode>,
}

impl TrieBuilder {
    fn token_id(&mut self, token: &[u8]) -> u32 {
        let next = self.tokens.len() as u32;
        *self.tokens.entry(token.into()).or_insert(next)
    }

    fn child_or_insert(&mut self, node: u32, token: u32) -> u32 {
        let existing = if node == 0 {
            self.root_children.get(token as usize).copied().unwrap_or(NO_NODE)
        } else {
            self.edges.get(&edge_key(node, token)).copied().unwrap_or(NO_NODE)
        };
        if existing != NO_NODE {
            return existing;
        }
        let child = self.nodes.len() as u32;
        self.nodes.push(TrieNode {
            entry: NO_ENTRY,
            has_children: false,
        });
        self.nodes[node as usize].has_children = true;
        if node == 0 {
            if self.root_children.len() <= token as usize {
                self.root_children.resize(token as usize + 1, NO_NODE);
            }
            self.root_children[token as usize] = child;
        } else {
            self.edges.insert(edge_key(node, token), child);
        }
        child
    }
}

impl Matcher {
    /// Build the token trie; entry ids are indices into `metadata` (whose entries are
    /// distinct, so each trie node ends at most one entry).
    pub fn new(metadata: &Metadata) -> Result<Self, CurateError> {
        let entries = metadata.len();
        if entries >= NO_ENTRY as usize {
            return Err(CurateError::Automaton(format!(
                "{entries} entries: at most {} supported",
                NO_ENTRY - 1
            )));
        }
        let mut trie = TrieBuilder {
            tokens: HashMap::default(),
            root_children: Vec::new(),
            edges: HashMap::default(),
            nodes: vec![TrieNode {
                entry: NO_ENTRY,
                has_children: false,
            }],
        };
        for (id, entry) in metadata.entries().iter().enumerate() {
            let mut node = 0u32;
            for token in entry.as_bytes().split(|&b| b == b' ') {
                let token_id = trie.token_id(token);
                node = trie.child_or_insert(node, token_id);
            }
            let end = &mut trie.nodes[node as usize];
            if end.entry == NO_ENTRY {
                end.entry = id as u32;
            }
        }
        let mut by_id: Vec<&[u8]> = vec![&[]; trie.tokens.len()];
        for (token, &id) in &trie.tokens {
            by_id[id as usize] = token;
        }
        let roots = (0..trie.tokens.len())
            .map(|id| match trie.root_children.get(id).copied().unwrap_or(NO_NODE) {
                NO_NODE => RootStep {
                    entry: NO_ENTRY,
                    node: NO_NODE,
                },
                child => {
                    let info = trie.nodes[child as usize];
                    RootStep {
                        entry: info.entry,
                        node: if info.has_children { child } else { NO_NODE },
                    }
                }
            })
            .collect();
        Ok(Self {
            tokens: TokenTable::new(&by_id)?,
            roots,
            edges: trie.edges,
            nodes: trie.nodes,
            entries,
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
        self.for_each_occurrence(text, scratch, |id| matched.push(id));
        if matched.len() > 1 {
            matched.sort_unstable();
            matched.dedup();
        }
    }

    /// Call `found` with the entry id of every occurrence in `text` (an entry occurring
    /// several times is reported several times), in no particular order.
    pub fn for_each_occurrence(&self, text: &str, scratch: &mut MatchScratch, mut found: impl FnMut(u32)) {
        // Token ids of the spaced text's tokens; every token has a space before and after it
        // (the padding included), as an occurrence needs.
        let ids = &mut scratch.token_ids;
        ids.clear();
        for_each_spaced_token(text.as_bytes(), |token| ids.push(self.tokens.get(token)));
        for start in 0..ids.len() {
            let Some(step) = self.roots.get(ids[start] as usize) else {
                continue;
            };
            if step.entry != NO_ENTRY {
                found(step.entry);
            }
            // Entries of several tokens: follow the trie while the text's tokens do.
            let mut node = step.node;
            let mut next = start + 1;
            while node != NO_NODE && next < ids.len() && ids[next] != NO_TOKEN {
                let Some(&child) = self.edges.get(&edge_key(node, ids[next])) else {
                    break;
                };
                let info = self.nodes[child as usize];
                if info.entry != NO_ENTRY {
                    found(info.entry);
                }
                node = if info.has_children { child } else { NO_NODE };
                next += 1;
            }
        }
    }

    /// Ids of the entries matched by `text`, ascending.
    pub fn matched(&self, text: &str) -> Vec<u32> {
        let mut matched = Vec::new();
        self.match_into(text, &mut MatchScratch::default(), &mut matched);
        matched
    }
}

fn edge_key(node: u32, token: u32) -> u64 {
    (u64::from(node) << 32) | u64::from(token)
}

/// Which automaton an [`AhoCorasickMatcher`] builds (the `aho_corasick` crate's kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutomatonKind {
    /// The crate's choice (a contiguous NFA for many patterns).
    Auto,
    /// Noncontiguous NFA.
    NoncontiguousNfa,
    /// Contiguous NFA.
    ContiguousNfa,
    /// Full DFA (large and slow to build for many patterns).
    Dfa,
}

/// MetaCLIP's matching as one overlapping Aho–Corasick search for `" e "` over the spaced
/// text: the direct formulation of the rule, kept to check and time [`Matcher`] against.
pub struct AhoCorasickMatcher {
    automaton: AhoCorasick,
}

impl AhoCorasickMatcher {
    /// Build the automaton of `kind`; entry ids are indices into `metadata`.
    pub fn new(metadata: &Metadata, kind: AutomatonKind) -> Result<Self, CurateError> {
        let patterns = metadata.entries().iter().map(|e| format!(" {e} "));
        let mut builder = AhoCorasick::builder();
        // Standard semantics are what overlapping search needs.
        builder.match_kind(MatchKind::Standard);
        let kind = match kind {
            AutomatonKind::Auto => None,
            AutomatonKind::NoncontiguousNfa => Some(AhoCorasickKind::NoncontiguousNFA),
            AutomatonKind::ContiguousNfa => Some(AhoCorasickKind::ContiguousNFA),
            AutomatonKind::Dfa => Some(AhoCorasickKind::DFA),
        };
        builder.kind(kind);
        let automaton = builder
            .build(patterns)
            .map_err(|e| CurateError::Automaton(e.to_string()))?;
        Ok(Self { automaton })
    }

    /// Bytes of heap the automaton uses.
    pub fn memory_usage(&self) -> usize {
        self.automaton.memory_usage()
    }

    /// Ids of the entries matched by `text`, ascending and without repeats, into `matched`
    /// (cleared first).
    pub fn match_into(&self, text: &str, scratch: &mut MatchScratch, matched: &mut Vec<u32>) {
        matched.clear();
        spaced_bytes_into(text.as_bytes(), &mut scratch.spaced);
        for m in self.automaton.find_overlapping_iter(scratch.spaced.as_slice()) {
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
    fn entries_with_odd_spacing_follow_the_substring_rule() {
        // Leading, trailing and double spaces inside entries are part of " e ".
        let entries = ["a  b", " c", "d ", "e", "x y z", "y"];
        assert_eq!(matched_entries(&entries, "a  b"), ["a  b"]);
        assert!(matched_entries(&entries, "a b").is_empty());
        assert_eq!(matched_entries(&entries, "z  c"), [" c"]);
        assert_eq!(matched_entries(&entries, "d  q"), ["d "]);
        assert_eq!(matched_entries(&entries, "d\t?"), ["d "]);
        // " d . " holds no " d  ".
        assert!(matched_entries(&entries, "d.").is_empty());
        assert_eq!(matched_entries(&entries, "x y z x y"), ["x y z", "y"]);
        assert_eq!(matched_entries(&entries, "e\te"), ["e"]);
    }

    #[test]
    fn aho_corasick_kinds_agree_with_the_token_trie() {
        let entries = [
            "New York",
            "York",
            "New York City",
            "city",
            "a  b",
            " c",
            "d ",
            "café",
            "St. Louis",
        ];
        let metadata = Metadata::from_entries(entries.iter().map(|s| s.to_string()));
        let matcher = Matcher::new(&metadata).unwrap();
        let texts = [
            "New York City, hot dog",
            "a  b  c d  .",
            "St. Louis café!",
            "",
            " ",
            "New York New York York city",
        ];
        for kind in [
            AutomatonKind::Auto,
            AutomatonKind::NoncontiguousNfa,
            AutomatonKind::ContiguousNfa,
            AutomatonKind::Dfa,
        ] {
            let ac = AhoCorasickMatcher::new(&metadata, kind).unwrap();
            assert!(ac.memory_usage() > 0);
            for text in texts {
                assert_eq!(ac.matched(text), matcher.matched(text), "{kind:?} {text:?}");
            }
        }
    }

    #[test]
    fn occurrences_repeat_and_match_into_dedups() {
        let metadata = Metadata::from_entries(["dog", "hot dog"].map(String::from));
        let matcher = Matcher::new(&metadata).unwrap();
        let mut found = Vec::new();
        matcher.for_each_occurrence("dog, hot dog dog", &mut MatchScratch::default(), |id| found.push(id));
        found.sort_unstable();
        assert_eq!(found, [0, 0, 0, 1]);
        assert_eq!(matcher.matched("dog, hot dog dog"), [0, 1]);
    }

    #[test]
    fn unicode_text() {
        let entries = ["café", "naïve art"];
        assert_eq!(matched_entries(&entries, "un café, naïve art!"), ["café", "naïve art"]);
        assert!(matched_entries(&entries, "cafés").is_empty());
    }
}
