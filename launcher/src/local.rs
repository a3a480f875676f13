//! The local launcher: N workers on this machine, started directly (solo, nccl)
//! or through `mpirun` (mpi), with their output multiplexed by rank, one log per
//! rank, and the whole group stopped when one worker fails, stops sending
//! heartbeats, or the launcher is interrupted.
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::env;

use crate::error::LaunchError;
use crate::heartbeat::{self, HeartbeatPolicy, Monitor, HEARTBEAT_DIR_ENV};
use crate::hosts::MpiHosts;
use crate::mpirun;
use crate::output::{self, Console, RankLog, Reader};
use crate::process::{self, Group, Member, POLL};
use crate::signals::{self, StopHandle};

/// How long workers get between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// How long to wait for the output pipes to drain after the workers are gone.
const DRAIN_PATIENCE: Duration = Duration::from_secs(2);

/// How the workers find each other; decides how they are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A world of one, started directly.
    Solo,
    /// Open MPI: started through `mpirun`, which sets `OMPI_COMM_WORLD_*`.
    Mpi,
    /// NCCL: started directly with `RANK`/`WORLD_SIZE`/`LOCAL_RANK`/
    /// `LOCAL_WORLD_SIZE`/`MASTER_ADDR`/`MASTER_PORT` for the rendezvous.
    Nccl,
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "solo" => Ok(Self::Solo),
            "mpi" => Ok(Self::Mpi),
            "nccl" => Ok(Self::Nccl),
            other => Err(format!("unknown backend {other:?} (expected solo, mpi or nccl)")),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Solo => "solo",
            Self::Mpi => "mpi",
            Self::Nccl => "nccl",
        })
    }
}

/// What a successful launch did.
#[derive(Debug, Clone)]
pub struct LaunchReport {
    /// Number of workers that ran (and exited 0).
    pub nproc: usize,
    /// Folder holding `rank<R>.log`.
    pub log_dir: PathBuf,
    /// Wall time from start to the last exit.
    pub elapsed: Duration,
}

/// N copies of one program on this machine, each told its rank.
#[derive(Debug, Clone)]
pub struct LocalLaunch {
    /// The worker program (the launcher passes its own executable and `train …`).
    pub program: PathBuf,
    /// Arguments given to every worker.
    pub args: Vec<OsString>,
    /// Number of workers.
    pub nproc: usize,
    /// How the workers are started and find each other.
    pub backend: Backend,
    /// Where `rank<R>.log` (and, for mpi, `mpirun.log`) are written.
    pub log_dir: PathBuf,
    /// Time between SIGTERM and SIGKILL when stopping workers.
    pub grace: Duration,
    /// The `mpirun` executable (looked up on PATH by default).
    pub mpirun: PathBuf,
    /// When a silent worker counts as hung (off by default).
    pub heartbeat: HeartbeatPolicy,
    /// mpi backend: the hosts mpirun places ranks on (default: this machine).
    pub mpi_hosts: MpiHosts,
    /// Direct backends in a multi-node launch: this node's share of the world
    /// (default: the whole world is here, ranks `0..nproc`).
    pub placement: Option<Placement>,
}

/// One node's share of a multi-node world, for workers started directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Global rank of this node's first worker.
    pub rank_start: usize,
    /// Workers across all nodes (`WORLD_SIZE`).
    pub world_size: usize,
    /// `MASTER_ADDR` for every worker.
    pub master_addr: String,
    /// `MASTER_PORT` for every worker.
    pub master_port: u16,
    /// Further variables for every worker (`FERROCLIP_RENDEZVOUS`, `FERROCLIP_RUN_TOKEN`, …).
    pub env: Vec<(String, String)>,
}

impl LocalLaunch {
    /// A launch of `nproc` copies of `program args…` with the default grace
    /// period and `mpirun` from PATH.
    pub fn new<A: Into<OsString>>(
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = A>,
        nproc: usize,
        backend: Backend,
        log_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            nproc,
            backend,
            log_dir: log_dir.into(),
            grace: DEFAULT_GRACE,
            mpirun: PathBuf::from("mpirun"),
            heartbeat: HeartbeatPolicy::default(),
            mpi_hosts: MpiHosts::default(),
            placement: None,
        }
    }

    /// The global ranks this launcher starts: `0..nproc`, or this node's
    /// share of a multi-node world.
    pub fn ranks(&self) -> std::ops::Range<usize> {
        let start = self.placement.as_ref().map_or(0, |p| p.rank_start);
        start..start + self.nproc
    }

    /// The hostfile written from `mpi_hosts.hosts` at launch.
    pub fn generated_hostfile(&self) -> PathBuf {
        let path = self.log_dir.join("hostfile");
        std::path::absolute(&path).unwrap_or(path)
    }

    /// The path of rank `rank`'s log.
    pub fn rank_log(&self, rank: usize) -> PathBuf {
        self.log_dir.join(format!("rank{rank}.log"))
    }

    /// The path of mpirun's own log (mpi backend).
    pub fn mpirun_log(&self) -> PathBuf {
        self.log_dir.join("mpirun.log")
    }

    /// `<log-dir>/heartbeat`, made absolute so that it means the same folder to
    /// every worker whatever its working directory; the workers get it as
    /// `FERROCLIP_HEARTBEAT_DIR`.
    pub fn heartbeat_dir(&self) -> PathBuf {
        let dir = self.log_dir.join("heartbeat");
        std::path::absolute(&dir).unwrap_or(dir)
    }

    /// Runs the workers with output on this process's stdout/stderr, and turns
    /// SIGINT/SIGTERM/SIGHUP to the launcher into SIGTERM to the workers.
    pub fn run(&self) -> Result<LaunchReport, LaunchError> {
        signals::install_signal_handlers();
        self.run_with(&Console::std(), &StopHandle::new())
    }

    /// Runs the workers with output on `console`; `stop` (or a signal caught by
    /// [`install_signal_handlers`](crate::install_signal_handlers)) stops them.
    /// Returns when every worker has exited 0, or after stopping and reaping all
    /// of them when one fails or is hung (the error names the first such rank).
    /// The heartbeat folder is emptied before the workers start.
    pub fn run_with(&self, console: &Console, stop: &StopHandle) -> Result<LaunchReport, LaunchError> {
        self.validate()?;
        output::create_log_dir(&self.log_dir)?;
        heartbeat::reset_dir(&self.heartbeat_dir())?;
        let started = Instant::now();
        match self.backend {
            Backend::Solo | Backend::Nccl => self.run_direct(console, stop)?,
            Backend::Mpi => self.run_mpirun(console, stop)?,
        }
        Ok(LaunchReport {
            nproc: self.nproc,
            log_dir: self.log_dir.clone(),
            elapsed: started.elapsed(),
        })
    }

    fn validate(&self) -> Result<(), LaunchError> {
        match (self.nproc, self.backend) {
            (0, _) => Err(LaunchError::NoWorkers),
            (n, Backend::Solo) if n != 1 => Err(LaunchError::SoloNeedsOneWorker { nproc: n }),
            _ => Ok(()),
        }
    }

    fn run_direct(&self, console: &Console, stop: &StopHandle) -> Result<(), LaunchError> {
        let (rank_start, world_size, master_addr, master_port, extra_env) = match &self.placement {
            Some(p) => (
                p.rank_start,
                p.world_size,
                p.master_addr.clone(),
                p.master_port,
                p.env.as_slice(),
            ),
            None => (0, self.nproc, "127.0.0.1".to_string(), free_port()?, &[][..]),
        };
        // One node: a secret drawn for this start of the workers, unless the user gave one
        // (then the workers inherit it). Multi-node placements carry the job's own secret.
        let fresh_secret = match (&self.placement, protocol::JobSecret::from_env()) {
            (None, Ok(None)) => Some(protocol::JobSecret::generate()?.to_hex()),
            (None, Err(e)) => return Err(e.into()),
            _ => None,
        };
        let mut group = Group::default();
        let mut readers = Vec::new();
        let mut logs = Vec::new();
        for local_rank in 0..self.nproc {
            let rank = rank_start + local_rank;
            let log = RankLog::create(self.rank_log(rank))?;
            let mut cmd = Command::new(&self.program);
            cmd.args(&self.args)
                .env(env::RANK, rank.to_string())
                .env(env::WORLD_SIZE, world_size.to_string())
                .env(env::LOCAL_RANK, local_rank.to_string())
                .env(env::LOCAL_WORLD_SIZE, self.nproc.to_string())
                .env(env::MASTER_ADDR, &master_addr)
                .env(env::MASTER_PORT, master_port.to_string())
                .env(HEARTBEAT_DIR_ENV, self.heartbeat_dir());
            if let Some(secret) = &fresh_secret {
                cmd.env(env::JOB_SECRET, secret);
            }
            for (name, value) in extra_env {
                cmd.env(name, value);
            }
            match spawn_piped(cmd, &self.program) {
                Ok((child, out, err)) => {
                    readers.push(output::pump_rank(out, rank, console.stdout.clone(), log.clone()));
                    readers.push(output::pump_rank(err, rank, console.stderr.clone(), log.clone()));
                    group.members.push(Member::new(rank, child));
                    logs.push(log.path);
                }
                Err(e) => {
                    // Ranks already started would wait forever for the missing one.
                    group.shutdown(self.grace)?;
                    output::join_readers(readers, DRAIN_PATIENCE, console);
                    return Err(e);
                }
            }
        }
        let verdict = self.supervise(&mut group, console, stop, Group::running_ranks, |rank, status| {
            process::failure(rank, status, &logs[rank - rank_start])
        });
        output::join_readers(readers, DRAIN_PATIENCE, console);
        verdict
    }

    fn run_mpirun(&self, console: &Console, stop: &StopHandle) -> Result<(), LaunchError> {
        let logs = (0..self.nproc)
            .map(|r| RankLog::create(self.rank_log(r)))
            .collect::<Result<Vec<_>, _>>()?;
        let mpirun_log = RankLog::create(self.mpirun_log())?;
        let hostfile = match (&self.mpi_hosts.hostfile, self.mpi_hosts.hosts.0.is_empty()) {
            (Some(file), _) => Some(file.clone()),
            (None, false) => {
                let file = self.generated_hostfile();
                std::fs::write(&file, self.mpi_hosts.hosts.hostfile_text()).map_err(|source| LaunchError::Log {
                    path: file.clone(),
                    source,
                })?;
                Some(file)
            }
            (None, true) => None,
        };
        let mut exports = vec![(HEARTBEAT_DIR_ENV.to_string(), self.heartbeat_dir().into_os_string())];
        // FERROCLIP_* settings (and RUST_LOG, and UCX's settings) reach ranks on other hosts
        // only through -x.
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            let forwarded = name.starts_with(env::PREFIX) || name == "RUST_LOG" || name.starts_with("UCX_");
            if forwarded && name != HEARTBEAT_DIR_ENV {
                exports.push((name.to_string(), value));
            }
        }
        let exports: Vec<(&str, OsString)> = exports.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
        let cmd = mpirun::command(
            &self.mpirun,
            self.nproc,
            &self.program,
            &self.args,
            &exports,
            &self.mpi_hosts.mpirun_args(hostfile.as_deref()),
        );
        let (child, out, err) = spawn_piped(cmd, &self.mpirun).map_err(|e| match e {
            LaunchError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                LaunchError::MpirunMissing
            }
            other => other,
        })?;
        let diagnostics = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            demux_mpirun(out, console.stdout.clone(), logs.clone(), mpirun_log.clone(), None),
            demux_mpirun(err, console.stderr.clone(), logs, mpirun_log, Some(diagnostics.clone())),
        ];
        let mut group = Group {
            members: vec![Member::new(0, child)],
        };
        // mpirun is the only child: while it runs, every rank counts as running
        // (a rank that finished early cannot be told from a hung one).
        let nproc = self.nproc;
        let all_ranks = move |group: &Group| {
            if group.all_exited() {
                Vec::new()
            } else {
                (0..nproc).collect()
            }
        };
        let verdict = self.supervise(&mut group, console, stop, all_ranks, |_, _| LaunchError::MpirunFailed {
            status: String::new(),
            log_dir: self.log_dir.clone(),
        });
        // mpirun's explanation arrives on stderr just before it exits: read it all.
        output::join_readers(readers, DRAIN_PATIENCE, console);
        match verdict {
            Err(LaunchError::MpirunFailed { log_dir, .. }) => {
                let lines = diagnostics.lock().map(|l| l.clone()).unwrap_or_default();
                let log = |rank: usize| self.rank_log(rank);
                Err(match mpirun::culprit(&lines) {
                    Some(mpirun::Culprit::Exited { rank, code }) => LaunchError::WorkerExited {
                        rank,
                        code,
                        log: log(rank),
                    },
                    Some(mpirun::Culprit::Signaled { rank, signal }) => LaunchError::WorkerSignaled {
                        rank,
                        signal,
                        log: log(rank),
                    },
                    None => LaunchError::MpirunFailed {
                        status: describe_mpirun_status(&group),
                        log_dir,
                    },
                })
            }
            other => other,
        }
    }

    /// Polls until every member exits 0, a member fails, a running rank (as
    /// `running` lists them) misses its heartbeat, or a stop is requested; in
    /// all but the first case stops and reaps all members. `on_failure` turns
    /// the first failure into the error.
    fn supervise(
        &self,
        group: &mut Group,
        console: &Console,
        stop: &StopHandle,
        running: impl Fn(&Group) -> Vec<usize>,
        on_failure: impl Fn(usize, std::process::ExitStatus) -> LaunchError,
    ) -> Result<(), LaunchError> {
        let mut monitor = Monitor::new(self.heartbeat_dir(), self.heartbeat);
        let outcome = loop {
            if let Some((rank, status)) = group.poll()? {
                break on_failure(rank, status);
            }
            if group.all_exited() {
                return Ok(());
            }
            if let Some(hung) = monitor.check(running(group)) {
                break LaunchError::WorkerHung {
                    rank: hung.rank,
                    silent_for: hung.silent_for,
                    never_beat: hung.never_beat,
                    log: self.rank_log(hung.rank),
                };
            }
            if let Some(signal) = signals::received_signal() {
                break LaunchError::Interrupted { signal };
            }
            if stop.is_stopped() {
                break LaunchError::Interrupted { signal: libc::SIGTERM };
            }
            std::thread::sleep(POLL);
        };
        if !group.all_exited() {
            let why = match &outcome {
                LaunchError::Interrupted { signal } => {
                    format!("received {}", crate::error::signal_name(*signal))
                }
                failure => failure.to_string(),
            };
            console.note(&format!(
                "{why}; stopping the other workers (SIGTERM, SIGKILL after {:?})",
                self.grace
            ));
        }
        group.shutdown(self.grace)?;
        Err(outcome)
    }
}

/// Spawns `cmd` in its own process group with stdin closed and stdout/stderr piped.
fn spawn_piped(
    mut cmd: Command,
    program: &Path,
) -> Result<
    (
        std::process::Child,
        std::process::ChildStdout,
        std::process::ChildStderr,
    ),
    LaunchError,
> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    process::isolate(&mut cmd);
    let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn {
        program: program.to_path_buf(),
        source,
    })?;
    match (child.stdout.take(), child.stderr.take()) {
        (Some(out), Some(err)) => Ok((child, out, err)),
        // Unreachable with Stdio::piped(), but never leave a child behind.
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            Err(LaunchError::Spawn {
                program: program.to_path_buf(),
                source: std::io::Error::other("no output pipes"),
            })
        }
    }
}

/// Routes one mpirun stream: tagged segments to their rank (console prefix +
/// rank log), the rest to the console as `[mpirun]` and to mpirun.log; on the
/// stderr stream the untagged lines are also kept for naming the failed rank.
fn demux_mpirun(
    stream: impl std::io::Read + Send + 'static,
    console: output::SharedWriter,
    logs: Vec<RankLog>,
    mpirun_log: RankLog,
    diagnostics: Option<Arc<Mutex<Vec<String>>>>,
) -> Reader {
    output::spawn_reader(stream, move |line| {
        let mut first_error = Ok(());
        for (rank, text) in mpirun::split_tagged(line) {
            let (prefix, log) = match rank.and_then(|r| logs.get(r).map(|log| (r, log))) {
                Some((r, log)) => (format!("[rank {r}] "), log),
                None => {
                    if let Some(d) = &diagnostics {
                        if let Ok(mut d) = d.lock() {
                            d.push(String::from_utf8_lossy(text).into_owned());
                        }
                    }
                    ("[mpirun] ".to_string(), &mpirun_log)
                }
            };
            output::write_line(&console, prefix.as_bytes(), text);
            if let Err(e) = log.write_line(text) {
                if first_error.is_ok() {
                    first_error = Err(format!("writing {} failed: {e}", log.path.display()));
                }
            }
        }
        first_error
    })
}

/// "exit status 137 (128+9: a rank was probably killed by SIGKILL)" and the like.
fn describe_mpirun_status(group: &Group) -> String {
    use std::os::unix::process::ExitStatusExt;
    let Some(status) = group.status_of(0) else {
        return "an unknown status".into();
    };
    match (status.code(), status.signal()) {
        (Some(code), _) if code > 128 => format!(
            "exit status {code} (128+{s}: a rank was probably killed by {name})",
            s = code - 128,
            name = crate::error::signal_name(code - 128)
        ),
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("signal {signal} ({})", crate::error::signal_name(signal)),
        (None, None) => "an unknown status".into(),
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for MASTER_PORT).
fn free_port() -> Result<u16, LaunchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(LaunchError::NoFreePort)?;
    Ok(listener.local_addr().map_err(LaunchError::NoFreePort)?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solo_with_two_workers_is_refused_naming_nproc() {
        let launch = LocalLaunch::new("true", Vec::<String>::new(), 2, Backend::Solo, "unused");
        let err = launch.run_with(&Console::std(), &StopHandle::new()).unwrap_err();
        assert!(err.to_string().contains("--nproc is 2"), "{err}");
    }

    #[test]
    fn backend_names_round_trip() {
        for b in [Backend::Solo, Backend::Mpi, Backend::Nccl] {
            assert_eq!(b.to_string().parse::<Backend>(), Ok(b));
        }
        assert!("gloo".parse::<Backend>().is_err());
    }
}
