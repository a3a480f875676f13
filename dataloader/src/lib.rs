//! Shards in, batches out. No tch.
#![deny(missing_docs)]
