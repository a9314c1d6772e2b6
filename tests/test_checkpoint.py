"""Orbax checkpoints: round trip with a Grain iterator, keep-N, restore onto other meshes,
and a process killed with SIGKILL in the middle of an async save."""
import itertools
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from scaling import sharding as sh
from scaling.checkpoint import CheckpointError, Checkpointer, CorruptCheckpointError, abstract_of

REPO = pathlib.Path(__file__).resolve().parents[1]


def mesh_of(data, fsdp, model, num_devices=0):
    return sh.make_mesh(dict(data=data, fsdp=fsdp, model=model, num_devices=num_devices))


def make_state(mesh):
    """params sharded FSDP x TP, an AdamW state, a step counter and a typed PRNG key."""
    w = jax.device_put(jnp.arange(8 * 16, dtype=jnp.float32).reshape(8, 16),
                       NamedSharding(mesh, P("fsdp", "model")))
    b = jax.device_put(jnp.linspace(-1, 1, 16), NamedSharding(mesh, P("model")))
    params = {"w": w, "b": b}
    opt = optax.adamw(1e-2)
    grads = jax.tree.map(jnp.ones_like, params)
    opt_state = opt.init(params)
    _, opt_state = opt.update(grads, opt_state, params)  # non-trivial moments
    return {"params": params, "opt_state": opt_state, "step": jnp.int32(7),
            "rng": jax.random.key(42)}


def data_iter():
    ds = grain.MapDataset.source(np.arange(200, dtype=np.int32)).shuffle(seed=3).batch(4)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))


def assert_trees_equal(a, b):
    ka, kb = jax.tree.map(jax.random.key_data, a["rng"]), jax.random.key_data(b["rng"])
    np.testing.assert_array_equal(np.asarray(ka), np.asarray(kb))
    strip = lambda t: {k: v for k, v in t.items() if k != "rng"}  # noqa: E731
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                 strip(a), strip(b))


def test_round_trip_with_grain_iterator_and_donated_arrays(tmp_path):
    mesh = mesh_of(2, 2, 2)
    state = make_state(mesh)
    expected = jax.tree.map(lambda x: x.copy(), state)
    abstract = abstract_of(state)
    it = data_iter()
    for _ in range(3):
        next(it)
    ck = Checkpointer(tmp_path / "ck", every_steps=5, keep=2)
    assert not ck.save(3, state, it)  # 3 % 5 != 0
    assert ck.save(5, state, it, meta={"tokens": 1234, "config_hash": "abc"})
    # training goes on: the iterator advances and the saved buffers are donated (deleted)
    after_save = [next(it) for _ in range(4)]
    jax.tree.map(lambda x: x.delete(), state["params"])
    assert not ck.save(5, expected, it, force=True)  # the final forced save of a saved step
    ck.close()

    ck2 = Checkpointer(tmp_path / "ck", every_steps=5, keep=2)
    assert ck2.latest_step() == 5
    it2 = data_iter()
    restored, meta = ck2.restore(None, abstract, data_iter=it2)
    assert meta == {"tokens": 1234, "config_hash": "abc"}
    assert_trees_equal(restored, expected)
    assert restored["params"]["w"].sharding == expected["params"]["w"].sharding
    assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(expected["opt_state"])
    # the iterator resumes exactly where it was when save() was called
    for want in after_save:
        np.testing.assert_array_equal(next(it2), want)
    ck2.close()


def test_save_schedule_keep_n_and_errors(tmp_path):
    ck = Checkpointer(tmp_path, every_steps=2, keep=2, async_save=False)
    x = {"x": jnp.zeros(3)}
    saved = [s for s in range(1, 10) if ck.save(s, x)]
    assert saved == [2, 4, 6, 8]
    assert ck.save(9, x, force=True)
    assert ck.all_steps() == [8, 9]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["8", "9"]
    with pytest.raises(FileNotFoundError, match=r"checkpoint step 4 not found .* complete steps: \[8, 9\]"):
        ck.restore(4, abstract_of(x))
    with pytest.raises(ValueError, match=r"holds no data iterator state"):
        ck.restore(9, abstract_of(x), data_iter=data_iter())
    ck.close()
    with pytest.raises(FileNotFoundError, match=r"no complete checkpoint"):
        Checkpointer(tmp_path / "empty", every_steps=1, keep=1).restore(None, abstract_of(x))
    with pytest.raises(ValueError, match=r"checkpoint.keep=0"):
        Checkpointer(tmp_path, every_steps=1, keep=0)
    with pytest.raises(ValueError, match=r"checkpoint.every_steps=-1"):
        Checkpointer(tmp_path, every_steps=-1, keep=1)


@pytest.mark.parametrize("target", [(1, 2, 2, 4), (1, 1, 1, 1)])
def test_restore_onto_a_smaller_mesh(tmp_path, target):
    state = make_state(mesh_of(2, 2, 2))  # saved on 8 devices
    expected = jax.tree.map(lambda x: np.asarray(jax.random.key_data(x)) if
                            jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else np.asarray(x),
                            state)
    with Checkpointer(tmp_path, every_steps=1, keep=1) as ck:
        ck.save(1, state)
    mesh = mesh_of(*target)  # 4 devices (fsdp=2, model=2) or a single device
    target_sh = {"params": {"w": NamedSharding(mesh, P("fsdp", "model")),
                            "b": NamedSharding(mesh, P("model"))}}
    abstract = abstract_of(make_state(mesh))  # the new run's own layout
    with Checkpointer(tmp_path, every_steps=1, keep=1) as ck:
        restored, _ = ck.restore(1, abstract)
    w = restored["params"]["w"]
    assert w.sharding == target_sh["params"]["w"]
    assert {d.id for d in w.sharding.device_set} == {d.id for d in mesh.devices.flat}
    np.testing.assert_array_equal(np.asarray(w), expected["params"]["w"])
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(restored["rng"])), expected["rng"])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
                 restored["opt_state"], expected["opt_state"])


KILLED_SAVER = textwrap.dedent("""
    import pathlib, sys, time
    import grain, jax, jax.numpy as jnp, numpy as np
    from scaling.checkpoint import Checkpointer
    ckdir, marker = sys.argv[1], pathlib.Path(sys.argv[2])
    it = iter(grain.MapDataset.source(np.arange(40)).batch(4).to_iter_dataset())
    next(it)
    ck = Checkpointer(ckdir, every_steps=1, keep=3)
    ck.save(1, {"w": jnp.arange(4.0)}, it, meta={"step": 1})
    ck.wait()
    real_get_state = it.get_state
    def stuck_get_state():  # the save of step 2 hangs here, mid-way, until the process is killed
        marker.write_text("inside the save of step 2")
        time.sleep(600)
        return real_get_state()
    it.get_state = stuck_get_state
    big = {"w": jnp.zeros(4), "big": jnp.ones((2**20,))}  # 4 MiB of array files being written too
    ck.save(2, big, it, meta={"step": 2})
    print("SAVE STARTED", flush=True)
    ck.wait()
    print("SAVE DONE", flush=True)
""")


def test_sigkill_during_async_save_restores_previous_complete_checkpoint(tmp_path):
    """SIGKILL lands while step 2 is being saved: deterministically, because the child's data
    iterator blocks inside the save (its state is one of the checkpoint's items) and tells us
    so through a marker file; by then Orbax has created step 2's tmp directory."""
    ckdir, marker = tmp_path / "ck", tmp_path / "inside_save"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVER, str(ckdir), str(marker)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.01)
    tmp_dirs = list(ckdir.glob("2.orbax-checkpoint-tmp*"))
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert marker.exists(), f"child never reached the save: rc={proc.returncode}\n{err.decode()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert b"SAVE DONE" not in out
    # the kill landed mid-save: step 2 exists only as an uncommitted tmp directory
    assert tmp_dirs and all(p.exists() for p in tmp_dirs)
    assert not (ckdir / "2").exists()

    ck = Checkpointer(ckdir, every_steps=1, keep=3)
    assert ck.latest_step() == 1
    it = iter(grain.MapDataset.source(np.arange(40)).batch(4).to_iter_dataset())
    state, meta = ck.restore(None, abstract_of({"w": jnp.zeros(4)}), data_iter=it)
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(4.0))
    assert meta == {"step": 1}
    np.testing.assert_array_equal(next(it), [4, 5, 6, 7])  # step 1 was saved after one batch
    # and the run can go on saving step 2 for real
    assert ck.save(2, {"w": jnp.ones(4)}, force=True)
    ck.close()
    # the new manager deleted the partial directory (in the background; saves wait for it)
    assert not list(ckdir.glob("*.orbax-checkpoint-tmp*"))
    assert Checkpointer(ckdir, every_steps=1, keep=3).latest_step() == 2


# ---------------------------------------------------------------- damaged checkpoints


def truncate_array_files(step_dir: pathlib.Path) -> None:
    """Cut every data file of the state item to half (a copy that stopped midway, a bad disk).
    Small arrays live inline in OCDBT's b-tree nodes, so every `d/` file is cut, not one."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for p in files:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def saved_steps_1_to_3(ckdir, mesh):
    """Checkpoints 1, 2, 3 of make_state with params scaled by the step, saved after `step`
    batches of data_iter; returns {step: (that state, the batch that follows it)}."""
    batches = list(itertools.islice(data_iter(), 4))
    it = data_iter()
    saved = {}
    with Checkpointer(ckdir, every_steps=1, keep=3) as ck:
        for step in (1, 2, 3):
            next(it)
            state = make_state(mesh)
            state["params"] = jax.tree.map(lambda x: x * step, state["params"])
            saved[step] = (jax.tree.map(lambda x: x.copy(), state), batches[step])
            ck.save(step, state, it, meta={"step": step})
            ck.wait()
    return saved


def test_restore_latest_falls_back_past_damaged_checkpoints(tmp_path):
    """Step 3 has a truncated array file, step 2 corrupt metadata JSON: both are reported in
    one line each (step, why, the file for the JSON) and moved aside; step 1 is restored with
    its iterator position; a later Checkpointer sees step 1 only, and saving 2 and 3 again works."""
    mesh = mesh_of(2, 2, 2)
    ckdir = tmp_path / "ck"
    saved = saved_steps_1_to_3(ckdir, mesh)
    truncate_array_files(ckdir / "3")
    (ckdir / "2" / "meta" / "metadata").write_text('{"step": 2,')
    abstract = abstract_of(make_state(mesh))
    lines = []
    it = data_iter()
    with Checkpointer(ckdir, every_steps=1, keep=3) as ck:
        step, state, meta = ck.restore_latest(abstract, it, log=lines.append)
        assert (step, meta) == (1, {"step": 1})
        assert_trees_equal(state, saved[1][0])
        np.testing.assert_array_equal(next(it), saved[1][1])  # the batch after step 1's
        assert ck.all_steps() == [1]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert lines[0].startswith(f"checkpoint 3 in {ckdir} does not restore (")
    assert "moved it aside to 3.corrupt, trying an older one" in lines[0]
    assert lines[1].startswith(f"checkpoint 2: {ckdir / '2' / 'meta' / 'metadata'} is not valid JSON")
    assert sorted(p.name for p in ckdir.iterdir()) == ["1", "2.corrupt", "3.corrupt"]

    with Checkpointer(ckdir, every_steps=1, keep=3) as ck:
        assert ck.latest_step() == 1
        lines.clear()
        assert ck.restore_latest(abstract, log=lines.append)[0] == 1 and lines == []
        for step in (2, 3):
            assert ck.save(step, make_state(mesh), force=True)
    truncate_array_files(ckdir / "3")  # damaged again: its name must not collide
    with Checkpointer(ckdir, every_steps=1, keep=3) as ck:
        assert ck.restore_latest(abstract, log=lines.append)[0] == 2
    assert "moved it aside to 3.corrupt-1" in lines[0]


def test_restore_of_another_state_is_an_error_and_moves_nothing(tmp_path):
    """A checkpoint that holds other shapes (another config) is not damaged: one-line error."""
    ckdir = tmp_path / "ck"
    with Checkpointer(ckdir, every_steps=1, keep=2) as ck:
        ck.save(1, {"w": jnp.zeros((4, 8)), "b": jnp.zeros(8)})
    other = abstract_of({"w": jnp.zeros((4, 6)), "b": jnp.zeros(8)})
    with Checkpointer(ckdir, every_steps=1, keep=2) as ck:
        with pytest.raises(CheckpointError, match=r"checkpoint 1 in .* holds another state than "
                           r"this run's \(2 arrays saved, 2 in the run; first difference: saved "
                           r"\(\(4, 8\), 'float32'\), run \(\(4, 6\), 'float32'\)\)") as e:
            ck.restore_latest(other, log=pytest.fail)
        assert not isinstance(e.value, CorruptCheckpointError)
        assert ck.all_steps() == [1]
    assert sorted(p.name for p in ckdir.iterdir()) == ["1"]


def test_restore_when_every_checkpoint_is_damaged(tmp_path):
    ckdir = tmp_path / "ck"
    x = {"w": jnp.arange(512.0)}
    with Checkpointer(ckdir, every_steps=1, keep=1) as ck:
        assert ck.restore_latest(abstract_of(x)) is None  # no checkpoint: a fresh start
        ck.save(1, x)
    (ckdir / "1" / "meta" / "metadata").write_text("[1, 2]")
    with Checkpointer(ckdir, every_steps=1, keep=1) as ck:
        with pytest.raises(CorruptCheckpointError, match=r"checkpoint 1: .*/1/meta/metadata "
                                                         r"holds a JSON list, not an object"):
            ck.restore(1, abstract_of(x))  # the plain restore names the file too
        lines = []
        with pytest.raises(CheckpointError, match=rf"no checkpoint in {ckdir} restores: steps "
                                                  r"\[1\] are damaged and were moved aside"):
            ck.restore_latest(abstract_of(x), log=lines.append)
        assert len(lines) == 1
    with Checkpointer(ckdir, every_steps=1, keep=1) as ck:
        assert ck.restore_latest(abstract_of(x)) is None  # the rerun starts from step 0


def test_checkpoint_directory_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    for directory in (tmp_path / "file", tmp_path / "file" / "ck"):
        with pytest.raises(FileExistsError, match=rf"checkpoint directory {directory}: "
                                                  rf"{tmp_path / 'file'} is an existing file"):
            Checkpointer(directory, every_steps=1, keep=1)
    assert (tmp_path / "file").read_text() == ""


def test_damaged_data_iterator_state_falls_back(tmp_path):
    """The Grain iterator's saved position is an item too: corrupt JSON there skips the step."""
    ckdir = tmp_path / "ck"
    it = data_iter()
    first = next(it)
    with Checkpointer(ckdir, every_steps=1, keep=2) as ck:
        ck.save(1, {"w": jnp.arange(4.0)}, it)
        ck.wait()
        next(it)
        ck.save(2, {"w": jnp.arange(4.0) * 2}, it)
    (data_file,) = (ckdir / "2" / "data").glob("*.json")
    data_file.write_text("{oops")
    it2, lines = data_iter(), []
    with Checkpointer(ckdir, every_steps=1, keep=2) as ck:
        step, state, _ = ck.restore_latest(abstract_of({"w": jnp.zeros(4)}), it2, log=lines.append)
    assert step == 1 and np.asarray(state["w"]).tolist() == [0, 1, 2, 3]
    ref = data_iter()
    assert np.array_equal(next(ref), first)
    np.testing.assert_array_equal(next(it2), next(ref))  # the position saved with step 1
    assert lines[0].startswith(f"checkpoint 2 in {ckdir} does not restore (JSONDecodeError")


# ---------------------------------------------------------------- interrupted saves and deletions


def _damage_like_an_interrupted_save_or_delete(ckdir: pathlib.Path) -> None:
    """Turn whole steps 8, 12, 16 into what a SIGKILL can leave, and add a killed save's tmp dir and a
    killed removal's leftover: 8 keeps its state item but not meta nor Orbax's step metadata and
    marker (the state seen after a killed keep-N deletion); 12 keeps meta but not state; 16 is
    half-deleted the way Orbax's in-place deletion goes (the step's own files first, then items')."""
    import shutil
    shutil.rmtree(ckdir / "8" / "meta")
    for name in ("commit_success.txt", "_CHECKPOINT_METADATA"):
        (ckdir / "8" / name).unlink()
    shutil.rmtree(ckdir / "12" / "state")
    for path in [ckdir / "16" / "commit_success.txt", ckdir / "16" / "_CHECKPOINT_METADATA",
                 *(p for p in (ckdir / "16" / "state").rglob("*") if p.is_file())]:
        path.unlink()
    shutil.copytree(ckdir / "4" / "state", ckdir / "20.orbax-checkpoint-tmp-1700000000" / "state")
    shutil.copytree(ckdir / "4" / "state", ckdir / "deleting" / "2")


def test_incomplete_step_directories_are_skipped_named_and_removed(tmp_path):
    """Incomplete step directories are not checkpoints: each is named in one line, never listed,
    restored or counted by keep-N, left alone by a read-only Checkpointer and removed by a writable
    one. With keep=2, saving 24 keeps the only whole older checkpoint (4), not an incomplete one."""
    ckdir = tmp_path / "ck"
    x = {"w": jnp.arange(4.0)}
    with Checkpointer(ckdir, every_steps=4, keep=4, async_save=False) as ck:
        for step in (4, 8, 12, 16):
            ck.save(step, jax.tree.map(lambda a: a * step, x), meta={"step": step})
    _damage_like_an_interrupted_save_or_delete(ckdir)
    before = sorted(p.name for p in ckdir.iterdir())

    lines = []
    with Checkpointer(ckdir, every_steps=4, keep=2, read_only=True, log=lines.append) as ck:
        assert ck.all_steps() == [4] and ck.latest_step() == 4
    assert sorted(p.name for p in ckdir.iterdir()) == before  # read-only: nothing moved or removed
    assert [ln.split(" in ")[0] for ln in lines] == ["checkpoint 8", "checkpoint 12", "checkpoint 16"]
    assert all("\n" not in ln and ln.endswith("skipped, left in place (read-only)") for ln in lines)
    assert "(missing commit_success.txt, _CHECKPOINT_METADATA, the meta item: " in lines[0]
    assert "(missing the state item: " in lines[1]
    assert "(missing commit_success.txt, _CHECKPOINT_METADATA, state/commit_success.txt: " in lines[2]

    lines.clear()
    with Checkpointer(ckdir, every_steps=4, keep=2, log=lines.append) as ck:
        assert len(lines) == 3 and all(ln.endswith("skipped, removed") for ln in lines)
        assert ck.all_steps() == [4]
        with pytest.raises(FileNotFoundError, match=r"checkpoint step 8 in .* is incomplete \(missing "
                                                     r"commit_success.txt, .*\); complete steps: \[4\]"):
            ck.restore(8, abstract_of(x))
        step, state, meta = ck.restore_latest(abstract_of(x), log=pytest.fail)  # nothing is "damaged"
        assert (step, meta) == (4, {"step": 4})
        np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(4.0) * 4)
        assert ck.save(24, x, meta={"step": 24})
    assert sorted(p.name for p in ckdir.iterdir()) == ["24", "4"]  # the tmp dir and leftovers gone
    with Checkpointer(ckdir, every_steps=4, keep=2, log=pytest.fail) as ck:
        assert ck.all_steps() == [4, 24]


def test_keep_n_renames_a_step_away_before_removing_it(tmp_path):
    """Orbax deletes a step file by file in place; here keep-N first renames it into deleting/ (one
    atomic rename: a kill leaves no half-deleted `<step>`), removed by the next save or close."""
    ckdir = tmp_path / "ck"
    with Checkpointer(ckdir, every_steps=1, keep=1, async_save=False) as ck:
        ck.save(1, {"w": jnp.zeros(2)})
        ck.save(2, {"w": jnp.ones(2)})
        assert sorted(p.name for p in ckdir.iterdir()) == ["2", "deleting"]
        assert [p.name for p in (ckdir / "deleting").iterdir()] == ["1"]
        ck.save(3, {"w": jnp.ones(2)})
        assert [p.name for p in (ckdir / "deleting").iterdir()] == ["2"]  # 1 removed before saving 3
        assert ck.all_steps() == [3]
    assert sorted(p.name for p in ckdir.iterdir()) == ["3"]
