//! One optimizer step of one worker: the micro-batches' forward and backward passes
//! against the global-batch loss, the gradient all-reduce, and the AdamW update, or a
//! skip when the loss or gradient is not finite.
//!
//! Every rank computes the same global loss and, after the all-reduce, the same gradient
//! norm, so every rank takes the same decision (step or skip) without talking about it.

use std::time::Instant;

use tch::Device;

use super::ddp::GradSync;
use crate::data::TrainLoader;
use crate::dist::Collective;
use crate::loss::LossKind;
use crate::model::Clip;
use crate::optim::{AdamW, Gradients};
use crate::precision::{with_precision, Precision};
use crate::TrainError;

/// What one step did, for the counters, the metrics and the checkpoint decisions.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    /// The global-batch loss, averaged over the micro-batches (the same on every rank).
    pub loss: f64,
    /// The global L2 norm of the summed gradient (NaN when the loss was not finite).
    pub grad_norm: f64,
    /// The optimizer stepped; false when the step was skipped as non-finite.
    pub stepped: bool,
    /// The data epoch of the step's last micro-batch.
    pub epoch: u64,
    /// Seconds spent waiting for batches.
    pub data_wait_s: f64,
    /// Seconds spent in the gradient all-reduce.
    pub comm_s: f64,
}

/// How a worker takes steps: the model, its optimizer, and the loss and precision the
/// config chose.
pub struct TrainStep<'a> {
    model: &'a Clip,
    optimizer: AdamW,
    grad_sync: GradSync,
    loss: LossKind,
    precision: Precision,
    /// Micro-batches per step (`data.accum_steps`).
    accum_steps: usize,
    coll: &'a dyn Collective,
    device: Device,
}

impl<'a> TrainStep<'a> {
    /// Steps `model` with `optimizer` (which owns the model's variables).
    pub fn new(
        model: &'a Clip,
        optimizer: AdamW,
        loss: LossKind,
        precision: Precision,
        accum_steps: usize,
        coll: &'a dyn Collective,
        device: Device,
    ) -> Self {
        Self {
            model,
            optimizer,
            grad_sync: GradSync::default(),
            loss,
            precision,
            accum_steps,
            coll,
            device,
        }
    }

    /// The optimizer (for checkpoints).
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// The optimizer, to load a checkpoint's state into.
    pub fn optimizer_mut(&mut self) -> &mut AdamW {
        &mut self.optimizer
    }

    /// One optimizer step at learning rate `lr` over `data.accum_steps` micro-batches
    /// from `loader`. Collective: every rank must call it.
    pub fn run(&mut self, loader: &mut TrainLoader, lr: f64) -> Result<StepOutcome, TrainError> {
        let mut outcome = StepOutcome {
            loss: 0.0,
            grad_norm: f64::NAN,
            stepped: false,
            epoch: 0,
            data_wait_s: 0.0,
            comm_s: 0.0,
        };
        let mut grads = self.accumulate(loader, &mut outcome)?;
        if let Some(grads) = grads.as_mut() {
            outcome.comm_s = self
                .grad_sync
                .all_reduce(grads, 1.0 / self.accum_steps as f64, self.coll)?
                .seconds;
            outcome.grad_norm = grads.norm();
        }
        match grads {
            Some(mut grads) if outcome.grad_norm.is_finite() => {
                self.optimizer.step(&mut grads, outcome.grad_norm, lr);
                self.model.clamp_logit_scale();
                outcome.stepped = true;
            }
            _ => {} // a skip, which the loop logs and counts
        }
        Ok(outcome)
    }

    /// Forward and backward over the step's micro-batches: their gradients summed locally
    /// (exchanged between workers once, after this), or `None` when the loss is not
    /// finite. Every micro-batch is read either way, so the data position stays the
    /// same on every rank.
    fn accumulate(
        &mut self,
        loader: &mut TrainLoader,
        outcome: &mut StepOutcome,
    ) -> Result<Option<Gradients>, TrainError> {
        let mut grads = None::<Gradients>;
        for _ in 0..self.accum_steps {
            let wait = Instant::now();
            let batch = loader.next_batch()?;
            outcome.data_wait_s += wait.elapsed().as_secs_f64();
            outcome.epoch = batch.epoch;
            let (images, tokens) = (
                batch.images_normalized(self.device),
                batch.tokens.to_device(self.device),
            );
            let (image_features, text_features, scale) = with_precision(self.precision, self.device, || {
                self.model.forward(&images, &tokens, true)
            });
            let loss = self.loss.global_loss(
                &image_features,
                &text_features,
                &scale,
                self.model.logit_bias(),
                self.coll,
            )?;
            // The same on every rank, so every rank decides alike.
            outcome.loss += loss.global_loss / self.accum_steps as f64;
            if outcome.loss.is_finite() {
                let micro = self.optimizer.backward(&loss.surrogate);
                match grads.as_mut() {
                    Some(sum) => sum.accumulate(&micro),
                    None => grads = Some(micro),
                }
            }
        }
        Ok(grads.filter(|_| outcome.loss.is_finite()))
    }
}
