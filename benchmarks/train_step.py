"""Train-step throughput for 3 model sizes: tokens/s, achieved FLOP/s and MFU.

    python benchmarks/train_step.py              # CPU: MFU against a matmul peak measured in this run
    python benchmarks/train_step.py --dtype bfloat16 --sizes 768x12,1024x16,2048x24 --batch 32 --seq 1024

FLOPs per token are the exact training count (3 x forward matmuls incl. attention and LM head, see
scaling/accounting.py). On CPU the peak is a jitted square matmul timed here, in the same process, so
the ratio is meaningful on a shared machine; on GPU/TPU it is the datasheet bf16 peak.
"""
import argparse
import time

import jax
import numpy as np

from scaling import accounting, sharding
from scaling import config as cfg_lib
from scaling.train import make_trainer


def bench(d_model: int, n_layers: int, args) -> dict:
    c = cfg_lib.defaults()
    c.model.update(d_model=d_model, n_layers=n_layers, n_heads=max(d_model // 64, 1),
                   n_kv_heads=max(d_model // 64, 1), vocab_size=args.vocab, compute_dtype=args.dtype)
    c.data.seq_len = args.seq
    c.data.tokenizer = f"bpe:{args.vocab}" if args.vocab != 256 else "bytes"
    c.train.batch_size = args.batch
    c.train.tokens = args.batch * args.seq * (args.steps + 2)
    c.optim.warmup_steps = 1
    c.mesh.num_devices = args.devices
    c = cfg_lib.resolve(c)
    cfg_lib.validate(c)
    mesh = sharding.make_mesh(c.mesh)
    tr = make_trainer(c, mesh, sharding.logical_rules(mesh), steps=args.steps + 2)
    rng = np.random.default_rng(0)
    make = lambda: jax.device_put(rng.integers(0, args.vocab, (args.batch, args.seq), dtype=np.int32),  # noqa: E731
                                  tr.batch_sh)
    x, y = make(), make()
    state, out = tr.step_fn(tr.state, x, y)  # compile + warm-up
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        state, out = tr.step_fn(state, x, y)
    jax.block_until_ready(out)
    dt = (time.perf_counter() - t0) / args.steps
    tokens_per_s = args.batch * args.seq / dt
    fpt = accounting.flops_per_token(c.model, args.seq)["train"]
    return {"shape": f"d{d_model}xL{n_layers}", "n_params": accounting.param_counts(c.model)["total"],
            "tokens_per_s": tokens_per_s, "flops_per_s": tokens_per_s * fpt}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="128x2,256x4,384x6", help="comma list of d_modelxn_layers")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--devices", type=int, default=1, help="devices in the mesh (data parallel)")
    args = p.parse_args()

    device = jax.devices()[0]
    if device.platform == "cpu":
        peak = accounting.measure_cpu_peak(np.dtype(args.dtype) if args.dtype == "float32" else jax.numpy.bfloat16)
        peak_src = f"measured {args.dtype} matmul peak of this CPU"
    else:
        peak = accounting.peak_flops_for(device) * args.devices
        peak_src = f"datasheet bf16 peak of {device.device_kind} x{args.devices}"
    print(f"device: {device.device_kind} ({device.platform}); peak {peak / 1e9:.1f} GFLOP/s ({peak_src})")
    print(f"batch {args.batch} x seq {args.seq}, vocab {args.vocab}, {args.dtype} compute, {args.steps} timed steps")
    print(f"{'shape':>10} {'params':>12} {'tokens/s':>12} {'GFLOP/s':>10} {'MFU':>7}")
    for size in args.sizes.split(","):
        d, L = (int(v) for v in size.lower().split("x"))
        r = bench(d, L, args)
        print(f"{r['shape']:>10} {r['n_params']:>12,} {r['tokens_per_s']:>12,.0f} "
              f"{r['flops_per_s'] / 1e9:>10.2f} {100 * r['flops_per_s'] / peak:>6.1f}%", flush=True)


if __name__ == "__main__":
    main()
