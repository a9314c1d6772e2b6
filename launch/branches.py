"""Execute a sweep as WSD trunks with cooldown branches (`sweep.branches = True`).

Runs of a sweep that differ only in their token count D (and labels such as meta.budget) share
everything up to their branch points (scaling/branch.py): one trunk per such group trains the
constant-lr phase once, checkpointing at every branch point, and each run of the group becomes a
branch that restores the trunk at its branch point and trains only its own cooldown. The branches are
the sweep's planned runs (SWEEP/runs/<id>, ordinary result.json); the trunks live in SWEEP/trunks
(scaling.rundir.trunk_dir), which analysis never reads.

Execution is in two phases on the ordinary local backend: every trunk with an unfinished branch, then
every branch whose trunk finished (a branch whose trunk failed is failed with that reason), on the same
warm workers (launch.local.shared_workers), whose compiled steps a branch reuses (scaling/trainer.py). When all
branches of a trunk have finished ok, this module deletes the trunk's checkpoints (`release`): they are
kept until then, whatever checkpoint.keep says (checkpoint.keep_steps).

Rules (`problems`): optim.schedule must be 'wsd', and the per-run rules must not make the shared phase
differ with D: no batch that grows with D (sweep.rules.batch_exponent), no warmup or eval interval as a
fraction of each run (sweep.rules.warmup_fraction, eval_every_fraction).
"""
import dataclasses
import pathlib
import shutil
from typing import Callable

from launch.sweep import RunSpec
from scaling import accounting, branch, rundir
from scaling import config as cfg_lib


@dataclasses.dataclass(frozen=True)
class Trunk:
    """One trunk and the branches it serves."""
    spec: RunSpec
    """The trunk as a runnable spec (run_id = trunk id; tokens and flops of the trunk's own steps)."""
    branch_ids: tuple[str, ...]
    """Run ids of its branches (planned runs of the sweep)."""
    standalone_flops: float
    """Exact training FLOPs of its branches run one per point from step 0 (sum of their C)."""
    executed_flops: float
    """Exact training FLOPs executed with branches: the trunk's plus every branch's own steps."""


@dataclasses.dataclass(frozen=True)
class BranchPlan:
    """The sweep's runs as trunks and branches."""
    trunks: list[Trunk]
    """One per group of runs that differ only in D, in the order of the sweep's runs."""
    branches: list[RunSpec]
    """The planned runs, each a branch (train.branch set), in the sweep's order."""

    def trunk_of(self, run_id: str) -> Trunk:
        return next(t for t in self.trunks if run_id in t.branch_ids)


def problems(cfg) -> list[str]:
    """Why `sweep.branches = True` cannot work for this sweep config (empty when it can)."""
    out, rules = [], cfg.sweep.rules
    if cfg.optim.schedule != "wsd":
        out.append(f"sweep.branches=True needs optim.schedule='wsd' (got {cfg.optim.schedule!r}): cooldowns "
                   "branch from a constant-lr trunk")
    if rules.batch_ref and rules.batch_exponent:
        out.append(f"sweep.branches=True needs one batch size per shape, but sweep.rules.batch_exponent="
                   f"{rules.batch_exponent:g} makes it grow with D; set it to 0")
    for key in ("warmup_fraction", "eval_every_fraction"):
        if rules[key]:
            out.append(f"sweep.branches=True needs the shared phase to be the same for every D, but "
                       f"sweep.rules.{key}={rules[key]:g} scales it with each run's length; set it to 0 "
                       f"(warmup in absolute steps: optim.warmup_steps)")
    return out


def plan_for(cfg, specs: list[RunSpec], backend: str) -> BranchPlan | None:
    """The sweep's BranchPlan when sweep.branches is on (None when off); ValueError (one line) naming
    the rule a config breaks."""
    if not cfg.sweep.branches:
        return None
    bad = problems(cfg) + ([f"sweep.branches=True runs on the local backend only (got --backend {backend})"]
                           if backend != "local" else [])
    if bad:
        raise ValueError("; ".join(bad))
    return plan(specs)


def plan(specs: list[RunSpec]) -> BranchPlan:
    """Group the runs by scaling.branch.trunk_key; one trunk per group, every run a branch of it."""
    groups: dict[str, list[RunSpec]] = {}
    for s in specs:
        groups.setdefault(branch.trunk_key(s.config), []).append(s)
    trunks, by_id = [], {}
    for members in groups.values():
        points = [cfg_lib.branch_step(s.config.optim, s.steps) for s in members]
        tcfg = branch.trunk_config(members[0].config, points)
        seed = f"-s{members[0].seed}" if members[0].seed else ""  # seed 0's trunk ids predate seed replicates
        trunk = _spec(members[0], tcfg, f"trunk-{members[0].shape.replace(' ', '-')}{seed}")
        fpt = accounting.flops_per_token(tcfg.model, tcfg.data.seq_len)["train"]
        ids = []
        for s in members:
            bcfg = cfg_lib.resolve(branch.branch_config(s.config, trunk.run_id))
            cfg_lib.validate(bcfg)
            b = dataclasses.replace(s, run_id=f"{s.run_id.rsplit('-', 1)[0]}-br-{cfg_lib.config_hash(bcfg)[:8]}",
                                    config=bcfg)
            by_id[s.run_id] = b
            ids.append(b.run_id)
        tokens_per_step = tcfg.train.batch_size * tcfg.data.seq_len
        own = sum((s.steps - p) * tokens_per_step for s, p in zip(members, points))
        trunks.append(Trunk(trunk, tuple(ids), sum(s.flops for s in members), trunk.flops + fpt * own))
    return BranchPlan(trunks, [by_id[s.run_id] for s in specs])


def _spec(like: RunSpec, config, prefix: str) -> RunSpec:
    """A RunSpec for `config` (same model as `like`), its id prefix + the config hash."""
    fl = accounting.run_flops(config.model, config.data.seq_len, config.train.tokens)
    return dataclasses.replace(like, run_id=f"{prefix}-{cfg_lib.config_hash(config)[:8]}", config=config,
                               tokens=int(config.train.tokens), flops=float(fl["flops"]),
                               flops_6nd=float(fl["flops_6nd"]), flops_6nd_nonembed=float(fl["flops_6nd_nonembed"]),
                               budget=None, steps=cfg_lib.num_steps(config))


def savings_table(bplan: BranchPlan) -> str:
    """Per trunk (shape): the points it yields, its steps and branch points, and the exact training
    FLOPs executed with branches against one run per point."""
    head = ("trunk", "points", "trunk steps", "branch at", "C executed", "C one-run-per-point", "saving")
    rows = [head]
    for t in bplan.trunks:
        at = sorted({b.config.train.branch.step for b in bplan.branches if b.run_id in t.branch_ids})
        rows.append((t.spec.run_id, str(len(t.branch_ids)), str(t.spec.steps), ",".join(map(str, at)),
                     f"{t.executed_flops:.3g}", f"{t.standalone_flops:.3g}",
                     f"{1 - t.executed_flops / t.standalone_flops:.0%}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ex, alone = sum(t.executed_flops for t in bplan.trunks), sum(t.standalone_flops for t in bplan.trunks)
    lines.append(f"\nWSD branches: {len(bplan.branches)} points from {len(bplan.trunks)} trunk{'s' * (len(bplan.trunks) != 1)}; C executed "
                 f"{ex:.3g} vs {alone:.3g} FLOPs one run per point ({alone / ex:.2f}x fewer, saving {1 - ex / alone:.0%}; "
                 f"exact training FLOPs, evals excluded); trunk tokens D_trunk = "
                 f"{sum(t.spec.tokens for t in bplan.trunks):,}")
    return "\n".join(lines)


def run_planned(bplan: BranchPlan | None, specs: list[RunSpec], sweep_dir, make_backend: Callable, source: str,
                say: Callable[[str], None] = print):
    """Write the sweep's manifest (and the trunks' own, `scaling status SWEEP/trunks`) and run it: one
    run per spec when bplan is None, else trunks then branches (`execute`). Returns SweepResults."""
    from launch import local

    local.write_manifest(sweep_dir, specs, source)  # FILE or FILE.py:ARG: what load_sweep reads again
    if bplan is None:
        return make_backend(sweep_dir).run(specs)
    local.write_manifest(rundir.trunks_dir(sweep_dir), [t.spec for t in bplan.trunks], source)
    return execute(bplan, sweep_dir, make_backend, say)


def execute(bplan: BranchPlan, sweep_dir, make_backend: Callable, say: Callable[[str], None] = print):
    """Trunks (those with an unfinished branch), then the branches whose trunk finished ok; returns the
    branches' SweepResults (a branch whose trunk failed is 'failed'). make_backend(dir) -> LocalBackend."""
    from launch import local

    sweep_dir = pathlib.Path(sweep_dir)
    todo = [t for t in bplan.trunks
            if not all(local.is_done(rundir.run_dir_of(sweep_dir, b)) for b in t.branch_ids)]
    trunk_backend, branch_backend = make_backend(rundir.trunks_dir(sweep_dir)), make_backend(sweep_dir)
    with local.shared_workers(trunk_backend, branch_backend):  # the branches reuse the trunks' warm workers
        results = _phases(bplan, todo, sweep_dir, trunk_backend, branch_backend, say)
    release(bplan, sweep_dir, say)
    return results


def _phases(bplan: BranchPlan, todo: list, sweep_dir: pathlib.Path, trunk_backend, branch_backend, say):
    """Run the trunks in `todo`, then every branch whose trunk finished ok; the branches' SweepResults."""
    from launch import local

    trunk_results = trunk_backend.run([t.spec for t in todo]) if todo else {}
    results = local.SweepResults([b.run_id for b in bplan.branches])
    ready = []
    for b in bplan.branches:
        t = bplan.trunk_of(b.run_id)
        state = trunk_results.get(t.spec.run_id) if t in todo else "ok"  # None: not settled (stopped)
        if state == "ok":
            ready.append(b)
        elif state == "failed":
            results[b.run_id] = "failed"
            say(f"failed: {b.run_id}: its trunk {t.spec.run_id} failed (log: "
                f"{rundir.trunk_dir(sweep_dir, t.spec.run_id) / rundir.TRAIN_LOG})")
    stopped = getattr(trunk_results, "stopped", None)
    if ready and stopped is None:
        got = branch_backend.run(ready)
        results.update(got)
        stopped = got.stopped
    results.stopped = stopped
    return results


def release(bplan: BranchPlan, sweep_dir, say: Callable[[str], None] = print) -> list[str]:
    """Delete the checkpoints of every trunk whose branches all finished ok; returns those trunks' ids."""
    from launch import local

    released = []
    for t in bplan.trunks:
        tdir = rundir.trunk_dir(sweep_dir, t.spec.run_id)
        ckpts = branch.trunk_checkpoints(tdir) if (tdir / rundir.CONFIG).is_file() else None
        if ckpts is None or not ckpts.is_dir():
            continue
        if all(local.is_done(rundir.run_dir_of(sweep_dir, b)) for b in t.branch_ids):
            shutil.rmtree(ckpts)
            released.append(t.spec.run_id)
            say(f"released {t.spec.run_id}: all {len(t.branch_ids)} branches finished, its checkpoints deleted")
    return released
