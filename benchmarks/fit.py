"""Benchmark: the 4500-start Chinchilla Approach-3 fit on Epoch's 240 points, JAX vs SciPy.

    python benchmarks/fit.py --data ../shared/data/epoch_chinchilla_svg_extracted_data.csv
    python benchmarks/fit.py --scipy-starts 500   # SciPy on a random subset, time extrapolated

Same objective (Σ Huber_δ=1e-3 of log residuals), same starts. Prints the best objective of
each path, their wall times (compile excluded for JAX: a warm-up fit runs first; the first,
compiling call is reported separately), the time ratio, and the wall time of 1000 bootstrap
refits. The machine may be shared: both paths run in this one process, back to back.
"""
from __future__ import annotations

import argparse
import csv
import pathlib
import sys
import time

import numpy as np

from analysis import fit, laws

DEFAULT_DATA = (pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
                / "epoch_chinchilla_svg_extracted_data.csv")


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    N = np.array([float(r["Model Size"]) for r in rows])
    C = np.array([float(r["Training FLOP"]) for r in rows])
    L = np.array([float(r["loss"]) for r in rows])
    keep = np.argsort(L)[:-5]  # Epoch's protocol: drop the 5 highest-loss points
    return dict(N=N[keep], D=C[keep] / (6 * N[keep])), L[keep]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--scipy-starts", type=int, default=4500,
                   help="run SciPy from this many of the 4500 starts (random subset) and "
                        "extrapolate its time linearly; default all")
    p.add_argument("--bootstrap", type=int, default=1000)
    args = p.parse_args(argv)
    if not pathlib.Path(args.data).is_file():
        print(f"error: --data {args.data} not found (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    inputs, L = load(args.data)
    law = laws.chinchilla()
    grid = law.start_grid()
    print(f"{len(L)} points, {len(grid)} starts, Huber delta = {fit.DEFAULT_DELTA}")

    t = time.perf_counter()
    fit.fit(law, inputs, L)
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    j = fit.fit(law, inputs, L)
    t_jax = time.perf_counter() - t
    print(f"JAX   : objective {j.objective:.15e}  {t_jax:7.2f} s (first call incl. compile "
          f"{t_first:.2f} s)  starts at best {j.n_at_best}, converged {j.n_converged}")
    print("        params " + ", ".join(f"{k}={v:.5g}" for k, v in j.params.items()))

    sub = grid
    if args.scipy_starts < len(grid):
        sub = grid[np.random.default_rng(0).choice(len(grid), args.scipy_starts, replace=False)]
    fit.fit_scipy(law, inputs, L, starts=grid[:1])  # warm up the jitted objective
    t = time.perf_counter()
    s = fit.fit_scipy(law, inputs, L, starts=sub)
    t_scipy = (time.perf_counter() - t) * len(grid) / len(sub)
    note = "" if len(sub) == len(grid) else f" (extrapolated from {len(sub)} starts)"
    print(f"SciPy : objective {s.objective:.15e}  {t_scipy:7.2f} s{note}  starts at best "
          f"{s.n_at_best}, success {s.n_converged}")
    print("        params " + ", ".join(f"{k}={v:.5g}" for k, v in s.params.items()))
    rel = (j.objective - s.objective) / s.objective
    print(f"objective JAX - SciPy = {rel:+.2e} (relative); time ratio SciPy/JAX = "
          f"{t_scipy / t_jax:.1f}x")

    if args.bootstrap:
        fit.bootstrap(j, inputs, L, n_resamples=args.bootstrap, seed=1)  # compile
        t = time.perf_counter()
        b = fit.bootstrap(j, inputs, L, n_resamples=args.bootstrap, seed=0)
        t_boot = time.perf_counter() - t
        print(f"bootstrap: {args.bootstrap} refits x {b.boot_starts.shape[0]} starts in "
              f"{t_boot:.2f} s")
        print("        95% CI " + ", ".join(f"{k}=({lo:.4g}, {hi:.4g})" for k, (lo, hi) in b.ci.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
