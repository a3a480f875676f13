//! The contrastive losses: [`local`] defines them over one process's batch; over the global
//! batch of a data-parallel job, with the exact gradient, [`global`] gathers the features
//! (O(B·N) memory) and [`tiled`] goes around a ring of ranks a tile of logits at a time
//! (O(B·D + tile²) memory); both hand the backward pass [`FeatureGrads`] ([`grads`]).
//! [`kind`] holds [`LossKind`] (the config's `loss`) and the entry points that pick one by
//! `loss_tile` (docs/architecture.md §3).

pub mod global;
pub mod grads;
pub mod kind;
pub mod local;
pub mod tiled;

pub use global::{clip_share_grads, siglip_share_grads, ShareGrads};
pub use grads::FeatureGrads;
pub use kind::{global_clip_loss, global_siglip_loss, LossGrads, LossKind, RankLoss};
pub use local::{clip_loss, siglip_loss};
