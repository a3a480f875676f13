//! TensorBoard event files (`runs/<name>/tb/`): the scalars of `metrics.jsonl` (and eval
//! results) as `tensorflow.Event` records, for `tensorboard --logdir runs`.
//!
//! No crate is used: `tensorboard-rs`, the one on crates.io, was last released in 2022
//! and pulls `protobuf` 2 and `image` 0.23; the format needs a few protobuf fields and
//! a CRC ([`record`]).
//!
//! Restarts: every process start writes a new file, named so that files sort in the
//! order they were written, and a resumed run's file starts with a SessionLog.START
//! event at the step after its checkpoint. TensorBoard's event reader (`EventAccumulator`)
//! then drops every value the interrupted process logged at that step or later; its data
//! server (what `tensorboard --logdir` serves) drops a tag's older values when the tag's
//! steps go back, which the resumed run's first values do. Either way no step has two
//! values, as `metrics.jsonl` has no two lines for a step
//! ([`crate::train::metrics::MetricsWriter::resume`]). Eval results, whose tags the
//! resumed run does not log again, are in files of their own (`*.eval`), rewritten on a
//! resume without the evals past it ([`rewrite_evals`]). A run started from scratch
//! removes the event files of an earlier run of that name.

pub mod record;

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::TrainError;

/// The part of a file name that marks an event file (TensorBoard's own test).
const EVENTS_MARKER: &str = "tfevents";

/// The end of the name of an event file of eval results.
const EVAL_SUFFIX: &str = ".eval";

/// Appends events to one event file, each flushed as written (a crashed run keeps
/// everything it logged).
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// A new event file in `dir` (created if missing) for a process that continues a run
    /// after `start_step` (0: a new run, which removes earlier event files in `dir`).
    pub fn open(dir: &Path, start_step: u64) -> Result<Self, TrainError> {
        Self::create(dir, Some(start_step))
    }

    /// A new eval event file (`*.eval`) in `dir` beside the ones there, for the results of
    /// `ferroclip eval` of the run's weights: no restart mark.
    pub fn for_evals(dir: &Path) -> Result<Self, TrainError> {
        Self::create(dir, None)
    }

    fn create(dir: &Path, start_step: Option<u64>) -> Result<Self, TrainError> {
        std::fs::create_dir_all(dir).map_err(TrainError::io(dir))?;
        let existing = event_files(dir)?;
        if start_step == Some(0) {
            for old in &existing {
                std::fs::remove_file(old).map_err(TrainError::io(old))?;
            }
        }
        let suffix = if start_step.is_none() { EVAL_SUFFIX } else { "" };
        let path = dir.join(file_name(now(), existing.len()) + suffix);
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(TrainError::io(&path))?;
        let mut writer = Self {
            path,
            out: BufWriter::new(file),
        };
        writer.write(&record::file_version_event(now()))?;
        if let Some(step) = start_step.filter(|&s| s > 0) {
            writer.write(&record::session_start_event(now(), step + 1))?;
        }
        Ok(writer)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One event at `step` holding every `(tag, value)`; non-finite values are written
    /// as they are (TensorBoard shows NaN and ±inf).
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<(), TrainError> {
        if values.is_empty() {
            return Ok(());
        }
        self.write(&record::scalars_event(now(), step, values))
    }

    fn write(&mut self, event: &[u8]) -> Result<(), TrainError> {
        let io = TrainError::io(&self.path);
        self.out
            .write_all(&record::frame(event))
            .and_then(|()| self.out.flush())
            .map_err(io)
    }
}

/// The scalars of a JSON record: every number, tagged `prefix/key`, and the numbers of
/// nested objects as `prefix/key/inner`; `step` (the event's own field), strings,
/// booleans, nulls and arrays are left out.
pub fn scalars_of(prefix: &str, record: &serde_json::Value) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    if let Some(object) = record.as_object() {
        for (key, value) in object.iter().filter(|(key, _)| key.as_str() != "step") {
            collect(&format!("{prefix}/{key}"), value, &mut out);
        }
    }
    out
}

fn collect(tag: &str, value: &serde_json::Value, out: &mut Vec<(String, f64)>) {
    match value {
        serde_json::Value::Number(n) => out.extend(n.as_f64().map(|v| (tag.to_string(), v))),
        serde_json::Value::Object(inner) => {
            for (key, value) in inner {
                collect(&format!("{tag}/{key}"), value, out);
            }
        }
        _ => {}
    }
}

/// The scalars of a line of `eval.jsonl` (`{"step": .., "<task>": {"metrics": {..}}}`):
/// `eval/<task>/<metric>`.
pub fn eval_scalars(record: &serde_json::Value) -> Vec<(String, f64)> {
    let metrics: serde_json::Map<String, serde_json::Value> = record
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(task, v)| Some((task.clone(), v.get("metrics")?.clone())))
        .collect();
    scalars_of("eval", &serde_json::Value::Object(metrics))
}

/// Replaces the eval event files in `dir` by one holding `evals` (step, scalars), or by
/// none when there are none: a resumed run keeps only the evals of weights it keeps.
pub fn rewrite_evals(dir: &Path, evals: &[(u64, Vec<(String, f64)>)]) -> Result<(), TrainError> {
    for old in event_files(dir)? {
        if old.to_string_lossy().ends_with(EVAL_SUFFIX) {
            std::fs::remove_file(&old).map_err(TrainError::io(&old))?;
        }
    }
    if evals.is_empty() {
        return Ok(());
    }
    let mut writer = EventWriter::for_evals(dir)?;
    for (step, scalars) in evals {
        writer.scalars(*step, scalars)?;
    }
    Ok(())
}

/// `events.out.tfevents.<unix seconds>.<sequence>.<host>.<pid>`: the seconds and the
/// number of files already there (both zero-padded) make names sort in writing order,
/// also for two starts within one second; TensorBoard reads a folder's files in name order.
/// Eval files end in [`EVAL_SUFFIX`].
fn file_name(wall_time: f64, sequence: usize) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().replace(['/', ' '], "_"))
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!(
        "events.out.{EVENTS_MARKER}.{:010}.{sequence:04}.{host}.{}",
        wall_time as u64,
        std::process::id()
    )
}

/// The event files in `dir`, in name order.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(dir)(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(TrainError::io(dir))?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains(EVENTS_MARKER))
        {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_of_flattens_numbers_and_skips_the_rest() {
        let record = serde_json::json!({
            "step": 7, "loss": 1.5, "name": "x", "ok": true, "skipped": { "decode": 2, "none": null }
        });
        let mut got = scalars_of("train", &record);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                ("train/loss".to_string(), 1.5),
                ("train/skipped/decode".to_string(), 2.0)
            ]
        );
    }

    #[test]
    fn a_fresh_start_replaces_old_files_and_a_resume_adds_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = EventWriter::open(dir.path(), 0).unwrap().path().to_owned();
        let second = EventWriter::open(dir.path(), 10).unwrap().path().to_owned();
        assert_eq!(event_files(dir.path()).unwrap(), vec![first.clone(), second.clone()]);
        assert!(first < second, "names sort in writing order");
        let fresh = EventWriter::open(dir.path(), 0).unwrap().path().to_owned();
        assert_eq!(event_files(dir.path()).unwrap(), vec![fresh]);
    }
}
