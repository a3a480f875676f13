//! The `metaclip` stage: MetaCLIP's metadata matching and balancing.
//!
//! - Metadata: see [`metadata`] (numbers, WordNet synset names, user lists).
//! - Matching: see [`matcher`] (MetaCLIP's space-delimited, case-sensitive substring rule).
//! - Counting (observation pass): c_e = number of texts in the whole input that match entry e
//!   (a text counts once per entry however often the entry occurs in it).
//! - Balancing, as MetaCLIP's `balancing.py` does it: p_e = min(1, t / c_e); for a text with
//!   matched entries e_1 < e_2 < ..., entry e_i "accepts" the text when an independent uniform
//!   draw u_{e_i} < p_{e_i}; the text is kept as soon as one entry accepts it. So a text is kept
//!   with probability 1 − ∏(1 − p_e), and an entry with c_e > t keeps ≈ t of its own
//!   texts (more through texts that other entries accept). The draw u_e comes from
//!   (seed, sample key, e), not from a shared generator as in MetaCLIP, so the result does not
//!   depend on threads, processes or shard order. Texts that match nothing are dropped.
//!
//! The text of a sample is its `.txt` member (configurable), UTF-8, as a whole: several
//! lines are one text (newlines become spaces under the matching rule).
mod config;
pub mod matcher;
pub mod metadata;

use std::cell::RefCell;

use dataloader::RawSample;

use crate::error::CurateError;
use crate::stage::{ranked_by_count, Decision, SampleRng, Stage, StagePlot};
pub use config::{MetaclipConfig, DEFAULT_T};
pub use matcher::{spaced_text, AhoCorasickMatcher, AutomatonKind, MatchScratch, Matcher};
pub use metadata::{Metadata, DEFAULT_WORDNET_DIR};

pub use crate::fields::DEFAULT_MAX_CAPTION_BYTES;

/// How many entries report.json lists in its top-entry tables.
const TOP_ENTRIES: usize = 20;

const DROP_REASONS: &[&str] = &[
    "missing_caption",
    "invalid_caption",
    "empty_caption",
    "caption_too_long",
    "no_match",
    "balanced_out",
];

/// Keep probability of an entry matched by `count` texts: min(1, t / count).
pub fn keep_probability(count: u64, t: u64) -> f64 {
    if count <= t {
        1.0
    } else {
        t as f64 / count as f64
    }
}

/// MetaCLIP's balancing decision for a text with `matched` entry ids: kept when some entry's
/// draw falls under its keep probability.
pub fn balanced_keep(matched: &[u32], keep_prob: &[f64], rng: &SampleRng) -> bool {
    matched
        .iter()
        .any(|&e| rng.uniform(u64::from(e)) < keep_prob[e as usize])
}

thread_local! {
    /// Per-thread matching buffers: the spaced text and the matched ids.
    static SCRATCH: RefCell<(MatchScratch, Vec<u32>)> = RefCell::new(Default::default());
}

/// The MetaCLIP stage (see the module doc).
pub struct MetaclipStage {
    metadata: Metadata,
    matcher: Matcher,
    t: u64,
    seed: u64,
    caption_member: String,
    max_caption_bytes: usize,
    /// c_e after the observation pass, then texts seen and texts matched.
    observation: Vec<u64>,
    keep_prob: Vec<f64>,
}

impl MetaclipStage {
    /// A stage over `metadata` with the balancing and caption settings of `cfg`.
    pub fn new(metadata: Metadata, cfg: &MetaclipConfig) -> Result<Self, CurateError> {
        let matcher = Matcher::new(&metadata)?;
        Ok(Self {
            matcher,
            t: cfg.t,
            seed: cfg.seed,
            caption_member: cfg.caption_member.clone(),
            max_caption_bytes: cfg.max_caption_bytes,
            observation: Vec::new(),
            keep_prob: Vec::new(),
            metadata,
        })
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Entry counts c_e from the observation pass (empty before it).
    pub fn entry_counts(&self) -> &[u64] {
        &self.observation[..self.observation.len().min(self.metadata.len())]
    }

    /// The sample's text, or the drop reason.
    fn caption<'a>(&self, sample: &'a RawSample) -> Result<&'a str, &'static str> {
        crate::fields::nonempty_caption_text(sample, &self.caption_member, self.max_caption_bytes)
    }

    /// Run `f` on the matched entry ids of `text`, with this thread's buffers.
    fn with_matches<R>(&self, text: &str, f: impl FnOnce(&[u32]) -> R) -> R {
        SCRATCH.with(|cell| {
            let mut guard = cell.borrow_mut();
            let (scratch, matched) = &mut *guard;
            self.matcher.match_into(text, scratch, matched);
            f(matched)
        })
    }

    fn top_entries(&self, counts: &[u64]) -> Vec<(String, u64)> {
        ranked_by_count(counts)
            .into_iter()
            .take(TOP_ENTRIES)
            .map(|e| (self.metadata.entry(e as u32).to_string(), counts[e]))
            .collect()
    }
}

impl Stage for MetaclipStage {
    fn kind(&self) -> &'static str {
        "metaclip"
    }

    fn drop_reasons(&self) -> &'static [&'static str] {
        DROP_REASONS
    }

    fn observation_len(&self) -> usize {
        self.metadata.len() + 2
    }

    fn observe(&self, sample: &RawSample, counts: &mut [u64]) {
        let Ok(text) = self.caption(sample) else {
            return;
        };
        let entries = self.metadata.len();
        counts[entries] += 1;
        self.with_matches(text, |matched| {
            for &e in matched {
                counts[e as usize] += 1;
            }
            if !matched.is_empty() {
                counts[entries + 1] += 1;
            }
        });
    }

    fn set_observation(&mut self, counts: Vec<u64>) {
        self.keep_prob = counts[..self.metadata.len()]
            .iter()
            .map(|&c| keep_probability(c, self.t))
            .collect();
        self.observation = counts;
    }

    fn tally_len(&self) -> usize {
        self.metadata.len()
    }

    fn decide(&self, sample: &RawSample, tally: &mut [u64]) -> Decision {
        let text = match self.caption(sample) {
            Ok(text) => text,
            Err(reason) => return Decision::Drop(reason),
        };
        let rng = SampleRng::new(self.seed, &sample.key);
        self.with_matches(text, |matched| {
            if matched.is_empty() {
                return Decision::Drop("no_match");
            }
            if !balanced_keep(matched, &self.keep_prob, &rng) {
                return Decision::Drop("balanced_out");
            }
            for &e in matched {
                tally[e as usize] += 1;
            }
            Decision::Keep
        })
    }

    fn stats(&self, tally: &[u64]) -> serde_json::Value {
        let counts = self.entry_counts();
        let entries = self.metadata.len();
        let texts = self.observation.get(entries).copied().unwrap_or(0);
        let texts_matched = self.observation.get(entries + 1).copied().unwrap_or(0);
        serde_json::json!({
            "t": self.t,
            "seed": self.seed,
            "entries": entries,
            "entries_matched": counts.iter().filter(|&&c| c > 0).count(),
            "entries_over_t": counts.iter().filter(|&&c| c > self.t).count(),
            "entries_matched_after": tally.iter().filter(|&&c| c > 0).count(),
            "texts_observed": texts,
            "texts_matched": texts_matched,
            "top_entries_before": self.top_entries(counts),
            "top_entries_after": self.top_entries(tally),
        })
    }

    fn plot(&self, tally: &[u64]) -> Option<StagePlot> {
        let counts = self.entry_counts();
        // Entries in decreasing order of their count before balancing; unmatched ones left out.
        let order = ranked_by_count(counts);
        let before = order.iter().map(|&e| counts[e]).collect();
        let after = order.iter().map(|&e| tally.get(e).copied().unwrap_or(0)).collect();
        Some(StagePlot {
            title: format!("MetaCLIP entry counts ({} matched entries)", order.len()),
            x_label: "entries, by count before balancing".into(),
            y_label: "texts matching the entry".into(),
            series: vec![("before balancing".into(), before), ("after balancing".into(), after)],
            threshold: Some((format!("t = {}", self.t), self.t as f64)),
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
            members: BTreeMap::from([("txt".to_string(), caption.to_vec())]),
        }
    }

    fn stage(entries: &[&str], t: u64, seed: u64) -> MetaclipStage {
        let cfg = MetaclipConfig {
            t,
            seed,
            wordnet: false,
            numbers: false,
            ..MetaclipConfig::default()
        };
        MetaclipStage::new(Metadata::from_entries(entries.iter().map(|s| s.to_string())), &cfg).unwrap()
    }

    #[test]
    fn bad_captions_are_dropped_by_reason_not_panics() {
        let mut st = stage(&["cat"], 10, 0);
        let mut no_caption = sample("a", b"");
        no_caption.members.clear();
        let mut long = "cat ".repeat(300).into_bytes();
        long.truncate(1100);
        st.max_caption_bytes = 1000;
        let samples = [
            no_caption,
            sample("b", b"\xff\xfe cat"),
            sample("c", b"  \n"),
            sample("d", &long),
            sample("e", b"a dog"),
            sample("f", b"a cat"),
        ];
        let (decisions, tally) = observe_then_decide(&mut st, &samples);
        assert_eq!(
            decisions,
            [
                Decision::Drop("missing_caption"),
                Decision::Drop("invalid_caption"),
                Decision::Drop("empty_caption"),
                Decision::Drop("caption_too_long"),
                Decision::Drop("no_match"),
                Decision::Keep
            ]
        );
        assert_eq!(tally, [1]);
        assert_eq!(st.entry_counts(), [1]);
        assert!(decisions.iter().all(|d| match d {
            Decision::Drop(r) => DROP_REASONS.contains(r),
            _ => true,
        }));
    }

    #[test]
    fn entries_under_t_keep_everything() {
        let mut st = stage(&["cat", "dog"], 5, 3);
        let samples: Vec<_> = (0..5).map(|i| sample(&format!("{i}"), b"cat and dog")).collect();
        let (decisions, tally) = observe_then_decide(&mut st, &samples);
        assert!(decisions.iter().all(|d| *d == Decision::Keep));
        assert_eq!(tally, [5, 5]);
    }

    /// Kept count per entry ≈ t for single-entry texts; the rate for two-entry texts is
    /// 1 − (1 − p1)(1 − p2); all within 5 standard deviations.
    #[test]
    fn balancing_keeps_about_t_per_entry() {
        let t = 100;
        let mut st = stage(&["cat", "dog", "owl", "emu"], t, 11);
        let mut samples = Vec::new();
        let mut push = |n: usize, text: &str| {
            for _ in 0..n {
                let key = format!("{:09}", samples.len());
                samples.push(sample(&key, text.as_bytes()));
            }
        };
        push(2000, "a cat");
        push(500, "a dog");
        push(40, "an owl");
        push(1000, "emu with a dog");
        let (decisions, tally) = observe_then_decide(&mut st, &samples);
        let counts = st.entry_counts().to_vec();
        assert_eq!(counts, [2000, 1500, 40, 1000]);
        let kept = |range: std::ops::Range<usize>| range.filter(|&i| decisions[i] == Decision::Keep).count() as f64;
        let within = |observed: f64, n: f64, p: f64| {
            let sd = (n * p * (1.0 - p)).sqrt();
            assert!(
                (observed - n * p).abs() <= 5.0 * sd + 1.0,
                "observed {observed}, expected {}",
                n * p
            );
        };
        let p_cat = 100.0 / 2000.0;
        let p_dog = 100.0 / 1500.0;
        let p_emu = 100.0 / 1000.0;
        within(kept(0..2000), 2000.0, p_cat);
        within(kept(2000..2500), 500.0, p_dog);
        assert_eq!(kept(2500..2540), 40.0);
        within(kept(2540..3540), 1000.0, 1.0 - (1.0 - p_dog) * (1.0 - p_emu));
        assert_eq!(tally[2], 40);
        assert_eq!(tally[0] as f64, kept(0..2000));
        // Same seed, same decisions; another seed, others.
        let (again, _) = observe_then_decide(&mut stage(&["cat", "dog", "owl", "emu"], t, 11), &samples);
        assert_eq!(again, decisions);
        let (other, _) = observe_then_decide(&mut stage(&["cat", "dog", "owl", "emu"], t, 12), &samples);
        assert_ne!(other, decisions);
    }

    #[test]
    fn keep_probability_is_min_one_t_over_c() {
        assert_eq!(keep_probability(0, 20_000), 1.0);
        assert_eq!(keep_probability(20_000, 20_000), 1.0);
        assert_eq!(keep_probability(40_000, 20_000), 0.5);
    }

    #[test]
    fn config_defaults_and_validation() {
        let cfg: MetaclipConfig = toml::from_str("seed = 3").unwrap();
        assert_eq!(cfg.t, DEFAULT_T);
        assert!(cfg.wordnet && cfg.numbers);
        let err = toml::from_str::<MetaclipConfig>("tt = 3").unwrap_err().to_string();
        assert!(err.contains("tt"), "{err}");
        let zero = MetaclipConfig {
            t: 0,
            ..MetaclipConfig::default()
        };
        assert!(zero
            .validate("stage[1]")
            .unwrap_err()
            .to_string()
            .contains("stage[1].t"));
    }

    #[test]
    fn report_stats_and_plot() {
        let mut st = stage(&["cat", "dog", "owl"], 1, 0);
        let samples = [sample("1", b"cat"), sample("2", b"cat"), sample("3", b"dog")];
        let (_, tally) = observe_then_decide(&mut st, &samples);
        let stats = st.stats(&tally);
        assert_eq!(stats["entries_matched"], 2);
        assert_eq!(stats["entries_over_t"], 1);
        assert_eq!(stats["texts_matched"], 3);
        assert_eq!(stats["top_entries_before"][0][0], "cat");
        let plot = st.plot(&tally).unwrap();
        assert_eq!(plot.series[0].1, [2, 1]);
        assert_eq!(plot.series[1].1, [tally[0], tally[1]]);
    }
}
