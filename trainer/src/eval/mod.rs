//! Evaluation: zero-shot classification and image↔text retrieval, with metrics defined as
//! CLIP_benchmark 1.6.2 defines them.
//!
//! - [`metrics`]: pure tensor math on embeddings ([`build_zeroshot_classifier`],
//!   [`zeroshot_metrics`], [`retrieval_metrics`]).
//! - [`model`]: [`load_checkpoint`] / [`EvalModel::load`] and normalised
//!   [`EvalModel::embed_images`] / [`EvalModel::embed_texts`].
//! - [`data`]: eval sets from shards in file order ([`read_eval_set`]).
//! - [`tasks`]: [`evaluate_zeroshot`] and [`evaluate_retrieval`] over shards.
//! - [`config`] (`[eval]` of a train config) and [`distributed`]: evaluation while a run
//!   trains, each rank embedding its share, metrics once on rank 0 ([`TrainEval`]).

pub mod config;
pub mod data;
pub mod distributed;
pub mod error;
pub mod metrics;
pub mod model;
pub mod tasks;

pub use config::EvalConfig;
pub use data::{load_image_file, map_in_threads, read_eval_set, EvalBatch, EvalSkips, Needs};
pub use distributed::TrainEval;
pub use error::{EvalError, TrainEvalError};
pub use model::{load_checkpoint, load_checkpoint_files, load_model_config, Encoder, EvalModel};
pub use tasks::{evaluate_retrieval, evaluate_zeroshot, RetrievalReport, ZeroShotReport};

pub use metrics::{
    build_zeroshot_classifier, fill_template, l2_normalize, retrieval_metrics, zeroshot_metrics, RecallAtK,
    RetrievalMetrics, ZeroShotMetrics,
};
