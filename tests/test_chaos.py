"""Chaos: a real sweep killed with SIGKILL at random moments, rerun to completion, equals an uninterrupted one.

A 2-run sweep of tiny models (the real trainer, through `python -m cli sweep` and launch.local) is
run once without interruption (the reference), then in another directory it is started and its
whole process group (the sweep process and its trainer child) is killed with SIGKILL after a
seeded random delay, KILLS times, and finally rerun to completion. Then, per run:
  - every metrics.jsonl row equals the reference's row for row (steps, losses, grad norms, lr,
    FLOPs, tokens: everything but the wall-clock fields), bit for bit;
  - result.json equals the reference in every science field (losses, N, D, FLOPs, ...), bit for bit;
  - every checkpoint the trainer's Checkpointer lists restores, none was moved aside as damaged, a
    step directory it does not list is one it names as incomplete (a kill mid-save or mid-deletion:
    skipped, never restored from), and the newest one holds exactly the reference's final parameters
    and optimizer state;
  - the run is finished ok (none lost).
Where each kill landed (the checkpoints and metrics rows each run had) is printed (pytest -s).

Bit-identity is the right tolerance: same config, seed, data order, device count and XLA build;
resume restores the exact state and data position, so any difference is a resume bug.
"""
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from scaling import rundir

REPO = pathlib.Path(__file__).resolve().parents[1]
SEED, KILLS = 12, 4
STEPS, EVERY = 24, 4  # optimizer steps per run; a checkpoint every EVERY steps (and the last)
TIMING = {"time_s", "tokens_per_s", "mfu", "wall_time_s",  # wall-clock fields and what was timed: differ
          "elapsed_s", "timed_s", "timed_tokens"}

SWEEP = """
import ml_collections
def get_config():
    c = ml_collections.ConfigDict()
    c.data = dict(seq_len=32, cache_dir={cache!r})
    c.train = dict(batch_size=8, log_every=1, eval_every=15, eval_tokens=8 * 32 * 4, peak_flops=1e11)
    c.optim = dict(warmup_steps=5)
    c.mesh = dict(num_devices=1)
    c.checkpoint = dict(every_steps={every}, keep=2)
    c.sweep = s = ml_collections.ConfigDict()
    s.kind = "grid"
    s.tokens = ({tokens},)
    s.seeds = (0, 1)  # two runs of one shape: the second reuses the first's compiled steps
    s.shapes = dict(explicit=((2, 16),), head_dim=8)
    return c
"""


def _sweep(config, sweep_dir, log) -> subprocess.Popen:
    """`python -m cli sweep` in its own process group (so one killpg reaches the trainer child too)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "cli", "sweep", str(config), "--sweep-dir", str(sweep_dir)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _ckpt_steps(run_dir) -> list[str]:
    d = run_dir / "checkpoints"
    return sorted((p.name for p in d.iterdir()), key=lambda n: (len(n), n)) if d.is_dir() else []


def _where(sweep_dir) -> dict:
    """Per run: checkpoint directories present, last metrics step, finished or not."""
    out = {}
    if not (pathlib.Path(sweep_dir) / rundir.RUNS).is_dir():  # the sweep has not started a run yet
        return out
    for rd in rundir.run_dirs(sweep_dir):
        row = rundir.last_metrics_row(rd) or {}
        out[rd.name] = {"checkpoints": _ckpt_steps(rd), "metrics_step": row.get("step"),
                        "finished": rundir.is_finished(rd)}
    return out


def _checkpointer(ckpt_dir: pathlib.Path, notices: list | None = None):
    """The trainer's Checkpointer, read-only (it moves nothing); its notices of skipped steps go to `notices`."""
    from scaling.checkpoint import Checkpointer

    log = notices.append if notices is not None else print
    return Checkpointer(ckpt_dir, every_steps=EVERY, keep=2, read_only=True, log=log)


def _restore(ckpt_dir: pathlib.Path, step: int):
    """(state, meta) of one checkpoint through the trainer's Checkpointer, shapes from its own metadata."""
    import jax
    import orbax.checkpoint as ocp

    from scaling.checkpoint import STATE

    tree = ocp.StandardCheckpointHandler().metadata(ckpt_dir / str(step) / STATE).tree
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), tree)
    with _checkpointer(ckpt_dir) as ck:
        return ck.restore(step, abstract)


def _science(d):
    """`d` without its wall-clock fields, at any depth."""
    if isinstance(d, dict):
        return {k: _science(v) for k, v in d.items() if k not in TIMING}
    return d


def _progress(sweep_dir) -> int:
    """Training steps done over all runs, as far as metrics.jsonl shows."""
    return sum(STEPS if w["finished"] else (w["metrics_step"] or 0) for w in _where(sweep_dir).values())


@pytest.mark.slow
def test_sigkilled_sweep_reruns_to_the_uninterrupted_result(tmp_path, corpus_cache):
    t_start = time.time()
    config = tmp_path / "chaos.py"
    config.write_text(SWEEP.format(cache=corpus_cache, every=EVERY, tokens=8 * 32 * STEPS))
    log = open(tmp_path / "sweeps.log", "ab")

    t0 = time.time()
    assert _sweep(config, tmp_path / "ref", log).wait(timeout=600) == 0, (tmp_path / "sweeps.log").read_text()
    t_ref = time.time() - t0

    # Each kill waits until the sweep has made a random amount of total progress (a sorted uniform
    # target over both runs' steps), then a further random 0-1.5 s, so kills land during start-up
    # (when the target was already reached), mid-step and mid-checkpoint alike.
    rng = random.Random(SEED)
    targets = sorted(rng.randrange(0, 2 * STEPS) for _ in range(KILLS))
    kills, landed = [], 0
    for k, target in enumerate(targets):
        proc = _sweep(config, tmp_path / "chaos", log)
        while proc.poll() is None and _progress(tmp_path / "chaos") < target:
            time.sleep(0.05)
        extra = rng.uniform(0, 1.5)
        try:
            proc.wait(timeout=extra)
            kills.append(f"kill {k + 1} (target {target} steps + {extra:.2f}s): the sweep had already finished")
            continue
        except subprocess.TimeoutExpired:
            pass
        where = _where(tmp_path / "chaos")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        landed += 1
        kills.append(f"kill {k + 1} (target {target} steps + {extra:.2f}s): " + "; ".join(
            f"{rid}: {w['metrics_step'] or 0} steps logged, checkpoints {w['checkpoints']}"
            + (", finished" if w["finished"] else "") for rid, w in where.items()))
    final = _sweep(config, tmp_path / "chaos", log)
    rc = final.wait(timeout=600)
    log.close()
    assert rc == 0, (tmp_path / "sweeps.log").read_text()[-3000:]

    print(f"\nchaos: reference sweep {t_ref:.1f}s; {KILLS} SIGKILLs of the sweep's process group (seed {SEED}):")
    for kill in kills:
        print(f"  {kill}")

    assert landed >= 1, "no kill landed before the sweep finished: the test exercised nothing"
    ref_runs = {rd.name: rd for rd in rundir.run_dirs(tmp_path / "ref")}
    chaos_runs = {rd.name: rd for rd in rundir.run_dirs(tmp_path / "chaos")}
    assert len(ref_runs) == 2 and set(chaos_runs) == set(ref_runs)  # none lost, none extra
    for rid, ref in ref_runs.items():
        rd = chaos_runs[rid]
        got, want = rundir.read_result(rd), rundir.read_result(ref)
        assert got["status"] == want["status"] == "ok" and got["metrics_lost"] == []
        assert _science(got) == _science(want), rid
        rows, ref_rows = rundir.read_metrics(rd), rundir.read_metrics(ref)
        assert [r["step"] for r in ref_rows if r["split"] == "train"] == list(range(1, STEPS + 1))
        assert [_science(r) for r in rows] == [_science(r) for r in ref_rows], rid  # no row lost or repeated

        steps, notices = _ckpt_steps(rd), []
        assert not [s for s in steps if ".corrupt" in s], f"{rid}: checkpoints moved aside as damaged {steps}"
        with _checkpointer(rd / "checkpoints", notices) as ck:
            listed = ck.all_steps()
        unlisted = [s for s in steps if s.isdigit() and int(s) not in listed]
        assert [n.split(" in ")[0] for n in notices] == [f"checkpoint {s}" for s in unlisted], (steps, notices)
        assert listed[-1] == STEPS
        for s in listed:  # each checkpoint it lists restores
            _restore(rd / "checkpoints", s)
        state, meta = _restore(rd / "checkpoints", STEPS)
        ref_state, ref_meta = _restore(ref / "checkpoints", STEPS)
        assert _science(meta) == _science(ref_meta)
        import jax
        same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), state, ref_state)
        assert all(jax.tree.leaves(same)), rid
        history = json.loads((rd / rundir.LAUNCH).read_text())["history"]
        print(f"  {rid}: {len(history)} attempts recorded "
              f"({', '.join(h['state'] for h in history)}); checkpoints left {steps}"
              + "".join(f"\n    {n}" for n in notices))
    print(f"chaos test wall time {time.time() - t_start:.1f}s")


def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one_and_matches(tiny_config, tmp_path, capsys):
    """The trainer, resumed after its newest checkpoint (15) was truncated on disk, says so in one
    line, moves it aside, resumes from 10, and ends with the metrics of an uninterrupted run (the
    rows 11-15 logged before the damage are redone, not kept twice)."""
    from scaling.train import train
    from test_checkpoint import truncate_array_files

    tiny_config.checkpoint.update(every_steps=5, keep=2)
    tiny_config.train.log_every = 1
    train(tiny_config, tmp_path / "full", verbose=False)
    assert train(tiny_config, tmp_path / "run", stop_after_steps=15, verbose=False)["status"] == "stopped"
    ckdir = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckdir.iterdir()) == ["10", "15"]
    truncate_array_files(ckdir / "15")
    capsys.readouterr()
    assert train(tiny_config, tmp_path / "run", verbose=True)["status"] == "ok"
    out = capsys.readouterr()
    said = [ln for ln in (out.out + out.err).splitlines() if "checkpoint 15" in ln]
    assert len(said) == 1 and "does not restore" in said[0] and "15.corrupt" in said[0], out
    assert (ckdir / "15.corrupt").is_dir()
    rows = [_science(r) for r in rundir.read_metrics(tmp_path / "run")]
    assert rows == [_science(r) for r in rundir.read_metrics(tmp_path / "full")]
    assert _science(rundir.read_result(tmp_path / "run")) == _science(rundir.read_result(tmp_path / "full"))
