//! `ferroclip status`: a submitted run's SLURM state, last metrics and newest checkpoint.
use std::path::PathBuf;

use launcher::slurm::{self, Slurm};

/// Show a run's SLURM job state (squeue, else sacct, else "unknown"), its last
/// metrics line and its newest checkpoint.
#[derive(clap::Args)]
pub struct Args {
    /// The run: a name under runs/ or a run folder.
    run: PathBuf,
}

/// The run folder `name` names (a name under runs/ or a folder); an error when there is none.
pub(super) fn existing_run(name: &std::path::Path) -> anyhow::Result<launcher::RunDir> {
    let run = slurm::find_run(name);
    if !run.root().is_dir() {
        anyhow::bail!(
            "no run folder {} (give a run name under runs/ or a run folder)",
            run.root().display()
        );
    }
    Ok(run)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let run = existing_run(&args.run)?;
    println!("run: {}", run.root().display());
    let jobs = slurm::recorded_jobs(&run)?;
    match jobs.last() {
        Some(&job) => println!("slurm job {job}: {}", Slurm::from_path().job_state(job)),
        None => println!(
            "slurm job: none recorded ({} missing: not submitted with `ferroclip submit`)",
            run.root().join(slurm::JOB_RECORD).display()
        ),
    }
    let progress = slurm::run_progress(&run)?;
    println!(
        "last metrics: {}",
        progress.last_metrics.as_deref().unwrap_or("none yet")
    );
    println!(
        "latest checkpoint: {}",
        progress
            .latest_checkpoint
            .as_ref()
            .map_or("none yet".to_string(), |p| p.display().to_string())
    );
    if progress.finished {
        println!("finished: {}", run.final_weights().display());
    }
    // The page is written on demand (`ferroclip report`): link it when it is there.
    if run.report().is_file() {
        let page = std::path::absolute(run.report()).unwrap_or_else(|_| run.report());
        println!("report: file://{}", page.display());
    } else {
        println!("report: none yet (ferroclip report {})", args.run.display());
    }
    Ok(())
}
