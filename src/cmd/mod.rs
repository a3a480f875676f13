//! One module per subcommand: argument struct + `run`.
pub mod curate;
pub mod embed;
pub mod eval;
pub mod export;
pub mod launch;
pub mod shard;
pub mod sweep;
pub mod tokenize;
pub mod train;
