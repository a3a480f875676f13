//! Reading a sweep's `results.csv` into points, and fitting it.
use std::path::Path;

use super::error::SweepFitError;
use super::report::{FitOptions, FitReport, ScalingPoint, SkippedRow};
use super::scaling::fit_scaling;

/// Reads `(compute, 1 − metric, group)` points from a results CSV. Rows whose
/// metric or compute cell is empty (a run that has not finished) are skipped and
/// listed; anything else that is not a usable number is an error naming the line
/// and column.
pub fn read_results_csv(
    path: &Path,
    metric: &str,
    x: &str,
    group: &str,
) -> Result<(Vec<ScalingPoint>, Vec<SkippedRow>), SweepFitError> {
    let csv_error = |source| SweepFitError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(|source| SweepFitError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = csv::Reader::from_reader(std::io::BufReader::new(file));
    let headers = reader.headers().map_err(csv_error)?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| SweepFitError::MissingColumn {
                path: path.to_path_buf(),
                column: name.to_string(),
                available: headers.iter().collect::<Vec<_>>().join(", "),
            })
    };
    let (metric_at, x_at, group_at) = (column(metric)?, column(x)?, column(group)?);
    let mut points = Vec::new();
    let mut skipped = Vec::new();
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        let line = record.position().map_or(0, |p| p.line());
        let cell = |at: usize| record.get(at).unwrap_or("").trim();
        let (metric_cell, x_cell) = (cell(metric_at), cell(x_at));
        if metric_cell.is_empty() || x_cell.is_empty() {
            let missing = if metric_cell.is_empty() { metric } else { x };
            skipped.push(SkippedRow {
                line,
                reason: format!("empty `{missing}`"),
            });
            continue;
        }
        let bad = |column: &str, value: &str, reason: &str| SweepFitError::BadValue {
            path: path.to_path_buf(),
            line,
            column: column.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let metric_value: f64 = metric_cell
            .parse()
            .map_err(|_| bad(metric, metric_cell, "not a number"))?;
        if !(metric_value.is_finite() && (0.0..1.0).contains(&metric_value)) {
            return Err(bad(
                metric,
                metric_cell,
                "the metric must be in [0, 1) so that 1 − metric > 0",
            ));
        }
        let compute: f64 = x_cell.parse().map_err(|_| bad(x, x_cell, "not a number"))?;
        if !(compute.is_finite() && compute > 0.0) {
            return Err(bad(x, x_cell, "must be a positive number for a log scale"));
        }
        points.push(ScalingPoint {
            compute,
            error: 1.0 - metric_value,
            group: cell(group_at).to_string(),
        });
    }
    Ok((points, skipped))
}

/// Reads `results.csv` and fits it with [`FitOptions::default`] and `seed`:
/// E = 1 − `metric`, C = column `x`, points grouped by column `group`.
pub fn fit_results_csv(path: &Path, metric: &str, x: &str, group: &str, seed: u64) -> Result<FitReport, SweepFitError> {
    fit_results_csv_with(
        path,
        metric,
        x,
        group,
        &FitOptions {
            seed,
            ..FitOptions::default()
        },
    )
}

/// [`fit_results_csv`] with explicit options.
pub fn fit_results_csv_with(
    path: &Path,
    metric: &str,
    x: &str,
    group: &str,
    options: &FitOptions,
) -> Result<FitReport, SweepFitError> {
    let (points, skipped_rows) = read_results_csv(path, metric, x, group)?;
    let mut report = fit_scaling(points, options)?;
    report.source = Some(path.to_path_buf());
    report.metric = Some(metric.to_string());
    report.x = Some(x.to_string());
    report.group = Some(group.to_string());
    for row in &skipped_rows {
        report
            .warnings
            .push(format!("line {} skipped: {}", row.line, row.reason));
    }
    report.skipped_rows = skipped_rows;
    Ok(report)
}
