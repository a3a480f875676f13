//! Zero-shot classification and retrieval metrics, defined exactly as CLIP_benchmark 1.6.2
//! defines them (`metrics/zeroshot_classification.py`, `metrics/zeroshot_retrieval.py`).
//!
//! Pure tensor math on embeddings: no model, no data loading. Features may be unnormalised;
//! every function L2-normalises them first, as CLIP_benchmark does after `encode_*`.

use std::collections::BTreeMap;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::error::EvalError;

/// Rows scored per matrix product in retrieval, so memory stays O(chunk × candidates)
/// instead of O(texts × images).
const SCORE_CHUNK_ROWS: i64 = 1024;

/// Zero-shot classification results (CLIP_benchmark's `acc1`, `acc5`, `mean_per_class_recall`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZeroShotMetrics {
    /// Top-1 accuracy.
    pub acc1: f64,
    /// Top-5 accuracy; `None` with fewer than 5 classes, where CLIP_benchmark reports NaN.
    pub acc5: Option<f64>,
    /// Recall of each class that occurs among the labels, averaged over those classes
    /// (sklearn's `balanced_accuracy_score` of the arg-max predictions).
    pub mean_per_class_recall: f64,
    /// Number of evaluated samples.
    pub num_samples: usize,
    /// Number of classes (columns of the classifier), whether or not they occur.
    pub num_classes: usize,
}

impl ZeroShotMetrics {
    /// The metrics under CLIP_benchmark's key names (`acc5` is left out when it is `None`).
    pub fn to_clip_benchmark_map(&self) -> BTreeMap<String, f64> {
        let mut map = BTreeMap::new();
        map.insert("acc1".to_string(), self.acc1);
        if let Some(acc5) = self.acc5 {
            map.insert("acc5".to_string(), acc5);
        }
        map.insert("mean_per_class_recall".to_string(), self.mean_per_class_recall);
        map
    }

    /// Expected value of each metric for uniformly random predictions, same keys as
    /// [`Self::to_clip_benchmark_map`].
    pub fn chance(&self) -> BTreeMap<String, f64> {
        let classes = self.num_classes.max(1) as f64;
        let mut map = BTreeMap::new();
        map.insert("acc1".to_string(), 1.0 / classes);
        if self.acc5.is_some() {
            map.insert("acc5".to_string(), 5.0_f64.min(classes) / classes);
        }
        map.insert("mean_per_class_recall".to_string(), 1.0 / classes);
        map
    }
}

/// Recall@k in both directions for one k.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecallAtK {
    /// The k asked for.
    pub k: usize,
    /// Text→image: fraction of texts whose image is among the k best-scoring images
    /// (CLIP_benchmark's `image_retrieval_recall@k`).
    pub image_retrieval: f64,
    /// Image→text: fraction of images with at least one of their texts among the k
    /// best-scoring texts (CLIP_benchmark's `text_retrieval_recall@k`).
    pub text_retrieval: f64,
}

/// Retrieval results plus their chance levels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrievalMetrics {
    /// One entry per requested k, in the order asked.
    pub recall: Vec<RecallAtK>,
    /// The same quantities for a uniformly random ranking.
    pub chance: Vec<RecallAtK>,
    /// Number of images.
    pub num_images: usize,
    /// Number of texts (captions), over all images.
    pub num_texts: usize,
}

impl RetrievalMetrics {
    /// The metrics under CLIP_benchmark's key names (`image_retrieval_recall@k`, `text_retrieval_recall@k`).
    pub fn to_clip_benchmark_map(&self) -> BTreeMap<String, f64> {
        recall_map(&self.recall)
    }

    /// Chance levels under the same keys as [`Self::to_clip_benchmark_map`].
    pub fn chance_map(&self) -> BTreeMap<String, f64> {
        recall_map(&self.chance)
    }
}

fn recall_map(recalls: &[RecallAtK]) -> BTreeMap<String, f64> {
    let mut map = BTreeMap::new();
    for r in recalls {
        map.insert(format!("image_retrieval_recall@{}", r.k), r.image_retrieval);
        map.insert(format!("text_retrieval_recall@{}", r.k), r.text_retrieval);
    }
    map
}

/// Rows divided by their L2 norm (norm clamped at 1e-12 as `F.normalize`), as f32.
pub fn l2_normalize(features: &Tensor) -> Tensor {
    let features = features.to_kind(Kind::Float);
    let norms = features
        .norm_scalaropt_dim(2.0, [-1i64].as_slice(), true)
        .clamp_min(1e-12);
    features / norms
}

/// Fills each template's `{c}` with the class name (Python's `template.format(c=name)` for
/// the templates CLIP_benchmark ships, which use no other braces).
pub fn fill_template(template: &str, classname: &str) -> String {
    template.replace("{c}", classname)
}

/// The zero-shot classifier, shape (E, C): for each class, the text embeddings of every
/// template filled with its name are normalised, averaged and renormalised
/// (CLIP_benchmark's `zero_shot_classifier`). `encode_text` gets one class's filled
/// templates and returns their (T, E) embeddings, normalised or not.
pub fn build_zeroshot_classifier(
    mut encode_text: impl FnMut(&[String]) -> Tensor,
    classnames: &[String],
    templates: &[String],
) -> Result<Tensor, EvalError> {
    if classnames.is_empty() {
        return Err(EvalError::NoClassnames);
    }
    if templates.is_empty() {
        return Err(EvalError::NoTemplates);
    }
    let mut columns = Vec::with_capacity(classnames.len());
    for classname in classnames {
        let texts: Vec<String> = templates.iter().map(|t| fill_template(t, classname)).collect();
        let embeddings = encode_text(&texts);
        check_rows(&embeddings, texts.len(), "text embeddings of one class's templates")?;
        let mean = l2_normalize(&embeddings).mean_dim([0i64].as_slice(), false, Kind::Float); // (E,)
        let norm = mean.norm();
        columns.push(mean / norm);
    }
    Ok(Tensor::stack(&columns, 1)) // (E, C)
}

/// Zero-shot metrics of images against a classifier from [`build_zeroshot_classifier`].
/// `image_features` (N, E), `classifier` (E, C), `labels` N class indices in `0..C`.
pub fn zeroshot_metrics(
    image_features: &Tensor,
    classifier: &Tensor,
    labels: &[i64],
) -> Result<ZeroShotMetrics, EvalError> {
    if labels.is_empty() {
        return Err(EvalError::NoSamples("zero-shot classification".to_string()));
    }
    check_rows(image_features, labels.len(), "image features")?;
    let (embed_dim, num_classes) = classifier.size2().map_err(|_| EvalError::Shape {
        what: "zero-shot classifier",
        expected: "(embedding dim, classes)".to_string(),
        got: classifier.size(),
    })?;
    let image_dim = image_features.size()[1];
    if image_dim != embed_dim {
        return Err(EvalError::Shape {
            what: "zero-shot classifier",
            expected: format!("({image_dim}, classes) to match the image features"),
            got: classifier.size(),
        });
    }
    let num_classes = num_classes as usize;
    for (index, &label) in labels.iter().enumerate() {
        if label < 0 || label as usize >= num_classes {
            return Err(EvalError::LabelOutOfRange {
                sample: format!("#{index}"),
                label,
                num_classes,
            });
        }
    }
    // CLIP_benchmark scales by 100 before topk/argmax; kept so rounding ties match.
    let logits = l2_normalize(image_features).matmul(&classifier.to_kind(Kind::Float)) * 100.0;
    let acc1 = top_k_accuracy(&logits, labels, 1)?;
    let acc5 = if num_classes >= 5 {
        Some(top_k_accuracy(&logits, labels, 5)?)
    } else {
        None
    };
    let predictions = to_i64_vec(&logits.argmax(1, false))?;
    Ok(ZeroShotMetrics {
        acc1,
        acc5,
        mean_per_class_recall: mean_per_class_recall(labels, &predictions, num_classes),
        num_samples: labels.len(),
        num_classes,
    })
}

/// Fraction of rows of `logits` (N, C) whose label is among the `k` largest entries;
/// `k` is clipped to C (CLIP_benchmark's `accuracy`, which itself never asks for k > C).
pub fn top_k_accuracy(logits: &Tensor, labels: &[i64], k: usize) -> Result<f64, EvalError> {
    let (rows, classes) = logits.size2().map_err(|_| EvalError::Shape {
        what: "logits",
        expected: "(samples, classes)".to_string(),
        got: logits.size(),
    })?;
    check_rows(logits, labels.len(), "logits")?;
    if rows == 0 {
        return Err(EvalError::NoSamples("top-k accuracy".to_string()));
    }
    let k = (k as i64).clamp(1, classes.max(1));
    let (_, top) = logits.topk(k, 1, true, true);
    let top = to_i64_vec(&top)?;
    let hits = top
        .chunks(k as usize)
        .zip(labels)
        .filter(|(row, label)| row.contains(label))
        .count();
    Ok(hits as f64 / labels.len() as f64)
}

/// Per-class recall averaged over the classes present in `labels` (sklearn's
/// `balanced_accuracy_score`: a class that is only predicted has undefined recall and is
/// left out of the mean).
pub fn mean_per_class_recall(labels: &[i64], predictions: &[i64], num_classes: usize) -> f64 {
    let mut support = vec![0usize; num_classes];
    let mut correct = vec![0usize; num_classes];
    for (&label, &prediction) in labels.iter().zip(predictions) {
        let class = label as usize;
        support[class] += 1;
        if prediction == label {
            correct[class] += 1;
        }
    }
    let recalls: Vec<f64> = support
        .iter()
        .zip(&correct)
        .filter(|(&n, _)| n > 0)
        .map(|(&n, &c)| c as f64 / n as f64)
        .collect();
    if recalls.is_empty() {
        return 0.0;
    }
    recalls.iter().sum::<f64>() / recalls.len() as f64
}

/// Text→image and image→text recall@k (CLIP_benchmark's retrieval `evaluate`).
/// `image_features` (I, E), `text_features` (T, E), `text_to_image[t]` = the image text `t`
/// describes. Scores are cosine similarities. A k larger than the number of candidates is
/// clipped to it (CLIP_benchmark would fail in `topk`). An image without texts counts as a
/// miss in image→text, as in CLIP_benchmark (its recall is 0/0, and NaN > 0 is false).
pub fn retrieval_metrics(
    image_features: &Tensor,
    text_features: &Tensor,
    text_to_image: &[usize],
    ks: &[usize],
) -> Result<RetrievalMetrics, EvalError> {
    let num_images = image_features.size().first().copied().unwrap_or(0) as usize;
    if num_images == 0 {
        return Err(EvalError::NoSamples("retrieval (no images)".to_string()));
    }
    if text_to_image.is_empty() {
        return Err(EvalError::NoSamples("retrieval (no texts)".to_string()));
    }
    check_rows(text_features, text_to_image.len(), "text features")?;
    if let Some((text, &image)) = text_to_image.iter().enumerate().find(|(_, &i)| i >= num_images) {
        return Err(EvalError::ImageIndexOutOfRange {
            text,
            image,
            num_images,
        });
    }
    if let Some(&k) = ks.iter().find(|&&k| k == 0) {
        return Err(EvalError::BadK(k));
    }
    let images = l2_normalize(image_features);
    let texts = l2_normalize(text_features).to_device(images.device());
    let num_texts = text_to_image.len();
    let max_k = ks.iter().copied().max().unwrap_or(1);

    // Text→image: ranked image indices per text.
    let ranked_images = top_indices_by_rows(&texts, &images, max_k)?;
    // Image→text: ranked text indices per image.
    let ranked_texts = top_indices_by_rows(&images, &texts, max_k)?;

    let mut captions_per_image = vec![0usize; num_images];
    for &image in text_to_image {
        captions_per_image[image] += 1;
    }
    let mut recall = Vec::with_capacity(ks.len());
    let mut chance = Vec::with_capacity(ks.len());
    for &k in ks {
        let text_hits = ranked_images
            .iter()
            .zip(text_to_image)
            .filter(|(row, &image)| row.iter().take(k).any(|&i| i as usize == image))
            .count();
        let image_hits = ranked_texts
            .iter()
            .enumerate()
            .filter(|(image, row)| row.iter().take(k).any(|&t| text_to_image[t as usize] == *image))
            .count();
        recall.push(RecallAtK {
            k,
            image_retrieval: text_hits as f64 / num_texts as f64,
            text_retrieval: image_hits as f64 / num_images as f64,
        });
        chance.push(RecallAtK {
            k,
            image_retrieval: k.min(num_images) as f64 / num_images as f64,
            text_retrieval: captions_per_image
                .iter()
                .map(|&n| chance_any_in_top_k(num_texts, n, k))
                .sum::<f64>()
                / num_images as f64,
        });
    }
    Ok(RetrievalMetrics {
        recall,
        chance,
        num_images,
        num_texts,
    })
}

/// Probability that a uniformly random top-k of `total` items contains at least one of
/// `positives` given items: 1 − C(total − positives, k) / C(total, k).
fn chance_any_in_top_k(total: usize, positives: usize, k: usize) -> f64 {
    let k = k.min(total);
    let mut none_drawn = 1.0;
    for j in 0..k {
        if total - j <= positives {
            return 1.0;
        }
        none_drawn *= (total - positives - j) as f64 / (total - j) as f64;
    }
    1.0 - none_drawn
}

/// For each row of `queries` (Q, E), the indices of the `k` best `candidates` (N, E) by dot
/// product, best first (k clipped to N); computed in chunks of rows.
fn top_indices_by_rows(queries: &Tensor, candidates: &Tensor, k: usize) -> Result<Vec<Vec<i64>>, EvalError> {
    let num_queries = queries.size()[0];
    let num_candidates = candidates.size()[0];
    let k = (k as i64).min(num_candidates);
    let candidates_t = candidates.tr(); // (E, N)
    let mut ranked = Vec::with_capacity(num_queries as usize);
    let mut start = 0;
    while start < num_queries {
        let rows = SCORE_CHUNK_ROWS.min(num_queries - start);
        let scores = queries.narrow(0, start, rows).matmul(&candidates_t); // (rows, N)
        let (_, top) = scores.topk(k, 1, true, true);
        let flat = to_i64_vec(&top)?;
        ranked.extend(flat.chunks(k as usize).map(|c| c.to_vec()));
        start += rows;
    }
    Ok(ranked)
}

fn check_rows(tensor: &Tensor, rows: usize, what: &'static str) -> Result<(), EvalError> {
    let size = tensor.size();
    if size.len() != 2 || size[0] != rows as i64 {
        return Err(EvalError::Shape {
            what,
            expected: format!("({rows}, embedding dim)"),
            got: size,
        });
    }
    Ok(())
}

fn to_i64_vec(tensor: &Tensor) -> Result<Vec<i64>, EvalError> {
    let flat = tensor
        .to_device(Device::Cpu)
        .to_kind(Kind::Int64)
        .flatten(0, -1)
        .contiguous();
    Ok(Vec::<i64>::try_from(&flat)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: &[&[f32]]) -> Tensor {
        let cols = rows[0].len() as i64;
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).reshape([rows.len() as i64, cols])
    }

    #[test]
    fn fewer_than_five_classes_has_no_acc5_and_k_is_clipped() {
        // Identity classifier over 3 classes; sample 1 is predicted wrong (class 2 > class 1).
        let classifier = Tensor::eye(3, (Kind::Float, Device::Cpu));
        let images = matrix(&[&[1.0, 0.1, 0.0], &[0.0, 0.4, 0.9], &[0.0, 0.0, 2.0]]);
        let m = zeroshot_metrics(&images, &classifier, &[0, 1, 2]).unwrap();
        assert_eq!(m.acc5, None);
        assert!((m.acc1 - 2.0 / 3.0).abs() < 1e-12);
        // Per-class recalls 1, 0, 1 → 2/3.
        assert!((m.mean_per_class_recall - 2.0 / 3.0).abs() < 1e-12);
        let logits = images.matmul(&classifier);
        assert_eq!(top_k_accuracy(&logits, &[0, 1, 2], 5).unwrap(), 1.0);
        assert!((top_k_accuracy(&logits, &[0, 1, 2], 1).unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!(!m.chance().contains_key("acc5"));
    }

    #[test]
    fn per_class_recall_ignores_classes_that_are_only_predicted() {
        // Class 2 never occurs but is predicted once: the mean is over classes 0 and 1.
        let recall = mean_per_class_recall(&[0, 0, 0, 1], &[0, 0, 2, 1], 3);
        assert!((recall - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn label_out_of_range_is_an_error_naming_it() {
        let classifier = Tensor::eye(2, (Kind::Float, Device::Cpu));
        let images = matrix(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let err = zeroshot_metrics(&images, &classifier, &[0, 2]).unwrap_err();
        assert!(err.to_string().contains("label 2"), "{err}");
    }

    #[test]
    fn classifier_averages_normalised_template_embeddings() {
        // Two templates with very different norms: normalising first makes them weigh equally.
        let classnames = vec!["cat".to_string()];
        let templates = vec!["a {c}".to_string(), "{c}!".to_string()];
        let mut seen = Vec::new();
        let classifier = build_zeroshot_classifier(
            |texts| {
                seen.extend_from_slice(texts);
                matrix(&[&[10.0, 0.0], &[0.0, 0.1]])
            },
            &classnames,
            &templates,
        )
        .unwrap();
        assert_eq!(seen, vec!["a cat".to_string(), "cat!".to_string()]);
        let column = Vec::<f32>::try_from(&classifier.squeeze_dim(1)).unwrap();
        let half = std::f32::consts::FRAC_1_SQRT_2;
        assert!(
            (column[0] - half).abs() < 1e-6 && (column[1] - half).abs() < 1e-6,
            "{column:?}"
        );
    }

    #[test]
    fn single_caption_retrieval_and_large_k() {
        // Image 0 ↔ text 0 match; text 1 is closer to image 0 than to image 1.
        let images = matrix(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let texts = matrix(&[&[1.0, 0.1], &[1.0, 0.5]]);
        let m = retrieval_metrics(&images, &texts, &[0, 1], &[1, 10]).unwrap();
        assert_eq!(m.recall[0].image_retrieval, 0.5);
        // Image 1's best text is text 1 (0.5/|t1| > 0.1/|t0|); image 0's best is text 0.
        assert_eq!(m.recall[0].text_retrieval, 1.0);
        assert_eq!(m.recall[1].image_retrieval, 1.0);
        assert_eq!(m.recall[1].text_retrieval, 1.0);
        assert_eq!(m.chance[0].image_retrieval, 0.5);
        assert_eq!(m.chance[1].text_retrieval, 1.0);
        let keys: Vec<String> = m.to_clip_benchmark_map().into_keys().collect();
        assert!(keys.contains(&"image_retrieval_recall@10".to_string()));
        assert!(keys.contains(&"text_retrieval_recall@1".to_string()));
    }

    #[test]
    fn image_without_captions_counts_as_a_miss() {
        let images = matrix(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let texts = matrix(&[&[1.0, 0.0]]);
        let m = retrieval_metrics(&images, &texts, &[0], &[1]).unwrap();
        assert_eq!(m.recall[0].text_retrieval, 0.5);
        assert_eq!(m.recall[0].image_retrieval, 1.0);
    }

    #[test]
    fn retrieval_rejects_bad_indices() {
        let images = matrix(&[&[1.0, 0.0]]);
        let texts = matrix(&[&[1.0, 0.0]]);
        assert!(matches!(
            retrieval_metrics(&images, &texts, &[3], &[1]),
            Err(EvalError::ImageIndexOutOfRange { image: 3, .. })
        ));
        assert!(matches!(
            retrieval_metrics(&images, &texts, &[0], &[0]),
            Err(EvalError::BadK(0))
        ));
    }

    #[test]
    fn chance_of_any_caption_in_top_k() {
        // 2 positives among 4, top-1: 1/2; top-3 always contains one of them.
        assert!((chance_any_in_top_k(4, 2, 1) - 0.5).abs() < 1e-12);
        assert_eq!(chance_any_in_top_k(4, 2, 3), 1.0);
        assert_eq!(chance_any_in_top_k(4, 0, 2), 0.0);
        // 1 positive among 10, top-3: 3/10.
        assert!((chance_any_in_top_k(10, 1, 3) - 0.3).abs() < 1e-12);
    }
}
