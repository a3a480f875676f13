use std::path::PathBuf;

/// Why a launch failed. Worker failures name the rank and its log file.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// `--nproc` was zero.
    #[error("--nproc must be at least 1")]
    NoWorkers,
    /// The `solo` backend is a world of one.
    #[error("backend solo runs exactly one worker, but --nproc is {nproc} (use --backend mpi or nccl)")]
    SoloNeedsOneWorker {
        /// The requested worker count.
        nproc: usize,
    },
    /// `mpirun` is not on PATH.
    #[error("mpirun missing: run scripts/setup.sh (it installs openmpi-bin)")]
    MpirunMissing,
    /// The log folder or a rank log could not be created.
    #[error("cannot create log file {path}: {source}")]
    Log {
        /// The folder or file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// No free TCP port for the rendezvous could be found.
    #[error("cannot reserve a free port on 127.0.0.1 for MASTER_PORT: {0}")]
    NoFreePort(std::io::Error),
    /// A worker (or mpirun) could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program that failed to start.
        program: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// Waiting on a child process failed.
    #[error("cannot wait for rank {rank}: {source}")]
    Wait {
        /// The rank whose process could not be waited on.
        rank: usize,
        /// The IO error.
        source: std::io::Error,
    },
    /// A worker exited with a non-zero status.
    #[error("rank {rank} exited with status {code} (log: {log})")]
    WorkerExited {
        /// The failing rank.
        rank: usize,
        /// Its exit status.
        code: i32,
        /// Its log file.
        log: PathBuf,
    },
    /// A worker was killed by a signal.
    #[error("rank {rank} killed by signal {signal} ({name}) (log: {log})", name = signal_name(*.signal))]
    WorkerSignaled {
        /// The failing rank.
        rank: usize,
        /// The signal number.
        signal: i32,
        /// Its log file.
        log: PathBuf,
    },
    /// mpirun failed and its messages did not say which rank caused it.
    #[error("mpirun failed with {status} and did not name the failing rank (logs in {log_dir})")]
    MpirunFailed {
        /// mpirun's exit status, as text.
        status: String,
        /// The folder with the rank logs and mpirun.log.
        log_dir: PathBuf,
    },
    /// The launcher was asked to stop (Ctrl-C / SIGTERM) and stopped the workers.
    #[error("interrupted by {name}; the workers were stopped", name = signal_name(*.signal))]
    Interrupted {
        /// The signal received (SIGTERM when stopped through a StopHandle).
        signal: i32,
    },
}

/// "SIGKILL" for 9, etc.; "unknown" for numbers outside the common set.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "unknown",
    }
}
