"""scaling.train.train on device meshes: the same loss curve on 1 device and on DP / FSDP /
DP x FSDP x TP meshes, exact resume on a sharded mesh, resume onto fewer devices, clear mesh
errors, and a two-process (multi-host) run that matches the single-process one."""
import json
import shutil

import numpy as np
import pytest

from scaling import config as cfg_lib
from scaling.metrics import read_metrics
from scaling.train import train
from test_distributed import run_processes  # tests/ is on sys.path (rootdir conftest)

STEPS = 20
# float32 everywhere. Sharding only changes the order of reductions (over batch rows, d_model,
# d_ff or heads); measured, the per-step train loss of every mesh stays within 2.4e-7 relative
# of the 1-device curve over 20 AdamW steps. 1e-5 is a ~40x margin that still catches any real
# layout bug (a wrongly sharded or double-counted gradient moves the loss by >1e-3 in a step).
RTOL = 1e-5


def sharded_config(cache_dir, data=-1, fsdp=1, model=1, num_devices=0):
    """A 20-step run on the embedded corpus (bytes), d=32, 1 layer, 2 heads, batch 8 x 32.
    (One layer: compilation dominates these runs, and a second layer adds no new layout.)"""
    c = cfg_lib.defaults()
    c.data.update(cache_dir=cache_dir, seq_len=32)
    c.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2)
    c.train.update(batch_size=8, tokens=8 * 32 * STEPS, log_every=1, eval_every=10,
                   eval_tokens=8 * 32 * 2, peak_flops=1e11)
    c.optim.update(warmup_steps=5, lr=3e-3)
    c.mesh.update(data=data, fsdp=fsdp, model=model, num_devices=num_devices)
    c.checkpoint.update(every_steps=5, keep=2)
    return c


def curve(run_dir, split="train"):
    return [(r["step"], r["loss"]) + ((r["grad_norm"],) if split == "train" else ())
            for r in read_metrics(run_dir) if r["split"] == split]


def losses(run_dir, split="train"):
    return np.array([row[1] for row in curve(run_dir, split)])


MESHES = {"1 device": dict(num_devices=1), "(8,1,1)": dict(data=8),
          "(1,8,1)": dict(data=1, fsdp=8), "(2,2,2)": dict(data=2, fsdp=2, model=2)}


@pytest.fixture(scope="module")
def full_runs(corpus_cache, tmp_path_factory):
    """Uninterrupted 20-step runs on each mesh: name -> run dir."""
    root = tmp_path_factory.mktemp("sharded_runs")
    runs = {}
    for name, mesh in MESHES.items():
        runs[name] = root / name
        result = train(sharded_config(corpus_cache, **mesh), runs[name], verbose=False)
        assert result["status"] == "ok" and result["step"] == STEPS
    return runs


@pytest.fixture(scope="module")
def stopped_222(corpus_cache, tmp_path_factory):
    """A (2,2,2) run preempted after step 10 (checkpoint saved, no result.json)."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    out = train(sharded_config(corpus_cache, data=2, fsdp=2, model=2), run, stop_after_steps=10,
                verbose=False)
    assert out["status"] == "stopped" and not (run / "result.json").exists()
    return run


@pytest.mark.slow
def test_loss_curves_agree_across_meshes(full_runs):
    ref = losses(full_runs["1 device"])
    assert len(ref) == STEPS and ref[-1] < ref[0] - 1.0  # it learns (~5.5 -> ~4.0 nats/token)
    ref_eval = losses(full_runs["1 device"], "eval")
    for name in ("(8,1,1)", "(1,8,1)", "(2,2,2)"):
        np.testing.assert_allclose(losses(full_runs[name]), ref, rtol=RTOL, err_msg=name)
        np.testing.assert_allclose(losses(full_runs[name], "eval"), ref_eval, rtol=RTOL, err_msg=name)
        result = json.loads((full_runs[name] / "result.json").read_text())
        assert result["num_devices"] == 8


@pytest.mark.slow
def test_resume_on_sharded_mesh_is_bit_identical(full_runs, stopped_222, corpus_cache, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(stopped_222, run)
    assert train(sharded_config(corpus_cache, data=2, fsdp=2, model=2), run,
                 verbose=False)["status"] == "ok"
    assert curve(run) == curve(full_runs["(2,2,2)"])  # exact: same mesh, same programs
    assert curve(run, "eval") == curve(full_runs["(2,2,2)"], "eval")


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [dict(data=1, fsdp=2, model=2, num_devices=4),
                                  dict(num_devices=1)], ids=["4 devices (1,2,2)", "1 device"])
def test_checkpoint_from_8_devices_resumes_on_fewer(full_runs, stopped_222, corpus_cache, tmp_path,
                                                    mesh):
    """The checkpoint of a (2,2,2) run, restored into a run on 4 devices or 1: params and
    optimizer state are resharded on restore, and the rest of the curve matches the
    uninterrupted 8-device run to float tolerance (a different mesh reorders reductions)."""
    run = tmp_path / "moved"
    run.mkdir()
    for item in ("checkpoints", "metrics.jsonl"):  # a new run dir (its own config) + the state
        src = stopped_222 / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, run / item)
    result = train(sharded_config(corpus_cache, **mesh), run, verbose=False)
    assert result["status"] == "ok" and result["num_devices"] == mesh["num_devices"]
    full = full_runs["(2,2,2)"]
    assert curve(run)[:10] == curve(full)[:10]  # copied rows, untouched
    np.testing.assert_allclose(losses(run)[10:], losses(full)[10:], rtol=RTOL)
    np.testing.assert_allclose(losses(run, "eval"), losses(full, "eval"), rtol=RTOL)


def test_mesh_that_does_not_fit_the_devices_is_refused(corpus_cache, tmp_path):
    with pytest.raises(ValueError, match=r"mesh \(data=-1, fsdp=1, model=3\).*does not divide the 8"):
        train(sharded_config(corpus_cache, model=3), tmp_path / "m3", verbose=False)
    failed = json.loads((tmp_path / "m3" / "result.json").read_text())
    assert failed["status"] == "failed" and "model=3" in failed["error"]


def test_heads_not_divisible_by_model_axis_names_the_parameters(corpus_cache, tmp_path):
    # 2 heads on a 4-way model axis: the query and output projections of every layer are named
    with pytest.raises(ValueError) as e:
        train(sharded_config(corpus_cache, data=2, model=4), tmp_path / "h", verbose=False)
    msg = str(e.value)
    for w in ("wq", "wo"):
        assert f"blocks/0/attn/{w}:" in msg, msg
    assert "has size 2, not divisible by mesh axis 'model'=4" in msg


def test_batch_not_divisible_by_data_axes_is_refused(corpus_cache, tmp_path):
    c = sharded_config(corpus_cache, data=-1)
    c.train.update(batch_size=12, tokens=12 * 32 * 10)
    with pytest.raises(ValueError, match=r"train.batch_size=12 is not divisible by .*=8"):
        train(c, tmp_path / "b", verbose=False)


TWO_PROCESS_MESH = dict(data=2, fsdp=2, model=2)
CHILD = """
import sys
from scaling.train_cli import main
sys.exit(main(["--config", CONFIG, "--workdir", RUN, "--quiet"] + EXTRA))
"""


@pytest.mark.slow
def test_two_process_run_resumes_and_matches_single_process(full_runs, corpus_cache, tmp_path):
    """Two CPU processes x 4 devices = the same 8-device (2,2,2) mesh as the single-process
    run; each process feeds its half of every batch. The job is preempted after step 10 and
    relaunched (both processes restore their shards and their own data-iterator position).
    Same curve as one process to float tolerance (the cross-process all-reduces run in gloo,
    in another order than XLA's in-process ones)."""
    cfg_path = tmp_path / "config.json"
    config = sharded_config(corpus_cache, **TWO_PROCESS_MESH)
    cfg_path.write_text(json.dumps(config.to_dict()))
    run = tmp_path / "two"
    script = CHILD.replace("CONFIG", repr(str(cfg_path))).replace("RUN", repr(str(run)))
    run_processes(script.replace("EXTRA", "['--stop-after-steps', '10']"), n=2,
                  devices_per_process=4, timeout=400)
    assert not (run / "result.json").exists()
    # both processes wrote their Grain iterator position into the checkpoint
    data_dir = run / "checkpoints" / "10" / "data"
    assert sorted(p.name for p in data_dir.glob("*.json")) == ["process_0-of-2.json",
                                                               "process_1-of-2.json"]
    run_processes(script.replace("EXTRA", "[]"), n=2, devices_per_process=4, timeout=400)
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "ok" and result["process_count"] == 2 and result["num_devices"] == 8
    full = full_runs["(2,2,2)"]
    assert [r[0] for r in curve(run)] == list(range(1, STEPS + 1))
    np.testing.assert_allclose(losses(run), losses(full), rtol=RTOL)
    np.testing.assert_allclose(losses(run, "eval"), losses(full, "eval"), rtol=RTOL)
