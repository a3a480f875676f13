//! The fitting math on one set of points: the compute frontier, the power law by
//! least squares in log–log space, the saturating law by Levenberg–Marquardt.
use std::collections::BTreeMap;

use super::error::SweepFitError;
use super::report::{PowerLaw, SaturatingLaw, ScalingPoint};

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
