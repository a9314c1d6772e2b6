"""analysis.hparams: the optimum of a synthetic LR grid with a known minimum, edge flags, power laws."""
import json
import math

import numpy as np
import pytest

from analysis import hparams


def _grid(lr_star, lrs, curvature=0.08, noise=0.0, seed=0):
    u = np.log(lrs)
    rng = np.random.default_rng(seed)
    return 2.5 + curvature * (u - math.log(lr_star)) ** 2 + noise * rng.standard_normal(len(lrs))


def test_known_optimum_is_recovered_with_an_interval_that_covers_it():
    lrs = np.geomspace(1e-4, 1e-1, 10)
    opt = hparams.fit_optimum(lrs, _grid(3.7e-3, lrs))  # noiseless parabola: exact vertex
    assert opt.edge == "" and opt.best == pytest.approx(3.7e-3, rel=1e-6)
    # With noise the vertex moves; its 90% interval still covers the truth, and the point estimate
    # is within the grid spacing (x2.15) of it.
    covered = 0
    for seed in range(20):
        o = hparams.fit_optimum(lrs, _grid(3.7e-3, lrs, noise=0.005, seed=seed))
        assert o.edge == "" and abs(math.log(o.best / 3.7e-3)) < math.log(2.15)
        assert o.lo < o.best < o.hi
        covered += o.lo <= 3.7e-3 <= o.hi
    assert covered >= 14  # nominal 90% of 20 = 18; >= 14 allows for the t interval's small dof


def test_optimum_on_the_edge_is_flagged_not_extrapolated():
    lrs = np.geomspace(1e-4, 1e-2, 5)
    low = hparams.fit_optimum(lrs, _grid(1e-5, lrs))  # true optimum 10x below the grid
    assert low.edge == "low" and low.best == pytest.approx(1e-4) and math.isnan(low.lo)
    high = hparams.fit_optimum(lrs, _grid(1.0, lrs))
    assert high.edge == "high" and high.best == pytest.approx(1e-2)
    # Diverged runs above the best finite one: the best is the last finite point, an edge too.
    losses = _grid(1.0, lrs)
    losses[-1] = np.inf
    div = hparams.fit_optimum(lrs, losses)
    assert div.edge == "high" and div.best == pytest.approx(lrs[-2]) and div.n_diverged == 1


def test_bad_grids_are_refused():
    with pytest.raises(hparams.HparamFitError, match="at least 3"):
        hparams.fit_optimum([1e-3, 1e-2], [3.0, 2.9])
    with pytest.raises(hparams.HparamFitError, match="> 0"):
        hparams.fit_optimum([0.0, 1e-3, 1e-2], [3.0, 2.9, 3.1])


def test_power_law_recovers_known_exponent_and_leaves_out_edges(tmp_path):
    budgets = np.array([1e12, 1e13, 1e14, 1e15])
    a, b = 0.3, -0.125  # eta*(C) = 0.3 C^-0.125 (DeepSeek-like exponent)
    lrs = np.geomspace(1e-4, 1e-1, 12)
    optima = [hparams.fit_optimum(lrs, _grid(a * c ** b, lrs, noise=0.002, seed=i)) for i, c in enumerate(budgets)]
    optima.append(hparams.fit_optimum(lrs[:4], _grid(1e-2, lrs[:4])))  # an edge group: left out, named
    law = hparams.fit_power_law(list(budgets) + [1e16], optima, ["C1", "C2", "C3", "C4", "C5"],
                                y_name="lr", x_name="flops")
    assert law.n_groups == 4 and law.left_out == ("C5: optimum on the grid's edge (high)",)
    assert law.exponent_ci[0] < b < law.exponent_ci[1] and abs(law.exponent - b) < 0.03
    # Independent check: numpy's polyfit in log-log over the same optima gives the same line.
    slope, icpt = np.polyfit(np.log(budgets), np.log([o.best for o in optima[:4]]), 1)
    assert law.exponent == pytest.approx(slope, rel=1e-9) and law.coef == pytest.approx(math.exp(icpt), rel=1e-9)
    source = {"sweep_dir": "synthetic", "sweep_file": "", "n_runs": 0, "command": "none"}
    digest = hparams.write_fit_file(tmp_path / "fit.json", {"lr_vs_flops": law}, [], source)
    doc = json.loads((tmp_path / "fit.json").read_text())
    assert doc["laws"]["lr_vs_flops"]["exponent"] == pytest.approx(law.exponent) and len(digest) == 64


def test_a_law_whose_exponent_interval_includes_zero_or_is_missing_is_doubted():
    lrs = np.geomspace(1e-4, 1e-1, 12)
    budgets = [1e12, 1e13, 1e14]

    def law(stars, n=3):
        optima = [hparams.fit_optimum(lrs, _grid(s, lrs)) for s in stars[:n]]
        return hparams.fit_power_law(budgets[:n], optima, ["C1", "C2", "C3"][:n], y_name="lr", x_name="flops")
    # Optima that go down then up: the least-squares slope is small and its interval spans 0.
    flat = law([3e-3, 1e-3, 4e-3])
    assert flat.exponent_ci[0] < 0 < flat.exponent_ci[1]
    assert "includes 0" in hparams.law_doubts(flat)[0]
    assert "no interval" in hparams.law_doubts(law([3e-3, 1e-3], n=2))[0]
    # A clean power law (exact optima, eta* = 0.3 C^-0.125) raises no doubt.
    assert hparams.law_doubts(law([0.3 * c ** -0.125 for c in budgets])) == []


def test_format_1_files_without_source_are_still_read_and_a_source_is_required_to_write(tmp_path):
    from scaling import hparam_file
    law = {"coef": 2.0, "exponent": -0.5, "x_name": "flops", "y_name": "lr"}
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"kind": "hparam_laws", "format": 1, "laws": {"lr_vs_flops": law}, "optima": []}))
    laws, _ = hparam_file.read(old)
    assert hparam_file.evaluate(laws, "lr_vs_flops", 16.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="source lacks"):
        hparam_file.write(tmp_path / "new.json", {"lr_vs_flops": law}, [], {"sweep_dir": "s"})
    old.write_text(json.dumps({"kind": "hparam_laws", "format": 3, "laws": {}, "optima": []}))
    with pytest.raises(ValueError, match="not a hyperparameter fit file"):
        hparam_file.read(old)


def test_laws_per_model_size_group_runs_by_n_params():
    # --x n_params: runs grouped by N (a grid sweep over shapes), eta*(N) = 2e-2 (N/1e6)^-0.5 with
    # B* = 8 sequences at every N. The table's per-N optima are the synthetic minima (parabolas in
    # ln LR and ln B through 6 and 4 grid points: fitted exactly), so the law's exponent is -0.5.
    import pandas as pd
    rows = []
    for n in (1e6, 4e6, 1.6e7):
        eta = 2e-2 * (n / 1e6) ** -0.5
        for lr in np.geomspace(1e-3, 1e-1, 6):
            for b in (2, 4, 8, 16, 32):
                loss = 2.0 + 0.05 * math.log(lr / eta) ** 2 + 0.03 * math.log(b / 8) ** 2
                rows.append({"n_params": n, "budget": None, "lr": lr, "batch_size": b, "loss": loss})
    laws, groups = hparams.fit_table(pd.DataFrame(rows), x="n_params")
    assert [g["n_params"] for g in groups] == [1e6, 4e6, 1.6e7]
    assert laws["lr_vs_n_params"].exponent == pytest.approx(-0.5, abs=1e-6)
    assert laws["lr_vs_n_params"].coef * 1e6 ** -0.5 == pytest.approx(2e-2, rel=1e-6)
    assert laws["batch_size_vs_n_params"].exponent == pytest.approx(0.0, abs=1e-6)
