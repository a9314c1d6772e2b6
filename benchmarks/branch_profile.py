"""Where a WSD branch's seconds go on a warm worker: one trunk of one demo shape, then its branches,
all in this one process (as one warm worker runs them), each phase of the trainer timed.

    python benchmarks/branch_profile.py                       # demo shape L2 d24 at its 3 smallest budgets
    python benchmarks/branch_profile.py --shape L1-d16 --budgets 3

The runs are the demo's (experiments/demo_cpu.py), through the same entry point a warm worker uses
(scaling.worker runs `python -m scaling train ...` in-process), with a fresh persistent compilation
cache (JAX_COMPILATION_CACHE_DIR, as benchmarks/demo_wall.py sets per way). The trainer's functions
are wrapped with timers (nothing else changes): per run, a table of wall seconds per phase. "steps"
is the train loop's time less its evals, saves and first (compiling) step.
Timings on a shared machine are noisy: compare the rows of one invocation.
"""
import argparse
import collections
import contextlib
import functools
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The columns, in the order a run meets them.
PHASES = ("cli", "corpus", "mesh", "memory", "peak", "trainer", "data", "checkpointer", "restore",
          "compile+step1", "steps", "evals", "saves", "close", "finish", "result")


class Clock:
    """Seconds per phase of the run in progress (phases may nest: inner time is not subtracted)."""

    def __init__(self):
        self.t = collections.defaultdict(float)

    @contextlib.contextmanager
    def phase(self, name):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[name] += time.perf_counter() - t0

    def wrap(self, owner, attr, name):
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def timed(*a, **k):
            with self.phase(name):
                return fn(*a, **k)
        setattr(owner, attr, timed)


def instrument(clock: Clock) -> None:
    """Timers around the trainer's phases (module attributes, so train() picks them up)."""
    import jax

    from scaling import data, rundir, sharding
    from scaling import train as tr
    from scaling.run_record import Run

    for owner, attr, name in ((tr, "load_corpus", "corpus"), (sharding, "make_mesh", "mesh"),
                              (tr, "memory_estimate", "memory"), (tr, "peak_flops", "peak"),
                              (data, "train_loader", "data"), (data, "eval_batches", "data"),
                              (tr, "Checkpointer", "checkpointer"), (tr, "_resume", "restore"),
                              (Run, "evaluate", "evals"), (Run, "save", "saves"),
                              (Run, "close", "close"), (tr, "finish", "finish"),
                              (rundir, "write_result", "result"), (tr, "_loop", "loop")):
        clock.wrap(owner, attr, name)
    make = tr.make_trainer

    def make_trainer(*a, **k):
        with clock.phase("trainer"):
            trainer = make(*a, **k)
        first = [True]

        def step_fn(*sa):
            if not first[0]:
                return trainer.step_fn(*sa)
            first[0] = False
            with clock.phase("compile+step1"):
                return jax.block_until_ready(trainer.step_fn(*sa))
        return trainer._replace(step_fn=step_fn)
    tr.make_trainer = make_trainer


def demo_runs(shape: str, n_budgets: int):
    """(trunk spec, branch specs) of one demo shape at its n smallest budgets."""
    from launch import branches, sweep

    cfg = sweep.load_sweep(str(REPO / "experiments" / "demo_cpu.py"))
    cfg.sweep.budgets = tuple(sorted(cfg.sweep.budgets)[:n_budgets])
    bplan = branches.plan(sweep.expand(cfg))
    trunk = next((t for t in bplan.trunks if f"-{shape}-" in t.spec.run_id), None)
    if trunk is None:
        raise SystemExit(f"branch_profile: no demo shape {shape!r} at {n_budgets} budgets; trunks: "
                         f"{', '.join(t.spec.run_id for t in bplan.trunks)}")
    return trunk.spec, [b for b in bplan.branches if b.run_id in trunk.branch_ids]


def run_one(clock: Clock, config, run_dir: pathlib.Path) -> dict:
    """One job as a warm worker runs it (scaling.worker.run_job): `train --config ... --workdir ...`."""
    from scaling import rundir, worker

    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_json(run_dir / rundir.LAUNCH_CONFIG, config.to_dict())
    clock.t.clear()
    t0 = time.perf_counter()
    rc = worker.run_job(["train", "--quiet", "--config", str(run_dir / rundir.LAUNCH_CONFIG),
                          "--workdir", str(run_dir)])
    total = time.perf_counter() - t0
    if rc:
        raise SystemExit(f"branch_profile: {run_dir.name} exited {rc}")
    t = dict(clock.t)
    loop = t.pop("loop", 0.0)
    t["steps"] = loop - sum(t.get(k, 0.0) for k in ("compile+step1", "evals", "saves", "close"))
    t["cli"] = total - loop - sum(v for k, v in t.items() if k not in ("steps", "compile+step1", "evals",
                                                                        "saves", "close"))
    return {"total": total, **t}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="L2-d24", help="demo shape, as in its trunk id (default L2-d24)")
    p.add_argument("--budgets", type=int, default=3, help="the demo's smallest budgets to take (default 3)")
    args = p.parse_args(argv)
    from scaling import rundir

    trunk, brs = demo_runs(args.shape, args.budgets)
    with tempfile.TemporaryDirectory(prefix="branch_profile-") as tmp:
        work = pathlib.Path(tmp)
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(work / "jax-cache")
        clock = Clock()
        instrument(clock)
        sweep_dir = work / "sweep"
        rows = [("trunk", trunk.steps, run_one(clock, trunk.config, rundir.trunk_dir(sweep_dir, trunk.run_id)))]
        for b in brs:
            steps = b.steps - b.config.train.branch.step
            run_dir = rundir.run_dir_of(sweep_dir, b.run_id)
            rows.append((b.run_id.split("-br-")[0], steps, run_one(clock, b.config, run_dir)))
    cols = ("total",) + PHASES
    print(f"{'run':<22} {'steps':>5} " + " ".join(f"{c[:8]:>8}" for c in cols))
    for name, steps, t in rows:
        print(f"{name:<22} {steps:>5} " + " ".join(f"{t.get(c, 0.0):>8.2f}" for c in cols))
    print("\nseconds per phase; 'cli' = argument parsing, config load/validate, run-dir checks and whatever "
          "no other column times")
    return 0


if __name__ == "__main__":
    sys.exit(main())
