//! Which contrastive loss a run trains with ([`LossKind`], the config's `loss`), and the
//! entry points that compute it over the global batch: gathered ([`super::global`]) or
//! ring-tiled ([`super::tiled`]) as `loss_tile` says.

use tch::Tensor;

use super::global::{clip_share_grads, siglip_share_grads};
use super::grads::FeatureGrads;
use crate::dist::{Collective, DistError};

/// Which contrastive loss a run trains with (the train config's `loss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Softmax cross-entropy both ways (CLIP).
    #[default]
    Clip,
    /// Pairwise sigmoid loss (SigLIP); needs a model with `init_logit_bias`.
    Siglip,
}

impl LossKind {
    /// This rank's part of the loss over the global batch: [`global_siglip_loss`] for
    /// `Siglip` with a bias, else [`global_clip_loss`]. Every rank must call it.
    pub fn global_loss(
        self,
        image_features: &Tensor,
        text_features: &Tensor,
        logit_scale: &Tensor,
        logit_bias: Option<&Tensor>,
        coll: &dyn Collective,
    ) -> Result<RankLoss, DistError> {
        let loss = self.feature_grads(image_features, text_features, logit_scale, logit_bias, 0, coll)?;
        let surrogate = loss
            .grads
            .surrogate(image_features, text_features, logit_scale, logit_bias);
        Ok(RankLoss {
            global_loss: loss.global_loss,
            share: loss.share,
            surrogate,
        })
    }

    /// The loss over the global batch and ∂L/∂(this rank's features): untiled
    /// (`tile = 0`: gather, B×N logits, reduce-scatter) or ring-tiled with `tile × tile`
    /// logits at a time ([`super::tiled`]); the same numbers either way. The features may
    /// be detached (their gradients are returned, not backpropagated). Collective.
    pub fn feature_grads(
        self,
        image_features: &Tensor,
        text_features: &Tensor,
        logit_scale: &Tensor,
        logit_bias: Option<&Tensor>,
        tile: usize,
        coll: &dyn Collective,
    ) -> Result<LossGrads, DistError> {
        let (share, grads) = match (self, logit_bias, tile) {
            (LossKind::Siglip, Some(bias), 0) => {
                let shares = siglip_share_grads(image_features, text_features, logit_scale, bias, coll)?;
                (shares.share, shares.exchange_columns(coll)?)
            }
            (LossKind::Siglip, Some(bias), tile) => {
                super::tiled::siglip_feature_grads(image_features, text_features, logit_scale, bias, tile, coll)?
            }
            (_, _, 0) => {
                let shares = clip_share_grads(image_features, text_features, logit_scale, coll)?;
                (shares.share, shares.exchange_columns(coll)?)
            }
            (_, _, tile) => super::tiled::clip_feature_grads(image_features, text_features, logit_scale, tile, coll)?,
        };
        let mut global = Tensor::from_slice(&[share]).to_device(image_features.device());
        coll.all_reduce_sum_(&mut global)?;
        Ok(LossGrads {
            global_loss: global.double_value(&[0]),
            share,
            grads,
        })
    }
}

/// A global-batch loss before the backward pass into the encoders.
#[derive(Debug)]
pub struct LossGrads {
    /// The loss over the global batch (the same value on every rank).
    pub global_loss: f64,
    /// This rank's share ℓ_r of the global loss (Σ_r ℓ_r = `global_loss`).
    pub share: f64,
    /// ∂L/∂(this rank's features), and its share of the scale and bias derivatives.
    pub grads: FeatureGrads,
}

/// What a rank gets from a global-batch loss.
#[derive(Debug)]
pub struct RankLoss {
    /// The loss over the global batch (the same value on every rank).
    pub global_loss: f64,
    /// This rank's share ℓ_r of the global loss (Σ_r ℓ_r = `global_loss`).
    pub share: f64,
    /// A 0-dim tensor to backpropagate into the encoders, logit scale and bias;
    /// its parameter gradients summed over ranks are the gradient of the global
    /// loss. Its value has no meaning.
    pub surrogate: Tensor,
}

/// The CLIP loss over the global batch (open_clip's `ClipLoss` with
/// `gather_with_grad`, `local_loss=False`): ½[CE(s·I·Tᵀ) + CE(s·T·Iᵀ)] averaged
/// over all N rows. `image_features`, `text_features` (B, D) are this rank's
/// L2-normalised, graph-connected features; `logit_scale` is exp(log scale), 0-dim.
pub fn global_clip_loss(
    image_features: &Tensor,
    text_features: &Tensor,
    logit_scale: &Tensor,
    coll: &dyn Collective,
) -> Result<RankLoss, DistError> {
    LossKind::Clip.global_loss(image_features, text_features, logit_scale, None, coll)
}

/// The sigmoid loss over the global batch (open_clip's `SigLipLoss`):
/// −Σ_{i,j} log σ(z_ij·(s·I_i·T_j + b)) / N over all N² pairs, z = +1 on matching
/// pairs and −1 elsewhere. Inputs as in [`global_clip_loss`], plus the logit bias (0-dim).
pub fn global_siglip_loss(
    image_features: &Tensor,
    text_features: &Tensor,
    logit_scale: &Tensor,
    logit_bias: &Tensor,
    coll: &dyn Collective,
) -> Result<RankLoss, DistError> {
    LossKind::Siglip.global_loss(image_features, text_features, logit_scale, Some(logit_bias), coll)
}
