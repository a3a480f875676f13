//! `ferroclip launch` + `ferroclip train` with 2 MPI workers as real processes:
//! the run trains on the global batch, and a worker killed mid-run makes the
//! launcher exit promptly, naming the rank, with no process left behind.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dataloader::{ShardSample, ShardWriter};

fn png(rgb: [u8; 3]) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::from_pixel(40, 40, image::Rgb(rgb))
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .expect("encode png");
    bytes
}

fn write_shards(dir: &Path) {
    let colours = [
        ("red", [220, 20, 20]),
        ("green", [20, 200, 20]),
        ("blue", [20, 20, 220]),
        ("black", [0, 0, 0]),
    ];
    let mut writer = ShardWriter::new(dir, 16).expect("shard writer");
    for i in 0..64usize {
        let (name, rgb) = colours[i % colours.len()];
        writer
            .write(&ShardSample {
                key: None,
                image: png(rgb),
                image_ext: "png".into(),
                captions: vec![format!("a {name} square")],
                label: None,
                json: Default::default(),
            })
            .expect("write sample");
    }
    writer.finish().expect("finish");
}

const CONFIG: &str = r#"name = "t"
model = "nano"
threads = 1
[data]
train = "shards"
batch_size = 8
workers = 1
[schedule]
steps = 6
warmup_steps = 2
[log]
every = 1
"#;

fn require_mpirun() {
    let found = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(found.is_ok_and(|s| s.success()), "mpirun missing: run scripts/setup.sh");
}

#[test]
fn two_mpi_workers_train_on_the_global_batch() {
    require_mpirun();
    let dir = tempfile::tempdir().unwrap();
    write_shards(&dir.path().join("shards"));
    std::fs::write(dir.path().join("t.toml"), CONFIG).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .args([
            "launch",
            "--nproc",
            "2",
            "--backend",
            "mpi",
            "--log-dir",
            "runs/t/logs",
            "--",
            "--config",
            "t.toml",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "launch failed: {stderr}");
    let metrics = std::fs::read_to_string(dir.path().join("runs/t/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["samples_seen"], 6 * 2 * 8, "global batch = 2 workers × 8");
    assert!(dir.path().join("runs/t/model.safetensors").is_file());
    let log0 = std::fs::read_to_string(dir.path().join("runs/t/logs/rank0.log")).unwrap();
    assert!(log0.contains("trained 6 steps"), "rank 0 log: {log0}");
    assert!(dir.path().join("runs/t/logs/rank1.log").is_file());
}

/// Pids of processes whose environment holds `tag` (the test's own marker).
fn tagged_pids(tag: &str, extra: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        let has = |needle: &str| vars.iter().any(|v| *v == needle.as_bytes());
        if has(tag) && (extra.is_empty() || has(extra)) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn a_killed_worker_stops_the_launch_and_is_named() {
    require_mpirun();
    let dir = tempfile::tempdir().unwrap();
    write_shards(&dir.path().join("shards"));
    std::fs::write(dir.path().join("t.toml"), CONFIG.replace("steps = 6", "steps = 100000")).unwrap();
    let tag = format!("FERROCLIP_TEST_TAG={}", std::process::id());
    let _cleanup = KillTagged(tag.clone()); // nothing outlives a failed assertion
    let child = Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .args([
            "launch",
            "--nproc",
            "2",
            "--backend",
            "mpi",
            "--log-dir",
            "logs",
            "--",
            "--config",
            "t.toml",
        ])
        .current_dir(dir.path())
        .env("FERROCLIP_TEST_TAG", std::process::id().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the run is stepping (rank 0 logs every step), then SIGKILL rank 1.
    let log0 = dir.path().join("logs/rank0.log");
    let start = Instant::now();
    while !std::fs::read_to_string(&log0).unwrap_or_default().contains("step ") {
        if start.elapsed() > Duration::from_secs(120) {
            for pid in tagged_pids(&tag, "") {
                unsafe { libc_kill(pid as i32, 9) };
            }
            panic!("workers never started stepping");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let victims = tagged_pids(&tag, "OMPI_COMM_WORLD_RANK=1");
    assert!(!victims.is_empty(), "rank 1 process not found");
    for pid in &victims {
        unsafe { libc_kill(*pid as i32, 9) };
    }
    let killed_at = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        killed_at.elapsed() < Duration::from_secs(30),
        "launcher took {:?}",
        killed_at.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    assert!(error.contains("rank 1"), "error should name rank 1: {stderr}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        tagged_pids(&tag, "").is_empty(),
        "processes left behind: {:?}",
        tagged_pids(&tag, "")
    );
}

struct KillTagged(String);

impl Drop for KillTagged {
    fn drop(&mut self) {
        for pid in tagged_pids(&self.0, "") {
            unsafe { libc_kill(pid as i32, 9) };
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
