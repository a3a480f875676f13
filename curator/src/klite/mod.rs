//! The `klite` stage: K-LITE knowledge augmentation (Shen et al. 2022).
//!
//! - Terms: the caption's nouns and noun phrases that have a WordNet noun gloss, found by
//!   [`GlossDictionary::find_terms`] (greedy longest-first phrases, morphy base forms).
//! - Observation pass: the corpus frequency of every term = its occurrences in all texts
//!   that reach the stage (summed over threads and processes).
//! - Decision: with probability `probability` (drawn from (seed, sample key)), the caption
//!   becomes `"{caption} ; {term} , {gloss}"` (docs/architecture.md §7), where term is the caption's
//!   least frequent term (the first in the caption among equally rare ones), written as
//!   WordNet's lemma (`geese` → `goose`), and gloss is the definition of its first sense.
//!   The caption's trailing whitespace is dropped before the knowledge is appended.
//!   Captions without a glossed term, or not drawn, pass on unchanged and are counted.
//! - Bad captions (missing, not UTF-8, empty, longer than `max_caption_bytes`) are dropped
//!   and counted, as in the `metaclip` stage.
mod config;
pub mod gloss;

use dataloader::RawSample;

use crate::error::CurateError;
use crate::stage::{ranked_by_count, Decision, SampleRng, Stage, StagePlot};
pub use config::{KliteConfig, DEFAULT_PROBABILITY};
pub use gloss::{words, GlossDictionary};

/// How many terms report.json lists in its top-term table.
const TOP_TERMS: usize = 20;

const DROP_REASONS: &[&str] = &[
    "missing_caption",
    "invalid_caption",
    "empty_caption",
    "caption_too_long",
];

// Slots after the per-term counts in the observation and tally vectors.
/// Observation: texts observed, texts with at least one term.
const OBSERVED_TEXTS: usize = 0;
const OBSERVED_WITH_TERM: usize = 1;
/// Tally: texts without a term, texts not drawn, texts with knowledge appended.
const TALLY_NO_TERM: usize = 0;
const TALLY_NOT_DRAWN: usize = 1;
const TALLY_APPENDED: usize = 2;

/// `"{caption} ; {term} , {gloss}"`, the caption's trailing whitespace dropped.
pub fn append_knowledge(caption: &str, term: &str, gloss: &str) -> String {
    format!("{} ; {term} , {gloss}", caption.trim_end())
}

/// The K-LITE stage (see the module doc).
pub struct KliteStage {
    dictionary: GlossDictionary,
    probability: f64,
    seed: u64,
    caption_member: String,
    max_caption_bytes: usize,
    /// Term frequencies after the observation pass, then the [`OBSERVED_TEXTS`] slots.
    observation: Vec<u64>,
}

impl KliteStage {
    /// A stage over `dictionary` with the settings of `cfg`.
    pub fn new(dictionary: GlossDictionary, cfg: &KliteConfig) -> Self {
        Self {
            dictionary,
            probability: cfg.probability,
            seed: cfg.seed,
            caption_member: cfg.caption_member.clone(),
            max_caption_bytes: cfg.max_caption_bytes,
            observation: Vec::new(),
        }
    }

    /// A stage with the WordNet glosses under `cfg.wordnet_dir`.
    pub fn from_config(cfg: &KliteConfig) -> Result<Self, CurateError> {
        Ok(Self::new(GlossDictionary::load(&cfg.wordnet_dir)?, cfg))
    }

    /// The gloss dictionary.
    pub fn dictionary(&self) -> &GlossDictionary {
        &self.dictionary
    }

    /// Corpus frequency of each term from the observation pass (empty before it).
    pub fn term_counts(&self) -> &[u64] {
        &self.observation[..self.observation.len().min(self.dictionary.len())]
    }

    /// The caption's least frequent term (first among ties), or `None` without terms.
    pub fn rarest_term(&self, caption: &str) -> Option<u32> {
        let mut terms = Vec::new();
        self.dictionary.find_terms(caption, &mut terms);
        let counts = self.term_counts();
        // min_by_key keeps the first of equal minima.
        terms
            .into_iter()
            .min_by_key(|&id| counts.get(id as usize).copied().unwrap_or(0))
    }

    /// The sample's text, or the drop reason.
    fn caption<'a>(&self, sample: &'a RawSample) -> Result<&'a str, &'static str> {
        crate::fields::nonempty_caption_text(sample, &self.caption_member, self.max_caption_bytes)
    }
}

impl Stage for KliteStage {
    fn kind(&self) -> &'static str {
        "klite"
    }

    fn drop_reasons(&self) -> &'static [&'static str] {
        DROP_REASONS
    }

    fn observation_len(&self) -> usize {
        self.dictionary.len() + 2
    }

    fn observe(&self, sample: &RawSample, counts: &mut [u64]) {
        let Ok(text) = self.caption(sample) else {
            return;
        };
        let terms_end = self.dictionary.len();
        let mut terms = Vec::new();
        self.dictionary.find_terms(text, &mut terms);
        for &id in &terms {
            counts[id as usize] += 1;
        }
        counts[terms_end + OBSERVED_TEXTS] += 1;
        if !terms.is_empty() {
            counts[terms_end + OBSERVED_WITH_TERM] += 1;
        }
    }

    fn set_observation(&mut self, counts: Vec<u64>) {
        self.observation = counts;
    }

    fn tally_len(&self) -> usize {
        self.dictionary.len() + 3
    }

    fn decide(&self, sample: &RawSample, tally: &mut [u64]) -> Decision {
        let text = match self.caption(sample) {
            Ok(text) => text,
            Err(reason) => return Decision::Drop(reason),
        };
        let terms_end = self.dictionary.len();
        let Some(term) = self.rarest_term(text) else {
            tally[terms_end + TALLY_NO_TERM] += 1;
            return Decision::Keep;
        };
        if SampleRng::new(self.seed, &sample.key).uniform(0) >= self.probability {
            tally[terms_end + TALLY_NOT_DRAWN] += 1;
            return Decision::Keep;
        }
        tally[term as usize] += 1;
        tally[terms_end + TALLY_APPENDED] += 1;
        let augmented = append_knowledge(text, self.dictionary.term(term), self.dictionary.gloss(term));
        let mut rewritten = sample.clone();
        rewritten
            .members
            .insert(self.caption_member.clone(), augmented.into_bytes());
        Decision::Rewrite(rewritten)
    }

    fn stats(&self, tally: &[u64]) -> serde_json::Value {
        let terms_end = self.dictionary.len();
        let counts = self.term_counts();
        let slot = |v: &[u64], i: usize| v.get(terms_end + i).copied().unwrap_or(0);
        let chosen = &tally[..terms_end.min(tally.len())];
        let top: Vec<(String, u64, u64)> = ranked_by_count(chosen)
            .into_iter()
            .take(TOP_TERMS)
            .map(|t| (self.dictionary.term(t as u32).to_string(), chosen[t], counts[t]))
            .collect();
        serde_json::json!({
            "probability": self.probability,
            "seed": self.seed,
            "terms": terms_end,
            "terms_seen": counts.iter().filter(|&&c| c > 0).count(),
            "texts_observed": slot(&self.observation, OBSERVED_TEXTS),
            "texts_with_term": slot(&self.observation, OBSERVED_WITH_TERM),
            "texts_without_term": slot(tally, TALLY_NO_TERM),
            "texts_not_drawn": slot(tally, TALLY_NOT_DRAWN),
            "texts_with_knowledge": slot(tally, TALLY_APPENDED),
            // (term, captions it was appended to, corpus frequency)
            "top_appended_terms": top,
        })
    }

    fn plot(&self, tally: &[u64]) -> Option<StagePlot> {
        let counts = self.term_counts();
        let order = ranked_by_count(counts);
        let frequency = order.iter().map(|&t| counts[t]).collect();
        let appended = order.iter().map(|&t| tally.get(t).copied().unwrap_or(0)).collect();
        Some(StagePlot {
            title: format!("K-LITE terms ({} seen)", order.len()),
            x_label: "terms, by corpus frequency".into(),
            y_label: "occurrences / captions".into(),
            series: vec![
                ("corpus frequency".into(), frequency),
                ("knowledge appended".into(), appended),
            ],
            threshold: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::observe_then_decide;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn sample(key: &str, caption: &[u8]) -> RawSample {
        RawSample {
            key: key.into(),
            shard: PathBuf::from("test.tar"),
            members: BTreeMap::from([
                ("txt".to_string(), caption.to_vec()),
                ("png".to_string(), b"image bytes".to_vec()),
            ]),
        }
    }

    fn stage(probability: f64, seed: u64) -> (tempfile::TempDir, KliteStage) {
        let (dir, dictionary) = gloss::tests::small_wordnet();
        let cfg = KliteConfig {
            probability,
            seed,
            ..KliteConfig::default()
        };
        (dir, KliteStage::new(dictionary, &cfg))
    }

    fn caption_of(decision: &Decision) -> Option<String> {
        match decision {
            Decision::Rewrite(s) => Some(String::from_utf8(s.members["txt"].clone()).unwrap()),
            _ => None,
        }
    }

    fn corpus() -> Vec<RawSample> {
        [
            "a dog in a park",
            "a dog with ice cream",
            "two dogs and a box",
            "geese in the park\n",
            "nothing glossed here",
        ]
        .iter()
        .enumerate()
        .map(|(i, c)| sample(&format!("{i:09}"), c.as_bytes()))
        .collect()
    }

    #[test]
    fn least_frequent_term_gets_its_first_gloss_in_the_exact_format() {
        let (_dir, mut st) = stage(1.0, 0);
        let samples = corpus();
        let (decisions, tally) = observe_then_decide(&mut st, &samples);
        let dict = st.dictionary();
        let count = |term: &str| st.term_counts()[dict.lookup(term).unwrap() as usize];
        assert_eq!(
            (
                count("dog"),
                count("park"),
                count("ice cream"),
                count("box"),
                count("goose")
            ),
            (3, 2, 1, 1, 1)
        );
        let captions: Vec<Option<String>> = decisions.iter().map(caption_of).collect();
        assert_eq!(
            captions,
            [
                Some(
                    "a dog in a park ; park , a large area of land preserved in its natural state as public property"
                        .into()
                ),
                Some(
                    "a dog with ice cream ; ice cream , frozen dessert containing cream and sugar and flavoring".into()
                ),
                Some("two dogs and a box ; box , a (usually rectangular) container; may have a lid".into()),
                // goose (1) is rarer than park (2); the trailing newline goes.
                Some(
                    "geese in the park ; goose , web-footed long-necked typically gregarious migratory aquatic birds"
                        .into()
                ),
                None,
            ]
        );
        assert_eq!(decisions[4], Decision::Keep);
        // Other members are untouched.
        let Decision::Rewrite(first) = &decisions[0] else {
            unreachable!()
        };
        assert_eq!(first.members["png"], b"image bytes");
        let stats = st.stats(&tally);
        assert_eq!(stats["texts_with_knowledge"], 4);
        assert_eq!(stats["texts_without_term"], 1);
        assert_eq!(stats["texts_observed"], 5);
        assert_eq!(stats["texts_with_term"], 4);
        let plot = st.plot(&tally).unwrap();
        assert_eq!(plot.series[0].1[..2], [3, 2]);
    }

    #[test]
    fn ties_go_to_the_first_term_in_the_caption() {
        let (_dir, mut st) = stage(1.0, 0);
        let samples = [sample("1", b"box and goose"), sample("2", b"goose and box")];
        let (decisions, _) = observe_then_decide(&mut st, &samples);
        assert!(caption_of(&decisions[0])
            .unwrap()
            .ends_with("; box , a (usually rectangular) container; may have a lid"));
        assert!(caption_of(&decisions[1]).unwrap().contains("; goose , "));
    }

    #[test]
    fn probability_zero_keeps_all_and_one_rewrites_all() {
        let samples: Vec<RawSample> = (0..200).map(|i| sample(&format!("{i:09}"), b"a dog")).collect();
        let (_dir, mut never) = stage(0.0, 0);
        let (decisions, tally) = observe_then_decide(&mut never, &samples);
        assert!(decisions.iter().all(|d| *d == Decision::Keep));
        assert_eq!(never.stats(&tally)["texts_not_drawn"], 200);
        let (_dir, mut always) = stage(1.0, 0);
        let (decisions, _) = observe_then_decide(&mut always, &samples);
        assert!(decisions.iter().all(|d| matches!(d, Decision::Rewrite(_))));
    }

    #[test]
    fn draws_are_deterministic_per_seed_and_near_the_probability() {
        let samples: Vec<RawSample> = (0..2000).map(|i| sample(&format!("{i:09}"), b"geese")).collect();
        let (_dir, mut a) = stage(0.3, 5);
        let (first, _) = observe_then_decide(&mut a, &samples);
        let (second, _) = observe_then_decide(&mut a, &samples);
        assert_eq!(first, second);
        let (_dir, mut other_seed) = stage(0.3, 6);
        let (other, _) = observe_then_decide(&mut other_seed, &samples);
        assert_ne!(first, other);
        let rewritten = first.iter().filter(|d| matches!(d, Decision::Rewrite(_))).count() as f64;
        let sd = (2000.0f64 * 0.3 * 0.7).sqrt();
        assert!((rewritten - 600.0).abs() < 5.0 * sd, "{rewritten}");
    }

    #[test]
    fn bad_captions_are_dropped_by_reason() {
        let (_dir, mut st) = stage(1.0, 0);
        st.max_caption_bytes = 10;
        let mut missing = sample("m", b"");
        missing.members.remove("txt");
        let samples = [
            missing,
            sample("u", b"\xff dog"),
            sample("e", b" \n "),
            sample("l", b"a dog in a very long caption"),
        ];
        let (decisions, _) = observe_then_decide(&mut st, &samples);
        assert_eq!(
            decisions,
            [
                Decision::Drop("missing_caption"),
                Decision::Drop("invalid_caption"),
                Decision::Drop("empty_caption"),
                Decision::Drop("caption_too_long"),
            ]
        );
    }

    #[test]
    fn config_defaults_and_validation() {
        let cfg: KliteConfig = toml::from_str("seed = 3").unwrap();
        assert_eq!(cfg.probability, DEFAULT_PROBABILITY);
        assert_eq!(cfg.wordnet_dir, PathBuf::from(crate::metaclip::DEFAULT_WORDNET_DIR));
        let err = toml::from_str::<KliteConfig>("prob = 1").unwrap_err().to_string();
        assert!(err.contains("prob"), "{err}");
        let too_big = KliteConfig {
            probability: 1.5,
            ..KliteConfig::default()
        };
        let err = too_big.validate("stage[2]").unwrap_err().to_string();
        assert!(err.contains("stage[2].probability"), "{err}");
        let nan = KliteConfig {
            probability: f64::NAN,
            ..KliteConfig::default()
        };
        assert!(nan.validate("stage[0]").is_err());
        assert_eq!(append_knowledge("a cat \n", "cat", "feline"), "a cat ; cat , feline");
    }
}
