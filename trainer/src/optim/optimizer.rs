//! The optimizer as the train step uses it: the gradient exchange between ranks and the
//! AdamW update, with AdamW's state on every rank ([`Optimizer::Replicated`]: all-reduce,
//! then the same step everywhere) or sharded over the ranks ([`Optimizer::Sharded`],
//! `optim.shard = true`: reduce-scatter, each rank updates its shard, all-gather).

use std::time::Instant;

use tch::Tensor;

use super::adamw::GradReduce;
use super::error::OptimStepError;
use super::sync::GradSync;
use super::{AdamW, Gradients, OptimConfig, OptimStateMismatch, ShardedAdamW};
use crate::dist::Collective;

/// AdamW, replicated or sharded.
pub enum Optimizer {
    /// Every rank holds the whole state and takes the same step.
    Replicated {
        /// The optimizer.
        adamw: AdamW,
        /// The gradient all-reduce.
        sync: GradSync,
    },
    /// Rank r holds 1/W of the state (ZeRO stage 1).
    Sharded(ShardedAdamW),
}

impl From<AdamW> for Optimizer {
    fn from(adamw: AdamW) -> Self {
        Optimizer::Replicated {
            adamw,
            sync: GradSync::default(),
        }
    }
}

/// What one exchange-and-update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateReport {
    /// The global L2 norm of the summed gradient; not finite: nothing was updated.
    pub grad_norm: f64,
    /// Seconds spent exchanging gradients and parameters.
    pub comm_s: f64,
}

impl Optimizer {
    /// The optimizer `cfg` asks for (`optim.shard`), over the trainable tensors of `named`,
    /// for rank `rank` of `world`.
    pub fn new(
        named: impl IntoIterator<Item = (String, Tensor)>,
        cfg: &OptimConfig,
        rank: usize,
        world: usize,
    ) -> Self {
        match (cfg.shard, cfg.grad_reduce) {
            (true, _) => Optimizer::Sharded(ShardedAdamW::new(named, cfg, rank, world)),
            (false, GradReduce::Fp32) => AdamW::new(named, cfg).into(),
            (false, GradReduce::Bf16) => Optimizer::Replicated {
                adamw: AdamW::new(named, cfg),
                sync: GradSync::default().on_the_wire(tch::Kind::BFloat16),
            },
        }
    }

    /// Whether the state is sharded over the ranks.
    pub fn is_sharded(&self) -> bool {
        matches!(self, Optimizer::Sharded(_))
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        match self {
            Optimizer::Replicated { adamw, .. } => adamw.steps(),
            Optimizer::Sharded(sharded) => sharded.steps(),
        }
    }

    /// Backpropagates `loss` to the parameters and to `leaves` (see [`AdamW::backward_with`]).
    pub fn backward_with(&self, loss: &Tensor, leaves: &[&Tensor]) -> (Gradients, Vec<Tensor>) {
        match self {
            Optimizer::Replicated { adamw, .. } => adamw.backward_with(loss, leaves),
            Optimizer::Sharded(sharded) => sharded.backward_with(loss, leaves),
        }
    }

    /// Sums every rank's `grads` and, when their global norm is finite, takes one AdamW step
    /// at learning rate `lr` on every rank alike. Collective.
    pub fn sync_and_step(
        &mut self,
        mut grads: Gradients,
        lr: f64,
        coll: &dyn Collective,
    ) -> Result<UpdateReport, OptimStepError> {
        match self {
            Optimizer::Replicated { sync, .. } => {
                let comm_s = sync.all_reduce(&mut grads, 1.0, coll)?.seconds;
                self.step_summed(grads, lr, comm_s)
            }
            Optimizer::Sharded(sharded) => {
                let started = Instant::now();
                let grad_norm = sharded.sync_and_step(&grads, lr, coll)?;
                Ok(UpdateReport {
                    grad_norm,
                    comm_s: started.elapsed().as_secs_f64(),
                })
            }
        }
    }

    /// The gradient all-reduce of the replicated optimizer (`None` when sharded, which
    /// reduce-scatters inside [`Optimizer::sync_and_step`]): for a step that reduces its
    /// gradients itself, overlapped with the backward pass, then calls
    /// [`Optimizer::step_summed`].
    pub fn grad_sync(&self) -> Option<&GradSync> {
        match self {
            Optimizer::Replicated { sync, .. } => Some(sync),
            Optimizer::Sharded(_) => None,
        }
    }

    /// [`Optimizer::sync_and_step`] for gradients already summed over the ranks (through
    /// [`Optimizer::grad_sync`]); `comm_s` is the exchange's exposed time, for the report.
    /// Only the replicated optimizer takes summed gradients: a sharded one panics (the config
    /// refuses `optim.overlap_reduce` with `optim.shard`).
    pub fn step_summed(&mut self, mut grads: Gradients, lr: f64, comm_s: f64) -> Result<UpdateReport, OptimStepError> {
        let Optimizer::Replicated { adamw, .. } = self else {
            panic!("the sharded optimizer reduce-scatters its own gradients: it takes no summed ones");
        };
        let grad_norm = grads.norm();
        if grad_norm.is_finite() {
            adamw.step(&mut grads, grad_norm, lr)?;
        }
        Ok(UpdateReport { grad_norm, comm_s })
    }

    /// This rank's optimizer state (the whole state, or its shard), by name.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        match self {
            Optimizer::Replicated { adamw, .. } => adamw.state_tensors(),
            Optimizer::Sharded(sharded) => sharded.state_tensors(),
        }
    }

    /// Restores a sharded optimizer from the shards a run on another worker count saved
    /// (every rank's, in rank order); see [`ShardedAdamW::load_resharded`]. A replicated
    /// optimizer's state does not depend on the worker count: it takes rank 0's.
    pub fn load_resharded(&mut self, mut saved: Vec<Vec<(String, Tensor)>>) -> Result<(), OptimStateMismatch> {
        match self {
            Optimizer::Replicated { adamw, .. } => adamw.load_state_tensors(saved.swap_remove(0)),
            Optimizer::Sharded(sharded) => sharded.load_resharded(saved),
        }
    }

    /// Restores what [`Optimizer::state_tensors`] wrote.
    pub fn load_state_tensors(&mut self, named: Vec<(String, Tensor)>) -> Result<(), OptimStateMismatch> {
        match self {
            Optimizer::Replicated { adamw, .. } => adamw.load_state_tensors(named),
            Optimizer::Sharded(sharded) => sharded.load_state_tensors(named),
        }
    }
}
