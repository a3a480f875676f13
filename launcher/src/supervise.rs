//! Self-healing launches: when a worker fails (non-zero exit, signal, or no
//! heartbeat), stop the whole group and start it again with `--resume latest`
//! after a back-off, up to a restart budget; then give up with a summary of
//! every attempt.
//!
//! Logs: `rank<R>.log` (and `mpirun.log`) always hold the current attempt.
//! Before a restart the failed attempt's logs are renamed to
//! `rank<R>.attempt<N>.log` (`mpirun.attempt<N>.log`), N counting from 1.
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{signal_name, FailedAttempt, LaunchError};
use crate::local::{LaunchReport, LocalLaunch};
use crate::output::Console;
use crate::process::POLL;
use crate::shrink::{self, Resize};
use crate::signals::{self, StopHandle};

/// When and how often a failed group is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed before giving up; 0 = fail on the first failure.
    pub max_restarts: usize,
    /// Wait before the first restart; doubled per further consecutive failure.
    pub backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// An attempt that ran at least this long before failing resets the doubling
    /// (it made progress; its failure is a new incident, not a crash loop).
    pub stable_after: Duration,
    /// `--min-nproc`: before a restart of a multi-host mpi launch, drop the hosts that no
    /// longer answer and restart on fewer workers, never fewer than this (`None`: always the
    /// same group).
    pub min_nproc: Option<usize>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 0,
            backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
            stable_after: Duration::from_secs(600),
            min_nproc: None,
        }
    }
}

impl RestartPolicy {
    /// The wait after the `consecutive`-th failure in a row (1 for the first):
    /// `backoff · 2^(consecutive−1)`, capped at `max_backoff`.
    pub fn delay(&self, consecutive: u32) -> Duration {
        let doublings = consecutive.saturating_sub(1).min(30);
        self.backoff
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// What a supervised launch that ended well did.
#[derive(Debug, Clone)]
pub struct SupervisedReport {
    /// The successful (last) attempt.
    pub last: LaunchReport,
    /// The attempts that failed before it.
    pub failed_attempts: Vec<FailedAttempt>,
    /// Wall time from the first start to the last exit, back-offs included.
    pub elapsed: Duration,
}

/// A [`LocalLaunch`] restarted from its latest checkpoint when a worker fails.
#[derive(Debug, Clone)]
pub struct SupervisedLaunch {
    /// The group as first started; restarts add `--resume latest` to its args.
    pub launch: LocalLaunch,
    /// Restart budget and back-off.
    pub policy: RestartPolicy,
}

impl SupervisedLaunch {
    /// Supervises `launch` under `policy`.
    pub fn new(launch: LocalLaunch, policy: RestartPolicy) -> Self {
        Self { launch, policy }
    }

    /// Runs with output on this process's stdout/stderr; SIGINT/SIGTERM/SIGHUP
    /// to the launcher stop the workers and are never answered by a restart.
    pub fn run(&self) -> Result<SupervisedReport, LaunchError> {
        signals::install_signal_handlers();
        self.run_with(&Console::std(), &StopHandle::new())
    }

    /// Runs attempts until one succeeds, a failure is not a worker's (a spawn
    /// error, a stop request), or the restart budget is spent
    /// ([`LaunchError::GaveUp`]). With `max_restarts == 0` the first failure is
    /// returned as is. Each restart is announced on `console`'s stderr as
    /// `[launch] rank 1 killed by SIGKILL after 12.3s; restart 1/3 in 5s`.
    pub fn run_with(&self, console: &Console, stop: &StopHandle) -> Result<SupervisedReport, LaunchError> {
        let started = Instant::now();
        let mut failed_attempts: Vec<FailedAttempt> = Vec::new();
        let mut consecutive_failures = 0u32;
        // The group the next attempt runs: the first one, or fewer workers once hosts are gone.
        let mut group = self.launch.clone();
        for attempt in 1.. {
            let mut launch = group.clone();
            if attempt > 1 {
                launch.args = with_resume_latest(&launch.args);
            }
            let attempt_started = Instant::now();
            let err = match launch.run_with(console, stop) {
                Ok(last) => {
                    return Ok(SupervisedReport {
                        last,
                        failed_attempts,
                        elapsed: started.elapsed(),
                    })
                }
                Err(err) => err,
            };
            let ran_for = attempt_started.elapsed();
            let Some((failure, log)) = worker_failure(&err, &self.launch) else {
                return Err(err);
            };
            if self.policy.max_restarts == 0 {
                return Err(err);
            }
            let restarts_done = attempt - 1;
            if restarts_done >= self.policy.max_restarts {
                failed_attempts.push(FailedAttempt {
                    attempt,
                    failure,
                    ran_for,
                    log,
                });
                return Err(LaunchError::GaveUp {
                    restarts: restarts_done,
                    attempts: failed_attempts,
                });
            }
            let log = rotate_logs(&self.launch, attempt, &log)?;
            failed_attempts.push(FailedAttempt {
                attempt,
                failure: failure.clone(),
                ran_for,
                log,
            });
            consecutive_failures = if ran_for >= self.policy.stable_after {
                1
            } else {
                consecutive_failures + 1
            };
            let delay = self.policy.delay(consecutive_failures);
            let resized = match self.policy.min_nproc {
                Some(min_nproc) => resize_group(&mut group, self.launch.nproc, min_nproc, failed_attempts.clone())?,
                None => String::new(),
            };
            console.note(&format!(
                "{failure} after {:.1}s; restart {}/{} in {}{resized}",
                ran_for.as_secs_f64(),
                restarts_done + 1,
                self.policy.max_restarts,
                seconds(delay)
            ));
            wait_unless_stopped(delay, stop)?;
        }
        unreachable!("the attempt loop returns")
    }
}

/// Before a restart under `--min-nproc`: probes `group`'s hosts and, when some are gone,
/// makes it the largest group the others can run (see [`crate::shrink`]). Returns what to
/// add to the restart note (" with 2 worker(s) instead of 4 (--min-nproc 1): host b does not
/// answer"), or
/// [`LaunchError::TooFewWorkers`] (with the failed attempts) when fewer than `min_nproc`
/// are left.
fn resize_group(
    group: &mut LocalLaunch,
    first_nproc: usize,
    min_nproc: usize,
    attempts: Vec<FailedAttempt>,
) -> Result<String, LaunchError> {
    let hosts_word = |lost: &[String]| match lost.len() {
        1 => format!("host {} does not answer", lost[0]),
        _ => format!("hosts {} do not answer", lost.join(", ")),
    };
    match shrink::resize_for_restart(group, first_nproc, min_nproc) {
        Resize::Same => Ok(String::new()),
        Resize::Shrunk { nproc, remaining, lost } => {
            let note = format!(
                " with {nproc} worker(s) instead of {} (--min-nproc {min_nproc}): {}",
                group.nproc,
                hosts_word(&lost)
            );
            group.nproc = nproc;
            group.mpi_hosts.hosts = remaining;
            // The hostfile is written again from the hosts that answer.
            group.mpi_hosts.hostfile = None;
            Ok(note)
        }
        Resize::TooFew { slots, lost } => Err(LaunchError::TooFewWorkers {
            slots,
            min_nproc,
            lost: hosts_word(&lost),
            attempts,
        }),
    }
}

/// `args` plus `--resume latest`, unless they already choose a checkpoint.
pub(crate) fn with_resume_latest(args: &[OsString]) -> Vec<OsString> {
    let chooses = args.iter().any(|a| {
        let a = a.to_string_lossy();
        a == "--resume" || a.starts_with("--resume=")
    });
    let mut out = args.to_vec();
    if !chooses {
        out.extend(["--resume".into(), "latest".into()]);
    }
    out
}

/// For a failure a restart may cure (a worker's), a short description ("rank 1
/// killed by SIGKILL") and the log that explains it; `None` for the others.
fn worker_failure(err: &LaunchError, launch: &LocalLaunch) -> Option<(String, PathBuf)> {
    Some(match err {
        LaunchError::WorkerExited { rank, code, log } => {
            (format!("rank {rank} exited with status {code}"), log.clone())
        }
        LaunchError::WorkerSignaled { rank, signal, log } => {
            let how = match signal_name(*signal) {
                "unknown" => format!("signal {signal}"),
                name => name.to_string(),
            };
            (format!("rank {rank} killed by {how}"), log.clone())
        }
        LaunchError::WorkerHung {
            rank,
            silent_for,
            never_beat,
            log,
        } => {
            let what = if *never_beat {
                "sent no first heartbeat within"
            } else {
                "sent no heartbeat for"
            };
            (
                format!("rank {rank} {what} {:.1}s", silent_for.as_secs_f64()),
                log.clone(),
            )
        }
        LaunchError::MpirunFailed { status, .. } => (format!("mpirun failed with {status}"), launch.mpirun_log()),
        _ => return None,
    })
}

/// Renames this attempt's logs to `<stem>.attempt<N>.log` so the next attempt
/// starts fresh ones; returns where `failing_log` went.
fn rotate_logs(launch: &LocalLaunch, attempt: usize, failing_log: &Path) -> Result<PathBuf, LaunchError> {
    let mut moved_failing = failing_log.to_path_buf();
    let logs = (0..launch.nproc)
        .map(|r| launch.rank_log(r))
        .chain([launch.mpirun_log()]);
    for log in logs {
        let Some(stem) = log.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        let rotated = log.with_file_name(format!("{stem}.attempt{attempt}.log"));
        match std::fs::rename(&log, &rotated) {
            Ok(()) => {}
            // mpirun.log exists only for the mpi backend.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(LaunchError::Log { path: rotated, source }),
        }
        if log == failing_log {
            moved_failing = rotated;
        }
    }
    Ok(moved_failing)
}

/// Sleeps `delay`, returning early with [`LaunchError::Interrupted`] when the
/// launcher is asked to stop (a stop is never followed by a restart).
fn wait_unless_stopped(delay: Duration, stop: &StopHandle) -> Result<(), LaunchError> {
    let deadline = Instant::now() + delay;
    loop {
        if let Some(signal) = signals::received_signal() {
            return Err(LaunchError::Interrupted { signal });
        }
        if stop.is_stopped() {
            return Err(LaunchError::Interrupted { signal: libc::SIGTERM });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(POLL));
    }
}

/// "5s", "0.2s": seconds without a needless ".0".
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s:.1}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::Backend;
    use std::sync::{Arc, Mutex};

    fn captured() -> (Console, Arc<Mutex<Vec<u8>>>) {
        let stderr: Arc<Mutex<Vec<u8>>> = Arc::default();
        let console = Console {
            stdout: Arc::new(Mutex::new(std::io::sink())),
            stderr: stderr.clone(),
        };
        (console, stderr)
    }

    fn text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
        String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
    }

    fn fast(max_restarts: usize) -> RestartPolicy {
        RestartPolicy {
            max_restarts,
            backoff: Duration::from_millis(200),
            ..RestartPolicy::default()
        }
    }

    /// `sh -c script` as one solo worker; `sh` sees the appended resume flags
    /// as `$0 $1`.
    fn sh(script: &str, log_dir: &Path) -> LocalLaunch {
        let mut launch = LocalLaunch::new("sh", ["-c", script], 1, Backend::Solo, log_dir);
        launch.grace = Duration::from_secs(2);
        launch
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RestartPolicy::default();
        let secs: Vec<u64> = (1..=6).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 60, 60]);
        assert_eq!(p.delay(u32::MAX), p.max_backoff);
    }

    #[test]
    fn resume_latest_is_appended_once() {
        let args: Vec<OsString> = vec!["train".into(), "--config".into(), "t.toml".into()];
        assert_eq!(
            with_resume_latest(&args),
            ["train", "--config", "t.toml", "--resume", "latest"].map(OsString::from)
        );
        for chosen in [vec!["--resume".into(), "ckpt".into()], vec!["--resume=ckpt".into()]] {
            assert_eq!(with_resume_latest(&chosen), chosen);
        }
    }

    #[test]
    fn a_failed_first_attempt_is_restarted_with_resume_and_its_log_kept() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        let script = format!(
            "echo \"args: $0 $1\"; if [ -e {m} ]; then exit 0; fi; touch {m}; exit 3",
            m = marker.display()
        );
        let logs = dir.path().join("logs");
        let (console, stderr) = captured();
        let report = SupervisedLaunch::new(sh(&script, &logs), fast(2))
            .run_with(&console, &StopHandle::new())
            .unwrap_or_else(|e| panic!("{e}\n{}", text(&stderr)));
        assert_eq!(report.failed_attempts.len(), 1);
        assert_eq!(report.failed_attempts[0].failure, "rank 0 exited with status 3");
        assert_eq!(report.failed_attempts[0].log, logs.join("rank0.attempt1.log"));
        let first = std::fs::read_to_string(logs.join("rank0.attempt1.log")).unwrap();
        let second = std::fs::read_to_string(logs.join("rank0.log")).unwrap();
        assert!(!first.contains("--resume"), "first attempt: {first}");
        assert!(second.contains("args: --resume latest"), "second attempt: {second}");
        let note = text(&stderr);
        assert!(
            note.contains("[launch] rank 0 exited with status 3 after ") && note.contains("; restart 1/2 in 0.2s"),
            "{note}"
        );
    }

    #[test]
    fn an_always_failing_group_gives_up_naming_every_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let (console, stderr) = captured();
        let err = SupervisedLaunch::new(sh("exit 7", &logs), fast(2))
            .run_with(&console, &StopHandle::new())
            .unwrap_err();
        let LaunchError::GaveUp { restarts, attempts } = &err else {
            panic!("{err:?}");
        };
        assert_eq!((*restarts, attempts.len()), (2, 3));
        let message = err.to_string();
        for n in 1..=3 {
            assert!(
                message.contains(&format!("attempt {n}: rank 0 exited with status 7 after ")),
                "{message}"
            );
        }
        assert!(
            message.contains("rank0.attempt2.log") && message.ends_with("rank0.log)"),
            "{message}"
        );
        assert_eq!(text(&stderr).matches("; restart ").count(), 2, "{}", text(&stderr));
        // Back-off doubled: 200 ms, then 400 ms.
        assert!(text(&stderr).contains("restart 2/2 in 0.4s"), "{}", text(&stderr));
    }

    #[test]
    fn without_restarts_the_first_failure_is_returned_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let err = SupervisedLaunch::new(sh("exit 4", dir.path()), fast(0))
            .run_with(&captured().0, &StopHandle::new())
            .unwrap_err();
        assert!(
            matches!(err, LaunchError::WorkerExited { rank: 0, code: 4, .. }),
            "{err:?}"
        );
        assert!(dir.path().join("rank0.log").is_file() && !dir.path().join("rank0.attempt1.log").exists());
    }

    #[test]
    fn a_hung_worker_is_stopped_and_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        // First attempt: one heartbeat, then silence. Second: heartbeats, exit 0.
        let script = format!(
            "touch \"$FERROCLIP_HEARTBEAT_DIR/rank0\"; \
             if [ -e {m} ]; then exit 0; fi; touch {m}; sleep 30",
            m = marker.display()
        );
        let mut launch = sh(&script, &dir.path().join("logs"));
        launch.heartbeat.timeout = Some(Duration::from_millis(500));
        let started = Instant::now();
        let report = SupervisedLaunch::new(launch, fast(1))
            .run_with(&captured().0, &StopHandle::new())
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        let failure = &report.failed_attempts[0].failure;
        assert!(failure.starts_with("rank 0 sent no heartbeat for "), "{failure}");
    }

    #[test]
    fn a_stop_during_the_backoff_is_not_followed_by_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let script = format!("echo x >> {}; exit 1", count.display());
        let policy = RestartPolicy {
            backoff: Duration::from_secs(30),
            ..fast(3)
        };
        let stop = StopHandle::new();
        let stopper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                stop.stop();
            })
        };
        let started = Instant::now();
        let err = SupervisedLaunch::new(sh(&script, dir.path()), policy)
            .run_with(&captured().0, &stop)
            .unwrap_err();
        stopper.join().unwrap();
        assert!(matches!(err, LaunchError::Interrupted { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 1);
    }
}
