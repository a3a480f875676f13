//! Activation checkpointing per transformer block (`model.grad_checkpointing`): a tower's
//! blocks run forward without keeping their activations, and in the backward pass each block
//! is run again, with a graph, from its saved input (docs/architecture.md §3).
//!
//! tch has no `torch.utils.checkpoint`, so the backward pass is driven from here, the way the
//! global loss drives its own: the features come out of the tower's last block and *head*
//! computed, with their graph, on a detached leaf `top` (the last block's input: its backward
//! comes right after the loss's, so recomputing it would only repeat this forward); the
//! loss's backward fills the gradient of `top`; then, from the block before the last to the
//! first, the block is recomputed from its saved input (a leaf), the surrogate
//! `(block(x) · g).sum()` is backpropagated — which puts the block's parameter gradients in
//! place and gives the gradient of its input — and that gradient goes to the block before.
//! Last the stem (patch or token embedding) is recomputed and backpropagated the same way.
//! Memory: one (B, L, D) input per block plus one block's activations, instead of every
//! block's activations.

use tch::nn::ModuleT;
use tch::{Kind, Tensor};

use super::transformer::Transformer;

/// A tower as its three parts: the stem before the blocks, the blocks, the head after them.
pub trait Tower {
    /// The tower's input (images or token ids) → the first block's input, (B, L, D).
    fn stem(&self, input: &Tensor) -> Tensor;
    /// The residual blocks.
    fn blocks(&self) -> &Transformer;
    /// The last block's output (B, L, D) (and the input, for pooling) → features (B, E).
    fn head(&self, xs: &Tensor, input: &Tensor) -> Tensor;
}

/// What a checkpointed forward keeps of a tower: the input of every block but the last, and
/// the leaf the last block (and the head) ran on.
#[derive(Debug)]
pub struct TowerTape {
    block_inputs: Vec<Tensor>,
    /// The last block's input as a leaf (the stem's output when the tower has no blocks): the
    /// loss's backward fills its gradient.
    pub top: Tensor,
}

/// The tower's features, with the graph of the last block and the head only (on
/// `tape.top`), and the tape.
pub fn forward_keeping_inputs(tower: &impl Tower, input: &Tensor, train: bool) -> (Tensor, TowerTape) {
    let recomputed = tower.blocks().len().saturating_sub(1);
    let (top, block_inputs) = tch::no_grad(|| {
        let mut xs = tower.stem(input);
        let mut block_inputs = Vec::with_capacity(recomputed);
        for block in tower.blocks().iter().take(recomputed) {
            let next = block.forward_t(&xs, train);
            block_inputs.push(xs);
            xs = next;
        }
        (xs, block_inputs)
    });
    let top = top.detach().set_requires_grad(true);
    let last = match tower.blocks().iter().nth(recomputed) {
        Some(block) => block.forward_t(&top, train),
        None => top.shallow_clone(),
    };
    let features = tower.head(&last, input);
    (features, TowerTape { block_inputs, top })
}

/// The backward pass through the blocks and the stem, given `top_grad` = ∂L/∂(tape.top).
/// `backward(surrogate, leaf)` must backpropagate `surrogate` into the parameters (adding
/// their gradients to the step's) and return the gradient of `leaf` when it is given.
pub fn backward_recomputing(
    tower: &impl Tower,
    input: &Tensor,
    tape: TowerTape,
    top_grad: Tensor,
    train: bool,
    backward: &mut dyn FnMut(&Tensor, Option<&Tensor>) -> Option<Tensor>,
) {
    let mut grad = top_grad;
    let recomputed = tape.block_inputs.len();
    for (block, saved) in tower.blocks().iter().take(recomputed).zip(tape.block_inputs).rev() {
        let leaf = saved.set_requires_grad(true);
        let output = block.forward_t(&leaf, train);
        let surrogate = dot(&output, &grad);
        grad = backward(&surrogate, Some(&leaf)).unwrap_or_else(|| leaf.zeros_like());
    }
    let first = tower.stem(input);
    backward(&dot(&first, &grad), None);
}

/// Σ a·b in f32 (or f64 for f64 inputs): the surrogate whose backward puts `b` into `a`.
fn dot(a: &Tensor, b: &Tensor) -> Tensor {
    let kind = if a.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    (a * b.to_kind(a.kind())).sum(kind)
}

#[cfg(test)]
mod tests;
