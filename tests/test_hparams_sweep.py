"""LR x batch grids as sweeps (launch.hparams) and fitted laws fed back into a sweep's rules."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis import hparams as hp_fit
from launch import plan, sweep

HP_SWEEP = "experiments/hparams_cpu.py"


def test_lr_batch_grid_is_planned_per_budget_with_sources_in_the_plan():
    cfg = sweep.load_sweep(HP_SWEEP)
    specs = sweep.expand(cfg)
    assert len(specs) == 4 * 6 * 4 and len({s.run_id for s in specs}) == len(specs)
    c0 = [s for s in specs if s.budget == 2.5e10]
    assert sorted({s.config.optim.lr for s in c0}) == pytest.approx([3e-3 * m for m in (0.25, 0.5, 1, 2, 4, 8)])
    assert sorted({s.config.train.batch_size for s in c0}) == [2, 4, 8, 16]  # batch_multiple 1: not rounded to 8
    table = plan.plan_table(specs, 1e10)
    assert "hp source" in table.splitlines()[0] and "lr config x0.25, B config x0.125" in table
    # Batch multipliers keep D (up to whole steps): the steps change instead.
    assert {round(s.tokens, -4) for s in c0} == {round(c0[0].tokens, -4)}
    # The 'batch1' side check: batch 1 at the two largest budgets, the same runs' configs otherwise.
    b1 = sweep.expand(sweep.load_sweep(HP_SWEEP + ":batch1"))
    assert sorted((s.budget, s.config.train.batch_size) for s in b1) == [(5e10, 1)] * 3 + [(1e11, 1)] * 3
    with pytest.raises(ValueError, match="variant"):
        sweep.load_sweep(HP_SWEEP + ":nope")


def _fit_file(tmp_path, a, b, name="fit.json"):
    law = hp_fit.PowerLaw("lr", "flops", a, b, (math.nan, math.nan), (math.nan, math.nan), 0.9, 3, ())
    blaw = hp_fit.PowerLaw("batch_size", "flops", 2e-4, 0.5, (math.nan, math.nan), (math.nan, math.nan), 0.9, 3, ())
    path = tmp_path / name
    source = {"sweep_dir": "synthetic", "sweep_file": "", "n_runs": 0, "command": "none"}
    digest = hp_fit.write_fit_file(path, {"lr_vs_flops": law, "batch_size_vs_flops": blaw}, [], source)
    return path, digest


def test_fit_file_sets_lr_and_batch_and_its_hash_is_in_every_run_id(tmp_path):
    path, digest = _fit_file(tmp_path, 50.0, -0.25)
    cfg = sweep.load_sweep(HP_SWEEP)
    cfg.sweep.hparams.update(lr_multipliers=(), batch_multipliers=(), fit_file=str(path))
    specs = sweep.expand(cfg)
    assert len(specs) == 4
    m = cfg.sweep.rules.batch_multiple
    for s in specs:
        assert s.config.optim.lr == pytest.approx(50.0 * s.budget ** -0.25)
        b = 2e-4 * s.budget ** 0.5  # B* in sequences, rounded to the rules' batch_multiple
        assert s.config.train.batch_size == max(m, m * round(b / m))
        assert f"fit{digest[:8]}" in s.run_id and s.hp_source == f"lr fit:{digest[:8]}, B fit:{digest[:8]}"
    assert f"fit:{digest[:8]}" in plan.plan_table(specs, 1e10)
    # A refit (another file) plans other runs; the same file plans the same ones (resume).
    path2, _ = _fit_file(tmp_path, 60.0, -0.25, "fit2.json")
    cfg.sweep.hparams.fit_file = str(path2)
    assert not {s.run_id for s in sweep.expand(cfg)} & {s.run_id for s in specs}
    cfg.sweep.hparams.fit_file = str(path)
    assert [s.run_id for s in sweep.expand(cfg)] == [s.run_id for s in specs]


def test_bad_hparams_section_and_fit_file_are_named(tmp_path):
    cfg = sweep.load_sweep(HP_SWEEP)
    cfg.sweep.hparams.lr_multipliers = (1.0, -2.0)
    with pytest.raises(ValueError, match="lr_multipliers"):
        sweep.expand(cfg)
    cfg = sweep.load_sweep(HP_SWEEP)
    (tmp_path / "x.json").write_text('{"kind": "other"}')
    cfg.sweep.hparams.fit_file = str(tmp_path / "x.json")
    with pytest.raises(ValueError, match="not a hyperparameter fit file"):
        sweep.expand(cfg)


def test_fit_table_recovers_a_known_lr_law_from_a_synthetic_sweep():
    # Loss(C, lr, B) with eta*(C) = 0.5 C^-0.1 and B*(C) = 16 at every C: the table fit recovers both.
    rows = []
    for c in (1e10, 1e11, 1e12, 1e13):
        for lr in np.geomspace(1e-4, 1e-1, 9):
            for bsz in (8, 16, 32, 64):
                loss = 3.0 - 0.1 * math.log10(c) + 0.05 * math.log(lr / (0.5 * c ** -0.1)) ** 2 \
                    + 0.02 * math.log(bsz / 16) ** 2
                rows.append({"budget": c, "lr": lr, "batch_size": bsz, "loss": loss})
    laws, groups = hp_fit.fit_table(pd.DataFrame(rows), x="flops")
    assert laws["lr_vs_flops"].exponent == pytest.approx(-0.1, abs=1e-6)
    assert laws["lr_vs_flops"].coef == pytest.approx(0.5, rel=1e-5)
    assert laws["batch_size_vs_flops"].exponent == pytest.approx(0.0, abs=1e-6)
    assert all(g["lr"]["edge"] == "" for g in groups if "lr" in g)


def _synthetic_sweep(root, sweep_file: str, eta_exp: float, b_star) -> list:
    """The sweep's run directories under `root` with losses from a known law: a parabola in ln LR
    around eta*(C) = 3e-3 (C/5e10)^eta_exp and in ln batch around b_star(C) sequences."""
    import json

    from launch import local
    from scaling import config as cfg_lib

    specs = sweep.expand(sweep.load_sweep(sweep_file))
    local.write_manifest(root, specs, sweep_file)
    for s in specs:
        eta, bstar = 3e-3 * (s.budget / 5e10) ** eta_exp, b_star(s.budget)
        loss = 2.0 + 0.05 * math.log(s.config.optim.lr / eta) ** 2 + 0.03 * math.log(s.config.train.batch_size / bstar) ** 2
        run = root / "runs" / s.run_id
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps(s.config.to_dict()))
        (run / "result.json").write_text(json.dumps({
            "status": "ok", "n_params": s.n_params, "tokens": s.tokens, "final_eval_loss": loss,
            "final_train_loss": loss, "config_hash": cfg_lib.config_hash(s.config), "budget": s.budget}))
    return specs


def test_sweep_dir_to_fit_file_to_sweep_rules(tmp_path, capsys):
    # The loop on synthetic runs: the LR x batch sweep's run directories (losses from a known
    # eta*(C) = 3e-3 (C/5e10)^-0.2 and B*(C) = 6 (C/5e10)^0.5, inside the 2..16 grid) -> `scaling
    # hparams-fit` -> a sweep whose rules read the fit file gets eta*(C) and B*(C) back at each budget;
    # the file records which sweep and command produced it.
    import json

    from cli import hparams as hp_cli

    root = tmp_path / "sweep"
    specs = _synthetic_sweep(root, HP_SWEEP, eta_exp=-0.2, b_star=lambda c: 6 * (c / 5e10) ** 0.5)
    out = tmp_path / "fit.json"
    assert hp_cli.fit_main([str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lr_vs_flops" in printed and "batch_size_vs_flops" in printed
    doc = json.loads(out.read_text())
    laws = doc["laws"]
    assert doc["source"] == {"sweep_dir": str(root), "sweep_file": HP_SWEEP, "n_runs": len(specs),
                             "command": f"scaling hparams-fit {root} --out {out}"}
    assert laws["lr_vs_flops"]["exponent"] == pytest.approx(-0.2, abs=1e-6)
    assert laws["batch_size_vs_flops"]["exponent"] == pytest.approx(0.5, abs=1e-6)
    cfg = sweep.load_sweep(HP_SWEEP)
    cfg.sweep.hparams.update(lr_multipliers=(), batch_multipliers=(), fit_file=str(out))
    for s in sweep.expand(cfg):
        assert s.config.optim.lr == pytest.approx(3e-3 * (s.budget / 5e10) ** -0.2, rel=1e-6)
        assert s.config.train.batch_size == round(6 * (s.budget / 5e10) ** 0.5)
    # Refitting the same runs rewrites the same bytes: the hash (and so the tuned run ids) is stable.
    before = out.read_bytes()
    assert hp_cli.fit_main([str(root), "--out", str(out)]) == 0 and out.read_bytes() == before


def test_tuned_demo_plans_the_demos_points_with_the_committed_fit_files_laws(monkeypatch):
    # experiments/demo_cpu.py:tuned is the hand-set demo's isoFLOP grid with each run's LR from
    # experiments/hparams_cpu_fit.json (eta*(C) at the run's budget), and its batch from B*(C) when the
    # file has that law (rounded to the demo's batch rules), else the demo's batch rule.
    import hashlib
    import pathlib

    from scaling import hparam_file

    repo = pathlib.Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # the variant names its fit file relative to the repository root
    fit_file = repo / "experiments" / "hparams_cpu_fit.json"
    laws, sha = hparam_file.read(fit_file)
    assert sha == hashlib.sha256(fit_file.read_bytes()).hexdigest()
    hand = sweep.expand(sweep.load_sweep(f"{repo / 'experiments' / 'demo_cpu.py'}:classic"))
    tuned_cfg = sweep.load_sweep(f"{repo / 'experiments' / 'demo_cpu.py'}:tuned")
    tuned = sweep.expand(tuned_cfg)
    assert [(s.budget, s.n_params, s.tokens) for s in tuned] == [(s.budget, s.n_params, s.tokens) for s in hand]
    has_b = "batch_size_vs_flops" in laws
    for h, t in zip(hand, tuned):
        law = laws["lr_vs_flops"]
        assert h.config.optim.lr == 3e-3
        assert t.config.optim.lr == pytest.approx(law["coef"] * t.budget ** law["exponent"], rel=1e-12)
        if has_b:
            b = laws["batch_size_vs_flops"]
            m, cap = tuned_cfg.sweep.rules.batch_multiple, tuned_cfg.sweep.rules.batch_max
            want = max(m, m * round(b["coef"] * t.budget ** b["exponent"] / m))  # the rules' rounding
            assert t.config.train.batch_size == (min(want, cap) if cap else want)
        else:
            assert t.config.train.batch_size == h.config.train.batch_size
        assert f"fit{sha[:8]}" in t.run_id
        assert t.hp_source == f"lr fit:{sha[:8]}, B " + (f"fit:{sha[:8]}" if has_b else "rule")


def test_a_grid_and_its_extension_are_fitted_together(tmp_path, capsys):
    # The CPU study's grid (4 budgets, batch 2-16) and its 'large' extension (2e11, 4e11; batch 1-8)
    # are two sweeps: `hparams-fit A B` fits their union. Losses from a known law whose B* sits at
    # 2 (C/1e11)^0.6 sequences: on the grid's floor at the small budgets (EDGE), interior above.
    import json

    from cli import hparams as hp_cli

    law = dict(eta_exp=-0.2, b_star=lambda c: 2 * (c / 1e11) ** 0.6)
    grid, large = tmp_path / "grid", tmp_path / "large"
    n = len(_synthetic_sweep(grid, HP_SWEEP, **law)) + len(_synthetic_sweep(large, HP_SWEEP + ":large", **law))
    out = tmp_path / "fit.json"
    assert hp_cli.fit_main([str(grid), str(large), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["source"] == {"sweep_dir": f"{grid} + {large}", "sweep_file": f"{HP_SWEEP} + {HP_SWEEP}:large",
                             "n_runs": n, "command": f"scaling hparams-fit {grid} {large} --out {out}"}
    budgets = sorted(o["budget"] for o in doc["optima"])
    assert budgets == [1.25e10, 2.5e10, 5e10, 1e11, 2e11, 4e11]
    b_law = doc["laws"]["batch_size_vs_flops"]  # from the budgets where B* is inside the grid
    assert b_law["exponent"] == pytest.approx(0.6, abs=1e-6) and b_law["coef"] * 1e11 ** 0.6 == pytest.approx(2, rel=1e-6)
    edges = {o["budget"]: o["batch_size"]["edge"] for o in doc["optima"]}
    assert edges[1.25e10] == edges[2.5e10] == "low" and edges[2e11] == edges[4e11] == ""
    capsys.readouterr()
    # a run in both directories would count twice: refused in one line
    assert hp_cli.fit_main([str(grid), str(grid), "--out", str(tmp_path / "x.json")]) == 2
    assert "is in more than one of" in capsys.readouterr().err


@pytest.mark.parametrize("fit_file", ["experiments/hparams_cpu_fit.json", "experiments/hparams_cpu_fit_all.json"])
def test_committed_fit_files_laws_are_the_lines_through_their_own_optima(fit_file):
    # The shipped fit files (the CPU study: the 96-run grid; and it with its batch-1 and 'large'
    # extensions) are read back, and each law is recomputed independently from the file's interior
    # optima: numpy's least-squares line in log-log, and its slope's t interval from the residuals.
    import json

    import scipy.stats

    doc = json.loads(open(fit_file).read())
    for name, law in doc["laws"].items():
        y = law["y_name"]
        pts = [(o["budget"], o[y]["best"]) for o in doc["optima"] if o.get(y) and not o[y]["edge"]]
        assert len(pts) == law["n_groups"], name
        u, v = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
        slope, icpt = np.polyfit(u, v, 1)
        assert law["exponent"] == pytest.approx(slope, rel=1e-9) and law["coef"] == pytest.approx(math.exp(icpt), rel=1e-9)
        dof = len(pts) - 2
        se = math.sqrt(np.sum((v - (icpt + slope * u)) ** 2) / dof / np.sum((u - u.mean()) ** 2))
        half = scipy.stats.t.ppf(0.5 + law["level"] / 2, dof) * se
        assert law["exponent_ci"] == pytest.approx([slope - half, slope + half], rel=1e-6)
