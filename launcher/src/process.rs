//! Supervised child processes: each started in its own process group (so a
//! signal reaches the worker's own children too), polled without blocking, and
//! stopped with SIGTERM, then SIGKILL after a grace period.
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::error::LaunchError;

/// How often the supervisor polls its children.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// Makes `cmd` start in a new process group and, on Linux, receive SIGTERM if
/// the launcher dies without stopping it (so a SIGKILLed launcher leaves no
/// orphaned workers behind).
pub(crate) fn isolate(cmd: &mut Command) {
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// One started child: a rank, or mpirun for the whole group.
pub(crate) struct Member {
    /// The rank (for mpirun: 0, unused in messages).
    pub rank: usize,
    child: Child,
    status: Option<ExitStatus>,
}

impl Member {
    pub(crate) fn new(rank: usize, child: Child) -> Self {
        Self {
            rank,
            child,
            status: None,
        }
    }
    pub(crate) fn pid(&self) -> i32 {
        // Linux pids fit in i32 (pid_max ≤ 2^22).
        self.child.id() as i32
    }
}

/// The children of one launch.
#[derive(Default)]
pub(crate) struct Group {
    pub members: Vec<Member>,
}

impl Group {
    /// Reaps the children that have exited; returns the first one (in rank order)
    /// that failed during this poll, with its status.
    pub(crate) fn poll(&mut self) -> Result<Option<(usize, ExitStatus)>, LaunchError> {
        let mut failed = None;
        for m in self.members.iter_mut().filter(|m| m.status.is_none()) {
            let status = m
                .child
                .try_wait()
                .map_err(|source| LaunchError::Wait { rank: m.rank, source })?;
            if let Some(status) = status {
                m.status = Some(status);
                if !status.success() && failed.is_none() {
                    failed = Some((m.rank, status));
                }
            }
        }
        Ok(failed)
    }

    /// The exit status of member `index`, once reaped.
    pub(crate) fn status_of(&self, index: usize) -> Option<ExitStatus> {
        self.members.get(index).and_then(|m| m.status)
    }

    /// The ranks of the children not yet reaped.
    pub(crate) fn running_ranks(&self) -> Vec<usize> {
        self.members
            .iter()
            .filter(|m| m.status.is_none())
            .map(|m| m.rank)
            .collect()
    }

    /// Whether every child has been reaped.
    pub(crate) fn all_exited(&self) -> bool {
        self.members.iter().all(|m| m.status.is_some())
    }

    /// Sends `signal` to the process groups of the children still running, and of
    /// those that failed (whose own children may have outlived them). Groups whose
    /// leader exited successfully are left alone.
    fn signal_groups(&self, signal: i32) {
        for m in &self.members {
            if m.status.is_none_or(|s| !s.success()) {
                // SAFETY: plain syscall; ESRCH (group already gone) is fine.
                unsafe {
                    libc::kill(-m.pid(), signal);
                }
            }
        }
    }

    /// Stops everything: SIGTERM to the groups (for mpirun, whose group is mpirun
    /// alone, that makes mpirun stop its ranks), up to `grace` for the children to exit, then SIGKILL to their groups and to
    /// each still-running child's own children (mpirun puts ranks in their own
    /// groups), then reaps them all.
    pub(crate) fn shutdown(&mut self, grace: Duration) -> Result<(), LaunchError> {
        self.signal_groups(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            self.poll()?;
            if self.all_exited() {
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
        for m in self.members.iter().filter(|m| m.status.is_none()) {
            for child in children_of(m.pid()) {
                // SAFETY: plain syscalls on processes we (transitively) started.
                unsafe {
                    libc::kill(-child, libc::SIGKILL);
                    libc::kill(child, libc::SIGKILL);
                }
            }
        }
        self.signal_groups(libc::SIGKILL);
        for m in self.members.iter_mut().filter(|m| m.status.is_none()) {
            let status = m
                .child
                .wait()
                .map_err(|source| LaunchError::Wait { rank: m.rank, source })?;
            m.status = Some(status);
        }
        Ok(())
    }
}

/// Direct children of `pid` (Linux `/proc/<pid>/task/<tid>/children`); empty
/// where that file is unavailable.
fn children_of(pid: i32) -> Vec<i32> {
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    let Ok(entries) = std::fs::read_dir(&tasks) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// The error for a worker that ended with `status` (which is not success).
pub(crate) fn failure(rank: usize, status: ExitStatus, log: &Path) -> LaunchError {
    match (status.code(), status.signal()) {
        (_, Some(signal)) => LaunchError::WorkerSignaled {
            rank,
            signal,
            log: log.to_path_buf(),
        },
        (Some(code), None) => LaunchError::WorkerExited {
            rank,
            code,
            log: log.to_path_buf(),
        },
        (None, None) => LaunchError::WorkerExited {
            rank,
            code: -1,
            log: log.to_path_buf(),
        },
    }
}
