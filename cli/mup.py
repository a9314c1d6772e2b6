"""`scaling mup-check` and `scaling lr-transfer`: the μP coordinate check and the LR-transfer sweep.

    scaling mup-check --widths 32,64,128,256 --steps 5 --out mup_check      # coords.json, slopes, figure
    scaling lr-transfer --widths 32,64,128 --lrs 1e-3,3e-3,1e-2,3e-2,1e-1 --steps 200 --out lr_transfer

Composition only: scaling.coord_check / scaling.lr_transfer train and measure, analysis.hparams
finds each width's optimum, analysis.mup_figures draws.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib

from analysis.cli import run_command


def _numbers(kind):
    def parse(s: str):
        try:
            out = tuple(kind(x) for x in s.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of numbers") from None
        if not out or any(not v > 0 for v in out):
            raise argparse.ArgumentTypeError(f"{s!r}: give positive numbers, e.g. 32,64,128")
        return out
    return parse


def _parser(prog: str, what: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=what)
    p.add_argument("--widths", type=_numbers(int), default=(32, 64, 128, 256), help="d_model values")
    p.add_argument("--parametrizations", default="standard,mup", help="comma-separated: standard,mup")
    p.add_argument("--steps", type=int, default=5, help="optimizer updates per width")
    p.add_argument("--base-width", type=int, default=32, help="μP base width (base_d_model)")
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=2, help="fixed across widths (head_dim grows)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="data_cache", help="where the embedded corpus is prepared")
    p.add_argument("--out", type=pathlib.Path, required=True, help="output directory")
    return p


def _setups(args, **extra):
    from scaling.coord_check import CoordSetup
    if args.steps < 1:
        raise ValueError(f"--steps={args.steps}: must be >= 1")
    pars = [p.strip() for p in args.parametrizations.split(",") if p.strip()]
    return [CoordSetup(widths=args.widths, parametrization=p, steps=args.steps, base_d_model=args.base_width,
                       n_layers=args.n_layers, n_heads=args.n_heads, seq_len=args.seq_len,
                       batch_size=args.batch_size, seed=args.seed, cache_dir=args.cache_dir, **extra) for p in pars]


def _mup_check(argv) -> int:
    p = _parser("scaling mup-check", "μP coordinate check: RMS of every activation vs width, SP and μP")
    p.add_argument("--lr", type=float, default=1e-2, help="constant Adam LR (μP: at the base width)")
    p.add_argument("--figure-layers", default="", help="comma-separated activations to draw (default: all)")
    args = p.parse_args(argv)
    from analysis import mup_figures
    from scaling import coord_check
    records, table = [], {}
    for setup in _setups(args, lr=args.lr):
        recs = coord_check.coord_check(setup)
        records += [dataclasses.asdict(r) for r in recs]
        table[setup.parametrization] = coord_check.slopes(recs, setup.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    layers = list(next(iter(table.values())))
    (args.out / "coords.json").write_text(json.dumps({"records": records, "slopes_last_step": table}, indent=1))
    drawn = [x for x in args.figure_layers.split(",") if x] or layers
    unknown = sorted(set(drawn) - set(layers))
    if unknown:
        raise ValueError(f"--figure-layers: {unknown} are not activations of this model (have: {layers})")
    mup_figures.coord_sizes(records, args.out / "coord_check", layers=drawn)
    print(f"log-log slope of RMS in width after {args.steps} steps (widths {','.join(map(str, args.widths))}; "
          "0 = flat, 1 = grows like width):")
    print(f"  {'activation':<16}" + "".join(f"{p:>10}" for p in table))
    for layer in layers:
        print(f"  {layer:<16}" + "".join(f"{table[p][layer]:>10.2f}" for p in table))
    print(f"wrote {args.out}/coords.json, {args.out}/coord_check.png")
    return 0


def _lr_transfer(argv) -> int:
    p = _parser("scaling lr-transfer", "held-out loss over LR x width, SP and μP; the optimum per width")
    p.add_argument("--lrs", type=_numbers(float), default=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1), help="Adam LRs")
    p.add_argument("--probe-size", type=int, default=64, help="held-out sequences the loss is measured on")
    args = p.parse_args(argv)
    from analysis import hparams, mup_figures
    from scaling import lr_transfer
    points, optima = [], []
    for setup in _setups(args):
        pts = lr_transfer.lr_transfer(setup, args.lrs, args.probe_size,
                                      on_point=lambda q: print(f"  {q.parametrization:<8} d{q.width:<5} lr {q.lr:<8.3g}"
                                                               f" loss {q.loss:.4f}", flush=True))
        points += [dataclasses.asdict(q) for q in pts]
        for w in setup.widths:
            mine = [q for q in pts if q.width == w]
            opt = hparams.fit_optimum([q.lr for q in mine], [q.loss for q in mine])
            optima.append({"parametrization": setup.parametrization, "width": w, **dataclasses.asdict(opt)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lr_transfer.json").write_text(json.dumps({"points": points, "optima": optima}, indent=1,
                                                           default=str))
    mup_figures.lr_transfer(points, optima, args.out / "lr_transfer")
    print("optimal LR per width (parabola in ln LR; interval 90% delta method; edge = best at the grid's end):")
    for o in optima:
        ci = "" if o["lo"] != o["lo"] else f" [{o['lo']:.3g}, {o['hi']:.3g}]"
        print(f"  {o['parametrization']:<8} d{o['width']:<5} lr* {o['best']:.3g}{ci}"
              + (f"  EDGE ({o['edge']})" if o["edge"] else "") + f"  loss {o['loss_at_best']:.4f}")
    print(f"wrote {args.out}/lr_transfer.json, {args.out}/lr_transfer.png")
    return 0


def mup_check_main(argv: list[str]) -> int:
    """`scaling mup-check`."""
    return run_command("mup-check", _mup_check, argv)


def lr_transfer_main(argv: list[str]) -> int:
    """`scaling lr-transfer`."""
    return run_command("lr-transfer", _lr_transfer, argv)
