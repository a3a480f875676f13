//! `ferroclip launch`: start N local `ferroclip train` workers, supervise them,
//! and restart the group from its latest checkpoint when one fails.
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use launcher::{Backend, HeartbeatPolicy, LocalLaunch, RestartPolicy, SupervisedLaunch};

/// Start N local workers, multiplex their output by rank and stop them all if one fails.
///
/// Each rank's output also goes to `<log-dir>/rank<R>.log` (and mpirun's own
/// messages to `mpirun.log`). The launcher does not read the train config, so
/// pass `--log-dir runs/<name>/logs` to keep the logs beside the run.
///
/// With `--max-restarts K` a failed group (a worker exited non-zero, was killed
/// by a signal, or missed its heartbeat) is stopped and started again with
/// `--resume latest` appended, after a back-off that doubles per consecutive
/// failure (capped at 60 s; an attempt that ran 10 minutes resets it). Before a
/// restart, the failed attempt's logs are renamed to `rank<R>.attempt<N>.log`
/// (and `mpirun.attempt<N>.log`): `rank<R>.log` always holds the current
/// attempt. After K restarts the launcher gives up, listing every attempt.
/// Ctrl-C or SIGTERM to the launcher stops the workers and is never restarted.
///
/// Workers get `FERROCLIP_HEARTBEAT_DIR=<log-dir>/heartbeat` (emptied at every
/// start) and touch `rank<R>` in it after every step.
#[derive(clap::Args)]
pub struct Args {
    /// Number of local worker processes.
    #[arg(long)]
    nproc: usize,
    /// solo (one worker), mpi (through mpirun) or nccl (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT
    /// rendezvous). Default: solo for --nproc 1, mpi otherwise.
    #[arg(long)]
    backend: Option<Backend>,
    /// Folder for the per-rank logs. `rank<R>.log` holds the current attempt; before a
    /// restart the failed attempt's logs are renamed to `rank<R>.attempt<N>.log`.
    #[arg(long, default_value = "runs/launch-logs")]
    log_dir: PathBuf,
    /// Seconds the workers get between SIGTERM and SIGKILL when they are stopped.
    #[arg(long, default_value_t = launcher::DEFAULT_GRACE.as_secs_f64())]
    grace_s: f64,
    /// Restart the whole group up to this many times when a worker fails (0: never).
    #[arg(long, default_value_t = 0)]
    max_restarts: usize,
    /// Seconds to wait before the first restart; doubled per consecutive failure, at most 60.
    #[arg(long, default_value_t = 5.0)]
    restart_backoff_s: f64,
    /// A worker whose heartbeat file (`$FERROCLIP_HEARTBEAT_DIR/rank<R>`, in
    /// `<log-dir>/heartbeat`) is older than this many seconds is hung and the group is
    /// stopped (0: no heartbeat checks).
    #[arg(long, default_value_t = 0.0)]
    heartbeat_timeout_s: f64,
    /// Seconds a worker may take to write its first heartbeat (with --heartbeat-timeout-s).
    #[arg(long, default_value_t = launcher::DEFAULT_STARTUP_TIMEOUT.as_secs_f64())]
    startup_timeout_s: f64,
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
    let mut launch = LocalLaunch::new(program, worker_args, args.nproc, backend, args.log_dir);
    launch.grace = seconds("--grace-s", args.grace_s)?;
    let heartbeat_timeout = seconds("--heartbeat-timeout-s", args.heartbeat_timeout_s)?;
    launch.heartbeat = HeartbeatPolicy {
        timeout: (!heartbeat_timeout.is_zero()).then_some(heartbeat_timeout),
        startup_timeout: seconds("--startup-timeout-s", args.startup_timeout_s)?,
    };
    let policy = RestartPolicy {
        max_restarts: args.max_restarts,
        backoff: seconds("--restart-backoff-s", args.restart_backoff_s)?,
        ..RestartPolicy::default()
    };
    let report = SupervisedLaunch::new(launch, policy).run()?;
    let restarts = match report.failed_attempts.len() {
        0 => String::new(),
        n => format!(" after {n} restart{}", if n == 1 { "" } else { "s" }),
    };
    eprintln!(
        "[launch] all {} workers exited 0 in {:.1}s{restarts} (logs in {})",
        report.last.nproc,
        report.elapsed.as_secs_f64(),
        report.last.log_dir.display()
    );
    Ok(())
}

/// A flag's seconds as a Duration; negative, NaN or infinite values are refused.
fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| anyhow::anyhow!("{flag} must be a non-negative number of seconds, got {value}"))
}
