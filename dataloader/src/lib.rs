//! Shards in, batches out. No tch.
#![deny(missing_docs)]

pub mod tokenizer;
pub use tokenizer::Tokenizer;
