"""`scaling sweep` and `scaling status`.

    scaling sweep experiments/demo_cpu.py --dry-run               # plan table: N, D, C, est. time
    scaling sweep experiments/demo_cpu.py [--parallel 2]          # run locally (rerun = resume)
    scaling sweep experiments/chinchilla_isoflop.py --backend skypilot --dry-run   # tasks' YAML
    scaling sweep experiments/chinchilla_isoflop.py --backend skypilot --cloud.bucket=gs://b/scaling \
        --cloud.accelerator=tpu-v5litepod-16 --cloud.chips=16 --cloud.infra=gcp/us-west4 --cloud.use_spot=false
    scaling status sweeps/demo_cpu                                # done / running / failed / pending
    scaling status sweeps/chinchilla_isoflop --backend skypilot   # ... next to the managed jobs' states
    scaling sync sweeps/chinchilla_isoflop [--checkpoints]        # results back from the bucket

The sweep directory defaults to sweeps/<config file stem> (sweeps/<stem>-<ARG> for FILE.py:ARG;
--sweep-dir to change it). The config flags of scaling/flags.py work here too: the sweep file as
`--config FILE` or `--config=FILE.py:ARG` (get_config(ARG)), overrides of any of its keys (run keys,
sweep.*, cloud.*, track.*) as `--config.a.b VALUE` or `--config.a.b=VALUE`, and `--flagfile FILE`.
"""
import argparse
import pathlib
import sys
import time

from scaling import rundir
from scaling.config_files import apply_override, split_spec
from scaling.config_schema import ConfigError


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
            pack = f", packed with {' '.join(r for r in e.pack if r != e.run_id)}" if e.pack else ""
            print(f"{head} start {e.run_id} (attempt {e.attempt}{pack})", file=self.stream, flush=True)
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
    p.add_argument("config", nargs="?", help="sweep config file (experiments/*.py with a `sweep` section; "
                   "FILE.py:ARG calls get_config(ARG)); or give it as --config")
    p.add_argument("--flagfile", help="read more flags from this file (whitespace-separated, # comments)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (and, for skypilot, the tasks) only")
    p.add_argument("--sweep-dir", default=None, help="default: sweeps/<config stem>")
    p.add_argument("--backend", choices=("local", "skypilot"), default="local")
    p.add_argument("--parallel", type=int, default=1, help="local: runs at once, each on a disjoint device subset")
    p.add_argument("--max-attempts", type=int, default=2, help="local: attempts per run per invocation")
    p.add_argument("--gpus", default=None, help="local: comma-separated GPU ids to split among parallel runs")
    p.add_argument("--process-per-run", action="store_true",
                   help="local: a fresh trainer process per run (default: warm workers, one per device slot, "
                        "take run after run)")
    p.add_argument("--only", default=None, help="run only the runs whose id contains this substring")
    p.add_argument("-v", "--verbose", action="store_true", help="forward every trainer output line")
    p.add_argument("--allow-dirty", action="store_true",
                   help="skypilot: launch from a tree with uncommitted changes (recorded as git_dirty)")
    p.epilog = ("--config.a.b VALUE overrides a key of the sweep file (run keys, sweep.*, track.*); skypilot: "
                "--cloud.KEY VALUE overrides a key of the config's cloud section (bucket, accelerator, ...)")
    return p


def _parse_sweep_args(argv: list[str]):
    """The sweep arguments; --config.KEY overrides are kept apart (args.overrides), and so are the
    --cloud.KEY ones (args.cloud_overrides, applied for --backend skypilot only)."""
    from scaling import flags

    parser = _parser()
    try:
        given = flags.split(argv, sections=("config", "cloud"))
    except flags.FlagError as e:
        parser.error(str(e))
    args, bad = parser.parse_known_args(given.rest)
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (overrides look like --config.train.lr=1e-3 or "
                     "--cloud.bucket=gs://my-bucket/scaling)")
    if args.config and given.config:
        parser.error(f"two sweep configs: {args.config!r} and --config={given.config!r}; give one")
    args.config = args.config or given.config
    if not args.config:
        parser.error("a sweep config is required (e.g. experiments/demo_cpu.py, or --config FILE)")
    args.overrides = [o for o in given.overrides if o.startswith("--config.")]
    args.cloud_overrides = [o for o in given.overrides if o.startswith("--cloud.")]
    return args


def _default_sweep_dir(spec: str) -> pathlib.Path:
    """sweeps/<stem>, or sweeps/<stem>-<ARG> for a FILE.py:ARG variant (ARG's path separators -> '_')."""
    path, arg = split_spec(spec)
    name = path.stem if arg is None else f"{path.stem}-{arg.replace('/', '_').replace(':', '_')}"
    return pathlib.Path("sweeps") / name


def _sweep_skypilot(args, cfg, specs, dropped, path: pathlib.Path, sweep_dir: pathlib.Path) -> int:
    """--backend skypilot: the plan and the validated tasks (--dry-run), or launch them as managed jobs."""
    from launch import local, plan, skypilot, sweep, sync

    if "cloud" not in cfg:
        raise ValueError(f"{path} has no `cloud` section; --backend skypilot needs one (see "
                         "experiments/chinchilla_isoflop.py)")
    for item in args.cloud_overrides:
        apply_override(cfg, item)
    mem = plan.memory_plan(cfg)  # after the --cloud.* overrides: the accelerator decides the limit
    print(plan.plan_table(specs, skypilot.est_flops_per_s(cfg.cloud), cfg.cloud.overhead_s, memory_on=mem))
    _print_dropped(dropped, args.verbose)
    plan.check_memory(specs, mem)
    source = skypilot.source_state(allow_dirty=args.allow_dirty or args.dry_run)
    name = _default_sweep_dir(args.config).name  # the file's stem (-ARG for a variant): jobs and bucket folder
    tasks = [skypilot.build_task(s, cfg.cloud, name, source, for_launch=not args.dry_run) for s in specs]
    if args.dry_run:
        for problem in skypilot.placeholder_problems(cfg.cloud):
            print(f"warning: {problem} (a launch would be refused)")
        print(f"\n# {len(tasks)} SkyPilot managed-job tasks (validated with sky.Task.validate), "
              f"commit {source['git_sha'][:12]}{' + uncommitted changes' if source['git_dirty'] else ''}:\n")
        print(skypilot.tasks_yaml(tasks))
        return 0
    local.write_manifest(sweep_dir, specs, args.config)
    sync.write_cloud_record(sweep_dir, f"{str(cfg.cloud.bucket).rstrip('/')}/{name}")
    skypilot.launch(tasks)
    print(f"launched {len(tasks)} managed jobs; `scaling status {sweep_dir} --backend skypilot` shows them, "
          f"`scaling sync {sweep_dir}` brings their results back")
    return 0


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
    args = _parse_sweep_args(argv)
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
    from launch import local, packs, plan, sweep

    if args.parallel < 1:
        raise ValueError(f"--parallel={args.parallel}: must be >= 1 (runs at once)")
    if args.max_attempts < 1:
        raise ValueError(f"--max-attempts={args.max_attempts}: must be >= 1")
    path, _ = split_spec(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"sweep config {path} not found (e.g. experiments/demo_cpu.py)")
    cfg = sweep.load_sweep(args.config)
    for item in args.overrides:  # before expanding: they change every run (or the sweep's rules)
        apply_override(cfg, item)
    dropped: list[str] = []
    specs = sweep.expand(cfg, dropped)
    if not specs:
        raise ValueError(f"{path} expands to 0 runs ({len(dropped)} grid points dropped by sweep.tokens_per_param "
                         "/ sweep.min_steps; -v --dry-run lists them): widen the grid or relax those filters")
    if args.only:
        specs = [s for s in specs if args.only in s.run_id]
        if not specs:
            raise ValueError(f"--only={args.only!r} matches no run id of {path}")
    sweep_dir = pathlib.Path(args.sweep_dir or _default_sweep_dir(args.config))
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise ValueError(f"sweep dir {sweep_dir} is an existing file; give a directory with --sweep-dir "
                         f"(default {_default_sweep_dir(args.config)})")

    from launch import branches
    bplan = branches.plan_for(cfg, specs, args.backend)  # None unless sweep.branches; one-line refusals
    if bplan is not None:
        specs = bplan.branches  # the planned runs are the branches; their trunks run first
    if args.backend == "skypilot":
        return _sweep_skypilot(args, cfg, specs, dropped, path, sweep_dir)
    if args.cloud_overrides:
        raise ValueError(f"{args.cloud_overrides[0]}: --cloud.* overrides apply to --backend skypilot only")

    mem = plan.memory_plan(cfg)  # the mem/dev column; check_memory refuses what won't fit
    print(plan.plan_table(specs, cfg.sweep.est_flops_per_s, cfg.sweep.overhead_s, args.parallel, mem))
    _print_dropped(dropped, args.verbose)
    for line in packs.describe(packs.group(specs, cfg.sweep.pack_size), cfg.sweep.pack_size):
        print(line)
    if bplan is not None:
        print("\n" + branches.savings_table(bplan))
    plan.check_memory(specs, mem)
    if args.dry_run:
        return 0
    gpus = [g for g in args.gpus.split(",") if g] if args.gpus else None

    def backend_for(directory):
        return local.LocalBackend(directory, parallel=args.parallel, max_attempts=args.max_attempts, gpus=gpus,
                                  pack_size=cfg.sweep.pack_size, warm=not args.process_per_run,
                                  on_event=_Printer(args.verbose), est_flops_per_s=cfg.sweep.est_flops_per_s)
    print(f"\nsweep dir: {sweep_dir}")
    t0 = time.time()
    results = branches.run_planned(bplan, specs, sweep_dir, backend_for, args.config)
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
    """`scaling status SWEEP_DIR [--backend skypilot]`: print the sweep's status table; 2 if it cannot be read."""
    p = argparse.ArgumentParser(prog="scaling status", description="Status table of a sweep directory.")
    p.add_argument("sweep_dir")
    p.add_argument("--backend", choices=("local", "skypilot"), default="local",
                   help="skypilot: also the managed jobs' states (run states come from the synced run dirs)")
    args = p.parse_args(argv)
    from launch import local

    try:
        print(local.status_table(args.sweep_dir))
        if args.backend == "skypilot":
            from launch import skypilot

            print(managed_jobs_table(args.sweep_dir, skypilot.queue_records()))
    except (FileNotFoundError, ValueError) as e:
        print(f"scaling status: error: {e}", file=sys.stderr)
        return 2
    return 0


def managed_jobs_table(sweep_dir, records) -> str:
    """Each planned run's managed-job state next to its run state (run dirs as last synced)."""
    from launch import local, skypilot

    rows = local.sweep_status(sweep_dir)
    manifest = rundir.read_manifest(sweep_dir) or {}
    name = _default_sweep_dir(manifest["source"]).name if manifest.get("source") else pathlib.Path(sweep_dir).name
    jobs = skypilot.job_states([r["run_id"] for r in rows], name, records)
    width = max([len("run_id")] + [len(r["run_id"]) for r in rows])
    lines = ["", f"{'run_id'.ljust(width)}  {'managed job':<12}  run (as synced: `scaling sync {sweep_dir}`)"]
    lines += [f"{r['run_id'].ljust(width)}  {jobs[r['run_id']]:<12}  {r['state']}" for r in rows]
    return "\n".join(lines)
