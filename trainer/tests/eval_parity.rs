//! Metric parity with CLIP_benchmark 1.6.2: the fixtures hold seeded embeddings and the
//! metrics CLIP_benchmark's own code computed on them
//! (scripts/reference/make_eval_fixtures.py).
use std::collections::HashMap;
use std::path::PathBuf;

use tch::{Kind, Tensor};
use trainer::eval::{build_zeroshot_classifier, retrieval_metrics, zeroshot_metrics};

const TOLERANCE: f64 = 1e-6;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

struct Fixtures {
    tensors: HashMap<String, Tensor>,
    expected: serde_json::Value,
}

impl Fixtures {
    fn load() -> Self {
        let tensors = Tensor::read_safetensors(fixture_dir().join("eval_embeddings.safetensors"))
            .expect("read eval_embeddings.safetensors")
            .into_iter()
            .collect();
        let text = std::fs::read_to_string(fixture_dir().join("eval_expected.json")).expect("read eval_expected.json");
        let expected = serde_json::from_str(&text).expect("parse eval_expected.json");
        Self { tensors, expected }
    }

    fn tensor(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture tensor {name} missing"))
    }

    fn strings(&self, case: &str, field: &str) -> Vec<String> {
        self.expected[case][field]
            .as_array()
            .unwrap_or_else(|| panic!("{case}.{field} missing"))
            .iter()
            .map(|v| v.as_str().expect("string").to_string())
            .collect()
    }
}

fn assert_close(what: &str, got: f64, expected: f64) {
    assert!(
        (got - expected).abs() <= TOLERANCE,
        "{what}: got {got}, CLIP_benchmark {expected}"
    );
}

fn check_zeroshot(case: &str) {
    let fx = Fixtures::load();
    let classnames = fx.strings(case, "classnames");
    let templates = fx.strings(case, "templates");
    // (C, T, E) → look each filled template up by its text, as a text encoder would.
    let text_embeddings = fx.tensor(&format!("{case}.text_embeddings"));
    let mut by_text = HashMap::new();
    for (c, name) in classnames.iter().enumerate() {
        for (t, template) in templates.iter().enumerate() {
            by_text.insert(
                template.replace("{c}", name),
                text_embeddings.get(c as i64).get(t as i64),
            );
        }
    }
    let classifier = build_zeroshot_classifier(
        |texts| Tensor::stack(&texts.iter().map(|t| by_text[t].shallow_clone()).collect::<Vec<_>>(), 0),
        &classnames,
        &templates,
    )
    .expect("build classifier");
    let expected_classifier = fx.tensor(&format!("{case}.classifier"));
    assert_eq!(classifier.size(), expected_classifier.size());
    let max_diff = (&classifier - expected_classifier).abs().max().double_value(&[]);
    assert!(
        max_diff < 1e-6,
        "{case}: classifier differs from CLIP_benchmark's by {max_diff}"
    );

    let labels = Vec::<i64>::try_from(&fx.tensor(&format!("{case}.labels")).to_kind(Kind::Int64)).expect("labels");
    let metrics =
        zeroshot_metrics(fx.tensor(&format!("{case}.image_features")), &classifier, &labels).expect("metrics");
    let expected = &fx.expected[case];
    assert_close("acc1", metrics.acc1, expected["acc1"].as_f64().expect("acc1"));
    match (metrics.acc5, expected["acc5"].as_f64()) {
        (Some(got), Some(want)) => assert_close("acc5", got, want),
        (None, None) => {}
        (got, want) => panic!("{case}: acc5 {got:?}, CLIP_benchmark {want:?}"),
    }
    assert_close(
        "mean_per_class_recall",
        metrics.mean_per_class_recall,
        expected["mean_per_class_recall"]
            .as_f64()
            .expect("mean_per_class_recall"),
    );
    assert_eq!(metrics.num_classes, classnames.len());
}

fn check_retrieval(case: &str) {
    let fx = Fixtures::load();
    let text_to_image: Vec<usize> =
        Vec::<i64>::try_from(&fx.tensor(&format!("{case}.text_to_image")).to_kind(Kind::Int64))
            .expect("text_to_image")
            .into_iter()
            .map(|i| i as usize)
            .collect();
    let ks: Vec<usize> = fx.expected[case]["ks"]
        .as_array()
        .expect("ks")
        .iter()
        .map(|k| k.as_u64().expect("k") as usize)
        .collect();
    let metrics = retrieval_metrics(
        fx.tensor(&format!("{case}.image_features")),
        fx.tensor(&format!("{case}.text_features")),
        &text_to_image,
        &ks,
    )
    .expect("retrieval metrics");
    let got = metrics.to_clip_benchmark_map();
    let expected = fx.expected[case]["metrics"].as_object().expect("metrics");
    assert_eq!(
        got.len(),
        expected.len(),
        "{case}: keys {:?} vs {:?}",
        got.keys(),
        expected.keys()
    );
    for (key, want) in expected {
        let value = got.get(key).unwrap_or_else(|| panic!("{case}: metric {key} missing"));
        assert_close(&format!("{case} {key}"), *value, want.as_f64().expect("number"));
    }
}

#[test]
fn zeroshot_matches_clip_benchmark() {
    check_zeroshot("zeroshot");
}

#[test]
fn zeroshot_with_three_classes_matches_clip_benchmark() {
    check_zeroshot("zeroshot_small");
}

#[test]
fn retrieval_with_several_captions_matches_clip_benchmark() {
    check_retrieval("retrieval");
}

#[test]
fn retrieval_with_one_caption_matches_clip_benchmark() {
    check_retrieval("retrieval_single");
}
