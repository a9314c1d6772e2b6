"""Optimizer: AdamW with global-norm clipping, LR schedules, weight-decay mask, μP LR scaling.

Schedules (all with linear warmup from 0 over `warmup_steps`):
- cosine: decays from lr to lr·min_lr_ratio over exactly the run's remaining steps — Chinchilla found a
  cosine cycle longer than the run overestimates the loss of intermediate-length runs, so each run of a
  sweep gets a schedule matched to its own length.
- wsd (warmup-stable-decay): constant lr, then a decay to the floor over the last n = round(decay_fraction
  · steps) steps, so cooldowns can branch from a shared stable phase (scaling/branch.py). Over the decay,
  step k of n (k = 0 .. n; k = n is the run's last step) runs at lr(t) with t = k / n and
    linear:  lr(t) = floor + (lr - floor) · (1 - t)
    1-sqrt:  lr(t) = floor + (lr - floor) · (1 - sqrt(t))     (Hägele et al. 2024, "Scaling Laws and
             Compute-Optimal Training Beyond Fixed Training Durations")
  (optim.decay_shape). The steps before the decay, 1 .. steps - n counted from 1, all run at lr after
  warmup: the branch point of scaling.config.branch_step.
- constant: warmup, then lr.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scaling.config import DECAY_SHAPES, SCHEDULES, decay_steps


# Schedule kinds as the traced int32 code ScheduleArgs.kind (SCHEDULES names them in the config).
_KIND_CODE = {"constant": 0, "wsd": 1, "cosine": 2}


class ScheduleArgs(NamedTuple):
    """Everything a run's LR schedule depends on, as scalar arrays: the jitted train step takes them as
    inputs, not as compile-time constants, so runs that differ only in their length, warmup, schedule
    kind, decay or lr (a trunk and each of its branches; standalone runs of other D) share one compiled
    step (scaling/trainer.py). Built on the host by `schedule_args` (float64 arithmetic, rounded once
    to float32, as Python-float constants in a jitted formula are); with a traced lr (the packed step)
    the same arithmetic runs in float32. Step counts are int32, values float32."""
    kind: object
    """0 constant, 1 wsd, 2 cosine (_KIND_CODE)."""
    sqrt_decay: object
    """wsd: 1 for the 1-sqrt decay shape, 0 for linear."""
    warmup: object
    """Warmup steps W: steps 0 .. W-1 ramp linearly to lr."""
    ramp_steps: object
    """max(W - 1, 1): the ramp's transition steps (the ramp reaches lr at step W - 1)."""
    inv_ramp_steps: object
    """1 / ramp_steps in float32 (see `lr_at` for why reciprocals)."""
    decay_start: object
    """wsd: steps after warmup at the constant lr before the decay starts (max(last - n, 0))."""
    decay_steps: object
    """wsd: decay steps n (config.decay_steps); cosine: steps from the end of warmup to the last step."""
    inv_decay_steps: object
    """1 / decay_steps in float32."""
    lr: object
    """The peak lr."""
    ramp_delta: object
    """lr / W - lr: the ramp's start minus its end (0 when W <= 1: the ramp is lr itself)."""
    floor: object
    """lr * min_lr_ratio: where wsd decays to."""
    lr_minus_floor: object
    """lr - floor."""
    alpha: object
    """cosine: min_lr_ratio."""
    one_minus_alpha: object
    """cosine: 1 - min_lr_ratio."""


def schedule_args(optim_cfg, total_steps: int) -> ScheduleArgs:
    """The schedule of a run of total_steps steps (the module docstring's formulas) as ScheduleArgs."""
    kind = optim_cfg.schedule
    if kind not in _KIND_CODE:
        raise ValueError(f"optim.schedule={kind!r}: must be one of {SCHEDULES}")
    if optim_cfg.decay_shape not in DECAY_SHAPES:
        raise ValueError(f"optim.decay_shape={optim_cfg.decay_shape!r}: must be one of {DECAY_SHAPES}")
    lr, ratio, warmup = optim_cfg.lr, optim_cfg.min_lr_ratio, optim_cfg.warmup_steps
    floor = lr * ratio
    last = max(total_steps - 1 - warmup, 1)  # steps from the end of warmup to the final step
    n_decay = decay_steps(optim_cfg, total_steps) if kind == "wsd" else last
    f32 = lambda x: x if isinstance(x, jax.Array) else np.float32(x)  # noqa: E731  (a traced lr stays traced)
    return ScheduleArgs(
        kind=np.int32(_KIND_CODE[kind]), sqrt_decay=np.int32(optim_cfg.decay_shape == "1-sqrt"),
        warmup=np.int32(warmup), ramp_steps=np.int32(max(warmup - 1, 1)), inv_ramp_steps=_inverse(max(warmup - 1, 1)),
        decay_start=np.int32(max(last - n_decay, 0)), decay_steps=np.int32(n_decay), inv_decay_steps=_inverse(n_decay),
        lr=f32(lr),
        ramp_delta=f32(lr / warmup - lr if warmup > 1 else 0.0 * lr), floor=f32(floor),
        lr_minus_floor=f32(lr - floor), alpha=f32(ratio), one_minus_alpha=f32(1 - ratio))


def _inverse(n: int) -> np.float32:
    """1/n rounded as XLA rounds the reciprocal of a float32 constant divisor."""
    return np.float32(1) / np.float32(n)


def lr_at(a: ScheduleArgs, step):
    """lr at step `step` = 0 .. total_steps-1 (int32, traced or not) of the schedule `a`; jit-safe. Every
    kind is computed and the run's selected, so one compiled program serves all kinds. The operations
    and their order are those of the optax schedules this replaces (linear_schedule for the ramp and
    the linear decay, cosine_decay_schedule, join_schedules), with one exception that keeps the values
    bit-identical to theirs: where those divide by a step count, a compile-time constant there that XLA
    turns into a multiplication by its float32 reciprocal, this multiplies by that reciprocal."""
    step = jnp.asarray(step, jnp.int32)
    # warmup: step s of W uses lr·(s+1)/W, so the very first update is not zero
    ramp = a.ramp_delta * (1 - jnp.clip(step, 0, a.ramp_steps) * a.inv_ramp_steps) + a.lr
    k = step - a.warmup  # steps since the end of warmup
    # wsd: lr until decay_start, then the decay over decay_steps (held at the floor after)
    d = k - a.decay_start
    linear = a.lr_minus_floor * (1 - jnp.clip(d, 0, a.decay_steps) * a.inv_decay_steps) + a.floor
    sqrt = a.floor + a.lr_minus_floor * (1.0 - jnp.sqrt(jnp.clip(d * a.inv_decay_steps, 0.0, 1.0)))
    wsd = jnp.where(k < a.decay_start, a.lr, jnp.where(a.sqrt_decay == 1, sqrt, linear))
    # cosine from lr to lr·alpha over the steps after warmup
    kc = jnp.minimum(k, a.decay_steps.astype(jnp.float32))
    cosine = a.lr * (a.one_minus_alpha * (0.5 * (1 + jnp.cos(jnp.pi * kc * a.inv_decay_steps))) + a.alpha)
    main = jnp.where(a.kind == 1, wsd, jnp.where(a.kind == 2, cosine, a.lr))
    return jnp.where(step < a.warmup, ramp, main)


def make_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
    """lr at step s = 0 .. total_steps-1 (the steps that run); the last step runs at the floor."""
    args = schedule_args(optim_cfg, total_steps)
    return lambda step: lr_at(args, step)


def _path_names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def is_embedding(path) -> bool:
    return any(name in ("embed", "tok_embed", "embedding", "lm_head", "unembed") for name in _path_names(path))


def decay_mask(params, decay_embeddings: bool):
    """True where weight decay applies: matrices only (no norms/biases), embeddings if asked."""
    def rule(path, x):
        if x.ndim < 2:
            return False
        return decay_embeddings or not is_embedding(path)
    return jax.tree_util.tree_map_with_path(rule, params)


def mup_lr_multipliers(params, d_model: int, base_d_model: int):
    """μP for Adam: hidden (matrix, non-embedding) learning rates scale as base_width / width."""
    ratio = base_d_model / d_model

    def rule(path, x):
        return ratio if (x.ndim >= 2 and not is_embedding(path)) else 1.0
    return jax.tree_util.tree_map_with_path(rule, params)


def scale_by_tree(multipliers) -> optax.GradientTransformation:
    """Multiply each update leaf by a fixed per-leaf constant."""
    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

    return optax.GradientTransformation(init, update)


def make_optimizer(config, params, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW(schedule) after global-norm clipping for a run of total_steps steps; returns (transform, schedule)."""
    schedule = make_schedule(config.optim, total_steps)
    return optimizer_chain(config, params, schedule), schedule


def optimizer_chain(config, params, schedule: optax.Schedule) -> optax.GradientTransformation:
    """The transform with lr from `schedule` (count -> lr; the jitted trainer's reads traced ScheduleArgs).
    params: only their tree, paths and ranks are read (weight-decay mask, μP multipliers)."""
    o = config.optim
    parts = []
    if o.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(o.clip_norm))
    parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
    if o.parametrization == "mup":
        parts.append(scale_by_tree(mup_lr_multipliers(params, config.model.d_model, o.base_d_model)))
    if o.weight_decay > 0:
        parts.append(optax.add_decayed_weights(o.weight_decay, mask=decay_mask(params, o.decay_embeddings)))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts)
