//! Scaling-law fits over sweep results (DESIGN.md §8).
//!
//! Input: points (compute C, error E = 1 − metric, group such as the model name),
//! usually read from a sweep's `results.csv` with [`fit_results_csv`]. Output: a
//! serde-serialisable [`FitReport`] (written as `fit.json`) with
//!
//! - the compute frontier: the lowest-error point in each log-spaced bin of C
//!   ([`compute_frontier`]);
//! - E = β·C^α fitted on the frontier by least squares in log10–log10 space
//!   ([`fit_power_law`]), as OpenCLIP's scaling-law study did;
//! - E = a·C^(−b) + c fitted on the frontier by Levenberg–Marquardt
//!   ([`fit_saturating_law`]), with 0 ≤ c < min E;
//! - bootstrap 95% percentile intervals for α, β, a, b, c (all points resampled
//!   with replacement, frontier recomputed per draw, seeded), and the bootstrap
//!   band of the power law over the data range extended beyond it;
//! - a held-out check: fit on all but the largest-compute point(s), predict them.
//!
//! ```
//! use launcher::sweep::fit::{fit_scaling, FitOptions, ScalingPoint};
//! let points: Vec<ScalingPoint> = (0..8)
//!     .map(|i| {
//!         let compute = 10f64.powf(12.0 + 0.5 * i as f64 + 0.25);
//!         ScalingPoint { compute, error: 40.0 * compute.powf(-0.14), group: format!("m{}", i % 2) }
//!     })
//!     .collect();
//! let report = fit_scaling(points, &FitOptions { bootstrap_draws: 50, ..FitOptions::default() })?;
//! assert!((report.power_law.alpha.value + 0.14).abs() < 1e-6);
//! # Ok::<(), launcher::sweep::fit::SweepFitError>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Why a scaling-law fit could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SweepFitError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The results file is not valid CSV.
    #[error("{path}: invalid CSV: {source}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: csv::Error,
    },
    /// A column named on the command line is not in the CSV header.
    #[error("{path}: no column `{column}` (columns: {available})")]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The missing column.
        column: String,
        /// The header's columns, comma-separated.
        available: String,
    },
    /// A cell holds a value that cannot be used.
    #[error("{path}: line {line}, column `{column}`: bad value {value:?}: {reason}")]
    BadValue {
        /// The file.
        path: PathBuf,
        /// 1-based line in the file (the header is line 1).
        line: u64,
        /// The column.
        column: String,
        /// The cell as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A point given directly (not from a file) is unusable.
    #[error("point {index} ({group}): {reason}")]
    BadPoint {
        /// Index in the input.
        index: usize,
        /// The point's group.
        group: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Not enough points for a fit.
    #[error("{what}: needs at least {needed} points with distinct compute, got {got}")]
    TooFewPoints {
        /// Which fit.
        what: &'static str,
        /// Points needed.
        needed: usize,
        /// Points available.
        got: usize,
    },
    /// An option is out of range.
    #[error("fit option `{field}`: {reason}")]
    BadOption {
        /// The option.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The nonlinear fit did not produce finite parameters.
    #[error("{what}: fit failed: {reason}")]
    FitFailed {
        /// Which fit.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// fit.json could not be serialised.
    #[error("{path}: cannot write JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
}

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

/// The lowest-error point in each bin of log10(compute); bins are
/// `[k/bins_per_decade, (k+1)/bins_per_decade)` in log10 C, anchored at whole
/// decades so that the same point falls in the same bin in every bootstrap draw.
/// Ties go to the smaller compute. Sorted by compute.
pub fn compute_frontier(points: &[ScalingPoint], bins_per_decade: f64) -> Vec<ScalingPoint> {
    let mut best: BTreeMap<i64, &ScalingPoint> = BTreeMap::new();
    for point in points {
        // The small epsilon keeps C = 10^k exactly (which log10 may return as
        // k − 1e-16) in the bin that starts at 10^k.
        let bin = (point.compute.log10() * bins_per_decade + 1e-9).floor() as i64;
        let better = match best.get(&bin) {
            None => true,
            Some(current) => {
                point.error < current.error || (point.error == current.error && point.compute < current.compute)
            }
        };
        if better {
            best.insert(bin, point);
        }
    }
    let mut frontier: Vec<ScalingPoint> = best.into_values().cloned().collect();
    frontier.sort_by(|l, r| l.compute.total_cmp(&r.compute));
    frontier
}

fn distinct_computes(points: &[ScalingPoint]) -> usize {
    let mut computes: Vec<f64> = points.iter().map(|p| p.compute).collect();
    computes.sort_by(f64::total_cmp);
    computes.dedup();
    computes.len()
}

/// Least squares of log10 E = log10 β + α·log10 C; returns the law and R².
pub fn fit_power_law(points: &[ScalingPoint]) -> Result<(PowerLaw, f64), SweepFitError> {
    let distinct = distinct_computes(points);
    if distinct < 2 {
        return Err(SweepFitError::TooFewPoints {
            what: "power law",
            needed: 2,
            got: distinct,
        });
    }
    let n = points.len() as f64;
    let xs: Vec<f64> = points.iter().map(|p| p.compute.log10()).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.error.log10()).collect();
    let mean_x = xs.iter().sum::<f64>() / n;
    let mean_y = ys.iter().sum::<f64>() / n;
    let sxx: f64 = xs.iter().map(|x| (x - mean_x).powi(2)).sum();
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mean_x) * (y - mean_y)).sum();
    let syy: f64 = ys.iter().map(|y| (y - mean_y).powi(2)).sum();
    let alpha = sxy / sxx;
    let intercept = mean_y - alpha * mean_x;
    let residual: f64 = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| (y - intercept - alpha * x).powi(2))
        .sum();
    let r_squared = if syy > 0.0 { 1.0 - residual / syy } else { 1.0 };
    let law = PowerLaw {
        alpha,
        beta: 10f64.powf(intercept),
    };
    if !(law.alpha.is_finite() && law.beta.is_finite()) {
        return Err(SweepFitError::FitFailed {
            what: "power law",
            reason: format!("non-finite parameters α={} β={}", law.alpha, law.beta),
        });
    }
    Ok((law, r_squared))
}

/// Fits E = a·C^(−b) + c by Levenberg–Marquardt on ln E (so that small and large
/// errors weigh alike, as they do on the log–log plot), with a > 0 and
/// 0 ≤ c < min E enforced by the parameterisation (ln a, b, logit(c / min E)).
/// `start` (the power law) gives the starting exponent; several starting values
/// of c are tried and the best fit is kept. Returns the law and the RMS of the
/// ln residuals.
pub fn fit_saturating_law(points: &[ScalingPoint], start: &PowerLaw) -> Result<(SaturatingLaw, f64), SweepFitError> {
    const WHAT: &str = "saturating law";
    let distinct = distinct_computes(points);
    if distinct < 3 {
        return Err(SweepFitError::TooFewPoints {
            what: WHAT,
            needed: 3,
            got: distinct,
        });
    }
    let min_error = points.iter().map(|p| p.error).fold(f64::INFINITY, f64::min);
    // Compute is scaled by its geometric mean so that the fitted coefficient is
    // O(1); a is converted back to raw compute at the end.
    let log_ref = points.iter().map(|p| p.compute.ln()).sum::<f64>() / points.len() as f64;
    let problem = SaturatingProblem {
        ln_x: points.iter().map(|p| p.compute.ln() - log_ref).collect(),
        ln_e: points.iter().map(|p| p.error.ln()).collect(),
        min_error,
    };
    let first_b = if start.alpha < -1e-3 { -start.alpha } else { 0.1 };
    let mut best: Option<([f64; 3], f64)> = None;
    for b0 in [first_b, 2.0 * first_b] {
        for c_fraction in [0.01, 0.3, 0.6, 0.9] {
            let c0 = c_fraction * min_error;
            // ln a' by least squares given b0 and c0.
            let ln_a0 = problem
                .ln_x
                .iter()
                .zip(points)
                .map(|(lx, p)| (p.error - c0).ln() + b0 * lx)
                .sum::<f64>()
                / points.len() as f64;
            let theta0 = [ln_a0, b0, (c_fraction / (1.0 - c_fraction)).ln()];
            if let Some((theta, cost)) = problem.levenberg_marquardt(theta0) {
                if best.as_ref().is_none_or(|(_, best_cost)| cost < *best_cost) {
                    best = Some((theta, cost));
                }
            }
        }
    }
    let Some((theta, cost)) = best else {
        return Err(SweepFitError::FitFailed {
            what: WHAT,
            reason: "no start converged".into(),
        });
    };
    let b = theta[1];
    let law = SaturatingLaw {
        a: (theta[0] + b * log_ref).exp(),
        b,
        c: min_error * sigmoid(theta[2]),
    };
    if !(law.a.is_finite() && law.b.is_finite() && law.c.is_finite()) {
        return Err(SweepFitError::FitFailed {
            what: WHAT,
            reason: format!("non-finite parameters a={} b={} c={}", law.a, law.b, law.c),
        });
    }
    Ok((law, (cost / points.len() as f64).sqrt()))
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// ln E ≈ ln(exp(θ0)·x^(−θ1) + min_error·σ(θ2)), x = C / geometric mean.
struct SaturatingProblem {
    ln_x: Vec<f64>,
    ln_e: Vec<f64>,
    min_error: f64,
}

impl SaturatingProblem {
    /// Sum of squared residuals; None when the model leaves the finite range.
    fn cost(&self, theta: &[f64; 3]) -> Option<f64> {
        let c = self.min_error * sigmoid(theta[2]);
        let mut sum = 0.0;
        for (lx, le) in self.ln_x.iter().zip(&self.ln_e) {
            let model = (theta[0] - theta[1] * lx).exp() + c;
            let r = le - model.ln();
            sum += r * r;
        }
        sum.is_finite().then_some(sum)
    }

    /// Minimises `cost`; returns the parameters and the final cost.
    fn levenberg_marquardt(&self, mut theta: [f64; 3]) -> Option<([f64; 3], f64)> {
        let mut cost = self.cost(&theta)?;
        let mut lambda = 1e-3;
        for _ in 0..300 {
            // Normal equations with G = ∂model/∂θ and residual r = ln E − model:
            // (GᵀG + λ·diag(GᵀG)) δ = Gᵀr.
            let mut gtg = [[0.0f64; 3]; 3];
            let mut gtr = [0.0f64; 3];
            let s = sigmoid(theta[2]);
            let c = self.min_error * s;
            for (lx, le) in self.ln_x.iter().zip(&self.ln_e) {
                let power = (theta[0] - theta[1] * lx).exp();
                let model = power + c;
                let r = le - model.ln();
                let g = [
                    power / model,
                    -power * lx / model,
                    self.min_error * s * (1.0 - s) / model,
                ];
                for i in 0..3 {
                    gtr[i] += g[i] * r;
                    for j in 0..3 {
                        gtg[i][j] += g[i] * g[j];
                    }
                }
            }
            let mut improved = false;
            while lambda < 1e12 {
                let mut damped = gtg;
                for (i, row) in damped.iter_mut().enumerate() {
                    row[i] += lambda * gtg[i][i].max(1e-12);
                }
                let Some(delta) = solve3(damped, gtr) else {
                    lambda *= 10.0;
                    continue;
                };
                let candidate = [theta[0] + delta[0], theta[1] + delta[1], theta[2] + delta[2]];
                match self.cost(&candidate) {
                    Some(new_cost) if new_cost <= cost => {
                        let converged = cost - new_cost <= 1e-14 * (1.0 + cost) && delta.iter().all(|d| d.abs() < 1e-9);
                        let small_gain = cost - new_cost <= 1e-15 * (1.0 + cost);
                        theta = candidate;
                        cost = new_cost;
                        lambda = (lambda / 10.0).max(1e-12);
                        improved = true;
                        if converged || small_gain {
                            return Some((theta, cost));
                        }
                        break;
                    }
                    _ => lambda *= 10.0,
                }
            }
            if !improved {
                // No step lowers the cost: a (local) minimum.
                return Some((theta, cost));
            }
        }
        Some((theta, cost))
    }
}

/// Solves a 3×3 system by Gaussian elimination with partial pivoting.
fn solve3(mut m: [[f64; 3]; 3], mut v: [f64; 3]) -> Option<[f64; 3]> {
    for col in 0..3 {
        let pivot = (col..3).max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))?;
        if m[pivot][col].abs() < 1e-300 {
            return None;
        }
        m.swap(col, pivot);
        v.swap(col, pivot);
        for row in col + 1..3 {
            let factor = m[row][col] / m[col][col];
            let pivot_row = m[col];
            for (entry, pivot_entry) in m[row].iter_mut().zip(pivot_row).skip(col) {
                *entry -= factor * pivot_entry;
            }
            v[row] -= factor * v[col];
        }
    }
    let mut x = [0.0; 3];
    for row in (0..3).rev() {
        let tail: f64 = (row + 1..3).map(|k| m[row][k] * x[k]).sum();
        x[row] = (v[row] - tail) / m[row][row];
    }
    x.iter().all(|e| e.is_finite()).then_some(x)
}

/// Linear-interpolated percentile (p in [0, 1]) of unsorted values.
fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = p * (values.len() - 1) as f64;
    let low = rank.floor() as usize;
    let high = rank.ceil() as usize;
    Some(values[low] + (values[high] - values[low]) * (rank - low as f64))
}

fn interval(values: &mut [f64]) -> Option<[f64; 2]> {
    Some([percentile(values, 0.025)?, percentile(values, 0.975)?])
}

fn check_points(points: &[ScalingPoint]) -> Result<(), SweepFitError> {
    for (index, point) in points.iter().enumerate() {
        let reason = if !(point.compute.is_finite() && point.compute > 0.0) {
            format!("compute must be a positive number, got {}", point.compute)
        } else if !(point.error.is_finite() && point.error > 0.0) {
            format!("error must be a positive number (metric < 1), got {}", point.error)
        } else {
            continue;
        };
        return Err(SweepFitError::BadPoint {
            index,
            group: point.group.clone(),
            reason,
        });
    }
    Ok(())
}

/// Frontier + both laws on one set of points (the full data, a bootstrap draw,
/// or the held-out remainder).
struct Fits {
    frontier: Vec<ScalingPoint>,
    power_law: PowerLaw,
    r_squared: f64,
    saturating: Result<(SaturatingLaw, f64), SweepFitError>,
}

fn fit_both(points: &[ScalingPoint], bins_per_decade: f64) -> Result<Fits, SweepFitError> {
    let frontier = compute_frontier(points, bins_per_decade);
    let (power_law, r_squared) = fit_power_law(&frontier)?;
    let saturating = fit_saturating_law(&frontier, &power_law);
    Ok(Fits {
        frontier,
        power_law,
        r_squared,
        saturating,
    })
}

/// Fits both laws on the frontier of `points`, with bootstrap intervals, the
/// extrapolation band and the held-out check (see the module doc).
pub fn fit_scaling(points: Vec<ScalingPoint>, options: &FitOptions) -> Result<FitReport, SweepFitError> {
    options.validate()?;
    check_points(&points)?;
    let mut warnings = Vec::new();
    let fits = fit_both(&points, options.bins_per_decade)?;
    let saturating = match &fits.saturating {
        Ok(fit) => Some(*fit),
        Err(error) => {
            warnings.push(format!("no saturating fit on the frontier: {error}"));
            None
        }
    };

    // Band compute grid: log-spaced from the smallest compute to the largest
    // plus `extrapolate_decades`.
    let log_min = points.iter().map(|p| p.compute.log10()).fold(f64::INFINITY, f64::min);
    let log_max = points
        .iter()
        .map(|p| p.compute.log10())
        .fold(f64::NEG_INFINITY, f64::max)
        + options.extrapolate_decades;
    let band_computes: Vec<f64> = (0..options.band_points)
        .map(|i| {
            let t = i as f64 / (options.band_points - 1) as f64;
            10f64.powf(log_min + t * (log_max - log_min))
        })
        .collect();

    // Bootstrap: resample all points with replacement and redo the whole fit
    // (frontier included), so the intervals carry the frontier's uncertainty too.
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut alphas = Vec::new();
    let mut betas = Vec::new();
    let mut sat_params: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut band_draws: Vec<Vec<f64>> = vec![Vec::new(); band_computes.len()];
    let mut resample = Vec::with_capacity(points.len());
    for _ in 0..options.bootstrap_draws {
        resample.clear();
        resample.extend((0..points.len()).map(|_| points[rng.gen_range(0..points.len())].clone()));
        let Ok(draw) = fit_both(&resample, options.bins_per_decade) else {
            continue;
        };
        alphas.push(draw.power_law.alpha);
        betas.push(draw.power_law.beta);
        for (values, compute) in band_draws.iter_mut().zip(&band_computes) {
            values.push(draw.power_law.predict(*compute));
        }
        if let Ok((law, _)) = draw.saturating {
            sat_params[0].push(law.a);
            sat_params[1].push(law.b);
            sat_params[2].push(law.c);
        }
    }
    let power_law_ok = alphas.len();
    let saturating_ok = sat_params[0].len();
    if options.bootstrap_draws > 0 && power_law_ok * 2 < options.bootstrap_draws {
        warnings.push(format!(
            "only {power_law_ok} of {} bootstrap draws gave a power-law fit; intervals are unreliable",
            options.bootstrap_draws
        ));
    }

    let power_law = PowerLawReport {
        alpha: Estimate {
            value: fits.power_law.alpha,
            ci95: interval(&mut alphas),
        },
        beta: Estimate {
            value: fits.power_law.beta,
            ci95: interval(&mut betas),
        },
        r_squared_log10: fits.r_squared,
    };
    let saturating = saturating.map(|(law, rmse_ln)| {
        let [a_draws, b_draws, c_draws] = &mut sat_params;
        SaturatingReport {
            a: Estimate {
                value: law.a,
                ci95: interval(a_draws),
            },
            b: Estimate {
                value: law.b,
                ci95: interval(b_draws),
            },
            c: Estimate {
                value: law.c,
                ci95: interval(c_draws),
            },
            rmse_ln,
        }
    });
    let band = band_computes
        .iter()
        .zip(band_draws.iter_mut())
        .map(|(&compute, draws)| BandPoint {
            compute,
            power_law: fits.power_law.predict(compute),
            low: percentile(draws, 0.025),
            high: percentile(draws, 0.975),
        })
        .collect();

    let holdout = if options.holdout_largest == 0 {
        None
    } else {
        match holdout_check(&points, options) {
            Ok(check) => Some(check),
            Err(error) => {
                warnings.push(format!("no held-out check: {error}"));
                None
            }
        }
    };

    Ok(FitReport {
        source: None,
        metric: None,
        x: None,
        group: None,
        options: options.clone(),
        points,
        skipped_rows: Vec::new(),
        frontier: fits.frontier,
        power_law,
        saturating,
        bootstrap_draws: options.bootstrap_draws,
        bootstrap_power_law_ok: power_law_ok,
        bootstrap_saturating_ok: saturating_ok,
        band,
        holdout,
        warnings,
    })
}

/// Fits on the points below the `holdout_largest` largest distinct computes and
/// predicts the points at those computes.
fn holdout_check(points: &[ScalingPoint], options: &FitOptions) -> Result<HoldoutCheck, SweepFitError> {
    let mut computes: Vec<f64> = points.iter().map(|p| p.compute).collect();
    computes.sort_by(f64::total_cmp);
    computes.dedup();
    if computes.len() <= options.holdout_largest {
        return Err(SweepFitError::TooFewPoints {
            what: "held-out check",
            needed: options.holdout_largest + 2,
            got: computes.len(),
        });
    }
    let threshold = computes[computes.len() - options.holdout_largest];
    let (mut held_out, kept): (Vec<ScalingPoint>, Vec<ScalingPoint>) =
        points.iter().cloned().partition(|p| p.compute >= threshold);
    held_out.sort_by(|l, r| l.compute.total_cmp(&r.compute));
    let fits = fit_both(&kept, options.bins_per_decade)?;
    let saturating = fits.saturating.ok().map(|(law, _)| law);
    let predictions = held_out
        .into_iter()
        .map(|point| {
            let power_law = fits.power_law.predict(point.compute);
            let saturating_prediction = saturating.map(|law| law.predict(point.compute));
            HoldoutPrediction {
                power_law_relative_error: (power_law - point.error) / point.error,
                power_law,
                saturating_relative_error: saturating_prediction.map(|s| (s - point.error) / point.error),
                saturating: saturating_prediction,
                point,
            }
        })
        .collect();
    Ok(HoldoutCheck {
        fitted_points: kept.len(),
        fitted_frontier_points: fits.frontier.len(),
        predictions,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Standard normal draws (Box–Muller) from a seeded generator.
    fn normal(rng: &mut ChaCha8Rng) -> f64 {
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen_range(0.0..1.0);
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// One point per frontier bin (bins_per_decade = 4): the bin centres of
    /// log10 C from `first_log10`, so the frontier is exactly these points.
    fn one_per_bin(
        first_log10: f64,
        count: usize,
        noise_sigma_ln: f64,
        seed: u64,
        law: impl Fn(f64) -> f64,
    ) -> Vec<ScalingPoint> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..count)
            .map(|i| {
                let compute = 10f64.powf(first_log10 + 0.25 * i as f64 + 0.125);
                let error = law(compute) * (noise_sigma_ln * normal(&mut rng)).exp();
                ScalingPoint {
                    compute,
                    error,
                    group: format!("model{}", i % 3),
                }
            })
            .collect()
    }

    fn point(compute: f64, error: f64, group: &str) -> ScalingPoint {
        ScalingPoint {
            compute,
            error,
            group: group.into(),
        }
    }

    const TRUE_POWER: PowerLaw = PowerLaw {
        alpha: -0.15,
        beta: 50.0,
    };
    const TRUE_SATURATING: SaturatingLaw = SaturatingLaw {
        a: 600.0,
        b: 0.3,
        c: 0.2,
    };

    #[test]
    fn frontier_keeps_the_minimum_of_each_half_decade() {
        let points = vec![
            point(1e12, 0.50, "s"),
            point(2e12, 0.40, "m"), // bin [1e12, 10^12.5): minimum
            point(5e12, 0.45, "s"),
            point(8e12, 0.30, "m"), // bin [10^12.5, 1e13): minimum
            point(1e13, 0.35, "l"), // exactly 10^13 starts the next bin
            point(3e13, 0.35, "s"), // tie: the smaller compute stays
        ];
        let frontier = compute_frontier(&points, 2.0);
        assert_eq!(
            frontier,
            vec![point(2e12, 0.40, "m"), point(8e12, 0.30, "m"), point(1e13, 0.35, "l")]
        );
        // One bin per decade merges the first two bins.
        let coarse = compute_frontier(&points, 1.0);
        assert_eq!(coarse, vec![point(8e12, 0.30, "m"), point(1e13, 0.35, "l")]);
    }

    #[test]
    fn power_law_recovers_known_alpha_beta_on_the_frontier() {
        let mut points = one_per_bin(11.0, 20, 0.02, 7, |c| TRUE_POWER.predict(c));
        // A worse model in every bin must not move the fit.
        let worse: Vec<ScalingPoint> = points
            .iter()
            .map(|p| point(p.compute * 1.2, p.error * 1.4, "worse"))
            .collect();
        points.extend(worse);
        let frontier = compute_frontier(&points, 4.0);
        assert_eq!(frontier.len(), 20);
        assert!(frontier.iter().all(|p| p.group != "worse"));
        let (law, r_squared) = fit_power_law(&frontier).expect("fit");
        assert!((law.alpha - TRUE_POWER.alpha).abs() < 0.005, "alpha {}", law.alpha);
        assert!((law.beta / TRUE_POWER.beta - 1.0).abs() < 0.15, "beta {}", law.beta);
        assert!(r_squared > 0.98, "r² {r_squared}");
    }

    #[test]
    fn saturating_law_is_exact_on_noise_free_data_and_close_on_noisy_data() {
        let exact = one_per_bin(10.0, 24, 0.0, 1, |c| TRUE_SATURATING.predict(c));
        let (start, _) = fit_power_law(&exact).expect("power law");
        let (law, rmse) = fit_saturating_law(&exact, &start).expect("exact fit");
        assert!((law.b - TRUE_SATURATING.b).abs() < 1e-5, "{law:?}");
        assert!((law.c - TRUE_SATURATING.c).abs() < 1e-6, "{law:?}");
        assert!((law.a / TRUE_SATURATING.a - 1.0).abs() < 1e-4, "{law:?}");
        assert!(rmse < 1e-8, "rmse {rmse}");

        let noisy = one_per_bin(10.0, 24, 0.02, 3, |c| TRUE_SATURATING.predict(c));
        let (start, _) = fit_power_law(&noisy).expect("power law");
        let (law, _) = fit_saturating_law(&noisy, &start).expect("noisy fit");
        assert!((law.b - TRUE_SATURATING.b).abs() < 0.03, "{law:?}");
        assert!((law.c - TRUE_SATURATING.c).abs() < 0.015, "{law:?}");
        // a trades off against b (C^b changes by 10^(13·Δb) at C = 1e13), so a
        // is checked loosely and the curve itself tightly.
        assert!((law.a / TRUE_SATURATING.a).ln().abs() < 2f64.ln(), "{law:?}");
        for point in &noisy {
            let truth = TRUE_SATURATING.predict(point.compute);
            assert!(
                (law.predict(point.compute) / truth - 1.0).abs() < 0.04,
                "{law:?} at {point:?}"
            );
        }
        // Least squares found a minimum: no worse than the true parameters.
        let cost = |law: &SaturatingLaw| -> f64 {
            noisy
                .iter()
                .map(|p| (p.error.ln() - law.predict(p.compute).ln()).powi(2))
                .sum()
        };
        assert!(
            cost(&law) <= cost(&TRUE_SATURATING),
            "{} > {}",
            cost(&law),
            cost(&TRUE_SATURATING)
        );
        let min_error = noisy.iter().map(|p| p.error).fold(f64::INFINITY, f64::min);
        assert!(law.c >= 0.0 && law.c < min_error);
    }

    #[test]
    fn irreducible_error_stays_at_zero_for_a_pure_power_law() {
        // A pure power law has no floor: c must end at the lower bound, not below.
        let points = one_per_bin(12.0, 16, 0.0, 1, |c| TRUE_POWER.predict(c));
        let (law, _) = fit_saturating_law(&points, &TRUE_POWER).expect("fit");
        assert!(law.c >= 0.0 && law.c < 0.01, "{law:?}");
        assert!((law.b + TRUE_POWER.alpha).abs() < 0.01, "{law:?}");
    }

    fn contains(estimate: &Estimate, truth: f64) -> bool {
        let [low, high] = estimate.ci95.expect("interval");
        low <= truth && truth <= high && low < high
    }

    #[test]
    fn bootstrap_intervals_contain_the_true_parameters() {
        let options = FitOptions {
            bins_per_decade: 4.0,
            bootstrap_draws: 400,
            seed: 11,
            ..FitOptions::default()
        };
        let power = one_per_bin(11.0, 20, 0.03, 5, |c| TRUE_POWER.predict(c));
        let report = fit_scaling(power, &options).expect("power-law data");
        assert!(
            contains(&report.power_law.alpha, TRUE_POWER.alpha),
            "{:?}",
            report.power_law
        );
        assert!(
            contains(&report.power_law.beta, TRUE_POWER.beta),
            "{:?}",
            report.power_law
        );
        assert!(report.bootstrap_power_law_ok > 390);
        // Intervals are informative, not the whole real line.
        let [low, high] = report.power_law.alpha.ci95.expect("interval");
        assert!(high - low < 0.03, "alpha interval {low}..{high}");

        let saturating = one_per_bin(10.0, 24, 0.03, 9, |c| TRUE_SATURATING.predict(c));
        let report = fit_scaling(saturating, &options).expect("saturating data");
        let fit = report.saturating.expect("saturating fit");
        assert!(contains(&fit.a, TRUE_SATURATING.a), "{fit:?}");
        assert!(contains(&fit.b, TRUE_SATURATING.b), "{fit:?}");
        assert!(contains(&fit.c, TRUE_SATURATING.c), "{fit:?}");
        assert!(report.bootstrap_saturating_ok > 350);
    }

    #[test]
    fn bootstrap_is_reproducible_from_its_seed() {
        let points = one_per_bin(11.0, 12, 0.05, 2, |c| TRUE_POWER.predict(c));
        let options = FitOptions {
            bootstrap_draws: 100,
            seed: 4,
            ..FitOptions::default()
        };
        let first = fit_scaling(points.clone(), &options).expect("fit");
        let again = fit_scaling(points.clone(), &options).expect("fit");
        assert_eq!(first, again);
        let other = fit_scaling(points, &FitOptions { seed: 5, ..options }).expect("fit");
        assert_ne!(first.power_law.alpha.ci95, other.power_law.alpha.ci95);
    }

    #[test]
    fn band_extends_a_decade_beyond_the_data_and_brackets_the_fit() {
        let points = one_per_bin(11.0, 12, 0.03, 2, |c| TRUE_POWER.predict(c));
        let largest = points.iter().map(|p| p.compute).fold(0.0, f64::max);
        let report = fit_scaling(
            points,
            &FitOptions {
                bootstrap_draws: 200,
                ..FitOptions::default()
            },
        )
        .expect("fit");
        assert_eq!(report.band.len(), 60);
        let last = report.band.last().expect("band");
        assert!((last.compute / (largest * 10.0) - 1.0).abs() < 1e-9);
        for band in &report.band {
            let (low, high) = (band.low.expect("low"), band.high.expect("high"));
            assert!(low <= band.power_law && band.power_law <= high, "{band:?}");
        }
    }

    #[test]
    fn holdout_predicts_the_largest_compute_from_the_rest() {
        let mut points: Vec<ScalingPoint> = (0..6)
            .map(|i| {
                let compute = 10f64.powf(12.0 + 0.5 * i as f64 + 0.2);
                point(compute, TRUE_POWER.predict(compute), "m")
            })
            .collect();
        let options = FitOptions {
            bootstrap_draws: 0,
            ..FitOptions::default()
        };
        let report = fit_scaling(points.clone(), &options).expect("fit");
        let check = report.holdout.expect("holdout");
        assert_eq!(check.fitted_points, 5);
        assert_eq!(check.predictions.len(), 1);
        let prediction = &check.predictions[0];
        assert_eq!(prediction.point, points[5]);
        assert!(prediction.power_law_relative_error.abs() < 1e-9, "{prediction:?}");

        // The largest run does 20% worse than the law: relative error −1/6.
        points[5].error *= 1.2;
        let report = fit_scaling(points.clone(), &options).expect("fit");
        let prediction = &report.holdout.expect("holdout").predictions[0];
        assert!((prediction.power_law - TRUE_POWER.predict(points[5].compute)).abs() < 1e-9);
        assert!(
            (prediction.power_law_relative_error + 1.0 / 6.0).abs() < 1e-9,
            "{prediction:?}"
        );

        let two = fit_scaling(
            points,
            &FitOptions {
                holdout_largest: 2,
                ..options
            },
        )
        .expect("fit");
        let check = two.holdout.expect("holdout");
        assert_eq!(check.fitted_points, 4);
        assert_eq!(check.predictions.len(), 2);
        assert!(check.predictions[0].point.compute < check.predictions[1].point.compute);
        assert!(check.predictions[0].saturating.is_some());
    }

    #[test]
    fn bad_points_options_and_too_few_points_are_errors() {
        let error = fit_scaling(
            vec![point(1e12, 0.5, "a"), point(0.0, 0.4, "b")],
            &FitOptions::default(),
        )
        .expect_err("zero compute");
        assert!(error.to_string().contains("point 1 (b)"), "{error}");
        let error = fit_scaling(vec![point(1e12, 0.5, "a")], &FitOptions::default()).expect_err("one point");
        assert!(
            matches!(error, SweepFitError::TooFewPoints { needed: 2, got: 1, .. }),
            "{error}"
        );
        let options = FitOptions {
            bins_per_decade: 0.0,
            ..FitOptions::default()
        };
        let error = fit_scaling(vec![point(1e12, 0.5, "a"), point(1e13, 0.4, "a")], &options).expect_err("bad option");
        assert!(error.to_string().contains("bins_per_decade"), "{error}");
        // Two frontier points: a power law, no saturating fit, and a warning saying why.
        let report = fit_scaling(
            vec![point(1e12, 0.5, "a"), point(1e13, 0.4, "a")],
            &FitOptions {
                bootstrap_draws: 10,
                holdout_largest: 0,
                ..FitOptions::default()
            },
        )
        .expect("two points");
        assert!(report.saturating.is_none());
        assert!(
            report.warnings.iter().any(|w| w.contains("saturating")),
            "{:?}",
            report.warnings
        );
    }

    /// Same data fitted by numpy.polyfit and scipy.optimize.least_squares
    /// (scripts/reference/make_scaling_fit_fixture.py).
    #[test]
    fn matches_numpy_and_scipy_reference() {
        #[derive(Deserialize)]
        struct Reference {
            points: Vec<ScalingPoint>,
            bins_per_decade: f64,
            frontier_compute: Vec<f64>,
            power_law: PowerLaw,
            saturating: ScipySaturating,
        }
        #[derive(Deserialize)]
        struct ScipySaturating {
            a: f64,
            b: f64,
            c: f64,
            sum_sq_ln: f64,
        }
        let reference: Reference =
            serde_json::from_str(include_str!("testdata/scaling_fit_reference.json")).expect("fixture");
        let options = FitOptions {
            bins_per_decade: reference.bins_per_decade,
            bootstrap_draws: 0,
            ..FitOptions::default()
        };
        let report = fit_scaling(reference.points, &options).expect("fit");
        let frontier: Vec<f64> = report.frontier.iter().map(|p| p.compute).collect();
        assert_eq!(frontier, reference.frontier_compute);
        let close = |ours: f64, theirs: f64, tolerance: f64| (ours / theirs - 1.0).abs() < tolerance;
        assert!(
            close(report.power_law.alpha.value, reference.power_law.alpha, 1e-9),
            "{:?}",
            report.power_law
        );
        assert!(
            close(report.power_law.beta.value, reference.power_law.beta, 1e-9),
            "{:?}",
            report.power_law
        );
        let ours = report.saturating.expect("saturating fit");
        let theirs = &reference.saturating;
        let sum_sq_ln = ours.rmse_ln.powi(2) * frontier.len() as f64;
        // Same optimum: equal cost, and parameters equal to optimiser precision.
        assert!(
            sum_sq_ln <= theirs.sum_sq_ln * (1.0 + 1e-6),
            "{sum_sq_ln} vs {}",
            theirs.sum_sq_ln
        );
        assert!(close(ours.b.value, theirs.b, 1e-3), "{ours:?}");
        assert!(close(ours.c.value, theirs.c, 1e-3), "{ours:?}");
        assert!(close(ours.a.value, theirs.a, 1e-2), "{ours:?}");
    }

    fn write_csv(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("results.csv");
        std::fs::write(&path, text).expect("write csv");
        path
    }

    #[test]
    fn results_csv_is_read_and_fitted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut text = String::from("run,model,compute,zeroshot_top1\n");
        for (i, model) in ["s", "m", "l", "s", "m", "l"].iter().enumerate() {
            let compute = 10f64.powf(12.0 + 0.5 * i as f64 + 0.2);
            text += &format!("r{i},{model},{compute:e},{}\n", 1.0 - TRUE_POWER.predict(compute));
        }
        text += "unfinished,l,1e18,\n";
        let path = write_csv(dir.path(), &text);
        let report = fit_results_csv(&path, "zeroshot_top1", "compute", "model", 3).expect("fit");
        assert_eq!(report.points.len(), 6);
        assert_eq!(report.points[1].group, "m");
        assert_eq!(
            report.skipped_rows,
            vec![SkippedRow {
                line: 8,
                reason: "empty `zeroshot_top1`".into()
            }]
        );
        assert!((report.power_law.alpha.value - TRUE_POWER.alpha).abs() < 1e-9);
        assert_eq!(report.metric.as_deref(), Some("zeroshot_top1"));

        let json_path = dir.path().join("fit.json");
        report.write_json(&json_path).expect("write json");
        let back: FitReport = serde_json::from_str(&std::fs::read_to_string(&json_path).expect("read")).expect("parse");
        // serde_json's default float parsing may differ in the last bit, so
        // compare what a reader of fit.json uses rather than bit-equality.
        assert_eq!(back.points, report.points);
        assert_eq!(back.skipped_rows, report.skipped_rows);
        assert_eq!(back.band.len(), report.band.len());
        assert!((back.power_law.alpha.value - report.power_law.alpha.value).abs() < 1e-12);
        assert_eq!(back.holdout.map(|h| h.predictions.len()), Some(1));
    }

    #[test]
    fn results_csv_errors_name_the_column_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_csv(dir.path(), "model,compute,top1\ns,1e12,0.3\n");
        let error = fit_results_csv(&path, "zeroshot_top1", "compute", "model", 0).expect_err("missing");
        assert!(matches!(&error, SweepFitError::MissingColumn { column, .. } if column == "zeroshot_top1"));
        assert!(error.to_string().contains("no column `zeroshot_top1`"), "{error}");
        assert!(error.to_string().contains("model, compute, top1"), "{error}");

        let path = write_csv(dir.path(), "model,compute,top1\ns,1e12,0.3\nm,1e13,abc\n");
        let error = fit_results_csv(&path, "top1", "compute", "model", 0).expect_err("bad value");
        assert!(
            matches!(&error, SweepFitError::BadValue { line: 3, column, .. } if column == "top1"),
            "{error}"
        );
        assert!(error.to_string().contains("line 3, column `top1`"), "{error}");

        let path = write_csv(dir.path(), "model,compute,top1\ns,1e12,0.3\nm,-5,0.4\n");
        let error = fit_results_csv(&path, "top1", "compute", "model", 0).expect_err("negative compute");
        assert!(error.to_string().contains("line 3, column `compute`"), "{error}");

        let path = write_csv(dir.path(), "model,compute,top1\ns,1e12,45.2\n");
        let error = fit_results_csv(&path, "top1", "compute", "model", 0).expect_err("percent metric");
        assert!(error.to_string().contains("[0, 1)"), "{error}");

        let missing = dir.path().join("nope.csv");
        let error = fit_results_csv(&missing, "top1", "compute", "model", 0).expect_err("no file");
        assert!(matches!(error, SweepFitError::Io { .. }) && error.to_string().contains("nope.csv"));
    }
}
