"""The fitting engine: Epoch's Chinchilla refit, SciPy cross-check, refusals, bootstrap coverage."""
import csv
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from analysis import fit, laws

# Besiroglu et al. (2024), plain Huber fit of the 240 points (../shared/data/README.md).
EPOCH_HUBER = dict(E=1.8172, A=477.8, B=2143.4, alpha=0.3473, beta=0.3672)
# Their Table 1 bootstrap 95% intervals (4000 resamples).
EPOCH_CI = dict(E=(1.769, 1.871), A=(285, 744), B=(1042, 5810), alpha=(0.317, 0.373),
                beta=(0.331, 0.415))


def epoch_points(shared_data):
    """The 245 digitised points minus the 5 highest-loss ones: (N, D = C/6N, loss)."""
    with open(shared_data / "epoch_chinchilla_svg_extracted_data.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    N = np.array([float(r["Model Size"]) for r in rows])
    C = np.array([float(r["Training FLOP"]) for r in rows])
    L = np.array([float(r["loss"]) for r in rows])
    keep = np.argsort(L)[:-5]
    return dict(N=N[keep], D=C[keep] / (6 * N[keep])), L[keep]


def numpy_objective(theta, N, D, L, delta=1e-3):
    """Independent objective: numpy/scipy only (scipy.special.huber = r²/2 or δ(|r| − δ/2))."""
    a, b, e, alpha, beta = theta
    pred = np.exp(a) / N**alpha + np.exp(b) / D**beta + np.exp(e)
    return float(np.sum(scipy.special.huber(delta, np.log(pred) - np.log(L))))


@functools.lru_cache(maxsize=1)
def _epoch_fit(shared_data):
    inputs, L = epoch_points(shared_data)
    return inputs, L, fit.fit(laws.chinchilla(), inputs, L)  # the full 4500-start grid


@pytest.fixture
def epoch_fit(shared_data):
    return _epoch_fit(shared_data)  # computed once per session, shared by three tests


def test_epoch_refit_matches_published_huber_fit(epoch_fit):
    inputs, L, r = epoch_fit
    assert r.n_points == 240 and r.n_starts == 4500
    p = r.params
    # Tolerances from the task: the README's values are printed to 4-5 significant digits
    # (0.2% is well above that rounding); A and B are weakly identified (2%).
    for k in ("E", "alpha", "beta"):
        assert p[k] == pytest.approx(EPOCH_HUBER[k], rel=2e-3), k
    for k in ("A", "B"):
        assert p[k] == pytest.approx(EPOCH_HUBER[k], rel=2e-2), k
    # The objective reported is the objective: recompute it without JAX.
    assert r.objective == pytest.approx(numpy_objective(r.theta, inputs["N"], inputs["D"], L),
                                        rel=1e-10)
    assert r.n_at_best >= 10  # the optimum is reached from many grid starts, not by luck


def test_epoch_objective_not_worse_than_scipy(epoch_fit):
    inputs, L, r = epoch_fit
    # SciPy L-BFGS-B from 8 grid starts (all 4500 take minutes; see benchmarks/fit.py), plus
    # the published solution as a start. Our 4500-start optimum must be at least as low, up to
    # 1e-12 relative (float64 rounding of a sum of 240 terms of size ~1e-5).
    grid = laws.chinchilla().start_grid()
    starts = np.vstack([grid[np.random.default_rng(0).choice(len(grid), 8, replace=False)],
                        [[np.log(477.8), np.log(2143.4), np.log(1.8172), 0.3473, 0.3672]]])
    s = fit.fit_scipy(laws.chinchilla(), inputs, L, starts=starts)
    assert r.objective <= s.objective * (1 + 1e-12)
    assert s.params["alpha"] == pytest.approx(r.params["alpha"], rel=2e-3)


def test_epoch_bootstrap_overlaps_published_intervals(epoch_fit):
    inputs, L, r = epoch_fit
    # 200 resamples: the check is interval *overlap* with Epoch's 4000-resample 95% intervals;
    # the Monte Carlo error of a 2.5% percentile from 200 draws (a few % of the width) is far
    # smaller than the margins involved, and the test stays at a few seconds.
    b = fit.bootstrap(r, inputs, L, n_resamples=200, seed=0)
    for k, (lo, hi) in EPOCH_CI.items():
        our_lo, our_hi = b.ci[k]
        assert our_lo < hi and lo < our_hi, (k, b.ci[k], (lo, hi))
        assert our_lo <= b.params[k] <= our_hi, k


def synthetic_chinchilla(theta, n_side, sigma, rng):
    """An N × D grid (log-uniform) of losses from the law, with log-normal noise σ."""
    N, D = np.meshgrid(np.geomspace(1e7, 1e10, n_side), np.geomspace(1e9, 1e12, n_side))
    N, D = N.ravel(), D.ravel()
    a, b, e, alpha, beta = theta
    L = np.exp(e) + np.exp(a) / N**alpha + np.exp(b) / D**beta
    return dict(N=N, D=D), L * np.exp(sigma * rng.standard_normal(L.shape))


def test_jax_and_scipy_agree_on_synthetic_data():
    theta = np.array([np.log(400.0), np.log(1000.0), np.log(1.7), 0.33, 0.3])
    inputs, L = synthetic_chinchilla(theta, 7, 0.01, np.random.default_rng(1))
    starts = laws.chinchilla().start_grid()[::150]  # 30 starts for JAX
    j = fit.fit(laws.chinchilla(), inputs, L, starts=starts)
    # SciPy (tight tolerances: ~1 s per start here) from 2 of them that reach the optimum.
    s = fit.fit_scipy(laws.chinchilla(), inputs, L, starts=starts[[0, 12]])
    # Two different optimisers on the same objective: same minimum to ~1e-9 relative.
    assert j.objective == pytest.approx(s.objective, rel=1e-8)
    np.testing.assert_allclose(j.theta[3:], s.theta[3:], rtol=1e-3)


def test_predict_and_to_dict():
    theta = np.array([np.log(400.0), np.log(1000.0), np.log(1.7), 0.33, 0.3])
    inputs, L = synthetic_chinchilla(theta, 7, 0.0, np.random.default_rng(0))
    r = fit.fit(laws.chinchilla(), inputs, L, starts=laws.chinchilla().start_grid()[::150])
    # Noise-free data: the fit reproduces the data (and so the law) to ~1e-6 in log space.
    np.testing.assert_allclose(r.predict(**inputs), L, rtol=1e-5)
    d = r.to_dict()
    assert d["law"] == "chinchilla" and set(d["params"]) == {"E", "A", "B", "alpha", "beta"}
    with pytest.raises(ValueError, match="missing.*'D'"):
        r.predict(N=1e9)


# ----- refusals -------------------------------------------------------------------------------


def test_refuses_too_few_points():
    inputs = dict(N=np.geomspace(1e7, 1e9, 6), D=np.geomspace(1e9, 1e11, 6)[::-1])
    with pytest.raises(ValueError, match=r"at least 7 points \(parameters \+ 2\).*got 6"):
        fit.fit(laws.chinchilla(), inputs, np.linspace(3, 2.5, 6))


def test_refuses_no_variation_and_collinear_inputs():
    n = 20
    inputs = dict(N=np.full(n, 1e8), D=np.geomspace(1e9, 1e11, n))
    with pytest.raises(ValueError, match="input 'N' has no variation"):
        fit.fit(laws.chinchilla(), inputs, np.linspace(3, 2.5, n))
    N = np.geomspace(1e7, 1e9, n)  # one isoFLOP budget: D = C / 6N, collinear with N
    with pytest.raises(ValueError, match="collinear in log space"):
        fit.fit(laws.chinchilla(), dict(N=N, D=1e19 / (6 * N)), np.linspace(3, 2.5, n))


def test_refuses_no_curvature_for_irreducible_term():
    N = np.geomspace(1e6, 1e9, 30)
    L = (8.8e13 / N) ** 0.076 * np.exp(0.002 * np.random.default_rng(0).standard_normal(30))
    with pytest.raises(ValueError, match="no curvature.*kaplan-n\\+e"):
        fit.fit(laws.kaplan("N", irreducible=True), dict(N=N), L)
    r = fit.fit(laws.kaplan("N"), dict(N=N), L)  # the pure power law is fine
    assert r.params["alpha_N"] == pytest.approx(0.076, abs=0.005)


def test_refuses_bad_values_and_missing_columns():
    N = np.geomspace(1e6, 1e9, 12)
    with pytest.raises(ValueError, match="needs input column 'N'"):
        fit.fit(laws.kaplan("N"), dict(n=N), np.ones(12))
    with pytest.raises(ValueError, match="loss must be finite and > 0.*index 3"):
        fit.fit(laws.kaplan("N"), dict(N=N), np.r_[np.ones(3), -1.0, np.ones(8)])
    with pytest.raises(ValueError, match="weights must be 12"):
        fit.fit(laws.kaplan("N"), dict(N=N), np.ones(12), weights=np.ones(3))


# ----- bootstrap coverage on synthetic data ----------------------------------------------------


def _coverage(law, theta, inputs, sigma, seed, R=40, B=100):
    """Fraction of R synthetic data sets whose 95% percentile-bootstrap interval (B resamples)
    contains the true value, per fit-space parameter. Percentile intervals are invariant under
    the monotone maps to reported params (A = e^a ...), so this is their coverage too."""
    rng = np.random.default_rng(seed)
    logx = np.stack([np.log(inputs[k]) for k in law.inputs], axis=1)
    with jax.enable_x64(True):
        L_true = np.exp(np.asarray(law.log_predict(jnp.asarray(theta), jnp.asarray(logx))))
    n = len(L_true)
    Y = L_true * np.exp(sigma * rng.standard_normal((R, n)))  # log-normal noise σ
    grid = law.start_grid()
    th_hat, _ = fit.fit_datasets(law, inputs, Y, starts=grid[rng.choice(len(grid), 16, replace=False)])
    counts = rng.multinomial(n, np.full(n, 1 / n), size=R * B).astype(float)
    th_b, _ = fit.fit_datasets(law, inputs, np.repeat(Y, B, axis=0), weights_RN=counts,
                               starts=np.repeat(th_hat, B, axis=0)[:, None, :])
    lo, hi = np.percentile(th_b.reshape(R, B, -1), [2.5, 97.5], axis=1)
    return (lo <= theta) & (theta <= hi)  # [R, P]


@pytest.mark.slow
def test_bootstrap_coverage_is_nominal_on_synthetic_laws():
    chin_inputs = dict(zip("ND", (g.ravel() for g in np.meshgrid(np.geomspace(1e7, 3e10, 7),
                                                                 np.geomspace(1e9, 1e12, 7)))))
    kap_inputs = dict(N=np.geomspace(1e6, 1e11, 30))
    cases = [  # (law, true fit-space params, inputs, log-noise σ)
        (laws.chinchilla(), [np.log(480.0), np.log(2100.0), np.log(1.8), 0.35, 0.37], chin_inputs, 0.005),
        (laws.chinchilla(), [np.log(406.4), np.log(410.7), np.log(1.69), 0.34, 0.28], chin_inputs, 0.02),
        (laws.kaplan("N", True), [0.34 * np.log(1e10), 0.34, np.log(1.7)], kap_inputs, 0.002),
        (laws.kaplan("N", True), [0.1 * np.log(1e12), 0.1, np.log(2.0)], kap_inputs, 0.01),
    ]
    hits = [_coverage(law, np.array(th), x, sig, seed=i) for i, (law, th, x, sig) in enumerate(cases)]
    per_case = [h.mean() for h in hits]  # over 40 data sets x P parameters
    overall = np.mean(np.concatenate([h.ravel() for h in hits]))
    # Per case 120-200 intervals: binomial s.d. of a 95% coverage 0.015-0.02 (intervals within a
    # data set are correlated, so allow more). Accept 0.87..0.995 per case (the percentile
    # bootstrap is known to under-cover slightly at small n) and 0.91..0.985 over all 640
    # intervals (s.d. 0.009). Intervals that ignore the resampling (width 0) or are far too
    # wide fail this.
    assert all(0.87 <= c <= 0.995 for c in per_case), per_case
    assert 0.91 <= overall <= 0.985, overall


def test_fit_runs_in_float64_without_changing_the_process_default():
    N = np.geomspace(1e6, 1e9, 30)
    L = (8.8e13 / N) ** 0.076
    r = fit.fit(laws.kaplan("N"), dict(N=N), L)
    # float32 would leave ~1e-7 relative error in the exponent; float64 recovers it to ~1e-10.
    assert r.params["alpha_N"] == pytest.approx(0.076, rel=1e-8)
    assert jnp.ones(3).dtype == jnp.float32  # training code keeps its float32 default


def test_large_delta_is_least_squares_and_weights_are_counts():
    rng = np.random.default_rng(4)
    N = np.geomspace(1e6, 1e9, 30)
    L = (8.8e13 / N) ** 0.076 * np.exp(0.01 * rng.standard_normal(30))
    law = laws.kaplan("N")
    # δ far above every residual: Huber = r²/2, and log L = a − α log N is linear, so the fit
    # is ordinary least squares, solved independently by np.polyfit.
    r = fit.fit(law, dict(N=N), L, delta=10.0)
    slope, intercept = np.polyfit(np.log(N), np.log(L), 1)
    np.testing.assert_allclose(r.theta, [intercept, -slope], rtol=1e-7)
    # Integer weights are the same as repeating points.
    w = rng.integers(0, 3, size=30)
    rw = fit.fit(law, dict(N=N), L, weights=w)
    rr = fit.fit(law, dict(N=np.repeat(N, w)), np.repeat(L, w))
    assert rw.objective == pytest.approx(rr.objective, rel=1e-9)
    np.testing.assert_allclose(rw.theta, rr.theta, rtol=1e-6)
