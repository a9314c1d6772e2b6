"""Tests for scaling/model.py: a float64 NumPy reference forward, init loss, causality, dtypes,
validation errors, muP, and sharded construction on a 2x4 CPU mesh."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from scaling.config import defaults as get_config
from scaling.model import build_model, cross_entropy, full_axis_rules, validate_model_config


def small_cfg(**kw):
    c = get_config().model
    c.update(dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4,
                  max_seq_len=16))
    c.update(kw)
    return c


@nnx.jit
def forward(model, tokens_BT):
    """Jitted forward: one compile per config instead of one per eager op (faster tests)."""
    return model(tokens_BT)


def tokens(B, T, V, seed=1):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, V, dtype=jnp.int32)


# ---------------------------------------------------------------- float64 NumPy reference
def _rms(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def _rope(x_TK, theta):
    T, K = x_TK.shape
    ang = np.arange(T)[:, None] * theta ** (-np.arange(0, K, 2) / K)[None, :]
    x1, x2 = x_TK[:, :K // 2], x_TK[:, K // 2:]
    return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang),
                           x2 * np.cos(ang) + x1 * np.sin(ang)], -1)


def reference_logits(model, cfg, tok_T, attn_scale, logit_mult):
    """One sequence, written as loops over heads: query head h reads kv head h // (H / G)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(model)))
    H, G = cfg.n_heads, cfg.n_kv_heads
    T, eps = len(tok_T), cfg.norm_eps
    x = p["embedding"][np.asarray(tok_T)]
    for i in range(cfg.n_layers):
        b = p["blocks"][i]
        a, h_in = b["attn"], _rms(x, b["attn_norm"]["scale"], eps)
        out = np.zeros_like(x)
        for h in range(H):
            g = h // (H // G)
            q, k, v = h_in @ a["wq"][:, h], h_in @ a["wk"][:, g], h_in @ a["wv"][:, g]
            if cfg.qk_norm:
                q, k = _rms(q, a["q_norm"]["scale"], eps), _rms(k, a["k_norm"]["scale"], eps)
            q, k = _rope(q, cfg.rope_theta), _rope(k, cfg.rope_theta)
            s = q @ k.T * attn_scale
            s[np.triu_indices(T, 1)] = -np.inf
            w = np.exp(s - s.max(-1, keepdims=True))
            out += (w / w.sum(-1, keepdims=True)) @ v @ a["wo"][h]
        x = x + out
        m, h_in = b["mlp"], _rms(x, b["mlp_norm"]["scale"], eps)
        up = h_in @ m["w_up"]
        if cfg.mlp == "swiglu":
            gate = h_in @ m["w_gate"]
            hid = gate / (1 + np.exp(-gate)) * up
        else:  # tanh-approximate GELU, jax.nn.gelu's default
            hid = 0.5 * up * (1 + np.tanh(math.sqrt(2 / math.pi) * (up + 0.044715 * up ** 3)))
        x = x + hid @ m["w_down"]
    x = _rms(x, p["final_norm"]["scale"], eps)
    w_out = p["embedding"].T if cfg.tie_embeddings else p["lm_head"]
    return x @ w_out * logit_mult


VARIANTS = [
    dict(),                                                  # MHA, SwiGLU, tied
    dict(n_kv_heads=2, qk_norm=True),                        # GQA + QK-norm
    dict(n_kv_heads=1, mlp="gelu", tie_embeddings=False),    # MQA, GELU, untied
]


@pytest.mark.parametrize("kw", VARIANTS)
def test_forward_matches_float64_reference(kw):
    cfg = small_cfg(**kw)
    model = build_model(cfg, seed=0)
    # Norm scales are 1 at init; perturb them so the test also checks they are applied.
    for path, v in nnx.to_flat_state(nnx.state(model)):
        if path[-1] == "scale":
            v[...] = 1 + 0.5 * jax.random.uniform(jax.random.key(len(path)), v[...].shape)
    tok = tokens(2, 12, cfg.vocab_size)
    got = np.asarray(forward(model, tok))
    assert got.dtype == np.float32 and got.shape == (2, 12, cfg.vocab_size)
    hd = cfg.d_model // cfg.n_heads
    for b in range(2):
        want = reference_logits(model, cfg, tok[b], 1 / math.sqrt(hd), 1.0)
        # f32 vs f64 over 2 layers of O(1) activations: errors ~1e-6; 1e-4 leaves margin.
        np.testing.assert_allclose(got[b], want, atol=1e-4, rtol=1e-4)


def test_mup_forward_and_init():
    cfg = small_cfg(n_kv_heads=2, mlp="gelu")
    base = 8
    model = build_model(cfg, 0, parametrization="mup", base_d_model=base)
    tok = tokens(1, 10, cfg.vocab_size)
    hd = cfg.d_model // cfg.n_heads
    want = reference_logits(model, cfg, tok[0], 1 / hd, base / cfg.d_model)
    np.testing.assert_allclose(np.asarray(forward(model, tok))[0], want, atol=1e-5, rtol=1e-4)
    # Hidden std = init_std * sqrt(base/d) = 0.01; 32*4*8 = 1024 samples of a normal give the
    # sample std within 2.2% (1 sigma = 1/sqrt(2n)); 10% is 4.5 sigma, and the two
    # parametrizations differ by a factor 2 here.
    wq = np.asarray(model.blocks[0].attn.wq[...])
    assert abs(wq.std() / (cfg.init_std * math.sqrt(base / cfg.d_model)) - 1) < 0.1
    emb = np.asarray(model.embedding[...])  # embedding init is not width-scaled (2048 samples)
    assert abs(emb.std() / cfg.init_std - 1) < 0.1
    with pytest.raises(ValueError, match="base_d_model"):
        build_model(cfg, 0, parametrization="mup")
    with pytest.raises(ValueError, match="parametrization='sp'"):
        build_model(cfg, 0, parametrization="sp")


def test_init_scales_and_determinism():
    cfg = small_cfg(n_layers=4, d_ff=256)
    a, b, c = build_model(cfg, 0), build_model(cfg, 0), build_model(cfg, 1)
    sa, sb, sc = (jax.tree.leaves(nnx.state(m)) for m in (a, b, c))
    assert all(np.array_equal(x, y) for x, y in zip(sa, sb))
    assert not np.array_equal(sa[0], sc[0])
    # 32*256 = 8192 samples: sample std within 0.8% (1 sigma = 1/sqrt(2n)); 4% is 5 sigma, and
    # w_down's std differs from w_up's by sqrt(2*4) = 2.8x.
    w_up = np.asarray(a.blocks[0].mlp.w_up[...])
    w_down = np.asarray(a.blocks[0].mlp.w_down[...])
    assert abs(w_up.std() / cfg.init_std - 1) < 0.04
    assert abs(w_down.std() / (cfg.init_std / math.sqrt(2 * cfg.n_layers)) - 1) < 0.04
    assert np.all(np.asarray(a.final_norm.scale[...]) == 1)


@pytest.mark.parametrize("V", [64, 1024])
def test_loss_at_init_is_log_vocab(V):
    # With init_std = 0.02 the logits are ~0 at init, so the predictive distribution is
    # ~uniform and NLL = ln V; 0.1 nats allows for the small random logits.
    cfg = small_cfg(vocab_size=V)
    tok = tokens(2, 12, V)
    _, aux = cross_entropy(forward(build_model(cfg, 0), tok)[:, :-1], tok[:, 1:], 0.0)
    assert abs(float(aux["nll"]) - math.log(V)) < 0.1


def test_cross_entropy_matches_numpy():
    logits = np.asarray(jax.random.normal(jax.random.key(0), (2, 5, 7))) * 3
    tgt = np.asarray(tokens(2, 5, 7))
    lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    nll = np.mean(lse - np.take_along_axis(logits, tgt[..., None], -1)[..., 0])
    loss, aux = cross_entropy(jnp.asarray(logits), jnp.asarray(tgt), 0.01)
    np.testing.assert_allclose(float(aux["nll"]), nll, rtol=1e-6)
    np.testing.assert_allclose(float(aux["z_loss"]), 0.01 * np.mean(lse ** 2), rtol=1e-6)
    np.testing.assert_allclose(float(loss), nll + 0.01 * np.mean(lse ** 2), rtol=1e-6)


def test_causality():
    cfg = small_cfg(n_kv_heads=2, qk_norm=True)
    model = build_model(cfg, 0)
    tok = tokens(1, 12, cfg.vocab_size)
    t = 7
    tok2 = tok.at[0, t].set((tok[0, t] + 1) % cfg.vocab_size)
    a, b = np.asarray(forward(model, tok)), np.asarray(forward(model, tok2))
    np.testing.assert_array_equal(a[0, :t], b[0, :t])  # earlier positions: bit-identical
    assert np.abs(a[0, t:] - b[0, t:]).max(axis=-1).min() > 1e-6  # later ones all change


def test_bf16_compute_close_to_f32():
    cfg = small_cfg(qk_norm=True, n_kv_heads=2)
    tok = tokens(2, 12, cfg.vocab_size)
    f32 = np.asarray(forward(build_model(cfg, 0), tok))
    cfg.compute_dtype = "bfloat16"
    model = build_model(cfg, 0)
    assert model.blocks[0].attn.wq[...].dtype == jnp.float32  # params stay f32
    bf16 = forward(model, tok)
    assert bf16.dtype == jnp.float32  # logits f32
    # bf16 keeps 8 mantissa bits: each rounding is <= 2^-9 = 0.2% relative; a few dozen
    # roundings through 2 layers give ~1% of the logit scale. Allow 5% of the logits' RMS.
    err = np.abs(np.asarray(bf16) - f32).max()
    assert 0 < err < 0.05 * np.sqrt(np.mean(f32 ** 2))  # measured: 1.2% of the RMS
    # The matmuls really run in bf16 (and the scores/logits accumulate into f32).
    jaxpr = jax.make_jaxpr(lambda m, x: m(x))(model, tok)
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert dots and all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)


def test_every_parameter_gets_a_gradient():
    cfg = small_cfg(n_kv_heads=2, qk_norm=True, tie_embeddings=False)
    model = build_model(cfg, 0)
    tok = tokens(2, 12, cfg.vocab_size)
    graphdef, params = nnx.split(model)

    @jax.jit
    def grads(params):
        def loss(p):
            return cross_entropy(nnx.merge(graphdef, p)(tok[:, :-1]), tok[:, 1:], 1e-4)[0]
        return jax.grad(loss)(params)

    for path, g in nnx.to_flat_state(grads(params)):
        g = np.asarray(g[...])
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, path


def _loss_and_grads(cfg, tok):
    graphdef, params = nnx.split(build_model(cfg, 0))

    def loss(p):
        return cross_entropy(nnx.merge(graphdef, p)(tok[:, :-1]), tok[:, 1:], 1e-4)[0]
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    return float(value), nnx.to_pure_dict(grads)


def test_remat_full_computes_the_same_loss_and_gradients():
    """model.remat='full' recomputes each block in the backward pass: the same operations on the same
    inputs, so the loss and every gradient agree to float32 rounding (XLA may fuse the recomputed
    ops differently: a few ulps; 1e-6 relative on the loss, 1e-6 of the largest gradient entry)."""
    cfg = small_cfg(n_layers=3, n_kv_heads=2, qk_norm=True)
    tok = tokens(2, 12, cfg.vocab_size)
    loss_none, grads_none = _loss_and_grads(cfg, tok)
    cfg.remat = "full"
    loss_full, grads_full = _loss_and_grads(cfg, tok)
    assert loss_full == pytest.approx(loss_none, rel=1e-6)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads_none))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * scale), grads_full, grads_none)


def test_remat_full_is_a_checkpoint_in_the_gradient():
    """'full' really rematerialises: the gradient holds one jax.checkpoint (primitive 'remat2') per
    block, 'none' holds none."""
    cfg = small_cfg(n_layers=3)
    tok = tokens(1, 8, cfg.vocab_size)
    for remat, expected in (("none", 0), ("full", 3)):
        cfg.remat = remat
        graphdef, params = nnx.split(build_model(cfg, 0))
        jaxpr = jax.make_jaxpr(jax.grad(lambda p: nnx.merge(graphdef, p)(tok).sum()))(params)
        assert [e.primitive.name for e in jaxpr.eqns].count("remat2") == expected, remat


BAD = [
    (dict(d_model=30), "model.d_model=30"),
    (dict(n_kv_heads=3), "model.n_kv_heads=3"),
    (dict(d_model=24, n_heads=8), "head_dim"),  # head_dim 3 is odd
    (dict(n_layers=0), "model.n_layers=0"),
    (dict(max_seq_len=0), "model.max_seq_len=0"),
    (dict(mlp="relu"), "model.mlp='relu'"),
    (dict(compute_dtype="float16"), "model.compute_dtype='float16'"),
    (dict(d_ff=-1), "model.d_ff=-1"),
    (dict(remat="some"), "model.remat='some'"),
]


@pytest.mark.parametrize("kw,msg", BAD)
def test_validation_errors_name_key_and_value(kw, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(")):
        validate_model_config(small_cfg(**kw))


def test_sequence_longer_than_max_seq_len_raises():
    cfg = small_cfg(max_seq_len=8)
    with pytest.raises(ValueError, match="max_seq_len=8"):
        build_model(cfg, 0)(tokens(1, 9, cfg.vocab_size))


def test_gqa_equals_mha_with_shared_kv_heads():
    """GQA (4 query heads, 2 kv heads) == MHA whose kv heads 2g, 2g+1 both copy GQA kv head g."""
    gqa = build_model(small_cfg(n_kv_heads=2), 0)
    mha = build_model(small_cfg(n_kv_heads=4), 1)
    assert mha.blocks[0].attn.wk[...].shape == mha.blocks[0].attn.wq[...].shape == (32, 4, 8)
    gqa_params = dict(nnx.to_flat_state(nnx.state(gqa)))
    for path, v in nnx.to_flat_state(nnx.state(mha)):
        src = gqa_params[path][...]
        v[...] = jnp.repeat(src, 2, axis=1) if path[-1] in ("wk", "wv") else src
    tok = tokens(2, 12, 64)
    np.testing.assert_allclose(np.asarray(forward(mha, tok)), np.asarray(forward(gqa, tok)),
                               atol=1e-6)  # same math, f32 roundoff only


def test_sharded_build_on_2x4_mesh_matches_unsharded():
    assert jax.device_count() >= 8
    mesh = jax.make_mesh((1, 2, 4), ("data", "fsdp", "model"), axis_types=(AxisType.Auto,) * 3)
    rules = (("embed", "fsdp"), ("mlp", "model"), ("heads", "model"), ("vocab", "model"))
    cfg = small_cfg(n_kv_heads=2, tie_embeddings=False, qk_norm=True)
    sharded = build_model(cfg, 0, mesh=mesh, rules=rules)
    assert sharded.blocks[0].attn.wq[...].sharding.spec == P("fsdp", "model", None)
    assert sharded.blocks[0].attn.wk[...].sharding.spec == P("fsdp", None, None)
    assert sharded.blocks[1].mlp.w_down[...].sharding.spec == P("model", "fsdp")
    assert sharded.lm_head[...].sharding.spec == P("fsdp", "model")
    assert sharded.embedding[...].sharding.spec == P("model", "fsdp")
    with jax.set_mesh(mesh), nnx.logical_axis_rules(full_axis_rules(rules)):
        shardings = nnx.get_named_sharding(nnx.state(sharded), mesh)
    assert shardings["blocks"][0]["mlp"]["w_up"].get_value().spec == P("fsdp", "model")
    tok = jax.device_put(tokens(8, 16, cfg.vocab_size), NamedSharding(mesh, P(("data", "fsdp"))))
    with jax.set_mesh(mesh):
        got = nnx.jit(lambda m, x: m(x))(sharded, tok)
    want = forward(build_model(cfg, 0), tok)
    # Same params (same seed), different reduction order across shards: f32 roundoff only.
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
