"""The packed step: K same-shape members trained by one jitted step over a leading member axis.

Parameters and optimizer states carry a leading member axis K. The per-member scalars of
packed.PACKED_KEYS that differ within the pack (lr, Adam's b1/b2/eps, weight decay, clip norm,
z-loss) are per-member float32 inputs [K]; those equal across the pack stay Python constants, exactly as
in the unpacked step. Each member's LR schedule is the unpacked trainer's: its ScheduleArgs,
computed on the host by schedule_args (a [K] array per field), read by scaling.optim.lr_at; so a
packed program does not depend on the pack's length and a warm worker compiles it once for every
pack of one shape (a trunk's branch packs at each D; `_PROGRAMS`, as scaling/trainer.py keeps
unpacked programs).

Numerics. With loop "map" (CPU) each member's forward, backward and optimizer update run inside the
loop over members as the unpacked step runs them, so a member that differs from the others only in
seed, data order, init scale or lr reproduces its unpacked run bit for bit over the tests' runs
(tests/test_packed_train.py, tests/test_branch.py); over the demo's thousands of steps small
differences still appear, <= 4.1e-8 nats/token in final loss (benchmarks/demo_wall.py; op not traced).
Scalars that enter the optimizer as traced values (b1, b2, eps, weight decay, clip norm, z-loss: the
unpacked step folds them as constants), and vmap's batched matmuls and reductions, change the rounding:
equal per step to float32 rounding (rtol 1e-5; ~1e-7 measured), but not over a long run: with the
optimizer vmapped, a 1-ulp difference in the first update grew (1e-9 at step 75, 1e-3 at step 125,
as the model left the unigram plateau) to final eval losses 0.0006-0.049 nats/token apart after 2,100
steps of the demo's L1 d8, more than its exact runs of four init seeds differ (σ(log L) = 0.0033).
Hence the exact "map" path on CPU.

Members with differing train.z_loss compute their loss from the full logits (the fused chunked loss
of model.loss_chunk takes z_loss as a compile-time constant): the same sums in another order.

How the members run inside the step (`loop`): "vmap" batches every op over the member axis (batched
matmuls: what accelerators run best); "map" is a loop over members inside the one compiled step
(jax.lax.map), each member's matmuls plain dots. The trainer uses "map" on CPU: measured on 2 cores
(jax 0.10.2, YNN dot fusions), a batched dot alone is faster than a loop of dots (16 x (1024x8 @
8x256): 1.3 ms vs 3.9 ms), but the whole vmapped step is not (k = 16 L1 d8 members: 0.61x the tokens/s
of separate runs, "map" about 1x), the time going to the batched elementwise, copy and transpose ops
around the dots; a pack still saves each member's per-step dispatch, host and loader overhead there.
Even one model at k times the batch is no faster than batch 16 at the demo's smallest shapes
(benchmarks/packing.py --big-batch: 0.98-1.32x): a CPU step there is per-token work, not overhead.

A member whose loss is NaN/inf at a step is frozen from that step on (its params and optimizer
state keep their last values; `alive` turns false), so nothing non-finite reaches the next step;
members never mix (vmap), so the others train on unaffected.
"""
import collections
import json
import types
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scaling.loss import cross_entropy
from scaling.model import lm_loss, nll_sums
from scaling.optim import decay_mask, lr_at, mup_lr_multipliers, scale_by_tree, schedule_args
from scaling.trainer import SCHEDULE_KEYS, cached_program, trace_counts

# The member scalars that can be vmapped inputs: (config section, key).
SCALARS = (("optim", "lr"), ("optim", "b1"), ("optim", "b2"), ("optim", "eps"),
           ("optim", "weight_decay"), ("optim", "clip_norm"), ("train", "z_loss"))


def varying_scalars(configs) -> dict[str, np.ndarray]:
    """name -> float32[K] for each of SCALARS whose value differs between members (others are
    constants). A member's clip_norm 0 ("no clipping") becomes inf: clipping at inf is the identity."""
    out = {}
    for section, key in SCALARS:
        values = [float(c[section][key]) for c in configs]
        if len(set(values)) > 1:
            if key == "clip_norm":
                values = [v if v > 0 else np.inf for v in values]
            out[key] = np.asarray(values, np.float32)
    return out


def member_optimizer(config, scalars: dict, params, schedule: Callable):
    """One member's transform: make_optimizer's chain with `scalars` (possibly traced) in place of the
    config's values and lr from `schedule` (count -> lr). Its state has the same leaves, in the same
    order, as make_optimizer's for that member (the extra stages — clipping at inf, decay by 0 — hold none)."""
    o = types.SimpleNamespace(**{**config.optim.to_dict(), **{k: v for k, v in scalars.items() if k != "z_loss"}})
    parts = []
    if "clip_norm" in scalars or o.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(o.clip_norm))
    parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
    if o.parametrization == "mup":
        parts.append(scale_by_tree(mup_lr_multipliers(params, config.model.d_model, o.base_d_model)))
    if "weight_decay" in scalars or o.weight_decay > 0:
        parts.append(optax.add_decayed_weights(o.weight_decay, mask=decay_mask(params, o.decay_embeddings)))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts)


class PackedStep(NamedTuple):
    step_fn: Callable  # (state, inputs, targets) -> (state, {"loss", "grad_norm", "lr"}: [K] each); donates state
    eval_fn: Callable  # (params_K, inputs_BT, targets_BT, weights_BT) -> (NLL sums [K], weight sums [K])
    opt_treedef: object  # tree structure of one member's optimizer state in the packed chain


class _Program(NamedTuple):
    """The jitted functions shared by every pack of one program_key in this process."""
    train_step: Callable  # (state, ScheduleArgs [K], scalars_K, inputs, targets) -> (state, metrics)
    eval_step: Callable
    opt_treedef: object


# Compiled packed programs kept per process (least recently used dropped first), as scaling/trainer.py
# keeps unpacked ones: a warm worker that trains pack after pack of one shape (a trunk's branches at
# each D) traces and compiles once.
_PROGRAMS: "collections.OrderedDict[str, _Program]" = collections.OrderedDict()


def program_key(config, scalars, batch_per_member: bool, loop: str) -> str:
    """What a packed program bakes in: the model, the optimizer's constants (not the schedule, which is
    traced ScheduleArgs, nor the varying member scalars, which are inputs), the constant z-loss, which
    scalars vary, the batch layout and the member loop. The member count and shapes are jit's to key."""
    varying = sorted(scalars)
    optim = {k: v for k, v in config.optim.to_dict().items() if k not in SCHEDULE_KEYS and k not in varying}
    return json.dumps({"model": config.model.to_dict(), "optim": optim, "varying": varying,
                       "z_loss": None if "z_loss" in varying else config.train.z_loss,
                       "batch": [config.train.batch_size, config.data.seq_len], "per_member": batch_per_member,
                       "loop": loop}, sort_keys=True, default=repr)


def make_packed_step(configs, graphdef, params_one, steps: int, scalars: dict[str, np.ndarray],
                     batch_per_member: bool, loop: str = "vmap") -> PackedStep:
    """The packed steps for members (`configs`, one each) shaped like `params_one` (one member's
    params), with each member's schedule (`steps` of its optim section: schedule_args, on the host as
    the unpacked trainer computes it) and the member scalars bound; the compiled program comes from
    the process's cache when a pack of the same program_key built it.

    state: {"params": [K, ...], "opt_state": [K, ...], "alive": bool[K], "step": int32 scalar}.
    batch_per_member: inputs/targets are [K, B, T] (members with their own data order), else one
    [B, T] batch shared by every member. `scalars`: varying_scalars(configs). loop: "vmap" | "map"."""
    config = configs[0]
    key = program_key(config, scalars, batch_per_member, loop)
    program = cached_program(_PROGRAMS, key, lambda: _build_program(config, graphdef, params_one, scalars,
                                                                     batch_per_member, loop))
    schedule = stack([schedule_args(c.optim, steps) for c in configs])  # [K] per field
    scalars_K = {k: jnp.asarray(v) for k, v in scalars.items()}
    return PackedStep(step_fn=lambda state, inputs, targets: program.train_step(state, schedule, scalars_K,
                                                                                inputs, targets),
                      eval_fn=program.eval_step, opt_treedef=program.opt_treedef)


def _build_program(config, graphdef, params_one, scalars, batch_per_member: bool, loop: str) -> _Program:
    """The jitted packed steps of program_key(config, scalars, ...); they read only what the key holds."""
    z_const = config.train.z_loss

    def member_grads(params, member_scalars, inputs_BT, targets_BT):
        def loss_fn(p):
            model = nnx.merge(graphdef, p)
            x_BTD = model.features(inputs_BT)
            if "z_loss" in member_scalars:  # the fused chunked loss takes z_loss as a compile-time constant
                return cross_entropy(model.logits(x_BTD), targets_BT, member_scalars["z_loss"])
            return lm_loss(model, x_BTD, targets_BT, z_const)

        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, aux["nll"]

    def member_update(params, opt_state, alive, member_scalars, schedule, grads, loss, step):
        tx = member_optimizer(config, member_scalars, params, lambda count: lr_at(schedule, count))
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        # a non-finite loss freezes the member where it stands: no NaN/inf enters its state
        ok = alive & jnp.isfinite(loss)
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        return (jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_opt, opt_state), ok,
                {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": lr_at(schedule, step)})

    def over_members(fn, per_member: tuple, shared: tuple):
        """fn(*member's slices of per_member, *shared) for every member: a loop inside the step
        ("map": each member's matmuls stay plain dots) or vmap (batched matmuls)."""
        if loop == "map":
            return jax.lax.map(lambda a: fn(*a, *shared), per_member)
        return jax.vmap(fn, in_axes=(0,) * len(per_member) + (None,) * len(shared))(*per_member, *shared)

    def train_step(state, schedule, scalars_K, inputs, targets):
        trace_counts["packed_train_step"] += 1
        params = state["params"]
        if batch_per_member:
            grads, loss = over_members(member_grads, (params, scalars_K, inputs, targets), ())
        else:
            grads, loss = over_members(member_grads, (params, scalars_K), (inputs, targets))
        # the update per member too: in "map" the unpacked step's own arithmetic (see Numerics above)
        params, opt_state, alive, out = over_members(
            member_update, (params, state["opt_state"], state["alive"], scalars_K, schedule, grads, loss),
            (state["step"],))
        return {"params": params, "opt_state": opt_state, "alive": alive, "step": state["step"] + 1}, out

    def eval_one(params, inputs_BT, targets_BT, weights_BT):
        model = nnx.merge(graphdef, params)  # the unpacked eval's sums (chunked: no full logits)
        return nll_sums(model, model.features(inputs_BT), targets_BT, weights_BT)

    def eval_step(params_K, inputs_BT, targets_BT, weights_BT):
        return over_members(eval_one, (params_K,), (inputs_BT, targets_BT, weights_BT))

    one = {k: float(v[0]) for k, v in scalars.items()}
    tx_one = member_optimizer(config, one, params_one, lambda count: 0.0)  # the state's structure only
    opt_treedef = jax.tree.structure(jax.eval_shape(tx_one.init, params_one))
    return _Program(train_step=jax.jit(train_step, donate_argnums=0), eval_step=jax.jit(eval_step),
                    opt_treedef=opt_treedef)


def stack(trees: list):
    """Member trees -> one tree with a leading member axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, i: int):
    """Member i's slice of a stacked tree."""
    return jax.tree.map(lambda x: x[i], tree)


def retree(opt_state, treedef):
    """An optimizer state rebuilt with another chain's structure (same leaves, same order): packed
    chain <-> the member's own make_optimizer chain, whose checkpoints the unpacked trainer reads."""
    leaves = jax.tree.leaves(opt_state)
    if len(leaves) != treedef.num_leaves:
        raise ValueError(f"optimizer state with {len(leaves)} arrays does not fit a chain of {treedef.num_leaves}")
    return jax.tree.unflatten(treedef, leaves)
