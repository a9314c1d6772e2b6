"""`scaling sweep` and `scaling status`.

    scaling sweep experiments/demo_cpu.py --dry-run               # plan table: N, D, C, est. time
    scaling sweep experiments/demo_cpu.py [--parallel 2]          # run locally (rerun = resume)
    scaling sweep experiments/chinchilla_isoflop.py --backend skypilot --dry-run   # tasks' YAML
    scaling status sweeps/demo_cpu                                # done / running / failed / pending

The sweep directory defaults to sweeps/<config file stem> (--sweep-dir to change it).
"""
import argparse
import pathlib
import sys
import time

from scaling import rundir
from scaling.config import ConfigError


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.1f}m"


class _Printer:
    """Default progress for the CLI: one line per run start/finish, optionally the trainer's lines."""

    def __init__(self, verbose: bool, stream=sys.stdout):
        self.verbose, self.stream, self.t0 = verbose, stream, time.time()

    def __call__(self, e) -> None:
        head = f"[{e.done}/{e.total} {_fmt_s(time.time() - self.t0)} eta {_fmt_s(e.eta_s)}]"
        if e.kind == "skip":
            print(f"{head} skip  {e.run_id} ({e.status})", file=self.stream, flush=True)
        elif e.kind == "start":
            print(f"{head} start {e.run_id} (attempt {e.attempt})", file=self.stream, flush=True)
        elif e.kind == "output" and self.verbose:
            print(f"    {e.run_id}: {e.line}", file=self.stream, flush=True)
        elif e.kind == "finish":
            extra = ""
            if e.status == "ok" and e.result:
                extra = f" eval loss {e.result.get('final_eval_loss', float('nan')):.4f} nats/token"
            elif e.error:
                extra = f": {e.error}"
            print(f"{head} {e.status:<5} {e.run_id} in {e.wall_s:.1f}s{extra}", file=self.stream, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scaling sweep", description="Plan (--dry-run) or run a sweep.")
    p.add_argument("config", help="sweep config file (experiments/*.py with a `sweep` section)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (and, for skypilot, the tasks) only")
    p.add_argument("--sweep-dir", default=None, help="default: sweeps/<config stem>")
    p.add_argument("--backend", choices=("local", "skypilot"), default="local")
    p.add_argument("--parallel", type=int, default=1, help="local: runs at once, each on a disjoint device subset")
    p.add_argument("--max-attempts", type=int, default=2, help="local: attempts per run per invocation")
    p.add_argument("--gpus", default=None, help="local: comma-separated GPU ids to split among parallel runs")
    p.add_argument("--only", default=None, help="run only the runs whose id contains this substring")
    p.add_argument("-v", "--verbose", action="store_true", help="forward every trainer output line")
    return p


def _print_dropped(dropped: list[str], verbose: bool) -> None:
    if not dropped:
        return
    print(f"{len(dropped)} grid points dropped (sweep.tokens_per_param / sweep.min_steps)"
          + ("" if verbose else "; -v lists them"))
    if verbose:
        for d in dropped:
            print(f"  dropped: {d}")


def sweep_main(argv: list[str]) -> int:
    """`scaling sweep`: 0 when every run finished ok (or the plan was printed), 1 if any failed, 2 on bad input."""
    args = _parser().parse_args(argv)
    try:
        return _sweep(args)
    except (ValueError, FileNotFoundError, ConfigError) as e:
        print(f"scaling sweep: error: {e}", file=sys.stderr)
        return 2
    except rundir.DiskFullError as e:
        print(f"scaling sweep: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nscaling sweep: interrupted; finished runs are kept and an interrupted run resumes from its "
              f"last checkpoint: rerun `scaling sweep {args.config}"
              + (f" --sweep-dir {args.sweep_dir}" if args.sweep_dir else "") + "` to continue", file=sys.stderr)
        return 130


def _sweep(args) -> int:
    from launch import local, sweep

    if args.parallel < 1:
        raise ValueError(f"--parallel={args.parallel}: must be >= 1 (runs at once)")
    if args.max_attempts < 1:
        raise ValueError(f"--max-attempts={args.max_attempts}: must be >= 1")
    path = pathlib.Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"sweep config {path} not found (e.g. experiments/demo_cpu.py)")
    cfg = sweep.load_sweep(path)
    dropped: list[str] = []
    specs = sweep.expand(cfg, dropped)
    if not specs:
        raise ValueError(f"{path} expands to 0 runs ({len(dropped)} grid points dropped by sweep.tokens_per_param "
                         "/ sweep.min_steps; -v --dry-run lists them): widen the grid or relax those filters")
    if args.only:
        specs = [s for s in specs if args.only in s.run_id]
        if not specs:
            raise ValueError(f"--only={args.only!r} matches no run id of {path}")
    sweep_dir = pathlib.Path(args.sweep_dir or pathlib.Path("sweeps") / path.stem)
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise ValueError(f"sweep dir {sweep_dir} is an existing file; give a directory with --sweep-dir "
                         f"(default sweeps/{path.stem})")

    if args.backend == "skypilot":
        from launch import skypilot

        if "cloud" not in cfg:
            raise ValueError(f"{path} has no `cloud` section; --backend skypilot needs one (see "
                             "experiments/chinchilla_isoflop.py)")
        print(sweep.plan_table(specs, skypilot.est_flops_per_s(cfg.cloud), cfg.cloud.overhead_s))
        _print_dropped(dropped, args.verbose)
        tasks = [skypilot.build_task(s, cfg.cloud, path.stem) for s in specs]
        if args.dry_run:
            print(f"\n# {len(tasks)} SkyPilot managed-job tasks (validated with sky.Task.validate):\n")
            print(skypilot.tasks_yaml(tasks))
            return 0
        local.write_manifest(sweep_dir, specs, path)
        skypilot.launch(tasks)
        print(f"launched {len(tasks)} managed jobs; `sky jobs queue` shows them")
        return 0

    print(sweep.plan_table(specs, cfg.sweep.est_flops_per_s, cfg.sweep.overhead_s, args.parallel))
    _print_dropped(dropped, args.verbose)
    if args.dry_run:
        return 0
    gpus = [g for g in args.gpus.split(",") if g] if args.gpus else None
    backend = local.LocalBackend(sweep_dir, parallel=args.parallel, max_attempts=args.max_attempts, gpus=gpus,
                                 on_event=_Printer(args.verbose), est_flops_per_s=cfg.sweep.est_flops_per_s)
    local.write_manifest(sweep_dir, specs, path)
    print(f"\nsweep dir: {sweep_dir}")
    t0 = time.time()
    results = backend.run(specs)
    failed = [r for r, s in results.items() if s == "failed"]
    elsewhere = [r for r, s in results.items() if s == "running elsewhere"]
    print(f"\n{len(results) - len(failed) - len(elsewhere)} ok, {len(failed)} failed, "
          f"{len(elsewhere)} running in another process; wall time {time.time() - t0:.1f}s")
    for r in failed:
        print(f"  failed: {r} (log: {rundir.run_dir_of(sweep_dir, r) / rundir.TRAIN_LOG})")
    if results.stopped:
        print(f"sweep stopped early: {results.stopped}")
    if results.incomplete:
        print(f"sweep incomplete: {len(results.incomplete)} of {len(specs)} runs not finished here "
              f"({len(elsewhere)} running in another process); rerun to continue")
    return 1 if failed or not results.complete else 0


def status_main(argv: list[str]) -> int:
    """`scaling status SWEEP_DIR`: print the sweep's status table; 2 if it cannot be read."""
    p = argparse.ArgumentParser(prog="scaling status", description="Status table of a sweep directory.")
    p.add_argument("sweep_dir")
    args = p.parse_args(argv)
    from launch import local

    try:
        print(local.status_table(args.sweep_dir))
    except (FileNotFoundError, ValueError) as e:
        print(f"scaling status: error: {e}", file=sys.stderr)
        return 2
    return 0
