//! Line charts as inline SVG text, for the run report: axes with rounded ticks, one
//! `<path class="series">` per series, a legend under it. No script, no external resource, so
//! the page renders anywhere (also offline).

use std::fmt::Write as _;

/// Chart size in CSS pixels and the plot area's margins.
const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 250.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 36.0;

/// Series colours (Tableau 10), in order.
pub const COLOURS: [&str; 6] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];

/// One line: a label and (x, y) points in x order; non-finite points break the line.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// (step, value) points.
    pub points: Vec<(f64, f64)>,
}

/// `text` with `& < > " '` escaped, for HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// About five round tick values covering `lo..=hi` (steps of 1, 2 or 5 × 10^k).
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = hi - lo;
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// A tick label: short, without float noise (0.30000000000000004 → 0.3).
fn label(value: f64) -> String {
    if value == 0.0 {
        return "0".into();
    }
    let a = value.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{value:.1e}");
    }
    let text = format!("{value:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The range of the finite values, widened when empty or flat so the scale is defined.
fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return None;
    }
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return Some((lo - pad, hi + pad));
    }
    Some((lo, hi))
}

/// A chart titled `title` of `series` over the step axis, or `None` when no series has a
/// finite point.
pub fn line_chart(title: &str, series: &[Series]) -> Option<String> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = range(points().filter(|p| p.1.is_finite()).map(|p| p.0))?;
    let (y0, y1) = range(points().filter(|p| p.0.is_finite()).map(|p| p.1))?;
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * plot_w;
    let sy = |y: f64| TOP + (y1 - y) / (y1 - y0) * plot_h;

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{t}"><title>{t}</title><text x="{LEFT}" y="18" class="title">{t}</text>"#,
        t = escape(title)
    );
    let _ = write!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>"##
    );
    for y in ticks(y0, y1) {
        let py = sy(y);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{py:.1}" y2="{py:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0,
            label(y)
        );
    }
    for x in ticks(x0, x1) {
        let px = sx(x);
        let _ = write!(
            svg,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle" class="tick">{}</text>"#,
            TOP + plot_h + 16.0,
            label(x)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="tick">step</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 4.0
    );
    let mut legend = String::new();
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        // Runs of finite points; a NaN or infinity (a diverged step) breaks the line.
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for &(x, y) in &s.points {
            if x.is_finite() && y.is_finite() {
                runs.last_mut().expect("never empty").push((sx(x), sy(y)));
            } else if !runs.last().expect("never empty").is_empty() {
                runs.push(Vec::new());
            }
        }
        let mut d = String::new();
        for run in runs.iter().filter(|r| !r.is_empty()) {
            // A lone point is a zero-length line, drawn as a dot by the round cap.
            let last = if run.len() == 1 { Some(run[0]) } else { None };
            for (i, (px, py)) in run.iter().chain(last.iter()).enumerate() {
                let _ = write!(d, "{}{px:.2} {py:.2} ", if i == 0 { "M" } else { "L" });
            }
        }
        let _ = write!(
            svg,
            r#"<path class="series" d="{}" fill="none" stroke="{colour}" stroke-width="2.5" stroke-linecap="round" stroke-linejoin="round"/>"#,
            d.trim_end()
        );
        // The legend is HTML under the chart: it wraps instead of covering the lines.
        if series.len() > 1 {
            let _ = write!(
                legend,
                r#"<span><i class="swatch" style="background:{colour}"></i>{}</span> "#,
                escape(&s.label)
            );
        }
    }
    svg.push_str("</svg>");
    Some(format!(
        r#"<figure class="plot">{svg}<figcaption class="legend">{}</figcaption></figure>"#,
        legend.trim_end()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup() {
        assert_eq!(escape(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn ticks_are_round_and_inside() {
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.013, 0.087);
        assert!(t.len() >= 3 && t.iter().all(|v| (0.013..=0.087).contains(v)), "{t:?}");
        assert_eq!(label(0.30000000000000004), "0.3");
        assert_eq!(label(2e-5), "2.0e-5");
    }

    #[test]
    fn chart_has_one_path_per_series_and_skips_non_finite_points() {
        let series = vec![
            Series {
                label: "a".into(),
                points: vec![(1.0, 1.0), (2.0, f64::NAN), (3.0, 3.0), (4.0, 2.0)],
            },
            Series {
                label: "b<".into(),
                points: vec![(1.0, 0.5)],
            },
        ];
        let svg = line_chart("t & u", &series).unwrap();
        assert_eq!(svg.matches(r#"class="series""#).count(), 2);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        // The NaN breaks the first line: two sub-paths.
        let first = svg.split(r#"class="series" d=""#).nth(1).unwrap();
        let d = &first[..first.find('"').unwrap()];
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert!(svg.contains("t &amp; u") && svg.contains("b&lt;"));
        let nothing = Series {
            label: "x".into(),
            points: vec![(1.0, f64::NAN)],
        };
        assert_eq!(line_chart("empty", &[nothing]), None);
    }
}
