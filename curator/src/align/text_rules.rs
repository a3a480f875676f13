//! ALIGN's text rules over a list of texts alone (the Python `align_text_filter`): the
//! `caption_too_long`, `text_length` and `rare_token` rules of the `align` stage, with the
//! n-gram vocabulary counted over the given texts. The rules that need images (sizes,
//! texts per image, images per text, duplicates) are not applied.
use std::collections::HashMap;

use super::config::AlignConfig;
use super::text;

/// For each text, `None` when it passes, else the drop reason the `align` stage would give
/// it when its image passes every image rule: `caption_too_long`, `text_length` or
/// `rare_token` (n-grams counted over all `texts` that are not too long, as the stage
/// counts them over every sample with a usable text).
pub fn align_text_rules(texts: &[&str], cfg: &AlignConfig) -> Vec<Option<&'static str>> {
    let parsed: Vec<Option<Vec<String>>> = texts
        .iter()
        .map(|t| (t.len() <= cfg.max_caption_bytes).then(|| text::unigrams(t)))
        .collect();
    let mut ngram_counts: HashMap<u64, u64> = HashMap::new();
    for unigrams in parsed.iter().flatten() {
        for h in text::ngram_hashes(unigrams) {
            *ngram_counts.entry(h).or_default() += 1;
        }
    }
    let min_frequency = kth_largest(ngram_counts.values().copied().collect(), cfg.rare_token_top_k);
    parsed
        .iter()
        .map(|unigrams| {
            let Some(unigrams) = unigrams else {
                return Some("caption_too_long");
            };
            if unigrams.len() < cfg.min_unigrams || unigrams.len() > cfg.max_unigrams {
                return Some("text_length");
            }
            let rare = text::ngram_hashes(unigrams)
                .iter()
                .any(|h| ngram_counts.get(h).copied().unwrap_or(0) < min_frequency);
            rare.then_some("rare_token")
        })
        .collect()
}

/// The `k`-th largest of `values` (1-based); 0 when there are fewer than `k`, so that every
/// value is at least it.
pub(super) fn kth_largest(mut values: Vec<u64>, k: u64) -> u64 {
    let Ok(k) = usize::try_from(k) else { return 0 };
    if k == 0 || values.len() < k {
        return 0;
    }
    let (_, kth, _) = values.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
    *kth
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_and_rare_tokens_decide() {
        let cfg = AlignConfig {
            min_unigrams: 2,
            max_unigrams: 4,
            rare_token_top_k: 3,
            max_caption_bytes: 40,
            ..AlignConfig::default()
        };
        let texts = [
            "a cat", // "a", "cat", "a cat": all frequent
            "a cat",
            "a cat zebra",       // "zebra" and "cat zebra" occur once: rare
            "cat",               // one word: too short
            "a cat a cat a cat", // six words: too long
            &"x".repeat(41),     // too many bytes
        ];
        assert_eq!(
            align_text_rules(&texts, &cfg),
            [
                None,
                None,
                Some("rare_token"),
                Some("text_length"),
                Some("text_length"),
                Some("caption_too_long")
            ]
        );
    }
}
