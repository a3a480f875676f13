//! C1–C3: damaged and hostile checkpoint folders under `ferroclip train --resume latest`.
//! One real run (nano model, 10 steps, checkpoints at steps 3, 6 and 9) is made once and
//! copied for each case; each case damages the newest checkpoint and resumes.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::{resumed_step, write_shape_shards};
use crate::{ferroclip, row, run_measured};

const CONFIG: &str = r#"name = "t"
model = "nano"
seed = 3
threads = 1
[data]
train = "shards"
batch_size = 8
workers = 1
shuffle_buffer = 12
[optim]
lr = 2e-3
[schedule]
steps = 10
warmup_steps = 3
[checkpoint]
every = 3
keep_last = 3
"#;

/// The finished run every case starts from (made once per test process).
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        // In cargo's scratch folder for tests (target/tmp), made afresh by each test process.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("abuse-checkpoint-template");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        write_shape_shards(&dir.join("shards"), 48, 24);
        std::fs::write(dir.join("t.toml"), CONFIG).unwrap();
        let mut cmd = ferroclip();
        cmd.current_dir(&dir).args(["train", "--config", "t.toml"]);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

/// A copy of the finished run.
fn copy_of_run() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", template().display()))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

/// `train --resume latest` in `dir`: success, its log, and the step it resumed from.
fn resume(dir: &Path) -> (String, u64, f64) {
    let mut cmd = ferroclip();
    cmd.env("RUST_LOG", "info")
        .current_dir(dir)
        .args(["train", "--config", "t.toml", "--resume", "latest"]);
    let measured = run_measured(cmd);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&measured.output.stdout),
        String::from_utf8_lossy(&measured.output.stderr)
    );
    assert!(measured.output.status.success(), "{log}");
    let step = resumed_step(&log, "runs/t/checkpoints/step_");
    (log, step, measured.peak_rss_mib)
}

fn newest(dir: &Path) -> PathBuf {
    dir.join("runs/t/checkpoints/step_00000009")
}

#[test]
fn c1_a_truncated_file_skips_that_checkpoint_by_name() {
    let dir = copy_of_run();
    let optim = newest(dir.path()).join("optim.safetensors");
    let len = std::fs::metadata(&optim).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&optim)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (log, step, _) = resume(dir.path());
    assert_eq!(step, 6, "{log}");
    assert!(
        log.contains("step_00000009") && log.contains("optim.safetensors has"),
        "{log}"
    );
    row(
        "C1",
        "newest checkpoint's optim.safetensors cut in half",
        "skipped naming the file; resumed from step 6",
    );
}

#[test]
fn c2_a_file_swapped_in_from_another_step_is_caught() {
    let dir = copy_of_run();
    let from = dir.path().join("runs/t/checkpoints/step_00000006/model.safetensors");
    std::fs::copy(from, newest(dir.path()).join("model.safetensors")).unwrap();
    let (log, step, _) = resume(dir.path());
    assert_eq!(step, 6, "{log}");
    assert!(log.contains("model.safetensors has SHA-256"), "{log}");
    row(
        "C2",
        "step 6's model.safetensors copied into step 9",
        "SHA-256 mismatch named; resumed from step 6",
    );
}

#[test]
fn c3_state_and_pointer_files_cannot_reach_outside_the_run() {
    // state.json naming a file outside the folder.
    let dir = copy_of_run();
    let state_path = newest(dir.path()).join("state.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["files"]["../../../../../../etc/passwd"] = serde_json::json!({"bytes": 1, "sha256": "00"});
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    let (log, step, _) = resume(dir.path());
    assert_eq!(step, 6, "{log}");
    assert!(log.contains("lists a file outside the folder"), "{log}");

    // `latest` naming a folder outside: ignored, the highest step that verifies is used.
    let dir = copy_of_run();
    std::fs::write(dir.path().join("runs/t/checkpoints/latest"), "../../../../tmp\n").unwrap();
    let (log, step, _) = resume(dir.path());
    assert_eq!(step, 9, "{log}");
    assert!(log.contains("not a step folder name"), "{log}");

    // A 100 MB state.json: refused by its size, not read.
    let dir = copy_of_run();
    std::fs::write(newest(dir.path()).join("state.json"), vec![b' '; 100 << 20]).unwrap();
    let (log, step, peak) = resume(dir.path());
    assert_eq!(step, 6, "{log}");
    assert!(log.contains("longer than"), "{log}");
    row(
        "C3",
        "state.json naming ../../etc/passwd; latest = ../../tmp; a 100 MB state.json",
        &format!("refused by name; resumed from 6, 9 and 6; peak RSS of the last {peak:.0} MiB"),
    );
}
