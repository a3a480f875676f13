//! Tests of the model config: TOML, presets, open_clip JSON, validation.

use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn write_temp(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write temp config");
    path
}

#[test]
fn presets_parse_and_validate() {
    for name in ModelConfig::preset_names() {
        let cfg = ModelConfig::preset(name).expect(name);
        cfg.validate().expect(name);
    }
    let tiny = ModelConfig::preset("tiny").expect("tiny");
    assert_eq!(tiny.embed_dim, 128);
    assert_eq!(
        (tiny.vision.image_size, tiny.vision.patch_size, tiny.vision.layers),
        (64, 8, 4)
    );
    assert_eq!((tiny.vision.width, tiny.vision.heads()), (128, 2));
    assert_eq!(
        (
            tiny.text.context_length,
            tiny.text.layers,
            tiny.text.width,
            tiny.text.heads
        ),
        (32, 4, 128, 2)
    );
}

#[test]
fn unknown_preset_lists_known_ones() {
    let err = ModelConfig::load("vit-bigG-14")
        .expect_err("no such preset")
        .to_string();
    assert!(
        err.contains("vit-bigG-14") && err.contains("nano, tiny, vit-b-32, vit-b-16, vit-l-14, vit-h-14"),
        "{err}"
    );
}

#[test]
fn validation_names_the_field() {
    let mut cfg = ModelConfig::preset("nano").expect("nano");
    cfg.vision.width = 100;
    cfg.vision.head_width = 64;
    let err = cfg.validate().expect_err("100 % 64 != 0").to_string();
    assert!(
        err.contains("model.vision.width (100)") && err.contains("model.vision.head_width (64)"),
        "{err}"
    );

    let mut cfg = ModelConfig::preset("nano").expect("nano");
    cfg.text.heads = 3;
    let err = cfg.validate().expect_err("64 % 3 != 0").to_string();
    assert!(
        err.contains("model.text.width (64)") && err.contains("model.text.heads (3)"),
        "{err}"
    );

    let mut cfg = ModelConfig::preset("nano").expect("nano");
    cfg.vision.patch_size = 5;
    let err = cfg.validate().expect_err("32 % 5 != 0").to_string();
    assert!(err.contains("model.vision.patch_size (5)"), "{err}");

    let mut cfg = ModelConfig::preset("nano").expect("nano");
    cfg.text.layers = 0;
    let err = cfg.validate().expect_err("no layers").to_string();
    assert!(err.contains("model.text.layers (0)"), "{err}");
}

#[test]
fn unknown_toml_field_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = include_str!("../../../../configs/models/nano.toml").replace("head_width = 32", "head_widht = 32");
    let path = write_temp(&dir, "typo.toml", &text);
    let err = ModelConfig::load(path.to_str().expect("utf-8 path"))
        .expect_err("typo")
        .to_string();
    assert!(err.contains("head_widht") && err.contains("typo.toml"), "{err}");
}

#[test]
fn toml_file_defaults_match_open_clip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_temp(
        &dir,
        "m.toml",
        "embed_dim = 8\n[vision]\nimage_size = 16\npatch_size = 8\nwidth = 64\nlayers = 1\n\
         [text]\nwidth = 16\nheads = 2\nlayers = 1\n",
    );
    let cfg = ModelConfig::from_toml_file(&path).expect("valid");
    assert_eq!((cfg.vision.head_width, cfg.vision.mlp_ratio), (64, 4.0));
    assert_eq!((cfg.text.context_length, cfg.text.vocab_size), (77, 49408));
    assert!((cfg.init_logit_scale - 2.659_260_036_932_778).abs() < 1e-12);
}

#[test]
fn open_clip_vit_b_32_json_equals_preset() {
    let from_json = ModelConfig::from_open_clip_json(fixture("open_clip_ViT-B-32.json")).expect("parses");
    assert_eq!(from_json, ModelConfig::preset("vit-b-32").expect("preset"));
    let via_load = ModelConfig::load(fixture("open_clip_ViT-B-32.json").to_str().expect("utf-8")).expect("load");
    assert_eq!(via_load, from_json);
}

#[test]
fn open_clip_json_rejects_unsupported_keys_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (r#""quick_gelu": true,"#, "", "quick_gelu"),
        (r#""custom_text": true,"#, "", "custom_text"),
        (
            "",
            r#""timm_model_name": "vit_base_patch16_224","#,
            "vision_cfg.timm_model_name",
        ),
        ("", r#""attentional_pool": true,"#, "vision_cfg.attentional_pool"),
        ("", r#""ls_init_value": 1e-5,"#, "vision_cfg.ls_init_value"),
    ];
    for (top, vision, key) in cases {
        let text = format!(
            r#"{{ {top} "embed_dim": 32,
               "vision_cfg": {{ {vision} "image_size": 32, "layers": 1, "width": 64, "patch_size": 8 }},
               "text_cfg": {{ "context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1 }} }}"#
        );
        let path = write_temp(&dir, "m.json", &text);
        let err = ModelConfig::from_open_clip_json(&path).expect_err(key).to_string();
        assert!(
            err.contains(&format!("`{key}`")) && err.contains("m.json"),
            "{key}: {err}"
        );
    }
    let hf = r#"{ "embed_dim": 32, "vision_cfg": { "image_size": 32, "layers": 1, "width": 64, "patch_size": 8 },
                  "text_cfg": { "hf_model_name": "roberta-base", "width": 32, "heads": 2, "layers": 1 } }"#;
    let err = ModelConfig::from_open_clip_json(write_temp(&dir, "hf.json", hf))
        .expect_err("hf")
        .to_string();
    assert!(err.contains("text_cfg.hf_model_name"), "{err}");
    let resnet = r#"{ "embed_dim": 32, "vision_cfg": { "image_size": 32, "layers": [3, 4, 6, 3], "width": 64 },
                      "text_cfg": { "width": 32, "heads": 2, "layers": 1 } }"#;
    let err = ModelConfig::from_open_clip_json(write_temp(&dir, "rn.json", resnet))
        .expect_err("rn")
        .to_string();
    assert!(
        err.contains("vision_cfg.layers") && err.contains("ModifiedResNet"),
        "{err}"
    );
}

#[test]
fn open_clip_json_accepts_explicit_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = r#"{ "embed_dim": 32, "quick_gelu": false,
        "vision_cfg": { "image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "patch_dropout": 0.0, "ls_init_value": null },
        "text_cfg": { "context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1, "pool_type": "argmax", "proj_bias": false } }"#;
    let cfg = ModelConfig::from_open_clip_json(write_temp(&dir, "ok.json", text)).expect("defaults are fine");
    assert_eq!(cfg.vision.heads(), 1);
    assert_eq!(cfg.text.context_length, 8);
}

#[test]
fn num_params_match_open_clip() {
    // Counted by open_clip 3.3.0 (scripts/reference/make_model_fixtures.py).
    assert_eq!(
        ModelConfig::preset("vit-b-32").expect("preset").num_params(),
        151_277_313
    );
    assert_eq!(ModelConfig::preset("tiny").expect("preset").num_params(), 7_981_057);
    assert_eq!(ModelConfig::preset("nano").expect("preset").num_params(), 3_382_017);
    // open_clip 3.3.0's CLIP(**get_model_config(name)) counted on a meta device.
    for (preset, params) in [
        ("vit-b-16", 149_620_737),
        ("vit-l-14", 427_616_513),
        ("vit-h-14", 986_109_441),
    ] {
        assert_eq!(
            ModelConfig::preset(preset).expect("preset").num_params(),
            params,
            "{preset}"
        );
    }
}

#[test]
fn macs_grow_with_the_model() {
    let nano = ModelConfig::preset("nano").expect("preset").macs_per_sample();
    let b32 = ModelConfig::preset("vit-b-32").expect("preset").macs_per_sample();
    // ViT-B-32 is ~4.4 GMACs image + ~2.9 GMACs text per open_clip's profile table.
    assert!(b32 > 7_000_000_000 && b32 < 7_600_000_000, "{b32}");
    assert!(nano < b32 / 1000, "{nano}");
}
