//! Scaling-law plots (docs/architecture.md §8): `scaling.png` and `scaling.svg` from a
//! [`FitReport`].
//!
//! Log–log axes (compute in MACs, error E = 1 − metric), the runs coloured by
//! group with a legend, the compute-frontier points ringed, the power law
//! E = β·C^α and the saturating law E = a·C^(−b) + c, and the power law's
//! bootstrap 95% band over the data and extended beyond it. The title carries α
//! with its interval.
//!
//! Text is drawn with `ab_glyph` from DejaVu Sans embedded in the binary (the
//! `dejavu` crate), so nothing depends on system font libraries.
//!
//! ```no_run
//! # fn demo(report: &launcher::sweep::fit::FitReport) -> Result<(), launcher::sweep::plot::PlotError> {
//! use std::path::Path;
//! launcher::sweep::plot::plot_scaling(report, Path::new("scaling.png"), Path::new("scaling.svg"))?;
//! # Ok(()) }
//! ```

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::fit::FitReport;

/// Pixel size of both images.
pub const PLOT_SIZE: (u32, u32) = (1100, 750);

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Drawing failed.
    #[error("{path}: drawing the plot failed: {message}")]
    Draw {
        /// The output file.
        path: PathBuf,
        /// The drawing library's message.
        message: String,
    },
    /// The embedded font could not be loaded.
    #[error("embedded DejaVu Sans font could not be loaded")]
    Font,
    /// The file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The output file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The PNG could not be encoded or written.
    #[error("{path}: cannot write PNG: {source}")]
    Png {
        /// The output file.
        path: PathBuf,
        /// The underlying error.
        source: image::ImageError,
    },
}

/// Writes `scaling.png` and `scaling.svg` (or whatever the paths are).
pub fn plot_scaling(report: &FitReport, png_path: &Path, svg_path: &Path) -> Result<(), PlotError> {
    write_scaling_png(report, png_path)?;
    write_scaling_svg(report, svg_path)
}

/// Renders the plot to a PNG file.
pub fn write_scaling_png(report: &FitReport, path: &Path) -> Result<(), PlotError> {
    register_font()?;
    let (width, height) = PLOT_SIZE;
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, PLOT_SIZE).into_drawing_area();
        draw_and_present(&root, report, path)?;
    }
    let image = image::RgbImage::from_raw(width, height, pixels).ok_or_else(|| PlotError::Draw {
        path: path.to_path_buf(),
        message: "pixel buffer has the wrong size".into(),
    })?;
    image
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|source| PlotError::Png {
            path: path.to_path_buf(),
            source,
        })
}

/// Renders the plot to an SVG file.
pub fn write_scaling_svg(report: &FitReport, path: &Path) -> Result<(), PlotError> {
    register_font()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        draw_and_present(&root, report, path)?;
    }
    std::fs::write(path, svg).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Draws the plot on `root` and presents it; a failure is [`PlotError::Draw`] for `path`.
fn draw_and_present<DB>(root: &DrawingArea<DB, Shift>, report: &FitReport, path: &Path) -> Result<(), PlotError>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    draw(root, report)
        .and_then(|()| root.present().map_err(|e| e.to_string().into()))
        .map_err(|e| PlotError::Draw {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Registers DejaVu Sans as plotters' "sans-serif" once per process.
fn register_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = REGISTERED.get_or_init(|| {
        let regular = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
        let bold = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
        regular.is_ok() && bold.is_ok()
    });
    if *ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// Tableau-10 colours: distinct, readable on white, colour-blind friendlier than
/// plotters' default palette.
const GROUP_COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const POWER_LAW_COLOUR: RGBColor = RGBColor(20, 20, 20);
const SATURATING_COLOUR: RGBColor = RGBColor(200, 30, 30);
const BAND_COLOUR: RGBColor = RGBColor(120, 120, 120);

/// Formats a number with 3 significant digits and a real minus sign.
fn signed(value: f64) -> String {
    let text = if value.abs() >= 1e4 || (value != 0.0 && value.abs() < 1e-3) {
        format!("{value:.2e}")
    } else {
        format!("{value:.3}")
    };
    text.replace('-', "−")
}

/// Tick values for a log axis: 1..9 × 10^k inside the range, thinned to
/// {1, 2, 5} × 10^k and then to powers of ten when there would be more than
/// `max_count`. plotters' own log ticks are only powers of ten, which leaves an
/// error axis spanning less than a decade (the usual case) without labels.
fn log_ticks(min: f64, max: f64, max_count: usize) -> Vec<f64> {
    let ladders: [&[f64]; 3] = [&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], &[1.0, 2.0, 5.0], &[1.0]];
    let first = min.log10().floor() as i32;
    let last = max.log10().ceil() as i32;
    let mut ticks = Vec::new();
    for ladder in ladders {
        ticks = (first..=last)
            // Dividing for negative exponents gives the nearest double (0.3, not
            // 0.30000000000000004), so the labels and the SVG stay clean.
            .flat_map(|k| {
                ladder
                    .iter()
                    .map(move |m| if k >= 0 { m * 10f64.powi(k) } else { m / 10f64.powi(-k) })
            })
            .filter(|v| *v >= min && *v <= max)
            .collect();
        if ticks.len() <= max_count {
            break;
        }
    }
    if ticks.len() > max_count {
        // Many decades: every n-th power of ten.
        let step = ticks.len().div_ceil(max_count);
        ticks = ticks.into_iter().step_by(step).collect();
    }
    if ticks.len() < 2 {
        // A range inside one 1..9 step: label its ends.
        ticks = vec![min, max];
    }
    ticks
}

/// A tick label: plain decimals for errors, exponents for compute.
fn tick_label(value: f64) -> String {
    if (1e-3..1e4).contains(&value.abs()) {
        let digits = (2 - value.abs().log10().floor() as i32).max(0) as usize;
        let text = format!("{value:.digits$}");
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text
        }
    } else {
        format!("{value:.1e}").replace(".0e", "e")
    }
}

fn title(report: &FitReport) -> String {
    let alpha = &report.power_law.alpha;
    match alpha.ci95 {
        Some([low, high]) => format!(
            "E = β·C^α on the compute frontier: α = {} (95% CI {} to {})",
            signed(alpha.value),
            signed(low),
            signed(high)
        ),
        None => format!("E = β·C^α on the compute frontier: α = {}", signed(alpha.value)),
    }
}

fn draw<DB>(root: &DrawingArea<DB, Shift>, report: &FitReport) -> Result<(), Box<dyn Error>>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;

    // Axis ranges cover the points, the band and both curves, with some margin.
    let computes = report
        .points
        .iter()
        .map(|p| p.compute)
        .chain(report.band.iter().map(|b| b.compute));
    let (mut x_min, mut x_max) = (f64::INFINITY, f64::NEG_INFINITY);
    for c in computes {
        x_min = x_min.min(c);
        x_max = x_max.max(c);
    }
    let saturating = report.saturating.as_ref().map(|s| s.law());
    let mut errors: Vec<f64> = report.points.iter().map(|p| p.error).collect();
    for band in &report.band {
        errors.push(band.power_law);
        errors.extend(band.low);
        errors.extend(band.high);
        if let Some(law) = saturating {
            errors.push(law.predict(band.compute));
        }
    }
    let errors: Vec<f64> = errors.into_iter().filter(|e| e.is_finite() && *e > 0.0).collect();
    let y_min = errors.iter().copied().fold(f64::INFINITY, f64::min);
    let y_max = errors.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !(x_min.is_finite() && x_max.is_finite() && y_min.is_finite() && y_max.is_finite()) {
        return Err("no finite points to draw".into());
    }
    let x_range = (x_min / 1.6)..(x_max * 1.6);
    let y_range = (y_min / 1.15)..(y_max * 1.15);

    let x_desc = match report.x.as_deref() {
        None | Some("compute") => "compute C (MACs)".to_string(),
        Some(other) => format!("{other} (log scale)"),
    };
    let y_desc = match report.metric.as_deref() {
        Some(metric) => format!("error E = 1 − {metric}"),
        None => "error E = 1 − metric".to_string(),
    };

    // The data run from upper left to lower right and the band extends to the
    // right, so the lower left corner is where the legend covers least.
    let mut chart = ChartBuilder::on(root)
        .caption(title(report), ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(80)
        .build_cartesian_2d(
            x_range
                .clone()
                .log_scale()
                .with_key_points(log_ticks(x_range.start, x_range.end, 12)),
            y_range
                .clone()
                .log_scale()
                .with_key_points(log_ticks(y_range.start, y_range.end, 14)),
        )?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 15))
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(205, 205, 205))
        .draw()?;

    // Band first, so points and curves are drawn over it.
    let upper: Vec<(f64, f64)> = report.band.iter().filter_map(|b| Some((b.compute, b.high?))).collect();
    let lower: Vec<(f64, f64)> = report.band.iter().filter_map(|b| Some((b.compute, b.low?))).collect();
    if upper.len() >= 2 && lower.len() >= 2 {
        let outline: Vec<(f64, f64)> = upper.into_iter().chain(lower.into_iter().rev()).collect();
        chart
            .draw_series(std::iter::once(Polygon::new(outline, BAND_COLOUR.mix(0.22).filled())))?
            .label("power law, bootstrap 95% band")
            .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], BAND_COLOUR.mix(0.22).filled()));
    }

    let power_law = report.power_law.law();
    chart
        .draw_series(LineSeries::new(
            report.band.iter().map(|b| (b.compute, b.power_law)),
            POWER_LAW_COLOUR.stroke_width(2),
        ))?
        .label(format!(
            "E = β·C^α: β = {}, α = {}",
            signed(power_law.beta),
            signed(power_law.alpha)
        ))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], POWER_LAW_COLOUR.stroke_width(2)));

    if let (Some(law), Some(fit)) = (saturating, report.saturating.as_ref()) {
        chart
            .draw_series(DashedLineSeries::new(
                report.band.iter().map(|b| (b.compute, law.predict(b.compute))),
                8,
                5,
                SATURATING_COLOUR.stroke_width(2),
            ))?
            .label(format!(
                // c is an error level: three decimals, also when it is ~0.
                "E = a·C^(−b) + c: b = {}, c = {:.3}",
                signed(fit.b.value),
                fit.c.value
            ))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], SATURATING_COLOUR.stroke_width(2)));
    }

    // Groups in order of first appearance, each its own colour.
    let mut groups: Vec<&str> = Vec::new();
    for point in &report.points {
        if !groups.contains(&point.group.as_str()) {
            groups.push(&point.group);
        }
    }
    for (index, group) in groups.iter().enumerate() {
        let colour = GROUP_COLOURS[index % GROUP_COLOURS.len()];
        let label = if group.is_empty() { "(no group)" } else { group };
        chart
            .draw_series(
                report
                    .points
                    .iter()
                    .filter(|p| p.group == *group)
                    .map(|p| Circle::new((p.compute, p.error), 5, colour.filled())),
            )?
            .label(label)
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, colour.filled()));
    }

    chart
        .draw_series(
            report
                .frontier
                .iter()
                .map(|p| Circle::new((p.compute, p.error), 9, BLACK.stroke_width(2))),
        )?
        .label("compute frontier (per-bin minimum)")
        .legend(|(x, y)| Circle::new((x + 10, y), 7, BLACK.stroke_width(2)));

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::fit::{fit_scaling, FitOptions, ScalingPoint};

    /// Three model sizes × three budgets, the way a small sweep looks:
    /// E = 0.2 + capacity term + data term, so each model saturates and the
    /// larger models win at larger compute.
    fn sweep_report() -> FitReport {
        let mut points = Vec::new();
        for (model, macs) in [("S", 1e9), ("M", 4e9), ("L", 1.6e10)] {
            for samples in [1e4, 4e4, 1.6e5, 6.4e5] {
                let compute: f64 = macs * samples;
                let error = 0.25 + 0.2 * (macs / 1e9f64).powf(-0.5) + 0.45 * (samples / 1e4f64).powf(-0.5);
                points.push(ScalingPoint {
                    compute,
                    error: error.min(0.99),
                    group: model.to_string(),
                });
            }
        }
        let options = FitOptions {
            bootstrap_draws: 200,
            seed: 1,
            ..FitOptions::default()
        };
        let mut report = fit_scaling(points, &options).expect("fit");
        report.metric = Some("zeroshot_top1".into());
        report.x = Some("compute".into());
        report
    }

    #[test]
    fn png_and_svg_are_written_and_valid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (png, svg) = (dir.path().join("scaling.png"), dir.path().join("scaling.svg"));
        let report = sweep_report();
        plot_scaling(&report, &png, &svg).expect("plot");

        let decoded = image::open(&png).expect("decode PNG").to_rgb8();
        assert_eq!(decoded.dimensions(), PLOT_SIZE);
        // Not a blank canvas: there are white background, dark text/curves and
        // coloured points.
        let white = decoded.pixels().filter(|p| p.0 == [255, 255, 255]).count();
        let dark = decoded.pixels().filter(|p| p.0.iter().all(|&c| c < 60)).count();
        let first_group = decoded.pixels().filter(|p| p.0 == [31, 119, 180]).count();
        let total = (PLOT_SIZE.0 * PLOT_SIZE.1) as usize;
        assert!(white > total / 2, "white {white}");
        assert!(dark > 2000, "dark {dark}");
        assert!(first_group > 100, "group colour pixels {first_group}");

        let text = std::fs::read_to_string(&svg).expect("read SVG");
        assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(80)]);
        assert!(text.trim_end().ends_with("</svg>"));
        for label in [
            "compute C (MACs)",
            "error E = 1 − zeroshot_top1",
            "α =",
            "compute frontier",
            "S",
            "L",
        ] {
            assert!(text.contains(label), "SVG lacks {label:?}");
        }
    }

    #[test]
    fn title_reports_alpha_with_its_interval() {
        let report = sweep_report();
        let text = title(&report);
        let [low, high] = report.power_law.alpha.ci95.expect("interval");
        assert!(text.contains(&signed(report.power_law.alpha.value)), "{text}");
        assert!(
            text.contains(&format!("95% CI {} to {}", signed(low), signed(high))),
            "{text}"
        );
        assert_eq!(signed(-0.1234), "−0.123");
        assert_eq!(signed(123456.0), "1.23e5");
    }

    #[test]
    fn log_ticks_label_ranges_narrower_than_a_decade() {
        assert_eq!(log_ticks(0.25, 0.95, 14), vec![0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]);
        assert_eq!(log_ticks(0.015, 0.95, 14), vec![0.02, 0.05, 0.1, 0.2, 0.5]);
        assert_eq!(
            log_ticks(6e12, 4e16, 12),
            vec![1e13, 2e13, 5e13, 1e14, 2e14, 5e14, 1e15, 2e15, 5e15, 1e16, 2e16]
        );
        assert_eq!(log_ticks(1e3, 1e30, 12).len(), 10);
        assert_eq!(log_ticks(0.31, 0.38, 14), vec![0.31, 0.38]);
        assert_eq!(tick_label(0.3), "0.3");
        assert_eq!(tick_label(0.05), "0.05");
        assert_eq!(tick_label(0.123456), "0.123");
        assert_eq!(tick_label(2e13), "2e13");
        assert_eq!(tick_label(1.5e13), "1.5e13");
    }

    #[test]
    fn unwritable_path_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = dir.path().join("missing-folder").join("scaling.svg");
        let error = write_scaling_svg(&sweep_report(), &bad).expect_err("no folder");
        assert!(error.to_string().contains("missing-folder"), "{error}");
        let bad_png = dir.path().join("missing-folder").join("scaling.png");
        let error = write_scaling_png(&sweep_report(), &bad_png).expect_err("no folder");
        assert!(error.to_string().contains("missing-folder"), "{error}");
    }
}
