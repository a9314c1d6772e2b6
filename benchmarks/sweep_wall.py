"""Wall time of a small sweep, one fresh process per run vs warm workers, side by side in one invocation.

    python benchmarks/sweep_wall.py                  # the 4 cheapest runs of experiments/demo_cpu.py:classic
    python benchmarks/sweep_wall.py --runs 6 --json  # more runs; one JSON object at the end

The same runs (the demo sweep's cheapest, by exact training FLOPs) go through launch.local twice,
each time in a fresh sweep directory and with a fresh, empty JAX compilation cache directory:
  process : `warm=False`, a `python -m scaling train` process per run (the runner before warm workers);
  warm    : one warm `python -m scaling worker` takes run after run (the default now).
Per run, from the run directory:
  wall     : the attempt's wall seconds as the runner recorded them (launch record);
  steps    : seconds of training steps, (steps - 1) x tokens per step / tokens/s (the trainer's rate,
             timed over steps 2.. only, so compilation is outside it);
  overhead : wall - steps: interpreter start, imports, corpus, model init, compilation, the first
             step, evals, checkpoints and the result: the per-run start-up tax;
  compile  : the trainer's own "train step compiled and run once in X s" line.
The ratio reported is the mean overhead per run, process / warm. Timings on a shared machine are
noisy: compare the two columns of one invocation, not numbers across invocations.
"""
import argparse
import json
import os
import pathlib
import re
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from launch import local, sweep  # noqa: E402
from scaling import rundir  # noqa: E402

MODES = {"process": False, "warm": True}  # name -> LocalBackend(warm=...)


def cheapest_runs(config: str, n: int) -> list:
    """The n runs of the sweep file with the fewest exact training FLOPs, in plan order."""
    specs = sweep.expand(sweep.load_sweep(config))
    keep = {s.run_id for s in sorted(specs, key=lambda s: s.flops)[:n]}
    return [s for s in specs if s.run_id in keep]


def per_run(sweep_dir: pathlib.Path, spec) -> dict:
    """wall / steps / overhead / compile seconds of one finished run (see the module docstring)."""
    rd = rundir.run_dir_of(sweep_dir, spec.run_id)
    result = rundir.read_result(rd)
    wall = json.loads((rd / rundir.LAUNCH).read_text())["history"][-1]["wall_s"]
    tokens_per_step = spec.config.train.batch_size * spec.config.data.seq_len
    steps_s = (spec.steps - 1) * tokens_per_step / result["tokens_per_s"]
    found = re.findall(r"train step compiled and run once in ([0-9.]+)s", (rd / rundir.TRAIN_LOG).read_text())
    return {"run_id": spec.run_id, "wall_s": wall, "steps_s": round(steps_s, 2), "overhead_s": round(wall - steps_s, 2),
            "compile_s": float(found[-1]) if found else None, "eval_loss": result["final_eval_loss"]}


def run_mode(specs, warm: bool, work: pathlib.Path, name: str) -> dict:
    """The sweep in a fresh directory with a fresh compilation cache; its wall time and per-run rows."""
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(work / f"jax-cache-{name}")  # children inherit it
    sweep_dir = work / name
    t0 = time.perf_counter()
    out = local.LocalBackend(sweep_dir, warm=warm).run(specs)
    total = time.perf_counter() - t0
    if set(out.values()) != {"ok"}:
        raise SystemExit(f"sweep_wall: {name}: runs not ok: {out} (logs under {sweep_dir})")
    rows = [per_run(sweep_dir, s) for s in specs]
    return {"total_wall_s": round(total, 2), "runs": rows,
            "mean_overhead_s": round(statistics.mean(r["overhead_s"] for r in rows), 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=f"{REPO / 'experiments' / 'demo_cpu.py'}:classic",
                   help="the sweep file (default: the demo's one-run-per-point grid; a branched sweep's points need their trunks)")
    p.add_argument("--runs", type=int, default=4, help="how many of its cheapest runs")
    p.add_argument("--json", action="store_true", help="print one JSON object with everything at the end")
    args = p.parse_args(argv)
    specs = cheapest_runs(args.config, args.runs)
    print(f"{len(specs)} runs of {args.config}: " + ", ".join(f"{s.run_id} ({s.steps} steps)" for s in specs))
    report = {}
    with tempfile.TemporaryDirectory(prefix="sweep_wall-") as tmp:
        for name, warm in MODES.items():
            report[name] = run_mode(specs, warm, pathlib.Path(tmp), name)
            print(f"\n{name}: sweep wall {report[name]['total_wall_s']:.1f}s")
            print(f"  {'run':<28} {'wall s':>7} {'steps s':>8} {'overhead s':>11} {'compile s':>10}")
            for r in report[name]["runs"]:
                print(f"  {r['run_id']:<28} {r['wall_s']:>7.1f} {r['steps_s']:>8.1f} {r['overhead_s']:>11.1f} "
                      f"{r['compile_s'] if r['compile_s'] is not None else float('nan'):>10.1f}")
    same = all(a["eval_loss"] == b["eval_loss"] for a, b in zip(report["process"]["runs"], report["warm"]["runs"]))
    ratio = report["process"]["mean_overhead_s"] / report["warm"]["mean_overhead_s"]
    report.update(overhead_ratio=round(ratio, 2), wall_ratio=round(
        report["process"]["total_wall_s"] / report["warm"]["total_wall_s"], 2), same_eval_losses=same)
    print(f"\nper-run overhead (start-up, compile, evals, checkpoints): {report['process']['mean_overhead_s']:.1f}s "
          f"one process per run vs {report['warm']['mean_overhead_s']:.1f}s warm workers: {ratio:.2f}x; "
          f"sweep wall {report['wall_ratio']:.2f}x; eval losses identical: {same}")
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
