"""The training loss: next-token cross-entropy (+ z-loss), on full logits or fused with the LM head.

`cross_entropy` is the reference: it takes the float32 logits_BTV the model's head produced.
`chunked_lm_loss` computes the same loss from the final-normed features x_BTD and the head's
w_DV without ever holding the B x T x V logits: it walks chunks of `chunk` tokens, and for each
computes the chunk's logits, its loss terms and, in the same pass, their gradients w.r.t. the
chunk's features and w_DV (softmax - one-hot, the z-loss term, x^T g). Autodiff then only scales
the saved gradients by the incoming cotangent. Memory: O(chunk x V) for the logits instead of
2 x B x T x V float32 (logits and their gradient), plus dx_BTD and dw_DV kept for the backward.
FLOPs are the head's own (forward 2·B·T·D·V, backward twice that): the same as autodiff's.
`chunked_nll_sum` is the eval's: the weighted NLL sum and the weight sum over the same chunks.
"""
import functools

import jax
import jax.numpy as jnp


def cross_entropy(logits_BTV, targets_BT, z_loss: float):
    """Mean next-token NLL (nats/token, float32) + z_loss * mean(logsumexp(logits)^2).

    Returns (loss, aux) with aux = {"nll": mean NLL, "z_loss": the z-loss term (already scaled)}.
    `loss` is the training objective; aux["nll"] is what gets reported as the loss.
    """
    logits_BTV = logits_BTV.astype(jnp.float32)
    lse_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    nll = jnp.mean(lse_BT - target_logit_BT)
    z = z_loss * jnp.mean(lse_BT ** 2)
    return nll + z, {"nll": nll, "z_loss": z}


def _chunks(x_BTD, targets_BT, chunk: int, weights_BT=None):
    """x as [n, chunk, D] and targets as [n, chunk] (zero-padded to a whole number of chunks) and
    [n, chunk] float32 token weights: weights_BT (default 1) on the real tokens, 0 on the padding."""
    D = x_BTD.shape[-1]
    x_ND, t_N = x_BTD.reshape(-1, D), targets_BT.reshape(-1)
    N = x_ND.shape[0]
    n = -(-N // chunk)
    pad = n * chunk - N
    w_N = jnp.ones((N,), jnp.float32) if weights_BT is None else weights_BT.reshape(-1).astype(jnp.float32)
    x_ND = jnp.pad(x_ND, ((0, pad), (0, 0)))
    t_N = jnp.pad(t_N, (0, pad))
    return x_ND.reshape(n, chunk, D), t_N.reshape(n, chunk), jnp.pad(w_N, (0, pad)).reshape(n, chunk)


def _chunk_terms(x_CD, w_DV, t_C, m_C, logit_mult: float):
    """One chunk's float32 logits-derived terms: (lse_C, target_logit_C, logits_CV)."""
    logits_CV = jnp.einsum("cd,dv->cv", x_CD, w_DV, preferred_element_type=jnp.float32) * logit_mult
    lse_C = jax.nn.logsumexp(logits_CV, axis=-1)
    tgt_C = jnp.take_along_axis(logits_CV, t_C[:, None], axis=-1)[:, 0]
    return lse_C * m_C, tgt_C * m_C, logits_CV


def _forward(x_BTD, w_DV, targets_BT, z_loss, logit_mult, chunk, with_grads: bool):
    """(loss, nll, z) and, with_grads, (dloss/dx_BTD, dloss/dw_DV)."""
    xs, ts, ms = _chunks(x_BTD, targets_BT, chunk)
    N = targets_BT.size

    def step(carry, inp):
        nll_sum, lse2_sum, dw_DV = carry
        x_CD, t_C, m_C = inp
        lse_C, tgt_C, logits_CV = _chunk_terms(x_CD, w_DV, t_C, m_C, logit_mult)
        carry = (nll_sum + jnp.sum(lse_C - tgt_C), lse2_sum + jnp.sum(lse_C ** 2), dw_DV)
        if not with_grads:
            return carry, None
        # d(loss)/d(logits) = [softmax - onehot + z_loss * 2 lse * softmax] / N on the real tokens
        p_CV = jnp.exp(logits_CV - lse_C[:, None])
        g_CV = p_CV * ((1.0 + 2.0 * z_loss * lse_C) * m_C / N)[:, None]
        g_CV = g_CV - jax.nn.one_hot(t_C, w_DV.shape[1], dtype=jnp.float32) * (m_C / N)[:, None]
        g_CV = (g_CV * logit_mult).astype(x_CD.dtype)
        dx_CD = jnp.einsum("cv,dv->cd", g_CV, w_DV, preferred_element_type=jnp.float32).astype(x_CD.dtype)
        dw_DV = dw_DV + jnp.einsum("cd,cv->dv", x_CD, g_CV, preferred_element_type=jnp.float32)
        return (carry[0], carry[1], dw_DV), dx_CD

    zero = jnp.zeros((), jnp.float32)
    dw0 = jnp.zeros(w_DV.shape, jnp.float32) if with_grads else zero
    (nll_sum, lse2_sum, dw_DV), dxs = jax.lax.scan(step, (zero, zero, dw0), (xs, ts, ms))
    nll, z = nll_sum / N, z_loss * lse2_sum / N
    out = (nll + z, nll, z)
    if not with_grads:
        return out
    dx_BTD = dxs.reshape(-1, x_BTD.shape[-1])[:N].reshape(x_BTD.shape)
    return out, (dx_BTD, dw_DV.astype(w_DV.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _fused(x_BTD, w_DV, targets_BT, z_loss, logit_mult, chunk):
    return _forward(x_BTD, w_DV, targets_BT, z_loss, logit_mult, chunk, with_grads=False)


def _fused_fwd(x_BTD, w_DV, targets_BT, z_loss, logit_mult, chunk):
    out, grads = _forward(x_BTD, w_DV, targets_BT, z_loss, logit_mult, chunk, with_grads=True)
    return out, (grads, targets_BT)


def _fused_bwd(z_loss, logit_mult, chunk, res, cotangents):
    (dx_BTD, dw_DV), targets_BT = res
    g = cotangents[0]  # only the loss is differentiable: aux (nll, z) carry no gradient
    return (g * dx_BTD).astype(dx_BTD.dtype), (g * dw_DV).astype(dw_DV.dtype), None


_fused.defvjp(_fused_fwd, _fused_bwd)


def chunked_lm_loss(x_BTD, w_DV, targets_BT, z_loss: float, logit_mult: float, chunk: int):
    """cross_entropy(x_BTD @ w_DV * logit_mult, targets_BT, z_loss) without the full logits: the
    same (loss, aux), differentiable in x_BTD and w_DV through `loss` only (aux carries no gradient)."""
    loss, nll, z = _fused(x_BTD, w_DV, targets_BT, float(z_loss), float(logit_mult), int(chunk))
    return loss, {"nll": nll, "z_loss": z}


def chunked_nll_sum(x_BTD, w_DV, targets_BT, weights_BT, logit_mult: float, chunk: int):
    """(sum of weights_BT * NLL_BT, sum of weights_BT), float32, where NLL_BT is the next-token
    NLL (nats) of the logits x_BTD @ w_DV * logit_mult: the eval's sums, computed over chunks of
    `chunk` tokens so the B x T x V logits never exist (the forward of chunked_lm_loss, weighted)."""
    xs, ts, ws = _chunks(x_BTD, targets_BT, chunk, weights_BT)

    def step(nll_sum, inp):
        x_CD, t_C, w_C = inp
        lse_C, tgt_C, _ = _chunk_terms(x_CD, w_DV, t_C, w_C, logit_mult)
        return nll_sum + jnp.sum(lse_C - tgt_C), None

    nll_sum, _ = jax.lax.scan(step, jnp.zeros((), jnp.float32), (xs, ts, ws))
    return nll_sum, jnp.sum(weights_BT.astype(jnp.float32))
