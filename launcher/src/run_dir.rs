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
    /// TensorBoard event files (the scalars of `metrics.jsonl` and `eval.jsonl`).
    pub fn tensorboard(&self) -> PathBuf {
        self.root.join("tb")
    }
    /// The page `ferroclip report` writes.
    pub fn report(&self) -> PathBuf {
        self.root.join("report.html")
    }
    /// Per-rank log file.
    pub fn rank_log(&self, rank: usize) -> PathBuf {
        self.root.join("logs").join(format!("rank{rank}.log"))
    }
    /// Folder holding `step_<n>/` checkpoints.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    /// The checkpoint folder of step `n`, named as the trainer names it (`step_00000040`).
    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.checkpoints().join(format!("step_{step:08}"))
    }
    /// The final weights of a finished run.
    pub fn final_weights(&self) -> PathBuf {
        self.root.join("model.safetensors")
    }

    /// The run a model folder belongs to, and the step of its weights: a run folder (its
    /// final weights, at the last step in `metrics.jsonl`) or `<run>/checkpoints/step_<n>`.
    /// `None` for other folders (an exported model, a copy).
    pub fn of_weights(dir: &Path) -> Option<(RunDir, u64)> {
        let name = dir.file_name()?.to_str()?;
        if let Some(step) = name.strip_prefix("step_").and_then(|n| n.parse().ok()) {
            let checkpoints = dir.parent()?;
            let run = checkpoints
                .parent()
                .filter(|_| checkpoints.file_name() == Some("checkpoints".as_ref()))?;
            return Some((RunDir::new(run), step));
        }
        let run = RunDir::new(dir);
        let text = std::fs::read_to_string(run.metrics()).ok()?;
        let last = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("step")?.as_u64())
            .next_back()?;
        Some((run, last))
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
        assert_eq!(r.checkpoint(40), PathBuf::from("runs/x/checkpoints/step_00000040"));
        assert_eq!(r.tensorboard(), PathBuf::from("runs/x/tb"));
        assert_eq!(r.report(), PathBuf::from("runs/x/report.html"));
    }

    #[test]
    fn weights_belong_to_a_run_by_folder() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("x"));
        let (owner, step) = RunDir::of_weights(&run.checkpoint(40)).unwrap();
        assert_eq!((owner.root(), step), (run.root(), 40));
        assert!(RunDir::of_weights(run.root()).is_none(), "no metrics: not a run folder");
        std::fs::create_dir_all(run.root()).unwrap();
        std::fs::write(run.metrics(), "{\"step\":5}\n{\"step\":6}\n").unwrap();
        assert_eq!(RunDir::of_weights(run.root()).unwrap().1, 6);
        assert!(RunDir::of_weights(&dir.path().join("export/step_3")).is_none());
    }
}
