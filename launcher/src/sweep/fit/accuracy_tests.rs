//! Do the fits reach their own least-squares optimum? Synthetic tables from known laws over
//! a grid of point counts, compute ranges, noise levels and seeds, each fit checked against
//! an independent reference optimum of the same objective.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

/// Standard normal draws (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// `count` points evenly spaced in log10 C over `decades` from 1e10, errors from `law` with
/// multiplicative log-normal noise of `noise` (σ of ln E).
fn table(count: usize, decades: f64, noise: f64, seed: u64, law: impl Fn(f64) -> f64) -> Vec<ScalingPoint> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let compute = 10f64.powf(10.0 + decades * i as f64 / (count - 1) as f64);
            ScalingPoint {
                compute,
                error: law(compute) * (noise * normal(&mut rng)).exp(),
                group: "g".into(),
            }
        })
        .collect()
}

/// The saturating fit's objective: Σ (ln E − ln(a·C^(−b) + c))².
fn cost(points: &[ScalingPoint], law: &SaturatingLaw) -> f64 {
    points
        .iter()
        .map(|p| (p.error.ln() - law.predict(p.compute).ln()).powi(2))
        .sum()
}

/// For a fixed c, the best (a, b) of the objective by Gauss–Newton on (ln a, b), started
/// from the line through (ln C, ln(E − c)); the law and its cost.
fn best_given_c(points: &[ScalingPoint], c: f64) -> (SaturatingLaw, f64) {
    let xs: Vec<f64> = points.iter().map(|p| p.compute.ln()).collect();
    let x0 = xs.iter().sum::<f64>() / xs.len() as f64;
    let ys: Vec<f64> = points.iter().map(|p| (p.error - c).ln()).collect();
    let y0 = ys.iter().sum::<f64>() / ys.len() as f64;
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - x0) * (y - y0)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - x0).powi(2)).sum();
    // Parameters around the mean log compute: ln a' = ln a − b·x0.
    let (mut ln_a, mut b) = (y0, -sxy / sxx);
    let law_of = |ln_a: f64, b: f64| SaturatingLaw {
        a: (ln_a + b * x0).exp(),
        b,
        c,
    };
    let mut best = cost(points, &law_of(ln_a, b));
    for _ in 0..200 {
        let (mut g11, mut g12, mut g22, mut r1, mut r2) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (p, x) in points.iter().zip(&xs) {
            let power = (ln_a - b * (x - x0)).exp();
            let model = power + c;
            let r = p.error.ln() - model.ln();
            let (d1, d2) = (power / model, -power * (x - x0) / model);
            g11 += d1 * d1;
            g12 += d1 * d2;
            g22 += d2 * d2;
            r1 += d1 * r;
            r2 += d2 * r;
        }
        let det = g11 * g22 - g12 * g12;
        if det.abs() < 1e-300 {
            break;
        }
        let (step_a, step_b) = ((g22 * r1 - g12 * r2) / det, (g11 * r2 - g12 * r1) / det);
        // Halve the step until it does not raise the cost.
        let mut scale = 1.0;
        let mut moved = false;
        while scale > 1e-6 {
            let candidate = cost(points, &law_of(ln_a + scale * step_a, b + scale * step_b));
            if candidate.is_finite() && candidate <= best {
                (ln_a, b, best) = (ln_a + scale * step_a, b + scale * step_b, candidate);
                moved = true;
                break;
            }
            scale /= 2.0;
        }
        if !moved || (step_a.abs() + step_b.abs()) * scale < 1e-12 {
            break;
        }
    }
    (law_of(ln_a, b), best)
}

/// The reference optimum: the profile over c (1,000 values in [0, min E)), refined by
/// golden-section search around the best of them.
fn reference_optimum(points: &[ScalingPoint]) -> (SaturatingLaw, f64) {
    let min_error = points.iter().map(|p| p.error).fold(f64::INFINITY, f64::min);
    let grid: Vec<f64> = (0..1000).map(|k| min_error * k as f64 / 1000.0).collect();
    let profile = |c: f64| best_given_c(points, c).1;
    let best = (0..grid.len())
        .min_by(|&i, &j| profile(grid[i]).total_cmp(&profile(grid[j])))
        .unwrap();
    let (mut lo, mut hi) = (
        grid[best.saturating_sub(1)],
        grid.get(best + 1).copied().unwrap_or(min_error * 0.9999),
    );
    let golden = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..80 {
        let (m1, m2) = (hi - golden * (hi - lo), lo + golden * (hi - lo));
        if profile(m1) <= profile(m2) {
            hi = m2;
        } else {
            lo = m1;
        }
    }
    best_given_c(points, (lo + hi) / 2.0)
}

/// Over point counts, compute ranges, noise levels, floors and seeds, the saturating fit's
/// cost equals the reference optimum's (within 1e-6 relative) — never a worse local stop.
#[test]
fn saturating_fit_reaches_the_least_squares_optimum() {
    let mut worst = (0.0f64, String::new());
    let mut cases = 0;
    for (count, decades) in [(8, 1.5), (18, 2.5), (30, 4.0)] {
        for noise in [0.0, 0.005, 0.02, 0.05] {
            // Floors from negligible to dominant (the last: a nearly flat table).
            for (a, b, c) in [
                (600.0, 0.3, 0.2),
                (40.0, 0.12, 1.5),
                (3e4, 0.5, 0.05),
                (2.0, 0.1, 0.25),
                (30.0, 0.15, 0.25),
                (1e3, 0.35, 0.3),
                (5.0, 0.3, 0.25),
            ] {
                let truth = SaturatingLaw { a, b, c };
                for seed in 0..3 {
                    let points = table(count, decades, noise, seed, |x| truth.predict(x));
                    let start = fit_power_law(&points).expect("power law").0;
                    let (law, rmse) = fit_saturating_law(&points, &start).expect("saturating fit");
                    let ours = cost(&points, &law);
                    assert!((rmse.powi(2) * count as f64 / ours - 1.0).abs() < 1e-6 || ours < 1e-20);
                    let (reference, best) = reference_optimum(&points);
                    let excess = (ours - best) / best.max(1e-30);
                    let case = format!(
                        "{count} points over {decades} decades, noise {noise}, truth {truth:?}, seed {seed}: \
                         ours {law:?} cost {ours:.6e}, reference {reference:?} cost {best:.6e}"
                    );
                    if excess > worst.0 {
                        worst = (excess, case.clone());
                    }
                    assert!(ours <= best * (1.0 + 1e-6) + 1e-24, "{case}");
                    cases += 1;
                }
            }
        }
    }
    eprintln!(
        "{cases} tables; worst excess over the reference {:.2e} ({})",
        worst.0, worst.1
    );
}

/// With little noise and a wide compute range the saturating fit recovers the law it was
/// made from.
#[test]
fn saturating_fit_recovers_known_parameters_from_clean_wide_tables() {
    let truth = SaturatingLaw {
        a: 600.0,
        b: 0.3,
        c: 0.2,
    };
    for seed in 0..5 {
        let points = table(30, 4.0, 0.001, seed, |x| truth.predict(x));
        let start = fit_power_law(&points).unwrap().0;
        let (law, _) = fit_saturating_law(&points, &start).unwrap();
        assert!((law.b - truth.b).abs() < 0.01, "{law:?}");
        assert!((law.c - truth.c).abs() < 0.005, "{law:?}");
        assert!((law.a / truth.a).ln().abs() < 0.2, "{law:?}");
    }
}

/// The power-law fit: its exponent and coefficient agree with the law it was made from
/// within four standard errors (ordinary least squares' with the noise's known σ), over
/// point counts, ranges and noise levels, and exactly without noise.
#[test]
fn power_law_fit_recovers_known_parameters_within_its_standard_error() {
    for (count, decades) in [(5, 1.0), (12, 2.5), (40, 5.0)] {
        for noise in [0.0, 0.01, 0.1] {
            for seed in 0..5 {
                let truth = PowerLaw {
                    alpha: -0.2,
                    beta: 80.0,
                };
                let points = table(count, decades, noise, seed, |x| truth.predict(x));
                let (law, r_squared) = fit_power_law(&points).unwrap();
                let xs: Vec<f64> = points.iter().map(|p| p.compute.log10()).collect();
                let mean = xs.iter().sum::<f64>() / count as f64;
                let sxx: f64 = xs.iter().map(|x| (x - mean).powi(2)).sum();
                // The noise's own σ in log10 units (known here), so the bound is a z-test.
                let sigma = noise / std::f64::consts::LN_10;
                let se_alpha = sigma / sxx.sqrt();
                let se_intercept = sigma * (1.0 / count as f64 + mean * mean / sxx).sqrt();
                let case = format!("{count} points, {decades} decades, noise {noise}, seed {seed}: {law:?}");
                assert!((law.alpha - truth.alpha).abs() <= 4.0 * se_alpha + 1e-12, "{case}");
                assert!(
                    (law.beta / truth.beta).log10().abs() <= 4.0 * se_intercept + 1e-12,
                    "{case}"
                );
                if noise == 0.0 {
                    assert!(
                        (law.alpha - truth.alpha).abs() < 1e-12 && r_squared > 1.0 - 1e-12,
                        "{case}"
                    );
                }
            }
        }
    }
}

/// The same through `sweep fit`'s path (`fit_scaling`: the frontier, then both fits), on
/// sweep-like tables: 18 runs of 3 model sizes over 2.5 decades, 0.5 % noise, where each
/// model's error also carries its own size term, so the frontier mixes models.
#[test]
fn sweep_fit_reaches_the_optimum_on_its_frontier() {
    let mut worst = (0.0f64, String::new());
    for seed in 0..40 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let truth = SaturatingLaw {
            a: 10f64.powf(rng.gen_range(0.5..3.5)),
            b: rng.gen_range(0.08..0.45),
            c: rng.gen_range(0.05..1.0),
        };
        let points: Vec<ScalingPoint> = (0..18)
            .map(|i| {
                let compute = 10f64.powf(10.0 + 2.5 * i as f64 / 17.0);
                let model = i % 3;
                // A model too small for its compute sits above the law.
                let penalty = 1.0 + 0.05 * model as f64 * rng.gen_range(0.0..1.0);
                ScalingPoint {
                    compute,
                    error: truth.predict(compute) * penalty * (0.005 * normal(&mut rng)).exp(),
                    group: format!("m{model}"),
                }
            })
            .collect();
        let options = FitOptions {
            bootstrap_draws: 0,
            ..FitOptions::default()
        };
        let report = fit_scaling(points, &options).expect("fit");
        let Some(fit) = report.saturating else { continue };
        let law = SaturatingLaw {
            a: fit.a.value,
            b: fit.b.value,
            c: fit.c.value,
        };
        let ours = cost(&report.frontier, &law);
        let (reference, best) = reference_optimum(&report.frontier);
        let excess = (ours - best) / best.max(1e-30);
        let case = format!(
            "seed {seed}, truth {truth:?}: ours {law:?} cost {ours:.6e}, reference {reference:?} cost {best:.6e}"
        );
        if excess > worst.0 {
            worst = (excess, case.clone());
        }
        assert!(ours <= best * (1.0 + 1e-6) + 1e-24, "{case}");
    }
    eprintln!("worst excess over the reference {:.2e} ({})", worst.0, worst.1);
}
