//! Evaluation: zero-shot classification and image↔text retrieval, with metrics defined as
//! CLIP_benchmark 1.6.2 defines them.
//!
//! - [`metrics`]: pure tensor math on embeddings ([`build_zeroshot_classifier`],
//!   [`zeroshot_metrics`], [`retrieval_metrics`]).
//! - [`model`]: [`load_checkpoint`] / [`EvalModel::load`] and normalised
//!   [`EvalModel::embed_images`] / [`EvalModel::embed_texts`].
//! - [`data`]: eval sets from shards in file order ([`read_eval_set`]).
//! - [`tasks`]: [`evaluate_zeroshot`] and [`evaluate_retrieval`] over shards.

use std::path::PathBuf;

pub mod data;
pub mod metrics;
pub mod model;
pub mod tasks;

pub use data::{load_image_file, map_in_threads, read_eval_set, EvalBatch, EvalSkips, Needs};
pub use model::{load_checkpoint, load_model_config, EvalModel};
pub use tasks::{evaluate_retrieval, evaluate_zeroshot, RetrievalReport, ZeroShotReport};

pub use metrics::{
    build_zeroshot_classifier, fill_template, l2_normalize, retrieval_metrics, zeroshot_metrics, RecallAtK,
    RetrievalMetrics, ZeroShotMetrics,
};

/// What can go wrong in evaluation; each message names the offending input.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A tensor has the wrong shape.
    #[error("{what}: expected shape {expected}, got {got:?}")]
    Shape {
        /// Which tensor.
        what: &'static str,
        /// The shape it should have.
        expected: String,
        /// The shape it has.
        got: Vec<i64>,
    },
    /// Nothing to evaluate.
    #[error("no samples for {0}")]
    NoSamples(String),
    /// Zero-shot evaluation without class names.
    #[error("no class names given for zero-shot classification")]
    NoClassnames,
    /// Zero-shot evaluation without templates.
    #[error("no templates given for zero-shot classification")]
    NoTemplates,
    /// A sample's label is not an index into the class names.
    #[error("label {label} of sample {sample} is out of range: there are {num_classes} class names")]
    LabelOutOfRange {
        /// The sample's key (or position).
        sample: String,
        /// Its label.
        label: i64,
        /// Number of class names.
        num_classes: usize,
    },
    /// A text points at an image that does not exist.
    #[error("text {text} belongs to image {image}, but there are only {num_images} images")]
    ImageIndexOutOfRange {
        /// Position of the text.
        text: usize,
        /// The image index it names.
        image: usize,
        /// Number of images.
        num_images: usize,
    },
    /// recall@k with k = 0.
    #[error("recall@{0}: k must be at least 1")]
    BadK(usize),
    /// A file or folder that must exist does not.
    #[error("{what} not found: {path}")]
    Missing {
        /// What it should be.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        message: String,
    },
    /// The model config is invalid or unreadable (the message names the file and field).
    #[error("model config: {0}")]
    Config(String),
    /// The weights do not load into the model.
    #[error(transparent)]
    Weights(#[from] crate::model::weights::WeightsError),
    /// libtorch failed (conversion or device transfer).
    #[error("tensor operation failed: {0}")]
    Tensor(String),
}
