//! report.png: samples remaining after each stage, then one log-scale panel per stage that
//! has a plot, log-log (MetaCLIP: entry counts before and after balancing, entries sorted by
//! their count before).
//!
//! Drawn with plotters into an RGB buffer and encoded with `image`; text uses the DejaVu
//! font embedded by the `dejavu` crate, so no system font libraries are involved.
use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::CurateError;
use crate::stage::StagePlot;

const WIDTH: u32 = 1000;
const PANEL_HEIGHT: u32 = 420;
const FONT: &str = "sans-serif";

fn register_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // The embedded font is valid; if registration ever failed, drawing text reports it.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draw `funnel` ((step name, samples)) and `panels` into the PNG at `path`.
pub fn write_report_png(path: &Path, funnel: &[(String, u64)], panels: &[StagePlot]) -> Result<(), CurateError> {
    register_font();
    let height = PANEL_HEIGHT * (1 + panels.len() as u32);
    let mut pixels = vec![255u8; (WIDTH * height * 3) as usize];
    let plot_error = |e: String| CurateError::Plot {
        path: path.to_path_buf(),
        reason: e,
    };
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(e.to_string()))?;
        let areas = root.split_evenly((1 + panels.len(), 1));
        draw_funnel(&areas[0], funnel).map_err(|e| plot_error(e.to_string()))?;
        for (area, panel) in areas[1..].iter().zip(panels) {
            draw_log_panel(area, panel).map_err(|e| plot_error(e.to_string()))?;
        }
        root.present().map_err(|e| plot_error(e.to_string()))?;
    }
    let image = image::RgbImage::from_raw(WIDTH, height, pixels)
        .ok_or_else(|| plot_error("pixel buffer has the wrong size".into()))?;
    image
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| plot_error(e.to_string()))
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw_funnel(area: &DrawingArea<BitMapBackend, Shift>, funnel: &[(String, u64)]) -> DrawResult {
    let max = funnel.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1) as f64;
    let steps = funnel.len().max(1) as i32;
    let mut chart = ChartBuilder::on(area)
        .caption("samples after each stage", (FONT, 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(-1i32..steps, 0f64..max * 1.1)?;
    chart
        .configure_mesh()
        .x_labels(funnel.len() + 2)
        .x_label_formatter(&|x| {
            usize::try_from(*x)
                .ok()
                .and_then(|i| funnel.get(i))
                .map_or(String::new(), |(name, _)| name.clone())
        })
        .y_desc("samples")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FONT, 13))
        .draw()?;
    let points: Vec<(i32, f64)> = funnel
        .iter()
        .enumerate()
        .map(|(i, (_, n))| (i as i32, *n as f64))
        .collect();
    chart.draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2)))?;
    chart.draw_series(points.iter().map(|&(x, y)| Circle::new((x, y), 4, BLUE.filled())))?;
    chart.draw_series(
        points
            .iter()
            .map(|&(x, y)| Text::new(format!("{}", y as u64), (x, y), (FONT, 13).into_font())),
    )?;
    Ok(())
}

fn draw_log_panel(area: &DrawingArea<BitMapBackend, Shift>, panel: &StagePlot) -> DrawResult {
    let len = panel.series.iter().map(|(_, v)| v.len()).max().unwrap_or(0).max(1);
    let max = panel
        .series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max = max.max(panel.threshold.as_ref().map_or(1.0, |(_, t)| *t));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..len as f64 * 1.5).log_scale(), (0.8f64..max * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .label_style((FONT, 13))
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN];
    for (i, (name, values)) in panel.series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points = values
            .iter()
            .enumerate()
            .filter(|(_, v)| **v > 0)
            .map(|(x, v)| (x as f64 + 1.0, *v as f64));
        // Earlier series drawn wider so that a later one lying on top leaves them visible.
        let width = 2 + 2 * (panel.series.len() - 1 - i) as u32;
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(width)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    if let Some((name, t)) = &panel.threshold {
        let line = BLACK.mix(0.6);
        chart
            .draw_series(LineSeries::new(vec![(1.0, *t), (len as f64 * 1.5, *t)], line))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], line));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_with_one_panel_per_plot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.png");
        let panel = StagePlot {
            title: "entry counts".into(),
            x_label: "entries".into(),
            y_label: "texts".into(),
            series: vec![("before".into(), vec![100, 10, 1]), ("after".into(), vec![5, 5, 0])],
            threshold: Some(("t = 5".into(), 5.0)),
        };
        let funnel = [("input".to_string(), 111), ("metaclip".to_string(), 10)];
        write_report_png(&path, &funnel, &[panel]).unwrap();
        let image = image::open(&path).unwrap();
        assert_eq!((image.width(), image.height()), (WIDTH, 2 * PANEL_HEIGHT));
        // Something was drawn (not a blank white canvas).
        assert!(image.to_rgb8().pixels().any(|p| p.0 != [255, 255, 255]));
        // Empty inputs still draw.
        write_report_png(&path, &[], &[]).unwrap();
    }
}
