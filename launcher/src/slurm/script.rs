//! The sbatch script: one `ferroclip train` worker per task (one per GPU), a
//! rendezvous address from the allocation, and preemption handling so that a
//! stopped job checkpoints, is requeued and resumes with `--resume latest`.
use std::fmt::Write as _;
use std::path::PathBuf;

use super::SlurmError;

/// How the workers of a SLURM job form their world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlurmBackend {
    /// NCCL over CUDA tensors, bootstrapped by the TCP rendezvous at
    /// `MASTER_ADDR:MASTER_PORT` (srun starts the tasks without MPI).
    Nccl,
    /// OpenMPI over CPU tensors; srun starts the tasks with `--mpi=pmix`.
    Mpi,
}

impl SlurmBackend {
    /// `nccl` or `mpi`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nccl => "nccl",
            Self::Mpi => "mpi",
        }
    }
}

impl std::str::FromStr for SlurmBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nccl" => Ok(Self::Nccl),
            "mpi" => Ok(Self::Mpi),
            other => Err(format!("unknown backend `{other}` (expected nccl or mpi)")),
        }
    }
}

/// Seconds before the time limit at which the workers get SIGTERM, by default:
/// enough to finish a step and write a checkpoint of a large model.
pub const DEFAULT_SIGNAL_LEAD_S: u32 = 120;

/// The sbatch options a user may add to any ferroclip job; each one not given is left out
/// of the script (SLURM's defaults apply).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SbatchOptions {
    /// `--cpus-per-task` (a worker's, or an array task's, data-loading threads), if given.
    pub cpus_per_task: Option<u32>,
    /// `--partition`, if given.
    pub partition: Option<String>,
    /// `--time` (SLURM's formats: `MM`, `HH:MM:SS`, `D-HH:MM`, ...), if given.
    pub time: Option<String>,
    /// `--account`, if given.
    pub account: Option<String>,
}

impl SbatchOptions {
    /// Writes the `#SBATCH` line of each option given, one call of `line` per line.
    pub(super) fn write_lines(&self, line: &mut impl FnMut(&str)) {
        if let Some(c) = self.cpus_per_task {
            line(&format!("#SBATCH --cpus-per-task={c}"));
        }
        if let Some(p) = &self.partition {
            line(&format!("#SBATCH --partition={p}"));
        }
        if let Some(a) = &self.account {
            line(&format!("#SBATCH --account={a}"));
        }
        if let Some(t) = &self.time {
            line(&format!("#SBATCH --time={t}"));
        }
    }
}

/// Everything the batch script says. Paths in it are relative to `workdir`
/// (sbatch's `--chdir`), so the script reads like the commands a user types.
#[derive(Debug, Clone)]
pub struct SbatchSpec {
    /// `--job-name` (the run name).
    pub job_name: String,
    /// The folder the job runs in (absolute; the submit directory).
    pub workdir: PathBuf,
    /// The run folder (`runs/<name>`), relative to `workdir` or absolute.
    pub run_dir: PathBuf,
    /// `--nodes`.
    pub nodes: u32,
    /// `--gpus-per-node` (0 for CPU jobs: the line is left out).
    pub gpus_per_node: u32,
    /// `--ntasks-per-node`: workers per node (one per GPU on GPU jobs).
    pub ntasks_per_node: u32,
    /// `--cpus-per-task` (data-loading threads per worker), `--partition`, `--time` and
    /// `--account`, each if given.
    pub options: SbatchOptions,
    /// How the workers communicate.
    pub backend: SlurmBackend,
    /// Seconds before the time limit at which the workers get SIGTERM.
    pub signal_lead_s: u32,
    /// The `ferroclip` executable the compute nodes run (absolute on a shared filesystem).
    pub ferroclip: PathBuf,
    /// Arguments after `ferroclip train` (e.g. `--config F --set k=v`); the script
    /// appends `--resume latest`.
    pub train_args: Vec<String>,
}

/// The job secret's file name in the run folder (nccl backend).
pub const SECRET_FILE: &str = "job.secret";

impl SbatchSpec {
    /// The job secret's file in the run folder (nccl backend; `ferroclip submit` writes it).
    pub fn secret_file(&self) -> PathBuf {
        self.run_dir.join(SECRET_FILE)
    }

    /// Checks every option; the error names the first bad flag.
    pub fn validate(&self) -> Result<(), SlurmError> {
        let invalid = |flag, reason: &str| {
            Err(SlurmError::InvalidOption {
                flag,
                reason: reason.to_string(),
            })
        };
        if self.nodes == 0 {
            return invalid("--nodes", "must be at least 1");
        }
        if self.ntasks_per_node == 0 {
            return invalid(
                "--ntasks-per-node",
                "must be at least 1 (on CPU jobs, with --gpus-per-node 0, give the workers per node)",
            );
        }
        if self.backend == SlurmBackend::Nccl && self.gpus_per_node == 0 {
            return invalid(
                "--backend",
                "nccl needs GPUs: give --gpus-per-node, or use --backend mpi on CPUs",
            );
        }
        if self.options.cpus_per_task == Some(0) {
            return invalid("--cpus-per-task", "must be at least 1");
        }
        check_word("--job-name", &self.job_name)?;
        for (flag, value) in [
            ("--partition", &self.options.partition),
            ("--account", &self.options.account),
        ] {
            if let Some(value) = value {
                check_word(flag, value)?;
            }
        }
        if let Some(time) = &self.options.time {
            if !is_slurm_time(time) {
                return invalid(
                    "--time",
                    &format!("`{time}` is not a SLURM time (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)"),
                );
            }
        }
        for (flag, path) in [
            ("workdir", &self.workdir),
            ("run dir", &self.run_dir),
            ("--ferroclip", &self.ferroclip),
        ] {
            if path.to_str().is_none_or(|p| p.contains('\n')) {
                return invalid(flag, &format!("{} is not a single line of UTF-8", path.display()));
            }
        }
        Ok(())
    }

    /// The log file pattern (`%j` = job id), relative to `workdir`.
    pub fn output_pattern(&self) -> PathBuf {
        self.run_dir.join("logs").join("slurm-%j.out")
    }

    /// The batch script, commented line by line. Call [`Self::validate`] first.
    pub fn render(&self) -> String {
        let tasks = u64::from(self.nodes) * u64::from(self.ntasks_per_node);
        let mut s = String::new();
        let mut line = |text: &str| {
            s.push_str(text);
            s.push('\n');
        };
        line("#!/bin/bash");
        line(&format!(
            "# ferroclip training job `{}`, written by `ferroclip submit`. Submit it again with",
            self.job_name
        ));
        line(&format!("#   sbatch {}", self.run_dir.join("submit.sbatch").display()));
        line(&format!(
            "# {} node(s) x {} worker(s) = {tasks} `ferroclip train` processes{}.",
            self.nodes,
            self.ntasks_per_node,
            if self.gpus_per_node > 0 {
                ", one per GPU"
            } else {
                " on CPUs"
            }
        ));
        line(&format!("#SBATCH --job-name={}", self.job_name));
        line(&format!("#SBATCH --nodes={}", self.nodes));
        line(&format!("#SBATCH --ntasks-per-node={}", self.ntasks_per_node));
        if self.gpus_per_node > 0 {
            // Every task sees all GPUs of its node and picks cuda:<local rank>; NCCL
            // finds NVLink/P2P paths only when it can see the peers' devices.
            line(&format!("#SBATCH --gpus-per-node={}", self.gpus_per_node));
        }
        self.options.write_lines(&mut line);
        line("# Relative paths below (config, run folder, logs) are relative to this folder.");
        line(&format!("#SBATCH --chdir={}", self.workdir.display()));
        line("# All ranks' output, every attempt appended to the same file.");
        line(&format!("#SBATCH --output={}", self.output_pattern().display()));
        line("#SBATCH --open-mode=append");
        line("# Preemption or a node failure puts the job back in the queue instead of failing it.");
        line("#SBATCH --requeue");
        line(&format!(
            "# {}s before the time limit, SIGTERM to the workers (srun's tasks, not this shell): they",
            self.signal_lead_s
        ));
        line("# finish the step, save a checkpoint and exit 143; the end of this script then requeues.");
        line(&format!("#SBATCH --signal=TERM@{}", self.signal_lead_s));
        line("");
        line("set -uo pipefail");
        line(&format!(
            "FERROCLIP={}",
            shell_quote(&self.ferroclip.display().to_string())
        ));
        line("echo \"[submit] job $SLURM_JOB_ID attempt $((${SLURM_RESTART_COUNT:-0} + 1)) on $SLURM_JOB_NODELIST at $(date -Is)\"");
        line("");
        line("# Rank 0 runs on the first node of the allocation; the rendezvous listens there.");
        line("export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1)");
        line("# A port derived from the job id: two jobs sharing a node do not collide.");
        line("export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))");
        match self.backend {
            SlurmBackend::Nccl => {
                line("# The job's secret (written by `ferroclip submit`, readable by you only): ranks prove it");
                line("# to rank 0's rendezvous, which admits nobody else.");
                line(&format!(
                    "export {}={}",
                    protocol::env::JOB_SECRET_FILE,
                    shell_quote(&self.secret_file().display().to_string())
                ));
                line("# NCCL prints its version and any error; INFO shows the chosen network and rings.");
                line("export NCCL_DEBUG=${NCCL_DEBUG:-WARN}");
                line("# To pin NCCL to one network (e.g. InfiniBand), uncomment and name the interface:");
                line("# export NCCL_SOCKET_IFNAME=ib0");
            }
            SlurmBackend::Mpi => {
                line("# (MPI forms the world itself; MASTER_ADDR is for tools that want rank 0's host.)");
                line("# Between nodes joined by TCP only, Open MPI's UCX layer sends at the link's rate where");
                line("# its tcp btl reaches about half (`launch --mpi-transport ucx`); to use it, uncomment:");
                line("# export OMPI_MCA_pml=ucx OMPI_MCA_pml_ucx_tls=any OMPI_MCA_pml_ucx_devices=any");
            }
        }
        line("");
        line("# scancel, `scontrol requeue` and preemption also send SIGTERM to this shell: keep");
        line("# waiting while the workers save their checkpoint, and leave the requeue to SLURM.");
        line("signalled=0");
        line("trap 'signalled=1; echo \"[submit] SIGTERM: waiting for the workers to checkpoint\"' TERM");
        let mpi = match self.backend {
            SlurmBackend::Mpi => "pmix",
            SlurmBackend::Nccl => "none",
        };
        line("# One task per worker; a worker that fails stops the others (--kill-on-bad-exit).");
        line(match self.backend {
            SlurmBackend::Mpi => "# --mpi=pmix: Open MPI joins the PMIx server that SLURM runs for the step.",
            SlurmBackend::Nccl => {
                "# --mpi=none: NCCL bootstraps over the rendezvous at MASTER_ADDR:MASTER_PORT, not MPI."
            }
        });
        line("# `--resume latest` starts fresh on the first attempt and resumes on every later one.");
        let mut srun = format!("srun --mpi={mpi} --kill-on-bad-exit=1 \"$FERROCLIP\" train");
        for arg in &self.train_args {
            let _ = write!(srun, " {}", shell_quote(arg));
        }
        srun.push_str(" --resume latest &");
        line(&srun);
        line("srun_pid=$!");
        line("# A trapped signal interrupts `wait`; wait again until srun has really exited.");
        line("status=0");
        line("wait \"$srun_pid\" || status=$?");
        line("while kill -0 \"$srun_pid\" 2>/dev/null; do status=0; wait \"$srun_pid\" || status=$?; done");
        let weights = crate::RunDir::new(&self.run_dir).final_weights();
        let weights = shell_quote(&weights.display().to_string());
        line("# srun can exit 0 when the step failed to launch: success means the final weights exist.");
        line(&format!("if [ \"$status\" -eq 0 ] && [ ! -f {weights} ]; then"));
        line(&format!(
            "    echo \"[submit] srun exited 0 but {weights} is missing: the workers did not finish\""
        ));
        line("    status=1");
        line("fi");
        line("");
        line("# 143: the workers stopped on SIGTERM with a checkpoint (the time-limit warning).");
        line("# Requeue so the next attempt resumes from it; SLURM requeues on its own otherwise.");
        line("if [ \"$status\" -eq 143 ] && [ \"$signalled\" -eq 0 ]; then");
        line("    echo \"[submit] workers checkpointed before the time limit; requeueing job $SLURM_JOB_ID\"");
        line("    scontrol requeue \"$SLURM_JOB_ID\"");
        line("fi");
        line("echo \"[submit] srun exited with status $status at $(date -Is)\"");
        line("exit \"$status\"");
        s
    }
}

/// A value that goes verbatim after `#SBATCH --flag=`: no spaces, quotes or
/// newlines (sbatch would split or misread them), not empty.
fn check_word(flag: &'static str, value: &str) -> Result<(), SlurmError> {
    let bad = value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '\'' | '"' | '\\' | '#' | '$' | '`'));
    if bad {
        return Err(SlurmError::InvalidOption {
            flag,
            reason: format!("`{value}` must be one word without quotes, `#`, `$` or spaces"),
        });
    }
    Ok(())
}

/// SLURM's `--time` formats: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`, or
/// `UNLIMITED`/`INFINITE`.
fn is_slurm_time(text: &str) -> bool {
    if matches!(text, "UNLIMITED" | "INFINITE" | "unlimited" | "infinite") {
        return true;
    }
    let number = |s: &str| !s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit());
    let (days, clock) = match text.split_once('-') {
        Some((d, rest)) => (Some(d), rest),
        None => (None, text),
    };
    if days.is_some_and(|d| !number(d)) {
        return false;
    }
    let parts: Vec<&str> = clock.split(':').collect();
    parts.len() <= 3 && parts.iter().all(|p| number(p))
}

/// `text` as one bash word: unchanged when it has only safe characters, else
/// single-quoted (a `'` inside becomes `'\''`).
pub fn shell_quote(text: &str) -> String {
    let safe = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if safe {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu_spec() -> SbatchSpec {
        SbatchSpec {
            job_name: "vit-b-32".into(),
            workdir: "/home/me/proj".into(),
            run_dir: "runs/vit-b-32".into(),
            nodes: 4,
            gpus_per_node: 8,
            ntasks_per_node: 8,
            options: SbatchOptions {
                cpus_per_task: Some(12),
                partition: Some("gpu".into()),
                time: Some("2-00:00:00".into()),
                account: Some("proj42".into()),
            },
            backend: SlurmBackend::Nccl,
            signal_lead_s: DEFAULT_SIGNAL_LEAD_S,
            ferroclip: "/home/me/bin/ferroclip".into(),
            train_args: vec!["--config".into(), "configs/train/b32.toml".into()],
        }
    }

    fn lines(script: &str) -> Vec<&str> {
        script.lines().collect()
    }

    #[test]
    fn gpu_script_has_the_key_lines() {
        let spec = gpu_spec();
        spec.validate().unwrap();
        let script = spec.render();
        let l = lines(&script);
        for expected in [
            "#!/bin/bash",
            "#SBATCH --job-name=vit-b-32",
            "#SBATCH --nodes=4",
            "#SBATCH --ntasks-per-node=8",
            "#SBATCH --gpus-per-node=8",
            "#SBATCH --cpus-per-task=12",
            "#SBATCH --partition=gpu",
            "#SBATCH --account=proj42",
            "#SBATCH --time=2-00:00:00",
            "#SBATCH --chdir=/home/me/proj",
            "#SBATCH --output=runs/vit-b-32/logs/slurm-%j.out",
            "#SBATCH --open-mode=append",
            "#SBATCH --requeue",
            "#SBATCH --signal=TERM@120",
            "FERROCLIP=/home/me/bin/ferroclip",
            "export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1)",
            "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}",
            "srun --mpi=none --kill-on-bad-exit=1 \"$FERROCLIP\" train --config configs/train/b32.toml --resume latest &",
            "if [ \"$status\" -eq 0 ] && [ ! -f runs/vit-b-32/model.safetensors ]; then",
        ] {
            assert!(l.contains(&expected), "missing line {expected:?} in\n{script}");
        }
        // sbatch stops reading #SBATCH lines at the first command.
        let first_command = l.iter().position(|x| !x.starts_with('#') && !x.is_empty()).unwrap();
        let last_sbatch = l.iter().rposition(|x| x.starts_with("#SBATCH")).unwrap();
        assert!(last_sbatch < first_command, "{script}");
    }

    #[test]
    fn cpu_mpi_script_uses_pmix_and_no_gpus() {
        let spec = SbatchSpec {
            gpus_per_node: 0,
            ntasks_per_node: 2,
            nodes: 1,
            options: SbatchOptions::default(),
            backend: SlurmBackend::Mpi,
            train_args: vec!["--config".into(), "t.toml".into(), "--set".into(), "name=my run".into()],
            ..gpu_spec()
        };
        spec.validate().unwrap();
        let script = spec.render();
        assert!(!script.contains("--gpus-per-node"), "{script}");
        assert!(!script.contains("--partition"), "{script}");
        assert!(!script.contains("NCCL_DEBUG"), "{script}");
        assert!(
            script.contains("srun --mpi=pmix --kill-on-bad-exit=1 \"$FERROCLIP\" train --config t.toml --set 'name=my run' --resume latest &"),
            "{script}"
        );
    }

    #[test]
    fn bad_options_are_named() {
        let cases: Vec<(SbatchSpec, &str)> = vec![
            (SbatchSpec { nodes: 0, ..gpu_spec() }, "--nodes"),
            (
                SbatchSpec {
                    ntasks_per_node: 0,
                    ..gpu_spec()
                },
                "--ntasks-per-node",
            ),
            (
                SbatchSpec {
                    gpus_per_node: 0,
                    ..gpu_spec()
                },
                "--backend",
            ),
            (
                SbatchSpec {
                    options: SbatchOptions {
                        cpus_per_task: Some(0),
                        ..gpu_spec().options
                    },
                    ..gpu_spec()
                },
                "--cpus-per-task",
            ),
            (
                SbatchSpec {
                    options: SbatchOptions {
                        partition: Some("gpu\n#SBATCH --x".into()),
                        ..gpu_spec().options
                    },
                    ..gpu_spec()
                },
                "--partition",
            ),
            (
                SbatchSpec {
                    options: SbatchOptions {
                        account: Some("a b".into()),
                        ..gpu_spec().options
                    },
                    ..gpu_spec()
                },
                "--account",
            ),
            (
                SbatchSpec {
                    options: SbatchOptions {
                        time: Some("two hours".into()),
                        ..gpu_spec().options
                    },
                    ..gpu_spec()
                },
                "--time",
            ),
            (
                SbatchSpec {
                    options: SbatchOptions {
                        time: Some("1:2:3:4".into()),
                        ..gpu_spec().options
                    },
                    ..gpu_spec()
                },
                "--time",
            ),
            (
                SbatchSpec {
                    job_name: "".into(),
                    ..gpu_spec()
                },
                "--job-name",
            ),
        ];
        for (spec, flag) in cases {
            let err = spec.validate().expect_err(flag).to_string();
            assert!(err.starts_with(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn slurm_time_formats() {
        for ok in ["30", "30:00", "12:00:00", "2-00", "2-12:00", "2-12:00:00", "UNLIMITED"] {
            assert!(is_slurm_time(ok), "{ok}");
        }
        for bad in ["", "1h", "-1", "1-", ":", "1::2", "1-2:3:4:5", "2 days"] {
            assert!(!is_slurm_time(bad), "{bad}");
        }
    }

    #[test]
    fn shell_quote_round_trips_through_bash() {
        let words = ["plain", "with space", "it's", "$HOME", "a\"b", "x;rm -rf /", ""];
        let line: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("printf '%s\\n' {}", line.join(" ")))
            .output()
            .expect("bash");
        let printed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(printed.lines().collect::<Vec<_>>(), words);
    }
}
