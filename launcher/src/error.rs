use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

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
    /// The job secret for the workers' rendezvous could not be had (a bad
    /// `FERROCLIP_JOB_SECRET[_FILE]`, or no randomness).
    #[error("job secret: {0}")]
    Secret(#[from] protocol::AuthError),
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
    /// A worker stopped writing heartbeats (or never started to).
    #[error("rank {rank} hung: {what} {secs:.1}s (log: {log})",
        what = if *.never_beat { "no first heartbeat within" } else { "no heartbeat for" },
        secs = .silent_for.as_secs_f64())]
    WorkerHung {
        /// The silent rank.
        rank: usize,
        /// Time since its last heartbeat, or since the start when it never wrote one.
        silent_for: Duration,
        /// Whether it never wrote a heartbeat.
        never_beat: bool,
        /// Its log file.
        log: PathBuf,
    },
    /// The heartbeat folder could not be cleared or created.
    #[error("cannot reset the heartbeat folder {path}: {source}")]
    HeartbeatDir {
        /// The folder (`<log-dir>/heartbeat`).
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// Every attempt failed and the restart budget is spent.
    #[error("gave up after {restarts} restart{s}; every attempt failed:{list}",
        s = if *.restarts == 1 { "" } else { "s" },
        list = list_attempts(.attempts))]
    GaveUp {
        /// The restarts made (`--max-restarts`).
        restarts: usize,
        /// Every failed attempt, first to last.
        attempts: Vec<FailedAttempt>,
    },
    /// Hosts were gone before a restart and the others hold fewer than `--min-nproc`
    /// workers.
    #[error(
        "cannot restart: {lost}, and the hosts that answer have {slots} slot(s), fewer than --min-nproc {min_nproc}; \
         failed attempts:{list}",
        list = list_attempts(.attempts)
    )]
    TooFewWorkers {
        /// Slots on the hosts that answer.
        slots: usize,
        /// `--min-nproc`.
        min_nproc: usize,
        /// Which hosts are gone, in words.
        lost: String,
        /// Every failed attempt, first to last.
        attempts: Vec<FailedAttempt>,
    },
    /// The launcher was asked to stop (Ctrl-C / SIGTERM) and stopped the workers.
    #[error("interrupted by {name}; the workers were stopped", name = signal_name(*.signal))]
    Interrupted {
        /// The signal received (SIGTERM when stopped through a StopHandle).
        signal: i32,
    },
}

/// One attempt that ended in a worker failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAttempt {
    /// 1 for the first start, 2 for the first restart, …
    pub attempt: usize,
    /// Which rank failed and how, e.g. "rank 1 killed by SIGKILL".
    pub failure: String,
    /// How long the group ran.
    pub ran_for: Duration,
    /// The failing rank's log for this attempt (mpirun.log when mpirun did not
    /// name a rank), at its path after rotation.
    pub log: PathBuf,
}

impl fmt::Display for FailedAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "attempt {}: {} after {:.1}s (log: {})",
            self.attempt,
            self.failure,
            self.ran_for.as_secs_f64(),
            self.log.display()
        )
    }
}

/// The attempts, one per indented line (for [`LaunchError::GaveUp`]).
fn list_attempts(attempts: &[FailedAttempt]) -> String {
    attempts.iter().map(|a| format!("\n  {a}")).collect()
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
