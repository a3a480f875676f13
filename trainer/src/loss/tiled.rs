//! The global-batch losses without the B×N logit matrix and without gathering the N×D
//! features: the ring-tiled form (docs/architecture.md §3, "Tiled loss"), after Inf-CL
//! (arXiv 2410.17243).
//!
//! Rank r owns R rows (its image and text features). The other ranks' features come to it
//! one block of R rows at a time, around a ring ([`Collective::ring_pass`]), and every
//! block is met tile by tile: logits are made for `tile × tile` pairs at a time and
//! dropped. So a rank holds its own rows, one visiting block (features and the gradients
//! that travel with it) and one tile of logits: O(R·D + tile²) memory, whatever the
//! number of ranks.
//!
//! CLIP needs, for each of r's rows, the log-sum-exp over *all* N columns before any
//! gradient can be formed (softmax), so it goes around twice:
//!
//! 1. *Forward*: the features of every rank visit r (W − 1 passes); an online log-sum-exp
//!    per row, in both directions (r's image rows against text columns, r's text rows
//!    against image columns), so no rank ever needs another rank's statistics.
//! 2. *Backward*: the blocks go around again, each with a gradient accumulator for its
//!    columns; tile by tile the softmax is recomputed from the saved log-sum-exp, r's row
//!    gradients stay with r, and the column gradients are added to the visiting block's
//!    accumulator, which arrives back at its owner after W passes, summed over every rank's
//!    rows.
//!
//! SigLIP's terms are pairwise and need no normalisation, so one pass does both (only the
//! text features and their gradients travel, as the untiled form gathers only text).
//!
//! The results are those of [`super::global`]'s untiled functions (loss, feature gradients,
//! scale and bias derivatives), up to floating-point summation order.

use tch::{Kind, Tensor};

use super::grads::{check_features, FeatureGrads};
use super::local::accumulation_kind;
use crate::dist::{Collective, DistError};

/// Tile `[start, start + len)` of `0..rows`, `tile` rows at a time (the last one shorter).
fn tiles(rows: i64, tile: i64) -> impl Iterator<Item = (i64, i64)> {
    (0..rows)
        .step_by(tile.max(1) as usize)
        .map(move |start| (start, tile.min(rows - start)))
}

/// The next ring position's `[images, texts]` block (or gradients), received from rank r − 1.
fn pass_on(block: [Tensor; 2], coll: &dyn Collective) -> Result<[Tensor; 2], DistError> {
    let [image, text] = block;
    Ok([coll.ring_pass(&image)?, coll.ring_pass(&text)?])
}

/// The log-sum-exp of each row over logits met a tile at a time (running maximum and the
/// sum of exponentials relative to it).
struct RowLogSumExp {
    max: Tensor,
    sum: Tensor,
}

impl RowLogSumExp {
    fn new(rows: i64, like: &Tensor) -> Self {
        Self {
            max: Tensor::full([rows], f64::NEG_INFINITY, (like.kind(), like.device())),
            sum: Tensor::zeros([rows], (like.kind(), like.device())),
        }
    }

    /// Takes in `logits` (rows `start..start+len` against some columns).
    fn update(&mut self, start: i64, logits: &Tensor) {
        let len = logits.size()[0];
        let mut max = self.max.narrow(0, start, len);
        let mut sum = self.sum.narrow(0, start, len);
        let new_max = max.maximum(&logits.amax([1i64].as_slice(), false));
        let rescaled = &sum * (&max - &new_max).exp();
        let added = (logits - new_max.unsqueeze(1))
            .exp()
            .sum_dim_intlist([1i64].as_slice(), false, None::<Kind>);
        sum.copy_(&(rescaled + added));
        max.copy_(&new_max);
    }

    fn finish(self) -> Tensor {
        self.max + self.sum.log()
    }
}

/// The CLIP loss over the global batch, ring-tiled: this rank's share ℓ_r of the loss and
/// ∂L/∂(its features) with its share of ∂/∂s — what [`super::global::clip_share_grads`]
/// followed by the column exchange gives, without the B×N logits. Collective.
pub fn clip_feature_grads(
    image_features: &Tensor,
    text_features: &Tensor,
    logit_scale: &Tensor,
    tile: usize,
    coll: &dyn Collective,
) -> Result<(f64, FeatureGrads), DistError> {
    let (rows, global) = check_features("tiled_clip_loss", image_features, text_features, coll)?;
    let (img, txt) = (image_features.detach(), text_features.detach());
    let scale = logit_scale.detach().to_kind(img.kind());
    let tile = tile as i64;
    let passes = coll.world_size();

    // Forward: every row's log-sum-exp over all N columns, both directions.
    let mut lse_image = RowLogSumExp::new(rows, &img);
    let mut lse_text = RowLogSumExp::new(rows, &img);
    let mut block = [img.shallow_clone(), txt.shallow_clone()]; // a visiting rank's images, texts
    for pass in 0..passes {
        let [block_img, block_txt] = &block;
        for (a, a_len) in tiles(rows, tile) {
            let (img_a, txt_a) = (img.narrow(0, a, a_len), txt.narrow(0, a, a_len));
            for (b, b_len) in tiles(rows, tile) {
                lse_image.update(a, &(img_a.matmul(&block_txt.narrow(0, b, b_len).tr()) * &scale));
                lse_text.update(a, &(txt_a.matmul(&block_img.narrow(0, b, b_len).tr()) * &scale));
            }
        }
        if pass + 1 < passes {
            block = pass_on(block, coll)?;
        }
    }
    let (lse_image, lse_text) = (lse_image.finish(), lse_text.finish());
    let pair_dots = (&img * &txt).sum_dim_intlist([1i64].as_slice(), false, None::<Kind>); // I_i·T_i
    let kind = accumulation_kind(&img);
    let share = (lse_image.sum(kind) + lse_text.sum(kind) - &scale * pair_dots.sum(kind) * 2.0) / (2.0 * global as f64);

    // Backward: softmax recomputed tile by tile; row gradients stay here, column gradients
    // travel with their block and come home after W passes.
    let mut image = img.zeros_like(); // ∂/∂(own image rows), unnormalised until the end
    let mut text = txt.zeros_like();
    let mut scale_grad = Tensor::zeros([], (kind, img.device()));
    let mut block = [img.shallow_clone(), txt.shallow_clone()];
    let mut block_grads = [img.zeros_like(), txt.zeros_like()]; // ∂/∂(visiting images, texts)
    for pass in 0..passes {
        let ([block_img, block_txt], [grad_img, grad_txt]) = (&block, &block_grads);
        for (a, a_len) in tiles(rows, tile) {
            let (img_a, txt_a) = (img.narrow(0, a, a_len), txt.narrow(0, a, a_len));
            let (lse_img_a, lse_txt_a) = (lse_image.narrow(0, a, a_len), lse_text.narrow(0, a, a_len));
            for (b, b_len) in tiles(rows, tile) {
                let (img_b, txt_b) = (block_img.narrow(0, b, b_len), block_txt.narrow(0, b, b_len));
                // r's image rows against the visiting texts: p = softmax over all columns.
                let dots = img_a.matmul(&txt_b.tr());
                let p = (&dots * &scale - lse_img_a.unsqueeze(1)).exp();
                let _ = image.narrow(0, a, a_len).g_add_(&(p.matmul(&txt_b) * &scale));
                let _ = grad_txt.narrow(0, b, b_len).g_add_(&(p.tr().matmul(&img_a) * &scale));
                scale_grad += (&p * &dots).sum(kind);
                // r's text rows against the visiting images.
                let dots = txt_a.matmul(&img_b.tr());
                let q = (&dots * &scale - lse_txt_a.unsqueeze(1)).exp();
                let _ = text.narrow(0, a, a_len).g_add_(&(q.matmul(&img_b) * &scale));
                let _ = grad_img.narrow(0, b, b_len).g_add_(&(q.tr().matmul(&txt_a) * &scale));
                scale_grad += (&q * &dots).sum(kind);
            }
        }
        if pass + 1 < passes {
            block = pass_on(block, coll)?;
            block_grads = pass_on(block_grads, coll)?;
        }
    }
    // The last pass brings block_grads home: this rank's own columns, summed over every
    // rank's rows (in a world of one they never left). The pair terms −s·I_i·T_i (both
    // directions) add −2s·T_i to ∂/∂I_i and −2s·I_i to ∂/∂T_i. In place: no second copy.
    if passes > 1 {
        block_grads = pass_on(block_grads, coll)?;
    }
    let [home_img, home_txt] = &block_grads;
    let norm = 1.0 / (2.0 * global as f64);
    let _ = image
        .g_add_(home_img)
        .g_sub_(&(&txt * (&scale * 2.0)))
        .g_mul_scalar_(norm);
    let _ = text
        .g_add_(home_txt)
        .g_sub_(&(&img * (&scale * 2.0)))
        .g_mul_scalar_(norm);
    let logit_scale_grad = ((scale_grad - pair_dots.sum(kind) * 2.0) * norm).to_kind(logit_scale.kind());
    Ok((
        share.double_value(&[]),
        FeatureGrads {
            image,
            text,
            logit_scale: logit_scale_grad,
            logit_bias: None,
        },
    ))
}

/// The sigmoid loss over the global batch, ring-tiled: this rank's share and feature
/// gradients, what [`super::global::siglip_share_grads`] followed by the column exchange
/// gives. Only the text features (and their gradients) travel. Collective.
pub fn siglip_feature_grads(
    image_features: &Tensor,
    text_features: &Tensor,
    logit_scale: &Tensor,
    logit_bias: &Tensor,
    tile: usize,
    coll: &dyn Collective,
) -> Result<(f64, FeatureGrads), DistError> {
    let (rows, global) = check_features("tiled_siglip_loss", image_features, text_features, coll)?;
    let (img, txt) = (image_features.detach(), text_features.detach());
    let scale = logit_scale.detach().to_kind(img.kind());
    let bias = logit_bias.detach().to_kind(img.kind());
    let kind = accumulation_kind(&img);
    let (tile, world) = (tile as i64, coll.world_size());

    let mut loss = Tensor::zeros([], (kind, img.device()));
    let image_rows = img.zeros_like();
    let (mut scale_grad, mut bias_grad) = (loss.zeros_like(), loss.zeros_like());
    let mut block = txt.shallow_clone();
    let mut block_grads = txt.zeros_like();
    for pass in 0..world {
        // After `pass` passes, the visiting texts are those of rank r − pass.
        let own_block = pass == 0;
        for (a, a_len) in tiles(rows, tile) {
            let img_a = img.narrow(0, a, a_len);
            for (b, b_len) in tiles(rows, tile) {
                let txt_b = block.narrow(0, b, b_len);
                let dots = img_a.matmul(&txt_b.tr());
                let logits = &dots * &scale + &bias;
                // z = +1 on matching pairs (r's own block, the same row), −1 elsewhere.
                let mut signs = Tensor::full([a_len, b_len], -1.0, (logits.kind(), logits.device()));
                if own_block {
                    let rows_a = Tensor::arange_start(a, a + a_len, (Kind::Int64, logits.device())).unsqueeze(1);
                    let cols_b = Tensor::arange_start(b, b + b_len, (Kind::Int64, logits.device())).unsqueeze(0);
                    signs = signs + rows_a.eq_tensor(&cols_b).to_kind(logits.kind()) * 2.0;
                }
                let signed = &logits * &signs;
                loss -= signed.log_sigmoid().sum(kind);
                // ∂(−log σ(z·l))/∂l = −z·σ(−z·l)
                let d = -(&signs * (-signed).sigmoid());
                let _ = image_rows.narrow(0, a, a_len).g_add_(&(d.matmul(&txt_b) * &scale));
                let _ = block_grads
                    .narrow(0, b, b_len)
                    .g_add_(&(d.tr().matmul(&img_a) * &scale));
                scale_grad += (&d * &dots).sum(kind);
                bias_grad += d.sum(kind);
            }
        }
        if pass + 1 < world {
            block = coll.ring_pass(&block)?;
            block_grads = coll.ring_pass(&block_grads)?;
        }
    }
    // The last pass brings the text gradients home (in a world of one they never left).
    if world > 1 {
        block_grads = coll.ring_pass(&block_grads)?;
    }
    let norm = 1.0 / global as f64;
    Ok((
        (loss * norm).double_value(&[]),
        FeatureGrads {
            image: image_rows * norm,
            text: block_grads * norm,
            logit_scale: (scale_grad * norm).to_kind(logit_scale.kind()),
            logit_bias: Some((bias_grad * norm).to_kind(logit_bias.kind())),
        },
    ))
}

#[cfg(test)]
mod tests;
