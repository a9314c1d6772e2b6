"""Train-step throughput of the real trainer: tokens/s, achieved FLOP/s and MFU.

    python benchmarks/train_step.py                      # CPU: MFU against a matmul peak measured in this run
    python benchmarks/train_step.py --preset gpt2        # GPU: 125M, 350M, 760M in bfloat16, batch 16 x 1024
    python benchmarks/train_step.py --sizes 256x4 --json # one JSON line per size (benchmarks/vs_torch.py)

FLOPs per token are the exact training count (3 x forward matmuls incl. attention over the full
T x T and the LM head, scaling/accounting.py), the same definition the trainer's MFU uses. On CPU
the peak is a jitted square matmul timed here, in the same process, so the ratio is meaningful on
a shared machine; on GPU/TPU it is the datasheet bf16 peak (accounting.PEAK_FLOPS) times devices.
Each line names the attention implementation the model actually ran (model.attention_impl).
"""
import argparse
import json
import time

import jax
import numpy as np

from scaling import accounting, sharding
from scaling import config as cfg_lib
from scaling import model as model_lib
from scaling.trainer import make_trainer

# GPT-3 paper's table of shapes (Brown et al. 2020, Table 2.1) at head_dim 64: 125M, 350M, 760M
# (d_model x n_layers); the GPT-2 vocabulary padded to a multiple of 128.
GPT2_PRESET = dict(sizes="768x12,1024x24,1536x24", dtype="bfloat16", batch=16, seq=1024, vocab=50304)


def make_config(d_model: int, n_layers: int, args):
    """The trainer's config for one benchmark shape (heads of 64, MHA, the defaults otherwise)."""
    c = cfg_lib.defaults()
    heads = max(d_model // 64, 1)
    c.model.update(d_model=d_model, n_layers=n_layers, n_heads=heads, n_kv_heads=heads,
                   vocab_size=args.vocab, compute_dtype=args.dtype, remat=args.remat)
    c.data.seq_len = args.seq
    c.data.tokenizer = f"bpe:{args.vocab}" if args.vocab != 256 else "bytes"
    c.train.batch_size = args.batch
    c.train.tokens = args.batch * args.seq * (args.steps + 2)
    c.optim.warmup_steps = 1
    c.mesh.num_devices = args.devices
    c = cfg_lib.resolve(c)
    cfg_lib.validate(c)
    return c


def bench(d_model: int, n_layers: int, args) -> dict:
    """Compile, warm up (one step), then time `args.steps` steps of the trainer's jitted step."""
    c = make_config(d_model, n_layers, args)
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
    return {"impl": "ours", "shape": f"d{d_model}xL{n_layers}", "n_params": accounting.param_counts(c.model)["total"],
            "seconds_per_step": dt, "tokens_per_s": tokens_per_s, "flops_per_s": tokens_per_s * fpt,
            "attention": model_lib.attention_impl(c.model), "loss": float(out["loss"])}


def peak_of(args) -> tuple[float, str]:
    """(peak FLOP/s of the devices used, where it comes from)."""
    device = jax.devices()[0]
    peak = accounting.peak_flops_for(device)
    if peak is not None:
        return peak * args.devices, f"datasheet bf16 peak of {device.device_kind} x{args.devices}"
    dtype = "float32" if args.dtype == "float32" else jax.numpy.bfloat16
    return accounting.measure_cpu_peak(dtype), f"measured {args.dtype} matmul peak of this {device.platform}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["gpt2"], help="GPU shapes 125M/350M/760M; explicit flags override it")
    p.add_argument("--sizes", help="comma list of d_modelxn_layers (default 128x2,256x4,384x6)")
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--vocab", type=int)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtype", choices=["float32", "bfloat16"])
    p.add_argument("--remat", default="none", choices=cfg_lib.REMAT_POLICIES)
    p.add_argument("--devices", type=int, default=1, help="devices in the mesh (data parallel)")
    p.add_argument("--json", action="store_true", help="one JSON line per size, no peak measurement")
    args = p.parse_args(argv)
    base = GPT2_PRESET if args.preset else dict(sizes="128x2,256x4,384x6", dtype="float32", batch=16,
                                                seq=256, vocab=8192)
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None):
    args = parse_args(argv)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    if args.json:
        for d, L in sizes:
            print(json.dumps(bench(d, L, args)), flush=True)
        return
    peak, peak_src = peak_of(args)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}); peak {peak / 1e9:.1f} GFLOP/s ({peak_src})")
    print(f"batch {args.batch} x seq {args.seq}, vocab {args.vocab}, {args.dtype} compute, remat {args.remat}, "
          f"{args.steps} timed steps")
    print(f"{'shape':>10} {'params':>13} {'tokens/s':>12} {'GFLOP/s':>10} {'MFU':>7}  attention")
    for d, L in sizes:
        r = bench(d, L, args)
        print(f"{r['shape']:>10} {r['n_params']:>13,} {r['tokens_per_s']:>12,.0f} {r['flops_per_s'] / 1e9:>10.2f} "
              f"{100 * r['flops_per_s'] / peak:>6.1f}%  {r['attention']}", flush=True)


if __name__ == "__main__":
    main()
