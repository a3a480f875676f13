//! Running SLURM's client programs (sbatch, squeue, sacct) and parsing what they print.
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::SlurmError;

/// The SLURM client programs, found on PATH (or in one folder, for tests and
/// clusters whose tools live outside PATH).
#[derive(Debug, Clone, Default)]
pub struct Slurm {
    bin_dir: Option<PathBuf>,
}

/// Where a job's state came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// `squeue` knows the job (pending, running, or recently finished).
    Queue {
        /// SLURM's state name, e.g. `RUNNING`, `PENDING`, `COMPLETED`.
        state: String,
        /// Why it is pending (`Priority`, `BeginTime`, ...), or `None`.
        reason: String,
        /// Time used so far, as squeue prints it.
        elapsed: String,
    },
    /// The job left the queue; the accounting database (`sacct`) knows it.
    Accounting {
        /// SLURM's state name, e.g. `COMPLETED`, `FAILED`, `TIMEOUT`.
        state: String,
        /// `exit:signal`, as sacct prints it.
        exit_code: String,
        /// Run time.
        elapsed: String,
    },
    /// Neither squeue nor sacct knows it (or they are missing); says why.
    Unknown(String),
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobState::Queue { state, reason, elapsed } => {
                write!(f, "{state} (squeue; elapsed {elapsed}")?;
                if !reason.is_empty() && reason != "None" {
                    write!(f, ", reason {reason}")?;
                }
                write!(f, ")")
            }
            JobState::Accounting {
                state,
                exit_code,
                elapsed,
            } => write!(f, "{state} (sacct; exit code {exit_code}, elapsed {elapsed})"),
            JobState::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

impl Slurm {
    /// The programs on PATH.
    pub fn from_path() -> Self {
        Self { bin_dir: None }
    }

    /// The programs in `dir` (`dir/sbatch`, ...).
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            bin_dir: Some(dir.into()),
        }
    }

    fn command(&self, program: &str) -> Command {
        match &self.bin_dir {
            Some(dir) => Command::new(dir.join(program)),
            None => Command::new(program),
        }
    }

    /// Runs `program args`; a missing program is [`SlurmError::NotInstalled`].
    fn run(&self, program: &'static str, args: &[OsString], cwd: Option<&Path>) -> Result<Output, SlurmError> {
        let mut cmd = self.command(program);
        cmd.args(args);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        cmd.output().map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => SlurmError::NotInstalled { program },
            _ => SlurmError::Spawn { program, source },
        })
    }

    /// Submits `script` with sbatch from `cwd` and returns the job id. A refusal
    /// is [`SlurmError::Rejected`] with sbatch's own message.
    pub fn submit(&self, script: &Path, cwd: &Path) -> Result<u64, SlurmError> {
        self.submit_after(script, cwd, None)
    }

    /// [`Self::submit`], held until every task of job `after` (if given) succeeded, and
    /// cancelled if one fails (`--dependency=afterok:<after> --kill-on-invalid-dep=yes`).
    pub fn submit_after(&self, script: &Path, cwd: &Path, after: Option<u64>) -> Result<u64, SlurmError> {
        // --parsable prints `<id>` or `<id>;<cluster>`, stable across versions.
        let mut args: Vec<OsString> = vec!["--parsable".into()];
        if let Some(job) = after {
            args.extend([
                format!("--dependency=afterok:{job}").into(),
                "--kill-on-invalid-dep=yes".into(),
            ]);
        }
        args.push(script.as_os_str().to_owned());
        let out = self.run("sbatch", &args, Some(cwd))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(SlurmError::Rejected {
                script: script.to_path_buf(),
                status: out.status.to_string(),
                stderr: if stderr.is_empty() {
                    stdout.trim().to_string()
                } else {
                    stderr
                },
            });
        }
        parse_sbatch_job_id(&stdout).ok_or_else(|| SlurmError::NoJobId {
            script: script.to_path_buf(),
            stdout: stdout.into_owned(),
        })
    }

    /// The job's state: squeue (which also lists jobs that ended within the
    /// cluster's MinJobAge), else sacct, else [`JobState::Unknown`] with the reason.
    pub fn job_state(&self, job: u64) -> JobState {
        let id = job.to_string();
        let squeue = self.ask_about_job(
            "squeue",
            &["-h", "-t", "all", "-j", &id, "-o", "%T|%r|%M"],
            parse_squeue_line,
            // squeue exits 1 with "Invalid job id" for a job that left its memory.
            |out| String::from_utf8_lossy(&out.stderr).trim().to_string(),
        );
        let squeue = match squeue {
            Ok(state) => return state,
            Err(why) => why,
        };
        let sacct = self.ask_about_job(
            "sacct",
            &["-n", "-X", "-P", "-j", &id, "-o", "State,ExitCode,Elapsed"],
            parse_sacct_line,
            // e.g. "Slurm accounting storage is disabled".
            |out| {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                text.trim().to_string()
            },
        );
        let sacct = match sacct {
            Ok(state) => return state,
            Err(why) => why,
        };
        JobState::Unknown(format!("job {job}: squeue: {squeue}; sacct: {sacct}"))
    }

    /// Runs `program args` and reads a job's state from its output with `parse`; else why
    /// not: `<program> does not list it`, `refusal` of the output of a failed run, or the
    /// error of a run that could not start.
    fn ask_about_job(
        &self,
        program: &'static str,
        args: &[&str],
        parse: fn(&str) -> Option<JobState>,
        refusal: fn(&Output) -> String,
    ) -> Result<JobState, String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        match self.run(program, &args, None) {
            Ok(out) if out.status.success() => {
                parse(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| format!("{program} does not list it"))
            }
            Ok(out) => Err(refusal(&out)),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The job id in sbatch's output: `--parsable`'s `123` / `123;cluster`, or the
/// plain `Submitted batch job 123`.
pub fn parse_sbatch_job_id(stdout: &str) -> Option<u64> {
    stdout.lines().rev().find_map(|line| {
        let line = line.trim();
        let word = match line.strip_prefix("Submitted batch job ") {
            Some(rest) => rest.split_whitespace().next()?,
            None => line.split(';').next()?,
        };
        word.parse().ok()
    })
}

/// The first `STATE|REASON|TIME` line of `squeue -h -o %T|%r|%M`.
fn parse_squeue_line(stdout: &str) -> Option<JobState> {
    let line = stdout.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut fields = line.split('|');
    let state = fields.next()?.to_string();
    Some(JobState::Queue {
        state,
        reason: fields.next().unwrap_or("").to_string(),
        elapsed: fields.next().unwrap_or("").to_string(),
    })
}

/// The first `STATE|EXIT|ELAPSED` line of `sacct -n -X -P -o State,ExitCode,Elapsed`.
fn parse_sacct_line(stdout: &str) -> Option<JobState> {
    let line = stdout.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut fields = line.split('|');
    Some(JobState::Accounting {
        state: fields.next()?.to_string(),
        exit_code: fields.next().unwrap_or("").to_string(),
        elapsed: fields.next().unwrap_or("").to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn job_ids_from_sbatch_output() {
        assert_eq!(parse_sbatch_job_id("42\n"), Some(42));
        assert_eq!(parse_sbatch_job_id("42;cluster-a\n"), Some(42));
        assert_eq!(parse_sbatch_job_id("Submitted batch job 7\n"), Some(7));
        assert_eq!(
            parse_sbatch_job_id("sbatch: warning: something\nSubmitted batch job 9 on cluster x\n"),
            Some(9)
        );
        assert_eq!(parse_sbatch_job_id(""), None);
        assert_eq!(parse_sbatch_job_id("error\n"), None);
    }

    #[test]
    fn squeue_and_sacct_lines() {
        assert_eq!(
            parse_squeue_line("PENDING|BeginTime|0:00\n"),
            Some(JobState::Queue {
                state: "PENDING".into(),
                reason: "BeginTime".into(),
                elapsed: "0:00".into()
            })
        );
        assert_eq!(parse_squeue_line("\n"), None);
        let done = parse_sacct_line("COMPLETED|0:0|00:01:02\n").unwrap();
        assert_eq!(done.to_string(), "COMPLETED (sacct; exit code 0:0, elapsed 00:01:02)");
    }

    /// A folder with fake SLURM programs, each a shell script.
    fn fake_tools(scripts: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in scripts {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    #[test]
    fn missing_sbatch_names_the_package() {
        let empty = tempfile::tempdir().unwrap();
        let err = Slurm::in_dir(empty.path())
            .submit(Path::new("job.sbatch"), empty.path())
            .unwrap_err();
        assert!(matches!(err, SlurmError::NotInstalled { program: "sbatch" }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("`sbatch` not found") && text.contains("slurm-client"),
            "{text}"
        );
    }

    #[test]
    fn rejected_job_shows_sbatch_stderr() {
        let tools = fake_tools(&[(
            "sbatch",
            "echo 'sbatch: error: invalid partition specified: nope' >&2; exit 1",
        )]);
        let err = Slurm::in_dir(tools.path())
            .submit(Path::new("runs/x/submit.sbatch"), tools.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("sbatch rejected runs/x/submit.sbatch"), "{err}");
        assert!(err.contains("invalid partition specified: nope"), "{err}");
    }

    #[test]
    fn accepted_job_returns_its_id_and_runs_in_cwd() {
        let tools = fake_tools(&[("sbatch", "[ \"$1\" = --parsable ] && [ -f \"$2\" ] && echo '314;main'")]);
        std::fs::write(tools.path().join("job.sbatch"), "#!/bin/bash\n").unwrap();
        let id = Slurm::in_dir(tools.path())
            .submit(Path::new("job.sbatch"), tools.path())
            .unwrap();
        assert_eq!(id, 314);
        let silent = fake_tools(&[("sbatch", "exit 0")]);
        let err = Slurm::in_dir(silent.path())
            .submit(Path::new("j"), silent.path())
            .unwrap_err();
        assert!(matches!(err, SlurmError::NoJobId { .. }), "{err}");
    }

    #[test]
    fn state_falls_back_from_squeue_to_sacct_to_unknown() {
        let queued = fake_tools(&[("squeue", "echo 'RUNNING|None|1:23'")]);
        assert_eq!(
            Slurm::in_dir(queued.path()).job_state(5).to_string(),
            "RUNNING (squeue; elapsed 1:23)"
        );
        let gone = fake_tools(&[
            (
                "squeue",
                "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1",
            ),
            ("sacct", "echo 'TIMEOUT|0:0|01:00:00'"),
        ]);
        assert_eq!(
            Slurm::in_dir(gone.path()).job_state(5).to_string(),
            "TIMEOUT (sacct; exit code 0:0, elapsed 01:00:00)"
        );
        let no_accounting = fake_tools(&[
            ("squeue", "exit 0"),
            ("sacct", "echo 'Slurm accounting storage is disabled' >&2; exit 1"),
        ]);
        let state = Slurm::in_dir(no_accounting.path()).job_state(5).to_string();
        assert!(
            state.starts_with("unknown (job 5: squeue: squeue does not list it"),
            "{state}"
        );
        assert!(state.contains("accounting storage is disabled"), "{state}");
        let nothing = tempfile::tempdir().unwrap();
        let state = Slurm::in_dir(nothing.path()).job_state(5).to_string();
        assert!(state.contains("`squeue` not found"), "{state}");
    }
}
