//! What a run reports: every `log.every` steps a line on the console, in
//! `metrics.jsonl` and as TensorBoard scalars in `tb/` (rank 0; flushed as written so a
//! crashed run keeps everything it logged), and at the end a [`TrainSummary`].

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing::info;

use super::step::StepOutcome;
use super::throughput::Throughput;
use crate::checkpoint::Progress;
use crate::data::TrainLoader;
use crate::field::FieldError;
use crate::model::Clip;
use crate::tensorboard::{self, EventWriter};
use crate::TrainError;

/// The `[log]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Log (and append to metrics.jsonl) every this many steps.
    pub every: u64,
    /// Peak TFLOP/s of one worker, for MFU (`mfu`, `hfu` in the metrics). Unset: a bf16
    /// run on a known GPU (H100, H200, A100) uses its dense bf16 peak; otherwise no MFU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_tflops: Option<f64>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            every: 10,
            peak_tflops: None,
        }
    }
}

impl LogConfig {
    /// Checks the section; errors name the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.every == 0 {
            return Err(FieldError::new("log.every", "must be > 0"));
        }
        if let Some(peak) = self.peak_tflops.filter(|p| !(p.is_finite() && *p > 0.0)) {
            return Err(FieldError::new(
                "log.peak_tflops",
                format!("{peak} must be a positive number of TFLOP/s"),
            ));
        }
        Ok(())
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Optimizer steps taken by this process (after a resume: since the resume).
    pub steps: u64,
    /// Loss of the first and of the last step.
    pub first_loss: f64,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Mean loss over the first and last 10% of steps (less noisy than single steps).
    pub early_mean_loss: f64,
    /// See `early_mean_loss`.
    pub late_mean_loss: f64,
    /// Steps skipped because the loss or gradient was not finite (whole run).
    pub skipped_steps: u64,
    /// Training throughput over this process's steps.
    pub samples_per_s: f64,
    /// The checkpoint the run resumed from, if any.
    pub resumed_from: Option<PathBuf>,
    /// Whether this process is rank 0 (the one that reports).
    pub is_main: bool,
}

/// The run's reporting: the log decision every step, the window the next log line
/// averages over, and the losses the summary is made of.
pub struct Metrics {
    /// `metrics.jsonl` and the TensorBoard event file, on rank 0 only.
    writer: Option<(MetricsWriter, EventWriter)>,
    /// FLOPs per sample and the peak, for the throughput fields.
    throughput: Throughput,
    every: u64,
    last_step: u64,
    /// Samples of the global batch (one step's worth, over all ranks).
    global_batch: u64,
    window: Window,
    run_start: Instant,
    start_samples: u64,
    /// Losses of the steps taken (not skipped) by this process.
    losses: Vec<f64>,
}

/// Time, samples, data wait and communication since the last log line.
struct Window {
    start: Instant,
    samples: u64,
    data_wait_s: f64,
    comm_s: f64,
    /// Communication that ran during a backward pass (`optim.overlap_reduce`).
    comm_hidden_s: f64,
}

impl Window {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            samples: 0,
            data_wait_s: 0.0,
            comm_s: 0.0,
            comm_hidden_s: 0.0,
        }
    }
}

impl Metrics {
    /// Reporting of a run in `run_dir` that starts at `progress` and ends at `last_step`,
    /// each step `global_batch` samples; `is_main` writes `metrics.jsonl` (continued
    /// after a resume, see [`MetricsWriter::resume`]) and a new event file in `tb/`
    /// ([`crate::tensorboard`]).
    pub fn open(
        run_dir: &Path,
        cfg: &LogConfig,
        is_main: bool,
        progress: &Progress,
        last_step: u64,
        global_batch: u64,
        throughput: Throughput,
    ) -> Result<Self, TrainError> {
        let writer = is_main
            .then(|| -> Result<_, TrainError> {
                let events = EventWriter::open(&run_dir.join("tb"), progress.step)?;
                drop_evals_past(run_dir, progress.step)?;
                Ok((
                    MetricsWriter::resume(&run_dir.join("metrics.jsonl"), progress.step)?,
                    events,
                ))
            })
            .transpose()?;
        Ok(Self {
            writer,
            throughput,
            every: cfg.every,
            last_step,
            global_batch,
            window: Window::new(),
            run_start: Instant::now(),
            start_samples: progress.samples_seen,
            // Grown as steps are done: `schedule.steps` is the user's word, not memory to take.
            losses: Vec::new(),
        })
    }

    /// Takes in the step that brought the run to `progress`, and on a log step (rank 0)
    /// writes the console line and the metrics record.
    pub fn record(
        &mut self,
        outcome: &StepOutcome,
        progress: &Progress,
        lr: f64,
        model: &Clip,
        loader: &TrainLoader,
    ) -> Result<(), TrainError> {
        if outcome.stepped {
            self.losses.push(outcome.loss);
        }
        self.window.samples += self.global_batch;
        self.window.data_wait_s += outcome.data_wait_s;
        self.window.comm_s += outcome.comm_s;
        self.window.comm_hidden_s += outcome.overlap.map_or(0.0, |o| o.hidden_s);
        let step = progress.step;
        let Some((writer, events)) = self
            .writer
            .as_mut()
            .filter(|_| step % self.every == 0 || step == self.last_step)
        else {
            return Ok(());
        };
        let window = &self.window;
        let secs = window.start.elapsed().as_secs_f64();
        let samples_per_s = window.samples as f64 / secs;
        let logit_scale = model.logit_scale().exp().double_value(&[]);
        let mut record = serde_json::json!({
            "step": step,
            "epoch": outcome.epoch,
            "samples_seen": progress.samples_seen,
            "loss": outcome.loss,
            "lr": lr,
            "logit_scale": logit_scale,
            "grad_norm": outcome.grad_norm,
            "samples_per_s": samples_per_s,
            "data_wait_frac": window.data_wait_s / secs,
            "comm_frac": window.comm_s / secs,
            "comm_hidden_frac": window.comm_hidden_s / secs,
            "skipped_steps": progress.skipped_steps,
            "skipped_samples": loader.skip_counts(),
        });
        let throughput = self.throughput.fields(samples_per_s);
        let mfu = throughput
            .get("mfu")
            .and_then(serde_json::Value::as_f64)
            .map_or(String::new(), |mfu| format!("  MFU {:.1}%", 100.0 * mfu));
        let tflops = throughput["tflops"].as_f64().unwrap_or(f64::NAN);
        record.as_object_mut().expect("a JSON object").extend(throughput);
        info!(
            "step {step:>6}/{}  loss {:.4}  lr {lr:.2e}  scale {logit_scale:.2}  {samples_per_s:.1} samples/s  {tflops:.3} TFLOP/s{mfu}  data wait {:.0}%  comm {:.0}%",
            self.last_step,
            outcome.loss,
            100.0 * window.data_wait_s / secs,
            100.0 * window.comm_s / secs
        );
        writer.write(&record)?;
        events.scalars(step, &tensorboard::scalars_of("train", &record))?;
        self.window = Window::new();
        Ok(())
    }

    /// The summary of this process's part of the run, which ended at `progress`.
    pub fn summary(
        &self,
        run_dir: PathBuf,
        progress: &Progress,
        resumed_from: Option<PathBuf>,
        is_main: bool,
    ) -> TrainSummary {
        let losses = &self.losses;
        let n = losses.len();
        let k = (n / 10).max(1).min(n.max(1));
        let mean = |xs: &[f64]| {
            if xs.is_empty() {
                f64::NAN
            } else {
                xs.iter().sum::<f64>() / xs.len() as f64
            }
        };
        let samples = progress.samples_seen - self.start_samples;
        TrainSummary {
            run_dir,
            steps: n as u64 + progress.skipped_steps,
            first_loss: losses.first().copied().unwrap_or(f64::NAN),
            last_loss: losses.last().copied().unwrap_or(f64::NAN),
            early_mean_loss: mean(&losses[..k.min(n)]),
            late_mean_loss: mean(&losses[n.saturating_sub(k)..]),
            skipped_steps: progress.skipped_steps,
            samples_per_s: samples as f64 / self.run_start.elapsed().as_secs_f64(),
            resumed_from,
            is_main,
        }
    }
}

/// Eval results (`ferroclip eval` of this run's weights) past `step` are of weights about to
/// be replaced: their lines of `eval.jsonl` go, like the metrics lines, and the eval event
/// files in `tb/` are written again with the lines kept (at step 0 there are none: a new
/// run's [`EventWriter::open`] has removed every event file).
fn drop_evals_past(run_dir: &Path, step: u64) -> Result<(), TrainError> {
    let path = run_dir.join("eval.jsonl");
    if !path.exists() {
        return Ok(());
    }
    MetricsWriter::resume(&path, step)?;
    let text = std::fs::read_to_string(&path).map_err(TrainError::io(&path))?;
    let kept: Vec<(u64, Vec<(String, f64)>)> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|record| Some((record.get("step")?.as_u64()?, tensorboard::eval_scalars(&record))))
        .collect();
    tensorboard::rewrite_evals(&run_dir.join("tb"), &kept)
}

/// Appends JSON lines to a run's metrics file.
pub struct MetricsWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsWriter {
    /// Opens (creating or truncating) `path`.
    pub fn create(path: &Path) -> Result<Self, TrainError> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(TrainError::io(path))?;
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::new(file),
        })
    }

    /// Opens `path` to continue a run resumed after `step`: lines of later
    /// steps (logged by the interrupted run past its checkpoint, and about to
    /// be logged again) are dropped. `step` 0 starts a new file.
    pub fn resume(path: &Path, step: u64) -> Result<Self, TrainError> {
        if step == 0 || !path.exists() {
            return Self::create(path);
        }
        let io = |source| TrainError::Io {
            path: path.to_owned(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(io)?;
        let kept: String = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
                    .is_some_and(|s| s <= step)
            })
            .flat_map(|line| [line, "\n"])
            .collect();
        // Replace, not rewrite in place: a crash here leaves the old file whole.
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, kept).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        let file = OpenOptions::new().append(true).open(path).map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::new(file),
        })
    }

    /// Writes one line and flushes it.
    pub fn write(&mut self, record: &serde_json::Value) -> Result<(), TrainError> {
        let io = |e| TrainError::Io {
            path: self.path.clone(),
            source: e,
        };
        serde_json::to_writer(&mut self.out, record).map_err(|e| io(e.into()))?;
        self.out.write_all(b"\n").map_err(io)?;
        self.out.flush().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_drops_the_steps_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut first = MetricsWriter::create(&path).unwrap();
        for step in [10, 20, 30] {
            first.write(&serde_json::json!({ "step": step })).unwrap();
        }
        drop(first);
        let mut resumed = MetricsWriter::resume(&path, 20).unwrap();
        resumed
            .write(&serde_json::json!({ "step": 30, "again": true }))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"step\":10}\n{\"step\":20}\n{\"again\":true,\"step\":30}\n");
    }
}
