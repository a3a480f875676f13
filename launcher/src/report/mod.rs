//! `ferroclip report RUN`: `runs/<name>/report.html`, one self-contained page about a
//! run — inline SVG charts of the metrics (loss, learning rate, logit scale, samples/s,
//! TFLOP/s, MFU, eval results), the resolved config, the checkpoints and the skipped
//! samples by reason. No script and no external resource: it opens from disk, offline,
//! and can be mailed as one file.

mod data;
mod error;
pub mod svg;

use std::fmt::Write as _;
use std::path::PathBuf;

pub use data::{Checkpoint, RunData};
pub use error::ReportError;
use svg::{escape, line_chart, Series};

use crate::RunDir;

/// Writes the report of `run` to `run.report()` and returns its path.
pub fn write_report(run: &RunDir) -> Result<PathBuf, ReportError> {
    let html = render(run, &RunData::read(run)?);
    let path = run.report();
    std::fs::write(&path, html).map_err(|source| ReportError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1200px}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}\
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart .title{font-size:14px;font-weight:bold}\
.chart .tick{font-size:11px;fill:#444}figure.plot{margin:0}\
.legend{font-size:12px;color:#444;max-width:496px;padding-left:64px}.legend span{margin-right:14px;white-space:nowrap}\
.swatch{display:inline-block;width:14px;height:4px;margin-right:4px;vertical-align:middle}.note{color:#777;font-style:italic}\
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}\
pre{background:#f6f6f6;padding:8px;overflow:auto}";

fn series(label: &str, points: Vec<(f64, f64)>) -> Series {
    Series {
        label: label.to_string(),
        points,
    }
}

/// Scales every value (fractions to percent).
fn scaled(points: Vec<(f64, f64)>, factor: f64) -> Vec<(f64, f64)> {
    points.into_iter().map(|(x, y)| (x, y * factor)).collect()
}

/// The chart, or a note saying why there is none.
fn chart_or_note(out: &mut String, title: &str, series: &[Series], note: &str) {
    match line_chart(title, series) {
        Some(svg) => out.push_str(&svg),
        None => {
            let _ = write!(out, r#"<p class="note">{}: {}</p>"#, escape(title), escape(note));
        }
    }
}

fn charts(out: &mut String, data: &RunData) {
    out.push_str("<h2>Training</h2><div class=\"charts\">");
    let none = "not logged yet";
    let single = |key: &str, label: &str| [series(label, data.series(key))];
    chart_or_note(out, "loss", &single("loss", "loss"), none);
    chart_or_note(out, "learning rate", &single("lr", "lr"), none);
    chart_or_note(out, "logit scale", &single("logit_scale", "logit scale"), none);
    chart_or_note(out, "samples/s", &single("samples_per_s", "samples/s"), none);
    let flops = [
        series("model", data.series("tflops")),
        series("recompute", data.series("recompute_tflops")),
    ];
    chart_or_note(out, "TFLOP/s (all workers)", &flops, none);
    let mut mfu = vec![series("MFU", scaled(data.series("mfu"), 100.0))];
    // HFU is MFU plus recomputation: shown only when there is some.
    if data.series("recompute_tflops").iter().any(|p| p.1 > 0.0) {
        mfu.push(series("HFU (with recompute)", scaled(data.series("hfu"), 100.0)));
    }
    chart_or_note(
        out,
        "MFU %",
        &mfu,
        "not logged: no peak known for the device and precision (set log.peak_tflops)",
    );
    chart_or_note(out, "gradient norm", &single("grad_norm", "grad norm"), none);
    let waits = [
        series("data wait %", scaled(data.series("data_wait_frac"), 100.0)),
        series("communication %", scaled(data.series("comm_frac"), 100.0)),
    ];
    chart_or_note(out, "time waiting %", &waits, none);
    out.push_str("</div><h2>Evaluation</h2><div class=\"charts\">");
    let evals: Vec<Series> = data
        .eval_names()
        .iter()
        .map(|name| {
            let points = data
                .evals
                .iter()
                .filter_map(|(&step, m)| m.get(name).map(|&v| (step as f64, v)))
                .collect();
            series(name, points)
        })
        .collect();
    chart_or_note(
        out,
        "eval metrics",
        &evals,
        "no results in eval.jsonl (ferroclip eval --checkpoint on this run's folder writes them)",
    );
    out.push_str("</div>");
}

/// A JSON value for a table cell: integers as they are, other numbers to 5 significant
/// digits (a loss of 2.0393269062042236 reads 2.0393, 0.75 stays 0.75).
fn number(value: &serde_json::Value) -> String {
    match value.as_f64() {
        Some(v) if !value.is_i64() && !value.is_u64() && v != 0.0 && v.is_finite() => {
            let digits = (4 - v.abs().log10().floor() as i32).clamp(0, 12) as usize;
            let text = format!("{v:.digits$}");
            match text.contains('.') {
                true => text.trim_end_matches('0').trim_end_matches('.').to_string(),
                false => text,
            }
        }
        _ => value.to_string(),
    }
}

fn summary(out: &mut String, run: &RunDir, data: &RunData) {
    let last = data.metrics.values().next_back();
    let field = |key: &str| last.and_then(|r| r.get(key)).map_or("-".to_string(), number);
    let _ = write!(
        out,
        "<table><tr><th>folder</th><td>{}</td></tr><tr><th>last logged step</th><td>{}</td></tr>\
         <tr><th>samples seen</th><td>{}</td></tr><tr><th>last loss</th><td>{}</td></tr>\
         <tr><th>skipped steps (non-finite)</th><td>{}</td></tr><tr><th>finished</th><td>{}</td></tr>\
         <tr><th>TensorBoard</th><td>{} event file(s): <code>tensorboard --logdir {}</code></td></tr></table>",
        escape(&run.root().display().to_string()),
        field("step"),
        field("samples_seen"),
        field("loss"),
        field("skipped_steps"),
        if data.finished { "yes (model.safetensors)" } else { "no" },
        data.event_files,
        escape(&run.tensorboard().display().to_string()),
    );
    if data.unreadable_lines > 0 {
        let _ = write!(
            out,
            r#"<p class="note">{} line(s) of metrics.jsonl are not metrics records (left out).</p>"#,
            data.unreadable_lines
        );
    }
}

fn skipped_samples(out: &mut String, data: &RunData) {
    out.push_str("<h2>Skipped samples</h2>");
    let counts = data
        .metrics
        .values()
        .next_back()
        .and_then(|r| r.get("skipped_samples"))
        .and_then(|v| v.as_object())
        .filter(|m| !m.is_empty());
    let Some(counts) = counts else {
        out.push_str(r#"<p class="note">none recorded</p>"#);
        return;
    };
    out.push_str("<table><tr><th>reason</th><th>samples</th></tr>");
    for (reason, count) in counts {
        let _ = write!(out, "<tr><td>{}</td><td>{count}</td></tr>", escape(reason));
    }
    out.push_str("</table>");
}

fn checkpoints(out: &mut String, data: &RunData) {
    out.push_str("<h2>Checkpoints</h2>");
    if data.checkpoints.is_empty() {
        out.push_str(r#"<p class="note">none</p>"#);
        return;
    }
    out.push_str("<table><tr><th>folder</th><th>step</th><th>MB</th><th></th></tr>");
    for c in &data.checkpoints {
        let latest = data.latest_checkpoint.as_deref() == Some(c.name.as_str());
        let _ = write!(
            out,
            "<tr><td>checkpoints/{}</td><td>{}</td><td>{:.1}</td><td>{}</td></tr>",
            escape(&c.name),
            c.step,
            c.bytes as f64 / 1e6,
            if latest { "latest" } else { "" }
        );
    }
    out.push_str("</table>");
}

/// The report page of `run`, made of `data`.
pub fn render(run: &RunDir, data: &RunData) -> String {
    let name = run.root().file_name().map_or_else(
        || run.root().display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ferroclip run {n}</title>\
         <style>{STYLE}</style></head><body><h1>ferroclip run {n}</h1>",
        n = escape(&name)
    );
    summary(&mut out, run, data);
    charts(&mut out, data);
    skipped_samples(&mut out, data);
    checkpoints(&mut out, data);
    out.push_str("<h2>Config</h2>");
    match &data.config {
        Some(config) => {
            let _ = write!(out, "<pre>{}</pre>", escape(config));
        }
        None => out.push_str(r#"<p class="note">no config.toml</p>"#),
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_of_a_run_folder_has_the_charts_tables_and_escaped_config() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let lines: String = (1..=4)
            .map(|s| {
                format!(
                    "{{\"step\":{s},\"loss\":{},\"lr\":0.001,\"logit_scale\":14.3,\"samples_per_s\":100,\
                     \"tflops\":0.5,\"recompute_tflops\":0,\"skipped_samples\":{{\"decode\":{s}}}}}\n",
                    3.0 / s as f64
                )
            })
            .collect();
        std::fs::write(run.metrics(), lines).unwrap();
        std::fs::write(run.config(), "name = \"<b>x</b>\"\n").unwrap();
        std::fs::create_dir_all(run.checkpoint(4)).unwrap();
        std::fs::write(run.checkpoints().join("latest"), "step_00000004\n").unwrap();
        std::fs::write(run.eval(), "{\"step\":4,\"zeroshot\":{\"metrics\":{\"acc1\":0.5}}}\n").unwrap();
        let path = write_report(&run).unwrap();
        let html = std::fs::read_to_string(&path).unwrap();
        assert_eq!(path, dir.path().join("report.html"));
        for title in [
            "loss",
            "learning rate",
            "logit scale",
            "samples/s",
            "TFLOP/s (all workers)",
            "eval metrics",
        ] {
            assert!(html.contains(&format!("<title>{}</title>", escape(title))), "{title}");
        }
        assert!(html.contains("MFU %: not logged"), "no MFU without a peak");
        assert!(html.contains("<th>last loss</th><td>0.75</td>"), "5 significant digits");
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;") && !html.contains("<b>x"));
        assert!(
            html.contains("<td>decode</td><td>4</td>"),
            "the last line's skip counts"
        );
        assert!(html.contains("checkpoints/step_00000004") && html.contains("latest"));
        assert!(!html.contains("<script") && !html.contains("src="), "self-contained");
    }

    #[test]
    fn a_run_without_files_yet_gets_a_page_of_notes() {
        let dir = tempfile::tempdir().unwrap();
        let html = std::fs::read_to_string(write_report(&RunDir::new(dir.path())).unwrap()).unwrap();
        assert!(html.contains("loss: not logged yet") && html.contains("no config.toml"));
        assert!(!html.contains("<svg"), "no chart without data");
    }
}
