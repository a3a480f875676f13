//! An exponential moving average of the weights (`optim.ema_decay`): after every optimizer
//! step that updated the weights, `ema ← d·ema + (1 − d)·w` for every trainable tensor.
//! Every rank holds it (the weights are the same on every rank); rank 0 saves it as
//! `ema.safetensors` in checkpoints and in the run folder, under the model's tensor names,
//! so it loads wherever weights load (`ferroclip eval --ema`, `export --ema`).
use tch::{Kind, Tensor};

use super::OptimStateMismatch;

/// The file the average is saved as, next to `model.safetensors`.
pub const EMA_FILE: &str = "ema.safetensors";

/// The moving average of a model's trainable tensors.
pub struct Ema {
    decay: f64,
    /// (name, parameter, average) of the trainable tensors, sorted by name.
    tensors: Vec<(String, Tensor, Tensor)>,
    /// The other variables (buffers), saved as they are so the file is a whole model.
    frozen: Vec<(String, Tensor)>,
}

impl Ema {
    /// An average with decay `decay` that starts at the current values of `named`'s
    /// trainable tensors.
    pub fn new(named: impl IntoIterator<Item = (String, Tensor)>, decay: f64) -> Self {
        let (trainable, frozen): (Vec<_>, Vec<_>) = named.into_iter().partition(|(_, t)| t.requires_grad());
        let tensors = super::adamw::trainable_sorted(trainable)
            .into_iter()
            .map(|(name, param)| {
                let average = param.detach().to_kind(Kind::Float).copy();
                (name, param, average)
            })
            .collect();
        Self { decay, tensors, frozen }
    }

    /// Folds the parameters' current values in: `ema ← d·ema + (1 − d)·w`.
    pub fn update(&mut self) {
        let _guard = tch::no_grad_guard();
        for (_, param, average) in &mut self.tensors {
            // lerp_(w, 1 − d) = ema + (1 − d)(w − ema): one kernel, as torch's EMA helpers do.
            let _ = average.lerp_(&param.detach().to_kind(Kind::Float), 1.0 - self.decay);
        }
    }

    /// Sets the average to the parameters' current values (a run that starts its average
    /// from weights it resumed or was initialised with).
    pub fn reset_to_params(&mut self) {
        let _guard = tch::no_grad_guard();
        for (_, param, average) in &mut self.tensors {
            average.copy_(&param.detach().to_kind(Kind::Float));
        }
    }

    /// The averaged model by name, in the parameters' dtype, on the CPU: the averages of the
    /// trainable tensors and the other variables as they are (what `ema.safetensors` holds,
    /// loadable wherever `model.safetensors` is).
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let averages = self
            .tensors
            .iter()
            .map(|(name, param, average)| (name.clone(), average.to_kind(param.kind())));
        let frozen = self.frozen.iter().map(|(name, t)| (name.clone(), t.detach()));
        averages
            .chain(frozen)
            .map(|(name, t)| (name, t.to_device(tch::Device::Cpu).contiguous()))
            .collect()
    }

    /// Restores saved averages; every trainable tensor must be there with the parameter's
    /// shape (the buffers in the file are not read).
    pub fn load(&mut self, saved: Vec<(String, Tensor)>) -> Result<(), OptimStateMismatch> {
        let saved: std::collections::HashMap<String, Tensor> = saved.into_iter().collect();
        let problems: Vec<String> = self
            .tensors
            .iter()
            .filter_map(|(name, param, _)| match saved.get(name) {
                None => Some(format!("ema {name}: missing")),
                Some(t) if t.size() != param.size() => {
                    Some(format!("ema {name}: shape {:?}, expected {:?}", t.size(), param.size()))
                }
                Some(_) => None,
            })
            .collect();
        if !problems.is_empty() {
            return Err(OptimStateMismatch { problems });
        }
        let _guard = tch::no_grad_guard();
        for (name, _, average) in &mut self.tensors {
            average.copy_(&saved[name.as_str()].to_kind(Kind::Float).to_device(average.device()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_average_follows_the_formula_and_round_trips() {
        let mut w = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let frozen = Tensor::from_slice(&[5.0f32]);
        let mut ema = Ema::new([("w".to_string(), w.shallow_clone()), ("f".to_string(), frozen)], 0.9);
        let named = ema.named();
        assert_eq!(named.len(), 2, "the buffer is saved too");
        assert_eq!(named[1].0, "f");
        tch::no_grad(|| w.copy_(&Tensor::from_slice(&[11.0f32, 12.0])));
        ema.update();
        // 0.9 * [1, 2] + 0.1 * [11, 12] = [2, 3]
        let got = Vec::<f32>::try_from(&ema.named()[0].1).unwrap();
        assert!((got[0] - 2.0).abs() < 1e-6 && (got[1] - 3.0).abs() < 1e-6, "{got:?}");
        let saved = ema.named();
        let mut other = Ema::new([("w".to_string(), w.shallow_clone())], 0.9);
        other.load(saved).unwrap();
        assert_eq!(Vec::<f32>::try_from(&other.named()[0].1).unwrap(), got);
        let err = other.load(vec![("v".into(), Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)))]);
        assert!(err.unwrap_err().to_string().contains("ema w: missing"));
    }
}
