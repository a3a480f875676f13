"""Reference fits for launcher::sweep::fit, computed independently with numpy/scipy.

Run from the repository root:
    .venv-ref/bin/python scripts/reference/make_scaling_fit_fixture.py
It writes launcher/src/sweep/testdata/scaling_fit_reference.json, read by the
test `matches_numpy_and_scipy_reference` in launcher/src/sweep/fit.rs.

The data look like a small sweep (3 model sizes x 5 sample budgets) with
E = 0.25 + capacity term + data term and seeded 2% log-normal noise. The script
computes the frontier (lowest error per half decade of compute, bins anchored at
whole decades), E = beta*C^alpha by a straight-line fit of log10 E on log10 C
(numpy.polyfit) and E = a*C^-b + c by scipy.optimize.least_squares on
ln E - ln(a*C^-b + c) with 0 <= c <= min E (several starts, best cost kept).
"""
import json
import math
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

OUT = Path("launcher/src/sweep/testdata/scaling_fit_reference.json")


def make_points():
    rng = np.random.default_rng(20261125)
    points = []
    for model, macs in [("S", 1e9), ("M", 4e9), ("L", 1.6e10)]:
        for samples in [1e4, 3e4, 1e5, 3e5, 1e6]:
            compute = macs * samples
            error = 0.25 + 0.2 * (macs / 1e9) ** -0.5 + 0.45 * (samples / 1e4) ** -0.5
            error *= math.exp(0.02 * rng.standard_normal())
            points.append({"compute": compute, "error": min(error, 0.99), "group": model})
    return points


def frontier(points, bins_per_decade=2.0):
    best = {}
    for p in points:
        k = math.floor(math.log10(p["compute"]) * bins_per_decade + 1e-9)
        if k not in best or p["error"] < best[k]["error"] or (
            p["error"] == best[k]["error"] and p["compute"] < best[k]["compute"]
        ):
            best[k] = p
    return sorted(best.values(), key=lambda p: p["compute"])


def saturating(compute, error):
    log_ref = np.mean(np.log(compute))
    ln_x = np.log(compute) - log_ref
    min_error = error.min()

    def residual(theta):
        ln_a, b, c = theta
        return np.log(error) - np.log(np.exp(ln_a - b * ln_x) + c)

    best = None
    for b0 in [0.1, 0.3, 0.6]:
        for c_fraction in [0.0, 0.3, 0.6, 0.9]:
            c0 = c_fraction * min_error
            ln_a0 = np.mean(np.log(error - c0) + b0 * ln_x)
            fit = least_squares(
                residual,
                [ln_a0, b0, c0],
                bounds=([-np.inf, -np.inf, 0.0], [np.inf, np.inf, min_error * (1 - 1e-9)]),
                xtol=1e-15,
                ftol=1e-15,
                gtol=1e-15,
                max_nfev=20000,
            )
            if best is None or fit.cost < best.cost:
                best = fit
    ln_a, b, c = best.x
    return {"a": math.exp(ln_a + b * log_ref), "b": b, "c": c, "sum_sq_ln": 2 * best.cost}


def main():
    points = make_points()
    front = frontier(points)
    compute = np.array([p["compute"] for p in front])
    error = np.array([p["error"] for p in front])
    alpha, intercept = np.polyfit(np.log10(compute), np.log10(error), 1)
    reference = {
        "points": points,
        "bins_per_decade": 2.0,
        "frontier_compute": [p["compute"] for p in front],
        "power_law": {"alpha": alpha, "beta": 10**intercept},
        "saturating": saturating(compute, error),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(reference, indent=1) + "\n")
    print(OUT, reference["power_law"], reference["saturating"])


if __name__ == "__main__":
    main()
