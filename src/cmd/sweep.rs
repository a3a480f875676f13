//! `ferroclip sweep`: expand a config grid into runs, plan their compute, run them
//! (K at a time, skipping finished ones) and collect their results (docs/architecture.md §8).
//!
//! The launcher expands the grid and runs processes; this module supplies what
//! needs the trainer: each run's config is loaded with the same `--set` override
//! rules as `ferroclip train` (so a bad key is named the same way), and its MACs
//! per sample come from `trainer::macs`.
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use launcher::sweep::collect::{self, RunCost};
use launcher::sweep::grid::{RunSpec, Sweep};
use launcher::sweep::runner::{self, Job, RunOptions, Step};
use trainer::model::macs::{forward_macs, MacCount};
use trainer::train::config::TrainConfig;

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

#[derive(clap::Args)]
struct FitArgs {
    /// Sweep file (TOML); reads <out_dir>/<sweep>/results.csv (run `sweep collect` first).
    file: PathBuf,
    /// The metric column; the error is E = 1 − metric.
    #[arg(long, default_value = "zeroshot_top1")]
    metric: String,
    /// The compute column (x axis).
    #[arg(long, default_value = "compute")]
    x: String,
    /// The column that colours points (usually the model axis).
    #[arg(long, default_value = "model")]
    group: String,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(clap::Args)]
struct PlanArgs {
    /// Sweep file (TOML), e.g. configs/sweeps/demo.toml.
    file: PathBuf,
    /// Worker processes per run: the global batch is batch_size × accum_steps × workers.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    plan: PlanArgs,
    /// Runs trained at the same time.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Extra attempts for a run whose train or eval step fails.
    #[arg(long, default_value_t = 1)]
    max_retries: u32,
    #[command(flatten)]
    slurm: SlurmArgs,
}

#[derive(clap::Args)]
struct SlurmArgs {
    /// Submit the unfinished runs as a SLURM array job (one task per run, script
    /// <out_dir>/<sweep>/sweep.sbatch) instead of running them here.
    #[arg(long)]
    slurm: bool,
    /// SLURM partition (with --slurm).
    #[arg(long, requires = "slurm")]
    partition: Option<String>,
    /// Time limit of each array task, in SLURM's format (with --slurm).
    #[arg(long, requires = "slurm")]
    time: Option<String>,
    /// Account to charge (with --slurm).
    #[arg(long, requires = "slurm")]
    account: Option<String>,
    /// CPU cores per array task (with --slurm).
    #[arg(long, requires = "slurm")]
    cpus_per_task: Option<u32>,
    /// At most this many array tasks at once (with --slurm).
    #[arg(long, requires = "slurm")]
    max_parallel: Option<u32>,
    /// Seconds before the time limit at which a task gets SIGTERM to checkpoint (with --slurm).
    #[arg(long, requires = "slurm", default_value_t = launcher::slurm::DEFAULT_SIGNAL_LEAD_S)]
    signal_lead_s: u32,
    /// Write the array job's script but do not submit it (with --slurm).
    #[arg(long, requires = "slurm")]
    dry_run: bool,
}

#[derive(clap::Args)]
struct RunOneArgs {
    #[command(flatten)]
    plan: PlanArgs,
    /// The run's position in the sweep (0-based, the order of `sweep plan`).
    #[arg(long)]
    index: usize,
    /// Extra attempts for a train or eval step that fails.
    #[arg(long, default_value_t = 1)]
    max_retries: u32,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        SweepCmd::Plan(a) => plan_cmd(&a),
        SweepCmd::Run(a) if a.slurm.slurm => submit_array_cmd(&a),
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

/// One run with its loaded config and cost.
struct PlannedRun {
    spec: RunSpec,
    config: TrainConfig,
    params: i64,
    macs: MacCount,
    cost: RunCost,
}

fn plan(args: &PlanArgs) -> anyhow::Result<(Sweep, Vec<PlannedRun>)> {
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    let sweep = Sweep::load(&args.file)?;
    let specs = sweep.expand(args.workers)?;
    if specs.is_empty() {
        bail!("sweep {}: every run is excluded", args.file.display());
    }
    let mut runs = Vec::with_capacity(specs.len());
    for spec in specs {
        let config = TrainConfig::load(&sweep.base_path, &spec.overrides)
            .with_context(|| format!("run {} (base {})", spec.name, sweep.base_path.display()))?;
        let model = config.model.resolve().with_context(|| format!("run {}", spec.name))?;
        let macs = forward_macs(&model);
        let global_batch = config
            .global_batch(args.workers)
            .with_context(|| format!("run {}", spec.name))?;
        let cost = RunCost {
            macs_per_sample: macs.total(),
            samples_seen: config.schedule.steps * global_batch,
        };
        runs.push(PlannedRun {
            params: model.num_params(),
            spec,
            config,
            macs,
            cost,
        });
    }
    Ok((sweep, runs))
}

/// `1.23e9`-style, short enough for a table.
fn sci(x: f64) -> String {
    format!("{x:.3e}")
}

fn plan_table(sweep: &Sweep, runs: &[PlannedRun]) -> String {
    let labels = sweep.labels();
    let mut header: Vec<String> = vec!["run".into()];
    header.extend(labels.iter().cloned());
    header.extend(
        [
            "params",
            "image MACs",
            "text MACs",
            "MACs/sample",
            "steps",
            "samples",
            "compute C",
        ]
        .map(String::from),
    );
    let mut rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let mut row = vec![r.spec.name.clone()];
            row.extend(r.spec.values.iter().map(|(_, v)| v.clone()));
            row.extend([
                sci(r.params as f64),
                sci(r.macs.image as f64),
                sci(r.macs.text as f64),
                sci(r.cost.macs_per_sample as f64),
                r.config.schedule.steps.to_string(),
                r.cost.samples_seen.to_string(),
                sci(r.cost.compute()),
            ]);
            row
        })
        .collect();
    let mut total = vec![format!("total ({} runs)", runs.len())];
    total.extend(vec![String::new(); labels.len() + 4]);
    total.push(runs.iter().map(|r| r.config.schedule.steps).sum::<u64>().to_string());
    total.push(runs.iter().map(|r| r.cost.samples_seen).sum::<u64>().to_string());
    total.push(sci(runs.iter().map(|r| r.cost.compute()).sum()));
    rows.push(total);
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().chain([&header]).map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in [&header].into_iter().chain(&rows).enumerate() {
        if i == rows.len() {
            let _ = writeln!(out, "{}", "-".repeat(widths.iter().sum::<usize>() + 2 * widths.len()));
        }
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                if c <= labels.len() {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

fn plan_cmd(args: &PlanArgs) -> anyhow::Result<()> {
    let (sweep, runs) = plan(args)?;
    println!(
        "sweep {} ({}): {} runs under {}, {} worker(s) per run",
        sweep.file.name,
        args.file.display(),
        runs.len(),
        sweep.root().display(),
        args.workers
    );
    print!("{}", plan_table(&sweep, &runs));
    println!(
        "MACs/sample: forward multiply-accumulates of one image and one full-context text (both towers, \
         attention included); compute C = MACs/sample × samples seen (training costs about 3× C)."
    );
    Ok(())
}

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
/// file its train step reads.
fn write_run_config(run: &PlannedRun) -> anyhow::Result<PathBuf> {
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
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(path)
}

/// The run's train (and eval) steps as the runner runs them.
fn run_job(sweep: &Sweep, run: &PlannedRun, exe: &Path, workers: usize) -> anyhow::Result<Job> {
    let config_path = write_run_config(run)?;
    let dir = &run.spec.dir;
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
    let mut steps = vec![Step {
        label: "train".into(),
        argv: train,
        resume_args: vec!["--resume".into(), "latest".into()],
        resume_when: Some(dir.join("checkpoints")),
        outputs: vec![collect::weights_path(&run.spec)],
    }];
    let eval_out = collect::eval_path(&run.spec);
    if let Some(eval) = eval_args(sweep, dir, &eval_out)? {
        steps.push(Step {
            label: "eval".into(),
            argv: std::iter::once(exe.into()).chain(eval).collect(),
            resume_args: Vec::new(),
            resume_when: None,
            outputs: vec![eval_out],
        });
    }
    Ok(Job {
        name: run.spec.name.clone(),
        dir: dir.clone(),
        steps,
    })
}

fn ferroclip_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the ferroclip executable to start runs")
}

/// Runs `jobs` with the runner; an interrupted sweep exits the way a process
/// killed by the signal would (143 for SIGTERM), which the array job's script
/// reads as "checkpointed, requeue me".
fn run_jobs_or_exit(jobs: Vec<Job>, parallel: usize, max_retries: u32) -> anyhow::Result<runner::RunReport> {
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

/// Writes `<out_dir>/<sweep>/sweep.sbatch` listing the unfinished runs and submits it.
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

fn submit_array_cmd(args: &RunArgs) -> anyhow::Result<()> {
    use launcher::slurm::{self, ArraySpec, SbatchOptions, Slurm};
    let (sweep, runs) = plan(&args.plan)?;
    let exe = ferroclip_exe()?;
    let mut unfinished = Vec::new();
    for (index, run) in runs.iter().enumerate() {
        if !run_job(&sweep, run, &exe, args.plan.workers)?.is_done() {
            unfinished.push(index);
        }
    }
    if unfinished.is_empty() {
        println!(
            "sweep {}: all {} runs finished; nothing to submit",
            sweep.file.name,
            runs.len()
        );
        return Ok(());
    }
    let workdir = std::env::current_dir().context("cannot read the current directory")?;
    let root = sweep.root();
    let mut run_one_args = Vec::new();
    if args.plan.workers != 1 {
        run_one_args.extend(["--workers".to_string(), args.plan.workers.to_string()]);
    }
    if args.max_retries != 1 {
        run_one_args.extend(["--max-retries".to_string(), args.max_retries.to_string()]);
    }
    let o = &args.slurm;
    let spec = ArraySpec {
        job_name: sweep.file.name.clone(),
        workdir: workdir.clone(),
        sweep_file: args.plan.file.clone(),
        log_dir: root.join("logs"),
        indices: unfinished.clone(),
        max_parallel: o.max_parallel,
        options: SbatchOptions {
            cpus_per_task: o.cpus_per_task,
            partition: o.partition.clone(),
            time: o.time.clone(),
            account: o.account.clone(),
        },
        signal_lead_s: o.signal_lead_s,
        ferroclip: exe,
        run_one_args,
    };
    spec.validate()?;
    // sbatch opens the output files before a task starts: the folder must exist.
    std::fs::create_dir_all(&spec.log_dir).with_context(|| format!("cannot create {}", spec.log_dir.display()))?;
    let script_path = root.join(slurm::ARRAY_SCRIPT_FILE);
    std::fs::write(&script_path, spec.render()).with_context(|| format!("cannot write {}", script_path.display()))?;
    let listed = format!(
        "{} of {} runs (array {})",
        unfinished.len(),
        runs.len(),
        spec.array_value()
    );
    if o.dry_run {
        println!(
            "wrote {} for {listed}; not submitted (--dry-run)",
            script_path.display()
        );
        return Ok(());
    }
    let job = Slurm::from_path().submit(&script_path, &workdir)?;
    println!("submitted array job {job}: {listed}, script {}", script_path.display());
    eprintln!(
        "[sweep] task output in {}; `ferroclip sweep collect {}` once they finish",
        spec.output_pattern()
            .display()
            .to_string()
            .replace("%A", &job.to_string()),
        args.plan.file.display()
    );
    Ok(())
}

fn collect_cmd(args: &PlanArgs) -> anyhow::Result<()> {
    let (sweep, runs) = plan(args)?;
    let specs: Vec<RunSpec> = runs.iter().map(|r| r.spec.clone()).collect();
    let costs: Vec<RunCost> = runs.iter().map(|r| r.cost).collect();
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
