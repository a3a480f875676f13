//! SLURM: write a commented sbatch script for a training run, submit it, and
//! report the job's state beside the run's progress.
//!
//! - [`SbatchSpec`] → [`SbatchSpec::render`]: `#SBATCH` resources, `--requeue`,
//!   `--signal=TERM@<lead>` so workers checkpoint before the time limit,
//!   `MASTER_ADDR` from the allocation's first node, and `srun ... ferroclip train
//!   ... --resume latest` so a requeued job resumes.
//! - [`Slurm`] runs `sbatch` (job id from `--parsable`), `squeue` and `sacct`,
//!   with errors that say which package is missing or what sbatch refused.
//! - [`ArraySpec`]: a sweep as an array job, one task per unfinished run
//!   (`ferroclip sweep run-one FILE --index $SLURM_ARRAY_TASK_ID`).
//! - [`record_job`] / [`recorded_jobs`] / [`run_progress`]: the run folder's
//!   job ids, last metrics line and newest checkpoint.
mod array;
mod cli;
mod error;
mod record;
mod script;

pub use array::{index_ranges, ArraySpec, ARRAY_SCRIPT_FILE};
pub use cli::{parse_sbatch_job_id, JobState, Slurm};
pub use error::SlurmError;
pub use record::{find_run, record_job, recorded_jobs, run_progress, RunProgress, JOB_RECORD, SCRIPT_FILE};
pub use script::{shell_quote, SbatchOptions, SbatchSpec, SlurmBackend, DEFAULT_SIGNAL_LEAD_S, SECRET_FILE};
