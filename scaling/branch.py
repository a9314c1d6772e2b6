"""WSD cooldown branches: a run that starts from a shared trunk's checkpoint instead of step 0.

A WSD run of S steps runs at the peak lr (after warmup) up to its branch point b = S - n_decay
(scaling.config.branch_step) and decays after it. A *trunk* is the same config with optim.schedule
'constant' (same warmup: the same lr at every step up to b) trained past the branch points of all its
branches, checkpointing at each (checkpoint.keep_steps, kept whatever checkpoint.keep says). A *branch*
is an ordinary run whose config says train.branch = (trunk id, b): on its first start (no checkpoint of
its own) it restores the trunk's checkpoint at b — params, optimizer state, step, data-iterator position
and host state — and runs its own decay to S. Its metrics file gets the trunk's rows up to b (marked
"from_trunk": true), so its curve is whole, and its result.json is that of the standalone run plus a
`branch` record (`record`).

What a trunk and its branches share is `trunk_key` (one definition, used by the sweep planner to group
runs and by the branch to check the trunk it restores). This module imports no JAX at module level, so
a planner can use it.
"""
import math
import pathlib

import ml_collections

from scaling import config as cfg_lib
from scaling import rundir

# Keys a branch may differ in from its trunk (and its sibling branches): the length and the decay.
_BRANCH_KEYS = (("train", "tokens"), ("train", "branch"), ("optim", "schedule"), ("optim", "decay_fraction"),
                ("optim", "decay_shape"), ("optim", "min_lr_ratio"))
# Trunk metrics rows keep these fields; a branch marks the rows it copied with FROM_TRUNK.
FROM_TRUNK = "from_trunk"


class BranchError(ValueError):
    """A branch that cannot start from its trunk (missing or other trunk); the message names it."""


def trunk_key(config) -> str:
    """What a trunk shares with every branch of it: the run's identity without its length and decay."""
    import json

    d = cfg_lib.science(config)
    for section, key in _BRANCH_KEYS:
        d.get(section, {}).pop(key, None)
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def trunk_steps(branch_points: list[int], log_every: int) -> int:
    """The trunk's length: the last branch point rounded up to a whole log interval, so the trunk's
    final (forced) train row is one a standalone run also writes and no checkpoint at a branch point
    holds a host state that differs from the standalone run's."""
    return log_every * math.ceil(max(branch_points) / log_every)


def trunk_config(branch_config, branch_points: list[int]) -> ml_collections.ConfigDict:
    """The trunk of runs sharing `branch_config`'s trunk_key: constant lr after the same warmup, long
    enough for every branch point, checkpointing (and keeping) each of them."""
    c = ml_collections.ConfigDict(branch_config.to_dict())
    steps = trunk_steps(branch_points, c.train.log_every)
    c.train.tokens = steps * c.train.batch_size * c.data.seq_len
    c.train.branch = ml_collections.ConfigDict({"trunk": "", "step": 0})
    c.optim.schedule = "constant"
    neutral = cfg_lib.defaults().optim  # no decay here: the decay keys at their defaults (one trunk id)
    c.optim.update(decay_fraction=neutral.decay_fraction, decay_shape=neutral.decay_shape,
                   min_lr_ratio=neutral.min_lr_ratio)
    c.checkpoint.keep_steps = tuple(sorted(set(branch_points)))
    c.meta.budget = 0.0
    return cfg_lib.resolve(c)


def branch_config(config, trunk_id: str) -> ml_collections.ConfigDict:
    """`config` (a WSD run) as a branch of trunk `trunk_id`, at its own branch point."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.train.branch = ml_collections.ConfigDict(
        {"trunk": trunk_id, "step": cfg_lib.branch_step(c.optim, cfg_lib.num_steps(c))})
    return c


def trunk_checkpoints(trunk_dir: pathlib.Path) -> pathlib.Path:
    """The trunk's checkpoint directory: its checkpoint.dir if set, else TRUNK/checkpoints."""
    cfg = cfg_lib.load(trunk_dir / rundir.CONFIG)
    return pathlib.Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else trunk_dir / rundir.CHECKPOINTS


def restore(config, trunk_dir: pathlib.Path, abstract_state, data_iter) -> tuple[int, object, dict]:
    """(b, state, meta) of the trunk's checkpoint at the branch point b; the data iterator is set to the
    trunk's position there. The meta's host clock is zeroed: the branch's wall time and throughput are
    its own. BranchError (one line) when the trunk or that checkpoint is missing or is another trunk."""
    from scaling.checkpoint import Checkpointer

    b = config.train.branch
    where = f"branch of trunk {b.trunk!r} at step {b.step}"
    if not (trunk_dir / rundir.CONFIG).is_file():
        raise BranchError(f"{where}: no trunk run at {trunk_dir} (train the trunk first, or pass --trunk-dir)")
    trunk_cfg = cfg_lib.load(trunk_dir / rundir.CONFIG)
    if trunk_key(trunk_cfg) != trunk_key(config):
        raise BranchError(f"{where}: {trunk_dir} holds another trunk (its config differs in more than the "
                          "length and the decay)")
    ckpt_dir = trunk_checkpoints(trunk_dir)
    ckpt = Checkpointer(ckpt_dir, every_steps=1, keep=1, read_only=True) if ckpt_dir.is_dir() else None
    try:
        if ckpt is None or b.step not in ckpt.all_steps():
            raise BranchError(f"{where}: trunk checkpoint {ckpt_dir / str(b.step)} is missing (the trunk has not "
                              "reached it, did not keep it, or its checkpoints were deleted after its branches "
                              f"finished); run the trunk first, or delete {trunk_dir} to train it again")
        state, meta = ckpt.restore(b.step, abstract_state, data_iter)
    finally:
        if ckpt is not None:
            ckpt.close()
    host = dict(meta.get("host") or {})
    host.update(elapsed_s=0.0, timed_s=0.0, timed_tokens=0)
    return b.step, state, {**meta, "host": host}


def trunk_rows(config, trunk_dir: pathlib.Path) -> list[dict]:
    """The trunk's metrics rows up to the branch point that a standalone run writes too (train rows every
    log_every, eval rows every eval_every: not the trunk's own final forced rows), marked FROM_TRUNK."""
    t, b = config.train, config.train.branch.step
    due = {"train": t.log_every, "eval": t.eval_every}
    return [{**r, FROM_TRUNK: True} for r in rundir.read_metrics(trunk_dir)
            if r.get("step", 0) <= b and r.get("split") in due and r["step"] % due[r["split"]] == 0]


def executed_fraction(config) -> float:
    """The fraction of a run's steps it executes itself: 1 for an ordinary run (or a config without
    train.branch), (S - b) / S for a branch."""
    b = config.get("train", {}).get("branch") or {}
    if not b.get("trunk"):
        return 1.0
    steps = cfg_lib.num_steps(config)
    return (steps - b["step"]) / steps if steps > 0 else 1.0


def record(config, tokens_per_step: int, flops_per_token: float) -> dict:
    """The result's `branch` record: trunk id, branch step and what the branch itself executed."""
    b = config.train.branch
    steps = cfg_lib.num_steps(config) - b.step
    return {"trunk": b.trunk, "step": b.step, "steps_executed": steps,
            "flops_executed": flops_per_token * steps * tokens_per_step,
            "note": "flops_executed: exact training FLOPs of the branch's own steps (the trunk's shared steps "
                    "excluded); wall_time_s and tokens_per_s are the branch's own"}
