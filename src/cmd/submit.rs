//! `ferroclip submit`: write a commented sbatch script for a training run under
//! `runs/<name>/submit.sbatch` and submit it to SLURM.
use std::path::PathBuf;

use anyhow::Context;
use launcher::slurm::{self, SbatchOptions, SbatchSpec, Slurm, SlurmBackend};
use launcher::RunDir;
use trainer::train::config::TrainConfig;

/// Write an sbatch script for a training run and submit it with sbatch.
///
/// The job runs one `ferroclip train` per task (one per GPU) under srun, with
/// `--resume latest`: SLURM may requeue it (preemption, `scontrol requeue`, the
/// time limit) and the next attempt continues from the newest checkpoint.
/// The script is `runs/<name>/submit.sbatch`, the job's output
/// `runs/<name>/logs/slurm-<jobid>.out`; `ferroclip status <name>` reports on it.
#[derive(clap::Args)]
pub struct Args {
    /// Train config (TOML); the run name and folder come from it.
    #[arg(long, required_unless_present = "array_from")]
    config: Option<PathBuf>,
    /// Submit a sweep's unfinished runs as one SLURM array job instead (one task per
    /// run; the same as `ferroclip sweep run SWEEP --slurm`).
    #[arg(long, value_name = "SWEEP", conflicts_with_all = ["config", "overrides", "train_args", "nodes", "gpus_per_node", "ntasks_per_node", "backend", "ferroclip"])]
    array_from: Option<PathBuf>,
    /// Override a config value, passed on to `ferroclip train`: `--set schedule.steps=200`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Nodes to allocate.
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// GPUs per node; one worker per GPU. 0 for a CPU job (then give --ntasks-per-node).
    #[arg(long, default_value_t = 0)]
    gpus_per_node: u32,
    /// Workers per node. Default: --gpus-per-node.
    #[arg(long)]
    ntasks_per_node: Option<u32>,
    /// CPU cores per worker (its data-loading threads).
    #[arg(long)]
    cpus_per_task: Option<u32>,
    /// SLURM partition.
    #[arg(long)]
    partition: Option<String>,
    /// Time limit in SLURM's format (`HH:MM:SS`, `D-HH:MM`, minutes, ...).
    #[arg(long)]
    time: Option<String>,
    /// Account to charge.
    #[arg(long)]
    account: Option<String>,
    /// nccl (GPUs; rendezvous at the first node) or mpi (srun --mpi=pmix; CPUs).
    /// Default: nccl with GPUs, mpi without.
    #[arg(long)]
    backend: Option<SlurmBackend>,
    /// Seconds before the time limit at which the workers get SIGTERM to checkpoint.
    #[arg(long, default_value_t = slurm::DEFAULT_SIGNAL_LEAD_S)]
    signal_lead_s: u32,
    /// The ferroclip executable the compute nodes run. Default: this one.
    #[arg(long)]
    ferroclip: Option<PathBuf>,
    /// Write the script and print it, but do not submit.
    #[arg(long)]
    dry_run: bool,
    /// More arguments for `ferroclip train`, after `--` (e.g. `-- --init-from w.safetensors`).
    #[arg(last = true)]
    train_args: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let options = SbatchOptions {
        cpus_per_task: args.cpus_per_task,
        partition: args.partition,
        time: args.time,
        account: args.account,
    };
    if let Some(sweep) = args.array_from {
        return crate::cmd::sweep::submit_sweep_array(
            sweep,
            crate::cmd::sweep::ArrayOptions {
                options,
                signal_lead_s: args.signal_lead_s,
                dry_run: args.dry_run,
            },
        );
    }
    let config = args.config.context("--config is required (or --array-from SWEEP)")?;
    // The flags that decide the run folder or the resume must be submit's own,
    // or the script's folder and the run's would disagree.
    for arg in &args.train_args {
        let flag = arg.split('=').next().unwrap_or(arg);
        if matches!(flag, "--config" | "--set" | "--resume") {
            anyhow::bail!(
                "{flag} after `--`: give --config and --set to `ferroclip submit` itself (the script adds --resume latest)"
            );
        }
    }
    let cfg = TrainConfig::load(&config, &args.overrides)
        .with_context(|| format!("reading the train config {}", config.display()))?;
    let workdir = std::env::current_dir().context("cannot read the current directory")?;
    let run = RunDir::new(cfg.run_dir());
    let ferroclip = match args.ferroclip {
        Some(path) => path,
        None => std::env::current_exe().context("cannot find the ferroclip executable")?,
    };
    let mut train_args = vec!["--config".to_string(), path_text("--config", &config)?];
    for set in &args.overrides {
        train_args.extend(["--set".to_string(), set.clone()]);
    }
    train_args.extend(args.train_args.iter().cloned());
    let spec = SbatchSpec {
        job_name: cfg.name.clone(),
        workdir: workdir.clone(),
        run_dir: run.root().to_path_buf(),
        nodes: args.nodes,
        gpus_per_node: args.gpus_per_node,
        ntasks_per_node: args.ntasks_per_node.unwrap_or(args.gpus_per_node),
        options,
        backend: args.backend.unwrap_or(if args.gpus_per_node > 0 {
            SlurmBackend::Nccl
        } else {
            SlurmBackend::Mpi
        }),
        signal_lead_s: args.signal_lead_s,
        ferroclip,
        train_args,
    };
    spec.validate()?;

    // sbatch opens the output file before the job starts: the logs folder must exist.
    let logs = run.root().join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    if spec.backend == SlurmBackend::Nccl {
        ensure_job_secret(&spec.secret_file())?;
    }
    let script_path = run.root().join(slurm::SCRIPT_FILE);
    let script = spec.render();
    std::fs::write(&script_path, &script).with_context(|| format!("cannot write {}", script_path.display()))?;

    if args.dry_run {
        print!("{script}");
        eprintln!("[submit] dry run: wrote {} (not submitted)", script_path.display());
        return Ok(());
    }
    let job = Slurm::from_path().submit(&script_path, &workdir)?;
    slurm::record_job(&run, job)?;
    println!("submitted job {job}: {}", script_path.display());
    eprintln!(
        "[submit] output in {}; check on it with `ferroclip status {}`",
        spec.output_pattern()
            .display()
            .to_string()
            .replace("%j", &job.to_string()),
        cfg.name
    );
    Ok(())
}

fn path_text(flag: &str, path: &std::path::Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("{flag} {} is not UTF-8", path.display()))
}

/// The nccl backend's job secret in the run folder: a new one on the first submission, the
/// same one (checked: still readable by its owner only) when the run is submitted again.
fn ensure_job_secret(path: &std::path::Path) -> anyhow::Result<()> {
    if path.exists() {
        protocol::JobSecret::read_file(path)?;
    } else {
        protocol::JobSecret::generate()?.write_new_file(path)?;
    }
    Ok(())
}
