"""`scaling sweep` with sweep.pack_size: the runner hands a pack to the real packed trainer, and the
sweep's run directories read like unpacked ones (same table; a member's losses equal its unpacked run's
to the packed trainer's rtol 1e-5, justified in tests/test_packed_train.py)."""
import json
import pathlib

import pytest

from analysis import results
from launch import cli
from scaling import rundir

SWEEP = """
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.data = dict(seq_len=32, cache_dir={cache!r})
    c.train = dict(batch_size=8, log_every=5, eval_every=10, eval_tokens=1024, peak_flops=1e11)
    c.optim = dict(warmup_steps=3)
    c.mesh = dict(num_devices=1)
    c.checkpoint = dict(every_steps=10)
    c.track = dict(tensorboard=False)
    c.sweep = s = ml_collections.ConfigDict()
    s.kind = "grid"
    s.tokens = (8 * 32 * 20,)  # 20 steps
    s.seeds = {seeds}
    s.pack_size = {pack}
    s.shapes = dict(n_targets=(), explicit=((1, 16),), head_dim=8)
    return c
"""


def _sweep(tmp_path, name, seeds, pack, cache):
    cfg = tmp_path / f"{name}.py"
    cfg.write_text(SWEEP.format(cache=cache, seeds=seeds, pack=pack))
    sweep_dir = tmp_path / name
    assert cli.sweep_main([str(cfg), "--sweep-dir", str(sweep_dir)]) == 0
    return sweep_dir


@pytest.mark.slow
def test_a_packed_sweep_reads_like_an_unpacked_one(tmp_path, corpus_cache, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")  # the trainer subprocesses: 1 CPU device, not the tests' 8
    packed_dir = _sweep(tmp_path, "packed", (0, 1), 2, corpus_cache)
    alone_dir = _sweep(tmp_path, "alone", (0,), 0, corpus_cache)
    runs = sorted((packed_dir / rundir.RUNS).iterdir())
    assert len(runs) == 2
    for rd in runs:  # one job trained both: each member's own result and launch record say so
        assert rundir.read_result(rd)["pack_size"] == 2
        assert len(json.loads((rd / rundir.LAUNCH).read_text())["pack"]) == 2
    packed, alone = results.load(packed_dir), results.load(alone_dir)
    assert len(packed) == 2 and len(alone) == 1
    name = lambda df: df.run_dir.map(lambda d: pathlib.Path(d).name)  # noqa: E731  (the run id)
    seed0 = packed[name(packed) == name(alone).iloc[0]]  # the same config -> the same run id
    assert len(seed0) == 1
    for col in ("n_params", "tokens", "flops", "flops_6nd"):
        assert seed0[col].iloc[0] == alone[col].iloc[0], col
    assert seed0.loss.iloc[0] == pytest.approx(alone.loss.iloc[0], rel=1e-5)
    assert abs(packed.loss.iloc[0] - packed.loss.iloc[1]) > 1e-3  # the two seeds really differ
