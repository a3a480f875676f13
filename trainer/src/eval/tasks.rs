//! Whole evaluations: a model and eval shards in, metrics out.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Serialize;
use tch::Tensor;

use super::data::{read_eval_set, EvalSkips, Needs};
use super::error::EvalError;
use super::metrics::{
    build_zeroshot_classifier, fill_template, retrieval_metrics, zeroshot_metrics, RetrievalMetrics, ZeroShotMetrics,
};
use super::model::EvalModel;

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
    evaluate_zeroshot_with_knowledge(model, shards, classnames, templates, &HashMap::new(), batch_size)
}

/// K-LITE knowledge for one filled prompt: `"{prompt} ; {classname} , {gloss}"` (docs/architecture.md §7).
pub fn knowledge_prompt(prompt: &str, classname: &str, gloss: &str) -> String {
    format!("{prompt} ; {classname} , {gloss}")
}

/// The prompts of one class: each template filled with its name, followed by
/// [`knowledge_prompt`]'s suffix when `glosses` (class name → gloss) has the class.
pub fn class_prompts(classname: &str, templates: &[String], glosses: &HashMap<String, String>) -> Vec<String> {
    let filled = templates.iter().map(|t| fill_template(t, classname));
    match glosses.get(classname) {
        Some(gloss) => filled.map(|p| knowledge_prompt(&p, classname, gloss)).collect(),
        None => filled.collect(),
    }
}

/// [`build_zeroshot_classifier`] over [`class_prompts`]: the same (E, C) classifier, with
/// K-LITE knowledge appended to the prompts of the classes in `glosses`.
pub fn build_knowledge_classifier(
    mut encode_text: impl FnMut(&[String]) -> Tensor,
    classnames: &[String],
    templates: &[String],
    glosses: &HashMap<String, String>,
) -> Result<Tensor, EvalError> {
    if glosses.is_empty() || classnames.is_empty() {
        return build_zeroshot_classifier(encode_text, classnames, templates);
    }
    // One column per class, so each class's texts can carry its own gloss; the column math
    // stays build_zeroshot_classifier's.
    let mut columns = Vec::with_capacity(classnames.len());
    for classname in classnames {
        let column = match glosses.get(classname) {
            Some(gloss) => build_zeroshot_classifier(
                |filled| {
                    let prompts: Vec<String> = filled.iter().map(|p| knowledge_prompt(p, classname, gloss)).collect();
                    encode_text(&prompts)
                },
                std::slice::from_ref(classname),
                templates,
            )?,
            None => build_zeroshot_classifier(&mut encode_text, std::slice::from_ref(classname), templates)?,
        };
        columns.push(column); // (E, 1)
    }
    Ok(Tensor::cat(&columns, 1)) // (E, C)
}

/// [`evaluate_zeroshot`] with K-LITE knowledge (`glosses`: class name → gloss) appended to
/// the prompts of the classes that have one (see [`build_knowledge_classifier`]).
pub fn evaluate_zeroshot_with_knowledge(
    model: &EvalModel,
    shards: &[PathBuf],
    classnames: &[String],
    templates: &[String],
    glosses: &HashMap<String, String>,
    batch_size: usize,
) -> Result<ZeroShotReport, EvalError> {
    let classifier = build_knowledge_classifier(
        |texts| model.embed_texts(texts, batch_size),
        classnames,
        templates,
        glosses,
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn knowledge_prompts_follow_each_filled_template() {
        let templates = strings(&["a photo of a {c}.", "art of the {c}"]);
        let glosses = HashMap::from([("ice cream".to_string(), "frozen dessert".to_string())]);
        assert_eq!(
            class_prompts("ice cream", &templates, &glosses),
            [
                "a photo of a ice cream. ; ice cream , frozen dessert",
                "art of the ice cream ; ice cream , frozen dessert"
            ]
        );
        assert_eq!(
            class_prompts("grinning face", &templates, &glosses),
            ["a photo of a grinning face.", "art of the grinning face"]
        );
    }

    /// The encoder sees exactly the knowledge prompts, class by class, and the classifier
    /// equals the plain one for classes without a gloss.
    #[test]
    fn knowledge_classifier_encodes_the_knowledge_prompts() {
        let classnames = strings(&["dog", "grinning face", "goose"]);
        let templates = strings(&["a {c}", "the {c}!"]);
        let glosses = HashMap::from([
            ("dog".to_string(), "a canine".to_string()),
            ("goose".to_string(), "a bird".to_string()),
        ]);
        // A text's embedding: (length, number of spaces, 1).
        let embed = |texts: &[String]| {
            let rows: Vec<f32> = texts
                .iter()
                .flat_map(|t| [t.len() as f32, t.matches(' ').count() as f32, 1.0])
                .collect();
            Tensor::from_slice(&rows).reshape([texts.len() as i64, 3])
        };
        let mut seen = Vec::new();
        let classifier = build_knowledge_classifier(
            |texts| {
                seen.extend(texts.iter().cloned());
                embed(texts)
            },
            &classnames,
            &templates,
            &glosses,
        )
        .unwrap();
        assert_eq!(
            seen,
            [
                "a dog ; dog , a canine",
                "the dog! ; dog , a canine",
                "a grinning face",
                "the grinning face!",
                "a goose ; goose , a bird",
                "the goose! ; goose , a bird"
            ]
        );
        assert_eq!(classifier.size(), [3, 3]);
        let plain = build_zeroshot_classifier(embed, &classnames, &templates).unwrap();
        let diff = (&classifier - &plain)
            .abs()
            .sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
        let diff: Vec<f32> = Vec::try_from(diff).unwrap();
        assert!(diff[0] > 1e-3 && diff[2] > 1e-3, "{diff:?}");
        assert!(diff[1] < 1e-6, "{diff:?}");
        // Without glosses it is the plain classifier.
        let none = build_knowledge_classifier(embed, &classnames, &templates, &HashMap::new()).unwrap();
        assert!(none.allclose(&plain, 0.0, 0.0, false));
    }
}
