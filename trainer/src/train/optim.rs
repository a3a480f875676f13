//! AdamW with decoupled weight decay, written over tch tensors so its state is
//! plain named tensors (checkpointable as safetensors, unlike libtorch's C++
//! optimizer that tch wraps).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::TrainError;

/// The `[optim]` section of a train config. Defaults are open_clip's for ViTs.
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
    /// Clip the global gradient L2 norm to this value; 0 disables clipping.
    pub grad_clip_norm: f64,
    /// Also decay `token_embedding`/`positional_embedding`. open_clip decays every
    /// tensor with ≥ 2 dims, embeddings included; ferroclip's default leaves
    /// embeddings undecayed, as they are lookups rather than linear maps.
    pub decay_embeddings: bool,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 5e-4,
            weight_decay: 0.2,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            grad_clip_norm: 1.0,
            decay_embeddings: false,
        }
    }
}

impl OptimConfig {
    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |field: &str, why: String| Err(TrainError::Config(format!("optim.{field}: {why}")));
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
/// the class token, `logit_scale` (and embeddings unless `decay_embeddings`) don't.
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
        let mut named: Vec<_> = named.into_iter().filter(|(_, t)| t.requires_grad()).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
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
        let params: Vec<&Tensor> = self.params.iter().map(|p| &p.param).collect();
        Gradients {
            grads: Tensor::run_backward(&[loss], &params, false, false),
        }
    }

    /// Clips `grads` to `grad_clip_norm` (if on) given their global `norm`, then
    /// applies one AdamW update at learning rate `lr`.
    pub fn step(&mut self, grads: &mut Gradients, norm: f64, lr: f64) {
        tch::no_grad(|| {
            let max = self.cfg.grad_clip_norm;
            let clip = if max > 0.0 && norm.is_finite() && norm > max {
                max / (norm + 1e-6)
            } else {
                1.0
            };
            self.step += 1;
            let t = self.step as i32;
            let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
            let bc1 = 1.0 - b1.powi(t);
            let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
            let step_size = lr / bc1;
            for (p, g) in self.params.iter_mut().zip(grads.grads.iter_mut()) {
                if !g.defined() {
                    continue;
                }
                if clip != 1.0 {
                    // Out of place: autograd may hand back expanded (broadcast) views.
                    *g = &*g * clip;
                }
                if p.decay && self.cfg.weight_decay > 0.0 {
                    let _ = p.param.g_mul_scalar_(1.0 - lr * self.cfg.weight_decay);
                }
                let mut tmp = self.scratch.narrow(0, 0, g.numel() as i64).view(g.size().as_slice());
                let _ = p.exp_avg.lerp_(g, 1.0 - b1);
                let _ = g.square_out(&tmp);
                let _ = p.exp_avg_sq.lerp_(&tmp, 1.0 - b2);
                // tmp = -(sqrt(v)/bc2_sqrt + eps)/step_size, so addcdiv_ subtracts step_size·m/denom.
                let _ = p.exp_avg_sq.sqrt_out(&tmp);
                let _ = tmp
                    .g_div_scalar_(bc2_sqrt)
                    .g_add_scalar_(self.cfg.eps)
                    .g_mul_scalar_(-1.0 / step_size);
                let _ = p.param.addcdiv_(&p.exp_avg, &tmp);
            }
        });
    }

    /// Named optimizer state tensors (`<param>.exp_avg`, `<param>.exp_avg_sq`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.params.len() * 2);
        for p in &self.params {
            out.push((format!("{}.exp_avg", p.name), p.exp_avg.shallow_clone()));
            out.push((format!("{}.exp_avg_sq", p.name), p.exp_avg_sq.shallow_clone()));
        }
        out
    }
}

/// Kind used for every optimizer state (fp32 master state).
pub const STATE_KIND: Kind = Kind::Float;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_groups_follow_names_and_dims() {
        let cfg = OptimConfig::default();
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
        opt.step(&mut grads, norm, lr);
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
        opt.step(&mut grads, norm, 0.1);
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
