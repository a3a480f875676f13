//! `ferroclip sweep`: expand a config grid into runs, plan their compute, run them
//! (K at a time, skipping finished ones) and collect their results (docs/architecture.md §8).
//!
//! The launcher expands the grid and runs processes; this module supplies what
//! needs the trainer: each run's config is loaded with the same `--set` override
//! rules as `ferroclip train` (so a bad key is named the same way), and its MACs
//! per sample come from `trainer::macs`.
//!
//! - [`args`]: the subcommands' flags;
//! - [`plan`]: runs loaded and costed, cooldown trunks sized from their branches;
//! - [`jobs`]: each run's train and eval processes;
//! - [`slurm`]: the unfinished runs as SLURM array jobs.
use anyhow::bail;
use launcher::sweep::collect::{self, RunCost};
use launcher::sweep::grid::RunSpec;

mod args;
mod jobs;
mod plan;
mod slurm;

use args::{FitArgs, PlanArgs, RunArgs, RunOneArgs};
use jobs::{ferroclip_exe, run_job, run_jobs_or_exit};
use launcher::sweep::grid::Sweep;
use launcher::sweep::runner::Job;
use plan::{plan, plan_cmd};
pub(crate) use slurm::{submit_sweep_array, ArrayOptions};

/// Plan, run or collect a sweep.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: SweepCmd,
}

#[derive(clap::Subcommand)]
enum SweepCmd {
    /// Print the runs with MACs per sample, samples seen and compute (C = MACs × samples).
    Plan(PlanArgs),
    /// Train (and evaluate) the runs that have not finished, K at a time, or submit
    /// them as a SLURM array job (--slurm).
    Run(RunArgs),
    /// Train (and evaluate) run number --index of the sweep, unless it finished:
    /// what one task of the SLURM array job runs.
    RunOne(RunOneArgs),
    /// Write <out_dir>/<sweep>/results.csv: one row per finished run.
    Collect(PlanArgs),
    /// Fit E = β·C^α (compute frontier) and E = a·C^(−b) + c to results.csv, with
    /// bootstrap intervals and a held-out check; writes fit.json, scaling.png/.svg.
    Fit(FitArgs),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        SweepCmd::Plan(a) => plan_cmd(&a),
        SweepCmd::Run(a) if a.slurm.slurm => slurm::submit_array_cmd(&a),
        SweepCmd::Run(a) => run_cmd(&a),
        SweepCmd::RunOne(a) => run_one_cmd(&a),
        SweepCmd::Collect(a) => collect_cmd(&a),
        SweepCmd::Fit(a) => fit_cmd(&a),
    }
}

fn fit_cmd(args: &FitArgs) -> anyhow::Result<()> {
    use launcher::sweep::{fit, plot};
    let sweep = Sweep::load(&args.file)?;
    let root = sweep.root();
    let results = root.join("results.csv");
    let report = fit::fit_results_csv(&results, &args.metric, &args.x, &args.group, args.seed)?;
    report.write_json(&root.join("fit.json"))?;
    plot::plot_scaling(&report, &root.join("scaling.png"), &root.join("scaling.svg"))?;
    let interval =
        |ci: Option<[f64; 2]>| ci.map_or("no interval".into(), |[lo, hi]| format!("95% CI {lo:.4} to {hi:.4}"));
    let law = &report.power_law;
    println!(
        "E = β·C^α on the compute frontier ({} of {} points): α = {:.4} ({}), β = {:.4e}, R² (log10) = {:.3}",
        report.frontier.len(),
        report.points.len(),
        law.alpha.value,
        interval(law.alpha.ci95),
        law.beta.value,
        law.r_squared_log10
    );
    if let Some(sat) = &report.saturating {
        println!(
            "E = a·C^(−b) + c: a = {:.4e}, b = {:.4} ({}), c = {:.4} ({})",
            sat.a.value,
            sat.b.value,
            interval(sat.b.ci95),
            sat.c.value,
            interval(sat.c.ci95)
        );
    }
    if let Some(holdout) = &report.holdout {
        for p in &holdout.predictions {
            println!(
                "held out C = {:.3e}: E = {:.4}, power law predicts {:.4} ({:+.1}%)",
                p.point.compute,
                p.point.error,
                p.power_law,
                100.0 * p.power_law_relative_error
            );
        }
    }
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    println!(
        "wrote {}, {} and {}",
        root.join("fit.json").display(),
        root.join("scaling.png").display(),
        root.join("scaling.svg").display()
    );
    Ok(())
}

fn run_cmd(args: &RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.parallel >= 1, "--parallel must be at least 1");
    let (sweep, runs) = plan(&args.plan)?;
    let exe = ferroclip_exe()?;
    let jobs = runs
        .iter()
        .map(|run| run_job(&sweep, run, &exe, args.plan.workers))
        .collect::<anyhow::Result<Vec<Job>>>()?;
    let report = run_jobs_or_exit(jobs, args.parallel, args.max_retries)?;
    println!(
        "sweep {}: {} run(s) finished now, {} were already finished; `ferroclip sweep collect {}` writes results.csv",
        sweep.file.name,
        report.finished.len(),
        report.skipped.len(),
        args.plan.file.display()
    );
    Ok(())
}

fn run_one_cmd(args: &RunOneArgs) -> anyhow::Result<()> {
    let (sweep, runs) = plan(&args.plan)?;
    let Some(run) = runs.get(args.index) else {
        bail!(
            "--index {}: sweep {} has {} runs (0 to {})",
            args.index,
            args.plan.file.display(),
            runs.len(),
            runs.len() - 1
        );
    };
    let job = run_job(&sweep, run, &ferroclip_exe()?, args.plan.workers)?;
    let report = run_jobs_or_exit(vec![job], 1, args.max_retries)?;
    let what = if report.skipped.is_empty() {
        "finished now"
    } else {
        "was already finished"
    };
    println!(
        "sweep {}: run {} ({}) {what}",
        sweep.file.name, args.index, run.spec.name
    );
    Ok(())
}

fn collect_cmd(args: &PlanArgs) -> anyhow::Result<()> {
    let (sweep, runs) = plan(args)?;
    // Trunks are not results: their constant lr never cooled down.
    let results: Vec<_> = runs.iter().filter(|r| r.spec.is_result()).collect();
    let specs: Vec<RunSpec> = results.iter().map(|r| r.spec.clone()).collect();
    let costs: Vec<RunCost> = results.iter().map(|r| r.cost).collect();
    let report = collect::collect(&sweep, &specs, &costs)?;
    println!(
        "wrote {} ({} of {} runs)",
        report.path.display(),
        report.rows,
        runs.len()
    );
    if !report.unfinished.is_empty() {
        eprintln!("not finished (left out): {}", report.unfinished.join(", "));
    }
    Ok(())
}
