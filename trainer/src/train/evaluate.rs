//! The eval decision of the train loop (`[eval]`): when it is due, every rank evaluates
//! the weights it trains ([`crate::eval::TrainEval`]), and rank 0 appends the record to the
//! run's `eval.jsonl` (where `ferroclip eval` of the run's weights writes too, and which a
//! resume trims to the steps it keeps) and its metrics, with the eval's cost, to `tb/`.
use std::io::Write;
use std::path::{Path, PathBuf};

use dataloader::Tokenizer;
use tch::Device;
use tracing::info;

use crate::dist::Collective;
use crate::eval::{Encoder, EvalConfig, TrainEval};
use crate::model::{Clip, ModelConfig};
use crate::tensorboard::{self, EventWriter};
use crate::TrainError;

/// A run's evaluation while it trains; does nothing without an `[eval]` task.
pub struct RunEval {
    eval: Option<TrainEval>,
    tokenizer: Tokenizer,
    /// `eval.jsonl` and the eval event file, on rank 0.
    out: Option<(PathBuf, EventWriter)>,
}

impl RunEval {
    /// The evaluation `cfg` asks for in the run folder `run_dir`; `is_main` writes the results.
    pub fn new(cfg: &EvalConfig, run_dir: &Path, is_main: bool) -> Result<Self, TrainError> {
        let eval = TrainEval::new(cfg)?;
        let out = match (&eval, is_main) {
            (Some(_), true) => Some((run_dir.join("eval.jsonl"), EventWriter::for_evals(&run_dir.join("tb"))?)),
            _ => None,
        };
        Ok(Self {
            eval,
            tokenizer: Tokenizer::new(),
            out,
        })
    }

    /// Evaluates the weights after `step` when `[eval]` says so (collective: every rank
    /// calls it after every step).
    pub fn maybe_run(
        &mut self,
        step: u64,
        last_step: u64,
        clip: &Clip,
        config: &ModelConfig,
        coll: &dyn Collective,
        device: Device,
    ) -> Result<(), TrainError> {
        let Some(eval) = self.eval.as_ref().filter(|e| e.due(step, last_step)) else {
            return Ok(());
        };
        let encoder = Encoder {
            clip,
            config,
            device,
            tokenizer: &self.tokenizer,
        };
        let record = eval.run(&encoder, step, coll, device)?;
        let (Some(record), Some((path, events))) = (record, self.out.as_mut()) else {
            return Ok(());
        };
        let mut scalars = tensorboard::eval_scalars(&record);
        let seconds = record["eval_seconds"].as_f64().unwrap_or(f64::NAN);
        scalars.push(("eval/seconds".into(), seconds));
        info!(
            step,
            seconds,
            "eval: {}",
            scalars
                .iter()
                .filter(|(tag, _)| tag.ends_with("acc1") || tag.ends_with("recall@1"))
                .map(|(tag, v)| format!("{} {v:.4}", tag.trim_start_matches("eval/")))
                .collect::<Vec<_>>()
                .join("  ")
        );
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&*path)
            .map_err(TrainError::io(&*path))?;
        writeln!(file, "{record}").map_err(TrainError::io(&*path))?;
        events.scalars(step, &scalars)
    }
}
