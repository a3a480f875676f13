//! What `ferroclip submit` leaves in the run folder and what `ferroclip status`
//! reads back: the submitted job ids, the last metrics line, the newest checkpoint.
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::SlurmError;
use crate::RunDir;

/// The file, in the run folder, listing the run's SLURM job ids, one per line,
/// oldest first (a requeued job keeps its id; a new `submit` adds a line).
pub const JOB_RECORD: &str = "slurm_jobs.txt";

/// The batch script `ferroclip submit` writes in the run folder.
pub const SCRIPT_FILE: &str = "submit.sbatch";

/// Appends `job` to the run's job record.
pub fn record_job(run: &RunDir, job: u64) -> Result<(), SlurmError> {
    let path = run.root().join(JOB_RECORD);
    let io = |source| SlurmError::Io {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    writeln!(file, "{job}").map_err(io)
}

/// The run's job ids, oldest first (empty when it was never submitted).
pub fn recorded_jobs(run: &RunDir) -> Result<Vec<u64>, SlurmError> {
    let path = run.root().join(JOB_RECORD);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(SlurmError::Io { path, source }),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            l.trim().parse().map_err(|_| SlurmError::BadJobRecord {
                path: path.clone(),
                line: i + 1,
                text: l.to_string(),
            })
        })
        .collect()
}

/// How far a run got, from the files the trainer writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunProgress {
    /// The last line of `metrics.jsonl`, if any.
    pub last_metrics: Option<String>,
    /// The checkpoint `checkpoints/latest` points to, if any.
    pub latest_checkpoint: Option<PathBuf>,
    /// Whether the final weights (`model.safetensors`) exist: the run finished.
    pub finished: bool,
}

/// Reads the run's progress; missing files are simply absent from the result.
pub fn run_progress(run: &RunDir) -> Result<RunProgress, SlurmError> {
    let read = |path: PathBuf| match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SlurmError::Io { path, source }),
    };
    let last_metrics =
        read(run.metrics())?.and_then(|text| text.lines().map(str::trim).rfind(|l| !l.is_empty()).map(str::to_string));
    let latest_checkpoint = read(run.checkpoints().join("latest"))?
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .map(|name| run.checkpoints().join(name));
    Ok(RunProgress {
        last_metrics,
        latest_checkpoint,
        finished: run.final_weights().is_file(),
    })
}

/// The run folder for `name_or_path`: an existing folder as given, else `runs/<name>`.
pub fn find_run(name_or_path: &Path) -> RunDir {
    if name_or_path.is_dir() {
        RunDir::new(name_or_path)
    } else {
        RunDir::new(Path::new("runs").join(name_or_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_record_round_trips_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        assert!(recorded_jobs(&run).unwrap().is_empty());
        record_job(&run, 12).unwrap();
        record_job(&run, 15).unwrap();
        assert_eq!(recorded_jobs(&run).unwrap(), vec![12, 15]);
        std::fs::write(dir.path().join(JOB_RECORD), "12\nbanana\n").unwrap();
        let err = recorded_jobs(&run).unwrap_err().to_string();
        assert!(err.contains("slurm_jobs.txt line 2") && err.contains("banana"), "{err}");
    }

    #[test]
    fn progress_reads_last_metrics_and_latest_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        assert_eq!(run_progress(&run).unwrap(), RunProgress::default());
        std::fs::write(run.metrics(), "{\"step\":1}\n{\"step\":2}\n\n").unwrap();
        std::fs::create_dir_all(run.checkpoints()).unwrap();
        std::fs::write(run.checkpoints().join("latest"), "step_00000002\n").unwrap();
        let progress = run_progress(&run).unwrap();
        assert_eq!(progress.last_metrics.as_deref(), Some("{\"step\":2}"));
        assert_eq!(
            progress.latest_checkpoint,
            Some(run.checkpoints().join("step_00000002"))
        );
        assert!(!progress.finished);
        std::fs::write(run.final_weights(), b"w").unwrap();
        assert!(run_progress(&run).unwrap().finished);
    }
}
