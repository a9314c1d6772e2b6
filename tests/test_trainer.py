"""The per-process cache of compiled steps (scaling/trainer.py): runs of one shape share one program.

A warm worker trains a WSD trunk and then its branches, or standalone runs of other D, one after
another; they must trace (and so compile) the train and eval steps once, which holds only while the
schedule's step counts stay traced inputs and the cache key leaves them out. Shapes that must not
share (another model, batch, optimizer constant or mesh) must get their own program.
"""
import collections

import pytest

from scaling import config as cfg_lib
from scaling import memory, sharding, trainer
from scaling.optim import ScheduleArgs
from scaling.train import train


def test_runs_of_one_shape_at_other_d_and_schedules_trace_the_steps_once(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "_PROGRAMS", collections.OrderedDict())  # no program from an earlier test
    monkeypatch.setattr(trainer, "trace_counts", collections.Counter())
    long_ = cfg_lib.resolve(tiny_config)
    long_.train.tokens = 8 * 32 * 12
    long_.optim.update(schedule="wsd", decay_shape="1-sqrt")
    short = cfg_lib.resolve(tiny_config)
    short.train.tokens = 8 * 32 * 8  # another D, warmup and schedule: the same program
    short.optim.update(schedule="constant", warmup_steps=3, lr=1e-3)
    a = train(long_, tmp_path / "long", verbose=False)
    b = train(short, tmp_path / "short", verbose=False)
    assert trainer.trace_counts == {"train_step": 1, "eval_step": 1}
    assert len(trainer._PROGRAMS) == 1
    # each run still ran its own schedule: its last train row's lr is its own schedule's last value
    assert (a["step"], b["step"]) == (12, 8)
    rows = {k: _train_rows(tmp_path / k) for k in ("long", "short")}
    assert rows["short"][-1]["lr"] == pytest.approx(1e-3)
    assert rows["long"][-1]["lr"] == pytest.approx(3e-3 * long_.optim.min_lr_ratio)


def _train_rows(run_dir):
    from scaling import rundir
    return [r for r in rundir.read_metrics(run_dir) if r["split"] == "train"]


def test_the_program_key_ignores_the_schedule_and_separates_what_shapes_the_program(tiny_config):
    mesh1 = sharding.make_mesh({"data": -1, "fsdp": 1, "model": 1, "num_devices": 1})
    base = cfg_lib.resolve(tiny_config)

    def key(mesh=mesh1, **changes):
        c = cfg_lib.resolve(tiny_config)
        for dotted, value in changes.items():
            section, name = dotted.split("__")
            c[section][name] = value
        return trainer.program_key(c, mesh, sharding.logical_rules(mesh, c.model))

    same = [key(train__tokens=base.train.tokens * 3), key(optim__warmup_steps=7), key(optim__schedule="wsd"),
            key(optim__lr=1e-2), key(optim__decay_shape="1-sqrt"), key(optim__min_lr_ratio=0.0),
            key(optim__decay_fraction=0.5), key(train__eval_every=3), key()]
    assert len(set(same)) == 1
    other = [key(model__d_model=64), key(model__n_layers=3), key(model__compute_dtype="bfloat16"),
             key(train__batch_size=4), key(data__seq_len=16), key(optim__b1=0.8), key(optim__weight_decay=0.0),
             key(optim__clip_norm=0.0), key(train__z_loss=0.0), key(optim__parametrization="mup"),
             key(mesh=sharding.make_mesh({"data": -1, "fsdp": 1, "model": 1, "num_devices": 2}))]
    assert len(set(other + same[:1])) == len(other) + 1


def test_the_memory_estimate_counts_the_schedule_scalars_the_step_takes():
    assert memory.SCHEDULE_SCALARS == len(ScheduleArgs._fields)
