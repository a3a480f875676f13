//! The sbatch script of a sweep as a SLURM array job: one array task per
//! unfinished run, each running `ferroclip sweep run-one FILE --index <task id>`
//! (train with `--resume latest` when a checkpoint exists, then eval, with the
//! sweep's done markers), so a requeued or re-submitted task skips what finished.
use std::path::PathBuf;

use super::{shell_quote, SbatchOptions, SbatchSpec, SlurmBackend, SlurmError};

/// The name of the array job's script inside the sweep folder.
pub const ARRAY_SCRIPT_FILE: &str = "sweep.sbatch";

/// Everything the array job's script says. Paths are relative to `workdir`
/// (sbatch's `--chdir`) or absolute.
#[derive(Debug, Clone)]
pub struct ArraySpec {
    /// `--job-name` (the sweep name).
    pub job_name: String,
    /// The folder the tasks run in (absolute; the submit directory).
    pub workdir: PathBuf,
    /// The sweep file, as the tasks pass it to `ferroclip sweep run-one`.
    pub sweep_file: PathBuf,
    /// Where the tasks' output goes (`runs/<sweep>/logs`).
    pub log_dir: PathBuf,
    /// The run indices to submit (the sweep's unfinished runs), not empty.
    pub indices: Vec<usize>,
    /// At most this many tasks run at once (`%K`), if given.
    pub max_parallel: Option<u32>,
    /// `--cpus-per-task` and `--time` of each array task, `--partition` and `--account`,
    /// each if given.
    pub options: SbatchOptions,
    /// Seconds before the time limit at which the task gets SIGTERM (it then
    /// checkpoints and requeues itself).
    pub signal_lead_s: u32,
    /// The `ferroclip` executable the compute nodes run.
    pub ferroclip: PathBuf,
    /// Extra arguments for `sweep run-one` (e.g. `--workers 2`).
    pub run_one_args: Vec<String>,
}

impl ArraySpec {
    /// Checks every option; the error names the first bad flag.
    pub fn validate(&self) -> Result<(), SlurmError> {
        if self.indices.is_empty() {
            return Err(SlurmError::InvalidOption {
                flag: "--array",
                reason: "no runs to submit".into(),
            });
        }
        if self.max_parallel == Some(0) {
            return Err(SlurmError::InvalidOption {
                flag: "--max-parallel",
                reason: "must be at least 1".into(),
            });
        }
        // Each array task is a one-node, one-task CPU job: the submit script's
        // checks of names, time formats and paths apply as they are.
        SbatchSpec {
            job_name: self.job_name.clone(),
            workdir: self.workdir.clone(),
            run_dir: self.log_dir.clone(),
            nodes: 1,
            gpus_per_node: 0,
            ntasks_per_node: 1,
            options: self.options.clone(),
            backend: SlurmBackend::Mpi,
            signal_lead_s: self.signal_lead_s,
            ferroclip: self.ferroclip.clone(),
            train_args: Vec::new(),
        }
        .validate()?;
        if self.sweep_file.to_str().is_none_or(|p| p.contains('\n')) {
            return Err(SlurmError::InvalidOption {
                flag: "sweep file",
                reason: format!("{} is not a single line of UTF-8", self.sweep_file.display()),
            });
        }
        Ok(())
    }

    /// The `--array=` value: index ranges, then `%K` when limited.
    pub fn array_value(&self) -> String {
        let mut value = index_ranges(&self.indices);
        if let Some(k) = self.max_parallel {
            value.push_str(&format!("%{k}"));
        }
        value
    }

    /// The output file pattern (`%A` = array job id, `%a` = task index).
    pub fn output_pattern(&self) -> PathBuf {
        self.log_dir.join("slurm-%A_%a.out")
    }

    /// The batch script, commented. Call [`Self::validate`] first.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut line = |text: &str| {
            s.push_str(text);
            s.push('\n');
        };
        let file = shell_quote(&self.sweep_file.display().to_string());
        line("#!/bin/bash");
        line(&format!(
            "# ferroclip sweep `{}` as a SLURM array job, written by `ferroclip sweep run --slurm`.",
            self.job_name
        ));
        line("# Array task i runs run i of the sweep (the order of `ferroclip sweep plan`); only the");
        line("# runs unfinished when it was written are listed. `ferroclip sweep run --slurm` again");
        line("# writes a new script with what is left.");
        line(&format!("#SBATCH --job-name={}", self.job_name));
        line(&format!("#SBATCH --array={}", self.array_value()));
        line("#SBATCH --nodes=1");
        line("#SBATCH --ntasks=1");
        self.options.write_lines(&mut line);
        line(&format!("#SBATCH --chdir={}", self.workdir.display()));
        line("# One file per task; every attempt of a task appended to it.");
        line(&format!("#SBATCH --output={}", self.output_pattern().display()));
        line("#SBATCH --open-mode=append");
        line("# Preemption or a node failure puts the task back in the queue; it resumes from its checkpoint.");
        line("#SBATCH --requeue");
        line(&format!(
            "# {}s before the time limit, SIGTERM to the run (srun's task): it checkpoints and stops,",
            self.signal_lead_s
        ));
        line("# and the end of this script requeues the task.");
        line(&format!("#SBATCH --signal=TERM@{}", self.signal_lead_s));
        line("");
        line("set -uo pipefail");
        line(&format!(
            "FERROCLIP={}",
            shell_quote(&self.ferroclip.display().to_string())
        ));
        line("echo \"[sweep] task $SLURM_ARRAY_TASK_ID (job $SLURM_JOB_ID) attempt $((${SLURM_RESTART_COUNT:-0} + 1)) on $SLURM_JOB_NODELIST at $(date -Is)\"");
        line("# scancel and preemption also signal this shell: wait for the run to checkpoint.");
        line("signalled=0");
        line("trap 'signalled=1; echo \"[sweep] SIGTERM: waiting for the run to checkpoint\"' TERM");
        line("# run-one skips finished steps and adds `--resume latest` when a checkpoint exists.");
        let mut command =
            format!("srun --ntasks=1 --mpi=none \"$FERROCLIP\" sweep run-one {file} --index \"$SLURM_ARRAY_TASK_ID\"");
        for arg in &self.run_one_args {
            command.push(' ');
            command.push_str(&shell_quote(arg));
        }
        command.push_str(" &");
        line(&command);
        line("run_pid=$!");
        line("status=0");
        line("wait \"$run_pid\" || status=$?");
        line("while kill -0 \"$run_pid\" 2>/dev/null; do status=0; wait \"$run_pid\" || status=$?; done");
        line("# 143: the run stopped on the time-limit SIGTERM with a checkpoint; requeue this task.");
        line("if [ \"$status\" -eq 143 ] && [ \"$signalled\" -eq 0 ]; then");
        line("    echo \"[sweep] run checkpointed before the time limit; requeueing task $SLURM_JOB_ID\"");
        line("    scontrol requeue \"$SLURM_JOB_ID\"");
        line("fi");
        line("echo \"[sweep] task $SLURM_ARRAY_TASK_ID exited with status $status at $(date -Is)\"");
        line("exit \"$status\"");
        s
    }
}

/// Sorted, deduplicated indices as SLURM's array syntax: `0-2,5,7-8`.
pub fn index_ranges(indices: &[usize]) -> String {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ArraySpec {
        ArraySpec {
            job_name: "demo".into(),
            workdir: "/home/me/proj".into(),
            sweep_file: "configs/sweeps/demo.toml".into(),
            log_dir: "runs/demo/logs".into(),
            indices: vec![5, 0, 1, 2, 7, 8],
            max_parallel: Some(3),
            options: SbatchOptions {
                cpus_per_task: Some(4),
                partition: Some("cpu".into()),
                time: Some("02:00:00".into()),
                account: None,
            },
            signal_lead_s: 60,
            ferroclip: "/opt/ferroclip".into(),
            run_one_args: vec!["--workers".into(), "2".into()],
        }
    }

    #[test]
    fn indices_become_ranges() {
        assert_eq!(index_ranges(&[5, 0, 1, 2, 7, 8, 2]), "0-2,5,7-8");
        assert_eq!(index_ranges(&[3]), "3");
        assert_eq!(index_ranges(&[]), "");
    }

    #[test]
    fn script_lists_the_unfinished_runs_and_runs_one_per_task() {
        let s = spec();
        s.validate().unwrap();
        let text = s.render();
        for expected in [
            "#SBATCH --array=0-2,5,7-8%3\n",
            "#SBATCH --requeue\n",
            "#SBATCH --output=runs/demo/logs/slurm-%A_%a.out\n",
            "#SBATCH --cpus-per-task=4\n",
            "#SBATCH --partition=cpu\n",
            "#SBATCH --time=02:00:00\n",
            "#SBATCH --chdir=/home/me/proj\n",
            "\"$FERROCLIP\" sweep run-one configs/sweeps/demo.toml --index \"$SLURM_ARRAY_TASK_ID\" --workers 2 &\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("--account"), "{text}");
        let unlimited = ArraySpec {
            max_parallel: None,
            ..spec()
        };
        assert!(unlimited.render().contains("#SBATCH --array=0-2,5,7-8\n"));
    }

    #[test]
    fn bad_options_are_named() {
        let cases: [(ArraySpec, &str); 4] = [
            (
                ArraySpec {
                    indices: vec![],
                    ..spec()
                },
                "--array",
            ),
            (
                ArraySpec {
                    max_parallel: Some(0),
                    ..spec()
                },
                "--max-parallel",
            ),
            (
                ArraySpec {
                    options: SbatchOptions {
                        time: Some("2 hours".into()),
                        ..spec().options
                    },
                    ..spec()
                },
                "--time",
            ),
            (
                ArraySpec {
                    options: SbatchOptions {
                        partition: Some("a b".into()),
                        ..spec().options
                    },
                    ..spec()
                },
                "--partition",
            ),
        ];
        for (bad, flag) in cases {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.starts_with(flag), "{flag}: {err}");
        }
    }
}
