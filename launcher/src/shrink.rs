//! Restarting on fewer workers when a host is gone (`launch --min-nproc`): before a restart
//! of a multi-host mpi launch, every host is probed the way mpirun reaches it (the rsh agent,
//! ssh by default); unreachable hosts are dropped and the group restarts with the largest
//! divisor of the first worker count that the remaining slots hold. A divisor, because the
//! trainer's canonical data stream (whose partition count the first worker count divides)
//! resumes on any worker count that divides that count, and on no other.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::hosts::{read_hostfile, HostList, MpiHosts};
use crate::local::{Backend, LocalLaunch};
use crate::process::POLL;

/// How long a host may take to answer a probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether `host` runs `true` through `agent` (an rsh-style command: `agent host true`)
/// within `timeout`.
pub fn host_answers(agent: &[String], host: &str, timeout: Duration) -> bool {
    let Some((program, agent_args)) = agent.split_first() else {
        return false;
    };
    let child = Command::new(program)
        .args(agent_args)
        .args([host, "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if started.elapsed() < timeout => std::thread::sleep(POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// The agent mpirun uses to reach other hosts: `--rsh-agent`, else ssh that never prompts.
fn probe_agent(hosts: &MpiHosts) -> Vec<String> {
    match &hosts.rsh_agent {
        Some(agent) => agent.split_whitespace().map(str::to_string).collect(),
        None => ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    }
}

/// What a restart of a shrinkable launch runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resize {
    /// Every host answered: the same group.
    Same,
    /// Hosts are gone: `nproc` workers on the `remaining` hosts.
    Shrunk {
        nproc: usize,
        remaining: HostList,
        lost: Vec<String>,
    },
    /// Too few slots are left for `min_nproc` workers.
    TooFew { slots: usize, lost: Vec<String> },
}

/// The largest divisor of `first_nproc` that is at most `slots`.
pub fn largest_divisor_within(first_nproc: usize, slots: usize) -> usize {
    (1..=first_nproc.min(slots))
        .rev()
        .find(|d| first_nproc.is_multiple_of(*d))
        .unwrap_or(0)
}

/// Probes the hosts of `launch` (a multi-host mpi launch; any other has no host to lose) and
/// says what the restart runs on: never more than `launch.nproc` workers, never fewer than
/// `min_nproc`, always a divisor of `first_nproc`.
pub fn resize_for_restart(launch: &LocalLaunch, first_nproc: usize, min_nproc: usize) -> Resize {
    if launch.backend != Backend::Mpi || !launch.mpi_hosts.is_multi_host() {
        return Resize::Same;
    }
    let hosts = match (&launch.mpi_hosts.hostfile, launch.mpi_hosts.hosts.0.is_empty()) {
        (Some(file), _) => match read_hostfile(file) {
            Ok(hosts) => hosts,
            Err(_) => return Resize::Same,
        },
        (None, _) => launch.mpi_hosts.hosts.clone(),
    };
    let agent = probe_agent(&launch.mpi_hosts);
    let (answering, gone): (Vec<_>, Vec<_>) = hosts
        .0
        .into_iter()
        .partition(|h| host_answers(&agent, &h.host, PROBE_TIMEOUT));
    if gone.is_empty() {
        return Resize::Same;
    }
    let lost: Vec<String> = gone.into_iter().map(|h| h.host).collect();
    let remaining = HostList(answering);
    let slots = remaining.slots();
    let nproc = largest_divisor_within(first_nproc, slots.min(launch.nproc));
    if nproc < min_nproc.max(1) {
        return Resize::TooFew { slots, lost };
    }
    Resize::Shrunk { nproc, remaining, lost }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_count_is_the_largest_divisor_that_fits() {
        assert_eq!(largest_divisor_within(8, 7), 4);
        assert_eq!(largest_divisor_within(8, 8), 8);
        assert_eq!(largest_divisor_within(6, 5), 3);
        assert_eq!(largest_divisor_within(4, 1), 1);
        assert_eq!(largest_divisor_within(4, 0), 0);
    }

    /// An agent script that answers for `a` and fails for anything else, as a real process.
    #[test]
    fn hosts_that_do_not_answer_are_dropped_and_the_group_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent.sh");
        std::fs::write(&agent, "#!/bin/sh\n[ \"$1\" = a ] && exec sh -c \"$2\"\nexit 255\n").unwrap();
        let mut perms = std::fs::metadata(&agent).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&agent, perms).unwrap();
        let agent_cmd = vec![agent.display().to_string()];
        assert!(host_answers(&agent_cmd, "a", Duration::from_secs(5)));
        assert!(!host_answers(&agent_cmd, "b", Duration::from_secs(5)));

        let mut launch = LocalLaunch::new("true", Vec::<String>::new(), 4, Backend::Mpi, dir.path().to_path_buf());
        launch.mpi_hosts.hosts = "a:2,b:2".parse().unwrap();
        launch.mpi_hosts.rsh_agent = Some(agent.display().to_string());
        match resize_for_restart(&launch, 4, 1) {
            Resize::Shrunk { nproc, remaining, lost } => {
                assert_eq!(nproc, 2);
                assert_eq!(remaining.hostfile_text(), "a slots=2\n");
                assert_eq!(lost, ["b"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            resize_for_restart(&launch, 4, 3),
            Resize::TooFew {
                slots: 2,
                lost: vec!["b".into()]
            }
        );
        launch.mpi_hosts.hosts = "a:4".parse().unwrap();
        assert_eq!(resize_for_restart(&launch, 4, 1), Resize::Same);
        // One host, no host list: nothing to lose.
        launch.mpi_hosts.hosts = HostList::default();
        assert_eq!(resize_for_restart(&launch, 4, 1), Resize::Same);
    }
}
