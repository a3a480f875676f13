//! `results.csv`: one row per finished run.
//!
//! Columns: `run`, one per swept key (its label), `macs_per_sample`,
//! `samples_seen`, `compute` (= MACs per sample × samples seen, docs/architecture.md §8),
//! `final_step` and `final_loss` (the last line of `metrics.jsonl`), then the eval
//! metrics of `eval.json`: zero-shot as `zeroshot_top1`, `zeroshot_top5`,
//! `zeroshot_mean_per_class_recall`, retrieval under CLIP_benchmark's names
//! (`image_retrieval_recall@1`, …). A metric a run lacks is an empty cell.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::grid::{RunSpec, Sweep};
use super::SweepError;

/// A run's cost, computed by the caller from its train config and model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunCost {
    /// Forward MACs per sample (image + text tower).
    pub macs_per_sample: u64,
    /// Samples seen over the whole run (steps × global batch).
    pub samples_seen: u64,
}

impl RunCost {
    /// C = MACs per sample × samples seen.
    pub fn compute(&self) -> f64 {
        self.macs_per_sample as f64 * self.samples_seen as f64
    }
}

/// What [`collect`] wrote.
#[derive(Debug, Clone)]
pub struct CollectReport {
    /// The CSV file.
    pub path: PathBuf,
    /// Rows written (finished runs).
    pub rows: usize,
    /// Runs left out because they have not finished (no weights, or no eval result
    /// when the sweep evaluates).
    pub unfinished: Vec<String>,
}

/// The final weights of a run.
pub fn weights_path(run: &RunSpec) -> PathBuf {
    run.dir.join("model.safetensors")
}

/// The eval result of a run.
pub fn eval_path(run: &RunSpec) -> PathBuf {
    run.dir.join("eval.json")
}

/// Writes `<sweep root>/results.csv` from the runs' folders. `costs[i]` belongs to `runs[i]`.
pub fn collect(sweep: &Sweep, runs: &[RunSpec], costs: &[RunCost]) -> Result<CollectReport, SweepError> {
    let needs_eval = sweep.file.eval.is_some();
    let mut rows = Vec::new();
    let mut unfinished = Vec::new();
    for (run, cost) in runs.iter().zip(costs) {
        if !weights_path(run).exists() || (needs_eval && !eval_path(run).exists()) {
            unfinished.push(run.name.clone());
            continue;
        }
        let mut metrics = final_train_metrics(run)?;
        if eval_path(run).exists() {
            metrics.extend(eval_metrics(run)?);
        }
        rows.push((run, cost, metrics));
    }
    let metric_names: BTreeSet<String> = rows.iter().flat_map(|(_, _, m)| m.keys().cloned()).collect();
    // final_step and final_loss first, the eval metrics after, each group sorted.
    let (train_cols, eval_cols): (Vec<String>, Vec<String>) =
        metric_names.into_iter().partition(|k| k.starts_with("final_"));

    let path = sweep.root().join("results.csv");
    let io = |source: std::io::Error| SweepError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(sweep.root()).map_err(io)?;
    let csv_err = |e: csv::Error| SweepError::Io {
        path: path.clone(),
        source: std::io::Error::other(e),
    };
    let mut writer = csv::Writer::from_path(&path).map_err(csv_err)?;
    let mut header = vec!["run".to_string()];
    header.extend(sweep.labels());
    header.extend(["macs_per_sample", "samples_seen", "compute"].map(String::from));
    header.extend(train_cols.iter().cloned());
    header.extend(eval_cols.iter().cloned());
    writer.write_record(&header).map_err(csv_err)?;
    for (run, cost, metrics) in &rows {
        let mut record = vec![run.name.clone()];
        record.extend(run.values.iter().map(|(_, v)| v.clone()));
        record.push(cost.macs_per_sample.to_string());
        record.push(cost.samples_seen.to_string());
        record.push(format!("{:e}", cost.compute()));
        for name in train_cols.iter().chain(&eval_cols) {
            record.push(metrics.get(name).map(|v| v.to_string()).unwrap_or_default());
        }
        writer.write_record(&record).map_err(csv_err)?;
    }
    writer.flush().map_err(io)?;
    Ok(CollectReport {
        path,
        rows: rows.len(),
        unfinished,
    })
}

/// `final_step` and `final_loss` from the last line of the run's `metrics.jsonl`.
fn final_train_metrics(run: &RunSpec) -> Result<BTreeMap<String, f64>, SweepError> {
    let path = run.dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|source| SweepError::Io {
        path: path.clone(),
        source,
    })?;
    let mut out = BTreeMap::new();
    let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) else {
        return Ok(out);
    };
    let record: serde_json::Value = serde_json::from_str(last).map_err(|e| SweepError::RunOutput {
        run: run.name.clone(),
        path: path.clone(),
        message: format!("last line is not JSON: {e}"),
    })?;
    for (field, column) in [("step", "final_step"), ("loss", "final_loss")] {
        if let Some(v) = record.get(field).and_then(serde_json::Value::as_f64) {
            out.insert(column.to_string(), v);
        }
    }
    Ok(out)
}

/// The eval metrics of `eval.json` (the file `ferroclip eval --out` writes).
fn eval_metrics(run: &RunSpec) -> Result<BTreeMap<String, f64>, SweepError> {
    let path = eval_path(run);
    let text = std::fs::read_to_string(&path).map_err(|source| SweepError::Io {
        path: path.clone(),
        source,
    })?;
    parse_eval_json(&text).map_err(|message| SweepError::RunOutput {
        run: run.name.clone(),
        path,
        message,
    })
}

fn parse_eval_json(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let root: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let mut out = BTreeMap::new();
    let section = |name: &str| {
        root.get(name)
            .and_then(|s| s.get("metrics"))
            .and_then(|m| m.as_object())
    };
    if let Some(metrics) = section("zeroshot") {
        for (key, value) in metrics {
            let column = match key.as_str() {
                "acc1" => "zeroshot_top1".to_string(),
                "acc5" => "zeroshot_top5".to_string(),
                other => format!("zeroshot_{other}"),
            };
            if let Some(v) = value.as_f64() {
                out.insert(column, v);
            }
        }
    }
    if let Some(metrics) = section("retrieval") {
        for (key, value) in metrics {
            if let Some(v) = value.as_f64() {
                out.insert(key.clone(), v);
            }
        }
    }
    if out.is_empty() {
        return Err("no zeroshot.metrics or retrieval.metrics".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_finished_runs_with_their_metrics() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join("base.toml"),
            "name = \"b\"\nmodel = \"nano\"\n[data]\nbatch_size = 10\n",
        )
        .unwrap();
        let out_dir = root.path().join("runs");
        let sweep_path = root.path().join("s.toml");
        std::fs::write(
            &sweep_path,
            format!(
                "name = \"c\"\nbase = \"base.toml\"\nout_dir = {:?}\n[eval]\nzeroshot = \"z\"\n[[axis]]\nkey = \"model\"\nvalues = [\"nano\", \"tiny\"]\n",
                out_dir.display().to_string()
            ),
        )
        .unwrap();
        let sweep = Sweep::load(&sweep_path).unwrap();
        let runs = sweep.expand(1).unwrap();
        // The first run finished; the second has weights but no eval yet.
        for run in &runs {
            std::fs::create_dir_all(&run.dir).unwrap();
            std::fs::write(weights_path(run), b"w").unwrap();
            std::fs::write(
                run.dir.join("metrics.jsonl"),
                "{\"step\": 5, \"loss\": 3.0}\n{\"step\": 10, \"loss\": 2.5}\n",
            )
            .unwrap();
        }
        std::fs::write(
            eval_path(&runs[0]),
            r#"{"zeroshot": {"metrics": {"acc1": 0.25, "acc5": 0.5}}, "retrieval": {"metrics": {"image_retrieval_recall@1": 0.125}}}"#,
        )
        .unwrap();
        let costs = [
            RunCost {
                macs_per_sample: 1000,
                samples_seen: 200,
            },
            RunCost {
                macs_per_sample: 4000,
                samples_seen: 200,
            },
        ];
        let report = collect(&sweep, &runs, &costs).unwrap();
        assert_eq!(report.rows, 1);
        assert_eq!(report.unfinished, ["c-model=tiny"]);
        let text = std::fs::read_to_string(&report.path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "run,model,macs_per_sample,samples_seen,compute,final_loss,final_step,image_retrieval_recall@1,zeroshot_top1,zeroshot_top5",
                "c-model=nano,nano,1000,200,2e5,2.5,10,0.125,0.25,0.5",
            ]
        );
    }

    #[test]
    fn eval_json_without_metrics_is_an_error() {
        assert!(parse_eval_json("{\"model\": {}}").unwrap_err().contains("no zeroshot"));
        assert!(parse_eval_json("{").is_err());
    }
}
