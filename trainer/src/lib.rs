//! The CLIP model and its training on libtorch.
#![deny(missing_docs)]
pub use tch;
