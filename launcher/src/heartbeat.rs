//! Heartbeats: how the launcher tells a hung worker from a slow one.
//!
//! Every worker gets `FERROCLIP_HEARTBEAT_DIR` and rewrites (or touches)
//! `$FERROCLIP_HEARTBEAT_DIR/rank<R>` at start-up and after every step. The
//! launcher reads only the files' modification times: a rank whose file is older
//! than [`HeartbeatPolicy::timeout`], or that has written none within
//! [`HeartbeatPolicy::startup_timeout`] of the group's start, is hung.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::error::LaunchError;

/// The environment variable naming the heartbeat folder for the workers.
pub use protocol::env::HEARTBEAT_DIR as HEARTBEAT_DIR_ENV;

/// The default time a rank gets to write its first heartbeat.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(300);

/// How often the heartbeat files are read (reading them every poll would be
/// wasteful; this keeps detection well within a second).
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// When a silent worker counts as hung.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatPolicy {
    /// Longest allowed gap between two heartbeats; `None` turns the checks off
    /// (the workers still get `FERROCLIP_HEARTBEAT_DIR`).
    pub timeout: Option<Duration>,
    /// Longest allowed time from the group's start to a rank's first heartbeat
    /// (only checked when `timeout` is set: start-up includes loading data and
    /// the checkpoint, which can take much longer than one step).
    pub startup_timeout: Duration,
}

impl Default for HeartbeatPolicy {
    fn default() -> Self {
        Self {
            timeout: None,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        }
    }
}

/// `rank<R>` in `dir`: the file rank `rank` touches.
pub fn heartbeat_file(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("rank{rank}"))
}

/// Empties (or creates) the heartbeat folder, so that a restarted group is
/// never judged by the previous attempt's files.
pub(crate) fn reset_dir(dir: &Path) -> Result<(), LaunchError> {
    let io = |source| LaunchError::HeartbeatDir {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    std::fs::create_dir_all(dir).map_err(io)
}

/// A rank found hung by [`Monitor::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hung {
    /// The silent rank.
    pub rank: usize,
    /// How long it has been silent: since its last heartbeat, or since the
    /// group started when it never wrote one.
    pub silent_for: Duration,
    /// Whether it never wrote a heartbeat.
    pub never_beat: bool,
}

/// Watches the heartbeat files of one attempt.
pub(crate) struct Monitor {
    dir: PathBuf,
    policy: HeartbeatPolicy,
    started: Instant,
    last_check: Option<Instant>,
}

impl Monitor {
    /// A monitor for a group that starts now.
    pub fn new(dir: PathBuf, policy: HeartbeatPolicy) -> Self {
        Self {
            dir,
            policy,
            started: Instant::now(),
            last_check: None,
        }
    }

    /// The first rank among `running` that is hung, if any. Cheap to call every
    /// poll: the files are read at most every [`CHECK_EVERY`].
    pub fn check(&mut self, running: impl IntoIterator<Item = usize>) -> Option<Hung> {
        let timeout = self.policy.timeout?;
        let now = Instant::now();
        if self.last_check.is_some_and(|t| now.duration_since(t) < CHECK_EVERY) {
            return None;
        }
        self.last_check = Some(now);
        let since_start = now.duration_since(self.started);
        running.into_iter().find_map(|rank| {
            match std::fs::metadata(heartbeat_file(&self.dir, rank)).and_then(|m| m.modified()) {
                Ok(modified) => {
                    // A file stamped in the future (clock step) counts as fresh.
                    let age = SystemTime::now().duration_since(modified).unwrap_or_default();
                    (age > timeout).then_some(Hung {
                        rank,
                        silent_for: age,
                        never_beat: false,
                    })
                }
                // No file yet (or unreadable, which a worker cannot fix by
                // waiting either): judged by the start-up allowance.
                Err(_) => (since_start > self.policy.startup_timeout).then_some(Hung {
                    rank,
                    silent_for: since_start,
                    never_beat: true,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(timeout_ms: u64, startup_ms: u64) -> HeartbeatPolicy {
        HeartbeatPolicy {
            timeout: Some(Duration::from_millis(timeout_ms)),
            startup_timeout: Duration::from_millis(startup_ms),
        }
    }

    #[test]
    fn a_stale_file_is_hung_and_a_fresh_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(heartbeat_file(dir.path(), 0), b"").unwrap();
        let stale = std::fs::File::create(heartbeat_file(dir.path(), 1)).unwrap();
        stale.set_modified(SystemTime::now() - Duration::from_secs(10)).unwrap();
        let mut monitor = Monitor::new(dir.path().to_path_buf(), policy(5_000, 60_000));
        let hung = monitor.check([0, 1]).expect("rank 1 is stale");
        assert_eq!((hung.rank, hung.never_beat), (1, false));
        assert!(hung.silent_for >= Duration::from_secs(10), "{hung:?}");
        // A rank that is not running any more is not judged.
        let mut monitor = Monitor::new(dir.path().to_path_buf(), policy(5_000, 60_000));
        assert_eq!(monitor.check([0]), None);
    }

    #[test]
    fn a_missing_first_heartbeat_is_allowed_the_startup_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut monitor = Monitor::new(dir.path().to_path_buf(), policy(50, 600));
        assert_eq!(monitor.check([0]), None, "within the start-up allowance");
        std::thread::sleep(Duration::from_millis(700));
        let hung = monitor.check([0]).expect("start-up allowance passed");
        assert!(hung.never_beat && hung.rank == 0, "{hung:?}");
    }

    #[test]
    fn checks_are_off_without_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let off = HeartbeatPolicy {
            timeout: None,
            startup_timeout: Duration::ZERO,
        };
        let mut monitor = Monitor::new(dir.path().to_path_buf(), off);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(monitor.check([0, 1]), None);
    }

    #[test]
    fn reset_dir_removes_old_heartbeats() {
        let dir = tempfile::tempdir().unwrap();
        let hb = dir.path().join("heartbeat");
        reset_dir(&hb).unwrap();
        std::fs::write(heartbeat_file(&hb, 0), b"").unwrap();
        reset_dir(&hb).unwrap();
        assert!(hb.is_dir());
        assert!(!heartbeat_file(&hb, 0).exists());
    }
}
