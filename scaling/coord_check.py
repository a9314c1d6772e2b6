"""μP coordinate check: train a few steps at several widths and record how big every coordinate gets.

Yang et al. 2022 (Tensor Programs V, §7 "coordinate check"): under a correct μP, the typical size of
every activation coordinate after t updates is independent of width; under standard parametrization
(SP) with Adam at a fixed learning rate, updates to hidden and output layers grow with width, so
activations and output logits grow (~width^1 in the output logits). A wrong rule (an LR, init or
multiplier scaled the wrong way) shows up as a nonzero slope of log(size) in log(width).

What is measured: for each width, parametrization and step t = 0..steps (t = after t optimizer
updates), the RMS (root mean square over every coordinate) of these activations on one fixed probe
batch (held-out windows of the corpus, the same for every width):
    embed               the token embedding output x_BTD
    L{i}.attn_logits    attention scores after their scale (1/sqrt(head_dim) SP, 1/head_dim μP),
                        over the causal (unmasked) entries only
    L{i}.attn_out       the attention block's output (what it adds to the residual stream)
    L{i}.mlp_out        the MLP block's output
    L{i}.resid          the residual stream after block i
    logits              the output logits, after μP's output multiplier
The model is walked piece by piece (embedding, each block's norms, attention and MLP, final norm,
head) from the outside: scaling/model.py is not changed. Two checks keep the walk honest: the
logits rebuilt from the walked residual stream must equal the model's own forward, and the
attention output rebuilt from the recomputed attention logits must equal the attention module's own
output; either mismatch raises CoordCheckError (the model changed under the walk).

Training: the project's optimizer (scaling.optim.make_optimizer: Adam, μP per-layer LRs) with a
constant LR, no warmup, no weight decay and no clipping (they are not what is being checked), batches
of corpus windows in a fixed order drawn from `seed`, n_heads fixed so head_dim grows with width
(which is what makes the attention-scale rule matter).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scaling import config as cfg_lib
from scaling import data
from scaling.data.pipeline import gather_windows
from scaling.model import build_model, cross_entropy, rope
from scaling.optim import make_optimizer


class CoordCheckError(ValueError):
    """The coordinate check cannot run or its model walk no longer matches the model's forward."""


class DivergedError(CoordCheckError):
    """The training loss became NaN/inf (the learning rate is too high for this width)."""


@dataclasses.dataclass(frozen=True)
class CoordSetup:
    """What every width of one coordinate check shares."""
    widths: tuple[int, ...]  # d_model values, each a multiple of n_heads
    parametrization: str  # 'standard' | 'mup'
    steps: int = 5  # optimizer updates; sizes are recorded after 0..steps of them
    lr: float = 1e-2  # constant Adam LR (μP: the base width's LR; hidden matrices get lr * base/width)
    base_d_model: int = 32  # μP's base width
    n_layers: int = 2
    n_heads: int = 2  # fixed across widths: head_dim = width / n_heads grows with width
    seq_len: int = 32
    batch_size: int = 8  # sequences per step
    seed: int = 0  # model init and batch order
    init_std: float = 0.02
    cache_dir: str = "data_cache"  # where the embedded corpus is prepared (data.cache_dir)
    record_every: int = 1  # record sizes every this many steps (always at step 0 and the last step)


@dataclasses.dataclass(frozen=True)
class CoordRecord:
    """The RMS of one activation at one width after one number of steps."""
    parametrization: str  # 'standard' | 'mup'
    width: int  # d_model
    step: int  # optimizer updates applied before the measurement
    layer: str  # activation name (see the module docstring)
    rms: float  # sqrt(mean(x^2)) over the probe batch's coordinates
    loss: float  # training loss (nats/token) on the probe batch at this step


def run_config(setup: CoordSetup, width: int, lr: float | None = None):
    """The trainer config of one width: defaults with the setup's shape, data and optimizer."""
    if width % setup.n_heads:
        raise CoordCheckError(f"width {width} is not a multiple of n_heads={setup.n_heads}")
    if setup.parametrization not in cfg_lib.PARAMETRIZATIONS:
        raise CoordCheckError(f"parametrization={setup.parametrization!r}: use one of {cfg_lib.PARAMETRIZATIONS}")
    c = cfg_lib.defaults()
    c.seed = setup.seed
    c.data.update(seq_len=setup.seq_len, cache_dir=setup.cache_dir)
    c.model.update(d_model=width, n_layers=setup.n_layers, n_heads=setup.n_heads, n_kv_heads=setup.n_heads,
                   init_std=setup.init_std)
    c.train.batch_size = setup.batch_size
    c.optim.update(lr=setup.lr if lr is None else lr, schedule="constant", warmup_steps=0, weight_decay=0.0,
                   clip_norm=0.0, parametrization=setup.parametrization, base_d_model=setup.base_d_model)
    return cfg_lib.resolve(c)


def corpus_batches(setup: CoordSetup, steps: int, probe_size: int = 0) -> tuple[list[dict], dict]:
    """(`steps` training batches, one probe batch of `probe_size` (default: batch_size) held-out
    windows), fixed by setup.seed."""
    corpus = data.load(run_config(setup, setup.widths[0]).data)
    rng = np.random.default_rng(setup.seed)
    n_train = (len(corpus.train_tokens) - 1) // setup.seq_len
    n_eval = (len(corpus.eval_tokens) - 1) // setup.seq_len
    train = [gather_windows(corpus.train_tokens, rng.integers(0, n_train, setup.batch_size), setup.seq_len)
             for _ in range(steps)]
    probe = gather_windows(corpus.eval_tokens, rng.integers(0, n_eval, probe_size or setup.batch_size),
                           setup.seq_len)
    return train, probe


def _rms(x) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


def _attention_logits(attn, h_BTD):
    """(scores s_BGRTS after the attention scale, the attention output rebuilt from them)."""
    B, T, _ = h_BTD.shape
    G, R, K = attn.n_kv_heads, attn.n_heads // attn.n_kv_heads, attn.head_dim
    q_BTHK = jnp.einsum("btd,dhk->bthk", h_BTD, attn.wq[...])
    k_BTGK = jnp.einsum("btd,dgk->btgk", h_BTD, attn.wk[...])
    v_BTGK = jnp.einsum("btd,dgk->btgk", h_BTD, attn.wv[...])
    if attn.q_norm is not None:
        q_BTHK, k_BTGK = attn.q_norm(q_BTHK), attn.k_norm(k_BTGK)
    q_BTHK, k_BTGK = rope(q_BTHK, attn.rope_theta), rope(k_BTGK, attn.rope_theta)
    s_BGRTS = jnp.einsum("btgrk,bsgk->bgrts", q_BTHK.reshape(B, T, G, R, K), k_BTGK) * attn.attn_scale
    causal_TS = jnp.tril(jnp.ones((T, T), dtype=bool))
    p_BGRTS = jax.nn.softmax(jnp.where(causal_TS, s_BGRTS, -jnp.inf), axis=-1)
    o_BTHK = jnp.einsum("bgrts,bsgk->btgrk", p_BGRTS, v_BTGK).reshape(B, T, G * R, K)
    return s_BGRTS, causal_TS, jnp.einsum("bthk,hkd->btd", o_BTHK, attn.wo[...])


def probe(model, tokens_BT) -> tuple[dict, dict]:
    """({activation name: RMS}, {what: (walked, model's own)} pairs that must agree) for one batch."""
    sizes, agree = {}, {}
    x_BTD = jnp.take(model.embedding[...], tokens_BT, axis=0)
    sizes["embed"] = _rms(x_BTD)
    for i, block in enumerate(model.blocks):
        h_BTD = block.attn_norm(x_BTD)
        s_BGRTS, causal_TS, rebuilt_BTD = _attention_logits(block.attn, h_BTD)
        a_BTD = block.attn(h_BTD)
        agree[f"L{i}.attn_out"] = (rebuilt_BTD, a_BTD)
        # RMS over the causal entries only: the masked ones are not logits the softmax sees.
        n_causal = causal_TS.sum() * s_BGRTS.size / causal_TS.size
        sizes[f"L{i}.attn_logits"] = jnp.sqrt(jnp.sum(jnp.where(causal_TS, s_BGRTS ** 2, 0.0)) / n_causal)
        sizes[f"L{i}.attn_out"] = _rms(a_BTD)
        x_BTD = x_BTD + a_BTD
        m_BTD = block.mlp(block.mlp_norm(x_BTD))
        sizes[f"L{i}.mlp_out"] = _rms(m_BTD)
        x_BTD = x_BTD + m_BTD
        sizes[f"L{i}.resid"] = _rms(x_BTD)
    w_DV = model.embedding[...].T if model.lm_head is None else model.lm_head[...]
    walked_BTV = jnp.einsum("btd,dv->btv", model.final_norm(x_BTD), w_DV) * model.logit_mult
    logits_BTV = model(tokens_BT)  # the model's own forward: what training sees
    agree["logits"] = (walked_BTV, logits_BTV)
    sizes["logits"] = _rms(logits_BTV)
    return sizes, agree


def _check_agreement(agree, width: int) -> None:
    for what, (walked, own) in agree.items():
        walked, own = np.asarray(walked), np.asarray(own)
        scale = float(np.sqrt(np.mean(own ** 2))) + 1e-12
        err = float(np.max(np.abs(walked - own))) / scale
        if not err < 1e-3:
            raise CoordCheckError(f"width {width}: {what} rebuilt by walking the model differs from the model's "
                                  f"own forward (max error {err:.2g} x its RMS); scaling/model.py changed how it "
                                  "computes this, update scaling/coord_check.py to match")


class Stepper(NamedTuple):
    """One width's model at init and its compiled update, shared by every LR tried at that width."""
    graphdef: object
    params: object  # the initial parameters (from config.seed)
    tx: optax.GradientTransformation  # the project's optimizer built with lr = 1 (the LR is an argument)
    step: Callable  # (params, opt_state, lr, inputs_BT, targets_BT) -> (params, opt_state, train NLL)
    loss: Callable  # (params, inputs_BT, targets_BT) -> NLL (nats/token)


def make_stepper(config) -> Stepper:
    """Build the model and the optimizer of `config` once; the constant LR is a traced argument.

    The optimizer is built with lr = 1 and its update multiplied by the LR: with a constant schedule,
    no warmup and no weight decay this is the same update as building it with that LR, and every LR
    of a sweep then reuses one compiled step.
    """
    model = build_model(config.model, config.seed, parametrization=config.optim.parametrization,
                        base_d_model=config.optim.base_d_model)
    graphdef, params = nnx.split(model)
    unit = config.copy_and_resolve_references()
    unit.optim.lr = 1.0
    tx, _ = make_optimizer(unit, params, 1)
    z_loss = config.train.z_loss

    def loss_fn(p, inputs_BT, targets_BT):
        return cross_entropy(nnx.merge(graphdef, p)(inputs_BT), targets_BT, z_loss)

    @jax.jit
    def step(p, opt_state, lr, inputs_BT, targets_BT):
        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, inputs_BT, targets_BT)
        updates, opt_state = tx.update(grads, opt_state, p)
        updates = jax.tree.map(lambda u: u * lr, updates)
        return optax.apply_updates(p, updates), opt_state, aux["nll"]

    return Stepper(graphdef, params, tx, step, jax.jit(lambda p, i, t: loss_fn(p, i, t)[1]["nll"]))


def train_and_probe(config, batches: list[dict], probe_batch: dict, every: int = 1, stepper: Stepper | None = None):
    """Train `config`'s model at config.optim.lr on `batches`; yield (step, {name: RMS}, probe loss)
    after every `every` updates (and at step 0 and the last step). Sizes are None when every=0
    (losses only). stepper: make_stepper(config) built once for several LRs (else built here)."""
    if config.optim.weight_decay or config.optim.warmup_steps or config.optim.schedule != "constant":
        raise CoordCheckError("train_and_probe needs a constant LR, no warmup and no weight decay (run_config)")
    st = stepper or make_stepper(config)
    lr = jnp.float32(config.optim.lr)
    params, opt_state = st.params, st.tx.init(st.params)
    for t in range(len(batches) + 1):
        if t == 0 or t == len(batches) or (every and t % every == 0):
            loss = float(st.loss(params, probe_batch["inputs"], probe_batch["targets"]))
            sizes = None
            if every:  # eager: a handful of calls per width, each cheaper than compiling the probe
                sizes, agree = probe(nnx.merge(st.graphdef, params), probe_batch["inputs"])
                if t == 0:
                    _check_agreement(agree, config.model.d_model)
                sizes = {k: float(v) for k, v in sizes.items()}
            yield t, sizes, loss
        if t < len(batches):
            b = batches[t]
            params, opt_state, train_loss = st.step(params, opt_state, lr, b["inputs"], b["targets"])
            if not math.isfinite(float(train_loss)):
                raise DivergedError(f"width {config.model.d_model}: training loss became {float(train_loss)} "
                                    f"at step {t} (lr {config.optim.lr:g} too high?)")


def coord_check(setup: CoordSetup) -> list[CoordRecord]:
    """Every activation's RMS at every width and step 0..setup.steps (see the module docstring)."""
    if len(setup.widths) < 2:
        raise CoordCheckError(f"widths={setup.widths}: give at least two widths to see a trend")
    batches, probe_batch = corpus_batches(setup, setup.steps)
    records = []
    for width in setup.widths:
        for t, sizes, loss in train_and_probe(run_config(setup, width), batches, probe_batch,
                                              every=max(setup.record_every, 1)):
            records += [CoordRecord(setup.parametrization, width, t, k, v, loss) for k, v in sizes.items()]
    return records


def slope(records: list[CoordRecord], layer: str, step: int) -> float:
    """Least-squares slope of log(RMS) against log(width) for one activation at one step."""
    pts = sorted((r.width, r.rms) for r in records if r.layer == layer and r.step == step)
    if len(pts) < 2:
        raise CoordCheckError(f"no records for {layer!r} at step {step} at two or more widths")
    w, y = np.log([p[0] for p in pts]), np.log([max(p[1], 1e-30) for p in pts])
    return float(np.polyfit(w, y, 1)[0])


# A coordinate "grows" when log(RMS) rises faster than this per log(width). Measured with
# `scaling mup-check` (widths 32-256, 5 Adam steps at lr 1e-2, batch 8): SP's hidden activations grow
# at slopes 1.6-2.7 and its output logits at 0.65; μP's activations and logits stay within -0.2..+0.21,
# except the second layer's attention logits (slope 0.94 while still tiny: RMS 0.04-0.26, against SP's
# 0.15-13, and rising more slowly at each doubling, as a finite-width transient would). Shrinking
# coordinates are allowed (μP's attention and output logits start at ~width^-0.5): μP asks that
# nothing blows up and that updates be Θ(1).
SLOPE_TOL = 0.5


def growing(slopes_by_layer: dict[str, float], tol: float = SLOPE_TOL) -> list[str]:
    """The activations whose RMS grows faster than width**tol."""
    return [layer for layer, s in slopes_by_layer.items() if s > tol]


def slopes(records: list[CoordRecord], step: int) -> dict[str, float]:
    """{activation: log-log slope of RMS in width} at one step, in the records' layer order."""
    layers = list(dict.fromkeys(r.layer for r in records))
    return {layer: slope(records, layer, step) for layer in layers}
