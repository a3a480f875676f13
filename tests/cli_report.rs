//! `ferroclip report RUN` on a real run (trained, evaluated at a checkpoint and at the
//! end): the page is rendered by headless Chromium (Debian's package, from
//! scripts/setup.sh) to a PNG; the page must load without a console message (Chromium
//! logs malformed SVG there), its DOM must hold the charts with drawn lines, and the
//! PNG must show them. `ferroclip status` links the page; `ferroclip eval` of the run's
//! weights lands in eval.jsonl and tb/.
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

const CONFIG: &str = r#"name = "t"
model = "nano"
seed = 4
threads = 1
[data]
train = "shards"
batch_size = 8
workers = 1
shuffle_buffer = 10
[optim]
lr = 2e-3
[schedule]
steps = 6
warmup_steps = 2
[log]
every = 1
peak_tflops = 0.25
[checkpoint]
every = 3
"#;

fn ferroclip(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroclip"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ferroclip");
    common::assert_ok(&out);
    out
}

/// Headless Chromium on `page` with `mode` (`--dump-dom` or `--screenshot=…`); its
/// stdout and stderr. Fails the test when chromium is missing.
fn chromium(page: &Path, profile: &Path, mode: &str) -> (String, String) {
    let out = Command::new("timeout")
        .args(["120", "chromium", "--headless", "--no-sandbox", "--disable-gpu"])
        .args(["--enable-logging=stderr", "--v=0", "--window-size=1200,3000"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .output()
        .expect("run timeout/chromium");
    assert!(
        out.status.success(),
        "chromium failed (scripts/setup.sh installs Debian's chromium): {}",
        common::output_text(&out)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Console messages (JavaScript errors, malformed SVG attributes, …) Chromium logged.
fn console_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

#[test]
fn report_renders_in_chromium_with_every_chart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    common::write_shape_shards(&root.join("shards"), 24, 12);
    common::write_disc_zeroshot(root);
    std::fs::write(root.join("t.toml"), CONFIG).unwrap();
    ferroclip(root, &["train", "--config", "t.toml"]);

    // Eval at a checkpoint and of the final weights: two points per eval metric.
    let zeroshot = ["--zeroshot", "zs", "--classnames", "classes.txt"];
    for weights in ["runs/t/checkpoints/step_00000003", "runs/t"] {
        let out = ferroclip(root, &[&["eval", "--checkpoint", weights][..], &zeroshot].concat());
        assert!(String::from_utf8_lossy(&out.stdout).contains("recorded at step"));
    }
    let evals: Vec<serde_json::Value> = std::fs::read_to_string(root.join("runs/t/eval.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<u64> = evals.iter().map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [3, 6]);
    assert!(evals[1]["zeroshot"]["metrics"]["acc1"].is_number());

    let status = ferroclip(root, &["status", "t"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("report: none yet"));
    let out = ferroclip(root, &["report", "t"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("report: runs/t/report.html"), "{stdout}");
    let page = root.join("runs/t/report.html").canonicalize().unwrap();
    let status = ferroclip(root, &["status", "t"]);
    let link = format!("report: file://{}", page.display());
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(&link),
        "status links the page"
    );

    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="));

    let profile = tempfile::tempdir().unwrap();
    // The check can fail: Chromium reports a malformed SVG path on its console.
    let broken = root.join("broken.html");
    std::fs::write(
        &broken,
        r#"<html><body><svg><path d="M0 NaN L1 1"/></svg></body></html>"#,
    )
    .unwrap();
    let (_, stderr) = chromium(&broken, profile.path(), "--dump-dom");
    assert!(
        !console_lines(&stderr).is_empty(),
        "no console message for a broken page:\n{stderr}"
    );

    let (dom, stderr) = chromium(&page, profile.path(), "--dump-dom");
    assert!(
        console_lines(&stderr).is_empty(),
        "page logged: {:?}",
        console_lines(&stderr)
    );
    let titles = [
        "loss",
        "learning rate",
        "logit scale",
        "samples/s",
        "TFLOP/s (all workers)",
        "MFU %",
        "eval metrics",
    ];
    for title in titles {
        assert!(
            dom.contains(&format!("<title>{title}</title>")),
            "no chart {title:?} in the DOM"
        );
    }
    // Every chart's lines have points (a path with at least one segment).
    let paths: Vec<&str> = dom
        .split(r#"<path class="series" d=""#)
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    assert!(paths.len() >= titles.len(), "{} series paths", paths.len());
    assert!(paths.iter().all(|d| d.starts_with('M') && d.contains('L')), "{paths:?}");
    let section = |name: &str| dom.split(&format!("<h2>{name}</h2>")).nth(1).unwrap_or("").to_string();
    let checkpoints = section("Checkpoints");
    assert!(checkpoints.contains("checkpoints/step_00000003"), "{checkpoints}");
    let config = section("Config");
    assert!(
        config.contains("[checkpoint]") && config.contains("peak_tflops = 0.25"),
        "{config}"
    );

    let png = root.join("report.png");
    let (_, stderr) = chromium(&page, profile.path(), &format!("--screenshot={}", png.display()));
    assert!(
        console_lines(&stderr).is_empty(),
        "page logged: {:?}",
        console_lines(&stderr)
    );
    let image = image::open(&png).expect("chromium wrote a PNG").to_rgb8();
    assert_eq!(image.dimensions(), (1200, 3000));
    // The charts' first colour (#1f77b4, every single-series chart) is drawn, in quantity.
    let near = |p: &image::Rgb<u8>, c: [i32; 3]| (0..3).all(|i| (p.0[i] as i32 - c[i]).abs() <= 12);
    let blue = image.pixels().filter(|p| near(p, [0x1f, 0x77, 0xb4])).count();
    assert!(blue > 2000, "only {blue} pixels of the series colour");
    let non_white = image.pixels().filter(|p| p.0.iter().any(|&v| v < 240)).count();
    assert!(non_white > 20_000, "only {non_white} non-white pixels: a blank page?");
}
