"""Per-component forward and backward time of our model (the JAX half of benchmarks/vs_torch.py).

    python benchmarks/components.py --d-model 256 --n-layers 4 --batch 16 --seq 256 --vocab 8192

Components, each jitted alone on random inputs of the step's shapes, timed as forward and as
forward + backward (backward = the difference; the cotangent is ones): the attention core
(model.causal_attention on q, k, v), the MLP, the projections (q/k/v + RoPE and the output
projection of (q + k + v)), the two RMSNorms, the head + loss (final norm, LM head, cross-entropy,
as the trainer calls it) and the optimizer (clipping + AdamW update of every parameter). Per-block
components are multiplied by n_layers. benchmarks/torch_gpt.py `components` times the same pieces.
Prints one JSON line.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scaling import model as model_lib
from scaling.optim import make_optimizer
from benchmarks.train_step import make_config


def timed(fn, steps: int) -> float:
    """Mean seconds per call over `steps` calls after one compiling warm-up call."""
    jax.block_until_ready(fn())
    t0 = time.perf_counter()
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / steps


def fwd_bwd(f, inputs, steps: int) -> tuple[float, float]:
    """(forward seconds, backward seconds) of f(*inputs); gradients w.r.t. every input."""
    fwd = jax.jit(f)

    def both(*xs):
        out, vjp = jax.vjp(f, *xs)
        return vjp(jnp.ones_like(out))

    both = jax.jit(both)
    tf = timed(lambda: fwd(*inputs), steps)
    tb = timed(lambda: both(*inputs), steps)
    return tf, max(tb - tf, 0.0)


def run(args) -> dict:
    c = make_config(args.d_model, args.n_layers, args)
    model = model_lib.build_model(c.model, 0)
    B, T, D, L = args.batch, args.seq, args.d_model, args.n_layers
    H, K = c.model.n_heads, D // c.model.n_heads
    keys = iter(jax.random.split(jax.random.key(1), 8))
    x_BTD = jax.random.normal(next(keys), (B, T, D))
    q, k, v = (jax.random.normal(next(keys), (B, T, H, K)) for _ in range(3))
    y_BT = jnp.asarray(np.random.default_rng(0).integers(0, args.vocab, (B, T), dtype=np.int32))
    blk = model.blocks[0]

    def grads_for(module, fn, keep=nnx.Param):
        """fn(merged module, *xs) as a function of (the `keep` parameters, *xs): the backward
        computes exactly those parameters' gradients (and the inputs'), nothing for the rest."""
        gdef, sel, rest = nnx.split(module, keep, ...)
        return (lambda p, *xs: fn(nnx.merge(gdef, p, rest), *xs)), sel

    def proj(attn, a):
        qq, kk, vv = attn.qkv(a)
        return attn.out(qq + kk + vv)

    mlp_fn, mlp_p = grads_for(blk.mlp, lambda m, a: m(a))
    proj_fn, proj_p = grads_for(blk.attn, proj)
    norm_fn, norm_p = grads_for(blk, lambda b, a: b.mlp_norm(b.attn_norm(a)), nnx.Any(
        nnx.PathContains("attn_norm"), nnx.PathContains("mlp_norm")))
    head_fn, head_p = grads_for(model, lambda m, a: model_lib.lm_loss(m, m.final_norm(a), y_BT, c.train.z_loss)[0],
                                nnx.Any(nnx.PathContains("embedding"), nnx.PathContains("final_norm"),
                                        nnx.PathContains("lm_head")))
    parts = {
        "attention core": (lambda a, b, cc: model_lib.causal_attention(a, b, cc, blk.attn.attn_scale, blk.attn.impl),
                           (q, k, v), L),
        "mlp": (mlp_fn, (mlp_p, x_BTD), L),
        "projections": (proj_fn, (proj_p, x_BTD), L),
        "norms": (norm_fn, (norm_p, x_BTD), L),
        "head+loss": (head_fn, (head_p, x_BTD), 1),
    }
    params = nnx.state(model, nnx.Param)
    out = {}
    for name, (fn, inputs, reps) in parts.items():
        f, b = fwd_bwd(fn, inputs, args.steps)
        out[name] = {"forward": f * reps, "backward": b * reps}
    tx, _ = make_optimizer(c, params, 10)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
    opt_state = tx.init(params)
    def update(g, s, p):
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    update = jax.jit(update)
    out["optimizer"] = {"forward": timed(lambda: update(grads, opt_state, params), args.steps), "backward": 0.0}
    return {"impl": "ours", "components": out}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    args.dtype, args.remat, args.devices = "float32", "none", 1
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
