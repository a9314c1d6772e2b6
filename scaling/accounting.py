"""Parameter counts, FLOPs, MFU and device peak/memory tables from the model config alone (no model is built).

Conventions (units named everywhere):
- `param_counts`: "total" = every parameter once (tied embeddings counted once);
  "embedding" = the token-embedding matrix plus, when untied, the LM-head matrix;
  "nonembedding" = total - embedding = Kaplan et al. (2020)'s N, which excludes both the
  embedding and the unembedding matrices. Norm scales are non-embedding parameters.
- `flops_per_token`: "forward" = exact forward FLOPs per token, 2*m*n*k per matmul, over QKV,
  attention scores (Q K^T) and A V, output projection, MLP and LM head. Attention is counted
  over the FULL T x T score matrix: causal masking is not discounted, as in Chinchilla's
  appendix F (Hoffmann et al. 2022) and as XLA's dense attention kernels actually execute it.
  The embedding lookup is a gather: 0 FLOPs. Elementwise work (norms, RoPE, softmax, the MLP
  nonlinearity, residual adds) is not counted; it is ~2-3% of the total at small widths and
  vanishes relative to the matmuls as d_model grows. "train" = 3 x forward (the backward pass
  is two matmuls per forward matmul); "6n" = 6 x nonembedding params (Kaplan's C = 6ND per
  token); "6n_total" = 6 x total params.
- MFU = achieved model FLOP/s (tokens/s x train FLOPs/token) / peak FLOP/s of the devices used.

Pure Python (JAX is imported only inside measure_cpu_peak), so the launcher and the analysis
can count parameters and FLOPs of a config without loading JAX. scaling/model.py imports d_ff_of
from here: one definition of the MLP width.
"""
import math
import time

MLP_KINDS = ("swiglu", "gelu")

# Per-device dense (no sparsity) bf16 peak FLOP/s from vendor datasheets. Keys are lowercase
# substrings of jax's `device.device_kind`; the first match in this order wins, so the more
# specific names come first ("tpu v5 lite" before "tpu v5", "h100 pcie" before "h100").
PEAK_FLOPS = {
    "tpu v2": 22.5e12,       # 45e12 per chip; v2/v3 expose each of a chip's 2 cores as a device
    "tpu v3": 61.5e12,       # 123e12 per chip (v4 and later: one device per chip)
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,   # v5e
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,        # v5p reports itself as "TPU v5"
    "tpu v6 lite": 918e12,   # v6e (Trillium)
    "tpu v6e": 918e12,
    "v100": 125e12,          # fp16 tensor cores (no bf16 on V100)
    "a100": 312e12,
    "l40s": 362e12,
    "l40": 181e12,
    "l4": 121e12,
    "h100 pcie": 756e12,
    "h100 nvl": 835e12,
    "h100": 989e12,          # SXM
    "gh200": 989e12,
    "h200": 989e12,
    "b200": 2250e12,
}

GIB, GB = 2 ** 30, 1e9
# Per-device memory in bytes (HBM / GPU memory), keyed like PEAK_FLOPS (lowercase substrings of
# `device.device_kind`, first match wins; sizes named in the kind come first). "Per device as JAX
# sees devices": TPU v2/v3 expose each core (half a chip's HBM) as a device; v4 and later one per chip.
# Sources: Google Cloud TPU system-architecture pages (v2 16 GiB and v3 32 GiB per chip, v4 32 GiB,
# v5e 16 GiB, v5p 95 GiB, v6e 32 GiB per chip); NVIDIA datasheets (GB, decimal).
DEVICE_MEMORY = {
    "tpu v2": 8 * GIB,            # 16 GiB per chip, 2 cores
    "tpu v3": 16 * GIB,           # 32 GiB per chip, 2 cores
    "tpu v4": 32 * GIB,
    "tpu v5 lite": 16 * GIB,      # v5e
    "tpu v5e": 16 * GIB,
    "tpu v5p": 95 * GIB,
    "tpu v5": 95 * GIB,           # v5p reports itself as "TPU v5"
    "tpu v6 lite": 32 * GIB,      # v6e (Trillium)
    "tpu v6e": 32 * GIB,
    "v100-sxm2-32gb": 32 * GB,
    "v100": 16 * GB,              # the 16 GB part unless the kind names 32GB
    "a100-sxm4-80gb": 80 * GB,
    "a100 80gb": 80 * GB,         # "NVIDIA A100 80GB PCIe"
    "a100": 40 * GB,
    "l40s": 48 * GB,
    "l40": 48 * GB,
    "l4": 24 * GB,
    "h100 pcie": 80 * GB,
    "h100 nvl": 94 * GB,
    "h100": 80 * GB,              # SXM
    "gh200": 96 * GB,             # the 96 GB HBM3 part (a 144 GB HBM3e part exists)
    "h200": 141 * GB,
    "b200": 180 * GB,             # HGX B200: 180 GB per GPU
}


def d_ff_of(cfg) -> int:
    """MLP hidden width: cfg.d_ff if > 0, else the derived rule.

    SwiGLU: 8/3 * d_model rounded UP to a multiple of 64 (keeps params ~ a 4*d GELU MLP, as in
    LLaMA); GELU: 4 * d_model.
    """
    if cfg.d_ff > 0:
        return int(cfg.d_ff)
    if cfg.mlp == "swiglu":
        return 64 * math.ceil(8 * cfg.d_model / 3 / 64)
    if cfg.mlp == "gelu":
        return 4 * cfg.d_model
    raise ValueError(f"model.mlp={cfg.mlp!r} is not valid; use one of {MLP_KINDS}")


def param_counts(cfg) -> dict:
    """{"total", "embedding", "nonembedding"} parameter counts of the `model` config."""
    D, V, L = cfg.d_model, cfg.vocab_size, cfg.n_layers
    H, G = cfg.n_heads, cfg.n_kv_heads
    K, F = D // H, d_ff_of(cfg)
    attn = D * H * K + 2 * D * G * K + H * K * D + (2 * K if cfg.qk_norm else 0)
    mlp = (3 if cfg.mlp == "swiglu" else 2) * D * F
    per_layer = attn + mlp + 2 * D  # + attn_norm and mlp_norm scales
    nonembedding = L * per_layer + D  # + final_norm scale
    embedding = V * D * (1 if cfg.tie_embeddings else 2)
    return {"total": embedding + nonembedding, "embedding": embedding,
            "nonembedding": nonembedding}


def flops_per_token(cfg, seq_len: int) -> dict:
    """FLOPs per token at sequence length `seq_len` (see the module docstring for what counts).

    Returns {"forward", "train", "6n", "6n_total"}, all in FLOPs per token.
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len={seq_len!r} is not valid; it must be a positive integer")
    D, V, L = cfg.d_model, cfg.vocab_size, cfg.n_layers
    H, G = cfg.n_heads, cfg.n_kv_heads
    K, F = D // H, d_ff_of(cfg)
    qkv = 2 * D * (H + 2 * G) * K
    scores = 2 * seq_len * H * K  # q . k against all seq_len keys, full T x T
    mix = 2 * seq_len * H * K     # softmax weights x V, full T x T
    out = 2 * H * K * D
    mlp = (3 if cfg.mlp == "swiglu" else 2) * 2 * D * F
    forward = L * (qkv + scores + mix + out + mlp) + 2 * D * V  # + LM head
    counts = param_counts(cfg)
    return {"forward": forward, "train": 3 * forward, "6n": 6 * counts["nonembedding"],
            "6n_total": 6 * counts["total"]}


def run_flops(cfg, seq_len: int, tokens: int) -> dict:
    """Training FLOPs of a run of `tokens` tokens (D): exact and the 6ND approximations.

    {"flops": exact train FLOPs (3 x forward), "flops_6nd": 6 * n_params(total) * D,
     "flops_6nd_nonembed": 6 * n_params_nonembed * D}.
    """
    f = flops_per_token(cfg, seq_len)
    return {"flops": f["train"] * tokens, "flops_6nd": f["6n_total"] * tokens,
            "flops_6nd_nonembed": f["6n"] * tokens}


def peak_flops_for(device) -> float | None:
    """Dense bf16 peak FLOP/s of one device (a jax Device or a device_kind string); None if the
    device is not in PEAK_FLOPS (e.g. CPUs: use measure_cpu_peak)."""
    return _lookup(PEAK_FLOPS, device)


def _lookup(table: dict, device):
    """The value of the first key of `table` found in the device's lowercased device_kind."""
    kind = (device if isinstance(device, str) else device.device_kind).lower()
    return next((value for key, value in table.items() if key in kind), None)


def device_memory_for(device) -> float | None:
    """Memory of one device in bytes (a jax Device or a device_kind string); None if the device
    is not in DEVICE_MEMORY (e.g. CPUs: host memory is shared, no per-device limit)."""
    return _lookup(DEVICE_MEMORY, device)


def measure_cpu_peak(dtype="float32", n: int = 1024, seconds: float = 0.5) -> float:
    """FLOP/s of a jitted n x n x n matmul on the default device: best of repeated timings
    for about `seconds` after a warm-up (compile + one run). The CPU stand-in for a datasheet
    peak, so MFU on CPU means "fraction of what this machine's matmul reaches"."""
    import jax
    import jax.numpy as jnp

    dtype = jnp.dtype(dtype)
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()  # compile + warm-up
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def mfu(tokens_per_s: float, train_flops_per_token: float, peak_flops_total: float) -> float:
    """Model FLOPs utilisation: tokens_per_s * train_flops_per_token / peak_flops_total, where
    peak_flops_total is the summed peak of all devices the run uses."""
    if not peak_flops_total > 0:
        raise ValueError(f"peak_flops_total={peak_flops_total!r} is not valid; it must be > 0 "
                         f"(per-device peak x number of devices)")
    return tokens_per_s * train_flops_per_token / peak_flops_total
