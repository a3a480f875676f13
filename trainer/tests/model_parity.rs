//! The CLIP model and ClipLoss against open_clip 3.3.0, through fixtures made by
//! scripts/reference/make_model_fixtures.py (weights, inputs, open_clip's outputs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::{Device, Tensor};
use trainer::model::weights::is_buffer_key;
use trainer::{clip_loss, load_safetensors, save_safetensors, Clip, ModelConfig};

const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The fixture model with open_clip's weights loaded through the name-checked loader.
fn parity_model() -> (VarStore, Clip) {
    let cfg = ModelConfig::from_open_clip_json(fixture("model_parity_config.json")).expect("fixture config");
    let vs = VarStore::new(Device::Cpu);
    let clip = Clip::new(&vs.root(), &cfg);
    let report = load_safetensors(&vs, fixture("model_parity_weights.safetensors")).expect("names and shapes match");
    assert_eq!(report.loaded, vs.variables().len());
    (vs, clip)
}

fn io() -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(fixture("model_parity_io.safetensors"))
        .expect("io fixture")
        .into_iter()
        .collect()
}

fn assert_close(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{name}: shape");
    let diff = (got - want).abs().max().double_value(&[]);
    assert!(diff <= TOLERANCE, "{name}: max abs diff {diff} > {TOLERANCE}");
}

#[test]
fn encoders_match_open_clip() {
    let (_vs, clip) = parity_model();
    let io = io();
    tch::no_grad(|| {
        assert_close(
            "image_features",
            &clip.encode_image(&io["images"], false),
            &io["image_features"],
        );
        assert_close(
            "text_features",
            &clip.encode_text(&io["tokens"], false),
            &io["text_features"],
        );
    });
}

#[test]
fn forward_and_loss_match_open_clip() {
    let (_vs, clip) = parity_model();
    let io = io();
    let (img, txt, scale) = tch::no_grad(|| clip.forward(&io["images"], &io["tokens"], true));
    assert_close("image_features_normalized", &img, &io["image_features_normalized"]);
    assert_close("text_features_normalized", &txt, &io["text_features_normalized"]);
    assert_close("logit_scale_exp", &scale, &io["logit_scale_exp"]);
    assert_close("loss", &clip_loss(&img, &txt, &scale), &io["loss"]);
}

#[test]
fn nano_variable_names_and_shapes_equal_open_clip_state_dict() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("model_reference.json")).expect("reference json"))
            .expect("valid json");
    let want: BTreeMap<String, Vec<i64>> =
        serde_json::from_value(reference["nano_state_dict"].clone()).expect("name -> shape map");
    let vs = VarStore::new(Device::Cpu);
    let _clip = Clip::new(&vs.root(), &ModelConfig::preset("nano").expect("nano"));
    let got: BTreeMap<String, Vec<i64>> = vs.variables().into_iter().map(|(n, t)| (n, t.size())).collect();
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    assert_eq!(got, want);
    // open_clip's buffers are exactly what the loader skips.
    for buffer in reference["nano_buffers"].as_array().expect("buffer list") {
        let name = buffer.as_str().expect("buffer name");
        assert!(is_buffer_key(name), "{name} would not be skipped by the loader");
    }
}

#[test]
fn preset_parameter_counts_equal_open_clip() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("model_reference.json")).expect("reference json"))
            .expect("valid json");
    for name in ModelConfig::preset_names() {
        let want = reference["param_counts"][name].as_i64().expect("count");
        assert_eq!(ModelConfig::preset(name).expect("preset").num_params(), want, "{name}");
    }
}

#[test]
fn saved_weights_reload_to_identical_outputs() {
    let (vs, clip) = parity_model();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.safetensors");
    save_safetensors(&vs, &path).expect("save");
    let vs2 = VarStore::new(Device::Cpu);
    let clip2 = Clip::new(&vs2.root(), clip.config());
    load_safetensors(&vs2, &path).expect("reload");
    let io = io();
    tch::no_grad(|| {
        let a = clip.encode_text(&io["tokens"], false);
        let b = clip2.encode_text(&io["tokens"], false);
        assert_eq!((a - b).abs().max().double_value(&[]), 0.0);
    });
}
