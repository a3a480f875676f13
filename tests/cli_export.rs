//! `ferroclip export` end to end: a random-init run of the interop fixture's
//! architecture is exported, and the written key set and shapes are compared with
//! the open_clip 3.3.0 state_dict recorded by scripts/reference/make_interop_fixture.py
//! (trainer/tests/fixtures/interop_keys.json). The open_clip-side load of an export
//! is scripts/reference/check_export.py (needs .venv-ref, so not run here).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use trainer::model::weights;
use trainer::tch::nn::VarStore;
use trainer::tch::{Device, Kind, Tensor};
use trainer::{Clip, ModelConfig};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("trainer/tests/fixtures")
        .join(name)
}

fn fixture_config() -> ModelConfig {
    ModelConfig::from_open_clip_json(fixture("interop_open_clip_config.json")).expect("fixture config")
}

/// runs/<name>/ with a final model, checkpoints step 10 and 20 (different weights)
/// and `checkpoints/latest` naming step 20; each folder has the resolved config.
fn write_run(root: &Path, cfg: &ModelConfig) -> PathBuf {
    let run = root.join("runs").join("tiny");
    let mut table = toml::Table::new();
    table.insert("name".into(), toml::Value::String("tiny".into()));
    table.insert("model".into(), toml::Value::try_from(cfg).expect("model table"));
    let config = toml::to_string(&table).expect("config toml");
    for (seed, folder) in [
        (10, run.join("checkpoints/step_00000010")),
        (20, run.join("checkpoints/step_00000020")),
        (30, run.clone()),
    ] {
        std::fs::create_dir_all(&folder).expect("mkdir");
        trainer::tch::manual_seed(seed);
        let vs = VarStore::new(Device::Cpu);
        let _clip = Clip::new(&vs.root(), cfg);
        weights::save_safetensors(&vs, folder.join("model.safetensors")).expect("save");
        std::fs::write(folder.join("config.toml"), &config).expect("config");
    }
    std::fs::write(run.join("checkpoints/latest"), "step_00000020\n").expect("latest");
    run
}

fn ferroclip(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .arg("export")
        .args(args)
        .output()
        .expect("start ferroclip")
}

fn export(checkpoint: &Path, out: &Path) -> Output {
    ferroclip(&[Path::new("--checkpoint"), checkpoint, Path::new("--out"), out])
}

fn read_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .expect("read export")
        .into_iter()
        .collect()
}

#[test]
fn export_writes_open_clips_key_set_shapes_and_config() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = fixture_config();
    let run = write_run(tmp.path(), &cfg);
    let out = tmp.path().join("export");
    let result = export(&run, &out);
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "export failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(stdout.contains("local-dir:"), "{stdout}");

    // Exactly open_clip's state_dict: same keys, same shapes, fp32.
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("interop_keys.json")).expect("keys json")).expect("json");
    let want: BTreeMap<String, Vec<i64>> =
        serde_json::from_value(reference["state_dict"].clone()).expect("key -> shape");
    let tensors = read_tensors(&out.join("open_clip_model.safetensors"));
    let got: BTreeMap<String, Vec<i64>> = tensors.iter().map(|(k, t)| (k.clone(), t.size())).collect();
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    assert_eq!(got, want);
    assert!(tensors.values().all(|t| t.kind() == Kind::Float));

    // The values are the run's final model (not a checkpoint's).
    let final_model = read_tensors(&run.join("model.safetensors"));
    for (name, t) in &tensors {
        let diff = (t - &final_model[name]).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0, "{name}");
    }

    // The config: model_cfg equal to the fixture's open_clip config, plus preprocessing.
    let folder: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("open_clip_config.json")).expect("config"))
            .expect("json");
    let fixture_json: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("interop_open_clip_config.json")).expect("fixture json"))
            .expect("json");
    let model_cfg = &folder["model_cfg"];
    assert_eq!(model_cfg["embed_dim"], fixture_json["embed_dim"]);
    assert_eq!(model_cfg["init_logit_bias"], fixture_json["init_logit_bias"]);
    for section in ["vision_cfg", "text_cfg"] {
        for (key, value) in fixture_json[section].as_object().expect("section") {
            assert_eq!(&model_cfg[section][key], value, "{section}.{key}");
        }
    }
    assert_eq!(folder["preprocess_cfg"]["interpolation"], "bicubic");
    let std2 = folder["preprocess_cfg"]["std"][2].as_f64().expect("std");
    assert_eq!(std2 as f32, 0.275_777_11_f32); // open_clip's OPENAI_DATASET_STD[2]
}

#[test]
fn export_follows_checkpoints_latest() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = write_run(tmp.path(), &fixture_config());
    let out = tmp.path().join("from_latest");
    let result = export(&run.join("checkpoints"), &out);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let exported = read_tensors(&out.join("open_clip_model.safetensors"));
    let step20 = read_tensors(&run.join("checkpoints/step_00000020/model.safetensors"));
    let diff = (&exported["visual.proj"] - &step20["visual.proj"])
        .abs()
        .max()
        .double_value(&[]);
    assert_eq!(diff, 0.0);
}

#[test]
fn export_errors_name_the_missing_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let stderr = |o: Output| {
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };

    let err = stderr(export(&tmp.path().join("no_such_run"), &out));
    assert!(err.contains("no_such_run"), "{err}");

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let err = stderr(export(&empty, &out));
    assert!(err.contains("empty/model.safetensors"), "{err}");

    let run = write_run(tmp.path(), &fixture_config());
    std::fs::write(run.join("checkpoints/latest"), "step_00000099").expect("latest");
    let err = stderr(export(&run.join("checkpoints"), &out));
    assert!(err.contains("step_00000099/model.safetensors"), "{err}");

    std::fs::remove_file(run.join("config.toml")).expect("rm");
    std::fs::remove_file(run.join("checkpoints/step_00000020/config.toml")).expect("rm");
    std::fs::write(run.join("checkpoints/latest"), "step_00000020").expect("latest");
    let err = stderr(export(&run.join("checkpoints/step_00000020"), &out));
    assert!(err.contains("config.toml"), "{err}");
    assert!(!out.join("open_clip_model.safetensors").exists());
}
