//! What the report shows, read from a run folder: the metrics (the newest line of each
//! step), eval results, the resolved config and the checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::error::ReportError;
use crate::RunDir;

/// One checkpoint folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Folder name, `step_<n>`.
    pub name: String,
    /// Its step.
    pub step: u64,
    /// Bytes of the files in it.
    pub bytes: u64,
}

/// A run folder's contents, as the report needs them.
#[derive(Debug, Clone, Default)]
pub struct RunData {
    /// The metrics line of each logged step (the last one written for the step: a resumed
    /// run logs steps again).
    pub metrics: BTreeMap<u64, Map<String, Value>>,
    /// Lines of metrics.jsonl that are not a JSON object with a `step` (a crash mid-line).
    pub unreadable_lines: usize,
    /// Eval metrics by step: `task/metric` → value (`eval.jsonl`).
    pub evals: BTreeMap<u64, BTreeMap<String, f64>>,
    /// config.toml as written by the run.
    pub config: Option<String>,
    /// The checkpoints, by step.
    pub checkpoints: Vec<Checkpoint>,
    /// The checkpoint `checkpoints/latest` names.
    pub latest_checkpoint: Option<String>,
    /// Whether model.safetensors (the finished run's weights) exists.
    pub finished: bool,
    /// TensorBoard event files in tb/.
    pub event_files: usize,
}

fn read_optional(path: &Path) -> Result<Option<String>, ReportError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ReportError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// JSON objects with a `step`, by step (later lines win), and the count of other lines.
fn records_by_step(text: &str) -> (BTreeMap<u64, Map<String, Value>>, usize) {
    let mut out = BTreeMap::new();
    let mut unreadable = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let record = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(record)) => record,
            _ => {
                unreadable += 1;
                continue;
            }
        };
        match record.get("step").and_then(Value::as_u64) {
            Some(step) => {
                out.insert(step, record);
            }
            None => unreadable += 1,
        }
    }
    (out, unreadable)
}

/// `task/metric` → value for each `{"<task>": {"metrics": {...}}}` of an eval record.
pub fn eval_metrics(record: &Map<String, Value>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (task, value) in record {
        let Some(metrics) = value.get("metrics").and_then(Value::as_object) else {
            continue;
        };
        for (name, v) in metrics {
            if let Some(v) = v.as_f64() {
                out.insert(format!("{task}/{name}"), v);
            }
        }
    }
    out
}

fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn checkpoints(dir: &Path) -> Result<Vec<Checkpoint>, ReportError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ReportError::Io {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut out: Vec<Checkpoint> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter_map(|path: PathBuf| {
            let name = path.file_name()?.to_str()?.to_string();
            let step = name.strip_prefix("step_")?.parse().ok()?;
            Some(Checkpoint {
                bytes: folder_bytes(&path),
                name,
                step,
            })
        })
        .collect();
    out.sort_by_key(|c| c.step);
    Ok(out)
}

impl RunData {
    /// Reads `run`; missing files are absent from the result.
    pub fn read(run: &RunDir) -> Result<Self, ReportError> {
        let (metrics, unreadable_lines) = read_optional(&run.metrics())?
            .map(|text| records_by_step(&text))
            .unwrap_or_default();
        let evals = read_optional(&run.eval())?
            .map(|text| records_by_step(&text).0)
            .unwrap_or_default()
            .into_iter()
            .map(|(step, record)| (step, eval_metrics(&record)))
            .collect();
        let latest_checkpoint = read_optional(&run.checkpoints().join("latest"))?
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty());
        let event_files = std::fs::read_dir(run.tensorboard())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().contains("tfevents"))
                    .count()
            })
            .unwrap_or(0);
        Ok(Self {
            metrics,
            unreadable_lines,
            evals,
            config: read_optional(&run.config())?,
            checkpoints: checkpoints(&run.checkpoints())?,
            latest_checkpoint,
            finished: run.final_weights().is_file(),
            event_files,
        })
    }

    /// (step, value) of the metric `key` (a number, or `key/inner` inside an object) over
    /// the logged steps that have it.
    pub fn series(&self, key: &str) -> Vec<(f64, f64)> {
        let (outer, inner) = key.split_once('/').map_or((key, None), |(o, i)| (o, Some(i)));
        self.metrics
            .iter()
            .filter_map(|(&step, record)| {
                let value = record.get(outer)?;
                let value = match inner {
                    Some(inner) => value.get(inner)?,
                    None => value,
                };
                Some((step as f64, value.as_f64().unwrap_or(f64::NAN)))
            })
            .collect()
    }

    /// The names of the eval metrics, over all evals.
    pub fn eval_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.evals.values().flat_map(|m| m.keys().cloned()).collect();
        names.sort();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_line_of_a_step_wins_and_broken_lines_are_counted() {
        let text = "{\"step\":1,\"loss\":3}\n{\"step\":2,\"loss\":2}\n{\"step\":2,\"loss\":1.5}\n{\"ste";
        let (records, unreadable) = records_by_step(text);
        assert_eq!(records.len(), 2);
        assert_eq!(records[&2]["loss"], 1.5);
        assert_eq!(unreadable, 1);
    }

    #[test]
    fn series_reads_numbers_and_nested_counts() {
        let mut data = RunData::default();
        let (records, _) =
            records_by_step("{\"step\":1,\"loss\":null,\"skipped_samples\":{\"decode\":1}}\n{\"step\":2,\"loss\":1.0}");
        data.metrics = records;
        let loss = data.series("loss");
        assert!(loss[0].1.is_nan() && loss[1] == (2.0, 1.0));
        assert_eq!(data.series("skipped_samples/decode"), vec![(1.0, 1.0)]);
    }

    #[test]
    fn eval_metrics_are_named_by_task() {
        let record: Map<String, Value> = serde_json::from_str(
            r#"{"step":5,"zeroshot":{"metrics":{"acc1":0.5},"shards":"x"},"retrieval":{"metrics":{"image_retrieval_recall@1":0.25}}}"#,
        )
        .unwrap();
        let m = eval_metrics(&record);
        assert_eq!(m["zeroshot/acc1"], 0.5);
        assert_eq!(m["retrieval/image_retrieval_recall@1"], 0.25);
        assert_eq!(m.len(), 2);
    }
}
