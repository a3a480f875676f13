//! A real one-host SLURM cluster for the cluster tests (Debian's slurm-wlm + munge, started
//! by scripts/cluster/slurm-one-host.sh in a temporary folder).
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::KillTagged;

/// A running one-host cluster; on drop the test's job is cancelled, anything left with the
/// test's tag killed and the cluster stopped (its folder removed).
pub struct OneHostSlurm {
    /// The cluster's folder (config, spool, daemon logs).
    pub dir: tempfile::TempDir,
    /// Its slurm.conf, for `SLURM_CONF`.
    pub conf: PathBuf,
    /// The test's job, cancelled on drop.
    pub job: Option<u64>,
    /// Kills the test's processes on drop.
    pub tag: Option<KillTagged>,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster/slurm-one-host.sh")
}

impl OneHostSlurm {
    /// Starts a cluster with 2 CPUs; fails the test with the reason when not root or when
    /// the packages are missing.
    pub fn start() -> Self {
        let uid = Command::new("id").arg("-u").output().expect("run id -u");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "the SLURM test starts slurmd and munged, which needs root"
        );
        for tool in [
            "munged",
            "mungekey",
            "slurmctld",
            "slurmd",
            "sbatch",
            "srun",
            "scontrol",
            "squeue",
        ] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                found,
                "{tool} not found: run scripts/setup.sh (it installs slurm-wlm and munge)"
            );
        }
        let dir = tempfile::tempdir().expect("temp folder for the cluster");
        let out = Command::new(script())
            .arg("start")
            .arg(dir.path())
            .arg("2")
            .output()
            .expect("run scripts/cluster/slurm-one-host.sh");
        let conf = dir.path().join("slurm.conf");
        let cluster = Self {
            dir,
            conf,
            job: None,
            tag: None,
        };
        assert!(
            out.status.success(),
            "starting the cluster failed: {}",
            super::output_text(&out)
        );
        cluster
    }

    /// A command that talks to this cluster.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    /// `scontrol ARGS` on this cluster.
    pub fn scontrol(&self, args: &[&str]) -> Output {
        self.command("scontrol").args(args).output().expect("run scontrol")
    }

    /// `PENDING`, `RUNNING`, `COMPLETED`, ... or "" when squeue does not list the job.
    pub fn state(&self, job: u64) -> String {
        let out = self
            .command("squeue")
            .args(["-h", "-t", "all", "-j", &job.to_string(), "-o", "%T"])
            .output()
            .expect("run squeue");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The job's (array) tasks that squeue still lists (pending, running, completing), one
    /// `ID STATE` per line.
    pub fn active_tasks(&self, job: u64) -> String {
        let out = self
            .command("squeue")
            .args(["-h", "-r", "-j", &job.to_string(), "-o", "%i %T"])
            .output()
            .expect("run squeue");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The PMIx socket of the job's first srun step, present while that step's slurmstepd
    /// runs.
    pub fn step_socket(&self, job: u64) -> PathBuf {
        self.dir.path().join(format!("spool/stepd.slurm.pmix.{job}.0"))
    }

    /// The daemons' last log lines, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for name in ["slurmctld.log", "slurmd.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            all += &format!("--- {name} (last lines)\n");
            for l in tail.into_iter().rev() {
                all += l;
                all.push('\n');
            }
        }
        all
    }
}

impl Drop for OneHostSlurm {
    fn drop(&mut self) {
        if let Some(job) = self.job {
            let _ = self.command("scancel").arg(job.to_string()).status();
            // Give the workers KillWait to go; anything left is killed by its tag below.
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) && !self.active_tasks(job).is_empty() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        drop(self.tag.take());
        let _ = Command::new(script()).arg("stop").arg(self.dir.path()).status();
    }
}
