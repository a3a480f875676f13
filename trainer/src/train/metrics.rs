//! `metrics.jsonl`: one JSON object per log step, flushed as written so a
//! crashed run keeps everything it logged.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::TrainError;

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
            .map_err(|e| TrainError::Io {
                path: path.to_owned(),
                source: e,
            })?;
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
        let io = |e| TrainError::Io {
            path: path.to_owned(),
            source: e,
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
