//! One optimizer step of one worker: the forward and backward passes against the loss over
//! the global batch, the gradient all-reduce, and the AdamW update, or a skip when the loss
//! or gradient is not finite.
//!
//! With `data.accum_steps = K > 1` the global batch is K·W·B and the step is
//! gradient-cached (GradCache; OpenCLIP's `--accum-freq`): pass 1 encodes the K
//! micro-batches without autograd graphs and keeps only their features (the last one keeps
//! its graph); one loss over all K·W·B rows gives the gradient of every cached feature;
//! pass 2 backpropagates the last micro-batch, then encodes each other one again, with a
//! graph, and backpropagates its rows of those gradients. The result is the gradient of one
//! batch of K·W·B, exactly; memory holds one micro-batch's activations, the K micro-batches'
//! inputs and K·B feature rows, for (K − 1)/K of a second forward pass more compute
//! (docs/architecture.md §3).
//!
//! With `optim.overlap_reduce` (and more than one rank) the last backward pass runs tower by
//! tower: the image tower's, then its gradients' all-reduce on a communication thread while
//! the text tower's runs (optim/overlap.rs). The gradients and their sums are the same.
//!
//! Every rank computes the same global loss and, after the all-reduce, the same gradient
//! norm, so every rank takes the same decision (step or skip) without talking about it.

use std::time::Instant;

use tch::{Device, Tensor};

use crate::data::{BatchSource, TensorBatch};
use crate::dist::Collective;
use crate::loss::{FeatureGrads, LossGrads, LossKind};
use crate::model::{Clip, ForwardPass};
use crate::optim::{reduce_during, GradSync, Gradients, Optimizer, OverlapReport};
use crate::precision::{with_precision, Precision};
use crate::TrainError;

/// What one step did, for the counters, the metrics and the checkpoint decisions.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    /// The loss over the global batch (the same on every rank).
    pub loss: f64,
    /// The global L2 norm of the summed gradient (NaN when the loss was not finite).
    pub grad_norm: f64,
    /// The optimizer stepped; false when the step was skipped as non-finite.
    pub stepped: bool,
    /// The data epoch of the step's last micro-batch.
    pub epoch: u64,
    /// Seconds spent waiting for batches.
    pub data_wait_s: f64,
    /// Seconds spent exchanging gradients (and, with a sharded optimizer, parameters) that
    /// the step waited for.
    pub comm_s: f64,
    /// With `optim.overlap_reduce`: when the overlapped exchange ran.
    pub overlap: Option<OverlapReport>,
}

/// What the train config chose for the step ([`super::config::TrainConfig::step_settings`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSettings {
    /// `loss`.
    pub loss: LossKind,
    /// `loss_tile`: logits `tile × tile` at a time around a ring of ranks (0: untiled).
    pub loss_tile: usize,
    /// `precision`.
    pub precision: Precision,
    /// `data.accum_steps`: micro-batches per step, gradient-cached when more than one.
    pub accum_steps: usize,
    /// `optim.overlap_reduce`: reduce the image tower's gradients during the text tower's
    /// backward pass.
    pub overlap_reduce: bool,
}

/// A step's gradients before the update: this rank's, or already summed over the ranks by
/// the overlapped exchange.
enum StepGradients {
    Local(Gradients),
    Summed(Gradients, OverlapReport),
}

/// How a worker takes steps: the model, its optimizer, and the loss, tiling, precision and
/// accumulation the config chose.
pub struct TrainStep<'a> {
    model: &'a Clip,
    optimizer: Optimizer,
    settings: StepSettings,
    coll: &'a dyn Collective,
    device: Device,
}

impl<'a> TrainStep<'a> {
    /// Steps `model` with `optimizer` (which owns the model's variables) as `settings` say.
    pub fn new(
        model: &'a Clip,
        optimizer: Optimizer,
        settings: StepSettings,
        coll: &'a dyn Collective,
        device: Device,
    ) -> Self {
        Self {
            model,
            optimizer,
            settings,
            coll,
            device,
        }
    }

    /// The optimizer (for checkpoints).
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// The optimizer, to load a checkpoint's state into.
    pub fn optimizer_mut(&mut self) -> &mut Optimizer {
        &mut self.optimizer
    }

    /// One optimizer step at learning rate `lr` over the next `data.accum_steps`
    /// micro-batches of `batches`. Collective: every rank must call it.
    pub fn run(&mut self, batches: &mut dyn BatchSource, lr: f64) -> Result<StepOutcome, TrainError> {
        let mut outcome = StepOutcome {
            loss: f64::NAN,
            grad_norm: f64::NAN,
            stepped: false,
            epoch: 0,
            data_wait_s: 0.0,
            comm_s: 0.0,
            overlap: None,
        };
        let grads = match self.settings.accum_steps {
            1 => self.one_pass(batches, &mut outcome)?,
            _ => self.gradient_cached(batches, &mut outcome)?,
        };
        if let Some(grads) = grads {
            // Each rank's gradient is of its share of the one loss over the global batch:
            // their sum is the gradient of that loss.
            let update = match grads {
                StepGradients::Local(grads) => self.optimizer.sync_and_step(grads, lr, self.coll)?,
                StepGradients::Summed(grads, report) => {
                    outcome.overlap = Some(report);
                    self.optimizer.step_summed(grads, lr, report.exposed_s)?
                }
            };
            (outcome.grad_norm, outcome.comm_s) = (update.grad_norm, update.comm_s);
            if update.grad_norm.is_finite() {
                self.model.clamp_logit_scale();
                outcome.stepped = true;
            }
        }
        // Otherwise a skip, which the loop logs and counts.
        Ok(outcome)
    }

    /// One micro-batch: forward with a graph, the global loss, backward. `None` when the
    /// loss is not finite.
    fn one_pass(
        &mut self,
        batches: &mut dyn BatchSource,
        outcome: &mut StepOutcome,
    ) -> Result<Option<StepGradients>, TrainError> {
        let batch = self.next_batch(batches, outcome)?;
        let pass = self.encode_for_backward(&batch);
        let loss = self.global_loss(&pass.image_features, &pass.text_features, &pass.logit_scale)?;
        outcome.loss = loss.global_loss;
        if !outcome.loss.is_finite() {
            return Ok(None);
        }
        Ok(Some(self.backpropagate_last(pass, &loss.grads, None)?))
    }

    /// GradCache over `accum_steps` micro-batches (see the module doc). Every micro-batch is
    /// read either way, so the data position stays the same on every rank; `None` when the
    /// loss is not finite (then pass 2 is skipped).
    fn gradient_cached(
        &mut self,
        batches: &mut dyn BatchSource,
        outcome: &mut StepOutcome,
    ) -> Result<Option<StepGradients>, TrainError> {
        // Pass 1: features only, except for the last micro-batch, whose forward pass keeps
        // its graph: it is backpropagated right after the loss, so only the other K − 1 are
        // encoded twice (the memory of one micro-batch's activations is pass 2's anyway).
        let last = self.settings.accum_steps - 1;
        let mut micro_batches = Vec::with_capacity(last.min(1024));
        let (mut images, mut texts) = (Vec::new(), Vec::new());
        let mut kept = None;
        for index in 0..self.settings.accum_steps {
            let batch = self.next_batch(batches, outcome)?;
            if index < last {
                let (image_features, text_features, _) = tch::no_grad(|| self.encode(&batch));
                images.push(image_features);
                texts.push(text_features);
                micro_batches.push(batch);
            } else {
                let pass = self.encode_for_backward(&batch);
                images.push(pass.image_features.detach());
                texts.push(pass.text_features.detach());
                kept = Some((pass, batch));
            }
        }
        let (image_features, text_features) = (Tensor::cat(&images, 0), Tensor::cat(&texts, 0));
        drop((images, texts));
        let scale = self.model.logit_scale().exp();
        let loss = self.global_loss(&image_features, &text_features, &scale)?;
        drop((image_features, text_features)); // pass 2 needs their gradients only
        outcome.loss = loss.global_loss;
        let Some((kept_pass, kept_batch)) = kept.filter(|_| outcome.loss.is_finite()) else {
            return Ok(None);
        };
        // The kept micro-batch's rows are the last ones; it carries the scale and bias terms.
        let kept_rows = kept_batch.size as i64;
        let mut row = loss.grads.image.size()[0] - kept_rows;
        let mut grads = self.backpropagate(kept_pass, &loss.grads.rows(row, kept_rows, true));
        drop(kept_batch);
        // Pass 2: every other micro-batch again, with a graph, backpropagating its rows of
        // the cached features' gradients; the last one's backward pass may overlap the
        // exchange.
        row = 0;
        let last_encoded = micro_batches.len() - 1;
        for (index, batch) in micro_batches.into_iter().enumerate() {
            let rows = batch.size as i64;
            let pass = self.encode_for_backward(&batch);
            let rows_grads = loss.grads.rows(row, rows, false);
            if index == last_encoded {
                return Ok(Some(self.backpropagate_last(pass, &rows_grads, Some(grads))?));
            }
            grads.accumulate(&self.backpropagate(pass, &rows_grads));
            row += rows;
        }
        unreachable!("GradCache has at least two micro-batches, so pass 2 encodes one")
    }

    /// The next batch, with the time spent waiting for it.
    fn next_batch(&self, batches: &mut dyn BatchSource, outcome: &mut StepOutcome) -> Result<TensorBatch, TrainError> {
        let wait = Instant::now();
        let batch = batches.next_batch()?;
        outcome.data_wait_s += wait.elapsed().as_secs_f64();
        outcome.epoch = batch.epoch;
        Ok(batch)
    }

    /// Both towers on `batch` (on the device, under the run's precision): L2-normalised
    /// fp32 image and text features and the logit scale.
    fn encode(&self, batch: &TensorBatch) -> (Tensor, Tensor, Tensor) {
        // SAFETY: `images` is dropped at the end of this call; the features are computed
        // without a graph here (pass 1 of GradCache) or kept only while `batch` lives.
        let (images, tokens) = (
            unsafe { batch.model_input(self.device) },
            batch.tokens.to_device(self.device),
        );
        with_precision(self.settings.precision, self.device, || {
            self.model.forward(&images, &tokens, true)
        })
    }

    /// [`TrainStep::encode`] for a backward pass, with activation checkpointing where the
    /// model config asks for it.
    ///
    /// The pass's graph may hold the batch's loader buffer: every caller drops the pass
    /// (backpropagating consumes it) before the batch.
    fn encode_for_backward(&self, batch: &TensorBatch) -> ForwardPass {
        // SAFETY: see above; `one_pass` declares the batch before the pass (dropped after
        // it), `gradient_cached` keeps them as `(pass, batch)` and drops a micro-batch's
        // pass inside the loop iteration that owns the batch.
        let (images, tokens) = (
            unsafe { batch.model_input(self.device) },
            batch.tokens.to_device(self.device),
        );
        with_precision(self.settings.precision, self.device, || {
            self.model.forward_for_backward(&images, &tokens, true)
        })
    }

    /// The parameter gradients of `grads` (the gradients of `pass`'s features, scale and
    /// bias), through the encoders: one backward pass, or one per recomputed block.
    fn backpropagate(&self, pass: ForwardPass, grads: &FeatureGrads) -> Gradients {
        let surrogate = grads.surrogate(
            &pass.image_features,
            &pass.text_features,
            &pass.logit_scale,
            self.model.logit_bias(),
        );
        let mut sum = None;
        // Recomputed blocks run forward again: under the precision of the first forward.
        with_precision(self.settings.precision, self.device, || {
            self.model
                .backward(pass, &surrogate, true, &mut self.summing_into(&mut sum))
        });
        sum.expect("the surrogate's backward pass ran")
    }

    /// The step's last backward pass, whose gradients (added to `earlier`, the other
    /// micro-batches') complete the step's: this rank's, or, when the exchange overlaps the
    /// backward pass, already summed over the ranks.
    fn backpropagate_last(
        &self,
        pass: ForwardPass,
        grads: &FeatureGrads,
        earlier: Option<Gradients>,
    ) -> Result<StepGradients, TrainError> {
        let sync = self.optimizer.grad_sync().filter(|_| self.overlaps());
        let Some(sync) = sync else {
            let mut local = self.backpropagate(pass, grads);
            if let Some(mut earlier) = earlier {
                earlier.accumulate(&local);
                local = earlier;
            }
            return Ok(StepGradients::Local(local));
        };
        let (summed, report) = self.backpropagate_overlapped(pass, grads, earlier, sync)?;
        Ok(StepGradients::Summed(summed, report))
    }

    /// Whether the exchange overlaps the backward pass: asked for, and someone to talk to.
    fn overlaps(&self) -> bool {
        self.settings.overlap_reduce && self.coll.world_size() > 1
    }

    /// The image tower's backward pass; then its gradients (with `earlier`'s share of them)
    /// are summed over the ranks on a communication thread while the text tower's backward
    /// pass runs here; then the rest is summed.
    fn backpropagate_overlapped(
        &self,
        pass: ForwardPass,
        grads: &FeatureGrads,
        earlier: Option<Gradients>,
        sync: &GradSync,
    ) -> Result<(Gradients, OverlapReport), TrainError> {
        let image_surrogate = grads.image_surrogate(&pass.image_features);
        let rest_surrogate = grads.rest_surrogate(&pass.text_features, &pass.logit_scale, self.model.logit_bias());
        let (mut image, mut text) = (None, None);
        let text_backward = with_precision(self.settings.precision, self.device, || {
            self.model
                .backward_image(pass, &image_surrogate, true, &mut self.summing_into(&mut image))
        });
        let mut image = image.expect("the image surrogate's backward pass ran");
        // The image tower's parameters are those its backward pass reached.
        let mut earlier_rest = None;
        if let Some(mut earlier) = earlier {
            let mut earlier_image = earlier.split_where(&image.defined());
            earlier_image.accumulate(&image);
            image = earlier_image;
            earlier_rest = Some(earlier);
        }
        let backward_text = || {
            with_precision(self.settings.precision, self.device, || {
                self.model
                    .backward_text(text_backward, &rest_surrogate, true, &mut self.summing_into(&mut text))
            });
            let text = text.expect("the rest surrogate's backward pass ran");
            match earlier_rest {
                Some(mut earlier) => {
                    earlier.accumulate(&text);
                    earlier
                }
                None => text,
            }
        };
        Ok(reduce_during(sync, image, self.coll, backward_text)?)
    }

    /// The backward callback of [`Clip::backward`]: backpropagates a surrogate to the
    /// parameters, adding their gradients into `sum`, and returns the given leaves' gradients.
    fn summing_into<'s>(
        &'s self,
        sum: &'s mut Option<Gradients>,
    ) -> impl FnMut(&Tensor, &[&Tensor]) -> Vec<Tensor> + 's {
        let optimizer = &self.optimizer;
        move |surrogate, leaves| {
            let (grads, leaf_grads) = optimizer.backward_with(surrogate, leaves);
            match sum.as_mut() {
                Some(sum) => sum.accumulate(&grads),
                None => *sum = Some(grads),
            }
            leaf_grads
        }
    }

    /// The loss over the global batch and the gradients of this rank's features.
    fn global_loss(
        &self,
        image_features: &Tensor,
        text_features: &Tensor,
        scale: &Tensor,
    ) -> Result<LossGrads, TrainError> {
        Ok(self.settings.loss.feature_grads(
            image_features,
            text_features,
            scale,
            self.model.logit_bias(),
            self.settings.loss_tile,
            self.coll,
        )?)
    }
}
