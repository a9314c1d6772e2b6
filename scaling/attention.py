"""Causal self-attention cores: o_BTHK = softmax(q k^T * scale, causal) v, grouped-query.

Implementations (`model.attention`, chosen by `attention_impl`; all compute the same function,
and FLOPs are counted alike by scaling/accounting.py: the full T x T, whatever is skipped):
- dense: the reference. Scores over the full T x T in float32, masked, softmax, times v.
- blocked: query rows in blocks of ATTENTION_BLOCK; each block's scores only against the keys
  up to its last row, so fully masked blocks are never computed (exact: each row's softmax sees
  all its keys at once). Head-major GEMMs, softmax normalised after p·v. XLA:CPU's choice ('auto'
  on CPU). Process CPU time against torch's fused CPU kernel (F.scaled_dot_product_attention),
  both in one process, alternated, on the loaded shared 2-core machine (medians of 9-11 calls):
  0.96x forward, 0.76x forward + backward at B16 T256 H4 K64; 1.7x, 0.93x at H8 (load 6-9). In a
  quiet window (load 0.6) at H8, wall time: 2.25x forward, 1.43x forward + backward (CPU time
  1.8x, 1.28x): torch's kernel also keeps both cores busier (CPU/wall 1.75 vs our 1.4).
- xla / cudnn: jax.nn.dot_product_attention with that implementation ('cudnn' is the fused
  flash-attention kernel on NVIDIA GPUs; 'auto' picks it for bf16 on GPU).
"""
import jax
import jax.numpy as jnp

from scaling.config_schema import ATTENTION_BLOCK, ATTENTION_IMPLS, resolve_attention


def dense_attention(q_BTHK, k_BTGK, v_BTGK, scale: float, offset: int = 0):
    """Causal softmax(q k^T * scale) v over every key (the reference path), grouped-query: query
    head h uses kv head h // (H / G). Scores and softmax in float32. Query t sits at position
    offset + t among the S keys (offset > 0: a block of queries, see blocked_attention)."""
    B, T, H, K = q_BTHK.shape
    S, G = k_BTGK.shape[1], k_BTGK.shape[2]
    q_BTGRK = q_BTHK.reshape(B, T, G, H // G, K)
    # preferred_element_type keeps bf16 inputs but an f32 output
    s_BGRTS = jnp.einsum("btgrk,bsgk->bgrts", q_BTGRK, k_BTGK, preferred_element_type=jnp.float32) * scale
    causal_TS = jnp.tril(jnp.ones((T, S), dtype=bool), k=offset)
    s_BGRTS = jnp.where(causal_TS, s_BGRTS, jnp.finfo(jnp.float32).min)
    p_BGRTS = jax.nn.softmax(s_BGRTS, axis=-1).astype(q_BTHK.dtype)
    o_BTGRK = jnp.einsum("bgrts,bsgk->btgrk", p_BGRTS, v_BTGK)
    return o_BTGRK.reshape(B, T, H, K)


def attention_impl(cfg, platform: str | None = None) -> str:
    """The attention implementation the model runs: config_schema.resolve_attention on `platform`
    (default: JAX's default backend)."""
    return resolve_attention(cfg, platform or jax.default_backend())


def _block_attention(q_BGNK, k_BGSK, v_BGSK, scale: float, offset: int):
    """One query block of blocked_attention, head-major: q_BGNK holds the block's R query heads of
    kv head g as N = R x T rows (r major), each query t at position offset + t among the S keys.
    The softmax is normalised after the p·v matmul (o = (e v) / l with e = exp(s - max) and
    l = sum e): the division touches N x K values instead of N x S; masked e are exactly 0."""
    N, S = q_BGNK.shape[2], k_BGSK.shape[2]
    T = min(N, S - offset)  # the block's query rows per head
    # scale folded into q (N x K multiplies, not N x S)
    s_BGNS = jnp.einsum("bgnk,bgsk->bgns", q_BGNK * jnp.asarray(scale, q_BGNK.dtype), k_BGSK,
                        preferred_element_type=jnp.float32)
    causal_NS = jnp.tile(jnp.tril(jnp.ones((T, S), dtype=bool), k=offset), (N // T, 1))
    s_BGNS = jnp.where(causal_NS, s_BGNS, jnp.finfo(jnp.float32).min)
    m_BGN1 = jax.lax.stop_gradient(jnp.max(s_BGNS, axis=-1, keepdims=True))  # any shift is exact
    e_BGNS = jnp.exp(s_BGNS - m_BGN1)
    l_BGN1 = jnp.sum(e_BGNS, axis=-1, keepdims=True)
    o_BGNK = jnp.einsum("bgns,bgsk->bgnk", e_BGNS.astype(v_BGSK.dtype), v_BGSK, preferred_element_type=jnp.float32)
    return (o_BGNK / l_BGN1).astype(q_BGNK.dtype)


def blocked_attention(q_BTHK, k_BTGK, v_BTGK, scale: float, block: int = ATTENTION_BLOCK):
    """Exact causal attention that never computes a fully masked score block: query rows
    [s, s + block) attend to keys [0, s + block) only; each row's softmax still sees all its keys
    at once (no online rescaling), so the result equals dense_attention up to float rounding.
    Computed head-major (q as B,G,R,T,K; k, v as B,G,S,K: one transpose of each in, one of o out)
    so every score and p·v product is one plain row-major GEMM per (batch, kv head) with the R
    query heads of a kv head stacked as rows: XLA:CPU ran the token-major einsums with a
    transpose around each of them."""
    B, T, H, K = q_BTHK.shape
    G = k_BTGK.shape[2]
    R = H // G
    q_BGRTK = q_BTHK.reshape(B, T, G, R, K).transpose(0, 2, 3, 1, 4)
    k_BGSK, v_BGSK = k_BTGK.transpose(0, 2, 1, 3), v_BTGK.transpose(0, 2, 1, 3)
    outs = []
    for s in range(0, T, block):
        t = min(block, T - s)
        q_BGNK = q_BGRTK[:, :, :, s:s + t].reshape(B, G, R * t, K)
        o_BGNK = _block_attention(q_BGNK, k_BGSK[:, :, :s + t], v_BGSK[:, :, :s + t], scale, offset=s)
        outs.append(o_BGNK.reshape(B, G, R, t, K))
    o_BGRTK = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return o_BGRTK.transpose(0, 3, 1, 2, 4).reshape(B, T, H, K)


def causal_attention(q_BTHK, k_BTGK, v_BTGK, scale: float, impl: str):
    """Causal attention o_BTHK by implementation `impl` (attention_impl's result). 'xla' and
    'cudnn' are jax.nn.dot_product_attention's; cudnn falls back to xla where it cannot trace."""
    if impl == "dense":
        return dense_attention(q_BTHK, k_BTGK, v_BTGK, scale)
    if impl == "blocked":
        return blocked_attention(q_BTHK, k_BTGK, v_BTGK, scale)
    if impl == "cudnn":
        try:
            return jax.nn.dot_product_attention(q_BTHK, k_BTGK, v_BTGK, scale=scale, is_causal=True,
                                                implementation="cudnn")
        except (NotImplementedError, ValueError, RuntimeError):  # no GPU / cuDNN, or an unsupported shape
            impl = "xla"
    if impl == "xla":
        return jax.nn.dot_product_attention(q_BTHK, k_BTGK, v_BTGK, scale=scale, is_causal=True,
                                            implementation="xla")
    raise ValueError(f"model.attention={impl!r} is not valid; use one of {ATTENTION_IMPLS}")
