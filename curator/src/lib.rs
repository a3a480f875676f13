//! Data curation stages over shards: ALIGN filters, MetaCLIP matching and
//! balancing, DFN score filtering, K-LITE knowledge (DESIGN.md §7).
//!
//! Not yet implemented: the stages arrive with the curation issue. The crate
//! exists now so the workspace has its final shape; it links no tch.
#![deny(missing_docs)]
