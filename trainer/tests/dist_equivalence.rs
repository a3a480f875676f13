//! Acceptance test of data-parallel training (issue 4, docs/architecture.md §3): 2 workers ×
//! batch B train to the same parameters as 1 worker × batch 2B on the same data,
//! for the CLIP loss and for SigLIP; and leaving out the exchange of column
//! gradients breaks that, so the check can fail.
//!
//! The workers are threads of one process joined by `LocalGroup`; the
//! single-worker baseline uses the plain single-process losses, not the
//! distributed code. Real math throughout: the nano model, AdamW, gradient
//! clipping, the logit-scale clamp.

mod step_data;

use std::collections::BTreeMap;

use step_data::{seeded, snapshot, Data};
use tch::nn::{self, Init};
use tch::{Device, Tensor};
use trainer::dist::local::{LocalGroup, LocalMember};
use trainer::dist::{Collective, DistError};
use trainer::loss::{
    clip_share_grads, global_clip_loss, global_siglip_loss, siglip_loss, siglip_share_grads, FeatureGrads,
};
use trainer::optim::GradSync;
use trainer::optim::{AdamW, OptimConfig};
use trainer::train::ddp::{broadcast_parameters, verify_parameters_equal};
use trainer::{clip_loss, Clip, ModelConfig};

const WORLD: usize = 2;
const PER_RANK: i64 = 4;
const STEPS: usize = 5;
/// open_clip's default peak learning rate. The remaining 2-vs-1-worker difference
/// is fp32 summation-order noise, amplified by Adam where a gradient element is
/// near ε (update ≈ lr·g/(|g|+ε)): it grows with the learning rate, ~3e-6 here.
const LR: f64 = 5e-4;
const SEED: i64 = 20240;
const TOLERANCE: f64 = 1e-5;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Loss {
    Clip,
    SigLip,
}

/// How the workers combine column gradients.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Columns {
    /// docs/architecture.md §3: reduce-scatter, every rank gets the sum over ranks.
    Exchanged,
    /// Deliberately incomplete: each rank keeps only the column terms of its own loss.
    OwnOnly,
}

/// A model with its own variables; SigLIP adds a learned logit bias (init −10, as
/// open_clip's SigLIP models). `seed` sets the initialisation.
struct Replica {
    vs: nn::VarStore,
    model: Clip,
    logit_bias: Option<Tensor>,
}

fn replica(cfg: &ModelConfig, loss: Loss, seed: i64) -> Replica {
    seeded(seed, || {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Clip::new(&vs.root(), cfg);
        let logit_bias = (loss == Loss::SigLip).then(|| vs.root().var("logit_bias", &[], Init::Const(-10.0)));
        Replica { vs, model, logit_bias }
    })
}

fn optim() -> OptimConfig {
    OptimConfig {
        lr: LR,
        grad_clip_norm: 1.0, // not the default: the clip must see the same (global) norm
        ..OptimConfig::default()
    }
}

/// Parameters by name, as plain values.
/// One worker × the whole global batch, with the single-process losses.
fn train_single(cfg: &ModelConfig, loss: Loss, data: &Data) -> BTreeMap<String, Vec<f32>> {
    let r = replica(cfg, loss, SEED);
    let mut opt = AdamW::new(r.vs.variables(), &optim());
    for step in 0..STEPS {
        let (images, tokens) = data.tensors(step, 0, PER_RANK * WORLD as i64);
        let (img, txt, scale) = r.model.forward(&images, &tokens, true);
        let value = match (loss, &r.logit_bias) {
            (Loss::SigLip, Some(bias)) => siglip_loss(&img, &txt, &scale, bias),
            _ => clip_loss(&img, &txt, &scale),
        };
        let mut grads = opt.backward(&value);
        let norm = grads.norm();
        opt.step(&mut grads, norm, LR).expect("AdamW step");
        r.model.clamp_logit_scale();
    }
    snapshot(&r.vs)
}

/// This rank's surrogate, with the column gradients exchanged or (deliberately
/// wrong) kept to the own block of the rank's own loss.
fn surrogate(
    loss: Loss,
    columns: Columns,
    (img, txt, scale): (&Tensor, &Tensor, &Tensor),
    bias: Option<&Tensor>,
    coll: &dyn Collective,
) -> Result<Tensor, DistError> {
    match (columns, loss, bias) {
        (Columns::Exchanged, Loss::Clip, _) => Ok(global_clip_loss(img, txt, scale, coll)?.surrogate),
        (Columns::Exchanged, Loss::SigLip, Some(bias)) => {
            Ok(global_siglip_loss(img, txt, scale, bias, coll)?.surrogate)
        }
        (Columns::OwnOnly, _, _) => {
            let shares = match (loss, bias) {
                (Loss::SigLip, Some(bias)) => siglip_share_grads(img, txt, scale, bias, coll)?,
                _ => clip_share_grads(img, txt, scale, coll)?,
            };
            let start = coll.rank() as i64 * PER_RANK;
            let own = |rows: Option<&Tensor>, cols: Option<&Tensor>| -> Tensor {
                let cols = cols.map(|c| c.narrow(0, start, PER_RANK));
                match (rows, cols) {
                    (Some(r), Some(c)) => r + c,
                    (Some(r), None) => r.shallow_clone(),
                    (None, Some(c)) => c,
                    (None, None) => img.zeros_like(),
                }
            };
            let grads = FeatureGrads {
                image: own(shares.image_rows.as_ref(), shares.image_columns.as_ref()),
                text: own(shares.text_rows.as_ref(), shares.text_columns.as_ref()),
                logit_scale: shares.logit_scale,
                logit_bias: shares.logit_bias,
            };
            Ok(grads.surrogate(img, txt, scale, bias))
        }
        (Columns::Exchanged, Loss::SigLip, None) => unreachable!("SigLIP replicas have a bias"),
    }
}

/// One rank of the data-parallel run: rows r·B..(r+1)·B of every global batch.
fn train_rank(r: Replica, loss: Loss, columns: Columns, data: &Data, coll: &LocalMember) -> BTreeMap<String, Vec<f32>> {
    broadcast_parameters(&r.vs, coll).expect("broadcast");
    verify_parameters_equal(&r.vs, coll).expect("equal after broadcast");
    let mut opt = AdamW::new(r.vs.variables(), &optim());
    let sync = GradSync::default();
    for step in 0..STEPS {
        let (images, tokens) = data.tensors(step, coll.rank() as i64 * PER_RANK, PER_RANK);
        let (img, txt, scale) = r.model.forward(&images, &tokens, true);
        let surrogate = surrogate(loss, columns, (&img, &txt, &scale), r.logit_bias.as_ref(), coll).expect("loss");
        let mut grads = opt.backward(&surrogate);
        // Shares are divided by the global batch: the sum over ranks is the global gradient.
        sync.all_reduce(&mut grads, 1.0, coll).expect("gradient sync");
        let norm = grads.norm();
        opt.step(&mut grads, norm, LR).expect("AdamW step");
        r.model.clamp_logit_scale();
    }
    verify_parameters_equal(&r.vs, coll).expect("replicas stay equal");
    snapshot(&r.vs)
}

fn train_parallel(cfg: &ModelConfig, loss: Loss, columns: Columns, data: &Data) -> Vec<BTreeMap<String, Vec<f32>>> {
    // Built one after another (the seed is global); rank 1 starts from another
    // seed so that the broadcast from rank 0 is what makes the replicas equal.
    let replicas: Vec<Replica> = (0..WORLD).map(|rank| replica(cfg, loss, SEED + rank as i64)).collect();
    let members = LocalGroup::new(WORLD);
    std::thread::scope(|scope| {
        let handles: Vec<_> = replicas
            .into_iter()
            .zip(members)
            .map(|(r, member)| scope.spawn(move || train_rank(r, loss, columns, data, &member)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread panicked"))
            .collect()
    })
}

/// Max |a − b| over all parameters, and the parameter where it occurs.
fn max_diff(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> (f64, String) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "same parameter names"
    );
    let mut worst = (0.0, String::new());
    for (name, x) in a {
        let d = x
            .iter()
            .zip(&b[name])
            .map(|(p, q)| (p - q).abs() as f64)
            .fold(0.0, f64::max);
        // DIST_EQ_VERBOSE=1 lists every parameter that moved by more than 1e-6.
        if std::env::var("DIST_EQ_VERBOSE").is_ok() && d > 1e-6 {
            eprintln!("  {name}: {d:.3e}");
        }
        if d > worst.0 {
            worst = (d, name.clone());
        }
    }
    worst
}

fn run(loss: Loss, columns: Columns) -> (f64, String) {
    tch::set_num_threads(1);
    let cfg = ModelConfig::preset("nano").expect("nano preset");
    let data = Data::new(&cfg, STEPS, PER_RANK * WORLD as i64, SEED);
    let single = train_single(&cfg, loss, &data);
    let ranks = train_parallel(&cfg, loss, columns, &data);
    assert_eq!(
        max_diff(&ranks[0], &ranks[1]).0,
        0.0,
        "{loss:?}: the replicas must be bitwise equal"
    );
    let start = replica(&cfg, loss, SEED);
    let moved = max_diff(&snapshot(&start.vs), &single).0;
    assert!(
        moved > 1e-3,
        "{loss:?}: training must move the parameters (moved {moved})"
    );
    max_diff(&single, &ranks[0])
}

#[test]
fn two_workers_match_one_worker_with_the_global_batch_clip() {
    let (diff, name) = run(Loss::Clip, Columns::Exchanged);
    println!("CLIP: max |2 workers − 1 worker| = {diff:.3e} ({name})");
    assert!(diff <= TOLERANCE, "CLIP: parameters differ by {diff} in {name}");
}

#[test]
fn two_workers_match_one_worker_with_the_global_batch_siglip() {
    let (diff, name) = run(Loss::SigLip, Columns::Exchanged);
    println!("SigLIP: max |2 workers − 1 worker| = {diff:.3e} ({name})");
    assert!(diff <= TOLERANCE, "SigLIP: parameters differ by {diff} in {name}");
}

#[test]
fn without_the_column_gradient_exchange_workers_diverge_from_one_worker() {
    for loss in [Loss::Clip, Loss::SigLip] {
        let (diff, name) = run(loss, Columns::OwnOnly);
        println!("{loss:?} without column exchange: max diff = {diff:.3e} ({name})");
        assert!(
            diff > 1e-4,
            "{loss:?}: dropping the exchange should break equivalence, diff only {diff}"
        );
    }
}
