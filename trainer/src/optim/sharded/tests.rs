//! The sharded optimizer takes the replicated optimizer's steps: after 5 steps on 1, 2 and 3
//! in-process ranks the parameters equal those of plain AdamW (each rank feeding the same
//! per-rank gradients), and every rank holds about 1/W of the state.

use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

use super::*;
use crate::dist::local::LocalGroup;
use crate::optim::AdamW;

/// Named parameters of an irregular model (sizes that do not split evenly), rank-independent.
fn params() -> Vec<(String, Tensor)> {
    let shapes: [(&str, &[i64]); 5] = [
        ("a.weight", &[7, 5]),
        ("a.bias", &[7]),
        ("b.ln.weight", &[11]),
        ("c.proj", &[3, 13]),
        ("logit_scale", &[]),
    ];
    shapes
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: i64 = shape.iter().product();
            let values = Tensor::arange(n.max(1), (Kind::Float, Device::Cpu)) * (0.01 + i as f64 * 0.003) - 0.05;
            (name.to_string(), values.view(*shape).set_requires_grad(true))
        })
        .collect()
}

/// Rank `rank`'s gradient of step `step` for `param`, deterministic.
fn grad(param: &Tensor, rank: usize, step: usize) -> Tensor {
    let n = param.numel() as i64;
    ((Tensor::arange(n.max(1), (Kind::Float, Device::Cpu)) * (0.7 + rank as f64 * 0.31 + step as f64 * 0.13)).sin()
        * (1.0 + rank as f64))
        .view(param.size().as_slice())
}

/// The parameters in the optimizers' (name) order, sharing storage.
fn sorted_view(named: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    let mut sorted: Vec<(String, Tensor)> = named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted
}

fn snapshot(named: &[(String, Tensor)]) -> BTreeMap<String, Vec<f32>> {
    named
        .iter()
        .map(|(n, t)| (n.clone(), Vec::<f32>::try_from(t.detach().flatten(0, -1)).expect("f32")))
        .collect()
}

fn cfg() -> OptimConfig {
    OptimConfig {
        lr: 1e-2,
        grad_clip_norm: 2.0, // some steps clip: the global norm must be the sum over ranks'
        fused: false,        // the elementwise update: the reference of the fused one
        ..OptimConfig::default()
    }
}

/// Plain AdamW (`cfg`) on the sum of every rank's gradients.
fn replicated(world: usize, steps: usize, cfg: &OptimConfig) -> BTreeMap<String, Vec<f32>> {
    let named = params();
    let mut opt = AdamW::new(named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())), cfg);
    let sorted = sorted_view(&named);
    for step in 0..steps {
        let summed: Vec<Tensor> = sorted
            .iter()
            .map(|(_, p)| {
                (0..world)
                    .map(|r| grad(p, r, step))
                    .fold(p.zeros_like(), |acc, g| acc + g)
            })
            .collect();
        let mut grads = Gradients::from_tensors(summed);
        let norm = grads.norm();
        opt.step(&mut grads, norm, cfg.lr).expect("step");
    }
    snapshot(&named)
}

/// The largest absolute difference between two snapshots of the same parameters.
fn max_diff(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f32 {
    a.iter()
        .flat_map(|(name, values)| values.iter().zip(&b[name]).map(|(x, y)| (x - y).abs()))
        .fold(0f32, f32::max)
}

#[test]
fn fused_steps_equal_unfused_steps() {
    // libtorch's fused kernel against the elementwise update: decay on matrices only, the
    // clipping (some steps clip), the bias corrections of 5 steps.
    let fused = OptimConfig { fused: true, ..cfg() };
    let unfused = replicated(2, 5, &cfg());
    let diff = max_diff(&replicated(2, 5, &fused), &unfused);
    assert!(diff <= 1e-6, "fused differs by {diff}");
    // Negative control: the steps moved the weights far more than that.
    assert!(max_diff(&unfused, &snapshot(&params())) > 1e-2);
    // ... and weight decay moves them by more than the tolerance, so the equality also
    // checks that the fused path decays the matrices and only them.
    let no_decay = OptimConfig {
        weight_decay: 0.0,
        ..cfg()
    };
    assert!(max_diff(&unfused, &replicated(2, 5, &no_decay)) > 1e-5);
}

#[test]
fn sharded_steps_equal_replicated_steps() {
    sharded_steps_equal_replicated_steps_with(&cfg());
}

#[test]
fn fused_sharded_steps_equal_replicated_steps() {
    sharded_steps_equal_replicated_steps_with(&OptimConfig { fused: true, ..cfg() });
}

/// The sharded optimizer with `cfg` against the replicated, unfused one.
fn sharded_steps_equal_replicated_steps_with(sharded_cfg: &OptimConfig) {
    for world in [1usize, 2, 3] {
        let want = replicated(world, 5, &cfg());
        let results = LocalGroup::run(world, |coll| {
            let named = params();
            let mut opt = ShardedAdamW::new(
                named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())),
                sharded_cfg,
                coll.rank(),
                world,
            );
            let sorted = sorted_view(&named);
            for step in 0..5 {
                let grads = Gradients::from_tensors(sorted.iter().map(|(_, p)| grad(p, coll.rank(), step)).collect());
                let norm = opt.sync_and_step(&grads, cfg().lr, coll).expect("step");
                assert!(norm.is_finite());
            }
            (snapshot(&named), opt.state_bytes(), opt.steps())
        });
        let total: i64 = params().iter().map(|(_, t)| t.numel() as i64).sum();
        for (rank, (got, bytes, steps)) in results.iter().enumerate() {
            assert_eq!(*steps, 5);
            for (name, values) in &want {
                let diff = values
                    .iter()
                    .zip(&got[name])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(diff <= 1e-6, "world {world} rank {rank}: {name} differs by {diff}");
            }
            // ⌈P/W⌉ values per moment, two moments, f32.
            let shard = (total + world as i64 - 1) / world as i64;
            assert_eq!(*bytes as i64, 2 * shard * 4, "world {world}: state bytes");
        }
    }
}

#[test]
fn a_shard_reloads_only_into_its_own_layout() {
    let results = LocalGroup::run(2, |coll| {
        let named = params();
        let opt = ShardedAdamW::new(
            named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())),
            &cfg(),
            coll.rank(),
            2,
        );
        let state = opt.state_tensors();
        // The same rank takes it back; the other rank refuses it, naming the layout.
        let mut same = ShardedAdamW::new(
            named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())),
            &cfg(),
            coll.rank(),
            2,
        );
        let mut other = ShardedAdamW::new(
            named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())),
            &cfg(),
            1 - coll.rank(),
            2,
        );
        let copy = |s: &[(String, Tensor)]| s.iter().map(|(n, t)| (n.clone(), t.copy())).collect::<Vec<_>>();
        (
            same.load_state_tensors(copy(&state)).is_ok(),
            other.load_state_tensors(copy(&state)).map_err(|e| e.to_string()),
        )
    });
    for (same_ok, other) in results {
        assert!(same_ok);
        let err = other.expect_err("another rank's shard");
        assert!(err.contains("shard.layout"), "{err}");
    }
}

/// The flat first and second moments of a whole set of shards' states, in rank order.
fn whole_moments(states: &[Vec<(String, Tensor)>], total: i64) -> (Vec<f32>, Vec<f32>) {
    let take = |key: &str| {
        let parts: Vec<Tensor> = states
            .iter()
            .map(|s| s.iter().find(|(n, _)| n == key).expect(key).1.shallow_clone())
            .collect();
        Vec::<f32>::try_from(Tensor::cat(&parts, 0).narrow(0, 0, total)).expect("f32")
    };
    (take(EXP_AVG_KEY), take(EXP_AVG_SQ_KEY))
}

#[test]
fn shards_of_one_worker_count_regather_onto_another() {
    let total: i64 = params().iter().map(|(_, t)| t.numel() as i64).sum();
    let copy = |s: &[(String, Tensor)]| s.iter().map(|(n, t)| (n.clone(), t.copy())).collect::<Vec<_>>();
    // Three ranks take 4 steps and save their shards.
    let saved: Vec<Vec<(String, Tensor)>> = LocalGroup::run(3, |coll| {
        let named = params();
        let mut opt = ShardedAdamW::new(
            named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())),
            &cfg(),
            coll.rank(),
            3,
        );
        let sorted = sorted_view(&named);
        for step in 0..4 {
            let grads = Gradients::from_tensors(sorted.iter().map(|(_, p)| grad(p, coll.rank(), step)).collect());
            opt.sync_and_step(&grads, cfg().lr, coll).expect("step");
        }
        copy(&opt.state_tensors())
    });
    let want = whole_moments(&saved, total);
    assert!(want.0.iter().any(|v| *v != 0.0), "the moments moved");
    // Two, four and one ranks take them up: the same whole moments, the same step count.
    for world in [2usize, 4, 1] {
        let states: Vec<Vec<(String, Tensor)>> = (0..world)
            .map(|rank| {
                let named = params();
                let mut opt = ShardedAdamW::new(
                    named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())),
                    &cfg(),
                    rank,
                    world,
                );
                opt.load_resharded(saved.iter().map(|s| copy(s)).collect())
                    .expect("regather");
                assert_eq!(opt.steps(), 4);
                copy(&opt.state_tensors())
            })
            .collect();
        assert_eq!(whole_moments(&states, total), want, "{world} ranks");
    }
    // An incomplete set (a shard missing) is refused, naming the layout.
    let named = params();
    let mut opt = ShardedAdamW::new(named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())), &cfg(), 0, 2);
    let err = opt
        .load_resharded(saved[..2].iter().map(|s| copy(s)).collect())
        .unwrap_err()
        .to_string();
    assert!(err.contains("shard.layout"), "{err}");
}
