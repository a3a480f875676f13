//! Curation of samples held in memory (what `ferroclip.curate.curate_samples` runs over
//! Python lists): the stages, observation passes and per-sample decisions of
//! [`crate::run_pipeline`], in the same order, without shards or output files. One process;
//! `align`'s order-dependent rules (duplicates, near duplicates) take the samples in key
//! order, as the pipeline takes them in (shard path, key) order.
use dataloader::RawSample;

use crate::error::CurateError;
use crate::reduce::{CountReducer, SingleProcess};
use crate::stage::{Decision, NamedStage};

/// What the stages made of one sample.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleOutcome {
    /// Kept, as it leaves the last stage (rewritten when a stage rewrote it).
    Kept(RawSample),
    /// Dropped by `stage` for `reason` (one of that stage's drop reasons).
    Dropped {
        /// The stage's name.
        stage: String,
        /// Why.
        reason: &'static str,
    },
}

/// Run `stages` over `samples`: each stage with an observation first observes every sample
/// the stages before it keep, then every sample goes through the stages in order. The
/// outcomes are in the order of `samples`. Keys should be unique, as in a shard.
pub fn curate_samples(mut stages: Vec<NamedStage>, samples: Vec<RawSample>) -> Result<Vec<SampleOutcome>, CurateError> {
    let mut tallies: Vec<Vec<u64>> = stages.iter().map(|s| vec![0; s.stage.tally_len()]).collect();
    for s in 0..stages.len() {
        let len = stages[s].stage.observation_len();
        if len == 0 {
            continue;
        }
        let mut counts = vec![0u64; len];
        for sample in &samples {
            if let SampleOutcome::Kept(sample) = decide(&stages[..s], sample.clone(), &mut tallies) {
                stages[s].stage.observe(&sample, &mut counts);
            }
        }
        SingleProcess.all_reduce_sum(&mut counts)?;
        stages[s].stage.exchange_observation(&SingleProcess)?;
        stages[s].stage.set_observation(counts);
    }
    Ok(samples
        .into_iter()
        .map(|sample| decide(&stages, sample, &mut tallies))
        .collect())
}

/// `sample` through `stages` in order.
fn decide(stages: &[NamedStage], mut sample: RawSample, tallies: &mut [Vec<u64>]) -> SampleOutcome {
    for (named, tally) in stages.iter().zip(tallies.iter_mut()) {
        match named.stage.decide(&sample, tally) {
            Decision::Keep => {}
            Decision::Rewrite(new) => sample = new,
            Decision::Drop(reason) => {
                return SampleOutcome::Dropped {
                    stage: named.name.clone(),
                    reason,
                }
            }
        }
    }
    SampleOutcome::Kept(sample)
}
