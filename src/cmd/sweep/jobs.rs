//! The processes of a sweep's runs: each run's train (and eval) steps as the runner runs
//! them, and running them with the sweep's signal handling.
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use launcher::sweep::collect;
use launcher::sweep::grid::{RunRole, Sweep};
use launcher::sweep::runner::{self, Job, Need, RunOptions, Step};
use trainer::checkpoint::step_dir_name;

use super::plan::PlannedRun;

/// The eval step's arguments from the sweep's `[eval]` section.
fn eval_args(sweep: &Sweep, run_dir: &Path, out: &Path) -> anyhow::Result<Option<Vec<OsString>>> {
    let Some(spec) = &sweep.file.eval else {
        return Ok(None);
    };
    let mut args: Vec<OsString> = vec!["eval".into(), "--checkpoint".into(), run_dir.into()];
    match (&spec.zeroshot, &spec.classnames) {
        (Some(shards), Some(classes)) => {
            args.extend([
                "--zeroshot".into(),
                shards.into(),
                "--classnames".into(),
                classes.into(),
            ]);
        }
        (Some(_), None) => bail!("sweep {}: eval.zeroshot needs eval.classnames", sweep.path.display()),
        (None, Some(_)) => bail!("sweep {}: eval.classnames needs eval.zeroshot", sweep.path.display()),
        (None, None) => {}
    }
    if let Some(templates) = &spec.templates {
        args.extend(["--templates".into(), templates.into()]);
    }
    if let Some(shards) = &spec.retrieval {
        args.extend(["--retrieval".into(), shards.into()]);
    }
    if spec.zeroshot.is_none() && spec.retrieval.is_none() {
        bail!(
            "sweep {}: [eval] needs zeroshot (with classnames) and/or retrieval",
            sweep.path.display()
        );
    }
    if let Some(batch) = spec.batch_size {
        args.extend(["--batch-size".into(), batch.to_string().into()]);
    }
    args.extend(["--out".into(), out.into()]);
    Ok(Some(args))
}

/// Writes the run's full train config (model inline) as `<run>/train.toml`, the
/// file its train step reads. Returns the path and whether the file changed.
fn write_run_config(run: &PlannedRun) -> anyhow::Result<(PathBuf, bool)> {
    anyhow::ensure!(
        run.config.run_dir() == run.spec.dir,
        "run {}: the config's run folder {} is not the sweep's {}",
        run.spec.name,
        run.config.run_dir().display(),
        run.spec.dir.display()
    );
    std::fs::create_dir_all(&run.spec.dir).with_context(|| format!("creating {}", run.spec.dir.display()))?;
    let path = run.spec.dir.join("train.toml");
    let text = toml::to_string(&run.config.resolved()?).with_context(|| format!("run {}", run.spec.name))?;
    let changed = std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str());
    if changed {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok((path, changed))
}

/// The checkpoint of `trunk_dir` at `step`, which a cooldown branch starts from.
fn trunk_checkpoint(trunk_dir: &Path, step: u64) -> PathBuf {
    trunk_dir.join("checkpoints").join(step_dir_name(step))
}

/// The run's train (and eval) steps as the runner runs them.
pub fn run_job(sweep: &Sweep, run: &PlannedRun, exe: &Path, workers: usize) -> anyhow::Result<Job> {
    let (config_path, changed) = write_run_config(run)?;
    let dir = &run.spec.dir;
    let train_done = dir.join(".sweep").join("train.done");
    if changed && run.spec.role == RunRole::Trunk && train_done.exists() {
        // A longer length was added: the finished trunk continues from its last checkpoint
        // (a constant lr does not depend on the run's length).
        std::fs::remove_file(&train_done).with_context(|| format!("removing {}", train_done.display()))?;
    }
    let mut train: Vec<OsString> = vec![exe.into()];
    if workers == 1 {
        train.extend(["train".into(), "--config".into(), config_path.into()]);
    } else {
        train.extend([
            "launch".into(),
            "--nproc".into(),
            workers.to_string().into(),
            "--log-dir".into(),
            dir.join("logs").into(),
            "--".into(),
            "--config".into(),
            config_path.into(),
        ]);
    }
    let mut train_step = Step {
        label: "train".into(),
        argv: train,
        resume_args: vec!["--resume".into(), "latest".into()],
        fresh_args: Vec::new(),
        resume_when: Some(dir.join("checkpoints")),
        outputs: vec![collect::weights_path(&run.spec)],
    };
    let mut needs = Vec::new();
    if let RunRole::Branch { trunk } = &run.spec.role {
        // The first attempt starts from the trunk; later ones from the branch's own checkpoints.
        let from = trunk_checkpoint(&sweep.root().join(trunk), run.starts_at);
        train_step.fresh_args = vec!["--resume".into(), from.clone().into()];
        train_step.resume_when = Some(dir.join("checkpoints").join(trainer::checkpoint::LATEST_FILE));
        needs.push(Need {
            job: trunk.clone(),
            path: from,
        });
    }
    let mut steps = vec![train_step];
    let eval_out = collect::eval_path(&run.spec);
    match eval_args(sweep, dir, &eval_out)? {
        Some(eval) if run.spec.is_result() => steps.push(Step {
            label: "eval".into(),
            argv: std::iter::once(exe.into()).chain(eval).collect(),
            resume_args: Vec::new(),
            fresh_args: Vec::new(),
            resume_when: None,
            outputs: vec![eval_out],
        }),
        _ => {}
    }
    Ok(Job {
        name: run.spec.name.clone(),
        dir: dir.clone(),
        steps,
        needs,
    })
}

pub fn ferroclip_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the ferroclip executable to start runs")
}

/// Runs `jobs` with the runner; an interrupted sweep exits the way a process
/// killed by the signal would (143 for SIGTERM), which the array job's script
/// reads as "checkpointed, requeue me".
pub fn run_jobs_or_exit(jobs: Vec<Job>, parallel: usize, max_retries: u32) -> anyhow::Result<runner::RunReport> {
    launcher::install_signal_handlers();
    let options = RunOptions {
        parallel,
        max_retries,
        grace: Duration::from_secs(30),
    };
    match runner::run_jobs(jobs, &options, &launcher::StopHandle::new()) {
        Err(e @ launcher::sweep::SweepError::Interrupted { signal }) => {
            eprintln!("{e}");
            std::process::exit(128 + signal);
        }
        other => Ok(other?),
    }
}
