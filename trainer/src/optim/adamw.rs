//! AdamW with decoupled weight decay, written over tch tensors so its state is
//! plain named tensors (checkpointable as safetensors, unlike libtorch's C++
//! optimizer that tch wraps).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::fused::{FusedError, FusedGroup, FusedStep};
use crate::field::FieldError;

/// The `[optim]` section of a train config. Defaults are open_clip_train's for ViTs (`--lr`,
/// `--wd`, `--beta1/2`, `--eps` as `get_default_params` gives them for a model name with "vit";
/// no `--grad-clip-norm`; its two parameter groups), so a config that names only what an
/// open_clip_train command line names trains the same recipe (scripts/bench/train_parity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate (reached after warmup).
    pub lr: f64,
    /// Decoupled weight decay, applied to matrices only (see [`decays`]).
    pub weight_decay: f64,
    /// Adam β₁.
    pub beta1: f64,
    /// Adam β₂ (open_clip uses 0.98 for ViTs).
    pub beta2: f64,
    /// Adam ε (open_clip uses 1e-6 for ViTs).
    pub eps: f64,
    /// Clip the global gradient L2 norm to this value; 0 (the default, as open_clip_train
    /// without `--grad-clip-norm`) disables clipping.
    pub grad_clip_norm: f64,
    /// Decay `token_embedding`/`positional_embedding` (and the vision tower's positional
    /// embedding) like every other tensor with ≥ 2 dims: open_clip_train's rule, the default.
    /// `false` leaves embeddings undecayed, as lookups rather than linear maps.
    pub decay_embeddings: bool,
    /// Shard the AdamW state over the workers (ZeRO stage 1): each holds 1/W of the
    /// moments; gradients are reduce-scattered and parameters all-gathered. The same steps,
    /// less optimizer memory per worker.
    pub shard: bool,
    /// The dtype gradients are all-reduced in: `"fp32"` (default) or `"bf16"` (half the
    /// bytes on the wire, bf16 sums; the weights and AdamW state stay fp32). bf16 needs a
    /// backend that sums bf16 (NCCL; MPI refuses it) and the replicated optimizer.
    pub grad_reduce: GradReduce,
    /// Keep an exponential moving average of the weights with this decay (in (0, 1), e.g.
    /// 0.999): updated after every step, saved as `ema.safetensors`. Unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ema_decay: Option<f64>,
    /// Update with libtorch's fused AdamW kernel (default; one pass per tensor, one launch
    /// per group on CUDA) instead of ten elementwise ops per parameter: the same update up to
    /// float rounding (≈1e-7), several times faster.
    pub fused: bool,
    /// Start the image tower's gradient all-reduce, on a communication thread, as soon as its
    /// backward pass is done, while the text tower's backward runs (the replicated optimizer
    /// only). The same sums; it hides communication behind computation where the wire, not
    /// the cores, is the bottleneck (docs/benchmarks.md, `overlap`).
    pub overlap_reduce: bool,
}

/// The dtype of the gradient all-reduce (`optim.grad_reduce`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradReduce {
    /// The gradients' own dtype (fp32).
    #[default]
    Fp32,
    /// bfloat16 on the wire.
    Bf16,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 5e-4,
            weight_decay: 0.2,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            grad_clip_norm: 0.0,
            decay_embeddings: true,
            shard: false,
            grad_reduce: GradReduce::Fp32,
            ema_decay: None,
            fused: true,
            overlap_reduce: false,
        }
    }
}

impl OptimConfig {
    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        let bad = |field: &str, why: String| Err(FieldError::new(format!("optim.{field}"), why));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", format!("must be > 0, got {}", self.lr));
        }
        if !(self.weight_decay >= 0.0) {
            return bad("weight_decay", format!("must be ≥ 0, got {}", self.weight_decay));
        }
        for (f, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(f, format!("must be in [0, 1), got {b}"));
            }
        }
        if !(self.eps > 0.0) {
            return bad("eps", format!("must be > 0, got {}", self.eps));
        }
        if self.shard && self.grad_reduce == GradReduce::Bf16 {
            return bad(
                "grad_reduce",
                "\"bf16\" applies to the replicated optimizer's all-reduce; with optim.shard the gradients are \
                 reduce-scattered in fp32"
                    .into(),
            );
        }
        if self.shard && self.overlap_reduce {
            return bad(
                "overlap_reduce",
                "overlaps the replicated optimizer's all-reduce; with optim.shard the gradients are \
                 reduce-scattered after the whole backward pass (set one of the two)"
                    .into(),
            );
        }
        if let Some(decay) = self.ema_decay.filter(|d| !(*d > 0.0 && *d < 1.0)) {
            return bad("ema_decay", format!("must be in (0, 1), e.g. 0.999, got {decay}"));
        }
        if !(self.grad_clip_norm >= 0.0) {
            return bad(
                "grad_clip_norm",
                format!("must be ≥ 0 (0 = off), got {}", self.grad_clip_norm),
            );
        }
        Ok(())
    }
}

/// Whether a parameter gets weight decay: matrices do; biases, LayerNorm gains,
/// the class token, `logit_scale` (and embeddings unless `decay_embeddings`) don't. With the
/// default config these are open_clip_train's two groups (its `exclude`: `p.ndim < 2` or a
/// name containing `bn`, `ln`, `bias` or `logit_scale`).
pub fn decays(name: &str, param: &Tensor, cfg: &OptimConfig) -> bool {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let is_norm = name.contains(".ln_") || name.starts_with("ln_") || name.contains("visual.ln_");
    let is_embedding = leaf == "positional_embedding" || name.starts_with("token_embedding.");
    param.dim() >= 2
        && !is_norm
        && !leaf.contains("bias")
        && leaf != "logit_scale"
        && (cfg.decay_embeddings || !is_embedding)
}

/// Saved optimizer tensors that do not fit this optimizer; nothing was loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("optimizer state does not match: {}", problems.join("; "))]
pub struct OptimStateMismatch {
    /// One entry per offending tensor: `visual.proj.exp_avg: missing`.
    pub problems: Vec<String>,
}

struct ParamState {
    name: String,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    decay: bool,
}

/// Gradients of a loss with respect to the optimizer's parameters, in its order.
///
/// Taken with `torch::autograd::grad` (fresh tensors) rather than accumulated into
/// `.grad`: no zeroing pass and no accumulation pass per step, as PyTorch's
/// `zero_grad(set_to_none=True)` achieves.
pub struct Gradients {
    grads: Vec<Tensor>,
}

impl Gradients {
    /// Gradients made elsewhere, one per parameter in the optimizer's (name) order.
    pub fn from_tensors(grads: Vec<Tensor>) -> Self {
        Gradients { grads }
    }

    /// Global L2 norm of all gradients (NaN/inf propagate).
    pub fn norm(&self) -> f64 {
        let norms: Vec<Tensor> = self.grads.iter().filter(|g| g.defined()).map(|g| g.norm()).collect();
        if norms.is_empty() {
            return 0.0;
        }
        Tensor::stack(&norms, 0).norm().double_value(&[])
    }

    /// The gradient tensors (undefined where a parameter did not contribute).
    pub fn tensors(&self) -> &[Tensor] {
        &self.grads
    }

    /// Adds `other` (gradients of the same parameters) into these: gradient
    /// accumulation over micro-batches. Out of place per tensor, since autograd
    /// may hand back expanded views.
    pub fn accumulate(&mut self, other: &Gradients) {
        tch::no_grad(|| {
            for (acc, g) in self.grads.iter_mut().zip(&other.grads) {
                match (acc.defined(), g.defined()) {
                    (true, true) => *acc = &*acc + g,
                    (false, true) => *acc = g.shallow_clone(),
                    _ => {}
                }
            }
        });
    }

    /// Moves out the gradients where `mask` is true (the rest stay; the moved ones become
    /// undefined here): one tower's share, to be reduced apart.
    pub fn split_where(&mut self, mask: &[bool]) -> Gradients {
        let grads = self
            .grads
            .iter_mut()
            .zip(mask.iter().chain(std::iter::repeat(&false)))
            .map(|(g, &take)| {
                if take {
                    std::mem::replace(g, Tensor::new())
                } else {
                    Tensor::new()
                }
            })
            .collect();
        Gradients { grads }
    }

    /// Which gradients are defined, in order.
    pub fn defined(&self) -> Vec<bool> {
        self.grads.iter().map(Tensor::defined).collect()
    }

    /// The gradient tensors, to be synchronised or rescaled in place (DDP).
    pub fn tensors_mut(&mut self) -> &mut [Tensor] {
        &mut self.grads
    }
}

/// AdamW over a fixed, name-sorted list of parameters.
pub struct AdamW {
    cfg: OptimConfig,
    params: Vec<ParamState>,
    step: u64,
    /// Reused for g² and the denominator: no allocation (and page faults) per step.
    scratch: Tensor,
}

impl AdamW {
    /// One state per named trainable tensor. Names are sorted so the order (and
    /// so any reduction over parameters) is the same on every run.
    pub fn new(named: impl IntoIterator<Item = (String, Tensor)>, cfg: &OptimConfig) -> Self {
        let named = trainable_sorted(named);
        let largest = named.iter().map(|(_, t)| t.numel()).max().unwrap_or(0);
        let device = named.first().map_or(tch::Device::Cpu, |(_, t)| t.device());
        let params = named
            .into_iter()
            .map(|(name, param)| ParamState {
                decay: decays(&name, &param, cfg),
                exp_avg: param.zeros_like(),
                exp_avg_sq: param.zeros_like(),
                name,
                param,
            })
            .collect();
        let scratch = Tensor::empty([largest as i64], (STATE_KIND, device));
        Self {
            cfg: cfg.clone(),
            params,
            step: 0,
            scratch,
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Names of parameters that receive weight decay (for logging and tests).
    pub fn decayed_names(&self) -> Vec<&str> {
        self.params
            .iter()
            .filter(|p| p.decay)
            .map(|p| p.name.as_str())
            .collect()
    }

    /// Backpropagates `loss` to the parameters and returns their gradients.
    pub fn backward(&self, loss: &Tensor) -> Gradients {
        self.backward_with(loss, &[]).0
    }

    /// Backpropagates `loss` to the parameters and to `leaves` (detached tensors requiring
    /// grad, e.g. a recomputed block's input): their gradients, each undefined where `loss`
    /// does not depend on it.
    pub fn backward_with(&self, loss: &Tensor, leaves: &[&Tensor]) -> (Gradients, Vec<Tensor>) {
        backward_to(loss, self.params.iter().map(|p| &p.param), leaves)
    }

    /// Clips `grads` to `grad_clip_norm` (if on) given their global `norm`, then
    /// applies one AdamW update at learning rate `lr` (fused when `optim.fused`).
    pub fn step(&mut self, grads: &mut Gradients, norm: f64, lr: f64) -> Result<(), FusedError> {
        self.step += 1;
        let update = Update::new(&self.cfg, self.step, norm, lr);
        if self.cfg.fused {
            let tensors = self.params.iter().zip(grads.grads.iter()).filter(|(_, g)| g.defined());
            return update.apply_fused(tensors.map(|(p, g)| (&p.param, g, &p.exp_avg, &p.exp_avg_sq, p.decay)));
        }
        tch::no_grad(|| {
            for (p, g) in self.params.iter_mut().zip(grads.grads.iter_mut()) {
                if g.defined() {
                    update.apply(
                        &mut p.param,
                        g,
                        &mut p.exp_avg,
                        &mut p.exp_avg_sq,
                        &self.scratch,
                        p.decay,
                    );
                }
            }
        });
        Ok(())
    }

    /// Named optimizer state tensors (`<param>.exp_avg`, `<param>.exp_avg_sq`), and
    /// the step count as a scalar int64 tensor under [`STEP_STATE_KEY`] (the bias
    /// corrections depend on it, so a restored optimizer needs it to step alike).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.params.len() * 2 + 1);
        for p in &self.params {
            out.push((format!("{}.exp_avg", p.name), p.exp_avg.shallow_clone()));
            out.push((format!("{}.exp_avg_sq", p.name), p.exp_avg_sq.shallow_clone()));
        }
        out.push((STEP_STATE_KEY.to_string(), Tensor::from(self.step as i64)));
        out
    }

    /// Restores the state written by [`AdamW::state_tensors`] (moments and step
    /// count). Every name must be present exactly once with the shape and dtype of
    /// this optimizer's state; otherwise nothing is changed and the error names
    /// the offending tensors. Tensors may come from another device (e.g. a CPU
    /// checkpoint into CUDA state): they are copied into the existing storage.
    pub fn load_state_tensors(&mut self, named: Vec<(String, Tensor)>) -> Result<(), OptimStateMismatch> {
        let destinations = self
            .params
            .iter()
            .flat_map(|p| {
                [
                    (format!("{}.exp_avg", p.name), p.exp_avg.shallow_clone()),
                    (format!("{}.exp_avg_sq", p.name), p.exp_avg_sq.shallow_clone()),
                ]
            })
            .collect();
        self.step = restore_state(named, destinations)?;
        Ok(())
    }
}

/// The trainable tensors of `named`, sorted by name: the optimizers' parameter order, the
/// same on every run and every rank.
pub(super) fn trainable_sorted(named: impl IntoIterator<Item = (String, Tensor)>) -> Vec<(String, Tensor)> {
    let mut named: Vec<_> = named.into_iter().filter(|(_, t)| t.requires_grad()).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Backpropagates `loss` to `params` and `leaves`: the parameters' [`Gradients`] and the
/// leaves' gradients, each undefined where `loss` does not depend on it.
pub(super) fn backward_to<'a>(
    loss: &Tensor,
    params: impl Iterator<Item = &'a Tensor>,
    leaves: &[&'a Tensor],
) -> (Gradients, Vec<Tensor>) {
    let inputs: Vec<&Tensor> = params.chain(leaves.iter().copied()).collect();
    let mut grads = Tensor::run_backward(&[loss], &inputs, false, false);
    let leaf_grads = grads.split_off(inputs.len() - leaves.len());
    (Gradients { grads }, leaf_grads)
}

/// One AdamW step's coefficients: clipping, learning rate, decay and bias corrections.
pub(super) struct Update {
    step: u64,
    clip: f64,
    lr: f64,
    weight_decay: f64,
    beta1: f64,
    beta2: f64,
    bias_correction2_sqrt: f64,
    step_size: f64,
    eps: f64,
}

impl Update {
    /// Step number `step` (1-based) at learning rate `lr`, the gradient's global `norm`
    /// clipped to `cfg.grad_clip_norm` (if on).
    pub(super) fn new(cfg: &OptimConfig, step: u64, norm: f64, lr: f64) -> Self {
        let max = cfg.grad_clip_norm;
        let clip = if max > 0.0 && norm.is_finite() && norm > max {
            max / (norm + 1e-6)
        } else {
            1.0
        };
        let t = step as i32;
        Update {
            step,
            clip,
            lr,
            weight_decay: cfg.weight_decay,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            bias_correction2_sqrt: (1.0 - cfg.beta2.powi(t)).sqrt(),
            step_size: lr / (1.0 - cfg.beta1.powi(t)),
            eps: cfg.eps,
        }
    }

    /// The same update with libtorch's fused kernel, over `(param, grad, exp_avg, exp_avg_sq,
    /// decay)` tuples (whole parameters or slices): one call for the decayed tensors, one
    /// for the others.
    pub(super) fn apply_fused<'a>(
        &self,
        tensors: impl Iterator<Item = (&'a Tensor, &'a Tensor, &'a Tensor, &'a Tensor, bool)>,
    ) -> Result<(), FusedError> {
        let (mut decayed, mut plain) = (FusedGroup::default(), FusedGroup::default());
        for (param, grad, exp_avg, exp_avg_sq, decay) in tensors {
            let group = if decay { &mut decayed } else { &mut plain };
            group.push(param, grad, exp_avg, exp_avg_sq);
        }
        let step = FusedStep {
            step: self.step,
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            grad_multiplier: self.clip,
        };
        tch::no_grad(|| {
            step.apply(&mut decayed, self.weight_decay)?;
            step.apply(&mut plain, 0.0)
        })
    }

    /// Updates `param` (and its moments) from its gradient `grad`, in place; `scratch` holds
    /// at least `grad.numel()` values. Element by element, so a slice of a parameter with
    /// the slices of its gradient and moments updates exactly as the whole would.
    pub(super) fn apply(
        &self,
        param: &mut Tensor,
        grad: &mut Tensor,
        exp_avg: &mut Tensor,
        exp_avg_sq: &mut Tensor,
        scratch: &Tensor,
        decay: bool,
    ) {
        if self.clip != 1.0 {
            // Out of place: autograd may hand back expanded (broadcast) views.
            *grad = &*grad * self.clip;
        }
        if decay && self.weight_decay > 0.0 {
            let _ = param.g_mul_scalar_(1.0 - self.lr * self.weight_decay);
        }
        let mut tmp = scratch.narrow(0, 0, grad.numel() as i64).view(grad.size().as_slice());
        let _ = exp_avg.lerp_(grad, 1.0 - self.beta1);
        let _ = grad.square_out(&tmp);
        let _ = exp_avg_sq.lerp_(&tmp, 1.0 - self.beta2);
        // tmp = -(sqrt(v)/bc2_sqrt + eps)/step_size, so addcdiv_ subtracts step_size·m/denom.
        let _ = exp_avg_sq.sqrt_out(&tmp);
        let _ = tmp
            .g_div_scalar_(self.bias_correction2_sqrt)
            .g_add_scalar_(self.eps)
            .g_mul_scalar_(-1.0 / self.step_size);
        let _ = param.addcdiv_(exp_avg, &tmp);
    }
}

/// Restores optimizer state: every name of `destinations` must be in `named` once with its
/// destination's shape and dtype, plus the step count under [`STEP_STATE_KEY`], and nothing
/// else; otherwise nothing is changed and the error names each offending tensor. Tensors may
/// come from another device: they are copied into the destinations' storage. Returns the
/// step count.
pub(super) fn restore_state(
    named: Vec<(String, Tensor)>,
    destinations: Vec<(String, Tensor)>,
) -> Result<u64, OptimStateMismatch> {
    let mut by_name: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, tensor) in named {
        if by_name.contains_key(&name) {
            problems.push(format!("{name}: given twice"));
        }
        by_name.insert(name, tensor);
    }
    let step = match by_name.remove(STEP_STATE_KEY) {
        None => {
            problems.push(format!("{STEP_STATE_KEY}: missing"));
            None
        }
        Some(t) if t.numel() != 1 || t.kind() != Kind::Int64 => {
            problems.push(format!(
                "{STEP_STATE_KEY}: expected one int64, got {:?} {:?}",
                t.kind(),
                t.size()
            ));
            None
        }
        Some(t) => {
            // Scalar or [1]: flatten so indexing works for both.
            let value = t.flatten(0, -1).int64_value(&[0]);
            match u64::try_from(value) {
                Ok(step) => Some(step),
                Err(_) => {
                    problems.push(format!("{STEP_STATE_KEY}: negative ({value})"));
                    None
                }
            }
        }
    };
    let mut copies = Vec::with_capacity(destinations.len());
    for (name, dst) in destinations {
        match by_name.remove(&name) {
            None => problems.push(format!("{name}: missing")),
            Some(src) if src.size() != dst.size() => {
                problems.push(format!("{name}: shape {:?}, expected {:?}", src.size(), dst.size()))
            }
            Some(src) if src.kind() != dst.kind() => {
                problems.push(format!("{name}: dtype {:?}, expected {:?}", src.kind(), dst.kind()))
            }
            Some(src) => copies.push((dst, src)),
        }
    }
    problems.extend(
        by_name
            .keys()
            .map(|name| format!("{name}: not a state of this optimizer")),
    );
    let Some(step) = step.filter(|_| problems.is_empty()) else {
        return Err(OptimStateMismatch { problems });
    };
    tch::no_grad(|| {
        for (mut dst, src) in copies {
            dst.copy_(&src);
        }
    });
    Ok(step)
}

/// Name of the step count among [`AdamW::state_tensors`]; every other name ends
/// in `.exp_avg` or `.exp_avg_sq`, so it cannot collide with a parameter's state.
pub const STEP_STATE_KEY: &str = "step";

/// Kind used for every optimizer state (fp32 master state).
pub const STATE_KIND: Kind = Kind::Float;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_groups_follow_names_and_dims() {
        let cfg = OptimConfig {
            decay_embeddings: false,
            ..OptimConfig::default()
        };
        let m = Tensor::zeros([4, 4], (Kind::Float, tch::Device::Cpu));
        let v = Tensor::zeros([4], (Kind::Float, tch::Device::Cpu));
        assert!(decays("visual.transformer.resblocks.0.attn.in_proj_weight", &m, &cfg));
        assert!(decays("visual.proj", &m, &cfg));
        assert!(!decays("visual.transformer.resblocks.0.attn.in_proj_bias", &v, &cfg));
        assert!(!decays("visual.transformer.resblocks.0.ln_1.weight", &v, &cfg));
        assert!(!decays("ln_final.weight", &v, &cfg));
        assert!(!decays("token_embedding.weight", &m, &cfg));
        assert!(!decays("positional_embedding", &m, &cfg));
        assert!(!decays("visual.positional_embedding", &m, &cfg));
        assert!(!decays("visual.class_embedding", &v, &cfg));
        let open_clip_rule = OptimConfig {
            decay_embeddings: true,
            ..cfg
        };
        assert!(decays("token_embedding.weight", &m, &open_clip_rule));
    }

    /// One AdamW step from zero state against the closed form:
    /// m = (1-b1)g, v = (1-b2)g², update = lr·m̂/(√v̂+eps) = lr·g/(|g|+eps).
    #[test]
    fn first_step_matches_closed_form() {
        let cfg = OptimConfig {
            weight_decay: 0.1,
            grad_clip_norm: 0.0,
            ..OptimConfig::default()
        };
        let p = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5])
            .view([2, 2])
            .set_requires_grad(true);
        let loss = (&p * &p).sum(Kind::Float); // grad = 2p
        let mut opt = AdamW::new([("w".to_string(), p.shallow_clone())], &cfg);
        let mut grads = opt.backward(&loss);
        let lr = 0.01;
        let norm = grads.norm();
        opt.step(&mut grads, norm, lr).expect("AdamW step");
        let got: Vec<f32> = p.flatten(0, -1).try_into().unwrap();
        for (x0, x) in [1.0f64, -2.0, 3.0, 0.5].iter().zip(got) {
            let g = 2.0 * x0;
            let expect = x0 * (1.0 - lr * 0.1) - lr * g / (g.abs() + 1e-6);
            assert!((expect - x as f64).abs() < 1e-6, "{expect} vs {x}");
        }
    }

    #[test]
    fn clipping_scales_gradients() {
        let cfg = OptimConfig {
            grad_clip_norm: 1.0,
            weight_decay: 0.0,
            ..OptimConfig::default()
        };
        let p = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        let mut opt = AdamW::new([("b".to_string(), p.shallow_clone())], &cfg);
        let mut grads = opt.backward(&(&p * 10.0).sum(Kind::Float)); // grad (10, 10), norm 14.14
        let norm = grads.norm();
        assert!((norm - 200f64.sqrt()).abs() < 1e-4);
        opt.step(&mut grads, norm, 0.1).expect("AdamW step");
        let g: Vec<f32> = grads.tensors()[0].shallow_clone().try_into().unwrap();
        let clipped = (g[0] as f64).hypot(g[1] as f64);
        assert!((clipped - 1.0).abs() < 1e-4, "clipped norm {clipped}");
    }

    #[test]
    fn accumulated_gradients_are_the_sum() {
        let p = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let opt = AdamW::new([("w".to_string(), p.shallow_clone())], &OptimConfig::default());
        let mut acc = opt.backward(&(&p * 3.0).sum(Kind::Float));
        acc.accumulate(&opt.backward(&(&p * &p).sum(Kind::Float)));
        let g: Vec<f32> = acc.tensors()[0].shallow_clone().try_into().unwrap();
        assert_eq!(g, [3.0 + 2.0, 3.0 + 4.0]);
    }

    /// Two parameters, a few steps of a fixed loss so the moments are non-trivial.
    fn trained_optimizer(steps: usize) -> (AdamW, Vec<Tensor>) {
        let cfg = OptimConfig {
            weight_decay: 0.1,
            ..OptimConfig::default()
        };
        let w = Tensor::from_slice(&[0.5f32, -1.5, 2.0, 0.25, 1.0, -0.75])
            .view([2, 3])
            .set_requires_grad(true);
        let b = Tensor::from_slice(&[0.1f32, -0.2]).set_requires_grad(true);
        let params = vec![w.shallow_clone(), b.shallow_clone()];
        let mut opt = AdamW::new([("w".to_string(), w), ("b".to_string(), b)], &cfg);
        for _ in 0..steps {
            take_step(&mut opt, &params);
        }
        (opt, params)
    }

    fn take_step(opt: &mut AdamW, params: &[Tensor]) {
        let x = Tensor::from_slice(&[1.0f32, -2.0, 0.5]);
        let y = params[0].mv(&x) + &params[1];
        let loss = (&y * &y).sum(Kind::Float) + params[0].sin().sum(Kind::Float);
        let mut grads = opt.backward(&loss);
        let norm = grads.norm();
        opt.step(&mut grads, norm, 1e-2).expect("AdamW step");
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        let v: Vec<f32> = t.flatten(0, -1).try_into().expect("f32 tensor");
        v.into_iter().map(f32::to_bits).collect()
    }

    #[test]
    fn restored_state_takes_bitwise_the_same_next_step() {
        let (mut original, original_params) = trained_optimizer(3);
        // A fresh optimizer over copies of the same weights, given the saved state
        // (deep copies, as a checkpoint round trip would give).
        let copied_params: Vec<Tensor> = original_params
            .iter()
            .map(|p| p.detach().copy().set_requires_grad(true))
            .collect();
        let mut restored = AdamW::new(
            [
                ("w".to_string(), copied_params[0].shallow_clone()),
                ("b".to_string(), copied_params[1].shallow_clone()),
            ],
            &OptimConfig {
                weight_decay: 0.1,
                ..OptimConfig::default()
            },
        );
        let saved: Vec<(String, Tensor)> = original
            .state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        restored.load_state_tensors(saved).expect("state matches");
        assert_eq!(restored.steps(), 3);

        take_step(&mut original, &original_params);
        take_step(&mut restored, &copied_params);
        for (a, b) in original_params.iter().zip(&copied_params) {
            assert_eq!(bits(a), bits(b));
        }
        for ((na, a), (nb, b)) in original.state_tensors().iter().zip(restored.state_tensors().iter()) {
            assert_eq!(na, nb);
            if na != STEP_STATE_KEY {
                assert_eq!(bits(a), bits(b), "{na}");
            }
        }
    }

    #[test]
    fn mismatched_state_is_named_and_nothing_changes() {
        let (source, _) = trained_optimizer(2);
        let (mut target, _) = trained_optimizer(0);
        let mut state = source.state_tensors();
        state.retain(|(n, _)| n != "b.exp_avg");
        for (n, t) in state.iter_mut() {
            if n == "w.exp_avg_sq" {
                *t = Tensor::zeros([3, 2], (Kind::Float, tch::Device::Cpu));
            }
            if n == "w.exp_avg" {
                *t = t.to_kind(Kind::Double);
            }
        }
        state.push((
            "logit_scale.exp_avg".into(),
            Tensor::zeros([], (Kind::Float, tch::Device::Cpu)),
        ));
        let err = target.load_state_tensors(state).expect_err("mismatch").to_string();
        for needle in [
            "b.exp_avg: missing",
            "w.exp_avg_sq: shape [3, 2]",
            "w.exp_avg: dtype Double",
            "logit_scale.exp_avg",
        ] {
            assert!(err.contains(needle), "{needle} not in {err}");
        }
        assert_eq!(target.steps(), 0);
        let untouched = target.state_tensors();
        assert!(untouched.iter().filter(|(n, _)| n != STEP_STATE_KEY).all(|(_, t)| t
            .abs()
            .sum(Kind::Float)
            .double_value(&[])
            == 0.0));

        let mut no_step = source.state_tensors();
        no_step.retain(|(n, _)| n != STEP_STATE_KEY);
        let err = target.load_state_tensors(no_step).expect_err("no step").to_string();
        assert!(err.contains("step: missing"), "{err}");
    }

    #[test]
    fn validate_names_field() {
        let cfg = OptimConfig {
            beta2: 1.5,
            ..OptimConfig::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("optim.beta2"), "{e}");
    }
}
