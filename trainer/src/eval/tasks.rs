//! Whole evaluations: a model and eval shards in, metrics out.

use std::path::PathBuf;

use serde::Serialize;
use tch::Tensor;

use super::data::{read_eval_set, EvalSkips, Needs};
use super::metrics::{
    build_zeroshot_classifier, retrieval_metrics, zeroshot_metrics, RetrievalMetrics, ZeroShotMetrics,
};
use super::model::EvalModel;
use super::EvalError;

/// Zero-shot classification of a labelled eval set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZeroShotReport {
    /// The metrics.
    pub metrics: ZeroShotMetrics,
    /// Samples left out (no label, bad data).
    pub skipped: EvalSkips,
}

/// Image↔text retrieval over a captioned eval set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrievalReport {
    /// The metrics.
    pub metrics: RetrievalMetrics,
    /// Samples left out (no caption, bad data).
    pub skipped: EvalSkips,
}

/// Zero-shot classification of the image + `.cls` samples of `shards`: a class's text
/// embedding averages `templates` filled with its name (see
/// [`build_zeroshot_classifier`]); labels index `classnames`.
pub fn evaluate_zeroshot(
    model: &EvalModel,
    shards: &[PathBuf],
    classnames: &[String],
    templates: &[String],
    batch_size: usize,
) -> Result<ZeroShotReport, EvalError> {
    let classifier = build_zeroshot_classifier(|texts| model.embed_texts(texts, batch_size), classnames, templates)?;
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let skipped = read_eval_set(shards, model.image_size(), batch_size, Needs::Label, |batch| {
        for (key, label) in batch.keys.iter().zip(&batch.labels) {
            // Needs::Label guarantees a label.
            let label = label.unwrap_or(-1);
            if label < 0 || label as usize >= classnames.len() {
                return Err(EvalError::LabelOutOfRange {
                    sample: key.clone(),
                    label,
                    num_classes: classnames.len(),
                });
            }
            labels.push(label);
        }
        features.push(model.embed_images(&batch.images, batch.len()));
        Ok(())
    })?;
    if labels.is_empty() {
        return Err(EvalError::NoSamples(format!(
            "zero-shot classification: no sample with an image and a .cls label in {} shard(s) ({} skipped)",
            shards.len(),
            skipped.total()
        )));
    }
    let metrics = zeroshot_metrics(&Tensor::cat(&features, 0), &classifier, &labels)?;
    Ok(ZeroShotReport { metrics, skipped })
}

/// Retrieval over the image + `.txt` samples of `shards`; every line of a `.txt` is one
/// caption of its image. `ks` as in [`retrieval_metrics`].
pub fn evaluate_retrieval(
    model: &EvalModel,
    shards: &[PathBuf],
    ks: &[usize],
    batch_size: usize,
) -> Result<RetrievalReport, EvalError> {
    let mut image_features = Vec::new();
    let mut text_features = Vec::new();
    let mut text_to_image = Vec::new();
    let mut num_images = 0usize;
    let skipped = read_eval_set(shards, model.image_size(), batch_size, Needs::Captions, |batch| {
        let mut texts = Vec::new();
        for (offset, captions) in batch.captions.iter().enumerate() {
            for caption in captions {
                texts.push(caption.clone());
                text_to_image.push(num_images + offset);
            }
        }
        image_features.push(model.embed_images(&batch.images, batch.len()));
        text_features.push(model.embed_texts(&texts, batch_size));
        num_images += batch.len();
        Ok(())
    })?;
    if num_images == 0 {
        return Err(EvalError::NoSamples(format!(
            "retrieval: no sample with an image and a .txt caption in {} shard(s) ({} skipped)",
            shards.len(),
            skipped.total()
        )));
    }
    let metrics = retrieval_metrics(
        &Tensor::cat(&image_features, 0),
        &Tensor::cat(&text_features, 0),
        &text_to_image,
        ks,
    )?;
    Ok(RetrievalReport { metrics, skipped })
}
