"""Numerics of the fast paths against the reference paths they replace.

- attention: blocked (and jax.nn.dot_product_attention's 'xla') vs dense over the full T x T:
  outputs and gradients w.r.t. q, k, v, float32, MHA and GQA, T a multiple of the block and not.
  Tolerance: float32 sums reordered (the blocked softmax sums the same nonzero terms; the masked
  ones are exp(-inf) = 0 in both), measured max |diff| ~1e-7 on O(1) values: atol 1e-5.
- loss: chunked_lm_loss vs cross_entropy of the full logits: loss, nll, z and the gradients
  w.r.t. x and w, with z-loss, muP's logit multiplier, and a chunk that does not divide B x T
  (padding). Measured ~1e-7 relative: rtol 1e-5. The eval's chunked weighted NLL sum likewise.
- the whole model: the trainer's loss and gradients with attention='blocked' + loss_chunk vs
  attention='dense' + full logits.
- attention_impl picks by platform ('cudnn' only for bf16 on GPU) and cudnn falls back on CPU.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling import attention, loss as loss_lib, model as model_lib
from scaling.config import defaults

ATOL = 1e-5
RTOL = 1e-5


def qkv(B, T, H, G, K, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(ks[0], (B, T, H, K)), jax.random.normal(ks[1], (B, T, G, K)),
            jax.random.normal(ks[2], (B, T, G, K)))


def value_and_grads(fn, *args):
    """fn(*args) and its vector-Jacobian product with a random cotangent (every row matters), as
    one jitted program: the trainer runs these paths under jit, and op-by-op dispatch of the
    unrolled blocks took 1.7x the CPU time of compiling them (measured)."""
    def f(*a):
        out, vjp = jax.vjp(fn, *a)
        return out, vjp(jax.random.normal(jax.random.key(9), out.shape))
    return jax.jit(f)(*args)


@pytest.mark.parametrize("T,H,G,block", [(128, 2, 2, 64), (100, 4, 2, 64)])
def test_blocked_and_xla_attention_match_dense(T, H, G, block):
    q, k, v = qkv(2, T, H, G, 16)
    scale = 16 ** -0.5
    ref, ref_g = value_and_grads(lambda a, b, c: attention.dense_attention(a, b, c, scale), q, k, v)
    for fn in (lambda a, b, c: attention.blocked_attention(a, b, c, scale, block=block),
               lambda a, b, c: attention.causal_attention(a, b, c, scale, "xla")):
        out, g = value_and_grads(fn, q, k, v)
        np.testing.assert_allclose(out, ref, atol=ATOL)
        for gi, ri in zip(g, ref_g):
            np.testing.assert_allclose(gi, ri, atol=ATOL)


def test_blocked_attention_is_causal():
    """Changing a later key/value leaves every earlier query's output unchanged."""
    q, k, v = qkv(1, 160, 2, 2, 8)
    blocked = jax.jit(lambda q, k, v: attention.blocked_attention(q, k, v, 0.3, block=64))  # one program for both
    o1 = blocked(q, k, v)
    o2 = blocked(q, k.at[:, 100:].set(5.0), v.at[:, 100:].set(-5.0))
    np.testing.assert_array_equal(o1[:, :100], o2[:, :100])
    assert not np.allclose(o1[:, 100:], o2[:, 100:])


@pytest.mark.parametrize("z_loss,mult,chunk", [(0.0, 1.0, 80), (1e-3, 0.25, 48)])
def test_chunked_loss_matches_full_logits(z_loss, mult, chunk):
    B, T, D, V = 2, 40, 16, 96
    ks = jax.random.split(jax.random.key(1), 3)
    x, w = jax.random.normal(ks[0], (B, T, D)), jax.random.normal(ks[1], (D, V))
    y = jax.random.randint(ks[2], (B, T), 0, V)

    def ref(x, w):
        return loss_lib.cross_entropy(jnp.einsum("btd,dv->btv", x, w) * mult, y, z_loss)

    def new(x, w):
        return loss_lib.chunked_lm_loss(x, w, y, z_loss, mult, chunk)

    (l_ref, a_ref), g_ref = jax.jit(jax.value_and_grad(ref, argnums=(0, 1), has_aux=True))(x, w)
    (l_new, a_new), g_new = jax.jit(jax.value_and_grad(new, argnums=(0, 1), has_aux=True))(x, w)
    np.testing.assert_allclose(l_new, l_ref, rtol=RTOL)
    for key in ("nll", "z_loss"):
        np.testing.assert_allclose(a_new[key], a_ref[key], rtol=RTOL, atol=1e-9)
    for gn, gr in zip(g_new, g_ref):
        np.testing.assert_allclose(gn, gr, rtol=RTOL, atol=1e-7)
    np.testing.assert_allclose(jax.jit(new)(x, w)[0], l_ref, rtol=RTOL)  # the undifferentiated path
    # the eval's sums (weighted NLL, weights) over the same chunks vs the full logits' (z-loss not in eval)
    wt = jax.random.uniform(ks[2], (B, T)) * (jnp.arange(T) < T - 7)  # some tokens weigh 0
    nll_ref = jnp.sum(wt * (jax.nn.logsumexp(jnp.einsum("btd,dv->btv", x, w) * mult, -1)
                            - jnp.take_along_axis(jnp.einsum("btd,dv->btv", x, w) * mult, y[..., None], -1)[..., 0]))
    sums = jax.jit(lambda x, w, t: loss_lib.chunked_nll_sum(x, w, y, t, mult, chunk))(x, w, wt)
    np.testing.assert_allclose(sums, (nll_ref, jnp.sum(wt)), rtol=RTOL)


def model_config(**model):
    c = defaults()
    c.model.update(dict(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=160), **model)
    return c


def test_model_fast_paths_match_reference(parametrization="mup"):
    """The trainer's loss and every parameter gradient: blocked + chunked vs dense + full logits
    (muP: its logit multiplier and 1/head_dim attention scale go through both paths)."""
    y = jax.random.randint(jax.random.key(3), (2, 160), 0, 128)

    def loss_and_grads(**model):
        m = model_lib.build_model(model_config(**model).model, 0, parametrization=parametrization, base_d_model=32)
        gdef, params = nnx.split(m)

        def f(p):
            mm = nnx.merge(gdef, p)
            return model_lib.lm_loss(mm, mm.features(y), y, 1e-4)[0]
        return jax.jit(jax.value_and_grad(f))(params)  # jitted, as in the trainer (eager took 2.2x the CPU)

    l_ref, g_ref = loss_and_grads(attention="dense", loss_chunk=0)
    l_new, g_new = loss_and_grads(attention="blocked", loss_chunk=96)
    np.testing.assert_allclose(l_new, l_ref, rtol=RTOL)
    for gn, gr in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(gn, gr, rtol=1e-4, atol=1e-6)


def test_attention_impl_by_platform():
    m = model_config().model
    assert attention.attention_impl(m, "cpu") == "blocked"
    assert attention.attention_impl(m, "gpu") == "xla"  # float32: cuDNN's fused kernel needs bf16/fp16
    m.compute_dtype = "bfloat16"
    assert attention.attention_impl(m, "gpu") == "cudnn"
    assert attention.attention_impl(m, "tpu") == "xla"
    m.attention = "dense"
    assert attention.attention_impl(m, "gpu") == "dense"


def test_cudnn_falls_back_to_xla_without_a_gpu():
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is present: cuDNN runs instead of falling back")
    q, k, v = qkv(1, 64, 2, 2, 8)
    np.testing.assert_allclose(attention.causal_attention(q, k, v, 0.3, "cudnn"),
                               attention.dense_attention(q, k, v, 0.3), atol=ATOL)


def test_gpu_benchmark_mode_plumbing_on_cpu(capsys):
    """benchmarks/train_step.py --preset gpt2 at a tiny shape: the preset's bf16/vocab/seq flags
    reach the trainer, explicit flags override them, and each line reports tokens/s, MFU and the
    attention implementation that ran (GPU numbers themselves: not yet measured)."""
    from benchmarks import train_step
    args = train_step.parse_args(["--preset", "gpt2", "--sizes", "64x1", "--batch", "2", "--seq", "32",
                                  "--steps", "1"])
    assert (args.dtype, args.vocab) == ("bfloat16", train_step.GPT2_PRESET["vocab"])
    c = train_step.make_config(64, 1, args)
    assert (c.model.compute_dtype, c.data.seq_len, c.train.batch_size) == ("bfloat16", 32, 2)
    r = train_step.bench(64, 1, args)
    assert r["attention"] == model_lib.attention_impl(c.model) and r["tokens_per_s"] > 0
    assert np.isfinite(r["loss"])


def test_xla_cpu_options_are_added_unless_given():
    """`import scaling` put the project's XLA:CPU options in XLA_FLAGS (this process compiled the
    tests above with them); a value the environment already names is kept."""
    import os
    from scaling import xla_cpu
    for name, value in xla_cpu.CPU_XLA_OPTIONS.items():
        assert f"--{name}=" in os.environ["XLA_FLAGS"]
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count=2 --{name}=OTHER"}
        xla_cpu.apply(env)
        assert env["XLA_FLAGS"].count(f"--{name}=") == 1 and f"--{name}=OTHER" in env["XLA_FLAGS"]
        assert xla_cpu.with_cpu_options("") == " ".join(f"--{n}={v}" for n, v in xla_cpu.CPU_XLA_OPTIONS.items())
