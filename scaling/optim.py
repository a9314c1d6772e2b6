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
import jax
import jax.numpy as jnp
import optax

from scaling.config import DECAY_SHAPES, SCHEDULES, decay_steps


def make_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
    """lr at step s = 0 .. total_steps-1 (the steps that run); the last step runs at the floor."""
    lr, floor = optim_cfg.lr, optim_cfg.lr * optim_cfg.min_lr_ratio
    warmup = optim_cfg.warmup_steps
    last = max(total_steps - 1 - warmup, 1)  # steps from the end of warmup to the final step
    kind = optim_cfg.schedule
    if kind == "cosine":
        main = optax.cosine_decay_schedule(lr, last, alpha=optim_cfg.min_lr_ratio)
    elif kind == "wsd":
        n_decay = decay_steps(optim_cfg, total_steps)
        main = optax.join_schedules(
            [optax.constant_schedule(lr), _decay(optim_cfg.decay_shape, lr, floor, n_decay)], [max(last - n_decay, 0)])
    elif kind == "constant":
        main = optax.constant_schedule(lr)
    else:
        raise ValueError(f"optim.schedule={kind!r}: must be one of {SCHEDULES}")
    if warmup == 0:
        return main
    # step s of warmup uses lr·(s+1)/warmup so the very first update is not zero.
    ramp = optax.linear_schedule(lr / warmup, lr, warmup - 1) if warmup > 1 else optax.constant_schedule(lr)
    return optax.join_schedules([ramp, main], [warmup])


def _decay(shape: str, lr: float, floor: float, n: int) -> optax.Schedule:
    """lr at decay step k = 0 .. n (then held at the floor): the shapes of the module docstring."""
    if shape == "linear":
        return optax.linear_schedule(lr, floor, n)
    if shape == "1-sqrt":
        return lambda k: floor + (lr - floor) * (1.0 - jnp.sqrt(jnp.clip(k / n, 0.0, 1.0)))
    raise ValueError(f"optim.decay_shape={shape!r}: must be one of {DECAY_SHAPES}")


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
    """AdamW(schedule) after global-norm clipping; returns (transform, schedule)."""
    o = config.optim
    schedule = make_schedule(o, total_steps)
    parts = []
    if o.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(o.clip_norm))
    parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
    if o.parametrization == "mup":
        parts.append(scale_by_tree(mup_lr_multipliers(params, config.model.d_model, o.base_d_model)))
    if o.weight_decay > 0:
        parts.append(optax.add_decayed_weights(o.weight_decay, mask=decay_mask(params, o.decay_embeddings)))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts), schedule
