"""launch.sync: a local directory stands in for the bucket (etils.epath treats both alike).

A run's files go host -> bucket with result.json last and never torn; only complete checkpoint
steps travel, the commit marker last; `scaling sync` brings results (not checkpoints unless asked)
back into a sweep directory that `scaling status` reads.
"""
import json

import pytest
from etils import epath

from launch import local, sync
from scaling import rundir


def _run(d, steps=(), partial=(), result=True):
    d.mkdir(parents=True)
    rundir.write_json(d / rundir.CONFIG, {"seed": 0})
    (d / rundir.METRICS).write_text('{"split": "train", "step": 1, "tokens": 8, "loss": 3.0}\n')
    if result:
        rundir.write_json(d / rundir.RESULT, {"status": "ok", "final_eval_loss": 2.5})
    for s in steps:
        (d / "checkpoints" / str(s) / "state").mkdir(parents=True)
        (d / "checkpoints" / str(s) / "state" / "array").write_bytes(b"x" * s)
        (d / "checkpoints" / str(s) / sync.COMMIT).write_text("ok")
    for s in partial:  # a save in flight: no commit marker
        (d / "checkpoints" / f"{s}").mkdir(parents=True)
        (d / "checkpoints" / f"{s}" / "state").write_bytes(b"half")
    return d


def test_copy_run_results_only_and_result_last(tmp_path, monkeypatch):
    src = _run(tmp_path / "host" / "r1", steps=(10,))
    order = []
    real = sync.copy_file
    monkeypatch.setattr(sync, "copy_file", lambda a, b: (order.append(b.name), real(a, b)))
    copied = sync.copy_run(src, tmp_path / "bucket" / "r1")
    assert order[-1] == rundir.RESULT and copied[-1] == rundir.RESULT
    dst = tmp_path / "bucket" / "r1"
    assert rundir.read_result(dst)["final_eval_loss"] == 2.5
    assert (dst / rundir.METRICS).read_text() == (src / rundir.METRICS).read_text()
    assert not (dst / "checkpoints").exists()
    assert not [p for p in dst.rglob("*sync-tmp*")]  # no temporaries left


def test_checkpoints_complete_steps_only_commit_last(tmp_path, monkeypatch):
    src = _run(tmp_path / "host" / "r", steps=(10, 20), partial=(30,))
    order = []
    real = sync.copy_file
    monkeypatch.setattr(sync, "copy_file", lambda a, b: (order.append(str(b)), real(a, b)))
    sync.copy_run(src, tmp_path / "b" / "r", checkpoints=True)
    ck = tmp_path / "b" / "r" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["10", "20"]  # the partial step 30 stays behind
    assert (ck / "20" / "state" / "array").read_bytes() == b"x" * 20
    for step in ("10", "20"):
        mine = [o for o in order if f"/{step}" in o]
        assert mine[-1].endswith(sync.COMMIT)
    # keep-N removed step 10 on the host: the mirror drops it after copying the new one
    epath.Path(src / "checkpoints" / "10").rmtree()
    _run(tmp_path / "tmp40", steps=(40,), result=False)
    (tmp_path / "tmp40" / "checkpoints" / "40").rename(src / "checkpoints" / "40")
    assert sync.copy_run(src, tmp_path / "b" / "r", checkpoints=True)[0] == "checkpoints/40"
    assert sorted(p.name for p in ck.iterdir()) == ["20", "40"]


def test_scaling_sync_brings_results_back(tmp_path, capsys):
    bucket = tmp_path / "bucket" / "sw"
    _run(bucket / "runs" / "a", steps=(5,))
    _run(bucket / "runs" / "b", result=False)  # still training
    rundir.write_manifest(bucket, {"source": "experiments/sw.py", "runs": [{"run_id": "a"}, {"run_id": "b"}]})
    sweep_dir = tmp_path / "sweeps" / "sw"
    sync.write_cloud_record(sweep_dir, str(bucket))
    assert sync.sync_main([str(sweep_dir)]) == 0
    assert "synced 2 runs" in capsys.readouterr().out
    assert rundir.read_result(sweep_dir / "runs" / "a")["status"] == "ok"
    assert not (sweep_dir / "runs" / "a" / "checkpoints").exists()
    states = {r["run_id"]: r["state"] for r in local.sweep_status(sweep_dir)}
    assert states["a"] == "done" and states["b"] != "done"
    assert sync.sync_main([str(sweep_dir), "--checkpoints"]) == 0
    assert (sweep_dir / "runs" / "a" / "checkpoints" / "5" / sync.COMMIT).exists()


def test_sync_errors_are_one_line(tmp_path, capsys):
    assert sync.sync_main([str(tmp_path / "nowhere")]) == 2
    assert "cloud.json not found" in capsys.readouterr().err
    assert sync.sync_main([str(tmp_path / "s"), "--from", str(tmp_path / "missing")]) == 2
    assert "no such bucket path" in capsys.readouterr().err
