"""`scaling hparams-fit`: optimal LR and batch size per group of an LR x batch sweep, and their power laws.

    scaling sweep experiments/hparams_cpu.py --parallel 2          # the LR x batch grid per budget
    scaling hparams-fit sweeps/hparams_cpu --out fits/hparams.json  # eta*(C), B*(C) with intervals
    # then in a sweep file: c.sweep.hparams.fit_file = "fits/hparams.json"

Composition only: analysis.hparams loads, fits and writes the fit file (scaling/hparam_file.py format).
"""
from __future__ import annotations

import argparse
import math
import pathlib

from analysis.cli import run_command


def _fmt_ci(lo, hi) -> str:
    return "no interval" if lo is None or (isinstance(lo, float) and math.isnan(lo)) else f"[{lo:.3g}, {hi:.3g}]"


def _fit(argv) -> int:
    p = argparse.ArgumentParser(prog="scaling hparams-fit", description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", metavar="path",
                   help="sweep directories of LR x batch sweeps, fitted together (e.g. a grid and its extensions)")
    p.add_argument("--x", choices=("flops", "n_params"), default="flops",
                   help="group runs by budget C (isoflop sweeps) or by model size N")
    p.add_argument("--level", type=float, default=0.9, help="interval level (default 0.9)")
    p.add_argument("--out", type=pathlib.Path, required=True, help="the fit file to write (JSON)")
    args = p.parse_args(argv)
    if not 0 < args.level < 1:
        raise ValueError(f"--level={args.level}: must be in (0, 1)")
    from analysis import hparams
    df = hparams.sweep_table(args.paths)
    laws, rows = hparams.fit_table(df, x=args.x, level=args.level)
    col = hparams.GROUP_XS[args.x]
    print(f"per-group optima ({args.level:.0%} intervals; EDGE = best at the grid's end, not extrapolated):")
    for r in rows:
        if "not_fitted" in r:
            continue
        for name in ("lr", "batch_size"):
            o = r[name]
            if o:
                print(f"  {col}={r[col]:.3g}  {name}* = {o['best']:.3g} {_fmt_ci(o['lo'], o['hi'])}"
                      + (f"  EDGE ({o['edge']})" if o["edge"] else "") + f"  (loss {o['loss_at_best']:.4f})")
    for name, law in laws.items():
        print(f"{name}: {law.y_name}* = {law.coef:.3g} * {law.x_name}^{law.exponent:.3f}  exponent "
              f"{_fmt_ci(*law.exponent_ci)}, coef {_fmt_ci(*law.coef_ci)} ({law.level:.0%}, t, {law.n_groups} groups)"
              + (f"; left out: {', '.join(law.left_out)}" if law.left_out else ""))
    for r in rows:
        if "not_fitted" in r:
            print(f"{r['law']}: not fitted: {r['not_fitted']}")
    for law in laws.values():
        for doubt in hparams.law_doubts(law):
            print(f"warning: {doubt}")
    if not laws:
        raise ValueError("no law could be fitted (see above); widen the grids or add groups")
    command = (f"scaling hparams-fit {' '.join(args.paths)}" + (f" --x {args.x}" if args.x != "flops" else "")
               + (f" --level {args.level:g}" if args.level != 0.9 else "") + f" --out {args.out}")
    digest = hparams.write_fit_file(args.out, laws, rows, hparams.fit_source(args.paths, df, command))
    print(f"wrote {args.out} (sha256 {digest[:8]})")
    return 0


def fit_main(argv: list[str]) -> int:
    """`scaling hparams-fit`."""
    return run_command("hparams-fit", _fit, argv)
