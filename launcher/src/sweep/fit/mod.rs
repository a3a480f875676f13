//! Scaling-law fits over sweep results (docs/architecture.md §8).
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
mod error;
mod law;
mod report;
mod results_csv;
mod scaling;

pub use error::SweepFitError;
pub use law::{compute_frontier, fit_power_law, fit_saturating_law};
pub use report::{
    BandPoint, Estimate, FitOptions, FitReport, HoldoutCheck, HoldoutPrediction, PowerLaw, PowerLawReport,
    SaturatingLaw, SaturatingReport, ScalingPoint, SkippedRow,
};
pub use results_csv::{fit_results_csv, fit_results_csv_with, read_results_csv};
pub use scaling::fit_scaling;

#[cfg(test)]
mod accuracy_tests;
#[cfg(test)]
mod tests;
