"""Device mesh, logical-axis rules and divisibility checks: how one model is laid out on N devices.

The model names each parameter dimension with a *logical* axis ('embed', 'mlp', 'heads', 'kv',
'vocab', ...). This module decides where those go on a 3-axis device mesh:

    data   pure data parallelism: batch split, parameters replicated
    fsdp   batch split AND parameters' 'embed' dimension split (ZeRO-3 / FSDP style)
    model  tensor parallelism: 'mlp', 'heads', 'kv', 'vocab' dimensions split

so DP, FSDP, TP and any combination are one config change (`mesh.data/fsdp/model`). The batch is
split over ('data', 'fsdp'). Axes of size 1 are dropped from the rules, so the specs we print
only mention axes that really split something.

`validate` runs before anything compiles and names every parameter whose dimension does not
divide its mesh axis, in one error (XLA's own message names neither the parameter nor the rule).

Typical use (train.py's make_trainer):

    mesh = make_mesh(cfg.mesh)
    rules = logical_rules(mesh, cfg.model)
    validate(abstract_model, mesh, rules)                      # before anything compiles
    model = build_model(cfg.model, seed, mesh, rules)          # parameters placed by the rules
    param_shardings = jax.tree.map(lambda x: x.sharding, nnx.split(model)[1])
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from scaling.memory import MESH_AXES as AXES, mesh_shape  # JAX-free: the planner resolves meshes too

BATCH_AXES = ("data", "fsdp")  # the global batch is split over these (DP x FSDP)

# logical axis -> mesh axis. Every logical name the model may use must appear here: flax passes
# unknown names through unchanged, which then fail as unknown mesh axes.
_RULES = (
    ("vocab", "model"),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", "model"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    # activations (the model constrains its residual stream x_BTD): batch over DP x FSDP, the rest replicated
    ("batch", BATCH_AXES),
    ("seq", None),
    ("act_embed", None),
)


def _get(cfg: Any, key: str) -> Any:
    if isinstance(cfg, Mapping):
        if key not in cfg:
            raise KeyError(f"mesh config lacks key {key!r} (expected keys: data, fsdp, model, num_devices)")
        return cfg[key]
    if not hasattr(cfg, key):
        raise KeyError(f"mesh config lacks key {key!r} (expected keys: data, fsdp, model, num_devices)")
    return getattr(cfg, key)


def select_devices(mesh_cfg: Any, devices: Sequence[Any] | None = None) -> list[Any]:
    """The devices the mesh uses: all visible (mesh.num_devices=0) or the first k."""
    devices = list(jax.devices() if devices is None else devices)
    k = _get(mesh_cfg, "num_devices")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"mesh.num_devices={k!r}: must be 0 (all devices) or a positive int")
    if k > len(devices):
        raise ValueError(f"mesh.num_devices={k}: only {len(devices)} devices are visible")
    return devices[:k] if k else devices


def make_mesh(mesh_cfg: Any, devices: Sequence[Any] | None = None) -> Mesh:
    """A Mesh with axes ('data', 'fsdp', 'model'), all AxisType.Auto (Explicit breaks ordinary
    models: embedding gathers and FSDP matmuls need sharding propagation)."""
    devs = select_devices(mesh_cfg, devices)
    shape = mesh_shape(mesh_cfg, len(devs))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devs)


def logical_rules(mesh_or_cfg: Mesh | Any | None = None,
                  model_cfg: Any | None = None) -> tuple[tuple[str, Any], ...]:
    """(logical axis, mesh axis or None) pairs for `nnx.logical_axis_rules`.

    Given a Mesh (or a mesh config, resolved against the visible devices), mesh axes of size 1
    are replaced by None: sharding over them is a no-op, and leaving them out keeps specs
    readable. With no argument, the full rules are returned.

    Given the model config, key/value heads that do not divide the 'model' axis (multi-query
    attention, or few GQA groups) are replicated instead of sharded: K/V projections are small,
    and splitting one head across devices would not be tensor parallelism anyway. Query heads
    are never silently replicated; `validate` reports them.
    """
    if mesh_or_cfg is None:
        sizes = {a: 2 for a in AXES}  # keep every rule
    elif isinstance(mesh_or_cfg, Mesh):
        sizes = dict(mesh_or_cfg.shape)
    else:
        devs = select_devices(mesh_or_cfg)
        sizes = dict(zip(AXES, mesh_shape(mesh_or_cfg, len(devs))))

    def keep(axis):
        if axis is None:
            return None
        if isinstance(axis, str):
            return axis if sizes.get(axis, 1) > 1 else None
        kept = tuple(a for a in axis if sizes.get(a, 1) > 1)
        return kept if len(kept) > 1 else (kept[0] if kept else None)

    rules = [(name, keep(axis)) for name, axis in _RULES]
    if model_cfg is not None and int(_get_model(model_cfg, "n_kv_heads")) % sizes.get("model", 1):
        rules = [(n, None if n == "kv" else a) for n, a in rules]
    return tuple(rules)


def _get_model(cfg: Any, key: str) -> Any:
    return cfg[key] if isinstance(cfg, Mapping) else getattr(cfg, key)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a [B, T] token batch: rows over ('data', 'fsdp'), positions replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, None))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding (scalars: step, rng key, loss)."""
    return NamedSharding(mesh, P())


def _leaf_specs(tree: Any, rules: Sequence[tuple[str, Any]]):
    """Yield (path str, shape, PartitionSpec, logical names or None) for every array leaf."""
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_var)
    with nnx.logical_axis_rules(tuple(rules)):
        for path, leaf in leaves:
            name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
            if is_var(leaf):
                value = leaf.get_value()
                if not hasattr(value, "shape"):
                    continue
                spec = nnx.spmd.get_var_pspec(leaf)
                meta = leaf.get_metadata()
                logical = tuple(meta["out_sharding"]) if meta.get("out_sharding") else None
                yield name, tuple(value.shape), spec, logical
            elif isinstance(getattr(leaf, "sharding", None), NamedSharding):
                yield name, tuple(leaf.shape), leaf.sharding.spec, None


def validate(abstract_state: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] | None = None) -> None:
    """Raise one ValueError naming EVERY parameter whose sharded dimension does not divide its
    mesh axis (or that names a mesh axis that does not exist). Run it on `nnx.eval_shape(...)`
    output (or a real model/state) before compiling.

    Leaves may be nnx Variables (their logical names are mapped by `rules`) or arrays /
    ShapeDtypeStructs carrying a NamedSharding.
    """
    rules = logical_rules(mesh) if rules is None else tuple(rules)
    sizes = dict(mesh.shape)
    problems = []
    for name, shape, spec, logical in _leaf_specs(abstract_state, rules):
        if spec is None:
            continue
        if len(spec) > len(shape):
            problems.append(f"  {name}: spec {spec} has {len(spec)} entries for a rank-{len(shape)} "
                            f"array of shape {shape}")
            continue
        for dim, entry in enumerate(spec):
            if entry is None:
                continue
            axes = (entry,) if isinstance(entry, str) else tuple(entry)
            unknown = [a for a in axes if a not in sizes]
            lname = f" (logical {logical[dim]!r})" if logical and dim < len(logical) else ""
            if unknown:
                problems.append(
                    f"  {name}: dim {dim}{lname} maps to unknown mesh axis {unknown[0]!r}; mesh axes "
                    f"are {tuple(sizes)} (add a rule for the logical name in scaling/sharding.py)")
                continue
            n = math.prod(sizes[a] for a in axes)
            if shape[dim] % n:
                axis_desc = " x ".join(f"{a!r}={sizes[a]}" for a in axes)
                if len(axes) > 1:
                    axis_desc += f" (= {n})"
                problems.append(
                    f"  {name}: dim {dim}{lname} has size {shape[dim]}, not divisible by mesh axis "
                    f"{axis_desc}; shape {shape}")
    if problems:
        mesh_desc = ", ".join(f"{a}={s}" for a, s in sizes.items())
        raise ValueError(
            f"{len(problems)} parameter(s) cannot be sharded on mesh ({mesh_desc}):\n"
            + "\n".join(problems)
            + "\nChange the mesh (mesh.fsdp / mesh.model) or the model dimensions so each divides.")


def validate_batch(global_batch: int, mesh: Mesh, process_count: int = 1) -> None:
    """The global batch (sequences) must split evenly over the batch axes and over processes."""
    n = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if global_batch <= 0:
        raise ValueError(f"train.batch_size={global_batch}: must be positive")
    if global_batch % n:
        raise ValueError(
            f"train.batch_size={global_batch} is not divisible by the batch-parallel mesh size "
            f"data*fsdp={mesh.shape['data']}*{mesh.shape['fsdp']}={n}; use a multiple of {n}")
    if global_batch % process_count:
        raise ValueError(
            f"train.batch_size={global_batch} is not divisible by the {process_count} processes; "
            f"use a multiple of {process_count} so each process feeds an equal share")
