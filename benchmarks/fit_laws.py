"""Benchmark: each law x each published data set, rollout backtests (analysis.law_benchmark).

    python benchmarks/fit_laws.py                                  # the full setting
    python benchmarks/fit_laws.py --bootstrap 10 --max-cutoffs 2   # the gallery's cheap setting

Prints (and writes with --out, as CSV and Markdown) per set, law and extrapolation-factor bin:
the median and max |relative error| of the predicted loss and the coverage of the 90% prediction
intervals with its 95% Wilson interval. Default data: ../shared/data next to the checkout.
"""
from __future__ import annotations

import argparse
import pathlib
import time

from analysis import law_benchmark

DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    p.add_argument("--bootstrap", type=int, default=100)
    p.add_argument("--max-cutoffs", type=int, default=None, help="default: every cutoff")
    p.add_argument("--n-starts", type=int, default=256)
    p.add_argument("--level", type=float, default=0.9)
    p.add_argument("--out", type=pathlib.Path, help="directory for benchmark.csv and benchmark.md")
    args = p.parse_args()
    settings = law_benchmark.Settings(n_bootstrap=args.bootstrap, max_cutoffs=args.max_cutoffs,
                                      n_starts=args.n_starts, level=args.level)
    t0 = time.perf_counter()
    df = law_benchmark.run(args.data, settings)
    header, rows = law_benchmark.markdown_rows(df)
    md = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                   + ["| " + " | ".join(r) + " |" for r in rows])
    print(md)
    print(f"{settings}; wall time {time.perf_counter() - t0:.0f} s")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out / "benchmark.csv", index=False)
        (args.out / "benchmark.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
