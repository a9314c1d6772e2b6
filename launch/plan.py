"""The plan of a sweep, printed before paying for it: per run its N, D, C, estimated time and memory
per device, and the refusal of a sweep whose runs would not fit.

Time: C (exact training FLOPs) / the backend's sustained FLOP/s per run + a fixed overhead per run.
Memory: the plan shows each run's estimated peak bytes per device (scaling.memory) against the
memory of the device it will run on (`memory_plan`: the cloud section's accelerator, or
sweep.device_memory_gb for local sweeps); `check_memory` refuses the sweep, before anything
launches, when a run would not fit.
"""
import dataclasses

from launch.sweep import RunSpec, fmt_si
from scaling import memory


def _fmt_time(s: float) -> str:
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.1f}m"
    if s < 86400 * 2:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def est_time_s(spec: RunSpec, flops_per_s: float, overhead_s: float = 0.0) -> float:
    """Estimated wall time of one run: exact FLOPs / sustained FLOP/s + fixed per-run overhead."""
    return overhead_s + spec.flops / flops_per_s


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """The device every run of a sweep is planned on, for the memory column and check_memory."""
    n_devices: int  # devices of one run, unless its mesh.num_devices says otherwise
    device_bytes: float | None  # memory of one device; None: unknown or no limit (local, unset)
    source: str  # where device_bytes and n_devices come from, for the plan's footer
    platform: str | None = None  # 'tpu' / 'gpu' (cloud), None: not known (memory.estimate's platform)

    def mesh_shape(self, spec: RunSpec) -> tuple[int, int, int]:
        """The run's (data, fsdp, model) mesh on its devices."""
        return memory.mesh_shape(spec.config.mesh, spec.config.mesh.num_devices or self.n_devices)


def memory_plan(cfg) -> MemoryPlan:
    """The device of a sweep's runs: with a `cloud` section (whichever backend runs it), cloud.chips
    devices of cloud.accelerator's memory; local-only: 1 device (mesh.num_devices if set) with no
    limit. sweep.device_memory_gb > 0 sets the limit in either case."""
    override = cfg.sweep.device_memory_gb
    if not (isinstance(override, (int, float)) and override >= 0):
        raise ValueError(f"sweep.device_memory_gb={override!r}: must be GB (1e9 bytes) >= 0 (0 = no limit)")
    if "cloud" in cfg:
        acc = cfg.cloud.accelerator
        limit = override * 1e9 or memory.accelerator_memory(acc)
        where = f"sweep.device_memory_gb={override:g}" if override else (
            f"{acc}" if limit else f"{acc}: memory unknown, no limit (set sweep.device_memory_gb)")
        return MemoryPlan(int(cfg.cloud.chips), limit, f"{where}, {cfg.cloud.chips} devices (cloud.chips)",
                          memory.accelerator_platform(acc))
    where = f"sweep.device_memory_gb={override:g}" if override else "local: no limit (sweep.device_memory_gb=0)"
    return MemoryPlan(1, override * 1e9 or None, f"{where}, 1 device unless mesh.num_devices is set")


def check_memory(specs: list[RunSpec], plan: MemoryPlan) -> None:
    """Raise ValueError naming every run whose estimated peak does not fit plan.device_bytes (with
    the estimate, the limit and what would fit); nothing to check without a limit."""
    if plan.device_bytes is None:
        return
    problems = [memory.refusal(s.config, plan.mesh_shape(s), plan.device_bytes, s.run_id, plan.platform)
                for s in specs]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError(f"{len(problems)} of {len(specs)} runs would not fit in device memory "
                         f"({plan.source}); nothing was launched:\n  " + "\n  ".join(problems))


def _fmt_memory(spec: RunSpec, plan: MemoryPlan) -> str:
    """The run's estimated peak per device in GiB, '!' when it exceeds the usable device memory."""
    est = memory.estimate(spec.config, plan.mesh_shape(spec), platform=plan.platform)
    over = plan.device_bytes is not None and not memory.fits(est, plan.device_bytes)
    return f"{est.peak / 2 ** 30:.2f}" + ("!" if over else "")


def plan_table(specs: list[RunSpec], backend_flops_per_s: float, overhead_s: float = 0.0,
               parallel: int = 1, memory_on: MemoryPlan | None = None) -> str:
    """Text table, one row per run, plus totals. Time = overhead_s + C / backend_flops_per_s.

    backend_flops_per_s is the sustained training throughput of ONE run on the backend (FLOP/s,
    exact-FLOP convention); parallel runs share the total only for the wall-time total.
    memory_on: the device plan of the 'mem/dev' column (estimated peak GiB per device); default:
    one device, no limit.
    """
    if not backend_flops_per_s > 0:
        raise ValueError(f"backend_flops_per_s={backend_flops_per_s!r}: must be > 0")
    plan = memory_on or MemoryPlan(1, None, "1 device unless mesh.num_devices is set, no limit")
    head = ("run_id", "shape", "N", "N_nonemb", "D", "D/N", "steps", "C(exact)", "C(6ND)", "est.time",
            "mem/dev", "lr", "batch", "hp source")
    rows = [head]
    for s in specs:
        rows.append((s.run_id, s.shape, fmt_si(s.n_params), fmt_si(s.n_params_nonembed), fmt_si(s.tokens),
                     f"{s.tokens / s.n_params:.3g}", str(s.steps), f"{s.flops:.3g}", f"{s.flops_6nd:.3g}",
                     _fmt_time(est_time_s(s, backend_flops_per_s, overhead_s)), _fmt_memory(s, plan),
                     f"{s.config.optim.lr:.3g}", str(s.config.train.batch_size), s.hp_source))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 or i == len(head) - 1 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    total_c = sum(s.flops for s in specs)
    total_t = sum(est_time_s(s, backend_flops_per_s, overhead_s) for s in specs)
    lines.append("")
    lines.append(f"{len(specs)} runs, {len({(s.config.model.n_layers, s.config.model.d_model) for s in specs})} "
                 f"shapes; total C = {total_c:.3g} FLOPs (exact), {sum(s.flops_6nd for s in specs):.3g} (6ND); "
                 f"total D = {fmt_si(sum(s.tokens for s in specs))} tokens")
    lines.append(f"est. time at {backend_flops_per_s:.3g} FLOP/s per run + {overhead_s:g}s/run: "
                 f"{_fmt_time(total_t)} sequential"
                 + (f", ~{_fmt_time(total_t / parallel)} with --parallel {parallel}" if parallel > 1 else ""))
    limit = "no limit" if plan.device_bytes is None else (
        f"limit {memory.gib(memory.USABLE_FRACTION * plan.device_bytes)} usable of {memory.gib(plan.device_bytes)}")
    lines.append(f"mem/dev: estimated peak GiB per device of a training step (scaling.memory; '!' = does "
                 f"not fit); {limit} ({plan.source})")
    lines.append("units: N = total params, N_nonemb = non-embedding (Kaplan), D = training tokens, "
                 "C = training FLOPs")
    return "\n".join(lines)
