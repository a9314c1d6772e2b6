"""Packed vs unpacked training throughput for the demo's shapes, side by side in one process.

    python benchmarks/packing.py                          # the demo's 6 shapes, k = 1, 4, 16
    python benchmarks/packing.py --shapes 1x8,1x16 --ks 1,4,16,32,64 --steps 150
    python benchmarks/packing.py --shapes 1x8,1x16 --ks 4,16 --big-batch   # + one model at k x the batch

For each shape (n_layers x d_model, head_dim 8 as in experiments/demo_cpu.py; seq_len 64, batch 16,
bytes vocabulary 256) it trains, through the real trainers with their data loader, logging and
final checkpoint: one unpacked run (`scaling.train.train`), then packs of k members
(`scaling.packed_train.train_pack`: members differ in seed and lr, one shared batch stream as in a
sweep), then the unpacked run again. tokens/s is what the trainers record in result.json: training
tokens over the timed log intervals (the first interval after start-up, which holds compilation, is
excluded; evals and checkpoints are outside the intervals), and the fastest single log interval
(metrics.jsonl), the estimate least disturbed by other processes on a shared machine. Per member =
one member's tokens; total = k x per member. ratio = total packed / unpacked, where unpacked is the
mean (fastest: the faster) of the runs before and after the packs. Compare ratios, not absolute
numbers; the load average is printed with each shape.
With --big-batch, rows 'Bk' train one unpacked model at k x the batch (16k sequences, k x fewer
steps): the tokens of a pack of k in one model's ops, so the per-step cost a pack could share at
best; where Bk is not much faster than k = 1, a step's time is per-token work, which packing cannot
remove.
"""
import argparse
import json
import os
import shutil
import tempfile

from scaling import accounting, rundir
from scaling import config as cfg_lib
from scaling.packed_train import train_pack
from scaling.train import train

DEMO_SHAPES = "1x8,1x16,2x24,3x32,4x48,5x64"  # n_layers x d_model of experiments/demo_cpu.py's plan


def member_config(n_layers: int, d_model: int, steps: int, seed: int, cache_dir: str, batch: int = 16):
    """One run of the benchmark: the demo's shape and batch; eval and checkpoint only at the end."""
    c = cfg_lib.defaults()
    c.data.update(seq_len=64, cache_dir=cache_dir)
    c.model.update(d_model=d_model, n_layers=n_layers, n_heads=d_model // 8, n_kv_heads=d_model // 8)
    c.train.update(batch_size=batch, tokens=batch * 64 * steps, log_every=max(steps // 6, 1), eval_every=10 * steps,
                   eval_tokens=16 * 64 * 2, peak_flops=1e12)  # MFU is not reported: skip the peak measurement
    c.optim.update(warmup_steps=max(steps // 10, 1), lr=3e-3 * (1 + 0.1 * seed))
    c.seed = seed
    c.mesh.num_devices = 1
    c.checkpoint.every_steps = 10 * steps
    c.track.tensorboard = False
    return c


def best_interval_rate(run_dir: str) -> float:
    """Tokens/s of the run's fastest log interval (from metrics.jsonl: steps x batch x seq_len over
    the wall time between consecutive train rows; the first interval, which compiles, is skipped).
    On a shared machine the fastest interval is the one least disturbed by other processes."""
    rows = [r for r in rundir.read_metrics(run_dir) if r["split"] == "train"]
    return max((b["tokens"] - a["tokens"]) / (b["time_s"] - a["time_s"]) for a, b in zip(rows, rows[1:]))


def measure(n_layers: int, d_model: int, ks: list[int], steps: int, work: str, cache_dir: str,
            loop: str | None, big_batch: bool = False) -> list[dict]:
    """Rows for one shape: unpacked, each k, unpacked again. Two estimates of each rate: the mean
    over the timed intervals (the trainers' result.json tokens_per_s) and the fastest interval."""
    rows, tag = [], f"L{n_layers} d{d_model}"
    model = cfg_lib.resolve(member_config(n_layers, d_model, steps, 0, cache_dir)).model
    n_params = accounting.param_counts(model)["total"]

    def unpacked(i):
        run_dir = os.path.join(work, f"{tag}-u{i}")
        r = train(member_config(n_layers, d_model, steps, 0, cache_dir), run_dir, verbose=False)
        return r["tokens_per_s"], best_interval_rate(run_dir)

    before = unpacked(0)
    for k in ks:
        configs = [member_config(n_layers, d_model, steps, s, cache_dir) for s in range(k)]
        dirs = [os.path.join(work, f"{tag}-k{k}-{s}") for s in range(k)]
        results = train_pack(configs, dirs, verbose=False, loop=loop)
        mean = min(r["tokens_per_s"] for r in results)  # all equal: one clock for the pack
        rows.append({"shape": tag, "n_params": n_params, "k": k, "member_tokens_per_s": mean,
                     "total_tokens_per_s": k * mean, "member_best": best_interval_rate(dirs[0]),
                     "total_best": k * best_interval_rate(dirs[0])})
        if k > 1 and big_batch:  # one model, k times the batch: what one step over k members' tokens costs
            run_dir = os.path.join(work, f"{tag}-b{k}")
            r = train(member_config(n_layers, d_model, max(steps // k, 12), 0, cache_dir, batch=16 * k), run_dir,
                      verbose=False)
            rows.append({"shape": tag, "n_params": n_params, "k": f"B{k}", "member_tokens_per_s": r["tokens_per_s"],
                         "total_tokens_per_s": r["tokens_per_s"], "member_best": best_interval_rate(run_dir),
                         "total_best": best_interval_rate(run_dir)})
    after = unpacked(1)
    base, base_best = (before[0] + after[0]) / 2, max(before[1], after[1])
    for r in rows:
        r.update(unpacked_tokens_per_s=base, unpacked_before=before[0], unpacked_after=after[0],
                 unpacked_best=base_best, ratio=r["total_tokens_per_s"] / base, ratio_best=r["total_best"] / base_best)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=DEMO_SHAPES, help="n_layers x d_model, comma-separated")
    p.add_argument("--ks", default="1,4,16", help="pack sizes, comma-separated")
    p.add_argument("--steps", type=int, default=120, help="optimizer steps per run")
    p.add_argument("--cache-dir", default="data_cache", help="data.cache_dir (the prepared corpus)")
    p.add_argument("--loop", choices=("map", "vmap"), default=None,
                   help="members inside the step: lax.map or vmap (default: the trainer's, map on CPU)")
    p.add_argument("--big-batch", action="store_true",
                   help="also one unpacked model at k x the batch (row 'Bk'): the same tokens per step as a pack "
                        "of k in one member's ops, what packing would reach if it cost nothing per member")
    p.add_argument("--json", action="store_true", help="also one JSON line per row")
    args = p.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    print(f"load average before: {os.getloadavg()}; {os.cpu_count()} CPUs; loop {args.loop or 'default'}")
    work = tempfile.mkdtemp(prefix="packing-bench-")
    rows = []
    try:
        for shape in args.shapes.split(","):
            n_layers, d_model = (int(x) for x in shape.split("x"))
            shape_rows = measure(n_layers, d_model, ks, args.steps, work, args.cache_dir, args.loop, args.big_batch)
            for r in shape_rows:  # as measured: a long run shows its first shapes early
                print(_line(r), f"(load {os.getloadavg()[0]:.1f})", flush=True)
            rows += shape_rows
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {os.getloadavg()}")
    print(HEADER)
    for r in rows:
        print(_line(r))
    if args.json:
        for r in rows:
            print(json.dumps(r))


HEADER = (f"{'shape':<8} {'N':>7} {'k':>3} | mean over intervals: {'unpacked':>9} {'member':>9} {'total':>9} "
          f"{'ratio':>6} | fastest interval: {'unpacked':>9} {'member':>9} {'total':>9} {'ratio':>6}")


def _line(r: dict) -> str:
    return (f"{r['shape']:<8} {r['n_params']:>7,} {r['k']!s:>3} | {'':>20} {r['unpacked_tokens_per_s']:>9,.0f} "
            f"{r['member_tokens_per_s']:>9,.0f} {r['total_tokens_per_s']:>9,.0f} {r['ratio']:>5.2f}x | {'':>17} "
            f"{r['unpacked_best']:>9,.0f} {r['member_best']:>9,.0f} {r['total_best']:>9,.0f} {r['ratio_best']:>5.2f}x")


if __name__ == "__main__":
    main()
