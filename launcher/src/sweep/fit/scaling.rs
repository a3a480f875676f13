//! The whole fit of a sweep: frontier and both laws on all points, bootstrap
//! intervals and band, and the held-out check, assembled into a [`FitReport`].
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::error::SweepFitError;
use super::law::{compute_frontier, fit_power_law, fit_saturating_law};
use super::report::{
    BandPoint, Estimate, FitOptions, FitReport, HoldoutCheck, HoldoutPrediction, PowerLaw, PowerLawReport,
    SaturatingLaw, SaturatingReport, ScalingPoint,
};

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
