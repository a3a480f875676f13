use std::path::PathBuf;

/// Why writing, submitting or querying a SLURM job failed. Each message names
/// the program, file or flag involved.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// A SLURM client program is not on PATH.
    #[error(
        "`{program}` not found on PATH: SLURM's client tools are not installed here (Debian/Ubuntu: \
         `apt-get install slurm-client` on a login node of a cluster; for a one-host test cluster \
         `apt-get install slurm-wlm munge`, which scripts/setup.sh installs)"
    )]
    NotInstalled {
        /// `sbatch`, `squeue`, ...
        program: &'static str,
    },
    /// A SLURM program exists but could not be started.
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        /// The program.
        program: &'static str,
        /// The IO error.
        source: std::io::Error,
    },
    /// sbatch refused the job (bad partition, account, resources, ...).
    #[error("sbatch rejected {script} ({status}): {stderr}")]
    Rejected {
        /// The batch script.
        script: PathBuf,
        /// sbatch's exit status, as text.
        status: String,
        /// What sbatch said on stderr, trimmed.
        stderr: String,
    },
    /// sbatch succeeded but its output held no job id.
    #[error("sbatch accepted {script} but printed no job id: {stdout:?}")]
    NoJobId {
        /// The batch script.
        script: PathBuf,
        /// sbatch's stdout.
        stdout: String,
    },
    /// A submit option is out of range or unsafe to put in a batch script.
    #[error("{flag}: {reason}")]
    InvalidOption {
        /// The flag, e.g. `--nodes`.
        flag: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// Reading or writing a file of the run (script, job record) failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The run's job record holds something that is not a job id.
    #[error("{path} line {line}: expected a SLURM job id, found {text:?}")]
    BadJobRecord {
        /// The record file (`slurm_jobs.txt`).
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// The offending text.
        text: String,
    },
}
