"""The packed step: K same-shape members trained by one jitted step over a leading member axis.

Parameters and optimizer states carry a leading member axis K. The per-member scalars of
packed.PACKED_KEYS that differ within the pack (lr, Adam's b1/b2/eps, weight decay, clip norm,
z-loss) are per-member float32 inputs [K]; those equal across the pack stay Python constants, exactly as
in the unpacked step. The schedule is the unpacked `make_schedule` called with the member's lr as
a traced value, so it is the same formula; what changes is where constants are rounded: the
unpacked step folds e.g. lr / warmup_steps in float64 and rounds once to float32, the packed one
divides in float32 (at most 1 ulp apart). With vmap's batched matmuls and the vmapped optimizer's
reductions (other summation orders) a member's losses equal its unpacked run's to float32
rounding, not bit for bit (tests/test_packed_train.py: rtol 1e-5; ~1e-7 measured).

Members with differing train.z_loss compute their loss from the full logits (the fused chunked loss
of model.loss_chunk takes z_loss as a compile-time constant): the same sums in another order.

How the members run inside the step (`loop`): "vmap" batches every op over the member axis (batched
matmuls: what accelerators run best); "map" is a loop over members inside the one compiled step
(jax.lax.map), each member's matmuls plain dots. The trainer uses "map" on CPU: measured on 2 cores
(jax 0.10.2, YNN dot fusions), a batched dot alone is faster than a loop of dots (16 x (1024x8 @
8x256): 1.3 ms vs 3.9 ms), but the whole vmapped step is not (k = 16 L1 d8 members: 0.61x the tokens/s
of separate runs, "map" about 1x), the time going to the batched elementwise, copy and transpose ops
around the dots; a pack still saves each member's per-step dispatch, host and loader overhead there.

A member whose loss is NaN/inf at a step is frozen from that step on (its params and optimizer
state keep their last values; `alive` turns false), so nothing non-finite reaches the next step;
members never mix (vmap), so the others train on unaffected.
"""
import types
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scaling.loss import cross_entropy
from scaling.model import lm_loss, nll_sums
from scaling.optim import decay_mask, make_schedule, mup_lr_multipliers, scale_by_tree

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


def member_optimizer(config, scalars: dict, params, steps: int):
    """(transform, schedule) of one member: make_optimizer's chain with `scalars` (possibly traced)
    in place of the config's values. Its state has the same leaves, in the same order, as
    make_optimizer's for that member (the extra stages — clipping at inf, decay by 0 — hold none)."""
    o = types.SimpleNamespace(**{**config.optim.to_dict(), **{k: v for k, v in scalars.items() if k != "z_loss"}})
    schedule = make_schedule(o, steps)
    parts = []
    if "clip_norm" in scalars or o.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(o.clip_norm))
    parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
    if o.parametrization == "mup":
        parts.append(scale_by_tree(mup_lr_multipliers(params, config.model.d_model, o.base_d_model)))
    if "weight_decay" in scalars or o.weight_decay > 0:
        parts.append(optax.add_decayed_weights(o.weight_decay, mask=decay_mask(params, o.decay_embeddings)))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts), schedule


class PackedStep(NamedTuple):
    step_fn: Callable  # (state, inputs, targets) -> (state, {"loss", "grad_norm", "lr"}: [K] each); donates state
    eval_fn: Callable  # (params_K, inputs_BT, targets_BT, weights_BT) -> (NLL sums [K], weight sums [K])
    opt_treedef: object  # tree structure of one member's optimizer state in the packed chain


def make_packed_step(config, graphdef, params_one, steps: int, scalars: dict[str, np.ndarray],
                     batch_per_member: bool, loop: str = "vmap") -> PackedStep:
    """The jitted vmapped steps for members shaped like `params_one` (one member's params).

    state: {"params": [K, ...], "opt_state": [K, ...], "alive": bool[K], "step": int32 scalar}.
    batch_per_member: inputs/targets are [K, B, T] (members with their own data order), else one
    [B, T] batch shared by every member. `scalars`: varying_scalars(configs). loop: "vmap" | "map"."""
    z_const = config.train.z_loss
    scalars_K = {k: jnp.asarray(v) for k, v in scalars.items()}

    def member_grads(params, member_scalars, inputs_BT, targets_BT):
        def loss_fn(p):
            model = nnx.merge(graphdef, p)
            x_BTD = model.features(inputs_BT)
            if "z_loss" in member_scalars:  # the fused chunked loss takes z_loss as a compile-time constant
                return cross_entropy(model.logits(x_BTD), targets_BT, member_scalars["z_loss"])
            return lm_loss(model, x_BTD, targets_BT, z_const)

        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, aux["nll"]

    def member_update(params, opt_state, alive, member_scalars, grads, loss, step):
        tx, schedule = member_optimizer(config, member_scalars, params, steps)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        # a non-finite loss freezes the member where it stands: no NaN/inf enters its state
        ok = alive & jnp.isfinite(loss)
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        return (jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_opt, opt_state), ok,
                {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": schedule(step)})

    def over_members(fn, per_member: tuple, shared: tuple):
        """fn(*member's slices of per_member, *shared) for every member: a loop inside the step
        ("map": each member's matmuls stay plain dots) or vmap (batched matmuls)."""
        if loop == "map":
            return jax.lax.map(lambda a: fn(*a, *shared), per_member)
        return jax.vmap(fn, in_axes=(0,) * len(per_member) + (None,) * len(shared))(*per_member, *shared)

    def train_step(state, inputs, targets):
        params = state["params"]
        if batch_per_member:
            grads, loss = over_members(member_grads, (params, scalars_K, inputs, targets), ())
        else:
            grads, loss = over_members(member_grads, (params, scalars_K), (inputs, targets))
        # the optimizer is elementwise: vmapped on every platform (one op per leaf for all members)
        params, opt_state, alive, out = jax.vmap(member_update, in_axes=(0, 0, 0, 0, 0, 0, None))(
            params, state["opt_state"], state["alive"], scalars_K, grads, loss, state["step"])
        return {"params": params, "opt_state": opt_state, "alive": alive, "step": state["step"] + 1}, out

    def eval_one(params, inputs_BT, targets_BT, weights_BT):
        model = nnx.merge(graphdef, params)  # the unpacked eval's sums (chunked: no full logits)
        return nll_sums(model, model.features(inputs_BT), targets_BT, weights_BT)

    def eval_step(params_K, inputs_BT, targets_BT, weights_BT):
        return over_members(eval_one, (params_K,), (inputs_BT, targets_BT, weights_BT))

    one = {k: float(v[0]) for k, v in scalars.items()}
    tx_one, _ = member_optimizer(config, one, params_one, steps)
    opt_treedef = jax.tree.structure(jax.eval_shape(tx_one.init, params_one))
    return PackedStep(step_fn=jax.jit(train_step, donate_argnums=0),
                      eval_fn=jax.jit(eval_step),
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
