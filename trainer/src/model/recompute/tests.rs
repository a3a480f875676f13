//! Activation checkpointing gives the gradients of the plain backward pass, per tower and for
//! both, and really recomputes (the tape keeps block inputs, not a graph).

use std::collections::BTreeMap;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::loss::clip_loss;
use crate::model::{Clip, ModelConfig};
use crate::optim::{AdamW, Gradients, OptimConfig};

/// The nano model with activation checkpointing per tower as asked, its parameters copied
/// from `like` (so every variant starts equal, whatever else uses libtorch's generator).
fn model(checkpoint_vision: bool, checkpoint_text: bool, like: Option<&VarStore>) -> (VarStore, Clip) {
    let mut cfg = ModelConfig::preset("nano").expect("nano");
    cfg.vision.grad_checkpointing = Some(checkpoint_vision);
    cfg.text.grad_checkpointing = Some(checkpoint_text);
    let mut vs = VarStore::new(Device::Cpu);
    let clip = Clip::new(&vs.root(), &cfg);
    if let Some(like) = like {
        vs.copy(like).expect("same variables");
    }
    (vs, clip)
}

/// Four images and captions of the nano model's shapes.
fn inputs(cfg: &ModelConfig) -> (Tensor, Tensor) {
    let size = cfg.vision.image_size;
    let n = 4 * 3 * size * size;
    let images = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.37)
        .sin()
        .view([4, 3, size, size]);
    let tokens = Tensor::from_slice(&[
        49406i64, 320, 1125, 49407, 0, 0, 49406, 2368, 539, 320, 1929, 49407, 49406, 49407, 0, 0, 0, 0, 49406, 7, 8, 9,
        10, 49407,
    ])
    .view([4, 6]);
    (images, tokens)
}

/// Every parameter's gradient of the CLIP loss on one batch, by name.
fn gradients(checkpoint_vision: bool, checkpoint_text: bool, like: &VarStore) -> BTreeMap<String, Tensor> {
    let (vs, clip) = model(checkpoint_vision, checkpoint_text, Some(like));
    let optimizer = AdamW::new(vs.variables(), &OptimConfig::default());
    let (images, tokens) = inputs(clip.config());
    let pass = clip.forward_for_backward(&images, &tokens, true);
    let loss = clip_loss(&pass.image_features, &pass.text_features, &pass.logit_scale);
    let mut sum = None::<Gradients>;
    let mut calls = 0;
    clip.backward(pass, &loss, true, &mut |surrogate, leaves| {
        calls += 1;
        let (grads, leaf_grads) = optimizer.backward_with(surrogate, leaves);
        match sum.as_mut() {
            Some(s) => s.accumulate(&grads),
            None => sum = Some(grads),
        }
        leaf_grads
    });
    // One backward for the loss (through the last block), plus one per recomputed block (all
    // but the last) and one per stem.
    let layers = |on: bool, n: i64| if on { n as usize } else { 0 };
    let cfg = clip.config();
    assert_eq!(
        calls,
        1 + layers(checkpoint_vision, cfg.vision.layers) + layers(checkpoint_text, cfg.text.layers)
    );
    let mut names: Vec<String> = vs.variables().into_keys().collect();
    names.sort();
    names
        .into_iter()
        .zip(sum.expect("gradients").tensors())
        .map(|(name, g)| (name, g.shallow_clone()))
        .collect()
}

#[test]
fn checkpointed_towers_give_the_plain_gradients() {
    let (base, _) = model(false, false, None);
    let plain = gradients(false, false, &base);
    for (vision, text) in [(true, false), (false, true), (true, true)] {
        let checkpointed = gradients(vision, text, &base);
        for (name, want) in &plain {
            let got = &checkpointed[name];
            assert!(want.defined() && got.defined(), "{name}: no gradient");
            let diff = (got - want).abs().max().double_value(&[]);
            assert!(diff <= 1e-6, "vision {vision}, text {text}: {name} differs by {diff}");
        }
    }
}

#[test]
fn a_checkpointed_forward_keeps_no_graph_in_the_blocks() {
    // The features depend on the blocks but the last only through the leaf the last block ran
    // on: without the recomputation, such a block's parameter gets no gradient at all. The
    // last block stays on the graph (its backward follows the loss's at once).
    let (vs, clip) = model(true, true, None);
    let layers = clip.config().vision.layers;
    assert!(layers >= 2, "the test needs a block before the last");
    let (images, tokens) = inputs(clip.config());
    let pass = clip.forward_for_backward(&images, &tokens, true);
    let loss = clip_loss(&pass.image_features, &pass.text_features, &pass.logit_scale);
    let variables = vs.variables();
    let block = &variables[&format!("visual.transformer.resblocks.{}.mlp.c_fc.weight", layers - 2)];
    let last = &variables[&format!("visual.transformer.resblocks.{}.mlp.c_fc.weight", layers - 1)];
    let head = &variables["visual.proj"];
    let grads = Tensor::run_backward(&[&loss], &[block, last, head], false, false);
    assert!(
        !grads[0].defined(),
        "a recomputed block's parameter reached through the forward graph"
    );
    assert!(grads[1].defined(), "the last block stays on the graph");
    assert!(grads[2].defined(), "the head stays on the graph");
}
