//! The contrastive losses: [`local`] defines them over one process's batch, [`global`]
//! computes them over the global batch of a data-parallel job with the exact gradient
//! (docs/architecture.md §3). The train step picks one by [`LossKind`].

pub mod global;
pub mod local;

pub use global::{
    clip_share_grads, global_clip_loss, global_siglip_loss, siglip_share_grads, FeatureGrads, LossKind, RankLoss,
    ShareGrads,
};
pub use local::{clip_loss, siglip_loss};
