"""`scaling backtest / forecast / score` through cli.main on a synthetic sweep directory: the
forecast writes the predicted-optimal run's config from the sweep's ladder and rules."""
import json
import math

import ml_collections
import numpy as np
import pytest

from analysis import chinchilla
from cli.main import main
from launch import local, sweep
from scaling import accounting
from scaling import config as cfg_lib

LAW = {"E": 1.0, "A": 200.0, "B": 400.0, "alpha": 0.4, "beta": 0.4}  # N_opt(1e11) ~ 5e4 params
TARGET = 3.2e12  # 8x the largest budget
FAST = ["--n-starts", "48", "--bootstrap", "30"]
SWEEP_CFG = """
from experiments.demo_cpu import get_config as demo_config


def get_config():
    c = demo_config("classic")
    c.sweep.budgets = (5e10, 1e11, 2e11, 4e11)
    return c
"""


def law_loss(n, d):
    return LAW["E"] + LAW["A"] / n ** LAW["alpha"] + LAW["B"] / d ** LAW["beta"]


def write_run(run_dir, *, n_params, tokens, loss, config_hash, budget=None):
    """A finished run directory as analysis.results reads it (budget: its isoFLOP budget C)."""
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps({
        "status": "ok", "n_params": n_params, "tokens": tokens, "final_eval_loss": loss,
        "final_train_loss": loss, "flops_6nd": 6.0 * n_params * tokens, "config_hash": config_hash,
        "budget": budget}))


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """The demo's ladder at 4 budgets, losses from LAW with 0.5% log-normal noise."""
    d = tmp_path_factory.mktemp("cli_fc")
    cfg_path = d / "sweep_cfg.py"
    cfg_path.write_text(SWEEP_CFG)
    specs = sweep.expand(sweep.load_sweep(cfg_path))
    root = d / "sweep"
    local.write_manifest(root, specs, str(cfg_path))
    noise = np.exp(np.random.default_rng(0).normal(0, 0.005, len(specs)))
    for s, e in zip(specs, noise):
        write_run(root / "runs" / s.run_id, n_params=s.n_params, tokens=s.tokens,
                  loss=float(law_loss(s.n_params, s.tokens) * e), config_hash=cfg_lib.config_hash(s.config),
                  budget=s.budget)
    return root


@pytest.fixture(scope="module")
def forecast(sweep_dir):
    out = sweep_dir.parent / "fc" / "forecast.json"
    assert main(["forecast", str(sweep_dir), "--target-flops", str(TARGET), "--out", str(out), *FAST]) == 0
    return out, json.loads(out.read_text())


def _total_params(model):
    return accounting.param_counts(model)["total"]


def test_forecast_writes_the_ladder_run_nearest_n_star(forecast):
    out, doc = forecast
    cfg_file = out.with_name("forecast.config.json")
    written = json.loads(cfg_file.read_text())
    assert written == doc["config"]
    run = cfg_lib.resolve(ml_collections.ConfigDict(written))
    cfg_lib.validate(run)
    # the hash the trainer will record for this config is the one the forecast planned
    assert doc["config_hash"] == cfg_lib.config_hash(run)
    n_star, d_star = doc["optimum"]["N"]["value"], doc["optimum"]["D"]["value"]
    assert n_star * d_star * 6 == pytest.approx(TARGET, rel=1e-9)
    # D = D* rounded down to whole steps
    step = run.train.batch_size * run.data.seq_len
    assert run.train.tokens <= d_star < run.train.tokens + step
    # batch by the demo's rule: 16 * (D / 1e6) ** 0.5, a multiple of 8, at most 128
    assert run.train.batch_size == min(128, max(8, 8 * round(16 * (d_star / 1e6) ** 0.5 / 8)))
    # the shape: the ladder rule (d_model = 12 L rounded to 8) with N nearest N* in log
    m = run.model
    assert m.d_model == max(8, 8 * round(12 * m.n_layers / 8)) and m.n_heads == m.d_model // 8

    def n_at(layers):
        d = max(8, 8 * round(12 * layers / 8))
        other = ml_collections.ConfigDict(run.model.to_dict())
        other.update(n_layers=layers, d_model=d, n_heads=d // 8, n_kv_heads=d // 8, d_ff=0)
        r = ml_collections.ConfigDict(run.to_dict())
        r.model = other
        return _total_params(cfg_lib.resolve(r).model)

    gap = abs(math.log(_total_params(m) / n_star))
    for nb in (m.n_layers - 1, m.n_layers + 1):
        if 1 <= nb <= 12:
            assert gap <= abs(math.log(n_at(nb) / n_star))
    assert run.meta.budget == TARGET
    # the law's own optimum: the fit on 0.5% noise lands within 2x of it
    n_true, _ = chinchilla.compute_optimal(LAW, TARGET)
    assert 0.5 < n_star / float(n_true) < 2


def test_forecast_with_sweep_flag_and_from_csv(sweep_dir, tmp_path, capsys):
    from analysis import results
    csv = tmp_path / "points.csv"
    results.load(sweep_dir)[["n_params", "tokens", "loss"]].to_csv(csv, index=False)
    out = tmp_path / "csv_forecast.json"
    assert main(["forecast", str(csv), "--target-flops", str(TARGET), "--out", str(out), *FAST]) == 0
    assert not out.with_name("csv_forecast.config.json").exists()  # a CSV names no sweep config
    src = json.loads((sweep_dir / "sweep.json").read_text())["source"]
    out2 = tmp_path / "with_sweep.json"
    assert main(["forecast", str(csv), "--target-flops", str(TARGET), "--out", str(out2),
                 "--sweep", src, *FAST]) == 0
    assert json.loads(out2.with_name("with_sweep.config.json").read_text())["meta"]["budget"] == TARGET
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    assert main(["forecast", str(csv), "--target-flops", str(TARGET), "--out", str(bad),
                 "--sweep", str(tmp_path / "nope.py"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "nope.py" in err and len(err.strip().splitlines()) == 1


def test_score_the_planned_run_and_refuse_another(forecast, tmp_path, capsys):
    out, doc = forecast
    run = cfg_lib.resolve(ml_collections.ConfigDict(doc["config"]))
    n = _total_params(run.model)
    d = run.train.tokens
    measured = float(law_loss(n, d))
    write_run(tmp_path / "planned", n_params=n, tokens=d, loss=measured, config_hash=doc["config_hash"])
    capsys.readouterr()
    assert main(["score", str(out), str(tmp_path / "planned")]) == 0
    text = capsys.readouterr().out
    assert "inputs verified" in text and f"measured {measured:.4f}" in text
    write_run(tmp_path / "other", n_params=n, tokens=d, loss=measured, config_hash="0" * 12)
    assert main(["score", str(out), str(tmp_path / "other")]) == 2
    assert "not the forecast's planned" in capsys.readouterr().err


def test_backtest_through_the_command(sweep_dir, tmp_path, capsys):
    assert main(["backtest", str(sweep_dir), "--law", "chinchilla", "--out", str(tmp_path / "bt"),
                 *FAST]) == 0
    assert (tmp_path / "bt" / "backtest.json").is_file()
    assert "coverage" in capsys.readouterr().out


def test_help_lists_the_three_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {c} " in out for c in ("backtest", "forecast", "score"))
