//! Tests of checkpoint storage: crash safety, verification, retention, compatibility.

use super::*;
use std::sync::{Arc, Mutex};
use tch::Kind;

/// Retention of the newest `last` plus every multiple of `every`.
fn keep(last: usize, every: u64) -> CheckpointConfig {
    CheckpointConfig {
        keep_last: last,
        keep_every: every,
        ..CheckpointConfig::default()
    }
}

const CONFIG: &str = "name = \"t\"\n[model]\nwidth = 4\n";

/// A VarStore with two tensors whose values depend on `seed`.
fn tiny_vs(seed: f64) -> VarStore {
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    let w = root.zeros("w", &[2, 3]);
    let b = root.zeros("b", &[3]);
    tch::no_grad(|| {
        w.shallow_clone()
            .copy_(&(Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]) * seed + 0.1));
        b.shallow_clone()
            .copy_(&(Tensor::ones([3], (Kind::Float, Device::Cpu)) * -seed));
    });
    vs
}

fn optim_state(seed: f64) -> Vec<(String, Tensor)> {
    vec![
        (
            "w.exp_avg".into(),
            Tensor::ones([2, 3], (Kind::Float, Device::Cpu)) * seed,
        ),
        ("step".into(), Tensor::from(7i64)),
    ]
}

fn state(step: u64) -> CheckpointState {
    CheckpointState::new(
        step,
        step * 8,
        vec![
            serde_json::json!({"epoch": 0, "offset": step}),
            serde_json::json!({"epoch": 0, "offset": step + 1}),
        ],
        serde_json::json!({"skipped_nonfinite": 0}),
    )
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v: Vec<f32> = t.flatten(0, -1).try_into().expect("f32");
    v.into_iter().map(f32::to_bits).collect()
}

fn step_names(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root)
        .expect("read root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step_"))
        .collect();
    names.sort();
    names
}

/// Collects the messages of `tracing` events emitted while `f` runs.
fn capture_warnings<R>(f: impl FnOnce() -> R) -> (R, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.0.lock().expect("lock")).into_owned();
    (result, text)
}

#[test]
fn save_and_load_round_trip_bitwise() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Checkpoints::new(tmp.path().join("checkpoints"), &keep(3, 0));
    let src = tiny_vs(1.5);
    let dir = store.save(&src, &optim_state(2.5), CONFIG, state(12)).expect("save");
    assert_eq!(dir, tmp.path().join("checkpoints/step_00000012"));
    assert_eq!(
        fs::read_to_string(tmp.path().join("checkpoints/latest"))
            .expect("latest")
            .trim(),
        "step_00000012"
    );

    let ck = store.latest_valid().expect("ok").expect("one checkpoint");
    assert_eq!(ck.dir, dir);
    assert_eq!(ck.config_toml, CONFIG);
    assert_eq!(ck.state.step, 12);
    assert_eq!(ck.state.samples_seen, 96);
    assert_eq!(ck.state.world_size, 2);
    assert_eq!(ck.state.loader[1]["offset"], 13);
    assert_eq!(ck.state.config_hash, sha256_hex(CONFIG.as_bytes()));
    assert_eq!(
        ck.state.files.keys().collect::<Vec<_>>(),
        [CONFIG_FILE, MODEL_FILE, OPTIM_FILE]
    );

    let dst = tiny_vs(-3.0);
    let optim = ck.load_into(&dst, 0).expect("load");
    let (sv, dv) = (src.variables(), dst.variables());
    for name in ["w", "b"] {
        assert_eq!(bits(&sv[name]), bits(&dv[name]), "{name}");
    }
    let optim: BTreeMap<String, Tensor> = optim.into_iter().collect();
    assert_eq!(
        bits(&optim["w.exp_avg"]),
        bits(&(Tensor::ones([2, 3], (Kind::Float, Device::Cpu)) * 2.5))
    );
    assert_eq!(optim["step"].kind(), Kind::Int64);
    assert_eq!(optim["step"].int64_value(&[]), 7);
}

#[test]
fn retention_keeps_last_k_and_every_mth() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("ck");
    let store = Checkpoints::new(&root, &keep(2, 4));
    let vs = tiny_vs(1.0);
    for step in 1..=9 {
        store.save(&vs, &optim_state(1.0), CONFIG, state(step)).expect("save");
    }
    // Newest two (8, 9) plus multiples of 4 (4, 8).
    assert_eq!(step_names(&root), ["step_00000004", "step_00000008", "step_00000009"]);

    let none_every = Checkpoints::new(tmp.path().join("ck2"), &keep(1, 0));
    for step in [3, 5] {
        none_every
            .save(&vs, &optim_state(1.0), CONFIG, state(step))
            .expect("save");
    }
    assert_eq!(step_names(&tmp.path().join("ck2")), ["step_00000005"]);
}

#[test]
fn retention_keeps_the_branch_points_of_at_steps() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("ck");
    let cfg = CheckpointConfig {
        at_steps: vec![2, 5],
        ..keep(1, 0)
    };
    let store = Checkpoints::new(&root, &cfg);
    let vs = tiny_vs(1.0);
    for step in 1..=7 {
        store.save(&vs, &optim_state(1.0), CONFIG, state(step)).expect("save");
    }
    // The newest (7) plus the listed steps, which a cooldown branch resumes from.
    assert_eq!(step_names(&root), ["step_00000002", "step_00000005", "step_00000007"]);
}

#[test]
fn saving_the_same_step_again_replaces_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Checkpoints::new(tmp.path(), &keep(2, 0));
    store
        .save(&tiny_vs(1.0), &optim_state(1.0), CONFIG, state(5))
        .expect("first");
    store
        .save(&tiny_vs(2.0), &optim_state(1.0), CONFIG, state(5))
        .expect("again");
    let ck = store.latest_valid().expect("ok").expect("some");
    let dst = tiny_vs(0.0);
    ck.load_into(&dst, 0).expect("load");
    assert_eq!(bits(&dst.variables()["b"]), bits(&tiny_vs(2.0).variables()["b"]));
    assert_eq!(step_names(tmp.path()), ["step_00000005"]);
}

fn three_checkpoints(root: &Path) -> Checkpoints {
    let store = Checkpoints::new(root, &keep(5, 0));
    for step in [10, 20, 30] {
        store
            .save(&tiny_vs(step as f64), &optim_state(1.0), CONFIG, state(step))
            .expect("save");
    }
    store
}

#[test]
fn corrupt_newest_falls_back_to_previous_with_warning() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = three_checkpoints(tmp.path());
    let model = tmp.path().join("step_00000030").join(MODEL_FILE);
    let mut bytes = fs::read(&model).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::write(&model, bytes).expect("write");

    let (found, logs) = capture_warnings(|| store.latest_valid());
    let ck = found.expect("ok").expect("some");
    assert_eq!(ck.state.step, 20);
    assert!(
        logs.contains("step_00000030") && logs.contains("model.safetensors") && logs.contains("SHA-256"),
        "{logs}"
    );

    let err = Checkpoint::open(&tmp.path().join("step_00000030"))
        .expect_err("corrupt")
        .to_string();
    assert!(err.contains("step_00000030") && err.contains(MODEL_FILE), "{err}");
}

#[test]
fn truncated_state_json_falls_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = three_checkpoints(tmp.path());
    let state_path = tmp.path().join("step_00000030").join(STATE_FILE);
    let text = fs::read(&state_path).expect("read");
    fs::write(&state_path, &text[..text.len() / 2]).expect("truncate");
    let (found, logs) = capture_warnings(|| store.latest_valid());
    assert_eq!(found.expect("ok").expect("some").state.step, 20);
    assert!(logs.contains("state.json"), "{logs}");

    // A shortened model file is caught by its size before hashing.
    let model = tmp.path().join("step_00000020").join(MODEL_FILE);
    let bytes = fs::read(&model).expect("read");
    fs::write(&model, &bytes[..100]).expect("truncate");
    let err = Checkpoint::open(&tmp.path().join("step_00000020"))
        .expect_err("short")
        .to_string();
    assert!(err.contains("has 100 bytes"), "{err}");
}

#[test]
fn leftover_tmp_folder_is_ignored_and_removed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = three_checkpoints(tmp.path());
    // A kill while writing step 40: the temporary folder holds partial files
    // and `latest` still names step 30.
    let partial = tmp.path().join("step_00000040.tmp");
    fs::create_dir(&partial).expect("mkdir");
    fs::write(partial.join(MODEL_FILE), b"half a model").expect("write");
    fs::write(tmp.path().join("latest.tmp"), b"step_000").expect("write");
    let ck = store.latest_valid().expect("ok").expect("some");
    assert_eq!(ck.state.step, 30);
    assert!(!partial.exists());
    assert!(!tmp.path().join("latest.tmp").exists());
}

#[test]
fn latest_pointing_to_missing_folder_uses_highest_step() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = three_checkpoints(tmp.path());
    fs::write(tmp.path().join(LATEST_FILE), "step_00000099\n").expect("write");
    let (found, logs) = capture_warnings(|| store.latest_valid());
    assert_eq!(found.expect("ok").expect("some").state.step, 30);
    assert!(logs.contains("step_00000099"), "{logs}");

    fs::write(tmp.path().join(LATEST_FILE), "garbage").expect("write");
    assert_eq!(store.latest_valid().expect("ok").expect("some").state.step, 30);

    fs::remove_file(tmp.path().join(LATEST_FILE)).expect("rm");
    assert_eq!(store.latest_valid().expect("ok").expect("some").state.step, 30);
}

#[test]
fn latest_is_where_the_search_starts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = three_checkpoints(tmp.path());
    fs::write(tmp.path().join(LATEST_FILE), "step_00000020\n").expect("write");
    assert_eq!(store.latest_valid().expect("ok").expect("some").state.step, 20);
}

#[test]
fn no_checkpoints_is_none_and_all_corrupt_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Checkpoints::new(tmp.path().join("absent"), &keep(2, 0));
    assert!(store.latest_valid().expect("ok").is_none());

    let store = three_checkpoints(tmp.path());
    for step in ["step_00000010", "step_00000020", "step_00000030"] {
        fs::remove_file(tmp.path().join(step).join(OPTIM_FILE)).expect("rm");
    }
    let err = store.latest_valid().expect_err("none valid").to_string();
    assert!(err.contains("all 3"), "{err}");
}

#[test]
fn model_mismatch_on_load_names_the_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Checkpoints::new(tmp.path(), &keep(2, 0));
    let dir = store
        .save(&tiny_vs(1.0), &optim_state(1.0), CONFIG, state(1))
        .expect("save");
    let other = VarStore::new(Device::Cpu);
    let _w = other.root().zeros("w", &[3, 3]);
    let _b = other.root().zeros("b", &[3]);
    let err = Checkpoint::open(&dir)
        .expect("valid")
        .load_into(&other, 0)
        .expect_err("shape")
        .to_string();
    assert!(err.contains("model.safetensors") && err.contains("w:"), "{err}");
}

#[test]
fn config_changes_outside_model_are_warnings() {
    let saved: toml::Table = "name = \"a\"\nout_dir = \"runs\"\n[model]\nwidth = 512\n[optim]\nlr = 0.001\n[data]\ntrain = \"x/{0..3}.tar\"\n"
        .parse()
        .expect("toml");
    let current: toml::Table = "name = \"b\"\nout_dir = \"elsewhere\"\n[model]\nwidth = 512\n[optim]\nlr = 0.0005\nbeta2 = 0.95\n[data]\ntrain = \"y/{0..3}.tar\"\n"
        .parse()
        .expect("toml");
    let warnings = config_compatibility(&saved, &current).expect("compatible");
    assert_eq!(
        warnings,
        [
            "data.train: \"x/{0..3}.tar\" -> \"y/{0..3}.tar\"",
            "optim.beta2: (absent) -> 0.95",
            "optim.lr: 0.001 -> 0.0005",
        ]
    );
    assert!(config_compatibility(&saved, &saved).expect("same").is_empty());
}

#[test]
fn config_changes_under_model_are_errors() {
    let saved: toml::Table = "[model]\nembed_dim = 64\n[model.vision]\nwidth = 128\nlayers = 2\n[optim]\nlr = 0.1\n"
        .parse()
        .expect("toml");
    let current: toml::Table = "[model]\nembed_dim = 64\n[model.vision]\nwidth = 256\n[optim]\nlr = 0.2\n"
        .parse()
        .expect("toml");
    let err = config_compatibility(&saved, &current).expect_err("model differs");
    match &err {
        CheckpointError::Incompatible { keys } => {
            assert_eq!(
                keys,
                &["model.vision.layers: 2 -> (absent)", "model.vision.width: 128 -> 256"]
            )
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("model.vision.width"));
}

#[test]
fn activation_checkpointing_may_change_on_resume() {
    // It is under [model] but changes no weight: a warning, not an incompatible model.
    let saved: toml::Table = "[model]\nembed_dim = 64\n[model.vision]\nwidth = 128\n"
        .parse()
        .expect("toml");
    let current: toml::Table =
        "[model]\nembed_dim = 64\ngrad_checkpointing = true\n[model.vision]\nwidth = 128\ngrad_checkpointing = false\n"
            .parse()
            .expect("toml");
    let warnings = config_compatibility(&saved, &current).expect("compatible");
    assert_eq!(
        warnings,
        [
            "model.grad_checkpointing: (absent) -> true",
            "model.vision.grad_checkpointing: (absent) -> false"
        ]
    );
}
