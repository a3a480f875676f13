//! Contrastive losses over the global batch of a data-parallel job, with the
//! exact gradient at O(B·N) memory (docs/architecture.md §3).
//!
//! Rank r holds B pairs of features; the global batch is N = W·B. Rank r computes
//! its *share* ℓ_r of the global loss L: the terms whose row is one of its own
//! samples, against the columns of every rank. Scale convention: each share is
//! already divided by the global N, so L = Σ_r ℓ_r and the gradient of L with
//! respect to any parameter is the SUM over ranks of each rank's parameter
//! gradient. [`crate::train::ddp::GradSync`] therefore all-reduces with a sum
//! and no further scaling (scale 1/k only for k accumulated micro-batches).
//!
//! The step, for each rank:
//! 1. gather the detached features of every rank (columns, N×D) and make
//!    detached leaves of the local features (rows, B×D) and of the scale/bias;
//! 2. backprop ℓ_r to those leaves only ([`clip_share_grads`], [`siglip_share_grads`]);
//! 3. reduce-scatter the column gradients, so each rank receives, summed over all
//!    ranks, the terms in which its own samples were columns
//!    ([`ShareGrads::exchange_columns`]); add them to its row gradients: this is
//!    ∂L/∂(own features), exactly;
//! 4. backprop into the encoders through the surrogate
//!    `(img·gI).sum() + (txt·gT).sum() + s·∂ℓ_r/∂s (+ b·∂ℓ_r/∂b)`
//!    ([`FeatureGrads::surrogate`]); the scale and bias are replicated
//!    parameters, so each rank contributes only its share's derivative and the
//!    gradient all-reduce sums them.
//!
//! Every rank must pass the same B (the loader drops a partial last batch on all
//! ranks); a backend fails the gather otherwise.

use tch::{Kind, Tensor};

use super::grads::{check_features, FeatureGrads};
use super::local::{accumulation_kind, own_columns, pair_signs};
use crate::dist::{Collective, DistError};

/// Gradients of this rank's share ℓ_r with respect to detached copies of its
/// inputs, before the column exchange. A term is `None` when the loss does not
/// use that input (SigLIP gathers text only, so it has no image columns and no
/// text rows).
#[derive(Debug)]
pub struct ShareGrads {
    /// ℓ_r.
    pub share: f64,
    /// ∂ℓ_r/∂(local image features), (B, D).
    pub image_rows: Option<Tensor>,
    /// ∂ℓ_r/∂(gathered image features), (N, D).
    pub image_columns: Option<Tensor>,
    /// ∂ℓ_r/∂(local text features), (B, D).
    pub text_rows: Option<Tensor>,
    /// ∂ℓ_r/∂(gathered text features), (N, D).
    pub text_columns: Option<Tensor>,
    /// ∂ℓ_r/∂(logit scale), 0-dim.
    pub logit_scale: Tensor,
    /// ∂ℓ_r/∂(logit bias), 0-dim, for losses with a bias.
    pub logit_bias: Option<Tensor>,
}

impl ShareGrads {
    /// Reduce-scatters the column gradients and adds them to the row gradients
    /// (step 3 of the list above). Every rank must call it.
    pub fn exchange_columns(self, coll: &dyn Collective) -> Result<FeatureGrads, DistError> {
        let image = rows_plus_columns(self.image_rows, self.image_columns, coll)?;
        let text = rows_plus_columns(self.text_rows, self.text_columns, coll)?;
        Ok(FeatureGrads {
            image,
            text,
            logit_scale: self.logit_scale,
            logit_bias: self.logit_bias,
        })
    }
}

/// Steps 1–2 of the list above for the CLIP loss: this rank's rows against all
/// columns, in both directions, divided by 2N.
pub fn clip_share_grads(
    image_features: &Tensor,
    text_features: &Tensor,
    logit_scale: &Tensor,
    coll: &dyn Collective,
) -> Result<ShareGrads, DistError> {
    let (rows, global) = check_features("global_clip_loss", image_features, text_features, coll)?;
    let image_rows = leaf(image_features);
    let text_rows = leaf(text_features);
    let image_columns = gathered_leaf(image_features, coll)?; // (N, D)
    let text_columns = gathered_leaf(text_features, coll)?; // (N, D)
    let scale = leaf(logit_scale);

    let targets = own_columns(rows, coll.rank(), image_features.device()); // (B,)
                                                                           // The scale multiplies the (B, D) rows, not the (B, N) logits: one B×N tensor fewer to
                                                                           // keep for the backward pass (open_clip's `logit_scale * image_features @ text.T` too).
    let logits_per_image = (&image_rows * &scale).matmul(&text_columns.tr()); // (B, N)
    let logits_per_text = (&text_rows * &scale).matmul(&image_columns.tr()); // (B, N)
    let share = (summed_cross_entropy(&logits_per_image, &targets) + summed_cross_entropy(&logits_per_text, &targets))
        / (2.0 * global as f64);

    let mut grads = Tensor::run_backward(
        &[&share],
        &[&image_rows, &text_rows, &image_columns, &text_columns, &scale],
        false,
        false,
    )
    .into_iter();
    let mut next = || grads.next().filter(Tensor::defined);
    Ok(ShareGrads {
        share: share.double_value(&[]),
        image_rows: next(),
        text_rows: next(),
        image_columns: next(),
        text_columns: next(),
        logit_scale: next().unwrap_or_else(|| logit_scale.zeros_like()),
        logit_bias: None,
    })
}

/// Steps 1–2 for the sigmoid loss: this rank's image rows against the text
/// columns of every rank, summed and divided by N. Only text is gathered: every
/// pair (i, j) is counted once, on the rank that owns image i.
pub fn siglip_share_grads(
    image_features: &Tensor,
    text_features: &Tensor,
    logit_scale: &Tensor,
    logit_bias: &Tensor,
    coll: &dyn Collective,
) -> Result<ShareGrads, DistError> {
    let (rows, global) = check_features("global_siglip_loss", image_features, text_features, coll)?;
    let image_rows = leaf(image_features);
    let text_columns = gathered_leaf(text_features, coll)?; // (N, D)
    let scale = leaf(logit_scale);
    let bias = leaf(logit_bias);

    let logits = image_rows.matmul(&text_columns.tr()) * &scale + &bias; // (B, N)
    let signs = pair_signs(rows, global, coll.rank(), &logits); // (B, N), ±1
    let share = -(&logits * signs).log_sigmoid().sum(accumulation_kind(&logits)) / global as f64;

    let mut grads =
        Tensor::run_backward(&[&share], &[&image_rows, &text_columns, &scale, &bias], false, false).into_iter();
    let mut next = || grads.next().filter(Tensor::defined);
    Ok(ShareGrads {
        share: share.double_value(&[]),
        image_rows: next(),
        image_columns: None,
        text_rows: None,
        text_columns: next(),
        logit_scale: next().unwrap_or_else(|| logit_scale.zeros_like()),
        logit_bias: Some(next().unwrap_or_else(|| logit_bias.zeros_like())),
    })
}

/// Every rank's detached `features`, gathered (N, D), as a leaf whose gradient the share's
/// backward fills.
fn gathered_leaf(features: &Tensor, coll: &dyn Collective) -> Result<Tensor, DistError> {
    Ok(coll.all_gather(&features.detach())?.detach().set_requires_grad(true))
}

/// A detached leaf sharing `t`'s values, whose gradient the share's backward fills.
fn leaf(t: &Tensor) -> Tensor {
    t.detach().set_requires_grad(true)
}

/// −Σ_rows log softmax(logits)[row, target[row]].
fn summed_cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    -logits
        .log_softmax(-1, None::<Kind>)
        .gather(1, &targets.unsqueeze(1), false)
        .sum(accumulation_kind(logits))
}

/// rows + reduce_scatter(columns), whichever exist.
fn rows_plus_columns(
    rows: Option<Tensor>,
    columns: Option<Tensor>,
    coll: &dyn Collective,
) -> Result<Tensor, DistError> {
    let columns = columns.map(|c| coll.reduce_scatter_sum(&c)).transpose()?;
    match (rows, columns) {
        (Some(rows), Some(columns)) => Ok(rows + columns),
        (Some(only), None) | (None, Some(only)) => Ok(only),
        (None, None) => Err(DistError::Tensor {
            op: "exchange_columns",
            reason: "the loss did not depend on these features (no row or column gradient)".into(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dist::local::LocalGroup;
    use crate::dist::Solo;
    use crate::loss::{clip_loss, siglip_loss};
    use crate::loss::{global_clip_loss, global_siglip_loss, LossKind};
    use crate::model::l2_normalize;
    use tch::Device;

    pub(crate) const DIM: i64 = 8;

    /// Which loss a test runs.
    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Which {
        Clip,
        SigLip,
    }

    /// Raw (unnormalised) features and log scale / bias: the leaves gradients are
    /// taken against, so normalisation and exp are inside the checked graph.
    /// Held as plain values (tensors are not `Sync`); each thread builds its own.
    pub(crate) struct Inputs {
        rows: i64,
        image_values: Vec<f32>,
        text_values: Vec<f32>,
        log_scale: f64,
        bias: f64,
    }

    impl Inputs {
        pub(crate) fn image(&self) -> Tensor {
            Tensor::from_slice(&self.image_values).view([self.rows, DIM])
        }
        pub(crate) fn text(&self) -> Tensor {
            Tensor::from_slice(&self.text_values).view([self.rows, DIM])
        }
    }

    pub(crate) fn inputs(rows: i64, seed: u64) -> Inputs {
        // Deterministic values without the global RNG (tests run in parallel).
        let x = Tensor::arange(2 * rows * DIM, (Kind::Double, Device::Cpu)).view([2, rows, DIM]);
        let waves =
            (x * (0.37 + seed as f64 * 0.11)).sin() + (Tensor::arange(DIM, (Kind::Double, Device::Cpu)) * 0.5).cos();
        let values = |t: Tensor| Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).expect("f32 values");
        Inputs {
            rows,
            image_values: values(waves.get(0)),
            text_values: values(waves.get(1)),
            log_scale: 2.3,
            bias: -1.5,
        }
    }

    /// (loss, d/d image rows, d/d text rows, d/d log scale, d/d bias) of the
    /// single-process loss over `inp`'s whole batch.
    pub(crate) fn reference(which: Which, inp: &Inputs) -> (f64, Tensor, Tensor, f64, f64) {
        let [image, text, log_scale, bias] = rank_leaves(inp, &Solo);
        let (img, txt, s) = (l2_normalize(&image), l2_normalize(&text), log_scale.exp());
        let loss = match which {
            Which::Clip => clip_loss(&img, &txt, &s),
            Which::SigLip => siglip_loss(&img, &txt, &s, &bias),
        };
        rank_outcome(loss.double_value(&[]), &loss, [&image, &text, &log_scale, &bias])
    }

    /// The same quantities on one rank of `coll`, which holds rows r·B..(r+1)·B.
    fn on_rank(which: Which, inp: &Inputs, coll: &dyn Collective) -> (f64, Tensor, Tensor, f64, f64) {
        let [image, text, log_scale, bias] = rank_leaves(inp, coll);
        let (img, txt, s) = (l2_normalize(&image), l2_normalize(&text), log_scale.exp());
        let out = match which {
            Which::Clip => global_clip_loss(&img, &txt, &s, coll),
            Which::SigLip => global_siglip_loss(&img, &txt, &s, &bias, coll),
        }
        .expect("global loss");
        rank_outcome(out.global_loss, &out.surrogate, [&image, &text, &log_scale, &bias])
    }

    /// This rank's rows of `inp` and the scalars, as leaves that take gradients.
    fn rank_leaves(inp: &Inputs, coll: &dyn Collective) -> [Tensor; 4] {
        let rows = inp.rows / coll.world_size() as i64;
        let start = coll.rank() as i64 * rows;
        [
            inp.image().narrow(0, start, rows).copy().set_requires_grad(true),
            inp.text().narrow(0, start, rows).copy().set_requires_grad(true),
            Tensor::from(inp.log_scale as f32).set_requires_grad(true),
            Tensor::from(inp.bias as f32).set_requires_grad(true),
        ]
    }

    /// The loss and the gradients of `surrogate` for the four leaves (a bias unused by the
    /// loss has gradient 0).
    fn rank_outcome(loss: f64, surrogate: &Tensor, leaves: [&Tensor; 4]) -> (f64, Tensor, Tensor, f64, f64) {
        let grads = Tensor::run_backward(&[surrogate], &leaves, false, false);
        let bias_grad = if grads[3].defined() {
            grads[3].double_value(&[])
        } else {
            0.0
        };
        (
            loss,
            grads[0].shallow_clone(),
            grads[1].shallow_clone(),
            grads[2].double_value(&[]),
            bias_grad,
        )
    }

    /// [`on_rank`] through [`LossKind::feature_grads`] with `loss_tile = tile` (0: untiled).
    pub(crate) fn on_rank_tiled(
        which: Which,
        inp: &Inputs,
        tile: usize,
        coll: &dyn Collective,
    ) -> (f64, Tensor, Tensor, f64, f64) {
        let [image, text, log_scale, bias] = rank_leaves(inp, coll);
        let (img, txt, s) = (l2_normalize(&image), l2_normalize(&text), log_scale.exp());
        let (kind, b) = match which {
            Which::Clip => (LossKind::Clip, None),
            Which::SigLip => (LossKind::Siglip, Some(&bias)),
        };
        let loss = kind.feature_grads(&img, &txt, &s, b, tile, coll).expect("loss");
        let surrogate = loss.grads.surrogate(&img, &txt, &s, b);
        rank_outcome(loss.global_loss, &surrogate, [&image, &text, &log_scale, &bias])
    }

    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn solo_world_equals_the_single_process_loss_and_gradients() {
        for which in [Which::Clip, Which::SigLip] {
            let inp = inputs(6, 1);
            let (loss, gi, gt, gs, gb) = reference(which, &inp);
            let (d_loss, d_gi, d_gt, d_gs, d_gb) = on_rank(which, &inp, &Solo);
            assert!((loss - d_loss).abs() < 1e-6, "{which:?}: loss {loss} vs {d_loss}");
            assert!(
                max_diff(&gi, &d_gi) < 1e-6,
                "{which:?}: image grads differ by {}",
                max_diff(&gi, &d_gi)
            );
            assert!(
                max_diff(&gt, &d_gt) < 1e-6,
                "{which:?}: text grads differ by {}",
                max_diff(&gt, &d_gt)
            );
            assert!((gs - d_gs).abs() < 1e-6, "{which:?}: scale grad {gs} vs {d_gs}");
            assert!((gb - d_gb).abs() < 1e-6, "{which:?}: bias grad {gb} vs {d_gb}");
        }
    }

    #[test]
    fn ranks_of_a_group_reproduce_the_full_batch_loss_and_gradients() {
        for which in [Which::Clip, Which::SigLip] {
            for world in [2usize, 3] {
                let inp = inputs(4 * world as i64, world as u64);
                let (loss, gi, gt, gs, gb) = reference(which, &inp);
                let per_rank = LocalGroup::run(world, |m| {
                    let (l, i, t, s, b) = on_rank(which, &inp, m);
                    (
                        l,
                        Vec::<f32>::try_from(i.flatten(0, -1)).expect("f32"),
                        Vec::<f32>::try_from(t.flatten(0, -1)).expect("f32"),
                        s,
                        b,
                    )
                });
                let (mut scale_sum, mut bias_sum) = (0.0, 0.0);
                for (rank, (l, i, t, s, b)) in per_rank.into_iter().enumerate() {
                    let ctx = format!("{which:?} world {world} rank {rank}");
                    // f32 sums in a different order: relative tolerance.
                    assert!(
                        (loss - l).abs() < 1e-6 * loss.abs().max(1.0),
                        "{ctx}: loss {loss} vs {l}"
                    );
                    let block = |g: &Tensor| g.narrow(0, 4 * rank as i64, 4).flatten(0, -1);
                    let d_i = max_diff(&block(&gi), &Tensor::from_slice(&i));
                    let d_t = max_diff(&block(&gt), &Tensor::from_slice(&t));
                    assert!(d_i < 1e-6 && d_t < 1e-6, "{ctx}: feature grads differ by {d_i}, {d_t}");
                    scale_sum += s;
                    bias_sum += b;
                }
                // Replicated parameters: the ranks' shares add up to the full gradient.
                assert!(
                    (gs - scale_sum).abs() < 1e-6 * gs.abs().max(1.0),
                    "{which:?} world {world}: scale grad {gs} vs Σ {scale_sum}"
                );
                assert!(
                    (gb - bias_sum).abs() < 1e-6 * gb.abs().max(1.0),
                    "{which:?} world {world}: bias grad {gb} vs Σ {bias_sum}"
                );
            }
        }
    }

    #[test]
    fn without_the_column_exchange_gradients_are_wrong() {
        // Guards the test above: own-block column gradients alone (no reduce-scatter)
        // must not pass for the full gradient.
        let world = 2;
        let inp = inputs(8, 7);
        let (_, gi, _, _, _) = reference(Which::Clip, &inp);
        let diffs = LocalGroup::run(world, |m| {
            let rows = 4;
            let start = m.rank() as i64 * rows;
            let image = inp.image().narrow(0, start, rows).copy().set_requires_grad(true);
            let text = inp.text().narrow(0, start, rows).copy();
            let s = Tensor::from(inp.log_scale as f32).exp();
            let img = l2_normalize(&image);
            let shares = clip_share_grads(&img, &l2_normalize(&text), &s, m).expect("shares");
            let own = shares.image_columns.as_ref().expect("columns").narrow(0, start, rows);
            let partial = shares.image_rows.as_ref().expect("rows") + own;
            let grad = &Tensor::run_backward(&[(&img * partial).sum(Kind::Float)], &[&image], false, false)[0];
            Vec::<f32>::try_from(grad.flatten(0, -1)).expect("f32")
        });
        let diffs: Vec<f64> = diffs
            .iter()
            .enumerate()
            .map(|(rank, g)| max_diff(&gi.narrow(0, 4 * rank as i64, 4).flatten(0, -1), &Tensor::from_slice(g)))
            .collect();
        assert!(
            diffs.iter().all(|d| *d > 1e-4),
            "incomplete gradients should differ: {diffs:?}"
        );
    }

    #[test]
    fn siglip_matches_hand_computed_value() {
        // Two orthogonal pairs: logits are s+b on the diagonal and b off it.
        let img = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let (s, b) = (Tensor::from(10.0f32), Tensor::from(-2.0f32));
        let got = siglip_loss(&img, &img, &s, &b).double_value(&[]);
        let log_sigmoid = |x: f64| -(1.0 + (-x).exp()).ln();
        let want = -(2.0 * log_sigmoid(8.0) + 2.0 * log_sigmoid(2.0)) / 2.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn mismatched_feature_shapes_are_an_error() {
        let a = Tensor::zeros([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([4, 6], (Kind::Float, Device::Cpu));
        let err = global_clip_loss(&a, &b, &Tensor::from(1.0f32), &Solo)
            .expect_err("shapes differ")
            .to_string();
        assert!(err.contains("global_clip_loss"), "{err}");
    }
}
