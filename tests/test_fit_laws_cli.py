"""`scaling fit --law data-constrained | bnsl` end to end on CSVs generated from known laws, and
their bad-input errors (a missing unique_tokens column, fewer points than a law needs)."""
import json

import numpy as np
import pandas as pd
import pytest

from analysis import backtest, fit as fitlib, laws, workflows
from cli import main as cli

# Muennighoff et al.'s C4 base law and a decay pair away from the start grid's points.
BASE = (1.869, 520.8, 1487.7, 0.3527, 0.3527)
R_D, R_N = 12.0, 4.0


def _dc_table():
    """N x U x epochs grid, losses exactly from the law (noise-free): the fit must return R*."""
    law = laws.data_constrained(BASE)
    rows = [(n, u * ep, u) for n in (1e8, 3e8, 1e9) for u in (1e9, 4e9) for ep in (1, 2, 4, 10, 30, 100)]
    n, d, u = map(np.array, zip(*rows))
    loss = fitlib.Fit(law, np.log([R_D, R_N]), 0, 0, 0, 0, 0, 1e-3, "").predict(N=n, D=d, U=u)
    return pd.DataFrame({"n_params": n, "tokens": d, "unique_tokens": u, "loss": loss})


def test_data_constrained_fixed_base_recovers_the_decay_constants(tmp_path, capsys):
    csv = tmp_path / "dc.csv"
    _dc_table().to_csv(csv, index=False)
    out = tmp_path / "out"
    rc = cli.main(["fit", str(csv), "--law", "data-constrained", "--base", ",".join(map(str, BASE)),
                   "--bootstrap", "8", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "95% bootstrap percentile CI" in printed and "base law fixed" in printed
    fit = json.loads((out / "fit.json").read_text())["fit"]
    # Noise-free data from the law: the optimum is the generating point up to the solver's
    # tolerance (ftol 1e-10 on an objective ~1e-12 near zero), far tighter than 1%.
    assert abs(fit["params"]["R_D*"] / R_D - 1) < 0.01 and abs(fit["params"]["R_N*"] / R_N - 1) < 0.01
    assert fit["ci_level"] == 0.95 and fit["ci_kind"] == "bootstrap percentile"


def test_data_constrained_without_unique_tokens_is_one_clear_line(tmp_path, capsys):
    csv = tmp_path / "no_u.csv"
    _dc_table().drop(columns="unique_tokens").to_csv(csv, index=False)
    assert cli.main(["fit", str(csv), "--law", "data-constrained", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("scaling fit: error:") and str(csv) in err
    assert "'unique_tokens'" in err and not (tmp_path / "o").exists()


def test_bad_base_is_refused(tmp_path, capsys):
    csv = tmp_path / "dc.csv"
    _dc_table().to_csv(csv, index=False)
    assert cli.main(["fit", str(csv), "--law", "data-constrained", "--base", "1,2,3"]) == 2
    assert "five positive numbers" in capsys.readouterr().err


def _bnsl_curve(x):
    """y = a + b x^-c0 (1 + (x/d1)^(1/f1))^(-c1 f1): a sharp drop after x = 3e3."""
    a, b, c0, c1, d1, f1 = 0.05, 3.0, 0.1, 1.5, 3e3, 0.3
    return a + b * x**-c0 * (1 + (x / d1) ** (1 / f1)) ** (-c1 * f1)


def test_bnsl_workflow_fits_the_break():
    """The workflow `scaling fit --law bnsl` runs (the CLI path is that of kaplan-d, tested in
    test_analysis_cli): on noise-free points from the law the break comes back."""
    x = np.geomspace(1e2, 1e5, 14)
    df = pd.DataFrame({"n_params": 1e6, "tokens": x, "loss": _bnsl_curve(x)})
    res = workflows.bnsl(df, "D", workflows.FitOptions(n_bootstrap=0, n_starts=60))
    p = res.fit.params
    assert res.n_used == 14 and res.x_column == "tokens"
    # The break location and the exponent change after it come back within 5% (the floor a is
    # weakly identified this far above it, so it is not compared).
    assert abs(np.log(p["d1"] / 3e3)) < 0.05 and abs(p["c1"] / 1.5 - 1) < 0.05


def test_bnsl_with_fewer_points_than_it_needs_is_refused(tmp_path, capsys):
    x = np.geomspace(1e2, 1e5, 5)
    csv = tmp_path / "short.csv"
    pd.DataFrame({"n_params": 1e6, "tokens": x, "loss": _bnsl_curve(x)}).to_csv(csv, index=False)
    assert cli.main(["fit", str(csv), "--law", "bnsl", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "6 parameters" in err and "got 5" in err


def test_bnsl_backtest_on_a_noise_free_curve_predicts_the_held_out_points():
    """The per-run backtest of a law without a compute optimum: fit BNSL on D <= cutoff, predict
    the rows above with intervals. Points from the law itself: errors near 0, intervals cover."""
    x = np.geomspace(1e2, 1e5, 14)
    df = pd.DataFrame({"n_params": 1e6, "tokens": x, "loss": _bnsl_curve(x)})
    rows = backtest.backtest(df, "bnsl", n_bootstrap=4, starts=workflows.starts_subset(laws.bnsl("D"), 60),
                             max_cutoffs=1)
    assert rows.cutoff.nunique() == 1 and rows.cutoff.iloc[0] == x[-2]  # the largest cutoff kept
    # Fitted on 13 exact points, the 14th (2x out in D) is predicted to within 1%.
    assert len(rows) == 1 and abs(rows.rel_error.iloc[0]) < 0.01 and rows.factor.iloc[0] > 1.5
    with pytest.raises(ValueError, match="needs column"):
        backtest.backtest(df, "data-constrained")
