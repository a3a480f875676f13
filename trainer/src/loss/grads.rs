//! What a global-batch loss hands the backward pass: ∂L/∂(this rank's features) and its
//! share of the scale and bias derivatives ([`FeatureGrads`]), however it was computed
//! (gathered in [`super::global`], ring-tiled in [`super::tiled`]).

use tch::Tensor;

use super::local::accumulation_kind;
use crate::dist::{Collective, DistError};

/// ∂L/∂(this rank's features) for the global loss L, plus this rank's share of
/// the scale and bias derivatives.
#[derive(Debug)]
pub struct FeatureGrads {
    /// ∂L/∂(local image features), (B, D).
    pub image: Tensor,
    /// ∂L/∂(local text features), (B, D).
    pub text: Tensor,
    /// ∂ℓ_r/∂(logit scale), 0-dim.
    pub logit_scale: Tensor,
    /// ∂ℓ_r/∂(logit bias), 0-dim.
    pub logit_bias: Option<Tensor>,
}

impl FeatureGrads {
    /// The gradients of rows `start..start + len` (a micro-batch of cached features), with
    /// the scale and bias derivatives when `with_scalars` (one micro-batch carries them) and
    /// zeros otherwise.
    pub fn rows(&self, start: i64, len: i64, with_scalars: bool) -> FeatureGrads {
        let scalar = |t: &Tensor| {
            if with_scalars {
                t.shallow_clone()
            } else {
                t.zeros_like()
            }
        };
        FeatureGrads {
            image: self.image.narrow(0, start, len),
            text: self.text.narrow(0, start, len),
            logit_scale: scalar(&self.logit_scale),
            logit_bias: self.logit_bias.as_ref().map(scalar),
        }
    }

    /// `(img·gI).sum() + (txt·gT).sum() + s·g_s (+ b·g_b)`: its backward puts
    /// the given gradients into whatever produced `image_features`,
    /// `text_features`, `logit_scale` and `logit_bias` (the graph-connected
    /// tensors the shares were computed from).
    pub fn surrogate(
        &self,
        image_features: &Tensor,
        text_features: &Tensor,
        logit_scale: &Tensor,
        logit_bias: Option<&Tensor>,
    ) -> Tensor {
        self.image_surrogate(image_features) + self.rest_surrogate(text_features, logit_scale, logit_bias)
    }

    /// The image tower's term of [`FeatureGrads::surrogate`], `(img·gI).sum()`: backpropagated
    /// alone, it reaches the image tower only (the overlapped step's first backward pass).
    pub fn image_surrogate(&self, image_features: &Tensor) -> Tensor {
        (image_features * &self.image).sum(accumulation_kind(image_features))
    }

    /// The other terms of [`FeatureGrads::surrogate`]: the text features', the scale's and
    /// the bias's.
    pub fn rest_surrogate(&self, text_features: &Tensor, logit_scale: &Tensor, logit_bias: Option<&Tensor>) -> Tensor {
        let kind = accumulation_kind(text_features);
        let mut total = (text_features * &self.text).sum(kind) + (logit_scale * &self.logit_scale).sum(kind);
        if let (Some(bias), Some(grad)) = (logit_bias, &self.logit_bias) {
            total += (bias * grad).sum(kind);
        }
        total
    }
}

/// Checks the feature shapes; returns (B, N).
pub fn check_features(
    op: &'static str,
    image_features: &Tensor,
    text_features: &Tensor,
    coll: &dyn Collective,
) -> Result<(i64, i64), DistError> {
    let (image_shape, text_shape) = (image_features.size(), text_features.size());
    if image_shape.len() != 2 || image_shape != text_shape {
        return Err(DistError::Tensor {
            op,
            reason: format!("image features {image_shape:?} and text features {text_shape:?} must both be (B, D)"),
        });
    }
    let rows = image_shape[0];
    Ok((rows, rows * coll.world_size() as i64))
}
