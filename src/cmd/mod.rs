//! One module per subcommand: argument struct + `run`.
pub mod embed;
pub mod eval;
pub mod launch;
pub mod shard;
pub mod tokenize;
pub mod train;
