"""`scaling demo` end to end on a tiny isoFLOP sweep: runs -> fits -> report, then rerun = no-op;
and its forecast step: forecast written before its run, the run, the score, the report led by it."""
import json

import numpy as np
import pytest

from cli import demo
from launch import branches, sweep
from tests.test_cli_forecast import law_loss, write_run

TINY_SWEEP = """
from experiments.demo_cpu import get_config as demo_config


def get_config():
    c = demo_config()
    c.data.cache_dir = {cache!r}
    c.train.eval_tokens = 4096
    c.sweep.budgets = (1e9, 2e9, 4e9)
    c.sweep.min_steps = 10
    c.sweep.shapes.n_targets = ()
    c.sweep.shapes.explicit = ((1, 8), (1, 16), (2, 16))
    c.sweep.rules.batch_ref = 0
    c.train.batch_size = 8
    c.optim.warmup_steps = 2  # the demo's 30 would not fit these 10-40-step runs
    c.sweep.forecast_flops = {forecast}
    c.sweep.branches = {branches}
    c.sweep.replicate_seeds = ()  # 9 points, one run each (packed replicates: test_branch, test_packed_sweep)
    return c
"""


@pytest.mark.slow
def test_demo_end_to_end_then_nothing_to_do(tmp_path, corpus_cache, capsys):
    cfg = tmp_path / "tiny_sweep.py"
    # one standalone run per point: the branched path (trunks, then branches) is the second test's and
    # test_branch's; here it would add 3 trunks and 9 branch restores (~30 s) to the same checks
    cfg.write_text(TINY_SWEEP.format(cache=corpus_cache, forecast=0, branches=False))
    sweep_dir = tmp_path / "sweep"
    argv = ["--sweep", str(cfg), "--sweep-dir", str(sweep_dir), "--parallel", "2", "--bootstrap", "10",
            "--n-starts", "300"]  # 300 of the 4,500 grid starts: what test_report uses; the full grid is the CLI's default
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    assert "9/9 runs" in out and "== 4/4 report ==" in out
    for name in ("report.md", "report.html", "fit.json", "sweep.json"):
        assert (sweep_dir / name).is_file(), name
    assert len(list((sweep_dir / "runs").glob("*/result.json"))) == 9
    fits = json.loads((sweep_dir / "fit.json").read_text())
    assert fits["n_runs"] == 9 and len(fits["runs_table"]["rows"]) == 9
    # a second invocation has nothing to do and says so: it neither runs nor refits, so no file changes
    def snapshot():
        return {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("*") if p.is_file()}
    before = snapshot()
    assert demo.main(argv) == 0
    assert "Everything is done" in capsys.readouterr().out
    assert snapshot() == before


@pytest.mark.slow
def test_demo_forecasts_runs_and_scores_beyond_the_sweep(tmp_path, corpus_cache, capsys):
    """The sweep's runs are finished beforehand with losses from a known law (the tiny real runs
    above sit on the unigram plateau, where Approach 3 is not identified): the demo then skips
    them, forecasts C = 8e9 (2x the largest budget), trains that one run for real and scores it."""
    cfg = tmp_path / "tiny_sweep.py"
    cfg.write_text(TINY_SWEEP.format(cache=corpus_cache, forecast=8e9, branches=True))
    sweep_dir = tmp_path / "sweep"
    noise = np.random.default_rng(0).normal(0, 0.005, 9)
    planned = branches.plan(sweep.expand(sweep.load_sweep(cfg))).branches  # the demo's points are branches
    for s, e in zip(planned, noise):
        write_run(sweep_dir / "runs" / s.run_id, n_params=s.n_params, tokens=s.tokens,
                  loss=float(law_loss(s.n_params, s.tokens) * np.exp(e)), config_hash=None, budget=s.budget)
    argv = ["--sweep", str(cfg), "--sweep-dir", str(sweep_dir), "--bootstrap", "20", "--n-starts", "300"]
    assert demo.main(argv) == 0
    fits = json.loads((sweep_dir / "fit.json").read_text())
    assert fits["n_runs"] == 9  # the forecast run is not one of the sweep's
    fc = sweep_dir / "forecast"
    forecast_file = fc / "forecast.json"
    (run,) = list((fc / "runs").glob("*/result.json"))
    # written before its run: the file predates the run's first file
    assert forecast_file.stat().st_mtime < (run.parent / "config.json").stat().st_mtime
    doc = json.loads(forecast_file.read_text())
    result = json.loads(run.read_text())
    assert result["config_hash"] == doc["config_hash"]  # the run is the planned config
    assert json.loads((fc / "forecast.config.json").read_text()) == doc["config"]
    (score,) = fits["forecast"]["scores"]
    assert score["measured"] == result["final_eval_loss"]
    assert score["inside"] == (score["lo"] <= score["measured"] <= score["hi"])
    report = (sweep_dir / "report.md").read_text()
    assert report.index("## Forecast") < report.index("## Runs")  # the report leads with it
    assert f"{score['measured']:.4f}" in report and f"{score['predicted']:.4f}" in report
    # rerun: nothing to do; a rebuilt report reuses the frozen forecast and its finished run
    before = forecast_file.read_bytes()
    capsys.readouterr()
    assert demo.main(argv) == 0
    assert "Everything is done" in capsys.readouterr().out
    assert demo.main(argv + ["--force-report"]) == 0
    assert "reusing the forecast" in capsys.readouterr().out
    assert forecast_file.read_bytes() == before
