use std::path::{Path, PathBuf};

/// The on-disk layout of one run (docs/architecture.md §6): `runs/<name>/…`.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// A run directory rooted at `root` (usually `runs/<name>`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// The run's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The resolved config, as run.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// One JSON line per log step.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    /// One JSON line per evaluation.
    pub fn eval(&self) -> PathBuf {
        self.root.join("eval.jsonl")
    }
    /// Per-rank log file.
    pub fn rank_log(&self, rank: usize) -> PathBuf {
        self.root.join("logs").join(format!("rank{rank}.log"))
    }
    /// Folder holding `step_<n>/` checkpoints.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    /// The checkpoint folder of step `n`.
    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.checkpoints().join(format!("step_{step}"))
    }
    /// The final weights of a finished run.
    pub fn final_weights(&self) -> PathBuf {
        self.root.join("model.safetensors")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn layout_matches_design() {
        let r = RunDir::new("runs/x");
        assert_eq!(r.metrics(), PathBuf::from("runs/x/metrics.jsonl"));
        assert_eq!(r.rank_log(3), PathBuf::from("runs/x/logs/rank3.log"));
        assert_eq!(r.checkpoint(40), PathBuf::from("runs/x/checkpoints/step_40"));
    }
}
