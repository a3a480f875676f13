//! AdamW with its state sharded over the ranks (ZeRO stage 1; `optim.shard = true`).
//!
//! The parameters, in the optimizers' name order and flattened, make one vector of P values,
//! padded to W·S with S = ⌈P / W⌉; rank r owns values [r·S, (r+1)·S): their AdamW moments
//! live only there (2·S values instead of 2·P). A step:
//!
//! 1. the gradients, flattened the same way, are reduce-scattered: rank r receives its S
//!    values summed over all ranks (what the replicated optimizer's all-reduce gives, for
//!    its slice);
//! 2. the global gradient norm (for clipping and the non-finite check) is the square root of
//!    the ranks' sums of squares, all-reduced;
//! 3. rank r updates its slice of every parameter it touches, with the very element-wise
//!    update the replicated AdamW applies ([`super::adamw`]'s `Update`);
//! 4. the updated slices are all-gathered, and every rank copies the whole vector back into
//!    its parameters, so the replicas stay equal.
//!
//! The result equals the replicated optimizer's up to the order of floating-point sums.

use tch::{Kind, Tensor};

use super::adamw::{backward_to, decays, restore_state, trainable_sorted, Update, STATE_KIND};
use super::error::{FusedError, OptimStepError};
use super::{Gradients, OptimConfig, OptimStateMismatch};
use crate::dist::{Collective, DistError};

/// A parameter and where it lies in the flat vector.
struct FlatParam {
    param: Tensor,
    decay: bool,
    offset: i64,
    numel: i64,
}

/// The part of parameter `param` that lies in this rank's shard.
struct Segment {
    param: usize,
    /// Offset in the (flattened) parameter.
    in_param: i64,
    /// Offset in the shard.
    in_shard: i64,
    len: i64,
}

/// AdamW whose moments this rank holds only for its shard of the parameters.
pub struct ShardedAdamW {
    cfg: OptimConfig,
    params: Vec<FlatParam>,
    segments: Vec<Segment>,
    rank: usize,
    world: usize,
    /// S: values per shard.
    shard_len: i64,
    /// P: values of all parameters.
    total: i64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: u64,
    scratch: Tensor,
}

/// Name of the shard's first moments among [`ShardedAdamW::state_tensors`].
const EXP_AVG_KEY: &str = "shard.exp_avg";
/// Name of the shard's second moments.
const EXP_AVG_SQ_KEY: &str = "shard.exp_avg_sq";
/// Name of the layout `[W, r, P, S]` a shard was made for (a resume must match it).
const LAYOUT_KEY: &str = "shard.layout";

impl ShardedAdamW {
    /// Rank `rank` of `world`'s optimizer over the trainable tensors of `named`.
    pub fn new(
        named: impl IntoIterator<Item = (String, Tensor)>,
        cfg: &OptimConfig,
        rank: usize,
        world: usize,
    ) -> Self {
        let mut offset = 0;
        let params: Vec<FlatParam> = trainable_sorted(named)
            .into_iter()
            .map(|(name, param)| {
                let numel = param.numel() as i64;
                let flat = FlatParam {
                    decay: decays(&name, &param, cfg),
                    param,
                    offset,
                    numel,
                };
                offset += numel;
                flat
            })
            .collect();
        let total = offset;
        let shard_len = (total + world as i64 - 1) / world as i64;
        let (start, end) = (rank as i64 * shard_len, ((rank as i64 + 1) * shard_len).min(total));
        let segments = params
            .iter()
            .enumerate()
            .filter_map(|(index, p)| {
                let (lo, hi) = (p.offset.max(start), (p.offset + p.numel).min(end));
                (lo < hi).then_some(Segment {
                    param: index,
                    in_param: lo - p.offset,
                    in_shard: lo - start,
                    len: hi - lo,
                })
            })
            .collect();
        let device = params.first().map_or(tch::Device::Cpu, |p| p.param.device());
        let zeros = || Tensor::zeros([shard_len], (STATE_KIND, device));
        Self {
            cfg: cfg.clone(),
            params,
            segments,
            rank,
            world,
            shard_len,
            total,
            exp_avg: zeros(),
            exp_avg_sq: zeros(),
            step: 0,
            scratch: zeros(),
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Backpropagates `loss` to the parameters and to `leaves` (see `AdamW::backward_with`).
    pub fn backward_with(&self, loss: &Tensor, leaves: &[&Tensor]) -> (Gradients, Vec<Tensor>) {
        backward_to(loss, self.params.iter().map(|p| &p.param), leaves)
    }

    /// Steps 1–4 of the module doc: sums the ranks' `grads`, clips them by their global norm
    /// and updates every parameter on every rank. Returns that norm; when it is not finite
    /// nothing is updated (every rank sees the same norm). Collective.
    pub fn sync_and_step(&mut self, grads: &Gradients, lr: f64, coll: &dyn Collective) -> Result<f64, OptimStepError> {
        let grads = grads.tensors();
        let shard_grads = tch::no_grad(|| coll.reduce_scatter_sum(&self.flatten_grads(grads)))?;
        let mut squares = Tensor::from_slice(&[shard_grads.square().sum(Kind::Double).double_value(&[])]);
        coll.all_reduce_sum_(&mut squares)?;
        let norm = squares.double_value(&[0]).sqrt();
        if !norm.is_finite() {
            return Ok(norm);
        }
        self.step += 1;
        let update = Update::new(&self.cfg, self.step, norm, lr);
        if self.cfg.fused {
            self.step_fused(&update, grads, &shard_grads)?;
            self.gather_parameters(coll)?;
            return Ok(norm);
        }
        tch::no_grad(|| {
            for segment in &self.segments {
                if !grads[segment.param].defined() {
                    continue; // no gradient: no update, as the replicated optimizer skips it
                }
                let p = &self.params[segment.param];
                let mut param = p.param.view([-1]).narrow(0, segment.in_param, segment.len);
                let mut grad = shard_grads.narrow(0, segment.in_shard, segment.len);
                let mut exp_avg = self.exp_avg.narrow(0, segment.in_shard, segment.len);
                let mut exp_avg_sq = self.exp_avg_sq.narrow(0, segment.in_shard, segment.len);
                update.apply(
                    &mut param,
                    &mut grad,
                    &mut exp_avg,
                    &mut exp_avg_sq,
                    &self.scratch,
                    p.decay,
                );
            }
        });
        self.gather_parameters(coll)?;
        Ok(norm)
    }

    /// [`Update::apply_fused`] over this rank's segments.
    fn step_fused(&self, update: &Update, grads: &[Tensor], shard_grads: &Tensor) -> Result<(), FusedError> {
        let slices: Vec<_> = self
            .segments
            .iter()
            .filter(|segment| grads[segment.param].defined())
            .map(|segment| {
                let p = &self.params[segment.param];
                (
                    p.param.view([-1]).narrow(0, segment.in_param, segment.len),
                    shard_grads.narrow(0, segment.in_shard, segment.len),
                    self.exp_avg.narrow(0, segment.in_shard, segment.len),
                    self.exp_avg_sq.narrow(0, segment.in_shard, segment.len),
                    p.decay,
                )
            })
            .collect();
        update.apply_fused(slices.iter().map(|(p, g, m, v, decay)| (p, g, m, v, *decay)))
    }

    /// The gradients as one flat vector in the parameters' order, padded to W·S (a missing
    /// gradient counts as zeros).
    fn flatten_grads(&self, grads: &[Tensor]) -> Tensor {
        let kind = self.exp_avg.kind();
        let device = self.exp_avg.device();
        let flat = Tensor::zeros([self.shard_len * self.world as i64], (kind, device));
        for (p, g) in self.params.iter().zip(grads) {
            if g.defined() {
                flat.narrow(0, p.offset, p.numel).copy_(&g.reshape([-1]));
            }
        }
        flat
    }

    /// Every rank's updated slice to every rank, copied into the parameters.
    fn gather_parameters(&self, coll: &dyn Collective) -> Result<(), DistError> {
        let mine = Tensor::zeros([self.shard_len], (self.exp_avg.kind(), self.exp_avg.device()));
        tch::no_grad(|| {
            for segment in &self.segments {
                let p = &self.params[segment.param];
                mine.narrow(0, segment.in_shard, segment.len)
                    .copy_(&p.param.view([-1]).narrow(0, segment.in_param, segment.len));
            }
        });
        let all = coll.all_gather(&mine)?; // (W·S)
        tch::no_grad(|| {
            for p in &self.params {
                p.param.view([-1]).copy_(&all.narrow(0, p.offset, p.numel));
            }
        });
        Ok(())
    }

    /// This rank's state: its shard's moments, the layout `[W, r, P, S]` they belong to, and
    /// the step count.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            (EXP_AVG_KEY.into(), self.exp_avg.shallow_clone()),
            (EXP_AVG_SQ_KEY.into(), self.exp_avg_sq.shallow_clone()),
            (LAYOUT_KEY.into(), Tensor::from_slice(&self.layout())),
            (super::adamw::STEP_STATE_KEY.into(), Tensor::from(self.step as i64)),
        ]
    }

    /// Restores what [`ShardedAdamW::state_tensors`] wrote, for the same layout (world size,
    /// rank and parameters); otherwise nothing changes and the error says what differs.
    pub fn load_state_tensors(&mut self, mut named: Vec<(String, Tensor)>) -> Result<(), OptimStateMismatch> {
        if let Some(index) = named.iter().position(|(name, _)| name == LAYOUT_KEY) {
            let (_, layout) = named.remove(index);
            let saved = Vec::<i64>::try_from(layout.to_kind(Kind::Int64).flatten(0, -1)).unwrap_or_default();
            if saved != self.layout() {
                return Err(OptimStateMismatch {
                    problems: vec![format!(
                        "{LAYOUT_KEY}: the shard was written for [world, rank, values, shard] = {saved:?}, this \
                         rank is {:?}",
                        self.layout()
                    )],
                });
            }
        }
        let destinations = vec![
            (EXP_AVG_KEY.into(), self.exp_avg.shallow_clone()),
            (EXP_AVG_SQ_KEY.into(), self.exp_avg_sq.shallow_clone()),
        ];
        self.step = restore_state(named, destinations)?;
        Ok(())
    }

    /// Restores this rank's shard from the shards of a run on another worker count (`saved`,
    /// every rank's [`ShardedAdamW::state_tensors`], in rank order): the saved moments are
    /// laid end to end as the whole flat vector they split, and this rank takes its range of
    /// it. Errors, changing nothing, when the shards are not one whole set for these
    /// parameters.
    pub fn load_resharded(&mut self, saved: Vec<Vec<(String, Tensor)>>) -> Result<(), OptimStateMismatch> {
        let mismatch = |problem: String| OptimStateMismatch {
            problems: vec![problem],
        };
        let world = saved.len();
        let mut exp_avg = Vec::with_capacity(world);
        let mut exp_avg_sq = Vec::with_capacity(world);
        let mut steps = Vec::with_capacity(world);
        for (rank, named) in saved.into_iter().enumerate() {
            let mut by_name: std::collections::BTreeMap<String, Tensor> = named.into_iter().collect();
            let layout = by_name
                .get(LAYOUT_KEY)
                .map(|t| Vec::<i64>::try_from(t.to_kind(Kind::Int64).flatten(0, -1)).unwrap_or_default())
                .unwrap_or_default();
            let want_shard = (self.total + world as i64 - 1) / world as i64;
            if layout != [world as i64, rank as i64, self.total, want_shard] {
                return Err(mismatch(format!(
                    "{LAYOUT_KEY}: shard {rank} of {world} has layout {layout:?}, expected [{world}, {rank}, {}, \
                     {want_shard}] for these parameters",
                    self.total
                )));
            }
            let mut take = |key: &str| {
                by_name
                    .remove(key)
                    .ok_or_else(|| mismatch(format!("{key}: missing in shard {rank}")))
            };
            exp_avg.push(take(EXP_AVG_KEY)?);
            exp_avg_sq.push(take(EXP_AVG_SQ_KEY)?);
            let step = take(super::adamw::STEP_STATE_KEY)?;
            steps.push(step.flatten(0, -1).int64_value(&[0]));
        }
        if steps.windows(2).any(|pair| pair[0] != pair[1]) {
            return Err(mismatch(format!("the shards were saved at different steps: {steps:?}")));
        }
        let start = self.rank as i64 * self.shard_len;
        let len = (self.total - start).clamp(0, self.shard_len);
        for (destination, parts) in [(&self.exp_avg, exp_avg), (&self.exp_avg_sq, exp_avg_sq)] {
            let whole = Tensor::cat(&parts, 0).narrow(0, 0, self.total);
            let mut destination = destination.shallow_clone();
            let _ = destination.zero_();
            destination
                .narrow(0, 0, len)
                .copy_(&whole.narrow(0, start, len).to_device(destination.device()));
        }
        self.step = steps.first().copied().unwrap_or(0).max(0) as u64;
        Ok(())
    }

    /// Bytes of optimizer state this rank holds (the two moment shards).
    pub fn state_bytes(&self) -> usize {
        2 * self.shard_len as usize * self.exp_avg.kind().elt_size_in_bytes()
    }

    fn layout(&self) -> [i64; 4] {
        [self.world as i64, self.rank as i64, self.total, self.shard_len]
    }
}

#[cfg(test)]
mod tests;
