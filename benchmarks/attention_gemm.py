"""Where XLA:CPU loses the causal attention forward: its GEMMs and softmax passes at the step's shapes.

    python benchmarks/attention_gemm.py                     # d512xL8's heads: B16 T256 H8 K64, + torch's kernel
    python benchmarks/attention_gemm.py --heads 4           # d256xL4's
    python benchmarks/attention_gemm.py --torch-python PYTHON     # torch from another environment

benchmarks/vs_torch.py --components finds our attention core's forward the one component far
behind torch's (F.scaled_dot_product_attention, a fused blockwise CPU kernel). This splits ours
into its pieces, each jitted alone on the block shapes scaling/attention.py's blocked path runs:
- scores: q k^T per (batch, kv head), contracting K (64): output N x S, the large one;
- p.v: p v per (batch, kv head), contracting S: the same FLOPs as scores, a small output;
- scores, keys pre-transposed: q (k^T) as a plain NN GEMM (rules out a transpose as the cause);
- scores, one GEMM per batch row: B unrolled dots instead of one batched dot;
- softmax: the mask, max, exp and sum passes over the scores (no GEMM);
- one elementwise pass: s x 2 over the B x H x T x T float32 scores (read + write once): the
  floor of any XLA formulation that materialises the scores, which XLA:CPU (no fused attention
  kernel) has to do at least once;
- blocked forward: the whole path (scaling.attention.blocked_attention);
and, for scale, a square 1024 matmul (the GEMM rate XLA:CPU reaches on big operands).
Each variant runs in its own process with and without the project's YNNPACK dot fusions
(scaling/xla_cpu.py), since XLA reads XLA_FLAGS once per process; the table prints ms and GFLOP/s
side by side, and the rate of each GEMM relative to the square matmul of the same process.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.vs_torch import DEFAULT_ENV  # noqa: E402  (the torch environment vs_torch.py creates)
YNN = "--xla_cpu_experimental_ynn_fusion_type"
SETTINGS = {"YNN dot fusions (project default)": f"{YNN}=LIBRARY_FUSION_TYPE_DOT", "XLA's own dots": f"{YNN}="}


def measure(B: int, T: int, H: int, K: int, steps: int) -> dict:
    """{piece: (ms, GFLOP/s)} in this process (its XLA_FLAGS as set by the parent)."""
    import jax
    import jax.numpy as jnp
    from benchmarks.components import timed
    from scaling import attention

    ks = jax.random.split(jax.random.key(0), 4)
    q_BGNK, k_BGSK = (jax.random.normal(kk, (B, H, T, K)) for kk in ks[:2])  # one block of T rows, S = T keys
    s_BGNS = jax.random.normal(ks[2], (B, H, T, T))
    q_BTHK = jax.random.normal(ks[3], (B, T, H, K))
    a_MM = jax.random.normal(ks[0], (1024, 1024))
    gemm = 2.0 * B * H * T * T * K  # multiply-adds x 2 of one score (or p.v) GEMM
    causal = jnp.tril(jnp.ones((T, T), dtype=bool))

    def softmax(s):
        s = jnp.where(causal, s, jnp.finfo(jnp.float32).min)
        e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
        return e, jnp.sum(e, axis=-1, keepdims=True)

    pieces = {
        "square 1024 matmul": (jax.jit(lambda a: a @ a), (a_MM,), 2.0 * 1024 ** 3),
        "scores q k^T": (jax.jit(lambda q, k: jnp.einsum("bgnk,bgsk->bgns", q, k)), (q_BGNK, k_BGSK), gemm),
        "scores, keys pre-transposed": (jax.jit(lambda q, kt: jnp.einsum("bgnk,bgks->bgns", q, kt)),
                                        (q_BGNK, jnp.swapaxes(k_BGSK, -1, -2)), gemm),
        "scores, one GEMM per batch row": (jax.jit(lambda q, k: jnp.stack(
            [jnp.einsum("gnk,gsk->gns", q[b], k[b]) for b in range(B)])), (q_BGNK, k_BGSK), gemm),
        "p.v": (jax.jit(lambda s, v: jnp.einsum("bgns,bgsk->bgnk", s, v)), (s_BGNS, k_BGSK), gemm),
        "softmax passes": (jax.jit(softmax), (s_BGNS,), 0.0),
        "one elementwise pass (s x 2)": (jax.jit(lambda s: s * 2.0), (s_BGNS,), 0.0),
        # the model's path: causal blocks skip the masked half, so ~half of 2 x gemm is executed
        "blocked forward (whole)": (jax.jit(lambda q: attention.blocked_attention(q, q, q, K ** -0.5)),
                                    (q_BTHK,), 2 * gemm),
    }
    out = {}
    for name, (fn, xs, flops) in pieces.items():
        ms = 1e3 * timed(lambda: fn(*xs), steps)
        out[name] = (ms, flops / ms / 1e6 if flops else None)
    return out


def torch_sdpa_ms(tpy: str, B: int, T: int, H: int, K: int, steps: int) -> float:
    """Forward ms of torch's F.scaled_dot_product_attention (causal) at the same shape, in its own process."""
    code = (f"import torch, time; import torch.nn.functional as F; q=torch.randn({B},{H},{T},{K}); "
            f"F.scaled_dot_product_attention(q,q,q,is_causal=True); t=time.perf_counter()\n"
            f"for _ in range({steps}): F.scaled_dot_product_attention(q,q,q,is_causal=True)\n"
            f"print(1e3*(time.perf_counter()-t)/{steps})")
    return float(subprocess.run([tpy, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--torch-python", default=str(DEFAULT_ENV / "bin" / "python"),
                   help="interpreter of a torch environment (default: the one benchmarks/vs_torch.py creates)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    shape = (args.batch, args.seq, args.heads, args.head_dim)
    if args.child:  # one measurement process: print its table as JSON
        print(json.dumps(measure(*shape, args.steps)))
        return
    res = {}
    for label, flags in SETTINGS.items():
        env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS=flags)
        cmd = [sys.executable, __file__, "--child", "--batch", str(args.batch), "--seq", str(args.seq),
               "--heads", str(args.heads), "--head-dim", str(args.head_dim), "--steps", str(args.steps)]
        res[label] = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    print(f"B{args.batch} T{args.seq} H{args.heads} K{args.head_dim}, float32, one layer; {os.cpu_count()} CPUs")
    print(f"{'piece':>31} " + " ".join(f"{'ms':>7} {'GFLOP/s':>8} {'/square':>7}" for _ in SETTINGS) + "   (" + " | ".join(SETTINGS) + ")")
    for name in next(iter(res.values())):
        cells = []
        for label in SETTINGS:
            ms, rate = res[label][name]
            peak = res[label]["square 1024 matmul"][1]
            cells.append(f"{ms:>7.1f} {rate or 0:>8.1f} {(rate or 0) / peak:>7.2f}" if rate else f"{ms:>7.1f} {'':>8} {'':>7}")
        print(f"{name:>31} " + " ".join(cells))
    if not pathlib.Path(args.torch_python).exists():
        print(f"torch: {args.torch_python} not found (run benchmarks/vs_torch.py once to create it): not compared")
    else:
        print(f"torch F.scaled_dot_product_attention forward (fused, causal): "
              f"{torch_sdpa_ms(args.torch_python, *shape, args.steps):.1f} ms")


if __name__ == "__main__":
    main()
