//! `ferroclip launch`: start N local `ferroclip train` workers and supervise them.
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use launcher::{Backend, LocalLaunch};

/// Start N local workers, multiplex their output by rank and stop them all if one fails.
///
/// Each rank's output also goes to `<log-dir>/rank<R>.log` (and mpirun's own
/// messages to `mpirun.log`). The launcher does not read the train config, so
/// pass `--log-dir runs/<name>/logs` to keep the logs beside the run.
#[derive(clap::Args)]
pub struct Args {
    /// Number of local worker processes.
    #[arg(long)]
    nproc: usize,
    /// solo (one worker), mpi (through mpirun) or nccl (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT
    /// rendezvous). Default: solo for --nproc 1, mpi otherwise.
    #[arg(long)]
    backend: Option<Backend>,
    /// Folder for the per-rank logs.
    #[arg(long, default_value = "runs/launch-logs")]
    log_dir: PathBuf,
    /// Seconds the workers get between SIGTERM and SIGKILL when they are stopped.
    #[arg(long, default_value_t = launcher::DEFAULT_GRACE.as_secs_f64())]
    grace_s: f64,
    /// Run this program with the arguments after `--` instead of `ferroclip train`
    /// (for testing the launcher without the trainer).
    #[arg(long, hide = true)]
    worker_cmd: Option<PathBuf>,
    /// Arguments for `ferroclip train`, after `--` (e.g. `-- --config configs/train/demo.toml`).
    #[arg(last = true)]
    train_args: Vec<OsString>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let backend = args
        .backend
        .unwrap_or(if args.nproc == 1 { Backend::Solo } else { Backend::Mpi });
    let (program, worker_args) = match args.worker_cmd {
        Some(cmd) => (cmd, args.train_args),
        None => {
            let exe = std::env::current_exe().context("cannot find the ferroclip executable to start workers")?;
            (
                exe,
                std::iter::once(OsString::from("train"))
                    .chain(args.train_args)
                    .collect(),
            )
        }
    };
    anyhow::ensure!(
        args.grace_s.is_finite() && args.grace_s >= 0.0,
        "--grace-s must be a non-negative number of seconds, got {}",
        args.grace_s
    );
    let mut launch = LocalLaunch::new(program, worker_args, args.nproc, backend, args.log_dir);
    launch.grace = Duration::from_secs_f64(args.grace_s);
    let report = launch.run()?;
    eprintln!(
        "[launch] all {} workers exited 0 in {:.1}s (logs in {})",
        report.nproc,
        report.elapsed.as_secs_f64(),
        report.log_dir.display()
    );
    Ok(())
}
