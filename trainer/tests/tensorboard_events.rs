//! The event files of `trainer::tensorboard` read back by TensorBoard's own reader
//! (`EventAccumulator`, tensorboard 2.21.0 in .venv, installed by scripts/setup.sh):
//! values, steps and the restart rule (a resumed process's values replace the ones the
//! interrupted process logged past the resume step).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use trainer::tensorboard::{event_files, EventWriter};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `{tag: [[step, value], ...]}` as TensorBoard reads `dir`.
fn read_back(dir: &Path) -> Value {
    let python = repo_root().join(".venv/bin/python");
    let out = Command::new(&python)
        .arg(repo_root().join("tests/tools/tb_scalars.py"))
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", python.display()));
    assert!(
        out.status.success(),
        "tensorboard's reader failed (scripts/setup.sh installs tensorboard into .venv):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("reader output is JSON")
}

fn scalars(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
    pairs.iter().map(|(t, v)| (t.to_string(), *v)).collect()
}

#[test]
fn tensorboard_reads_back_the_values_and_steps() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = EventWriter::open(dir.path(), 0).unwrap();
    writer
        .scalars(1, &scalars(&[("train/loss", 2.75), ("train/lr", 1e-4)]))
        .unwrap();
    writer
        .scalars(
            2,
            &scalars(&[("train/loss", 2.5), ("train/lr", 2e-4), ("eval/acc1", f64::NAN)]),
        )
        .unwrap();
    writer
        .scalars(5_000_000_000, &scalars(&[("train/loss", -0.125)]))
        .unwrap();
    drop(writer);
    let read = read_back(dir.path());
    assert_eq!(
        read,
        serde_json::json!({
            "train/loss": [[1, 2.75], [2, 2.5], [5_000_000_000u64, -0.125]],
            "train/lr": [[1, 1e-4f32 as f64], [2, 2e-4f32 as f64]],
            "eval/acc1": [[2, "nan"]],
        })
    );
}

#[test]
fn after_a_resume_each_step_has_the_newest_value_only() {
    let dir = tempfile::tempdir().unwrap();
    // The interrupted process logged 10..=40; its checkpoint was at step 20.
    let mut first = EventWriter::open(dir.path(), 0).unwrap();
    for step in [10, 20, 30, 40] {
        first.scalars(step, &scalars(&[("loss", step as f64)])).unwrap();
    }
    drop(first);
    let mut resumed = EventWriter::open(dir.path(), 20).unwrap();
    for step in [30, 40, 50] {
        resumed.scalars(step, &scalars(&[("loss", -(step as f64))])).unwrap();
    }
    drop(resumed);
    assert_eq!(event_files(dir.path()).unwrap().len(), 2, "one file per process start");
    assert_eq!(
        read_back(dir.path())["loss"],
        serde_json::json!([[10, 10.0], [20, 20.0], [30, -30.0], [40, -40.0], [50, -50.0]])
    );
    // A fresh start of a run of the same name begins a new history.
    let mut fresh = EventWriter::open(dir.path(), 0).unwrap();
    fresh.scalars(10, &scalars(&[("loss", 1.0)])).unwrap();
    drop(fresh);
    assert_eq!(read_back(dir.path())["loss"], serde_json::json!([[10, 1.0]]));
}
