//! The contrastive losses of one process's batch: CLIP's (open_clip's `ClipLoss` in a
//! world of one process) and SigLIP's. They are the definitions the global-batch
//! versions in [`super::global`] distribute, and the references their tests compare to.

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

/// The sigmoid loss of one process's whole batch (the world-of-one definition
/// that [`super::global::global_siglip_loss`] distributes): −Σ log σ(z·(s·I·Tᵀ + b)) / B.
pub fn siglip_loss(
    image_features: &Tensor,
    text_features: &Tensor,
    logit_scale: &Tensor,
    logit_bias: &Tensor,
) -> Tensor {
    let batch = image_features.size()[0];
    let logits = image_features.matmul(&text_features.tr()) * logit_scale + logit_bias; // (B, B)
    let signs = pair_signs(batch, batch, 0, &logits);
    -(&logits * signs).log_sigmoid().sum(accumulation_kind(&logits)) / batch as f64
}

/// Sums run in f64 for f64 inputs and in f32 otherwise (also for bf16/f16 features).
pub(super) fn accumulation_kind(t: &Tensor) -> Kind {
    if t.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// (B, N) with +1 where column = r·B + row (the matching pair), −1 elsewhere; kind of `like`.
pub(super) fn pair_signs(rows: i64, columns: i64, rank: usize, like: &Tensor) -> Tensor {
    let device = like.device();
    let own = own_columns(rows, rank, device).unsqueeze(1); // (B, 1)
    let all = Tensor::arange(columns, (Kind::Int64, device)).unsqueeze(0); // (1, N)
    own.eq_tensor(&all).to_kind(like.kind()) * 2.0 - 1.0
}

/// Column index of each of this rank's rows in the gathered batch: r·B + arange(B).
pub(super) fn own_columns(rows: i64, rank: usize, device: tch::Device) -> Tensor {
    Tensor::arange(rows, (Kind::Int64, device)) + rank as i64 * rows
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
