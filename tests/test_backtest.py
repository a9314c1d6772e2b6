"""Rollout backtests: cutoffs, rows against an independent computation, summary, figure."""
import warnings

import numpy as np
import pandas as pd
import pytest

from analysis import backtest, chinchilla, laws
from tests.test_predict import TRUE, design, starts, true_loss


@pytest.fixture(scope="module")
def sweep():
    t = design()
    rng = np.random.default_rng(5)
    t["loss"] = t.loss * np.exp(rng.normal(0, 0.01, len(t)))
    t["run_dir"] = [f"run{i}" for i in range(len(t))]
    return t


@pytest.fixture(scope="module")
def rows(sweep):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return backtest.backtest(sweep, "chinchilla", n_bootstrap=60, starts=starts(64))


def test_cutoffs_need_enough_budgets():
    b = np.repeat([1e17, 4e17, 1.6e18], 4)
    assert list(backtest.cutoffs(b, "chinchilla")) == [4e17]
    with pytest.raises(ValueError, match="needs at least 4 budgets .* has 3"):
        backtest.cutoffs(b, "isoflop")
    with pytest.raises(ValueError, match="unknown law 'kaplan'"):
        backtest.cutoffs(b, "kaplan")


def test_rows_cover_every_run_and_budget_above_each_cutoff(rows, sweep):
    # 5 budgets, cutoffs at the 2nd..4th: runs above = 15, 10, 5; optima above = 3, 2, 1
    assert sorted(rows.cutoff.unique()) == pytest.approx(list(np.unique(sweep.budget)[1:4]))
    runs = rows[rows.run != "optimum"]
    assert runs.groupby("cutoff").size().tolist() == [15, 10, 5]
    assert rows[rows.run == "optimum"].groupby("cutoff").size().tolist() == [3, 2, 1]
    assert (runs.target > runs.cutoff).all()
    assert np.allclose(rows.factor, rows.target / rows.cutoff)
    # measured = the table's loss for that run; the optimum's = its budget's best run
    by_run = sweep.set_index("run_dir").loss
    assert np.allclose(runs.measured, by_run[runs.run].to_numpy())
    opt = rows[rows.run == "optimum"]
    best = sweep.groupby("budget").loss.min()
    assert np.allclose(opt.measured, best[opt.target].to_numpy())
    assert np.allclose(rows.rel_error, rows.predicted / rows.measured - 1)
    assert ((rows.lo <= rows.predicted) & (rows.predicted <= rows.hi)).all()
    assert (rows.inside == ((rows.lo <= rows.measured) & (rows.measured <= rows.hi))).all()


def test_predictions_track_the_true_law(rows):
    runs = rows[rows.run != "optimum"]
    truth = true_loss(runs.n_params, runs.tokens)
    # 1% noise, 16x extrapolation from 2-4 budgets: the fit is within a few % of the truth
    assert np.max(np.abs(runs.predicted / truth - 1)) < 0.05


def test_wilson_interval_matches_the_formula_and_known_values():
    lo, hi = backtest.wilson(9, 10)
    # Wilson 95% for 9/10: (0.5958, 0.9821) (e.g. Agresti & Coull 1998 tables; formula check)
    assert lo == pytest.approx(0.5958, abs=1e-3) and hi == pytest.approx(0.9821, abs=1e-3)
    assert backtest.wilson(0, 5)[0] == pytest.approx(0.0, abs=1e-12)


def test_summary_bins_by_extrapolation_factor(rows):
    s = backtest.summarize(rows).set_index("factor")
    f = rows.factor
    # budgets 4x apart: factors 4 (bin 2-4x), 16 (4-16x), 64 (>16x)
    assert s.loc["2-4x", "n"] == ((f > 2.002) & (f <= 4.004)).sum() > 0
    assert s.loc["all", "n"] == len(rows)
    g = rows[f > 16.016]
    assert s.loc[">16x", "median_abs_error"] == pytest.approx(g.rel_error.abs().median())
    assert s.loc["all", "coverage"] == pytest.approx(rows.inside.mean())
    assert s.loc["all", "coverage_lo"] <= s.loc["all", "coverage"] <= s.loc["all", "coverage_hi"]


def test_isoflop_backtest_predicts_optima_only(sweep):
    r = backtest.backtest(sweep, "isoflop", n_bootstrap=50)
    # cutoffs at the 3rd (2 budgets above) and 4th budget (1 above)
    assert (r.run == "optimum").all() and len(r) == 3
    last = r.iloc[-1]
    n_true, _ = chinchilla.compute_optimal(TRUE, last.target)
    assert last.n_params == pytest.approx(float(n_true), rel=0.3)


def test_budgets_grouped_from_compute_when_there_is_no_budget_column(sweep):
    t = sweep.drop(columns="budget")
    t["flops_6nd"] = t.flops_6nd * np.exp(np.random.default_rng(0).uniform(-0.03, 0.03, len(t)))
    b = backtest.budgets_of(t)
    assert len(np.unique(b)) == 5
    assert np.allclose(np.unique(b), np.unique(sweep.budget), rtol=0.03)


def test_figure_writes_png_and_pdf(rows, tmp_path):
    files = backtest.figure(rows, tmp_path / "bt")
    assert [f.suffix for f in files] == [".png", ".pdf"] and all(f.stat().st_size > 0 for f in files)
