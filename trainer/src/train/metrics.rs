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
