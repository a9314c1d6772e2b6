"""Prediction intervals: calibration on synthetic isoFLOP sweeps from a known law, noise
sources, optimum intervals, Approach 2."""
import dataclasses
import functools
import warnings

import numpy as np
import pandas as pd
import pytest

from analysis import chinchilla, laws, predict

TRUE = {"E": 1.82, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37}  # Epoch's fit
SIGMA = 0.01  # log-normal run-to-run noise of the synthetic runs
BUDGETS = 1e17 * 4.0 ** np.arange(5)  # 5 budgets, 4x apart
FIT_BUDGETS = 3  # fit on the 3 smallest; predict the 2 above (4x and 16x beyond the cutoff)
N_SWEEPS = 40


def true_loss(N, D):
    return TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]


def design():
    """IsoFLOP design like the demo's: per budget 5 sizes at N_opt(C) x {1/4 .. 4}."""
    rows = []
    for c in BUDGETS:
        n_opt, _ = chinchilla.compute_optimal(TRUE, c)
        for f in (0.25, 0.5, 1.0, 2.0, 4.0):
            n = float(n_opt) * f
            rows.append({"n_params": n, "tokens": c / (6 * n), "budget": c})
    t = pd.DataFrame(rows)
    t["flops_6nd"] = 6 * t.n_params * t.tokens
    t["loss"] = true_loss(t.n_params, t.tokens)
    return t


def starts(k=96):
    grid = laws.chinchilla().start_grid()
    return grid[np.unique(np.linspace(0, len(grid) - 1, k).round().astype(int))]


@functools.lru_cache(maxsize=None)
def calibration_run():
    """N_SWEEPS noisy copies of the design: fit the small budgets, predict the large ones.
    Returns (table, samples per sweep, noisy losses [R, N])."""
    t = design()
    rng = np.random.default_rng(0)
    loss = t.loss.to_numpy() * np.exp(rng.normal(0, SIGMA, (N_SWEEPS, len(t))))
    mask = t.budget.to_numpy() <= BUDGETS[FIT_BUDGETS - 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = predict.fit_masks(laws.chinchilla(), t, np.tile(mask, (N_SWEEPS, 1)),
                                    loss_KN=loss, starts=starts(), n_bootstrap=150, seed=1)
    return t, samples, loss, mask


def coverage(scale):
    """Per-sweep fraction of held-out runs inside the 90% PI, half-widths scaled (in log)."""
    t, samples, loss, mask = calibration_run()
    held = ~mask
    frac = []
    for r, s in enumerate(samples):
        p = predict.loss_interval(s, {"N": t.n_params[held], "D": t.tokens[held]}, level=0.9, seed=r)
        mid = np.log(p.value)
        lo = mid + scale * (np.log(p.lo) - mid)
        hi = mid + scale * (np.log(p.hi) - mid)
        y = np.log(loss[r][held])
        frac.append(np.mean((y >= lo) & (y <= hi)))
    return np.array(frac)


def tolerance(frac):
    """3 standard errors of the mean coverage. Predictions of one sweep share its fit, so they
    are not independent: the SE is the larger of the binomial one over all predictions,
    sqrt(p(1-p)/n) at p = 0.9, and the spread of per-sweep coverage across sweeps / sqrt(R)."""
    n = frac.size * 10
    se = max(np.sqrt(0.9 * 0.1 / n), frac.std(ddof=1) / np.sqrt(frac.size))
    return 3 * se


def test_90pct_intervals_cover_held_out_points_at_90pct():
    frac = coverage(1.0)
    assert abs(frac.mean() - 0.9) <= tolerance(frac), (frac.mean(), tolerance(frac))


def test_intervals_half_as_wide_fail_the_same_check():
    frac = coverage(0.5)
    assert frac.mean() < 0.9 - tolerance(frac), (frac.mean(), tolerance(frac))


def test_noise_estimated_from_fit_residuals_when_no_replicates():
    _, samples, _, _ = calibration_run()
    s = samples[0]
    assert s.noise.source == "fit residuals"
    assert s.noise.dof == 15 - 5
    # sigma^2 * dof / SIGMA^2 ~ chi2(10): 0.5*SIGMA..1.6*SIGMA holds with prob > 0.98
    assert 0.4 * SIGMA < s.noise.sigma < 1.7 * SIGMA


def test_noise_from_replicate_seeds_is_pooled_within_group_sd():
    t = pd.DataFrame({"n_params": [1, 1, 1, 2, 2], "tokens": [5, 5, 5, 7, 7],
                      "seed": [0, 1, 2, 0, 1], "loss": np.exp([0.0, 0.1, 0.2, 1.0, 1.3])})
    noise = predict.estimate_noise(t)
    # group 1: deviations -0.1, 0, 0.1 (ss 0.02, dof 2); group 2: +-0.15 (ss 0.045, dof 1)
    assert noise.source == "replicate seeds" and noise.dof == 3
    assert noise.sigma == pytest.approx(np.sqrt(0.065 / 3))


def test_chinchilla_optimum_interval_contains_truth_and_matches_closed_form():
    t, samples, _, _ = calibration_run()
    s = samples[0]
    c = BUDGETS[-1]
    opt = predict.chinchilla_optimum(s, c, level=0.9)
    n0, d0 = chinchilla.compute_optimal(s.law.to_reported(s.theta), c)
    assert opt.N.value == pytest.approx(float(n0)) and opt.D.value == pytest.approx(float(d0))
    assert opt.N.lo < opt.N.value < opt.N.hi and opt.D.lo < opt.D.value < opt.D.hi
    assert opt.D.lo * opt.N.hi * 6 == pytest.approx(c)  # D* = C/(6 N*) maps the interval ends
    assert opt.L.lo < true_loss(*chinchilla.compute_optimal(TRUE, c)) < opt.L.hi
    assert opt.N.kind == predict.KIND_CI and opt.L.kind == predict.KIND_PI


def test_flat_isoflop_curves_flag_uncertain_n_opt():
    _, samples, _, _ = calibration_run()
    s = samples[0]
    # 16x beyond 3 budgets of 5 points: the N* interval is wide; flagged iff > FLAT_FACTOR
    opt = predict.chinchilla_optimum(s, BUDGETS[-1] * 1e4, level=0.99)
    assert ("N* uncertain" in opt.note) == (opt.N.hi / opt.N.lo > predict.FLAT_FACTOR)
    tight = predict.chinchilla_optimum(s, BUDGETS[1], level=0.2)
    assert ("N* uncertain" in tight.note) == (tight.N.hi / tight.N.lo > predict.FLAT_FACTOR)


def test_approach2_recovers_known_exponent_and_covers_the_optimum():
    t = design()
    rng = np.random.default_rng(3)
    t["loss"] = t.loss * np.exp(rng.normal(0, 0.002, len(t)))
    m = predict.approach2_fit(t, budget=t.budget, n_bootstrap=300)
    a_true = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    # the design is centred on the true N_opt: vertices land near it, slope near a
    assert m.coef[0] == pytest.approx(a_true, abs=0.05)
    opt = predict.approach2_optimum(m, BUDGETS[2], level=0.95)
    n_true, _ = chinchilla.compute_optimal(TRUE, BUDGETS[2])
    assert opt.N.lo < n_true < opt.N.hi
    assert opt.method == "approach2" and opt.n_bootstrap + opt.n_failed == 300


def test_approach2_leaves_out_budgets_with_too_few_sizes_with_a_warning():
    t = design()
    t = t.drop(t.index[(t.budget == BUDGETS[0]) & (t.n_params > t.n_params.median() * 0)][:2])
    with pytest.warns(UserWarning, match=r"budget C=1e\+17 left out: 3 distinct sizes"):
        m = predict.approach2_fit(t, budget=t.budget, n_bootstrap=20)
    assert len(m.C) == 4 and len(m.dropped) == 1


def test_approach2_refuses_fewer_than_three_budgets():
    t = design()
    t = t[t.budget <= BUDGETS[1]]
    with pytest.raises(ValueError, match="at least 3 budgets"):
        predict.approach2_fit(t, budget=t.budget, n_bootstrap=20)


def test_kaplan_loss_interval_brackets_the_power_law():
    x = np.geomspace(1e6, 1e9, 12)
    rng = np.random.default_rng(0)
    t = pd.DataFrame({"n_params": x, "tokens": x, "loss": (8.8e13 / x) ** 0.076
                      * np.exp(rng.normal(0, 0.005, 12))})
    s = predict.fit_masks(laws.kaplan("N"), t, np.ones((1, 12), bool), n_bootstrap=100)[0]
    p = predict.loss_interval(s, {"N": [1e10]}, level=0.9)
    assert p.lo[0] < (8.8e13 / 1e10) ** 0.076 < p.hi[0]
    assert p.noise.source == "fit residuals" and p.n_bootstrap == 100


def test_with_replicates_and_residuals_the_larger_noise_is_used_and_both_recorded():
    t = pd.DataFrame({"n_params": [1, 1, 1, 2, 2], "tokens": [5, 5, 5, 7, 7],
                      "seed": [0, 1, 2, 0, 1], "loss": np.exp([0.0, 0.1, 0.2, 1.0, 1.3])})
    seeds = np.sqrt(0.065 / 3)  # as in the test above
    wide = predict.estimate_noise(t, log_resid=np.full(5, 0.5), n_fit_params=1)  # sqrt(5 * 0.25 / 4)
    assert wide.source == "fit residuals" and wide.sigma == pytest.approx(np.sqrt(1.25 / 4)) and wide.dof == 4
    assert wide.replicate_sigma == pytest.approx(seeds) and wide.replicate_dof == 3
    narrow = predict.estimate_noise(t, log_resid=np.full(5, 0.01), n_fit_params=1)
    assert narrow.source == "replicate seeds" and narrow.sigma == pytest.approx(seeds) and narrow.dof == 3
    assert predict.estimate_noise(t.assign(seed=0), log_resid=np.full(5, 0.01), n_fit_params=1).replicate_sigma is None
    # what reports print: the replicate sigma beside the residuals' when both exist
    assert predict.describe_noise(dataclasses.asdict(wide)) == \
        f"σ(log L) = {wide.sigma:.3g} from fit residuals (replicate seeds: {seeds:.3g}, 3 dof)"
    assert predict.describe_noise(dataclasses.asdict(narrow)) == f"σ(log L) = {seeds:.3g} from replicate seeds"
