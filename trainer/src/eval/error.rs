//! What can go wrong in evaluation.

use std::path::PathBuf;

use crate::model::open_clip::InteropError;
use crate::model::weights::WeightsError;
use crate::model::ConfigError;

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
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An image file does not decode.
    #[error("cannot read {}: {reason}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// Why it does not decode.
        reason: String,
    },
    /// The model config is invalid or unreadable (the message names the file and field).
    #[error("model config")]
    Config(#[from] ConfigError),
    /// A run or checkpoint folder, or its run config, that does not give a model.
    #[error(transparent)]
    Checkpoint(#[from] InteropError),
    /// The weights do not load into the model.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// libtorch failed (conversion or device transfer).
    #[error("tensor operation failed")]
    Tensor(#[from] tch::TchError),
}

/// Why an evaluation during training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainEvalError {
    /// The section or a file it names.
    #[error(transparent)]
    Config(#[from] crate::field::FieldError),
    /// The evaluation itself.
    #[error("evaluation at step {step}")]
    Eval {
        /// The step.
        step: u64,
        /// What failed.
        source: EvalError,
    },
    /// Gathering the features.
    #[error("gathering eval features")]
    Dist(#[from] crate::dist::DistError),
}
