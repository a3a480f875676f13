//! `ferroclip sweep run --slurm`: the unfinished runs as SLURM array jobs, cooldown trunks
//! first as their own array job that the rest waits for.
use std::path::{Path, PathBuf};

use anyhow::Context;
use launcher::slurm::{self, ArraySpec, SbatchOptions, Slurm};
use launcher::sweep::grid::{RunRole, Sweep};

use super::args::{PlanArgs, RunArgs, SlurmArgs};
use super::jobs::{ferroclip_exe, run_job};
use super::plan::plan;

/// The script of the trunks' array job (the other runs' is [`slurm::ARRAY_SCRIPT_FILE`]).
const TRUNK_SCRIPT_FILE: &str = "sweep-trunks.sbatch";

/// SLURM settings for [`submit_sweep_array`].
pub(crate) struct ArrayOptions {
    pub options: launcher::slurm::SbatchOptions,
    pub signal_lead_s: u32,
    pub dry_run: bool,
}

/// `ferroclip submit --array-from SWEEP`: the same as `ferroclip sweep run SWEEP --slurm`.
pub(crate) fn submit_sweep_array(file: PathBuf, o: ArrayOptions) -> anyhow::Result<()> {
    submit_array_cmd(&RunArgs {
        plan: PlanArgs { file, workers: 1 },
        parallel: 1,
        max_retries: 1,
        slurm: SlurmArgs {
            slurm: true,
            partition: o.options.partition,
            time: o.options.time,
            account: o.options.account,
            cpus_per_task: o.options.cpus_per_task,
            max_parallel: None,
            signal_lead_s: o.signal_lead_s,
            dry_run: o.dry_run,
        },
    })
}

/// One array job to write and submit.
struct ArrayJob {
    spec: ArraySpec,
    script: PathBuf,
}

/// Writes `<out_dir>/<sweep>/sweep.sbatch` listing the unfinished runs and submits it;
/// unfinished trunks go into `sweep-trunks.sbatch`, submitted first, which the other
/// runs' job depends on (`afterok`).
pub fn submit_array_cmd(args: &RunArgs) -> anyhow::Result<()> {
    let (sweep, runs) = plan(&args.plan)?;
    let exe = ferroclip_exe()?;
    let (mut trunks, mut others) = (Vec::new(), Vec::new());
    for (index, run) in runs.iter().enumerate() {
        if !run_job(&sweep, run, &exe, args.plan.workers)?.is_done() {
            match run.spec.role {
                RunRole::Trunk => trunks.push(index),
                _ => others.push(index),
            }
        }
    }
    if trunks.is_empty() && others.is_empty() {
        println!(
            "sweep {}: all {} runs finished; nothing to submit",
            sweep.file.name,
            runs.len()
        );
        return Ok(());
    }
    let workdir = std::env::current_dir().context("cannot read the current directory")?;
    let root = sweep.root();
    let jobs: Vec<ArrayJob> = [(trunks, TRUNK_SCRIPT_FILE), (others, slurm::ARRAY_SCRIPT_FILE)]
        .into_iter()
        .filter(|(indices, _)| !indices.is_empty())
        .map(|(indices, file)| ArrayJob {
            spec: array_spec(args, &sweep, &workdir, indices, &exe),
            script: root.join(file),
        })
        .collect();
    for job in &jobs {
        job.spec.validate()?;
        // sbatch opens the output files before a task starts: the folder must exist.
        std::fs::create_dir_all(&job.spec.log_dir)
            .with_context(|| format!("cannot create {}", job.spec.log_dir.display()))?;
        std::fs::write(&job.script, job.spec.render())
            .with_context(|| format!("cannot write {}", job.script.display()))?;
    }
    let listed = |job: &ArrayJob| {
        format!(
            "{} of {} runs (array {}), script {}",
            job.spec.indices.len(),
            runs.len(),
            job.spec.array_value(),
            job.script.display()
        )
    };
    if args.slurm.dry_run {
        for (i, job) in jobs.iter().enumerate() {
            let after = match i {
                0 => String::new(),
                _ => " after every task of the first succeeded".into(),
            };
            println!("wrote {}{after}; not submitted (--dry-run)", listed(job));
        }
        return Ok(());
    }
    let cluster = Slurm::from_path();
    let mut after = None;
    for job in &jobs {
        let id = cluster.submit_after(&job.script, &workdir, after)?;
        let waits = after.map_or(String::new(), |trunks| format!(", after job {trunks} (the trunks)"));
        println!("submitted array job {id}: {}{waits}", listed(job));
        eprintln!(
            "[sweep] task output in {}",
            job.spec
                .output_pattern()
                .display()
                .to_string()
                .replace("%A", &id.to_string())
        );
        after = Some(id);
    }
    eprintln!(
        "[sweep] `ferroclip sweep collect {}` once they finish",
        args.plan.file.display()
    );
    Ok(())
}

fn array_spec(args: &RunArgs, sweep: &Sweep, workdir: &Path, indices: Vec<usize>, exe: &Path) -> ArraySpec {
    let mut run_one_args = Vec::new();
    if args.plan.workers != 1 {
        run_one_args.extend(["--workers".to_string(), args.plan.workers.to_string()]);
    }
    if args.max_retries != 1 {
        run_one_args.extend(["--max-retries".to_string(), args.max_retries.to_string()]);
    }
    let o = &args.slurm;
    ArraySpec {
        job_name: sweep.file.name.clone(),
        workdir: workdir.to_owned(),
        sweep_file: args.plan.file.clone(),
        log_dir: sweep.root().join("logs"),
        indices,
        max_parallel: o.max_parallel,
        options: SbatchOptions {
            cpus_per_task: o.cpus_per_task,
            partition: o.partition.clone(),
            time: o.time.clone(),
            account: o.account.clone(),
        },
        signal_lead_s: o.signal_lead_s,
        ferroclip: exe.to_owned(),
        run_one_args,
    }
}
