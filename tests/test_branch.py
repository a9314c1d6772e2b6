"""WSD trunks with cooldown branches (scaling/branch.py, launch/branches.py).

One shape at two token counts (20 and 28 steps: branch points 16 and 22, trunk of 25 steps) is trained
both ways in-process: one standalone WSD run per D (the reference), and one trunk + two branches. The
trunk is stopped and resumed before, between and after its branch points, and one branch is stopped
and resumed mid-cooldown. Bit-identity is the right tolerance: up to its branch point a WSD run computes
exactly what the constant-lr trunk computes (the same lr value at every step, the same data, the same
compiled arithmetic on CPU) and the branch restores the trunk's exact state, so any difference is a bug.
"""
import dataclasses
import sys

import ml_collections
import pytest

from launch import branches, local, sweep
from scaling import branch, rundir
from scaling import config as cfg_lib
from scaling.train import train

TIMING = {"time_s", "tokens_per_s", "mfu", "wall_time_s"}  # wall-clock fields: differ run to run
SWEEP = """
import ml_collections
def get_config():
    c = ml_collections.ConfigDict()
    c.data = dict(seq_len=32, cache_dir={cache!r})
    c.train = dict(batch_size=8, log_every=5, eval_every=10, eval_tokens=8 * 32 * 4, peak_flops=1e11)
    c.optim = dict(warmup_steps=5, schedule={schedule!r}, decay_shape="1-sqrt")
    c.mesh = dict(num_devices=1)
    c.checkpoint = dict(every_steps=10, keep=1)
    c.sweep = s = ml_collections.ConfigDict()
    s.kind = "grid"
    s.tokens = (8 * 32 * 20, 8 * 32 * 28)
    s.shapes = dict(explicit={shapes!r}, head_dim=8)
    s.branches = True
    return c
"""


def _sweep_file(path, cache, schedule="wsd", shapes=((2, 16),)):
    path.write_text(SWEEP.format(cache=cache, schedule=schedule, shapes=shapes))
    return path


@pytest.fixture(scope="module")
def both(tmp_path_factory, corpus_cache):
    """(specs, plan, reference sweep dir, branched sweep dir), every run finished."""
    root = tmp_path_factory.mktemp("branch")
    specs = sweep.expand(sweep.load_sweep(_sweep_file(root / "grid.py", corpus_cache)))
    ref, br = root / "ref", root / "br"
    local.write_manifest(ref, specs, "grid.py")
    for s in specs:
        train(s.config, rundir.run_dir_of(ref, s.run_id), verbose=False)
    plan = branches.plan(specs)
    (trunk,) = plan.trunks
    local.write_manifest(br, plan.branches, "grid.py")
    tdir = rundir.trunk_dir(br, trunk.spec.run_id)
    for stop in (12, 19, 23):  # before, between and after the branch points 16 and 22
        assert train(trunk.spec.config, tdir, stop_after_steps=stop, verbose=False)["status"] == "stopped"
    train(trunk.spec.config, tdir, verbose=False)
    kept = branch.trunk_checkpoints(tdir)
    kept = sorted(int(p.name) for p in kept.iterdir() if p.name.isdigit())
    short, long_ = plan.branches
    train(short.config, rundir.run_dir_of(br, short.run_id), verbose=False)
    assert train(long_.config, rundir.run_dir_of(br, long_.run_id), stop_after_steps=25,
                 verbose=False)["status"] == "stopped"
    train(long_.config, rundir.run_dir_of(br, long_.run_id), verbose=False)
    return specs, plan, ref, br, kept


def _rows(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING | {branch.FROM_TRUNK}} for r in rundir.read_metrics(run_dir)]


def test_plan_groups_one_trunk_at_the_wsd_branch_points(both):
    specs, plan, *_ = both
    (trunk,) = plan.trunks
    assert [b.config.train.branch.step for b in plan.branches] == [16, 22]  # S - round(0.2 S)
    assert trunk.spec.steps == 25 and trunk.spec.config.optim.schedule == "constant"
    assert tuple(trunk.spec.config.checkpoint.keep_steps) == (16, 22)
    # FLOPs: the trunk's 25 steps + the branches' 4 + 6 against 20 + 28 from step 0 (exact FLOPs per token)
    per_step = specs[0].flops / specs[0].steps
    assert trunk.executed_flops == pytest.approx(per_step * (25 + 4 + 6), rel=1e-12)
    assert trunk.standalone_flops == pytest.approx(per_step * 48, rel=1e-12)
    assert "27%" in branches.savings_table(plan)  # 1 - 35/48


def test_trunk_keeps_its_branch_points_whatever_keep_says(both):
    *_, kept = both
    assert {16, 22} <= set(kept) and 25 in kept  # keep=1: only the newest of the periodic ones besides


def test_branch_equals_the_standalone_wsd_run_bit_for_bit(both):
    specs, plan, ref, br, _ = both
    for s, b in zip(specs, plan.branches):
        got, want = rundir.run_dir_of(br, b.run_id), rundir.run_dir_of(ref, s.run_id)
        assert _rows(got) == _rows(want)  # every train and eval row, the trunk's copied ones included
        step = b.config.train.branch.step
        assert [r["step"] for r in rundir.read_metrics(got) if r.get(branch.FROM_TRUNK)] == \
               [r["step"] for r in rundir.read_metrics(want) if r["step"] <= step]
        a, r = rundir.read_result(got), rundir.read_result(want)
        for key in ("final_eval_loss", "final_train_loss", "final_eval_bpb", "tokens", "flops", "n_params", "step"):
            assert a[key] == r[key], key
        assert a["branch"]["trunk"] == plan.trunks[0].spec.run_id and a["branch"]["step"] == step
        assert a["branch"]["flops_executed"] == pytest.approx(a["flops"] * (s.steps - step) / s.steps, rel=1e-12)


def test_results_table_is_the_same_either_way(both):
    from analysis import results

    _, _, ref, br, _ = both
    a, b = results.load(ref), results.load(br)
    cols = ["n_params", "n_params_nonembed", "tokens", "flops", "flops_6nd", "loss", "final_train_loss", "budget"]
    assert len(a) == len(b) == 2
    assert a[cols].equals(b[cols])


def test_release_deletes_trunk_checkpoints_only_when_every_branch_finished(both, tmp_path):
    _, plan, _, br, _ = both
    (trunk,) = plan.trunks
    ckpts = branch.trunk_checkpoints(rundir.trunk_dir(br, trunk.spec.run_id))
    undone = dataclasses.replace(plan, branches=plan.branches,
                                 trunks=[dataclasses.replace(trunk, branch_ids=trunk.branch_ids + ("absent",))])
    assert branches.release(undone, br, say=lambda _: None) == [] and ckpts.is_dir()
    assert branches.release(plan, br, say=lambda _: None) == [trunk.spec.run_id] and not ckpts.exists()


def test_missing_trunk_or_trunk_checkpoint_is_one_line_naming_it(both, tmp_path):
    specs, plan, _, br, _ = both
    trunk = plan.trunks[0].spec.run_id
    c = ml_collections.ConfigDict(specs[0].config.to_dict())
    c.train.tokens = 24 * 8 * 32  # branch point 19: a step the trunk never kept
    other = cfg_lib.resolve(branch.branch_config(c, trunk))
    with pytest.raises(branch.BranchError) as e:
        train(other, tmp_path / "run", verbose=False, trunk_dir=rundir.trunk_dir(br, trunk))
    assert f"trunk checkpoint {branch.trunk_checkpoints(rundir.trunk_dir(br, trunk)) / '19'} is missing" in str(e.value)
    with pytest.raises(branch.BranchError, match="no trunk run at"):
        train(other, tmp_path / "run2", verbose=False)  # by the layout: tmp_path/../trunks/runs/<id>: none


def test_branch_whose_trunk_failed_is_failed_with_that_reason(both, tmp_path):
    _, plan, *_ = both
    said = []
    fail_trunks = (sys.executable, "-c", "import sys; sys.exit(1 if '/trunks/' in sys.argv[1] else 0)", "{run_dir}")
    res = branches.execute(plan, tmp_path, lambda d: local.LocalBackend(d, command=fail_trunks, max_attempts=1),
                           say=said.append)
    assert dict(res) == {b.run_id: "failed" for b in plan.branches}
    assert all("its trunk" in line and plan.trunks[0].spec.run_id in line for line in said)
    assert not (tmp_path / rundir.RUNS).exists()  # no branch was started


@pytest.mark.parametrize("overrides, rule", [
    (["--config.optim.schedule=cosine"], "optim.schedule='wsd'"),
    (["--config.sweep.rules.warmup_fraction=0.1"], "sweep.rules.warmup_fraction"),
    (["--config.sweep.rules.batch_ref=8", "--config.sweep.rules.batch_exponent=0.5"], "sweep.rules.batch_exponent"),
    (["--backend", "skypilot"], "local backend only"),
])
def test_sweep_refuses_branches_it_cannot_share(tmp_path, corpus_cache, capsys, overrides, rule):
    from launch.cli import sweep_main

    path = _sweep_file(tmp_path / "grid.py", corpus_cache)
    assert sweep_main([str(path), "--dry-run", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scaling sweep: error: sweep.branches=True") and rule in err and "\n" not in err


def test_identity_keeps_old_run_ids_and_checks_the_branch_step():
    c = cfg_lib.resolve(cfg_lib.defaults())
    science = cfg_lib.science(c)
    assert "decay_shape" not in science["optim"] and "branch" not in science["train"]  # ids made before them
    c.optim.decay_shape = "1-sqrt"
    assert cfg_lib.science(c)["optim"]["decay_shape"] == "1-sqrt"  # but a 1-sqrt run is another run
    c.optim.schedule = "wsd"
    steps = cfg_lib.num_steps(c)
    c.train.branch.update(trunk="trunk-x", step=cfg_lib.branch_step(c.optim, steps) - 1)
    with pytest.raises(cfg_lib.ConfigError, match="train.branch.step"):
        cfg_lib.validate(c)
    c.train.branch.step += 1
    cfg_lib.validate(c)


# A stand-in warm worker (the protocol of scaling/worker.py, no training): each job writes an ok result
# naming the worker's pid, then its end frame.
STAND_IN_WORKER = """
import json, os, pathlib, sys
for line in sys.stdin:
    req = json.loads(line)
    run_dir = pathlib.Path(req["argv"][req["argv"].index("--workdir") + 1])
    (run_dir / {result!r}).write_text(json.dumps({{"status": "ok", "pid": os.getpid()}}))
    os.write(1, ("\\n" + {job_end!r} + " " + req["id"] + " " + json.dumps({{"rc": 0}}) + "\\n").encode())
"""


def test_branches_run_on_the_warm_workers_of_their_trunks(tmp_path, corpus_cache, monkeypatch):
    """The trunk phase's warm worker takes the branches too (its compiled steps serve them), and the
    pool is closed when the sweep is done."""
    from launch import workers
    from scaling import worker

    plan = branches.plan(sweep.expand(sweep.load_sweep(_sweep_file(tmp_path / "grid.py", corpus_cache))))
    stand_in = STAND_IN_WORKER.format(result=rundir.RESULT, job_end=worker.JOB_END)
    monkeypatch.setattr(local, "WORKER_COMMAND", (sys.executable, "-c", stand_in))
    started = []
    real_start = workers.Worker.start.__func__
    monkeypatch.setattr(workers.Worker, "start", classmethod(lambda cls, *a: started.append(a) or real_start(cls, *a)))
    res = branches.execute(plan, tmp_path / "sw", lambda d: local.LocalBackend(d), say=lambda _: None)
    assert dict(res) == {b.run_id: "ok" for b in plan.branches} and len(started) == 1
    pids = {rundir.read_result(rundir.run_dir_of(tmp_path / "sw", b.run_id))["pid"] for b in plan.branches}
    trunk = rundir.read_result(rundir.trunk_dir(tmp_path / "sw", plan.trunks[0].spec.run_id))
    assert pids == {trunk["pid"]}


def test_each_branch_goes_to_the_warm_worker_that_ran_its_trunk(tmp_path, corpus_cache, monkeypatch):
    """Two shapes on two slots: a freed warm worker takes a queued branch of a shape it has run
    (launch.dispatch.SweepLoop.next_job), so every branch runs in its own trunk's worker process."""
    from scaling import worker

    grid = _sweep_file(tmp_path / "grid.py", corpus_cache, shapes=((2, 16), (1, 8)))
    plan = branches.plan(sweep.expand(sweep.load_sweep(grid)))
    assert len(plan.trunks) == 2 and len(plan.branches) == 4
    stand_in = STAND_IN_WORKER.format(result=rundir.RESULT, job_end=worker.JOB_END)
    monkeypatch.setattr(local, "WORKER_COMMAND", (sys.executable, "-c", stand_in))
    # the queue holds the branches trunk by trunk; list them shape-interleaved so that taking the
    # head (the old rule) sends half of them to the other shape's worker
    plan = dataclasses.replace(plan, branches=[plan.branches[i] for i in (0, 2, 1, 3)])
    res = branches.execute(plan, tmp_path / "sw", lambda d: local.LocalBackend(d, parallel=2), say=lambda _: None)
    assert set(res.values()) == {"ok"}
    trunk_pid = {t.spec.shape: rundir.read_result(rundir.trunk_dir(tmp_path / "sw", t.spec.run_id))["pid"]
                 for t in plan.trunks}
    assert len(set(trunk_pid.values())) == 2
    for b in plan.branches:
        assert rundir.read_result(rundir.run_dir_of(tmp_path / "sw", b.run_id))["pid"] == trunk_pid[b.shape], b.run_id


def test_status_lists_the_branches_then_their_trunks(both):
    # `scaling status SWEEP` of a branched sweep: its points, then the trunks they branch from
    _, plan, _, br, _ = both
    table = local.status_table(br)
    points, trunks = table.split("\n\ntrunks (")
    assert all(b.run_id in points for b in plan.branches) and "2 done" in points
    assert plan.trunks[0].spec.run_id in trunks and "1 done, 0 running, 0 failed, 0 pending (of 1)" in trunks


def test_seed_replicates_train_as_packed_trunks_and_packed_branches(both, tmp_path):
    """Two seeds: their trunks are one pack (stopped between the branch points and resumed), their
    branches at each D another (members restore their own trunks). The packed trunk keeps its branch
    points; each branch equals the standalone unpacked WSD run of its seed and D bit for bit (on CPU a
    member differing only in seed runs the unpacked arithmetic: tests/test_packed_train.py), the
    seed-0 ones against `both`'s reference runs, seed 1 against its own standalone runs trained here."""
    from launch import packs
    from scaling.packed_train import train_pack

    specs, _, ref, *_ = both
    cfg = sweep.load_sweep(_sweep_file(tmp_path / "grid.py", specs[0].config.data.cache_dir))
    cfg.sweep.seeds = (0, 1)
    plan = branches.plan(sweep.expand(cfg))
    assert len(plan.trunks) == 2 and len(plan.branches) == 4
    (trunk_pack,) = packs.group([t.spec for t in plan.trunks], 4)  # the trunks differ only in seed
    branch_packs = packs.group(plan.branches, 4)  # per D, the two seeds' branches (their trunks differ)
    assert sorted(len(p) for p in branch_packs) == [2, 2]
    assert all(len({b.config.train.branch.trunk for b in p}) == 2 for p in branch_packs)
    br = tmp_path / "br"
    tdirs = [rundir.trunk_dir(br, t.run_id) for t in trunk_pack]
    stopped = train_pack([t.config for t in trunk_pack], tdirs, stop_after_steps=19, verbose=False)
    assert [r["status"] for r in stopped] == ["stopped", "stopped"]
    train_pack([t.config for t in trunk_pack], tdirs, verbose=False)
    for d in tdirs:
        kept = {int(p.name) for p in branch.trunk_checkpoints(d).iterdir() if p.name.isdigit()}
        assert {16, 22} <= kept
    for p in branch_packs:
        train_pack([b.config for b in p], [rundir.run_dir_of(br, b.run_id) for b in p], verbose=False)
    for b in plan.branches:
        seed = b.config.seed
        standalone = next(s for s in specs if s.tokens == b.tokens)
        want = rundir.run_dir_of(ref, standalone.run_id)
        if seed == 1:
            c = ml_collections.ConfigDict(standalone.config.to_dict())
            c.seed = 1
            want = tmp_path / f"standalone-{b.tokens}"
            train(cfg_lib.resolve(c), want, verbose=False)
        got = rundir.run_dir_of(br, b.run_id)
        assert _rows(got) == _rows(want), b.run_id  # every train and eval row, the trunk's copied ones included
        res = rundir.read_result(got)
        assert res["pack_size"] == 2 and res["branch"]["step"] == b.config.train.branch.step
        assert res["final_eval_loss"] == rundir.read_result(want)["final_eval_loss"]
    losses = {b.config.seed: rundir.read_result(rundir.run_dir_of(br, b.run_id))["final_eval_loss"]
              for b in plan.branches if b.tokens == specs[0].tokens}
    assert abs(losses[0] - losses[1]) > 1e-4  # the seeds really differ
