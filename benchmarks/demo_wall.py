"""The demo's points executed the old way and the new way, side by side in one invocation.

    python benchmarks/demo_wall.py                 # the demo's 3 smallest budgets (22 runs), ~8 min on 2 cores
    python benchmarks/demo_wall.py --budgets 1     # its smallest budget (7 runs), ~3 min
    python benchmarks/demo_wall.py --budgets 10    # all 64 runs (the old way alone takes ~25 min)

The same (N, D) points of experiments/demo_cpu.py (its K smallest budgets) run twice, each time in a
fresh sweep directory with a fresh JAX compilation cache and `--parallel` runs at once:
  old : one standalone WSD run per point, from step 0, one `python -m scaling train` process per run
        (the runner before warm workers; what `sweep.branches = False` and --process-per-run do);
  new : one WSD trunk per shape and seed, then a cooldown branch per point (sweep.branches), on warm
        workers, the seed replicates of the smallest shapes packed (sweep.pack_size: their trunks one
        job, their branches at one D one job).
Reported: the wall seconds of each, seconds per run and their ratio, the exact training FLOPs each
executed, and the largest |difference| between a run's final eval loss both ways (a branch is
bit-identical to the standalone run of its D on CPU: 0; a packed seed replicate runs its unpacked
arithmetic: measured <= 4.1e-8 nats/token; the runs that differ are named).
Timings on a shared machine are noisy: compare the two rows of one invocation.
"""
import argparse
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from launch import branches, local, sweep  # noqa: E402
from scaling import rundir  # noqa: E402


def points(config: str, n_budgets: int) -> tuple:
    """(the sweep config cut to its n_budgets smallest budgets, its runs: standalone WSD configs)."""
    cfg = sweep.load_sweep(config)
    keep = sorted(cfg.sweep.budgets)[:n_budgets]
    cfg.sweep.budgets = tuple(keep)
    return cfg, sweep.expand(cfg)


def timed(work: pathlib.Path, name: str, fn) -> float:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(work / f"jax-cache-{name}")  # the children inherit it
    t0 = time.perf_counter()
    results = fn()
    wall = time.perf_counter() - t0
    if set(results.values()) != {"ok"}:
        raise SystemExit(f"demo_wall: {name}: not every run finished ok: {dict(results)} (logs under {work / name})")
    return wall


def final_losses(sweep_dir: pathlib.Path, specs) -> list[float]:
    return [rundir.read_result(rundir.run_dir_of(sweep_dir, s.run_id))["final_eval_loss"] for s in specs]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "experiments" / "demo_cpu.py"), help="a branched sweep file")
    p.add_argument("--budgets", type=int, default=3, help="how many of its smallest budgets (default 3)")
    p.add_argument("--parallel", type=int, default=2, help="runs at once, both ways (default 2)")
    args = p.parse_args(argv)
    cfg, specs = points(args.config, args.budgets)
    bplan = branches.plan_for(cfg, specs, "local")
    if bplan is None:
        raise SystemExit(f"demo_wall: {args.config} is not a branched sweep (sweep.branches = False)")
    executed = sum(t.executed_flops for t in bplan.trunks)
    alone = sum(t.standalone_flops for t in bplan.trunks)
    print(f"{len(specs)} points of {args.config} (budgets {', '.join(f'{c:.3g}' for c in cfg.sweep.budgets)}), "
          f"{len(bplan.trunks)} trunks, pack size {cfg.sweep.pack_size}, --parallel {args.parallel}", flush=True)
    with tempfile.TemporaryDirectory(prefix="demo_wall-") as tmp:
        work = pathlib.Path(tmp)
        old = timed(work, "old", lambda: local.LocalBackend(work / "old", parallel=args.parallel, warm=False)
                    .run(specs))
        print(f"old: {old:.1f}s", flush=True)
        new = timed(work, "new", lambda: branches.run_planned(
            bplan, bplan.branches, work / "new", lambda d: local.LocalBackend(d, parallel=args.parallel, warm=True,
                                                                   pack_size=cfg.sweep.pack_size),
            args.config, say=lambda line: None))
        print(f"new: {new:.1f}s", flush=True)
        diffs = [(abs(a - b), s.run_id) for a, b, s in zip(final_losses(work / "old", specs),
                                                            final_losses(work / "new", bplan.branches), specs)]
        diff, worst = max(diffs)
        differing = [r for d, r in diffs if d > 0]
    n = len(specs)
    print(f"\n{'way':<52} {'wall s':>8} {'s / run':>8} {'exact train FLOPs':>18}")
    print(f"{'old: a run per point, a process per run':<52} {old:>8.1f} {old / n:>8.2f} {alone:>18.3g}")
    print(f"{'new: trunks + cooldown branches, packs, warm workers':<52} {new:>8.1f} {new / n:>8.2f} {executed:>18.3g}")
    print(f"\n{n} runs: {old / new:.2f}x fewer wall-seconds per run ({alone / executed:.2f}x fewer FLOPs); "
          f"largest |final eval loss difference| between a run's two executions: {diff:.3g} nats/token"
          + (f" ({worst}; {len(differing)} of {n} runs differ: {' '.join(differing)})" if differing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
