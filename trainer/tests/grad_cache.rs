//! Gradient-cached accumulation is exact (issue 15): K micro-batches × W workers × B rows,
//! through the train loop's own step (`TrainStep`, `data.accum_steps = K`), reach the same
//! parameters after 5 AdamW steps as one process trained on the whole K·W·B batch with the
//! plain single-process loss; untiled and ring-tiled (`loss_tile`), CLIP and SigLIP. The
//! negative control: summing the gradients of K independent micro-batch losses (each over
//! W·B rows only, what `accum_steps` meant before) does not.
//!
//! The workers are threads of one process joined by `LocalGroup`; the tests through real
//! MPI processes and the CLI are in tests/cli_grad_cache.rs at the workspace root.

mod step_data;

use std::collections::BTreeMap;

use step_data::{max_diff, new_model, rank_slices, snapshot, Data};
use tch::Device;
use trainer::data::BatchSource;
use trainer::dist::local::{LocalGroup, LocalMember};
use trainer::dist::Collective;
use trainer::loss::LossKind;
use trainer::optim::GradSync;
use trainer::optim::{AdamW, OptimConfig};
use trainer::train::config::TrainConfig;
use trainer::train::ddp::broadcast_parameters;
use trainer::train::step::TrainStep;
use trainer::{clip_loss, loss::siglip_loss, ModelConfig};

const WORLD: usize = 2;
const MICRO: i64 = 3; // B: rows per micro-batch and worker
const ACCUM: usize = 2; // K
const GLOBAL: i64 = MICRO * ACCUM as i64 * WORLD as i64;
const STEPS: usize = 5;
const LR: f64 = 5e-4;
const SEED: i64 = 31_337;
const TOLERANCE: f64 = 1e-5;

fn model_config(loss: LossKind) -> ModelConfig {
    let mut cfg = ModelConfig::preset("nano").expect("nano preset");
    if loss == LossKind::Siglip {
        cfg.init_logit_bias = Some(-10.0);
    }
    cfg
}

fn train_config(loss: LossKind, loss_tile: usize, accum: usize, micro_rows: i64) -> TrainConfig {
    let loss_name = if loss == LossKind::Siglip { "siglip" } else { "clip" };
    let text = format!(
        "name = \"t\"\nmodel = \"nano\"\nloss = \"{loss_name}\"\nloss_tile = {loss_tile}\n\
         [data]\ntrain = \"unused\"\nbatch_size = {micro_rows}\naccum_steps = {accum}\n[optim]\nlr = {LR}\n"
    );
    toml::from_str(&text).expect("train config")
}

fn optim() -> OptimConfig {
    OptimConfig {
        lr: LR,
        grad_clip_norm: 1.0, // not the default: the clip must see the same (global) norm
        ..OptimConfig::default()
    }
}

/// The reference: one process, the whole K·W·B batch, the plain single-process loss.
fn train_single(loss: LossKind, data: &Data) -> BTreeMap<String, Vec<f32>> {
    let cfg = model_config(loss);
    let (vs, model) = new_model(&cfg, SEED);
    let mut opt = AdamW::new(vs.variables(), &optim());
    for step in 0..STEPS {
        let batch = data.batch(step, 0, GLOBAL);
        let (img, txt, scale) = model.forward(&batch.images(), &batch.tokens, true);
        let value = match (loss, model.logit_bias()) {
            (LossKind::Siglip, Some(bias)) => siglip_loss(&img, &txt, &scale, bias),
            _ => clip_loss(&img, &txt, &scale),
        };
        let mut grads = opt.backward(&value);
        let norm = grads.norm();
        opt.step(&mut grads, norm, LR).expect("AdamW step");
        model.clamp_logit_scale();
    }
    snapshot(&vs)
}

/// How the workers accumulate their K micro-batches.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Accumulation {
    /// The train step: gradient-cached, one loss over K·W·B rows.
    Cached { loss_tile: usize },
    /// The negative control: K independent losses over W·B rows each, gradients averaged.
    Independent,
}

fn train_rank(
    loss: LossKind,
    accumulation: Accumulation,
    data: &Data,
    coll: &LocalMember,
) -> BTreeMap<String, Vec<f32>> {
    let cfg = model_config(loss);
    let (vs, model) = new_model(&cfg, SEED + coll.rank() as i64);
    broadcast_parameters(&vs, coll).expect("broadcast");
    let mut batches = rank_slices(data, coll.rank(), MICRO, ACCUM);
    let optimizer = AdamW::new(vs.variables(), &optim());
    match accumulation {
        Accumulation::Cached { loss_tile } => {
            let train_cfg = train_config(loss, loss_tile, ACCUM, MICRO);
            let mut step = TrainStep::new(&model, optimizer.into(), train_cfg.step_settings(), coll, Device::Cpu);
            for _ in 0..STEPS {
                let outcome = step.run(&mut batches, LR).expect("step");
                assert!(outcome.stepped, "rank {} skipped a step", coll.rank());
            }
        }
        Accumulation::Independent => {
            let mut opt = optimizer;
            for _ in 0..STEPS {
                let mut sum = None::<trainer::optim::Gradients>;
                for _ in 0..ACCUM {
                    let batch = batches.next_batch().expect("batch");
                    let (img, txt, scale) = model.forward(&batch.images(), &batch.tokens, true);
                    let rank_loss = loss
                        .global_loss(&img, &txt, &scale, model.logit_bias(), coll)
                        .expect("micro-batch loss");
                    let micro = opt.backward(&rank_loss.surrogate);
                    match sum.as_mut() {
                        Some(s) => s.accumulate(&micro),
                        None => sum = Some(micro),
                    }
                }
                let mut grads = sum.expect("gradients");
                GradSync::default()
                    .all_reduce(&mut grads, 1.0 / ACCUM as f64, coll)
                    .expect("sync");
                let norm = grads.norm();
                opt.step(&mut grads, norm, LR).expect("AdamW step");
                model.clamp_logit_scale();
            }
        }
    }
    snapshot(&vs)
}

/// Max |workers − one process| over the parameters after `STEPS` steps.
fn run(loss: LossKind, accumulation: Accumulation) -> (f64, String) {
    tch::set_num_threads(1);
    let data = Data::new(&model_config(loss), STEPS, GLOBAL, SEED);
    let single = train_single(loss, &data);
    let ranks = LocalGroup::run(WORLD, |coll| train_rank(loss, accumulation, &data, coll));
    assert_eq!(
        max_diff(&ranks[0], &ranks[1]).0,
        0.0,
        "{loss:?}: replicas must stay equal"
    );
    let (start_vs, _) = new_model(&model_config(loss), SEED);
    let moved = max_diff(&snapshot(&start_vs), &single).0;
    assert!(
        moved > 1e-3,
        "{loss:?}: training must move the parameters (moved {moved})"
    );
    max_diff(&single, &ranks[0])
}

#[test]
fn cached_micro_batches_on_two_workers_equal_one_batch_in_one_process() {
    for loss in [LossKind::Clip, LossKind::Siglip] {
        // K·B = 6 rows per rank: a tile of 4 does not divide them, 3 does.
        for loss_tile in [0, 4, 3] {
            let (diff, name) = run(loss, Accumulation::Cached { loss_tile });
            println!("{loss:?}, loss_tile {loss_tile}: max |K×W×B − K·W·B| = {diff:.3e} ({name})");
            assert!(
                diff <= TOLERANCE,
                "{loss:?}, loss_tile {loss_tile}: parameters differ by {diff} in {name}"
            );
        }
    }
}

#[test]
fn independent_micro_batch_losses_are_not_one_big_batch() {
    for loss in [LossKind::Clip, LossKind::Siglip] {
        let (diff, name) = run(loss, Accumulation::Independent);
        println!("{loss:?}, independent micro-batch losses: max diff = {diff:.3e} ({name})");
        assert!(
            diff > 1e-4,
            "{loss:?}: independent accumulation should differ from one big batch, diff only {diff}"
        );
    }
}

#[test]
fn cached_micro_batches_under_bf16_autocast_match_one_bf16_batch() {
    // bf16 autocast in both passes (features cast back to fp32): the cached step's loss and
    // update match one plain bf16 step over the same rows, to bf16's precision.
    tch::set_num_threads(1);
    let cfg = model_config(LossKind::Clip);
    let data = Data::new(&cfg, STEPS, GLOBAL, SEED);
    let run_one = |accum: usize| {
        let (vs, model) = new_model(&cfg, SEED);
        let rows = GLOBAL / accum as i64;
        let mut settings = train_config(LossKind::Clip, 0, accum, rows).step_settings();
        settings.precision = trainer::precision::Precision::Bf16;
        let mut step = TrainStep::new(
            &model,
            AdamW::new(vs.variables(), &optim()).into(),
            settings,
            &trainer::dist::Solo,
            Device::Cpu,
        );
        let mut batches = rank_slices(&data, 0, rows, accum);
        let loss = step.run(&mut batches, LR).expect("step").loss;
        (loss, snapshot(&vs))
    };
    let (cached_loss, cached) = run_one(ACCUM * WORLD);
    let (plain_loss, plain) = run_one(1);
    assert!(
        (cached_loss - plain_loss).abs() < 1e-2 * plain_loss.abs(),
        "bf16: cached loss {cached_loss} vs plain {plain_loss}"
    );
    let (diff, name) = max_diff(&plain, &cached);
    assert!(diff < 1e-3, "bf16: parameters differ by {diff} in {name}");
    // The step did move the parameters (lr 5e-4, so by about lr per element).
    let (start_vs, _) = new_model(&cfg, SEED);
    assert!(max_diff(&snapshot(&start_vs), &cached).0 > 1e-4);
}

#[test]
fn activation_checkpointing_in_the_train_step_changes_no_number() {
    // The train loop's own step, gradient-cached, with both towers recomputing their blocks:
    // the parameters after 5 steps are those of the plain step.
    tch::set_num_threads(1);
    let data = Data::new(&model_config(LossKind::Clip), STEPS, GLOBAL, SEED);
    let run_with = |checkpointing: bool| {
        let mut cfg = model_config(LossKind::Clip);
        cfg.grad_checkpointing = checkpointing;
        let (vs, model) = new_model(&cfg, SEED);
        let settings = train_config(LossKind::Clip, 0, ACCUM, MICRO).step_settings();
        let mut step = TrainStep::new(
            &model,
            AdamW::new(vs.variables(), &optim()).into(),
            settings,
            &trainer::dist::Solo,
            Device::Cpu,
        );
        let mut batches = rank_slices(&data, 0, MICRO, ACCUM);
        for _ in 0..STEPS {
            assert!(step.run(&mut batches, LR).expect("step").stepped);
        }
        snapshot(&vs)
    };
    let (plain, checkpointed) = (run_with(false), run_with(true));
    let (diff, name) = max_diff(&plain, &checkpointed);
    println!("activation checkpointing: max parameter difference after {STEPS} steps {diff:.3e} ({name})");
    assert!(diff <= 1e-6, "activation checkpointing changed {name} by {diff}");
}
