"""`scaling demo` end to end on a tiny isoFLOP sweep: runs -> fits -> report, then rerun = no-op."""
import json
import time

import pytest

from cli import demo

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
    return c
"""


@pytest.mark.slow
def test_demo_end_to_end_then_nothing_to_do(tmp_path, corpus_cache, capsys):
    cfg = tmp_path / "tiny_sweep.py"
    cfg.write_text(TINY_SWEEP.format(cache=corpus_cache))
    sweep_dir = tmp_path / "sweep"
    argv = ["--sweep", str(cfg), "--sweep-dir", str(sweep_dir), "--parallel", "2", "--bootstrap", "10"]
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    assert "9/9 runs" in out and "== 4/4 report ==" in out
    for name in ("report.md", "report.html", "fit.json", "sweep.json"):
        assert (sweep_dir / name).is_file(), name
    assert len(list((sweep_dir / "runs").glob("*/result.json"))) == 9
    fits = json.loads((sweep_dir / "fit.json").read_text())
    assert fits["n_runs"] == 9 and len(fits["runs_table"]["rows"]) == 9
    # a second invocation has nothing to do, says so, and is quick
    t0 = time.time()
    assert demo.main(argv) == 0
    assert "Everything is done" in capsys.readouterr().out
    assert time.time() - t0 < 30
