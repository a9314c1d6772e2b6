"""Per-device memory of one training step from the config and the mesh shape (no model is built).

Units: bytes per device. Terms (`MemoryEstimate`):
- params, grads, opt_state: every parameter of `accounting.param_counts` in `model.param_dtype`,
  each dimension divided by the mesh axis the trainer's logical-axis rules (scaling/sharding.py)
  map it to: 'embed' -> fsdp; 'vocab', 'heads', 'mlp', 'kv' -> model ('kv' replicated when
  n_kv_heads does not divide the model axis); 'head_dim' and the data axis replicate. Gradients
  have the parameters' dtype and sharding; AdamW keeps two moments of the same (optax's
  scale_by_adam with mu_dtype=None), plus three int32 step counters.
- activations: what the forward saves for the backward pass, per device (batch rows divided by
  data*fsdp; heads, d_ff and vocab by the model axis). Per block, remat "none": the block input,
  per RMSNorm its float32 normalised input and its output; q, k, v after projection (and RoPE),
  the attention output; the T x T scores twice in float32 (the softmax's exp and probabilities:
  attention is dense, no fused kernel; once, the unnormalised exp, on the blocked path, which
  normalises after p.v: 'auto' runs it on CPU, see `platform`) plus its boolean causal mask (and the probabilities again
  in the compute dtype when that is not float32); the MLP hidden: SwiGLU gate, sigmoid(gate),
  silu(gate), up and their product (5 x B x T x d_ff), GELU up, tanh and output (3x); with QK-norm
  q and k raw and normalised. The head: the final norm (as above) and, with model.loss_chunk = 0,
  two float32 B x T x vocab buffers (the logits / the cross-entropy's exp, and the logits'
  gradient); with loss_chunk > 0 (scaling/loss.py, fused) the features' gradient (B x T x d_model,
  compute dtype), the head's float32 gradient (d_model x vocab) and two float32 chunk x vocab
  buffers (XLA fuses the softmax, its gradient and the one-hot into the logits' consumers). Attention 'blocked' keeps each query
  block's scores against its keys only (sum over blocks of block x keys instead of T x T); every
  other implementation is counted as dense (an upper bound for cuDNN's fused kernel, which keeps none).
  Remat "full" (each block under jax.checkpoint): one block input per layer is saved, and one
  block's "none" activations are live again while that block's backward recomputes them.
- peak: params + opt_state + batch + max(activations + one layer's grads, grads + one layer's
  activations): the backward frees a block's activations as it writes that block's gradients.
  FSDP (fsdp > 1) adds one block's parameters all-gathered over fsdp (the transient of a layer).

Checked against XLA (tests/test_memory.py) on CPU, the compiled train step's
`memory_analysis()`:
- arguments equal params + opt_state + batch + counters + schedule scalars EXACTLY, per device, on 1 device, FSDP
  over 8, DP2 x FSDP2 x TP2 and with remat; the outputs (new state) alias the donated arguments;
- temporaries on one device, float32 compute (MHA tied, 4 layers; GQA + QK-norm untied GELU):
  within 15% of `temporaries` (measured within ~6%). XLA:CPU keeps a few small [B, T] statistics
  and residual duplicates the estimate leaves out, and fuses some elementwise chains it counts.
  bfloat16 compute measured ~20% over (not tested: XLA:CPU has no native bf16 dot and keeps
  float32 copies of matmul operands a GPU/TPU would not);
- temporaries on sharded meshes (FSDP over 8; DP2 x FSDP2 x TP2): within 30% above the estimate
  (measured 8-21% above). The model constrains the residual stream to batch-sharded rows (the
  'batch'/'seq'/'act_embed' rules); XLA:CPU also keeps the all-gathered weights of more than one
  block and a few replicated [B, T] statistics. (Without the constraint it needed 1.4-2.8x: the
  partitioner replicated activations.);
- remat 'full' (model.remat: each block under nnx.remat): XLA:CPU's schedule keeps most
  recomputed values live (temporaries fall only 7-8%), so the 'full' estimate is tested as a
  floor. Neither of the last two is checked against a GPU/TPU yet.
The estimate never sees XLA's workspace for collectives, cuBLAS/cuDNN scratch or the program
itself: keep headroom (`fits` uses a usable fraction of the device memory).

JAX-free, like scaling/accounting.py: the launcher plans sweeps with it without loading JAX.
"""
from __future__ import annotations

import dataclasses
import math
import numbers

from scaling.accounting import DEVICE_MEMORY, d_ff_of
from scaling.config_schema import ATTENTION_BLOCK, REMAT_POLICIES, resolve_attention
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
USABLE_FRACTION = 0.9  # of a device's memory: XLA's program, collective buffers and fragmentation
ADAM_COUNTERS = 3  # int32 scalars in the state: step, Adam's count, the schedule's count
SCHEDULE_SCALARS = 14  # 4-byte scalars the step takes as its LR schedule (scaling.optim.ScheduleArgs)
MESH_AXES = ("data", "fsdp", "model")
# SkyPilot GPU names whose memory is not the default part's, as the DEVICE_MEMORY key they match.
_SKYPILOT_GPU_KINDS = {"a100-80gb": "a100-sxm4-80gb", "v100-32gb": "v100-sxm2-32gb"}


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device of one training step (see the module docstring for what each holds)."""
    params: int  # parameters in param_dtype, after sharding
    grads: int  # gradients: same dtype and sharding as the parameters
    opt_state: int  # AdamW's two moments (param_dtype) + int32 counters
    batch: int  # the int32 inputs and targets of this device's rows
    activations: int  # saved for the backward pass at its start (all layers + head), remat applied
    layer_activations: int  # one block's activations without remat (live while it is recomputed)
    layer_grads: int  # one block's gradients
    gathered: int  # one block's parameters all-gathered over fsdp (0 without FSDP)
    remat: str  # the remat policy estimated

    @property
    def arguments(self) -> int:
        """What the step is called with: state (params, opt_state, counters) + batch + LR schedule scalars."""
        return self.params + self.opt_state + self.batch + 4 * SCHEDULE_SCALARS

    @property
    def temporaries(self) -> int:
        """Peak of what the step allocates beyond its arguments (outputs alias donated state)."""
        return max(self.activations + self.layer_grads, self.grads + self.layer_activations) + self.gathered

    @property
    def peak(self) -> int:
        """Peak bytes in use on one device during a step."""
        return self.arguments + self.temporaries

    def as_dict(self) -> dict:
        """Plain data for result.json and the plan (bytes per device)."""
        d = dataclasses.asdict(self)
        d.update(arguments=self.arguments, temporaries=self.temporaries, peak=self.peak)
        return d


def _bytes_of(dtype: str, key: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"{key}={dtype!r} is not valid; use one of {tuple(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def _mesh_axes(mesh_shape) -> tuple[int, int, int]:
    try:
        data, fsdp, model = (int(a) for a in mesh_shape)
    except (TypeError, ValueError):
        raise ValueError(f"mesh_shape={mesh_shape!r} is not valid; give resolved (data, fsdp, model) "
                         f"sizes, e.g. (1, 8, 1)") from None
    if min(data, fsdp, model) < 1:
        raise ValueError(f"mesh_shape={mesh_shape!r} is not valid; every axis must be >= 1 (resolve -1 "
                         f"first with scaling.sharding.mesh_shape)")
    return data, fsdp, model


def mesh_shape(mesh_cfg, n_devices: int) -> tuple[int, int, int]:
    """Resolve mesh.{data,fsdp,model} (one may be -1 = the remaining devices) for n_devices."""
    sizes = {}
    for name in MESH_AXES:
        if name not in mesh_cfg:
            raise KeyError(f"mesh config lacks key {name!r} (expected keys: data, fsdp, model, num_devices)")
        v = mesh_cfg[name]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"mesh.{name}={v!r}: must be a positive int or -1")
        if v == 0 or v < -1:
            raise ValueError(f"mesh.{name}={v}: must be a positive int or -1 (= the remaining devices)")
        sizes[name] = int(v)
    free = [n for n, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(
            f"mesh.{' and mesh.'.join(free)} are all -1: at most one mesh axis may be -1 "
            f"(got data={sizes['data']}, fsdp={sizes['fsdp']}, model={sizes['model']})")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    desc = ", ".join(f"{n}={v}" for n, v in sizes.items())
    if free:
        if n_devices % fixed:
            raise ValueError(
                f"mesh ({desc}): the fixed axes multiply to {fixed}, which does not divide the "
                f"{n_devices} devices; choose sizes whose product divides {n_devices}")
        sizes[free[0]] = n_devices // fixed
    elif fixed != n_devices:
        raise ValueError(
            f"mesh ({desc}): product {fixed} != {n_devices} devices; make data*fsdp*model equal "
            f"{n_devices}, set one axis to -1, or set mesh.num_devices={fixed}")
    return sizes["data"], sizes["fsdp"], sizes["model"]


def accelerator_memory(accelerator: str) -> float | None:
    """Bytes per device of a SkyPilot accelerator name ('tpu-v5litepod-64', 'tpu-v4-32', 'H100:8',
    'A100-80GB:8'), via accounting.DEVICE_MEMORY; None when the table does not know it."""
    name = accelerator.split(":")[0].strip().lower()
    if name.startswith("tpu-"):  # tpu-<version>-<cores or chips>: the version names the device kind
        version = name[len("tpu-"):].rsplit("-", 1)[0]
        kind = "tpu " + version.replace("litepod", " lite")
    else:
        kind = _SKYPILOT_GPU_KINDS.get(name, name.replace("-", " "))
    return next((v for k, v in DEVICE_MEMORY.items() if k in kind), None)


def accelerator_platform(accelerator: str) -> str:
    """The JAX platform of a SkyPilot accelerator name: 'tpu' for 'tpu-…', else 'gpu'."""
    return "tpu" if accelerator.strip().lower().startswith("tpu-") else "gpu"


def _split(n: int, ways: int) -> int:
    return -(-n // ways)  # a dimension that does not divide is padded by XLA (sharding.validate refuses it)


def param_elements_per_device(m, mesh_shape) -> dict:
    """{"layer": one block's parameters, "other": embedding, head and final norm} per device,
    under the trainer's logical-axis rules (elements, not bytes)."""
    _, fsdp, tp = _mesh_axes(mesh_shape)
    D, V, H, G = m.d_model, m.vocab_size, m.n_heads, m.n_kv_heads
    K, F = D // H, d_ff_of(m)
    d, h = _split(D, fsdp), _split(H, tp)
    g = _split(G, tp) if G % tp == 0 else G  # sharding.logical_rules replicates kv heads then
    attn = d * h * K * 2 + d * g * K * 2 + (2 * K if m.qk_norm else 0)  # wq, wo, wk, wv, q/k norms
    mlp = (3 if m.mlp == "swiglu" else 2) * d * _split(F, tp)
    layer = attn + mlp + 2 * d  # + attn_norm and mlp_norm scales
    vocab = _split(V, tp) * d
    return {"layer": layer, "other": vocab * (1 if m.tie_embeddings else 2) + d}


def _score_elements(impl: str, T: int) -> int:
    """Score-matrix elements per (row, head): T x T, or the blocked path's query blocks x their keys."""
    if impl != "blocked":
        return T * T
    return sum(min(b, T - s) * min(s + b, T) for b in (ATTENTION_BLOCK,) for s in range(0, T, b))


def _head_activations(m, bt: int, tp: int, cdt: int) -> int:
    """Bytes of the final norm and the LM head + loss saved or live at the backward's start."""
    v = _split(m.vocab_size, tp)
    norm = bt * m.d_model * (2 * cdt + 4)
    chunk = int(m.get("loss_chunk", 0))
    if not chunk:
        return norm + 2 * bt * v * 4
    return norm + bt * m.d_model * cdt + m.d_model * v * 4 + 2 * min(chunk, bt) * v * 4


def _layer_activations(m, rows: int, T: int, tp: int, cdt: int, impl: str) -> int:
    """Bytes one block saves for its backward pass (remat 'none'), per device, attention run by `impl`."""
    D, H, G = m.d_model, m.n_heads, m.n_kv_heads
    K, F = D // H, d_ff_of(m)
    h, f = _split(H, tp), _split(F, tp)
    g = _split(G, tp) if G % tp == 0 else G
    bt = rows * T
    norm = bt * D * (cdt + 4 + cdt)  # input, float32 normalised, output (x2 per block)
    qkv = bt * (h + 2 * g) * K * cdt  # q, k after RoPE and v
    qk_norm = bt * (h + g) * K * (cdt + 4) if m.qk_norm else 0  # raw q, k and their f32 normalised
    # dense: exp, probs, mask (+ probs in cdt); blocked normalises after p.v, so it keeps the
    # unnormalised exp and the mask only
    probs = 0 if impl == "blocked" else 4 + (cdt if cdt != 4 else 0)
    scores = rows * h * _score_elements(impl, T) * (4 + 1 + probs)
    attn_out = bt * h * K * cdt
    hidden = bt * f * cdt * (5 if m.mlp == "swiglu" else 3)
    return 2 * norm + qkv + qk_norm + scores + attn_out + hidden


def estimate(config, mesh_shape, *, platform: str | None = None, remat: str | None = None,
             batch_per_device: int | None = None) -> MemoryEstimate:
    """Per-device memory of a training step of `config` on a (data, fsdp, model) mesh.

    platform: where it runs ('cpu', 'gpu', 'tpu'), which decides what model.attention='auto' runs
    (config_schema.resolve_attention); None (not known): an accelerator's dense 'xla' path.
    remat: the policy to estimate (default: the config's model.remat).
    batch_per_device: sequences per device (default: train.batch_size / (data * fsdp)).
    """
    remat = config.model.remat if remat is None else remat
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r} is not valid; use one of {REMAT_POLICIES}")
    m, T = config.model, int(config.data.seq_len)
    data, fsdp, tp = _mesh_axes(mesh_shape)
    rows = batch_per_device if batch_per_device is not None else _split(config.train.batch_size, data * fsdp)
    if rows < 1:
        raise ValueError(f"batch_per_device={rows!r} is not valid; it must be a positive integer")
    pdt = _bytes_of(m.param_dtype, "model.param_dtype")
    cdt = _bytes_of(m.compute_dtype, "model.compute_dtype")
    counts = param_elements_per_device(m, mesh_shape)
    params = (m.n_layers * counts["layer"] + counts["other"]) * pdt
    layer_acts = _layer_activations(m, rows, T, tp, cdt, resolve_attention(m, platform))
    bt = rows * T
    head = _head_activations(m, bt, tp, cdt)
    if remat == "none":
        acts = m.n_layers * layer_acts + head
    else:  # block inputs only; one block's activations come back during its backward
        acts = m.n_layers * bt * m.d_model * cdt + layer_acts + head
    gathered = 0
    if fsdp > 1:
        gathered = param_elements_per_device(m, (data, 1, tp))["layer"] * pdt
    return MemoryEstimate(
        params=params, grads=params, opt_state=2 * params + 4 * ADAM_COUNTERS, batch=2 * bt * 4,
        activations=acts, layer_activations=layer_acts, layer_grads=counts["layer"] * pdt,
        gathered=gathered, remat=remat)


def fits(est: MemoryEstimate, device_bytes: float, usable_fraction: float = USABLE_FRACTION) -> bool:
    """True if the estimated peak fits in `usable_fraction` of a device's memory."""
    return est.peak <= usable_fraction * device_bytes


def max_batch_per_device(config, mesh_shape, device_bytes: float, *, platform: str | None = None,
                         remat: str | None = None, usable_fraction: float = USABLE_FRACTION) -> int:
    """The largest number of sequences per device whose step fits (0: not even one fits)."""
    def ok(rows):
        return fits(estimate(config, mesh_shape, platform=platform, remat=remat, batch_per_device=rows),
                    device_bytes, usable_fraction)

    if not ok(1):
        return 0
    hi = 1
    while ok(2 * hi):
        hi *= 2
    lo, hi = hi, 2 * hi  # ok(lo), not ok(hi): bisect (the peak grows monotonically with rows)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def gib(n_bytes: float) -> str:
    """Bytes as GiB with two decimals, e.g. '15.75 GiB'."""
    return f"{n_bytes / 2 ** 30:.2f} GiB"



def refusal(config, mesh_shape, device_bytes: float, run: str, platform: str | None = None,
            usable_fraction: float = USABLE_FRACTION) -> str | None:
    """None if the run's step fits the device (on `platform`, see estimate); else one line naming the
    run, the estimate, the limit and what would fit: the largest batch, FSDP over more devices, remat 'full'."""
    est = estimate(config, mesh_shape, platform=platform)
    if fits(est, device_bytes, usable_fraction):
        return None
    data, fsdp, tp = _mesh_axes(mesh_shape)
    rows = _split(config.train.batch_size, data * fsdp)
    options = []
    b = max_batch_per_device(config, mesh_shape, device_bytes, platform=platform, usable_fraction=usable_fraction)
    if b:
        options.append(f"train.batch_size <= {b * data * fsdp} ({b} per device)")
    wider = fsdp * 2
    while data * wider <= config.train.batch_size:  # every device needs at least one row
        shape = (data, wider, tp)
        rows_wider = _split(config.train.batch_size, data * wider)
        if config.train.batch_size % (data * wider) == 0 and fits(
                estimate(config, shape, platform=platform, batch_per_device=rows_wider), device_bytes, usable_fraction):
            options.append(f"FSDP over {data * wider * tp} devices (mesh.fsdp={wider})")
            break
        wider *= 2
    if est.remat != "full":
        full = estimate(config, mesh_shape, platform=platform, remat="full")
        if fits(full, device_bytes, usable_fraction):
            options.append(f"--config.model.remat=full ({gib(full.peak)})")
    return (f"run {run} does not fit: estimated peak {gib(est.peak)} per device (remat {est.remat!r}, "
            f"{rows} sequences of {config.data.seq_len} per device, mesh data={data} fsdp={fsdp} model={tp}) "
            f"> {gib(usable_fraction * device_bytes)} usable ({usable_fraction:.0%} of {gib(device_bytes)}); "
            f"what would fit: {'; '.join(options) or 'none of a smaller batch, more FSDP or remat full'}")
