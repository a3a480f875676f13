//! The points, the options and everything `fit.json` holds.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::SweepFitError;

/// One run's result: compute, error and the group it is drawn in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingPoint {
    /// Training compute C (MACs, or whatever the x column holds); > 0.
    pub compute: f64,
    /// Error E = 1 − metric; in (0, 1] for a metric in [0, 1).
    pub error: f64,
    /// Group label (e.g. the model name), used for colours and the legend.
    pub group: String,
}

/// How the fits are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitOptions {
    /// Frontier bins per decade of compute (2 = one bin per half decade).
    pub bins_per_decade: f64,
    /// Bootstrap draws (0 = no intervals).
    pub bootstrap_draws: usize,
    /// Seed of the bootstrap resampling.
    pub seed: u64,
    /// How many of the largest distinct compute values the held-out check
    /// leaves out (0 = no held-out check).
    pub holdout_largest: usize,
    /// How far (decades of compute) the extrapolation band goes beyond the data.
    pub extrapolate_decades: f64,
    /// Points in the extrapolation band.
    pub band_points: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            bins_per_decade: 2.0,
            bootstrap_draws: 1000,
            seed: 0,
            holdout_largest: 1,
            extrapolate_decades: 1.0,
            band_points: 60,
        }
    }
}

impl FitOptions {
    /// Checks that the options are usable; the error names the field.
    pub fn validate(&self) -> Result<(), SweepFitError> {
        if !(self.bins_per_decade.is_finite() && self.bins_per_decade > 0.0) {
            return Err(SweepFitError::BadOption {
                field: "bins_per_decade",
                reason: format!("must be a positive number, got {}", self.bins_per_decade),
            });
        }
        if !(self.extrapolate_decades.is_finite() && self.extrapolate_decades >= 0.0) {
            return Err(SweepFitError::BadOption {
                field: "extrapolate_decades",
                reason: format!("must be ≥ 0, got {}", self.extrapolate_decades),
            });
        }
        if self.band_points < 2 {
            return Err(SweepFitError::BadOption {
                field: "band_points",
                reason: format!("must be ≥ 2, got {}", self.band_points),
            });
        }
        Ok(())
    }
}

/// A fitted parameter with its bootstrap 95% percentile interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The fit on all the data.
    pub value: f64,
    /// 2.5th and 97.5th percentiles over the bootstrap draws whose fit
    /// succeeded; `None` without draws.
    pub ci95: Option<[f64; 2]>,
}

/// E = β·C^α (α < 0 when error falls with compute).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PowerLaw {
    /// Exponent α.
    pub alpha: f64,
    /// Coefficient β.
    pub beta: f64,
}

impl PowerLaw {
    /// Predicted error at `compute`.
    pub fn predict(&self, compute: f64) -> f64 {
        self.beta * compute.powf(self.alpha)
    }
}

/// E = a·C^(−b) + c, with c the irreducible error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SaturatingLaw {
    /// Coefficient a (> 0).
    pub a: f64,
    /// Exponent b.
    pub b: f64,
    /// Irreducible error c, 0 ≤ c < min E of the fitted points.
    pub c: f64,
}

impl SaturatingLaw {
    /// Predicted error at `compute`.
    pub fn predict(&self, compute: f64) -> f64 {
        self.a * compute.powf(-self.b) + self.c
    }
}

/// The power-law fit in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerLawReport {
    /// Exponent α with interval.
    pub alpha: Estimate,
    /// Coefficient β with interval.
    pub beta: Estimate,
    /// R² of the straight line in log10–log10 space.
    pub r_squared_log10: f64,
}

impl PowerLawReport {
    /// The fitted law (point estimates).
    pub fn law(&self) -> PowerLaw {
        PowerLaw {
            alpha: self.alpha.value,
            beta: self.beta.value,
        }
    }
}

/// The saturating fit in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaturatingReport {
    /// Coefficient a with interval.
    pub a: Estimate,
    /// Exponent b with interval.
    pub b: Estimate,
    /// Irreducible error c with interval.
    pub c: Estimate,
    /// Root mean square of ln(E) − ln(prediction) over the frontier.
    pub rmse_ln: f64,
}

impl SaturatingReport {
    /// The fitted law (point estimates).
    pub fn law(&self) -> SaturatingLaw {
        SaturatingLaw {
            a: self.a.value,
            b: self.b.value,
            c: self.c.value,
        }
    }
}

/// One compute value of the power law's bootstrap band.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BandPoint {
    /// Compute.
    pub compute: f64,
    /// The power law fitted on all data, at this compute.
    pub power_law: f64,
    /// 2.5th percentile of the bootstrap draws' predictions (None without draws).
    pub low: Option<f64>,
    /// 97.5th percentile of the bootstrap draws' predictions.
    pub high: Option<f64>,
}

/// A held-out point and what the laws fitted without it predict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldoutPrediction {
    /// The held-out point.
    pub point: ScalingPoint,
    /// Power-law prediction.
    pub power_law: f64,
    /// (prediction − actual) / actual.
    pub power_law_relative_error: f64,
    /// Saturating-law prediction, when that law could be fitted.
    pub saturating: Option<f64>,
    /// (prediction − actual) / actual for the saturating law.
    pub saturating_relative_error: Option<f64>,
}

/// Fit on all but the largest-compute point(s), predict those.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldoutCheck {
    /// Points the held-out fit used (before the frontier was taken).
    pub fitted_points: usize,
    /// Frontier points of the held-out fit.
    pub fitted_frontier_points: usize,
    /// Predictions for the held-out points, by increasing compute.
    pub predictions: Vec<HoldoutPrediction>,
}

/// A results row that was not used, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedRow {
    /// 1-based line in the file.
    pub line: u64,
    /// Why it was skipped.
    pub reason: String,
}

/// Everything `fit.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    /// The results file, when read from one.
    pub source: Option<PathBuf>,
    /// Metric column (E = 1 − metric), when read from a file.
    pub metric: Option<String>,
    /// Compute column, when read from a file.
    pub x: Option<String>,
    /// Group column, when read from a file.
    pub group: Option<String>,
    /// Options used.
    pub options: FitOptions,
    /// All points used.
    pub points: Vec<ScalingPoint>,
    /// Rows left out (e.g. a run without the metric).
    pub skipped_rows: Vec<SkippedRow>,
    /// The compute frontier, by increasing compute.
    pub frontier: Vec<ScalingPoint>,
    /// E = β·C^α on the frontier.
    pub power_law: PowerLawReport,
    /// E = a·C^(−b) + c on the frontier; `None` with fewer than 3 frontier points
    /// or when the fit fails (see `warnings`).
    pub saturating: Option<SaturatingReport>,
    /// Bootstrap draws made.
    pub bootstrap_draws: usize,
    /// Draws whose power-law fit succeeded.
    pub bootstrap_power_law_ok: usize,
    /// Draws whose saturating fit succeeded.
    pub bootstrap_saturating_ok: usize,
    /// Power law with its bootstrap band, over the data and beyond.
    pub band: Vec<BandPoint>,
    /// The held-out check; `None` when not asked for or not possible (see warnings).
    pub holdout: Option<HoldoutCheck>,
    /// Things the reader should know (a fit that was not possible, ...).
    pub warnings: Vec<String>,
}

impl FitReport {
    /// Writes the report as pretty JSON (`fit.json`).
    pub fn write_json(&self, path: &Path) -> Result<(), SweepFitError> {
        let text = serde_json::to_string_pretty(self).map_err(|source| SweepFitError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        std::fs::write(path, text + "\n").map_err(|source| SweepFitError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
