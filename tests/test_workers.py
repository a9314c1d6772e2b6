"""Warm workers (launch/workers.py, scaling/worker.py): a worker process takes run after run with
the same results as a fresh process per run, and a kill -9 of the worker mid-run loses nothing.

The real trainer on tiny models: two seeds of one shape, 16 steps each, a checkpoint every 4.
Bit-identity is the tolerance (as in test_chaos): same config, seed, data order and XLA build, and a
resume restores the exact state, so any difference is a worker or resume bug.
"""
import json
import os
import re
import signal

import pytest

from launch import local, sweep
from scaling import rundir
from test_chaos import SWEEP, _science

STEPS, EVERY = 16, 4


@pytest.fixture(scope="module")
def specs(corpus_cache, tmp_path_factory):
    path = tmp_path_factory.mktemp("workers") / "tiny.py"
    path.write_text(SWEEP.format(cache=corpus_cache, every=EVERY, tokens=8 * 32 * STEPS))
    out = sweep.expand(sweep.load_sweep(path))
    assert len(out) == 2
    return out


@pytest.fixture(scope="module")
def fresh_processes(specs, tmp_path_factory):
    """The reference: the same sweep, one fresh `python -m scaling train` process per run."""
    sweep_dir = tmp_path_factory.mktemp("fresh")
    assert local.LocalBackend(sweep_dir, warm=False).run(specs) == {s.run_id: "ok" for s in specs}
    return sweep_dir


def _same_runs(got_dir, want_dir, specs) -> None:
    for s in specs:
        got, want = local.run_dir_of(got_dir, s.run_id), local.run_dir_of(want_dir, s.run_id)
        assert _science(rundir.read_result(got)) == _science(rundir.read_result(want)), s.run_id
        rows, ref_rows = rundir.read_metrics(got), rundir.read_metrics(want)
        assert [_science(r) for r in rows] == [_science(r) for r in ref_rows], s.run_id


def test_warm_worker_runs_like_fresh_processes_and_a_kill9_of_it_loses_nothing(specs, fresh_processes, tmp_path):
    """The worker is SIGKILLed at run 0's step 10: that attempt is recorded as killed; a fresh worker
    runs run 1 and then resumes run 0 from its last checkpoint (4 or 8: saves are asynchronous), and
    both runs end bit for bit as the fresh-process ones."""
    sweep_dir, killed = tmp_path / "sw", []

    def on_event(e):
        if e.kind == "output" and e.run_id == specs[0].run_id and e.line.startswith(f"step 10/{STEPS} ") \
                and not killed:
            pid = json.loads((local.run_dir_of(sweep_dir, e.run_id) / rundir.LAUNCH).read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    out = local.LocalBackend(sweep_dir, on_event=on_event).run(specs)
    assert killed and out == {s.run_id: "ok" for s in specs}
    _same_runs(sweep_dir, fresh_processes, specs)
    r0, r1 = [json.loads((local.run_dir_of(sweep_dir, s.run_id) / rundir.LAUNCH).read_text()) for s in specs]
    assert [h["state"] for h in r0["history"]] == ["failed", "ok"] and r0["worker"] == r1["worker"] == "warm"
    assert r0["history"][0]["error"].startswith(f"killed by SIGKILL (warm worker pid {killed[0]})")
    assert r1["history"][-1]["pid"] == r0["history"][-1]["pid"] != killed[0]  # one worker ran both, in turn
    log = (local.run_dir_of(sweep_dir, specs[0].run_id) / rundir.TRAIN_LOG).read_text()
    assert re.search(r"resumed from checkpoint at step [48]\n", log.split("=== try 2")[1])
    assert "\x1e" not in log and "compiling the train step" in log  # no end frame in the run's log


def test_a_failed_job_is_recorded_with_its_exit_code_and_retires_its_worker(tmp_path):
    """An invalid config makes `scaling train` exit 2 inside the worker: the end frame carries the 2,
    the attempt is failed with the trainer's message, and the retry gets a fresh worker."""
    from test_local import make_specs

    out = local.LocalBackend(tmp_path / "sw", max_attempts=2).run(make_specs(1))
    assert out == {"r0": "failed"}
    launch = json.loads((local.run_dir_of(tmp_path / "sw", "r0") / rundir.LAUNCH).read_text())
    assert [h["exit_code"] for h in launch["history"]] == [2, 2] and launch["worker"] == "warm"
    assert launch["error"].startswith("exit code 2; last output: ")
    assert launch["history"][0]["pid"] != launch["history"][1]["pid"]
