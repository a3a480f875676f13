//! One module per subcommand: argument struct + `run`.
pub mod curate;
pub mod data;
mod data_dump;
pub mod embed;
pub mod eval;
pub mod export;
pub mod launch;
mod npy;
pub mod report;
pub mod secret;
pub mod shard;
pub mod status;
pub mod submit;
pub mod sweep;
pub mod tokenize;
pub mod train;
