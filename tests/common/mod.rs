//! Helpers shared by the integration tests that start real processes.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use dataloader::{ShardSample, ShardWriter};

pub mod slurm;

/// A `rgb` disc or square of side `size` on grey, as PNG.
pub fn shape_png(rgb: [u8; 3], disc: bool, size: u32) -> Vec<u8> {
    let c = size as f32 / 2.0;
    let img = image::RgbImage::from_fn(size, size, |x, y| {
        let (dx, dy) = (x as f32 - c, y as f32 - c);
        let inside = if disc {
            dx * dx + dy * dy < (0.35 * size as f32).powi(2)
        } else {
            dx.abs().max(dy.abs()) < 0.3 * size as f32
        };
        image::Rgb(if inside { rgb } else { [128, 128, 128] })
    });
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .expect("encode png");
    bytes
}

/// Colour names and values of the synthetic test images.
pub const COLOURS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 20, 20]),
    ("green", [20, 200, 20]),
    ("blue", [20, 20, 220]),
    ("yellow", [230, 230, 20]),
    ("black", [0, 0, 0]),
    ("white", [255, 255, 255]),
];

/// `n` captioned coloured shapes (sizes vary) in shards of `per_shard` samples.
pub fn write_shape_shards(dir: &Path, n: usize, per_shard: u64) -> Vec<PathBuf> {
    let mut writer = ShardWriter::new(dir, per_shard).expect("shard writer");
    for i in 0..n {
        let (name, rgb) = COLOURS[i % COLOURS.len()];
        let disc = (i / COLOURS.len()) % 2 == 0;
        let shape = if disc { "circle" } else { "square" };
        writer
            .write(&ShardSample {
                key: None,
                image: shape_png(rgb, disc, 32 + (i % 5) as u32 * 8),
                image_ext: "png".into(),
                captions: vec![format!("a {name} {shape}")],
                label: None,
                json: Default::default(),
            })
            .expect("write sample");
    }
    writer.finish().expect("finish shards").shards
}

/// Every output shard's bytes plus sizes.json of a curated folder, by file name.
pub fn output_shard_files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar") || p.ends_with("sizes.json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// `mpirun` for `np` local ranks (as root, oversubscribed, unbound), quiet logs, and without
/// stale torchrun-style variables, which would win over OMPI's in rank discovery.
pub fn mpirun(np: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np"])
        .arg(np.to_string())
        .env("RUST_LOG", "warn")
        .env_remove("RANK")
        .env_remove("WORLD_SIZE");
    cmd
}

/// Fails the test early with a hint when mpirun is missing.
pub fn require_mpirun() {
    let found = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(found.is_ok_and(|s| s.success()), "mpirun missing: run scripts/setup.sh");
}

/// Pids of processes whose environment holds `tag` (and `extra`, if not empty).
pub fn tagged_pids(tag: &str, extra: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
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

/// Sends `signal` to a process.
pub fn send_signal(pid: u32, signal: i32) {
    unsafe { libc_kill(pid as i32, signal) };
}

/// Kills every process carrying the tag when dropped: nothing outlives a failed assertion.
pub struct KillTagged(pub String);

impl Drop for KillTagged {
    fn drop(&mut self) {
        for pid in tagged_pids(&self.0, "") {
            send_signal(pid, 9);
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// The `step` of the last line of a metrics file (0 when there is none yet).
pub fn last_logged_step(metrics: &Path) -> u64 {
    std::fs::read_to_string(metrics)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .last()
        .unwrap_or(0)
}

/// `n` samples "a <colour> disc" (label = colour index, sizes vary) in shards of `per_shard`.
pub fn write_disc_shards(dir: &Path, n: usize, per_shard: u64) {
    let mut writer = ShardWriter::new(dir, per_shard).expect("shard writer");
    for i in 0..n {
        let (name, rgb) = COLOURS[i % COLOURS.len()];
        writer
            .write(&ShardSample {
                key: None,
                image: shape_png(rgb, true, 32 + (i % 3) as u32 * 8),
                image_ext: "png".into(),
                captions: vec![format!("a {name} disc")],
                label: Some((i % COLOURS.len()) as i64),
                json: Default::default(),
            })
            .expect("write sample");
    }
    writer.finish().expect("finish shards");
}

/// Zero-shot eval shards in `dir/zs` (one disc per colour, labelled with its line in
/// `dir/classes.txt`).
pub fn write_disc_zeroshot(dir: &Path) {
    write_disc_shards(&dir.join("zs"), COLOURS.len(), 100);
    let names: Vec<&str> = COLOURS.iter().map(|(n, _)| *n).collect();
    std::fs::write(dir.join("classes.txt"), names.join("\n") + "\n").expect("write classes.txt");
}

/// `ferroclip ARGS` run to its end in `cwd`, with warnings only in its log.
pub fn ferroclip_in(cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ferroclip")
}

/// `ferroclip launch --nproc WORKERS --backend mpi` of `t.toml` in `dir` as run `name` (logs
/// in `logs-<name>`), with `--set` overrides; fails the test unless it succeeds.
pub fn launch_mpi(dir: &Path, name: &str, workers: usize, sets: &[String]) {
    launch_mpi_with(dir, name, workers, &[], sets);
}

/// [`launch_mpi`] with more `launch` flags.
pub fn launch_mpi_with(dir: &Path, name: &str, workers: usize, launch_flags: &[&str], sets: &[String]) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env("OMP_NUM_THREADS", "1")
        .args([
            "launch",
            "--nproc",
            &workers.to_string(),
            "--backend",
            "mpi",
            "--log-dir",
        ])
        .arg(format!("logs-{name}"))
        .args(launch_flags)
        .args(["--", "--config", "t.toml"])
        .arg(format!("--set=name={name}"))
        .args(sets.iter().map(|set| format!("--set={set}")))
        .output()
        .expect("run launch");
    assert_ok(&out);
}

/// A finished process's stdout and stderr, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The base train config of the sweep tests: `nano` on `shards/` (see [`write_disc_shards`]),
/// 2 steps of 8 samples, 1 thread.
pub const SWEEP_BASE_TOML: &str = r#"name = "base"
model = "nano"
seed = 1
threads = 1
[data]
train = "shards"
batch_size = 8
workers = 1
shuffle_buffer = 20
[optim]
lr = 2e-3
weight_decay = 0.0
[schedule]
steps = 2
warmup_steps = 2
[log]
every = 1
"#;

/// Fails the test with the command's output unless it succeeded.
pub fn assert_ok(output: &std::process::Output) {
    assert!(output.status.success(), "{}", output_text(output));
}

/// A shard of `captions.len()` samples keyed from `first` (9 digits): `key.png` (stand-in
/// bytes, not an image) and `key.txt`, for stages that look at captions only.
pub fn write_caption_shard(path: &Path, first: usize, captions: &[&str]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (i, caption) in captions.iter().enumerate() {
        let key = format!("{:09}", first + i);
        for (ext, data) in [
            ("png", format!("png of {key}").into_bytes()),
            ("txt", caption.as_bytes().to_vec()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, format!("{key}.{ext}"), data.as_slice())
                .unwrap();
        }
    }
    builder.finish().unwrap();
}

/// Every tensor of an f32 safetensors file, by name, as values.
pub fn f32_tensors(path: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    safetensors::SafeTensors::deserialize(&bytes)
        .expect("safetensors")
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect()
}

/// The largest |a − b| over two sets of tensors with the same names.
pub fn max_abs_diff(
    a: &std::collections::BTreeMap<String, Vec<f32>>,
    b: &std::collections::BTreeMap<String, Vec<f32>>,
) -> f64 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .flat_map(|(n, x)| x.iter().zip(&b[n]).map(|(p, q)| (p - q).abs() as f64))
        .fold(0.0, f64::max)
}

/// Polls until `metrics` shows at least `step`, or panics after `limit`.
pub fn wait_for_step(metrics: &Path, step: u64, limit: std::time::Duration) {
    let start = std::time::Instant::now();
    while last_logged_step(metrics) < step {
        assert!(start.elapsed() < limit, "run never reached step {step}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The step of the `resumed from <prefix><8 digits>` line in `log`; panics without one.
pub fn resumed_step(log: &str, prefix: &str) -> u64 {
    let marker = format!("resumed from {prefix}");
    let at = log
        .find(&marker)
        .unwrap_or_else(|| panic!("no '{marker}…' line in:\n{log}"));
    log[at + marker.len()..]
        .chars()
        .take(8)
        .collect::<String>()
        .parse()
        .expect("an 8-digit step")
}

/// `{tag: [[step, value], ...]}` of the TensorBoard event files `args` name, read by
/// tensorboard's own reader (tests/tools/tb_scalars.py through .venv/bin/python, where
/// scripts/setup.sh installs tensorboard).
pub fn tb_scalars(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    let out = std::process::Command::new(&python)
        .arg(root.join("tests/tools/tb_scalars.py"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", python.display()));
    assert!(
        out.status.success(),
        "tensorboard's reader failed (scripts/setup.sh installs tensorboard into .venv):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("reader output is JSON")
}
