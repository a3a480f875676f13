//! The command-line arguments of `ferroclip sweep`'s subcommands.
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct FitArgs {
    /// Sweep file (TOML); reads <out_dir>/<sweep>/results.csv (run `sweep collect` first).
    pub file: PathBuf,
    /// The metric column; the error is E = 1 − metric.
    #[arg(long, default_value = "zeroshot_top1")]
    pub metric: String,
    /// The compute column (x axis).
    #[arg(long, default_value = "compute")]
    pub x: String,
    /// The column that colours points (usually the model axis).
    #[arg(long, default_value = "model")]
    pub group: String,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(clap::Args)]
pub struct PlanArgs {
    /// Sweep file (TOML), e.g. configs/sweeps/demo.toml.
    pub file: PathBuf,
    /// Worker processes per run: the global batch is batch_size × accum_steps × workers.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Runs trained at the same time.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Extra attempts for a run whose train or eval step fails.
    #[arg(long, default_value_t = 1)]
    pub max_retries: u32,
    #[command(flatten)]
    pub slurm: SlurmArgs,
}

#[derive(clap::Args)]
pub struct SlurmArgs {
    /// Submit the unfinished runs as a SLURM array job (one task per run, script
    /// <out_dir>/<sweep>/sweep.sbatch) instead of running them here; unfinished cooldown
    /// trunks go first, as their own array job (sweep-trunks.sbatch) the rest depends on.
    #[arg(long)]
    pub slurm: bool,
    /// SLURM partition (with --slurm).
    #[arg(long, requires = "slurm")]
    pub partition: Option<String>,
    /// Time limit of each array task, in SLURM's format (with --slurm).
    #[arg(long, requires = "slurm")]
    pub time: Option<String>,
    /// Account to charge (with --slurm).
    #[arg(long, requires = "slurm")]
    pub account: Option<String>,
    /// CPU cores per array task (with --slurm).
    #[arg(long, requires = "slurm")]
    pub cpus_per_task: Option<u32>,
    /// At most this many array tasks at once (with --slurm).
    #[arg(long, requires = "slurm")]
    pub max_parallel: Option<u32>,
    /// Seconds before the time limit at which a task gets SIGTERM to checkpoint (with --slurm).
    #[arg(long, requires = "slurm", default_value_t = launcher::slurm::DEFAULT_SIGNAL_LEAD_S)]
    pub signal_lead_s: u32,
    /// Write the array job's script but do not submit it (with --slurm).
    #[arg(long, requires = "slurm")]
    pub dry_run: bool,
}

#[derive(clap::Args)]
pub struct RunOneArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// The run's position in the sweep (0-based, the order of `sweep plan`).
    #[arg(long)]
    pub index: usize,
    /// Extra attempts for a train or eval step that fails.
    #[arg(long, default_value_t = 1)]
    pub max_retries: u32,
}
