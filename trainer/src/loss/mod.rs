//! The contrastive losses: [`local`] defines them over one process's batch, [`global`]
//! computes them over the global batch of a data-parallel job with the exact gradient,
//! gathering the features (O(B·N) memory), and [`tiled`] computes the same around a ring of
//! ranks, a tile of logits at a time (O(B·D + tile²) memory; docs/architecture.md §3). The
//! train step picks one by [`LossKind`] and the config's `loss_tile`.

pub mod global;
pub mod local;
pub mod tiled;

pub use global::{
    clip_share_grads, global_clip_loss, global_siglip_loss, siglip_share_grads, FeatureGrads, LossGrads, LossKind,
    RankLoss, ShareGrads,
};
pub use local::{clip_loss, siglip_loss};
