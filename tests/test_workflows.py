"""analysis.workflows (typed results, no printing), analysis.extrapolation, the percentile-CI
helper and the fit warnings of analysis.diagnostics, each on data built so the answer is known."""
import numpy as np
import pandas as pd
import pytest

from analysis import chinchilla, extrapolation, fit, laws, results, workflows
from test_report import fake_sweep  # tests/ is on sys.path (pytest rootdir-relative imports)

P = dict(E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.37)


def _isoflop_table(budgets=(1e16, 1e17, 1e18, 1e19), n_per=7):
    rows = []
    for c in budgets:
        n_star, _ = chinchilla.compute_optimal(P, c)
        for n in n_star * np.geomspace(0.25, 4, n_per):
            d = c / (6 * n)
            rows.append({"n_params": n, "tokens": d, "flops_6nd": c, "budget": c,
                         "loss": P["E"] + P["A"] / n ** P["alpha"] + P["B"] / d ** P["beta"]})
    return pd.DataFrame(rows)


def test_percentile_interval_matches_order_statistics():
    # 0..100: the 5th and 95th percentiles (linear interpolation) are exactly 5 and 95
    lo, hi = fit.percentile_interval(np.arange(101.0), 0.90)
    assert (lo, hi) == (pytest.approx(5.0, abs=1e-12), pytest.approx(95.0, abs=1e-12))  # float q
    lo, hi = fit.percentile_interval(np.arange(101.0)[:, None] * [1, 2], 0.5, axis=0)
    np.testing.assert_allclose(lo, [25, 50])
    np.testing.assert_allclose(hi, [75, 150])
    with pytest.raises(ValueError, match="CI level must be in"):
        fit.percentile_interval([1, 2], 1.0)


def test_approach2_workflow_returns_a_typed_result_and_prints_nothing(capsys, tmp_path):
    res = workflows.approach2(_isoflop_table(), workflows.FitOptions(n_bootstrap=50))
    assert capsys.readouterr().out == ""  # the CLI prints; a workflow does not
    assert res.files == [] and res.workflow == "approach2" and res.left_out == []
    a_true = chinchilla.allocation(P)["a"]
    assert res.allocation.a == pytest.approx(a_true, abs=0.01)  # see test_analysis_cli's tolerance
    assert res.allocation.ci_level == 0.95 and res.ci_kind == "bootstrap percentile"
    assert res.allocation.n_bootstrap == 50 and 0 <= res.allocation.n_boot_failed < 25
    r0 = res.rows[0]
    assert r0.to_dict()["tokens_per_param"] == pytest.approx(r0.D_opt / r0.N_opt)
    assert "4 budgets from the sweep's nominal budgets; 4 with interior minima" in res.notes[0]
    d = res.to_dict()
    assert set(d) == {"allocation", "budgets", "warnings", "files"}
    drawn = workflows.approach2(_isoflop_table(), workflows.FitOptions(n_bootstrap=0), tmp_path / "f")
    assert {f.name for f in drawn.files} >= {"isoflop.png", "allocation.pdf"}


@pytest.mark.parametrize("kw, msg", [(dict(n_bootstrap=1), "--bootstrap=1"),
                                     (dict(n_starts=-1), "--n-starts=-1"),
                                     (dict(ci_level=1.5), "ci_level=1.5")])
def test_fit_options_refuse_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        workflows.FitOptions(**kw)


def test_extrapolation_needs_three_budgets(tmp_path):
    fake_sweep(tmp_path)
    df = results.load(tmp_path)
    with pytest.raises(ValueError, match=">= 3 isoFLOP budgets"):
        extrapolation.held_out_budget(df[df.budget <= 1e16])


# ----- fit warnings (analysis.diagnostics) ------------------------------------------------------

N = np.geomspace(1e6, 1e9, 12)


def test_warns_at_bound_and_wrong_curvature_for_concave_data():
    """log L = 2 - 0.05 log N - 0.004 (log N - 16)^2: concave in log N, the opposite of
    E + (N_c/N)^alpha, so the best E goes to its lower bound 0 and the curvature is wrong."""
    x = np.log(N)
    loss = np.exp(2.0 - 0.05 * x - 0.004 * (x - 16.0) ** 2)
    f = fit.fit(laws.kaplan("N", irreducible=True), {"N": N}, loss)
    assert any(w.startswith("E is at the lower bound 0") for w in f.warnings), f.warnings
    assert any("curves downward in log N" in w for w in f.warnings), f.warnings
    assert f.params["E"] / loss.min() < 1e-3  # independent check: E really went to 0
    assert f.to_dict()["warnings"] == f.warnings


def test_no_warnings_on_data_from_the_law():
    loss = 1.5 + (8.8e13 / N) ** 0.076 * 0.3  # E = 1.5 plus a power law: convex, E well away from 0
    f = fit.fit(laws.kaplan("N", irreducible=True), {"N": N}, loss)
    assert f.params["E"] == pytest.approx(1.5, rel=1e-3)
    assert f.warnings == []


def test_warns_when_an_exponent_is_at_its_bound():
    loss = np.full(len(N), 2.5) * np.exp(0.002 * np.sin(np.arange(len(N))))  # no trend in N
    f = fit.fit(laws.kaplan("N"), {"N": N}, loss)
    assert f.params["alpha_N"] <= 1e-3
    assert any(w.startswith("alpha = ") and "lower bound 0" in w for w in f.warnings), f.warnings


def test_warns_when_only_one_start_reached_the_best():
    """Two starts: the exact optimum, and one far away stopped after 5 iterations."""
    law = laws.kaplan("N")
    loss = (8.8e13 / N) ** 0.076
    exact = [0.076 * np.log(8.8e13), 0.076]
    f = fit.fit(law, {"N": N}, loss, starts=np.array([exact, [30.0, 1.0]]), max_iter=5)
    assert f.n_at_best == 1 and any("only 1 of 2 starts" in w for w in f.warnings), f.warnings
    g = fit.fit(law, {"N": N}, loss)  # the default grid: many starts reach the same optimum
    assert g.n_at_best > 1 and not any("only 1 of" in w for w in g.warnings)
