"""Decoder-only transformer in Flax NNX: the one model every scaling run trains.

Architecture (pre-norm, no biases):
    tokens -> embedding -> n_layers x [x += Attn(RMSNorm(x)); x += MLP(RMSNorm(x))]
           -> RMSNorm -> LM head (tied to the embedding, or its own matrix) -> logits (float32)
Attention is causal self-attention with RoPE (rotate-half form, over the full head_dim),
grouped-query heads (n_kv_heads divides n_heads; n_kv_heads == 1 is multi-query) and optional
QK-norm (RMSNorm with a learned scale on each query/key head vector, before RoPE); its core
(softmax(q k^T) v) is scaling/attention.py's, by `model.attention` (dense reference, blocked on
CPU, jax.nn.dot_product_attention xla/cuDNN on accelerators). The MLP is
SwiGLU (silu(x W_gate) * (x W_up)) W_down or GELU (gelu(x W_up)) W_down.

The loss: `lm_loss(model, model.features(tokens), targets, z_loss)` (scaling/loss.py), fused with
the head over chunks of `model.loss_chunk` tokens, or `cross_entropy(model(tokens), ...)` on full
logits; the eval's weighted NLL sums likewise by `nll_sums`; `model(tokens)` itself always returns
the full logits.

Dtypes: parameters are stored in `param_dtype` (float32); matmuls run in `compute_dtype`
(float32 or bfloat16); the attention softmax, the norms' statistics, the logits and the loss are
float32.

Logical axis names (sharding metadata on every parameter; the sharding module maps them to mesh
axes with `nnx.logical_axis_rules`, the model itself never names a mesh axis):
    'vocab'     vocabulary rows of the embedding / columns of the LM head
    'embed'     the residual stream, d_model
    'mlp'       the MLP hidden dimension, d_ff
    'heads'     query heads, n_heads
    'kv'        key/value heads, n_kv_heads (== 'heads' for MHA, 1 for MQA: don't shard it then)
    'head_dim'  the per-head dimension, d_model // n_heads
    'batch', 'seq', 'act_embed'  the residual stream x_BTD between blocks (activations, not parameters)
Parameters and their axes:
    embedding                    [vocab, embed]
    blocks[i].attn_norm.scale    [embed]            blocks[i].mlp_norm.scale [embed]
    blocks[i].attn.wq            [embed, heads, head_dim]
    blocks[i].attn.wk / .wv      [embed, kv, head_dim]
    blocks[i].attn.wo            [heads, head_dim, embed]
    blocks[i].attn.q_norm/k_norm.scale [head_dim]   (qk_norm only)
    blocks[i].mlp.w_gate / .w_up [embed, mlp]       (w_gate: swiglu only)
    blocks[i].mlp.w_down         [mlp, embed]
    final_norm.scale             [embed]
    lm_head                      [embed, vocab]     (untied only)

Activations: built on a mesh, the model constrains x_BTD after the embedding and after every block
to the layout the rules give ('batch', 'seq', 'act_embed': rows over the batch axes), so the
partitioner keeps the residual stream batch-sharded instead of choosing to replicate it.
Remat (`model.remat`): 'none' saves every activation for the backward pass; 'full' calls each block
through `nnx.remat` (jax.checkpoint), so only block inputs are saved and each block's forward is
recomputed during its backward (the same numbers, ~1/3 more FLOPs; scaling/memory.py estimates both).

Initialisation: every matrix ~ normal(init_std); the two projections that write into the
residual stream (attn.wo, mlp.w_down) use init_std / sqrt(2 * n_layers) (GPT-2's scaling, so the
residual variance at init does not grow with depth); norm scales = 1. All from the seed.

Parametrization: 'standard', or 'mup' (muP, Yang et al. 2022, Tensor Programs V) relative to a
base width `base_d_model`: hidden matrices (attention and MLP) init std times
sqrt(base_d_model / d_model); embedding and LM head init unchanged; logits multiplied by
base_d_model / d_model; attention scores scaled by 1/head_dim instead of 1/sqrt(head_dim).
The per-layer learning rates of muP are the optimizer's concern (scaling/optim.py).

The MLP width rule `d_ff_of` lives in scaling/accounting.py and the valid values and
`validate_model_config` in scaling/config.py (both JAX-free, so a sweep is planned and checked
without building a model); both are re-exported here.
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.accounting import d_ff_of
from scaling.config import PARAMETRIZATIONS, validate_model_config
from scaling.attention import attention_impl, causal_attention, dense_attention  # noqa: F401
from scaling.loss import chunked_lm_loss, chunked_nll_sum, cross_entropy  # noqa: F401  (cross_entropy: re-exported)

LOGICAL_AXES = ("vocab", "embed", "mlp", "heads", "kv", "head_dim")
ACTIVATION_AXES = ("batch", "seq", "act_embed")  # x_BTD's logical axes


def _matrix(rngs, shape, std, axes, dtype):
    """A normal(std) parameter carrying logical axis names for sharding.

    Drawn flat and reshaped: eager RNG compiles once per size rather than per shape, and a
    1-D draw compiles faster, which makes building a model of a new shape ~2-3x faster on CPU.
    """
    z = jax.random.normal(rngs.params(), (math.prod(shape),), dtype)
    return nnx.Param((std * z).reshape(shape), out_sharding=axes)


class RMSNorm(nnx.Module):
    """x / rms(x) * scale, statistics in float32; scale (init 1) is a learned vector."""

    def __init__(self, dim: int, eps: float, axis_name: str, param_dtype):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=(axis_name,))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def rope(x_BTHK, theta: float):
    """Rotary position embedding (rotate-half form) over the last axis; positions 0..T-1."""
    T, K = x_BTHK.shape[1], x_BTHK.shape[-1]
    inv_freq = theta ** (-jnp.arange(0, K, 2, dtype=jnp.float32) / K)  # [K/2]
    angle_TK = jnp.arange(T, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    cos, sin = jnp.cos(angle_TK)[:, None, :], jnp.sin(angle_TK)[:, None, :]  # [T,1,K/2]
    x1, x2 = jnp.split(x_BTHK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BTHK.dtype)


class Attention(nnx.Module):
    """Causal self-attention with RoPE, grouped-query heads and optional QK-norm."""

    def __init__(self, cfg, *, std: float, out_std: float, attn_scale: float, rngs: nnx.Rngs):
        D, H, G = cfg.d_model, cfg.n_heads, cfg.n_kv_heads
        K = D // H
        pdt = jnp.dtype(cfg.param_dtype)
        self.n_heads, self.n_kv_heads, self.head_dim = H, G, K
        self.rope_theta, self.attn_scale = float(cfg.rope_theta), attn_scale
        self.compute_dtype = jnp.dtype(cfg.compute_dtype)
        self.impl = attention_impl(cfg)  # resolved once, when the model is built
        self.wq = _matrix(rngs, (D, H, K), std, ("embed", "heads", "head_dim"), pdt)
        self.wk = _matrix(rngs, (D, G, K), std, ("embed", "kv", "head_dim"), pdt)
        self.wv = _matrix(rngs, (D, G, K), std, ("embed", "kv", "head_dim"), pdt)
        self.wo = _matrix(rngs, (H, K, D), out_std, ("heads", "head_dim", "embed"), pdt)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(K, cfg.norm_eps, "head_dim", pdt)
            self.k_norm = RMSNorm(K, cfg.norm_eps, "head_dim", pdt)
        else:
            self.q_norm = self.k_norm = None

    def qkv(self, x_BTD):
        """Projections (+ QK-norm) and RoPE: (q_BTHK, k_BTGK, v_BTGK) in the compute dtype."""
        cdt = self.compute_dtype
        q_BTHK = jnp.einsum("btd,dhk->bthk", x_BTD, self.wq[...].astype(cdt))
        k_BTGK = jnp.einsum("btd,dgk->btgk", x_BTD, self.wk[...].astype(cdt))
        v_BTGK = jnp.einsum("btd,dgk->btgk", x_BTD, self.wv[...].astype(cdt))
        if self.q_norm is not None:
            q_BTHK, k_BTGK = self.q_norm(q_BTHK), self.k_norm(k_BTGK)
        return rope(q_BTHK, self.rope_theta), rope(k_BTGK, self.rope_theta), v_BTGK

    def out(self, o_BTHK):
        """The output projection back into the residual stream."""
        return jnp.einsum("bthk,hkd->btd", o_BTHK, self.wo[...].astype(self.compute_dtype))

    def __call__(self, x_BTD):
        q_BTHK, k_BTGK, v_BTGK = self.qkv(x_BTD)
        return self.out(causal_attention(q_BTHK, k_BTGK, v_BTGK, self.attn_scale, self.impl))


class MLP(nnx.Module):
    """SwiGLU: (silu(x W_gate) * x W_up) W_down, or GELU: gelu(x W_up) W_down. No biases."""

    def __init__(self, cfg, *, std: float, out_std: float, rngs: nnx.Rngs):
        D, F = cfg.d_model, d_ff_of(cfg)
        pdt = jnp.dtype(cfg.param_dtype)
        self.kind, self.compute_dtype = cfg.mlp, jnp.dtype(cfg.compute_dtype)
        self.w_gate = _matrix(rngs, (D, F), std, ("embed", "mlp"), pdt) \
            if cfg.mlp == "swiglu" else None
        self.w_up = _matrix(rngs, (D, F), std, ("embed", "mlp"), pdt)
        self.w_down = _matrix(rngs, (F, D), out_std, ("mlp", "embed"), pdt)

    def __call__(self, x_BTD):
        # tokens flattened to rows first: every matmul, and each weight gradient x^T g, is a plain
        # 2-D GEMM (measured on XLA:CPU: forward + backward 0.85x the CPU time of the 3-D form)
        cdt, (B, T, D) = self.compute_dtype, x_BTD.shape
        x_ND = x_BTD.reshape(B * T, D)
        h_NF = x_ND @ self.w_up[...].astype(cdt)
        if self.kind == "swiglu":
            h_NF = jax.nn.silu(x_ND @ self.w_gate[...].astype(cdt)) * h_NF
        else:
            h_NF = jax.nn.gelu(h_NF)
        return (h_NF @ self.w_down[...].astype(cdt)).reshape(B, T, D)


class Block(nnx.Module):
    """Pre-norm residual block: x + Attn(RMSNorm(x)), then + MLP(RMSNorm(x))."""

    def __init__(self, cfg, *, std, out_std, attn_scale, rngs: nnx.Rngs):
        pdt = jnp.dtype(cfg.param_dtype)
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, "embed", pdt)
        self.attn = Attention(cfg, std=std, out_std=out_std, attn_scale=attn_scale, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, "embed", pdt)
        self.mlp = MLP(cfg, std=std, out_std=out_std, rngs=rngs)

    def __call__(self, x_BTD):
        x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD))
        return x_BTD + self.mlp(self.mlp_norm(x_BTD))


_remat_block = nnx.remat(Block.__call__)  # Block.__call__ under jax.checkpoint (model.remat='full')


class Transformer(nnx.Module):
    """Decoder-only LM: `model(tokens_BT int32[B,T]) -> logits_BTV float32`.

    cfg is the `model` ConfigDict of experiments/base.py with max_seq_len resolved (> 0).
    parametrization: 'standard' or 'mup' (needs base_d_model; see the module docstring).
    act_sharding: the residual stream's sharding between blocks (None: no constraint, unsharded).
    """

    def __init__(self, cfg, *, rngs: nnx.Rngs, parametrization: str = "standard",
                 base_d_model: int | None = None, act_sharding=None):
        validate_model_config(cfg)
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization={parametrization!r} is not valid; "
                             f"use one of {PARAMETRIZATIONS}")
        D, V, L = cfg.d_model, cfg.vocab_size, cfg.n_layers
        head_dim = D // cfg.n_heads
        pdt = jnp.dtype(cfg.param_dtype)
        std = float(cfg.init_std)
        if parametrization == "mup":
            if not base_d_model or base_d_model <= 0:
                raise ValueError(f"base_d_model={base_d_model!r} is not valid for "
                                 f"parametrization='mup'; give the positive base width")
            hidden_std = std * math.sqrt(base_d_model / D)
            self.logit_mult = base_d_model / D
            attn_scale = 1.0 / head_dim
        else:
            hidden_std, self.logit_mult, attn_scale = std, 1.0, 1.0 / math.sqrt(head_dim)
        out_std = hidden_std / math.sqrt(2 * L)  # GPT-2: residual-writing projections
        self.vocab_size, self.max_seq_len = V, cfg.max_seq_len
        self.compute_dtype = jnp.dtype(cfg.compute_dtype)
        self.remat, self.act_sharding = cfg.remat, act_sharding
        self.loss_chunk = int(cfg.get("loss_chunk", 0))
        self.embedding = _matrix(rngs, (V, D), std, ("vocab", "embed"), pdt)
        self.blocks = nnx.List([Block(cfg, std=hidden_std, out_std=out_std,
                                      attn_scale=attn_scale, rngs=rngs) for _ in range(L)])
        self.final_norm = RMSNorm(D, cfg.norm_eps, "embed", pdt)
        self.lm_head = None if cfg.tie_embeddings else \
            _matrix(rngs, (D, V), std, ("embed", "vocab"), pdt)

    def __call__(self, tokens_BT):
        return self.logits(self.features(tokens_BT))

    def features(self, tokens_BT):
        """The final-normed residual stream x_BTD (compute dtype): the LM head's input."""
        T = tokens_BT.shape[1]
        if T > self.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds model.max_seq_len={self.max_seq_len}")
        x_BTD = self._constrain(jnp.take(self.embedding[...], tokens_BT, axis=0).astype(self.compute_dtype))  # a gather
        call = _remat_block if self.remat == "full" else Block.__call__
        for block in self.blocks:
            x_BTD = self._constrain(call(block, x_BTD))
        return self.final_norm(x_BTD)

    def head_weight(self):
        """The LM head's [D, V] matrix in the compute dtype (the embedding's transpose when tied)."""
        w_DV = self.embedding[...].T if self.lm_head is None else self.lm_head[...]
        return w_DV.astype(self.compute_dtype)

    def logits(self, x_BTD):
        """float32 logits_BTV of the final-normed x_BTD (times logit_mult under muP)."""
        logits_BTV = jnp.einsum("btd,dv->btv", x_BTD, self.head_weight(), preferred_element_type=jnp.float32)
        return logits_BTV * self.logit_mult if self.logit_mult != 1.0 else logits_BTV

    def _constrain(self, x_BTD):
        """x_BTD in the activation layout of the mesh the model was built on (as is without one)."""
        if self.act_sharding is None:
            return x_BTD
        return jax.lax.with_sharding_constraint(x_BTD, self.act_sharding)


def lm_loss(model, x_BTD, targets_BT, z_loss: float):
    """(loss, aux) of cross_entropy on the model's logits of the final-normed x_BTD; with
    model.loss_chunk > 0 through chunked_lm_loss (the same numbers, never the full logits)."""
    if model.loss_chunk:
        return chunked_lm_loss(x_BTD, model.head_weight(), targets_BT, z_loss, model.logit_mult, model.loss_chunk)
    return cross_entropy(model.logits(x_BTD), targets_BT, z_loss)


def nll_sums(model, x_BTD, targets_BT, weights_BT):
    """The eval's (sum of weights_BT * next-token NLL_BT in nats, sum of weights_BT), float32, of
    the final-normed x_BTD; with model.loss_chunk > 0 through chunked_nll_sum (no full logits)."""
    if model.loss_chunk:
        return chunked_nll_sum(x_BTD, model.head_weight(), targets_BT, weights_BT, model.logit_mult, model.loss_chunk)
    logits_BTV = model.logits(x_BTD)
    nll_BT = jax.nn.logsumexp(logits_BTV, axis=-1) - jnp.take_along_axis(
        logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    return jnp.sum(nll_BT * weights_BT), jnp.sum(weights_BT)


def full_axis_rules(rules) -> tuple:
    """`rules` plus (name, None) for each of LOGICAL_AXES it does not map.

    Flax passes an unmapped logical name through as a mesh axis name (and then fails), so
    every name must appear; the ones left out are replicated.
    """
    rules = tuple(tuple(r) for r in (rules or ()))
    mapped = {name for name, _ in rules}
    return rules + tuple((name, None) for name in LOGICAL_AXES + ACTIVATION_AXES if name not in mapped)


def build_model(cfg, seed: int, mesh=None, rules=None, *, parametrization: str = "standard",
                base_d_model: int | None = None) -> Transformer:
    """Build a Transformer deterministically from `seed`.

    mesh None: unsharded (inside `nnx.use_eager_sharding(False)`; annotations stay as metadata).
    mesh given: built under `jax.set_mesh(mesh)` + `nnx.logical_axis_rules(rules)`, so every
    parameter is created directly with the sharding its logical axes map to; logical names
    missing from `rules` are replicated (see full_axis_rules); the residual stream is constrained
    to what the rules map ACTIVATION_AXES to.
    """
    def make(act_sharding=None):
        return Transformer(cfg, rngs=nnx.Rngs(params=seed), parametrization=parametrization,
                           base_d_model=base_d_model, act_sharding=act_sharding)

    if mesh is None:
        with nnx.use_eager_sharding(False):
            return make()
    rules = full_axis_rules(rules)
    act = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*(dict(rules)[a] for a in ACTIVATION_AXES)))
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        return make(act)
