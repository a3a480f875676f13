//! The CLIP contrastive loss (open_clip's `ClipLoss` in a world of one process;
//! the distributed version with global-batch columns builds on it).

use tch::{Kind, Tensor};

/// ½[CE(s·I·Tᵀ, arange) + CE(s·T·Iᵀ, arange)]: the mean image→text and
/// text→image cross-entropies, where row i of `image_features` (B, E) and of
/// `text_features` (B, E) are a pair. Features are expected L2-normalised;
/// `logit_scale` is exp(learned log temperature), a 0-dim tensor. Returns a 0-dim tensor.
pub fn clip_loss(image_features: &Tensor, text_features: &Tensor, logit_scale: &Tensor) -> Tensor {
    let batch = image_features.size()[0];
    let labels = Tensor::arange(batch, (Kind::Int64, image_features.device()));
    let logits_per_image = image_features.matmul(&text_features.tr()) * logit_scale; // (B, B)
    let logits_per_text = text_features.matmul(&image_features.tr()) * logit_scale; // (B, B)
    (logits_per_image.cross_entropy_for_logits(&labels) + logits_per_text.cross_entropy_for_logits(&labels)) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(rows: &[f32], dim: i64) -> Tensor {
        crate::model::l2_normalize(&Tensor::from_slice(rows).view([-1, dim]))
    }

    #[test]
    fn matches_hand_computed_value() {
        // Two orthogonal pairs: the logits are s on the diagonal and 0 off it, so
        // every row's CE is -log(e^s / (e^s + 1)) = ln(1 + e^-s), in both directions.
        let img = normalized(&[1.0, 0.0, 0.0, 1.0], 2);
        let txt = normalized(&[1.0, 0.0, 0.0, 1.0], 2);
        let s = Tensor::from(10.0f32);
        let got = clip_loss(&img, &txt, &s).double_value(&[]);
        let want = (1.0 + (-10.0f64).exp()).ln();
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn asymmetric_case_averages_both_directions() {
        let img = normalized(&[1.0, 0.0, 0.6, 0.8], 2);
        let txt = normalized(&[0.8, 0.6, 0.0, 1.0], 2);
        let s = Tensor::from(3.0f32);
        let logits = img.matmul(&txt.tr()) * 3.0;
        // Row-wise CE by hand from log-softmax.
        let ce = |l: &Tensor| -> f64 {
            let ls = l.log_softmax(-1, Kind::Float);
            -(ls.get(0).get(0).double_value(&[]) + ls.get(1).get(1).double_value(&[])) / 2.0
        };
        let want = (ce(&logits) + ce(&logits.tr())) / 2.0;
        let got = clip_loss(&img, &txt, &s).double_value(&[]);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}
