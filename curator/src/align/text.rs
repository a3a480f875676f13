//! Alt-text tokens and the 64-bit hashes that stand in for texts and n-grams.
//!
//! Unigrams: the text split on Unicode whitespace, each piece lower-cased and stripped of
//! leading and trailing characters that are neither letters nor digits; pieces left empty
//! (a lone "-" or "…") are not unigrams. So `"A cat, sitting!"` has the unigrams
//! `a`, `cat`, `sitting`, and `"don't"` stays one unigram. Bigrams are adjacent unigram pairs.
//!
//! Texts and n-grams are remembered by a 64-bit hash, not by their bytes, so the tables of
//! the observation pass cost 8 bytes per key whatever the text's length. Two different keys
//! share a hash with probability about n²/2⁶⁵ over n distinct keys (≈ 3% for a billion
//! texts): the two would then pool their counts, which can only make a rule drop a text it
//! should have kept (or keep a rare n-gram), never crash or reorder anything.
//!
//! The hashes are FNV-1a over the bytes, finished by SplitMix64's finaliser so that hashes of
//! similar strings spread over all 64 bits (`hash.rs`, shared with the per-sample draws).
use crate::hash::{fnv_extend, mix64, FNV_OFFSET};

/// The unigrams of `text` (see the module doc).
pub fn unigrams(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|piece| piece.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase())
        .filter(|word| !word.is_empty())
        .collect()
}

/// Hash of a text as the rules see it: its unigrams joined by single spaces, so texts that
/// differ only in case, spacing or surrounding punctuation count as the same alt-text.
pub fn text_hash(unigrams: &[String]) -> u64 {
    let mut hash = FNV_OFFSET;
    for (i, word) in unigrams.iter().enumerate() {
        if i > 0 {
            hash = fnv_extend(hash, b" ");
        }
        hash = fnv_extend(hash, word.as_bytes());
    }
    mix64(hash)
}

/// Hashes of the unigrams, then of the bigrams, of a text (repeats included).
pub fn ngram_hashes(unigrams: &[String]) -> Vec<u64> {
    let mut hashes: Vec<u64> = unigrams
        .iter()
        .map(|word| mix64(fnv_extend(FNV_OFFSET, word.as_bytes())))
        .collect();
    for pair in unigrams.windows(2) {
        // A 0x00 byte between the words keeps ("ab", "c") and ("a", "bc") apart: a unigram
        // ends in a letter or digit, so the byte cannot be mistaken for the end of the first word.
        let hash = fnv_extend(
            fnv_extend(fnv_extend(FNV_OFFSET, pair[0].as_bytes()), &[0]),
            pair[1].as_bytes(),
        );
        hashes.push(mix64(hash));
    }
    hashes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unigrams_split_on_whitespace_and_strip_punctuation() {
        assert_eq!(unigrams("A cat, sitting!"), ["a", "cat", "sitting"]);
        assert_eq!(unigrams("  don't\t-- STOP\n…  "), ["don't", "stop"]);
        assert_eq!(unigrams("日本 の 猫"), ["日本", "の", "猫"]);
        assert!(unigrams(" ,. ").is_empty());
    }

    #[test]
    fn text_hash_ignores_case_spacing_and_outer_punctuation_only() {
        let h = |t: &str| text_hash(&unigrams(t));
        assert_eq!(h("A cat sitting"), h("a  cat, sitting!"));
        assert_ne!(h("a cat sitting"), h("a cat standing"));
        assert_ne!(h("ab c"), h("a bc"));
    }

    #[test]
    fn ngrams_are_unigrams_then_bigrams() {
        let words = unigrams("red red heart");
        let hashes = ngram_hashes(&words);
        assert_eq!(hashes.len(), 3 + 2);
        assert_eq!(hashes[0], hashes[1]);
        assert_ne!(hashes[3], hashes[4]);
        assert!(!hashes[..3].contains(&hashes[3]));
        assert_ne!(ngram_hashes(&unigrams("ab c"))[2], ngram_hashes(&unigrams("a bc"))[2]);
    }
}
