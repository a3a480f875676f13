//! `ferroclip sweep plan`: every run's config loaded with the trainer's override rules,
//! its MACs per sample and compute; for cooldown branching, each trunk's length and
//! checkpoint steps from its branches, and the compute branching saves.
use std::fmt::Write as _;

use anyhow::{bail, Context};
use launcher::sweep::collect::RunCost;
use launcher::sweep::grid::{RunRole, RunSpec, Sweep};
use trainer::model::macs::{forward_macs, MacCount};
use trainer::train::config::TrainConfig;

use super::args::PlanArgs;

/// One run with its loaded config and cost.
pub struct PlannedRun {
    pub spec: RunSpec,
    pub config: TrainConfig,
    pub params: i64,
    pub macs: MacCount,
    /// The run's model as trained from scratch: MACs per sample × all its samples.
    pub cost: RunCost,
    /// The step training starts from: a branch's cooldown start (its trunk trained the
    /// steps before), else 0.
    pub starts_at: u64,
    /// Samples per optimizer step.
    pub global_batch: u64,
}

impl PlannedRun {
    /// The compute this sweep spends on the run: its steps from `starts_at` on.
    pub fn trained_compute(&self) -> f64 {
        let steps = self.config.schedule.steps - self.starts_at;
        self.cost.macs_per_sample as f64 * (steps * self.global_batch) as f64
    }
}

/// The sweep's runs in `sweep plan` order (trunks first), each loaded and costed.
pub fn plan(args: &PlanArgs) -> anyhow::Result<(Sweep, Vec<PlannedRun>)> {
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    let sweep = Sweep::load(&args.file)?;
    let specs = sweep.expand(args.workers)?;
    if specs.is_empty() {
        bail!("sweep {}: every run is excluded", args.file.display());
    }
    // A trunk's length comes from its branches' cooldown starts: the branches first.
    let mut planned: Vec<Option<PlannedRun>> = Vec::with_capacity(specs.len());
    for spec in &specs {
        planned.push(match spec.role {
            RunRole::Trunk => None,
            _ => Some(plan_run(&sweep, spec.clone(), args.workers)?),
        });
    }
    for (i, spec) in specs.iter().enumerate() {
        if spec.role == RunRole::Trunk {
            let trunk = trunk_spec(spec, planned.iter().flatten())?;
            planned[i] = Some(plan_run(&sweep, trunk, args.workers)?);
        }
    }
    Ok((sweep, planned.into_iter().flatten().collect()))
}

fn plan_run(sweep: &Sweep, spec: RunSpec, workers: usize) -> anyhow::Result<PlannedRun> {
    let config = TrainConfig::load(&sweep.base_path, &spec.overrides)
        .with_context(|| format!("run {} (base {})", spec.name, sweep.base_path.display()))?;
    let model = config.model.resolve().with_context(|| format!("run {}", spec.name))?;
    let macs = forward_macs(&model);
    let global_batch = config
        .global_batch(workers)
        .with_context(|| format!("run {}", spec.name))?;
    let starts_at = match spec.role {
        RunRole::Branch { .. } => branch_start(&spec, &config)?,
        _ => 0,
    };
    let cost = RunCost {
        macs_per_sample: macs.total(),
        samples_seen: config.schedule.steps * global_batch,
    };
    Ok(PlannedRun {
        params: model.num_params(),
        spec,
        config,
        macs,
        cost,
        starts_at,
        global_batch,
    })
}

/// The step a branch's cooldown starts: where constant and const-cooldown schedules part,
/// and the trunk checkpoint it starts from.
fn branch_start(spec: &RunSpec, config: &TrainConfig) -> anyhow::Result<u64> {
    let start = config.schedule.cooldown_start();
    if start == 0 {
        bail!(
            "run {}: its cooldown ({} of {} steps, schedule.cooldown_fraction = {}) is the whole run, so there is \
             nothing to branch from; use a smaller schedule.cooldown_fraction",
            spec.name,
            config.schedule.cooldown_steps(),
            config.schedule.steps,
            config.schedule.cooldown_fraction
        );
    }
    Ok(start)
}

/// The trunk with its length (the latest cooldown start of its branches) and a kept
/// checkpoint at every branch's start.
fn trunk_spec<'a>(trunk: &RunSpec, runs: impl Iterator<Item = &'a PlannedRun>) -> anyhow::Result<RunSpec> {
    let mut starts: Vec<u64> = runs
        .filter(|r| matches!(&r.spec.role, RunRole::Branch { trunk: t } if *t == trunk.name))
        .map(|r| r.starts_at)
        .collect();
    starts.sort_unstable();
    starts.dedup();
    let Some(&last) = starts.last() else {
        bail!("trunk {}: no run branches from it", trunk.name);
    };
    let mut spec = trunk.clone();
    let listed: Vec<String> = starts.iter().map(u64::to_string).collect();
    spec.overrides.push(format!("schedule.steps={last}"));
    spec.overrides
        .push(format!("checkpoint.at_steps=[{}]", listed.join(", ")));
    Ok(spec)
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
            "trained C",
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
                match r.spec.is_result() {
                    true => sci(r.cost.compute()),
                    false => "(trunk)".into(),
                },
                sci(r.trained_compute()),
            ]);
            row
        })
        .collect();
    let results: Vec<&PlannedRun> = runs.iter().filter(|r| r.spec.is_result()).collect();
    let mut total = vec![format!("total ({} runs)", runs.len())];
    total.extend(vec![String::new(); labels.len() + 4]);
    total.push(results.iter().map(|r| r.config.schedule.steps).sum::<u64>().to_string());
    total.push(results.iter().map(|r| r.cost.samples_seen).sum::<u64>().to_string());
    total.push(sci(results.iter().map(|r| r.cost.compute()).sum()));
    total.push(sci(runs.iter().map(PlannedRun::trained_compute).sum()));
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

/// What cooldown branching trains against what independent runs of the same lengths cost.
fn branching_summary(runs: &[PlannedRun]) -> Option<String> {
    let trunks: Vec<&PlannedRun> = runs.iter().filter(|r| r.spec.role == RunRole::Trunk).collect();
    if trunks.is_empty() {
        return None;
    }
    let results = runs.iter().filter(|r| r.spec.is_result());
    let independent: f64 = results.clone().map(|r| r.cost.compute()).sum();
    let trained: f64 = runs.iter().map(PlannedRun::trained_compute).sum();
    let trunk_steps: u64 = trunks.iter().map(|r| r.config.schedule.steps).sum();
    let cooldown_steps: u64 = results.clone().map(|r| r.config.schedule.steps - r.starts_at).sum();
    let independent_steps: u64 = results.map(|r| r.config.schedule.steps).sum();
    Some(format!(
        "cooldown branching: {} constant-lr trunk(s) of {trunk_steps} step(s) in all, then cooldowns of \
         {cooldown_steps} step(s) in all: trains {} of the {} that independent runs of the same lengths cost \
         ({} of {independent_steps} steps), saving {:.1}%.",
        trunks.len(),
        sci(trained),
        sci(independent),
        trunk_steps + cooldown_steps,
        100.0 * (1.0 - trained / independent)
    ))
}

pub fn plan_cmd(args: &PlanArgs) -> anyhow::Result<()> {
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
         attention included); compute C = MACs/sample × samples seen (training costs about 3× C); trained C: \
         what this sweep spends on the run (a cooldown branch: its steps after the trunk's)."
    );
    if let Some(summary) = branching_summary(&runs) {
        println!("{summary}");
    }
    Ok(())
}
