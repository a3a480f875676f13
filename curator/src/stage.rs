//! The stage interface: observe the whole input, then decide per sample.
use dataloader::RawSample;

use crate::error::CurateError;
use crate::hash::{fnv_extend, mix64, FNV_OFFSET};
use crate::reduce::CountReducer;

/// What a stage does with one sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Pass the sample on unchanged.
    Keep,
    /// Drop it; the reason is one of the stage's [`Stage::drop_reasons`].
    Drop(&'static str),
    /// Pass this sample on instead (same key; members may differ).
    Rewrite(RawSample),
}

/// A series of values drawn in report.png (one line per series, log-scale y).
#[derive(Debug, Clone, PartialEq)]
pub struct StagePlot {
    /// Panel title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// (legend, values by x). Zeros are left out on the log scale.
    pub series: Vec<(String, Vec<u64>)>,
    /// A horizontal reference line (MetaCLIP's t), if any.
    pub threshold: Option<(String, f64)>,
}

/// Indices of the non-zero `counts`, most first (ties by index): the order of a stage's
/// top tables in report.json and of the x axis of its [`StagePlot`].
pub(crate) fn ranked_by_count(counts: &[u64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..counts.len()).filter(|&i| counts[i] > 0).collect();
    order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    order
}

/// One curation stage.
///
/// The pipeline calls, in order: [`Stage::observe`] on every sample that reaches the stage
/// (only when [`Stage::observation_len`] > 0), summing the count vectors over threads and
/// processes; [`Stage::set_observation`] with the totals; then [`Stage::decide`] on every
/// sample that reaches it. `observe` and `decide` run on many threads at once, so they take
/// `&self` and write only into the per-thread vectors they are given. A decision must depend
/// only on the sample and the observation (draw randomness from the seed and the sample's
/// key), so that results do not depend on the thread count or the shard split.
pub trait Stage: Send + Sync {
    /// The stage kind, as in configs (`metaclip`).
    fn kind(&self) -> &'static str;

    /// Every reason [`Decision::Drop`] can carry (fixed, so counts reduce as vectors).
    fn drop_reasons(&self) -> &'static [&'static str];

    /// Length of the count vector [`Stage::observe`] fills; 0 = no observation pass.
    fn observation_len(&self) -> usize {
        0
    }

    /// Add this sample's contribution to the global statistics.
    fn observe(&self, _sample: &RawSample, _counts: &mut [u64]) {}

    /// With several processes, merge the statistics this stage keeps outside its count
    /// vector (tables) with every other rank's, so that each rank decides on the whole
    /// input's statistics. Called on every rank after its observation pass and before
    /// [`Stage::set_observation`]; stages whose statistics are all counts need nothing here.
    fn exchange_observation(&mut self, _reducer: &dyn CountReducer) -> Result<(), CurateError> {
        Ok(())
    }

    /// Receive the statistics summed over the whole input (all threads and processes).
    fn set_observation(&mut self, _counts: Vec<u64>) {}

    /// Length of the count vector [`Stage::decide`] may fill for the report (counts after the
    /// decision, e.g. entry counts of kept samples); 0 = none.
    fn tally_len(&self) -> usize {
        0
    }

    /// Keep, drop or rewrite the sample; `tally` has [`Stage::tally_len`] counts.
    fn decide(&self, sample: &RawSample, tally: &mut [u64]) -> Decision;

    /// Stage-specific figures for report.json, given the summed tally.
    fn stats(&self, _tally: &[u64]) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// A panel for report.png, given the summed tally.
    fn plot(&self, _tally: &[u64]) -> Option<StagePlot> {
        None
    }
}

/// A stage with the name it has in logs and reports.
pub struct NamedStage {
    /// Unique within a pipeline (`metaclip`, or the config's `name`).
    pub name: String,
    /// The stage.
    pub stage: Box<dyn Stage>,
}

/// Deterministic per-sample randomness: uniform draws in [0, 1) from (seed, key, index), the
/// same on any thread or process and for any shard split.
#[derive(Debug, Clone, Copy)]
pub struct SampleRng {
    state: u64,
}

impl SampleRng {
    /// The draws of the sample with `key` under `seed`.
    pub fn new(seed: u64, key: &str) -> Self {
        // FNV-1a over the key, then mixed with the seed through SplitMix64's finaliser.
        let hash = fnv_extend(FNV_OFFSET, key.as_bytes());
        Self {
            state: mix64(hash ^ mix64(seed.wrapping_add(0x9e37_79b9_7f4a_7c15))),
        }
    }

    /// The `index`-th draw, uniform in [0, 1).
    pub fn uniform(&self, index: u64) -> f64 {
        let bits = mix64(
            self.state
                ^ index
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .wrapping_add(0x632b_e59b_d9b4_e019),
        );
        (bits >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Observe all samples, then decide all, on one thread (the pipeline's order of calls);
/// returns the decisions and the tally.
#[cfg(test)]
pub(crate) fn observe_then_decide(stage: &mut dyn Stage, samples: &[RawSample]) -> (Vec<Decision>, Vec<u64>) {
    let mut counts = vec![0; stage.observation_len()];
    for s in samples {
        stage.observe(s, &mut counts);
    }
    stage.set_observation(counts);
    let mut tally = vec![0; stage.tally_len()];
    let decisions = samples.iter().map(|s| stage.decide(s, &mut tally)).collect();
    (decisions, tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_draws_are_reproducible_and_uniform() {
        let a = SampleRng::new(7, "000000001");
        assert_eq!(a.uniform(3), SampleRng::new(7, "000000001").uniform(3));
        assert_ne!(a.uniform(3), SampleRng::new(8, "000000001").uniform(3));
        assert_ne!(a.uniform(3), SampleRng::new(7, "000000002").uniform(3));
        assert_ne!(a.uniform(3), a.uniform(4));
        // Mean and spread of draws over many keys.
        let n = 20_000;
        let draws: Vec<f64> = (0..n)
            .map(|i| SampleRng::new(1, &format!("{i:09}")).uniform(0))
            .collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = draws.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        let below_tenth = draws.iter().filter(|u| **u < 0.1).count() as f64 / n as f64;
        assert!((below_tenth - 0.1).abs() < 0.01, "{below_tenth}");
    }
}
