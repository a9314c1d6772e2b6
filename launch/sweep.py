"""Expand a sweep config into runs (RunSpecs) with stable ids.

A sweep config is an experiments/*.py file whose get_config() returns what its runs change in the
trainer's defaults (scaling.config.defaults()) plus two data-only sections, each laid over its own
defaults by load_sweep and stripped from every run's config:

  sweep   what to run: kind 'grid' (model shapes x token counts D) or 'isoflop' (FLOP budgets C x
          model shapes, D = C / FLOPs-per-token under a named convention), replicate seeds, the
          shape ladder (target N -> n_layers, d_model, n_heads by an aspect-ratio rule) and the
          per-size hyperparameter rules (lr and batch as power laws, warmup as a fraction).
  cloud   where to run it on SkyPilot (see launch/skypilot.py); absent for local-only sweeps.

Each run of an isoFLOP sweep records its nominal budget C in its own config as meta.budget (a label,
outside its identity), so a run directory says which budget it belongs to.

Identity: a run's id is a readable prefix plus the first 8 hex digits of the hash of its resolved
config's canonical JSON (scaling.config.config_hash), e.g. `C1e13-L2-d64-D1.2M-3fa1c2d9`. Same config
-> same id -> same run directory SWEEP_DIR/runs/<id>, which is what makes a rerun resume.

The plan printed before paying for it (time, memory per device, refusal of what would not fit) is
launch/plan.py.

All parameter and FLOP counts come from scaling.accounting (never recounted here):
  N = n_params (total), N_ne = n_params_nonembed (Kaplan's N), D = tokens, C = exact training FLOPs
  (3 x forward, incl. attention and LM head), C_6nd = 6 * N * D.
"""
import dataclasses
import math

import ml_collections

from launch import hparams
from scaling import accounting
from scaling import config as cfg_lib
from scaling.config_files import load_py, overlay

SWEEP_KINDS = ("grid", "isoflop")
FLOP_CONVENTIONS = ("6nd", "exact")  # 6nd: C = 6 * N_total * D;  exact: C = accounting train FLOPs
N_KINDS = ("total", "nonembed")
NON_RUN_SECTIONS = ("sweep", "cloud")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One planned run: its id, its resolved config (what the trainer gets) and the planned N, D, C."""
    run_id: str
    config: ml_collections.ConfigDict
    n_params: int  # total parameters
    n_params_nonembed: int  # Kaplan's N
    n_params_embed: int
    tokens: int  # D, exactly steps * batch_size * seq_len
    flops: float  # exact training FLOPs (accounting.run_flops()["flops"])
    flops_6nd: float  # 6 * n_params * tokens
    flops_6nd_nonembed: float
    budget: float | None  # isoflop: the target C this run belongs to; grid: None
    seed: int
    steps: int
    hp_source: str = "lr config, B config"  # where its LR and batch come from (launch.hparams)

    @property
    def shape(self) -> str:
        m = self.config.model
        return f"L{m.n_layers} d{m.d_model} h{m.n_heads}"

    def summary(self) -> dict:
        """Plain-data description (for sweep.json and status tables)."""
        m = self.config.model
        return {"run_id": self.run_id, "n_layers": m.n_layers, "d_model": m.d_model, "n_heads": m.n_heads,
                "n_params": self.n_params, "n_params_nonembed": self.n_params_nonembed,
                "n_params_embed": self.n_params_embed, "tokens": self.tokens, "flops": self.flops,
                "flops_6nd": self.flops_6nd, "flops_6nd_nonembed": self.flops_6nd_nonembed,
                "budget": self.budget, "seed": self.seed, "steps": self.steps,
                "batch_size": self.config.train.batch_size, "seq_len": self.config.data.seq_len,
                "lr": self.config.optim.lr, "hp_source": self.hp_source}


def sweep_defaults() -> ml_collections.ConfigDict:
    """A `sweep` section holding every key expand() reads, with neutral defaults; configs set the rest.

    kind: 'grid' (shapes x tokens) | 'isoflop' (budgets x shapes). budgets: C in FLOPs (isoflop).
    flop_convention: '6nd' (D = C / (6 N_total)) | 'exact' (D = C / exact train FLOPs per token).
    tokens: D values (grid). seeds: replicates of every point. replicate_seeds: more seeds for the
    shapes of at most replicate_max_params total parameters only (cheap replicates of the small end,
    where a pack trains them together; run ids end in -s<seed>; a seed also in seeds runs once).
    tokens_per_param: (lo, hi) filter on D / N_total, ()
    = keep all. min_steps: drop points with fewer optimizer steps.
    shapes: n_targets (target N, of kind n_kind 'total' | 'nonembed'), aspect (d_model = aspect *
    n_layers), head_dim (fixed; n_heads = d_model / head_dim), gqa_group (n_kv_heads = n_heads /
    gqa_group), max_layers, explicit ((n_layers, d_model) pairs run as well).
    rules: lr = lr_ref * (N_nonembed / n_ref) ** lr_exponent (lr_ref 0: keep optim.lr); batch =
    batch_ref * (D / batch_d_ref) ** batch_exponent rounded to batch_multiple, capped at batch_max
    (batch_ref 0: keep train.batch_size); warmup_steps = warmup_fraction * steps (0: keep);
    eval_every = eval_every_fraction * steps (0: keep).
    est_flops_per_s, overhead_s: the local plan's time estimate per run (C / FLOP/s + overhead).
    device_memory_gb: local sweeps: memory of one device in GB (1e9 bytes) that every run must fit
    (0: no limit); cloud sweeps: overrides the accelerator's memory.
    forecast_flops: a budget C (FLOPs, 6ND) to forecast from the sweep's results and then run
    (`scaling demo`); 0 = none.
    branches: execute runs that differ only in D as one WSD trunk + a cooldown branch per D
    (launch/branches.py); False = one run per point.
    pack_size: local sweeps: runs equal but for seed / LR / optimizer scalars / init scale
    (scaling.packed.pack_key) train up to this many at a time as one packed job; 0 or 1 = off.
    """
    s = ml_collections.ConfigDict()
    s.kind = "isoflop"
    s.budgets = ()
    s.flop_convention = "6nd"
    s.tokens = ()
    s.seeds = (0,)
    s.replicate_seeds = ()
    s.replicate_max_params = 0.0
    s.tokens_per_param = ()
    s.min_steps = 1
    s.shapes = h = ml_collections.ConfigDict()
    h.n_targets = ()
    h.n_kind = "total"
    h.aspect = 64.0
    h.head_dim = 64
    h.gqa_group = 1
    h.max_layers = 64
    h.explicit = ()
    s.rules = r = ml_collections.ConfigDict()
    r.n_ref = 1e8
    r.lr_ref = 0.0
    r.lr_exponent = 0.0
    r.batch_ref = 0
    r.batch_d_ref = 1e9
    r.batch_exponent = 0.0
    r.batch_multiple = 8
    r.batch_max = 0
    r.warmup_fraction = 0.0
    r.eval_every_fraction = 0.0
    s.est_flops_per_s = 1e10
    s.overhead_s = 10.0
    s.device_memory_gb = 0.0
    s.forecast_flops = 0.0
    s.branches = False  # WSD trunks + cooldown branches instead of one run per point (launch/branches.py)
    s.pack_size = 0
    s.hparams = hparams.section_defaults()  # LR x batch grids, fitted LR/batch laws (launch/hparams.py)
    return s


def load_sweep(path) -> ml_collections.ConfigDict:
    """A sweep file laid over the defaults: its run keys over scaling.config.defaults(), its `sweep`
    section over sweep_defaults() and its `cloud` section (if any) over launch.skypilot's."""
    from launch.skypilot import cloud_config

    written = load_py(path)
    if "sweep" not in written:
        raise ValueError(f"{path}: get_config() has no 'sweep' section, so it is a single-run config; "
                         f"train it with `scaling train --config {path}`, or add config.sweep (see "
                         "experiments/demo_cpu.py)")
    run_keys = {k: v for k, v in written.items() if k not in NON_RUN_SECTIONS}
    cfg = overlay(cfg_lib.defaults(), run_keys, str(path))
    cfg.sweep = overlay(sweep_defaults(), written.sweep, str(path), prefix="sweep.")
    if "cloud" in written:
        cfg.cloud = overlay(cloud_config(), written.cloud, str(path), prefix="cloud.")
    return cfg


def sweep_problems(sw) -> list[str]:
    """Every problem of a `sweep` section that can be seen before counting any shape."""
    problems = []
    if sw.kind not in SWEEP_KINDS:
        problems.append(f"sweep.kind={sw.kind!r}: must be one of {SWEEP_KINDS}")
    if not (isinstance(sw.pack_size, int) and sw.pack_size >= 0):
        problems.append(f"sweep.pack_size={sw.pack_size!r}: must be an integer >= 0 (runs per packed job; "
                        "0 or 1: no packing)")
    if not sw.seeds:
        problems.append("sweep.seeds is empty; give at least one seed, e.g. (0,)")
    if sw.replicate_seeds and not sw.replicate_max_params > 0:
        problems.append(f"sweep.replicate_seeds={tuple(sw.replicate_seeds)} needs sweep.replicate_max_params > 0 "
                        "(the largest total N that gets them)")
    if sw.kind == "grid" and not sw.tokens:
        problems.append("sweep.kind='grid' needs sweep.tokens (token counts D), e.g. (1e6, 2e6, 4e6)")
    if sw.kind == "isoflop":
        if not sw.budgets:
            problems.append("sweep.kind='isoflop' needs sweep.budgets (FLOPs), e.g. (1e13, 3e13, 1e14)")
        if sw.flop_convention not in FLOP_CONVENTIONS:
            problems.append(f"sweep.flop_convention={sw.flop_convention!r}: must be one of {FLOP_CONVENTIONS} "
                            "('6nd': C = 6 * n_params * D; 'exact': C = exact training FLOPs per token * D)")
    h = sw.shapes
    if h.n_kind not in N_KINDS:
        problems.append(f"sweep.shapes.n_kind={h.n_kind!r}: must be one of {N_KINDS}")
    if h.n_targets and not h.aspect > 0:
        problems.append(f"sweep.shapes.aspect={h.aspect!r}: must be > 0 (d_model = aspect * n_layers)")
    problems += [f"sweep.shapes.n_targets: {t!r} is not a positive parameter count"
                 for t in h.n_targets if not t > 0]
    if not h.n_targets and not h.explicit:
        problems.append("sweep.shapes: no shapes; set sweep.shapes.n_targets or sweep.shapes.explicit")
    return problems + hparams.problems(sw)


def fmt_si(x: float) -> str:
    """2_000_000 -> '2M', 1_250_000 -> '1.25M', 65536 -> '65.5k' (3 significant digits)."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def _fmt_flops(c: float) -> str:
    """1e13 -> '1e13', 3e18 -> '3e18', 2.5e14 -> '2.5e14'."""
    mant, exp = f"{c:.2e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def _shape_model(base_model, n_layers: int, d_model: int, shapes) -> ml_collections.ConfigDict:
    if d_model % shapes.head_dim:
        raise ValueError(f"sweep.shapes: d_model={d_model} is not a multiple of sweep.shapes.head_dim="
                         f"{shapes.head_dim}")
    n_heads = d_model // shapes.head_dim
    if n_heads % shapes.gqa_group:
        raise ValueError(f"sweep.shapes.gqa_group={shapes.gqa_group} does not divide n_heads={n_heads} "
                         f"(d_model={d_model} / head_dim={shapes.head_dim})")
    m = ml_collections.ConfigDict(base_model.to_dict())
    m.n_layers, m.d_model, m.n_heads = int(n_layers), int(d_model), int(n_heads)
    m.n_kv_heads = n_heads // shapes.gqa_group
    m.d_ff = 0  # derived from d_model by scaling.accounting.d_ff_of (resolve fills it)
    return m


def ladder(base, shapes) -> list[ml_collections.ConfigDict]:
    """Model configs for sweep.shapes: explicit (n_layers, d_model) pairs and/or the target-N ladder.

    Ladder rule: d_model = aspect * n_layers, rounded to a multiple of head_dim (n_heads = d_model /
    head_dim, so head_dim is fixed across sizes); for each target N (total or non-embedding, as
    sweep.shapes.n_kind says) take the n_layers in [1, max_layers] whose counted N (accounting) is
    closest in log. Two targets landing on one shape is an error (the ladder is too fine).
    """
    models = [_shape_model(base.model, L, d, shapes) for L, d in shapes.explicit]
    candidates = _ladder_shapes(base, shapes, "total" if shapes.n_kind == "total" else "nonembedding")
    for target in shapes.n_targets:
        n, m = min(candidates, key=lambda c: abs(math.log(c[0] / target)))
        if abs(math.log(n / target)) > math.log(2):
            raise ValueError(f"sweep.shapes.n_targets: no shape with aspect={shapes.aspect}, head_dim="
                             f"{shapes.head_dim}, n_layers<={shapes.max_layers} is within 2x of N={target:g} "
                             f"(closest: {n} at L{m.n_layers} d{m.d_model}); change aspect or max_layers")
        models.append(m)
    seen = set()
    for m in models:
        if (m.n_layers, m.d_model) in seen:
            raise ValueError(f"sweep.shapes: the shape L{m.n_layers} d{m.d_model} appears twice (two "
                             "n_targets round to it, or it is also in explicit); space the targets further apart")
        seen.add((m.n_layers, m.d_model))
    return models


def _ladder_shapes(base, shapes, key: str) -> list[tuple[int, ml_collections.ConfigDict]]:
    """(N of kind `key`, model config) for every n_layers in [1, max_layers] under the ladder rule."""
    out = []
    for L in range(1, shapes.max_layers + 1):
        d = max(shapes.head_dim, shapes.head_dim * round(shapes.aspect * L / shapes.head_dim))
        m = _shape_model(base.model, L, d, shapes)
        out.append((accounting.param_counts(cfg_lib.resolve(_wrap_full(base, m)).model)[key], m))
    return out


def spec_for(cfg, n_target: float, tokens: float, budget: float | None = None) -> RunSpec:
    """The run the sweep's rules make for ~n_target TOTAL parameters trained on ~`tokens`: the
    ladder shape (sweep.shapes rule, explicit shapes aside) nearest n_target in log N, lr/batch/
    warmup/eval from sweep.rules, D rounded down to whole steps, the first of sweep.seeds."""
    if not (n_target > 0 and tokens > 0):
        raise ValueError(f"spec_for: N={n_target!r} and D={tokens!r} must be > 0")
    sw = cfg.sweep
    base = run_config(cfg)
    _, m = min(_ladder_shapes(base, sw.shapes, "total"), key=lambda c: abs(math.log(c[0] / n_target)))
    run = _wrap_full(base, m)
    counts = accounting.param_counts(cfg_lib.resolve(run).model)
    _hparams(run, counts, float(tokens), sw.rules)
    no_grid = ml_collections.ConfigDict(sw.to_dict())
    no_grid.hparams.lr_multipliers = no_grid.hparams.batch_multipliers = ()  # one run: the rules' (or fit's) HPs
    (run, source, tag), = hparams.variants(run, no_grid, counts, float(tokens), budget)
    spec = _finish(run, float(tokens), budget, sw.seeds[0], sw.rules, 1, None, tag, source)
    if spec is None:
        raise ValueError(f"spec_for: D={tokens:.3g} tokens is less than one step of L{m.n_layers} "
                         f"d{m.d_model} (batch {run.train.batch_size} x seq_len {run.data.seq_len})")
    return spec


def _hparams(run, counts: dict, tokens_raw: float, rules) -> None:
    """Apply sweep.rules to `run` in place (lr from N_ne; batch from D) before D is rounded."""
    n_ne = counts["nonembedding"]
    if rules.lr_ref:
        run.optim.lr = float(rules.lr_ref * (n_ne / rules.n_ref) ** rules.lr_exponent)
    if rules.batch_ref:
        b = rules.batch_ref * (tokens_raw / rules.batch_d_ref) ** rules.batch_exponent
        b = max(rules.batch_multiple, rules.batch_multiple * round(b / rules.batch_multiple))
        run.train.batch_size = int(min(b, rules.batch_max)) if rules.batch_max else int(b)


def _finish(run, tokens_raw: float, budget, seed: int, rules, min_steps: int, dropped: list | None,
            tag: str = "", hp_source: str = RunSpec.hp_source):
    """Round D to whole steps, set warmup/eval from the step count, label the budget, resolve,
    validate, count; None if too short."""
    tokens_per_step = run.train.batch_size * run.data.seq_len
    steps = int(tokens_raw // tokens_per_step)
    m = run.model
    if steps < min_steps:
        if dropped is not None:
            dropped.append(f"L{m.n_layers} d{m.d_model} at D={tokens_raw:.3g}"
                           + (f" (C={budget:.3g})" if budget else "")
                           + f": {steps} steps < sweep.min_steps={min_steps}")
        return None
    run.train.tokens = steps * tokens_per_step
    if rules.warmup_fraction:
        run.optim.warmup_steps = max(1, min(steps - 1, round(rules.warmup_fraction * steps)))
    if rules.eval_every_fraction:
        run.train.eval_every = max(1, round(rules.eval_every_fraction * steps))
    run.seed = int(seed)
    run.meta.budget = float(budget or 0.0)
    run = cfg_lib.resolve(run)
    cfg_lib.validate(run)
    counts = accounting.param_counts(run.model)
    fl = accounting.run_flops(run.model, run.data.seq_len, run.train.tokens)
    prefix = (f"C{_fmt_flops(budget)}-" if budget else "") + \
        f"L{m.n_layers}-d{m.d_model}-D{fmt_si(run.train.tokens)}" + (f"-{tag}" if tag else "")
    return RunSpec(run_id=f"{prefix}-{cfg_lib.config_hash(run)[:8]}", config=run,
                   n_params=int(counts["total"]), n_params_nonembed=int(counts["nonembedding"]),
                   n_params_embed=int(counts["embedding"]), tokens=int(run.train.tokens),
                   flops=float(fl["flops"]), flops_6nd=float(fl["flops_6nd"]),
                   flops_6nd_nonembed=float(fl["flops_6nd_nonembed"]), budget=budget, seed=int(seed),
                   steps=steps, hp_source=hp_source)


def run_config(cfg) -> ml_collections.ConfigDict:
    """The training part of a sweep config (sweep/cloud sections removed), as a fresh ConfigDict."""
    d = cfg.to_dict()
    for key in NON_RUN_SECTIONS:
        d.pop(key, None)
    return ml_collections.ConfigDict(d)


def expand(cfg, dropped: list | None = None) -> list[RunSpec]:
    """Sweep config -> RunSpecs, in a deterministic order (budget or D, then size, then seed).

    dropped: if a list is given, a reason is appended for every grid point left out (fewer than
    sweep.min_steps steps, or tokens/param outside sweep.tokens_per_param).
    """
    sw = cfg.sweep
    problems = sweep_problems(sw)
    if problems:
        raise ValueError("invalid sweep:\n  " + "\n  ".join(problems))
    base = run_config(cfg)
    models = ladder(base, sw.shapes)
    lo, hi = sw.tokens_per_param if sw.tokens_per_param else (0, 0)
    if sw.kind == "grid":
        points = [(m, float(d), None) for d in sw.tokens for m in models]  # (model, D before rounding, C)
    else:
        points = []
        for c in sw.budgets:
            for m in models:
                resolved = cfg_lib.resolve(_wrap_full(base, m)).model
                fpt = accounting.flops_per_token(resolved, base.data.seq_len)
                per_token = fpt["6n_total"] if sw.flop_convention == "6nd" else fpt["train"]
                points.append((m, float(c) / per_token, float(c)))
    specs = []
    for m, tokens_raw, budget in points:
        counts = accounting.param_counts(cfg_lib.resolve(_wrap_full(base, m)).model)
        ratio = tokens_raw / counts["total"]
        if (lo and ratio < lo) or (hi and ratio > hi):
            if dropped is not None:
                dropped.append(f"L{m.n_layers} d{m.d_model} at D={tokens_raw:.3g}"
                               + (f" (C={budget:.3g})" if budget else "")
                               + f": D/N={ratio:.3g} outside sweep.tokens_per_param=({lo}, {hi})")
            continue
        small = counts["total"] <= sw.replicate_max_params  # replicate seeds already in sweep.seeds run once
        replicates = tuple(k for k in sw.replicate_seeds if k not in sw.seeds) if small else ()
        for seed in (*sw.seeds, *replicates):
            run = _wrap_full(base, m)
            _hparams(run, counts, tokens_raw, sw.rules)
            for variant, source, tag in hparams.variants(run, sw, counts, tokens_raw, budget):
                tag = "-".join(filter(None, [tag, f"s{seed}" if seed in replicates else ""]))
                spec = _finish(variant, tokens_raw, budget, seed, sw.rules, sw.min_steps, dropped, tag, source)
                if spec is not None:
                    specs.append(spec)
    ids = [s.run_id for s in specs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"the sweep expands to duplicate runs {dup}: two grid points resolve to the same "
                         "config (e.g. the same D after rounding to whole steps); remove one")
    return specs


def _wrap_full(base, model_cfg) -> ml_collections.ConfigDict:
    run = ml_collections.ConfigDict(base.to_dict())
    run.model = ml_collections.ConfigDict(model_cfg.to_dict())
    return run
