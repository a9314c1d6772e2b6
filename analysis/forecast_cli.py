"""`scaling backtest`, `scaling forecast`, `scaling score`: parsing and printing.

    scaling backtest SWEEP_DIR_OR_CSV --law chinchilla|isoflop|data-constrained|bnsl [--level 0.9]
                     [--bootstrap N] [--out DIR] [--group-by COLS] [--budget-tol T] [--n-starts K]
                     [--max-cutoffs K]
    scaling forecast SWEEP_DIR_OR_CSV --target-flops C [--law chinchilla] --out FILE [--sweep CFG]
    scaling score FORECAST RUN_DIR_OR_CSV

A CSV needs n_params, loss and tokens or flops (D = flops / 6N when tokens is absent; the
Epoch file's 'Model Size' and 'Training FLOP' columns are read as n_params and flops).
Each returns 0 on success and 2 on bad input, with a one-line error on stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib

import numpy as np
import pandas as pd

from analysis import backtest, laws, predict
from analysis.cli import Parser, run_command
from analysis.workflows import starts_subset

CSV_ALIASES = {"Model Size": "n_params", "Training FLOP": "flops"}  # Epoch's digitised points


def load_table(path, require=()) -> pd.DataFrame:
    """A results table from a sweep dir or CSV (analysis.results.load, which checks the
    `require`d columns), also accepting CSVs with flops instead of tokens (D = flops / 6N)."""
    from analysis import results
    path = pathlib.Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        df = pd.read_csv(path).rename(columns=CSV_ALIASES)
        if "tokens" not in df and {"flops", "n_params", "loss"} <= set(df):
            bad = ~((df[["flops", "n_params", "loss"]] > 0).all(1) & np.isfinite(df.flops))
            if bad.any():
                raise ValueError(f"{path}: line {int(np.flatnonzero(bad)[0]) + 2}: flops, n_params, "
                                 f"loss must be finite and > 0")
            df["tokens"] = df.flops / (6 * df.n_params)
            df["flops_6nd"] = df.flops
            df["run_dir"] = [f"{path}:{i + 2}" for i in range(len(df))]
            return df
    return results.load(path, require=require)


def _group_by(s: str) -> list[str]:
    return [c.strip() for c in s.split(",") if c.strip()]


def _positive(s: str) -> float:
    v = float(s)
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"{s!r} is not a positive number")
    return v


def _common(p):
    p.add_argument("--level", type=float, default=0.9, help="interval level (default 0.9)")
    p.add_argument("--bootstrap", type=int, default=200, metavar="N", help="bootstrap refits (default 200)")
    p.add_argument("--n-starts", type=int, default=256, metavar="K",
                   help="starts taken evenly from the law's grid (0: all; default 256)")
    p.add_argument("--seed", type=int, default=0)


def _check(args):
    if not 0 < args.level < 1:
        raise ValueError(f"--level={args.level}: must be in (0, 1), e.g. 0.9")
    if args.bootstrap < 2:
        raise ValueError(f"--bootstrap={args.bootstrap}: need >= 2 resamples")


def backtest_main(argv: list[str]) -> int:
    """`scaling backtest`: rollout backtest table + summary (+ CSV, JSON and figure in --out)."""
    return run_command("backtest", _backtest, argv)


def _backtest(argv) -> int:
    p = Parser(prog="scaling backtest", description="rollout backtest of a scaling law")
    p.add_argument("path")
    p.add_argument("--law", required=True, choices=backtest.LAWS)
    p.add_argument("--out", type=pathlib.Path)
    p.add_argument("--group-by", type=_group_by, default=[], metavar="COLS",
                   help="comma-separated columns: one backtest per set-up (e.g. Porian's label)")
    p.add_argument("--max-cutoffs", type=int, metavar="K",
                   help="at most K cutoffs, evenly spaced in rank (default: all)")
    p.add_argument("--budget-tol", type=float, default=0.1,
                   help="without a budget column, C within a factor 1 + T is one budget (0.1)")
    _common(p)
    args = p.parse_args(argv)
    _check(args)
    df = load_table(args.path, ("unique_tokens",) if args.law == "data-constrained" else ())
    missing = [c for c in args.group_by if c not in df]
    if missing:
        raise ValueError(f"--group-by: no column(s) {missing} in {args.path}; columns: {list(df)}")
    out = args.out or pathlib.Path(f"backtest-{pathlib.Path(args.path).stem}-{args.law}")
    starts = None if args.law == "isoflop" else starts_subset(backtest.law_of(args.law), args.n_starts)
    groups = df.groupby(args.group_by, dropna=False) if args.group_by else [((), df)]
    summary = {}
    for key, g in groups:
        name = "-".join(map(str, key if isinstance(key, tuple) else (key,))) or "all"
        rows = backtest.backtest(g.reset_index(drop=True), args.law, level=args.level,
                                 n_bootstrap=args.bootstrap, starts=starts, seed=args.seed,
                                 rel_tol=args.budget_tol, max_cutoffs=args.max_cutoffs)
        s = backtest.summarize(rows)
        print(f"== {name}: {len(g)} runs, {rows.cutoff.nunique()} cutoffs, law {args.law}, "
              f"{args.level:.0%} {predict.KIND_PI}, coverage 95% Wilson interval")
        print(s.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        stem = out / name.replace(" ", "_").replace("/", "_")
        stem.parent.mkdir(parents=True, exist_ok=True)
        rows.to_csv(f"{stem}.csv", index=False)
        files = backtest.figure(rows, stem, title=f"Rollout backtest: {name} ({args.law})")
        summary[name] = {"summary": s.to_dict("records"), "table": f"{stem}.csv",
                         "skipped_cutoffs": rows.attrs["skipped_cutoffs"],
                         "files": [str(f) for f in files]}
    (out / "backtest.json").write_text(json.dumps(
        {"source": str(args.path), "law": args.law, "level": args.level,
         "n_bootstrap": args.bootstrap, "groups": summary}, indent=1, default=float) + "\n")
    print(f"wrote {out / 'backtest.json'}, tables and figures in {out}")
    return 0


def config_path(forecast_path) -> pathlib.Path:
    """Where `scaling forecast` writes the predicted-optimal run's config: beside the forecast,
    FORECAST_STEM.config.json."""
    forecast_path = pathlib.Path(forecast_path)
    return forecast_path.with_name(f"{forecast_path.stem}.config.json")


def forecast_main(argv: list[str], *, make_config=None, hash_config=None, git_sha=None) -> int:
    """`scaling forecast`: write a frozen forecast file and, when `make_config` gives one, the run's
    config beside it. make_config(source, sweep_file, target_flops) -> (N*, D*) -> config dict,
    or None when the source has no sweep config (it raises ValueError for a bad one);
    hash_config(config dict) -> str; git_sha: recorded as is."""
    return run_command("forecast", lambda a: _forecast(a, make_config, hash_config, git_sha), argv)


def _forecast(argv, make_config, hash_config, git_sha) -> int:
    from analysis import forecast
    p = Parser(prog="scaling forecast", description="pre-register a forecast at a larger budget")
    p.add_argument("path")
    p.add_argument("--target-flops", required=True, type=_positive, metavar="C")
    p.add_argument("--law", choices=backtest.OPTIMUM_LAWS, default="chinchilla")
    p.add_argument("--out", required=True, type=pathlib.Path)
    p.add_argument("--sweep", metavar="CFG", help="sweep config whose ladder and rules shape the "
                   "run's config (default: the one the sweep dir's manifest names)")
    _common(p)
    args = p.parse_args(argv)
    _check(args)
    df = load_table(args.path)
    config_hook = make_config(args.path, args.sweep, args.target_flops) if make_config else None
    doc = forecast.write_forecast(
        df, args.target_flops, args.out, law=args.law, level=args.level, n_bootstrap=args.bootstrap,
        starts=starts_subset(laws.chinchilla(), args.n_starts), seed=args.seed,
        make_config=config_hook, hash_config=hash_config, source=args.path, git_sha=git_sha)
    o = doc["optimum"]
    print(f"forecast at C = {args.target_flops:.3g} FLOPs ({doc['factor_beyond_data']:.3g}x the "
          f"largest budget in the data), law {args.law}, fitted on {len(df)} runs:")
    for k, unit in (("N", "params"), ("D", "tokens"), ("L", "nats/token")):
        iv = o[k]
        print(f"  {k}* = {iv['value']:.4g} {unit}  {iv['level']:.0%} {iv['kind']}: "
              f"({iv['lo']:.4g}, {iv['hi']:.4g})")
    print(f"  noise: {predict.describe_noise(o['noise'])}")
    if o["note"]:
        print(f"warning: {o['note']}")
    print(f"wrote {args.out}")
    if doc["config"] is not None:
        cfg = config_path(args.out)
        cfg.write_text(json.dumps(doc["config"], indent=1) + "\n")
        print(f"wrote {cfg}: the predicted-optimal run (config hash {doc['config_hash']}); "
              f"train it with `scaling train --config {cfg} --workdir RUN_DIR`")
    return 0


def score_main(argv: list[str]) -> int:
    """`scaling score`: the forecast vs the measured run(s) at its target budget."""
    return run_command("score", _score, argv)


def _score(argv) -> int:
    from analysis import forecast
    p = Parser(prog="scaling score", description="score a forecast against the measured run")
    p.add_argument("forecast", type=pathlib.Path)
    p.add_argument("runs", help="run dir, sweep dir or CSV holding the run at the target budget")
    args = p.parse_args(argv)
    doc = forecast.load_forecast(args.forecast)
    src = doc["inputs"]["source"]
    if not pathlib.Path(src).exists():
        raise ValueError(f"cannot verify the forecast's inputs: {src} no longer exists")
    scores = forecast.score(args.forecast, load_table(args.runs), inputs=load_table(src))
    print(f"forecast {args.forecast}: C = {doc['target_flops']:.3g} FLOPs, law {doc['law']}, "
          f"inputs verified (sha256 {doc['inputs']['sha256'][:12]}…)")
    for s in scores:
        print(f"  {s.run}: measured {s.measured:.4f}, predicted {s.predicted:.4f} "
              f"{s.level:.0%} PI ({s.lo:.4f}, {s.hi:.4f}); error {s.rel_error:+.2%}, "
              f"{'inside' if s.inside else 'OUTSIDE'} the interval")
    return 0
