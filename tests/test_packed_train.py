"""Packed training: K same-shape members in one vmapped step equal their unpacked runs.

Tolerance: a member's losses equal its unpacked run's to rtol 1e-5, not bit for bit. The packed step
computes the same formulas, but constants the unpacked step folds in float64 before rounding once
to float32 (1 - b1, lr / warmup_steps) are float32 arithmetic on vmapped inputs there (<= 1 ulp
apart), and vmap's batched matmuls sum in another order. Over these 12 steps that moves losses by
~1e-7 relative (float32's eps is 1.2e-7); 1e-5 leaves 100x headroom, while anything a packing bug
would change (the seed, data order, lr of a member) moves them by > 1e-3, which each test asserts.
"""
import math
import re
import signal
import subprocess
import sys
import time

import ml_collections
import pytest

from scaling import config as cfg_lib
from scaling import packed_cli, rundir
from scaling.packed_train import train_pack
from scaling.train import train

RTOL = 1e-5
FIELDS = ("loss", "lr", "grad_norm", "bpb", "tokens", "flops")


def member_config(base, **over):
    c = ml_collections.ConfigDict(base.to_dict())
    for dotted, value in over.items():
        *path, key = dotted.split(".")
        node = c
        for p in path:
            node = node[p]
        node[key] = value
    return c


@pytest.fixture(scope="module")
def small(corpus_cache):
    """12 steps of a 1-layer d16 model: log every 3, eval at 6 and 12, checkpoint every 6."""
    c = cfg_lib.defaults()
    c.data.update(cache_dir=corpus_cache, seq_len=32)
    c.model.update(d_model=16, n_layers=1, n_heads=2, n_kv_heads=2)
    c.train.update(batch_size=8, tokens=8 * 32 * 12, log_every=3, eval_every=6, eval_tokens=8 * 32 * 2,
                   peak_flops=1e11)
    c.optim.update(warmup_steps=3, lr=3e-3)
    c.mesh.num_devices = 1
    c.checkpoint.every_steps = 6
    c.track.tensorboard = False
    return c


@pytest.fixture(scope="module")
def members(small):
    """Two members differing in every kind of packed scalar, and their unpacked runs (the references)."""
    a = member_config(small, seed=0)
    b = member_config(small, **{"seed": 1, "optim.lr": 1e-2, "optim.b2": 0.99, "optim.weight_decay": 0.0,
                          "model.init_std": 0.03, "train.z_loss": 0.0})
    return a, b


@pytest.fixture(scope="module")
def references(members, tmp_path_factory):
    out = tmp_path_factory.mktemp("unpacked")
    return [train(c, out / f"m{i}", verbose=False) and out / f"m{i}" for i, c in enumerate(members)]


def _rows(run_dir):
    return rundir.read_metrics(run_dir)


def _assert_equal_runs(packed_dir, ref_dir, rtol=RTOL):
    """Every metrics row and the final result agree: same steps and splits, values to rtol."""
    got, want = _rows(packed_dir), _rows(ref_dir)
    assert [(r["split"], r["step"]) for r in got] == [(r["split"], r["step"]) for r in want]
    for g, w in zip(got, want):
        for k in FIELDS:
            if k in w:
                assert g[k] == pytest.approx(w[k], rel=rtol), (g["split"], g["step"], k)
    rg, rw = rundir.read_result(packed_dir), rundir.read_result(ref_dir)
    assert rg["status"] == rw["status"] == "ok"
    for k in ("final_train_loss", "final_eval_loss", "final_eval_bpb"):
        assert rg[k] == pytest.approx(rw[k], rel=rtol), k
    for k in ("tokens", "n_params", "flops", "config_hash", "seed", "data_seed", "step"):
        assert rg[k] == rw[k], k


def test_members_equal_their_unpacked_runs_and_a_diverging_member_fails_alone(members, references, small,
                                                                              tmp_path):
    a, b = members
    bad = member_config(small, **{"seed": 2, "optim.lr": 1e30, "optim.clip_norm": 0.0, "model.init_std": 1e3})
    dirs = [tmp_path / "a", tmp_path / "bad", tmp_path / "b"]
    results = train_pack([a, bad, b], dirs, verbose=False)
    assert [r["status"] for r in results] == ["ok", "failed", "ok"]
    _assert_equal_runs(dirs[0], references[0])
    _assert_equal_runs(dirs[2], references[1])
    # the tolerance discriminates: the two members' own losses differ far beyond it
    la, lb = (rundir.read_result(d)["final_eval_loss"] for d in (dirs[0], dirs[2]))
    assert abs(la - lb) > 1e3 * RTOL * la
    # the diverged member is recorded as the unpacked trainer records it (tests/test_train.py)
    assert re.fullmatch(r"NonFiniteLossError: non-finite training loss (nan|-?inf) at step \d+; .*",
                        results[1]["error"])
    assert rundir.read_result(dirs[1]) == results[1]
    assert all(math.isfinite(r["loss"]) for r in _rows(dirs[1]))
    # a rerun skips every member: finished ok, or failed with a non-finite loss (it would diverge again)
    again = train_pack([a, bad, b], dirs, verbose=False)
    assert [r.get("wall_time_s") for r in again] == [r.get("wall_time_s") for r in results]


def test_members_differing_in_seed_data_order_init_scale_or_lr_equal_their_runs_bit_for_bit(members, references,
                                                                                           small, tmp_path):
    """On CPU ("map") each member runs the unpacked step's arithmetic: its forward, backward and update
    inside the loop over members, its schedule computed on the host as the unpacked trainer does. So a
    pack whose members differ only in seed, data order, init scale or lr reproduces each member's
    unpacked run exactly (the scalars that enter the optimizer as traced values, b1/b2/eps/weight decay/
    clip/z-loss, are only float-close: the test above). Exactness matters beyond the rtol: over
    thousands of steps, rounding differences of 1 ulp grow into final losses as far apart as two seeds'."""
    a = members[0]
    c = member_config(small, **{"seed": 3, "data.seed": 1, "optim.lr": 6e-3, "model.init_std": 0.03})
    ref_c = tmp_path / "ref_c"
    train(c, ref_c, verbose=False)
    dirs = [tmp_path / "a", tmp_path / "c"]
    train_pack([a, c], dirs, verbose=False)
    for got, want in zip(dirs, (references[0], ref_c)):
        _assert_equal_runs(got, want, rtol=0)
        assert [{k: r[k] for k in FIELDS if k in r} for r in _rows(got)] == \
               [{k: r[k] for k in FIELDS if k in r} for r in _rows(want)]


def test_pack_stopped_mid_run_resumes_to_the_same_losses(members, references, tmp_path, capsys):
    """Through the CLI: stop after step 6 (checkpoints saved, as a kill after them), a member finishes
    unpacked from its own checkpoint (same format), then the rerun pack finishes the other one."""
    paths = []
    for i, c in enumerate(members):
        paths += ["--config", str(tmp_path / f"c{i}.json"), "--workdir", str(tmp_path / f"m{i}")]
        rundir.write_json(tmp_path / f"c{i}.json", c.to_dict())
    assert packed_cli.main([*paths, "--stop-after-steps", "6", "--quiet"]) == 0
    assert not (tmp_path / "m0" / rundir.RESULT).exists()
    assert max(r["step"] for r in _rows(tmp_path / "m1")) == 6
    assert train(members[0], tmp_path / "m0", verbose=False)["status"] == "ok"  # resumed unpacked at step 6
    assert packed_cli.main([*paths, "--quiet"]) == 0  # m0 finished: skipped; m1 resumes at step 6
    for i in range(2):
        _assert_equal_runs(tmp_path / f"m{i}", references[i])
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
def test_pack_sigkilled_mid_run_reruns_to_the_same_losses(members, tmp_path):
    """`scaling train-pack` killed with SIGKILL while it trains (every member has a complete
    checkpoint, none has finished): the rerun resumes every member from its last complete checkpoint
    and ends with the metrics of an uninterrupted pack (no row lost or written twice)."""
    steps = 48  # checkpoints every 6 steps: the kill lands between or during saves and steps
    configs = [member_config(c, **{"train.tokens": 8 * 32 * steps, "train.eval_every": 24}) for c in members]
    ref_dirs = [tmp_path / "ref0", tmp_path / "ref1"]
    train_pack(configs, ref_dirs, verbose=False)
    args = []
    for i, c in enumerate(configs):
        rundir.write_json(tmp_path / f"c{i}.json", c.to_dict())
        args += ["--config", str(tmp_path / f"c{i}.json"), "--workdir", str(tmp_path / f"m{i}")]
    cmd = [sys.executable, "-m", "scaling", "train-pack", *args, "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = [tmp_path / f"m{i}" / rundir.CHECKPOINTS for i in range(2)]
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        done = [[d.name for d in c.iterdir() if d.name.isdigit() and (d / "commit_success.txt").exists()]
                if c.is_dir() else [] for c in ckpt]
        if all(done):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    # the kill came mid-run: a member that had finished would make this test vacuous
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert not any((tmp_path / f"m{i}" / rundir.RESULT).exists() for i in range(2))
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for i in range(2):
        _assert_equal_runs(tmp_path / f"m{i}", ref_dirs[i])


def test_bad_packs_are_one_line_errors(members, small, tmp_path, capsys):
    a, _ = members
    other = member_config(small, **{"model.d_model": 32})
    for i, c in enumerate((a, other)):
        rundir.write_json(tmp_path / f"c{i}.json", c.to_dict())
    args = ["--config", str(tmp_path / "c0.json"), "--workdir", str(tmp_path / "m0"),
            "--config", str(tmp_path / "c1.json"), "--workdir", str(tmp_path / "m1")]
    assert packed_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "model.d_model" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m0").exists()  # nothing trained, nothing left behind
    assert packed_cli.main(args[:4] + ["--config", str(tmp_path / "c0.json"), "--workdir", str(tmp_path / "m0")]) == 2
    assert "given for two members" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        packed_cli.main(args[:6])  # a --config without its --workdir
    assert "one --config per --workdir" in capsys.readouterr().err


def test_vmap_and_per_member_batches_match_the_member_loop(members):
    """The accelerators' path (vmap, batched matmuls) and per-member data streams ([K, B, T] batches)
    give each member what the CPU path (a loop over members, one shared batch) gives it."""
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from scaling import packed_step as ps
    from scaling.model import build_model
    from scaling.optim import make_optimizer

    configs = [cfg_lib.resolve(c) for c in members]
    states = []
    for c in configs:
        graphdef, params = nnx.split(build_model(c.model, c.seed))
        states.append((params, make_optimizer(c, params, 12)[0].init(params)))
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, 256, (2, 8, 32)).astype(np.int32) for _ in range(2))  # (inputs, targets) each

    def losses(loop, per_member, batches):
        step = ps.make_packed_step(configs, graphdef, states[0][0], 12, ps.varying_scalars(configs),
                                   batch_per_member=per_member, loop=loop)
        state = {"params": ps.stack([p for p, _ in states]),
                 "opt_state": ps.stack([ps.retree(o, step.opt_treedef) for _, o in states]),
                 "alive": jnp.ones((2,), bool), "step": jnp.asarray(0, jnp.int32)}
        out = []
        for _ in range(3):  # the third loss depends on two updates
            state, o = step.step_fn(state, *batches)
            out.append(np.asarray(o["loss"]))
        return np.stack(out)  # [steps, K]

    shared_x, shared_y = losses("map", False, x), losses("map", False, y)
    own = losses("vmap", True, (np.stack([x[0], y[0]]), np.stack([x[1], y[1]])))
    np.testing.assert_allclose(own[:, 0], shared_x[:, 0], rtol=RTOL)
    np.testing.assert_allclose(own[:, 1], shared_y[:, 1], rtol=RTOL)
    assert abs(shared_x[-1, 1] - shared_y[-1, 1]) > 1e3 * RTOL  # the batches matter


def test_packs_of_one_shape_at_other_lengths_share_one_compiled_step(members, tmp_path, monkeypatch):
    """The schedule is a traced input (scaling/packed_step.py), so a second pack of the same members'
    shape and scalars at another length traces nothing new in this process."""
    import collections

    from scaling import packed_step, trainer

    monkeypatch.setattr(packed_step, "_PROGRAMS", collections.OrderedDict())  # this process compiled none yet
    configs = [member_config(c, **{"train.tokens": c.train.tokens // 2}) for c in members[:2]]
    before = trainer.trace_counts["packed_train_step"]
    train_pack(configs, [tmp_path / "a0", tmp_path / "a1"], verbose=False)
    assert trainer.trace_counts["packed_train_step"] == before + 1
    before += 1
    configs = [member_config(c, **{"train.tokens": c.train.tokens // 2 + 8 * c.train.batch_size * c.data.seq_len})
               for c in members[:2]]
    train_pack(configs, [tmp_path / "b0", tmp_path / "b1"], verbose=False)
    assert trainer.trace_counts["packed_train_step"] == before
