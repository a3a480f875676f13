use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

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
        serde_json::from_str(include_str!("../testdata/scaling_fit_reference.json")).expect("fixture");
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
