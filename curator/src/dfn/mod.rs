//! The `dfn` stage: Data Filtering Networks' model-based filter, with DataComp's rule.
//!
//! Every pair of the input is scored (cosine similarity of the image and text embeddings of
//! a ferroclip checkpoint, through a [`PairScorer`] that the binary wires; this crate links no
//! model code), and a pair is kept when `score >= threshold`. The threshold is either given,
//! or chosen to keep a `fraction`: the ⌊N·fraction⌋-th largest of the N scores of the whole
//! input, computed exactly over all ranks ([`threshold::fraction_threshold`]).
//!
//! As in DataComp, the scores and the fraction are of the *input pool*: scoring happens
//! before the pipeline runs, so stages before `dfn` intersect with it (they do not change
//! which fraction is meant), and a stage that rewrites captions before `dfn` does not change
//! the score (the input pair is scored). Scores are written to `scores/<stage name>/` in the
//! output folder, one JSON-lines file per input shard; `scores = "DIR or FILE"` (or
//! `ferroclip curate --scores`) reuses them to change the threshold without rescoring.
mod config;
pub mod scores;
pub mod threshold;

use std::path::{Path, PathBuf};

use dataloader::RawSample;

use crate::error::CurateError;
use crate::reduce::CountReducer;
use crate::stage::{Decision, Stage, StagePlot};
pub use config::{DfnConfig, KeepRule};
pub use scores::{score_shards, shard_name, PairScorer, ScoreError, ScoreTable};
pub use threshold::fraction_threshold;

const DROP_REASONS: &[&str] = &["below_threshold", "unscorable", "unscored"];

/// Score histogram bins in report.json / report.png, over [-1, 1].
const SCORE_BINS: usize = 40;

/// Where the stage's scores come from.
pub enum ScoreSource<'a> {
    /// Score now with this scorer, writing score files into the folder.
    Score {
        /// The scorer.
        scorer: &'a dyn PairScorer,
        /// Folder for the score files (`OUTPUT/scores/<stage name>`).
        write_to: PathBuf,
    },
    /// Saved scores: a folder of `*.jsonl` or one file.
    Saved(PathBuf),
}

/// Score (or load the scores of) this rank's input shards and choose the threshold over
/// all ranks; every rank must call this at the same point (it all-reduces).
pub fn build_stage(
    cfg: &DfnConfig,
    source: ScoreSource<'_>,
    shards: &[PathBuf],
    reducer: &dyn CountReducer,
) -> Result<DfnStage, CurateError> {
    scores::check_unique_names(shards)?;
    let (rank, world) = (reducer.rank(), reducer.world_size());
    let mine: Vec<usize> = (0..shards.len()).filter(|i| i % world == rank).collect();
    let (table, origin) = match source {
        ScoreSource::Score { scorer, write_to } => {
            let table = score_shards(shards, &mine, scorer, cfg.batch_size, &write_to)?;
            (table, write_to)
        }
        ScoreSource::Saved(path) => {
            let table = ScoreTable::load(&path)?;
            for &i in &mine {
                if !table.has_shard(&shard_name(&shards[i])) {
                    tracing::warn!(
                        scores = %path.display(),
                        shard = %shards[i].display(),
                        "the saved scores have no pair of this shard: its samples are dropped as unscored"
                    );
                }
            }
            (table, path)
        }
    };
    let names: Vec<String> = mine.iter().map(|&i| shard_name(&shards[i])).collect();
    let threshold = match cfg.rule() {
        KeepRule::Threshold(t) => t,
        KeepRule::Fraction(f) => fraction_threshold(&table.scores_of(names.iter().map(String::as_str)), f, reducer)?,
    };
    tracing::info!(threshold, scores = %origin.display(), "dfn threshold chosen");
    Ok(DfnStage {
        table,
        threshold,
        rule: cfg.rule(),
        scores_path: origin,
    })
}

/// The stage: keep a pair when its score is at least the threshold.
pub struct DfnStage {
    table: ScoreTable,
    threshold: f32,
    rule: KeepRule,
    scores_path: PathBuf,
}

impl DfnStage {
    /// A stage over scores already in hand, with a chosen threshold.
    pub fn new(table: ScoreTable, rule: KeepRule, threshold: f32, scores_path: &Path) -> Self {
        Self {
            table,
            threshold,
            rule,
            scores_path: scores_path.to_path_buf(),
        }
    }

    /// The threshold in force (+∞ keeps nothing).
    pub fn threshold(&self) -> f32 {
        self.threshold
    }
}

fn score_bin(score: f32) -> usize {
    let unit = ((score + 1.0) / 2.0).clamp(0.0, 1.0);
    ((unit * SCORE_BINS as f32) as usize).min(SCORE_BINS - 1)
}

impl Stage for DfnStage {
    fn kind(&self) -> &'static str {
        "dfn"
    }

    fn drop_reasons(&self) -> &'static [&'static str] {
        DROP_REASONS
    }

    /// Score histograms of the pairs that reach the stage, then of those kept.
    fn tally_len(&self) -> usize {
        2 * SCORE_BINS
    }

    fn decide(&self, sample: &RawSample, tally: &mut [u64]) -> Decision {
        let score = match self.table.get(&shard_name(&sample.shard), &sample.key) {
            None => return Decision::Drop("unscored"),
            Some(None) => return Decision::Drop("unscorable"),
            Some(Some(score)) => score,
        };
        let bin = score_bin(score);
        tally[bin] += 1;
        if score >= self.threshold {
            tally[SCORE_BINS + bin] += 1;
            Decision::Keep
        } else {
            Decision::Drop("below_threshold")
        }
    }

    fn stats(&self, tally: &[u64]) -> serde_json::Value {
        let (rule, value) = match self.rule {
            KeepRule::Fraction(f) => ("fraction", f),
            KeepRule::Threshold(t) => ("threshold", f64::from(t)),
        };
        serde_json::json!({
            "rule": rule,
            "rule_value": value,
            // +∞ (keep nothing) is not JSON; it is written as null.
            "threshold": self.threshold.is_finite().then_some(self.threshold),
            "scores": self.scores_path,
            "score_bins": { "low": -1.0, "high": 1.0, "count": SCORE_BINS },
            "score_histogram_in": &tally[..SCORE_BINS.min(tally.len())],
            "score_histogram_kept": tally.get(SCORE_BINS..).unwrap_or(&[]),
        })
    }

    fn plot(&self, tally: &[u64]) -> Option<StagePlot> {
        if tally.len() != 2 * SCORE_BINS {
            return None;
        }
        Some(StagePlot {
            title: format!(
                "{} scores (bins of {:.2} over [-1, 1])",
                self.kind(),
                2.0 / SCORE_BINS as f64
            ),
            x_label: "score bin".into(),
            y_label: "pairs".into(),
            series: vec![
                ("reaching the stage".into(), tally[..SCORE_BINS].to_vec()),
                ("kept".into(), tally[SCORE_BINS..].to_vec()),
            ],
            threshold: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::SingleProcess;

    fn sample(shard: &str, key: &str) -> RawSample {
        RawSample {
            key: key.into(),
            shard: PathBuf::from("somewhere").join(shard),
            members: Default::default(),
        }
    }

    #[test]
    fn config_needs_exactly_one_rule() {
        let parse = |t: &str| -> DfnConfig { toml::from_str(t).unwrap() };
        assert!(parse("fraction = 0.3").validate("stage[0]").is_ok());
        assert_eq!(parse("threshold = 0.2").rule(), KeepRule::Threshold(0.2));
        for (text, field) in [
            ("", "stage[1].fraction"),
            ("fraction = 0.3\nthreshold = 0.2", "stage[1].fraction"),
            ("fraction = 0.0", "stage[1].fraction"),
            ("fraction = 1.5", "stage[1].fraction"),
            ("fraction = 0.5\nbatch_size = 0", "stage[1].batch_size"),
        ] {
            let err = parse(text).validate("stage[1]").unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        assert!(toml::from_str::<DfnConfig>("fraction = 0.3\nfractoin = 1").is_err());
    }

    #[test]
    fn keeps_the_top_fraction_and_drops_unscored_pairs() {
        let mut table = ScoreTable::default();
        for i in 0..10 {
            table.insert("a.tar", &format!("k{i}"), Some(i as f32 / 10.0));
        }
        table.insert("a.tar", "broken", None);
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("s.jsonl");
        let lines: String = (0..10)
            .map(|i| {
                format!(
                    "{{\"shard\":\"a.tar\",\"key\":\"k{i}\",\"score\":{}}}\n",
                    i as f32 / 10.0
                )
            })
            .collect();
        std::fs::write(
            &saved,
            lines + "{\"shard\":\"a.tar\",\"key\":\"broken\",\"score\":null}\n",
        )
        .unwrap();
        let cfg = DfnConfig {
            fraction: Some(0.35),
            ..DfnConfig::default()
        };
        let shards = [PathBuf::from("in/a.tar")];
        let stage = build_stage(&cfg, ScoreSource::Saved(saved.clone()), &shards, &SingleProcess).unwrap();
        // ⌊10 · 0.35⌋ = 3: the 3rd largest score is 0.7.
        assert_eq!(stage.threshold(), 0.7);
        let mut tally = vec![0; stage.tally_len()];
        let kept: Vec<usize> = (0..10)
            .filter(|i| stage.decide(&sample("a.tar", &format!("k{i}")), &mut tally) == Decision::Keep)
            .collect();
        assert_eq!(kept, [7, 8, 9]);
        assert_eq!(
            stage.decide(&sample("a.tar", "broken"), &mut tally),
            Decision::Drop("unscorable")
        );
        assert_eq!(
            stage.decide(&sample("a.tar", "new"), &mut tally),
            Decision::Drop("unscored")
        );
        assert_eq!(
            stage.decide(&sample("b.tar", "k1"), &mut tally),
            Decision::Drop("unscored")
        );
        assert_eq!(tally[..SCORE_BINS].iter().sum::<u64>(), 10);
        assert_eq!(tally[SCORE_BINS..].iter().sum::<u64>(), 3);
        let stats = stage.stats(&tally);
        assert_eq!(stats["threshold"].as_f64().unwrap() as f32, 0.7);
        assert_eq!(stats["rule"], "fraction");
        assert!(stage.plot(&tally).is_some());

        let fixed = DfnConfig {
            fraction: None,
            threshold: Some(0.45),
            ..DfnConfig::default()
        };
        let stage = build_stage(&fixed, ScoreSource::Saved(saved), &shards, &SingleProcess).unwrap();
        let kept = (0..10)
            .filter(|i| stage.decide(&sample("a.tar", &format!("k{i}")), &mut tally) == Decision::Keep)
            .count();
        assert_eq!(kept, 5);
    }

    #[test]
    fn score_bins_cover_the_cosine_range() {
        assert_eq!(score_bin(-1.0), 0);
        assert_eq!(score_bin(-5.0), 0);
        assert_eq!(score_bin(1.0), SCORE_BINS - 1);
        assert_eq!(score_bin(0.0), SCORE_BINS / 2);
    }
}
