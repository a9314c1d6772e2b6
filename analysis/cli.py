"""`scaling fit` and `scaling reproduce`: from a sweep directory (or CSV) to fitted laws + figures.

    scaling fit sweeps/chinchilla_cpu --law chinchilla --bootstrap 1000      # -> sweeps/.../fit-chinchilla/
    scaling fit points.csv --law isoflop --out fits/iso
    scaling fit sweeps/kaplan_n --law kaplan-n [--irreducible]
    scaling reproduce chinchilla --data ../shared/data/epoch_chinchilla_svg_extracted_data.csv

`fit` prints the fitted parameters with bootstrap CIs and the compute-optimal allocation
(a, b, and N_opt, D_opt, tokens/param at a few budgets), and writes fit.json plus figures
(PNG + PDF) into --out (default: SWEEP_DIR/fit-LAW, or ./fit-STEM-LAW for a CSV).

Laws (what each fits, which columns):
  chinchilla   L(N, D) = E + A/N^alpha + B/D^beta   N = n_params (total), D = tokens
  kaplan-n     L(N) = (N_c/N)^alpha_N               N = n_params_nonembed (n_params if absent)
  kaplan-d     L(D) = (D_c/D)^alpha_D               D = tokens
  kaplan-c     L(C) = (C_c/C)^alpha_C               C = flops (exact; flops_6nd if absent)
  isoflop      Approach 2: per-budget parabolas     C = flops_6nd, budgets from sweep.json
  approach1    Approach 1: envelope of the curves   every eval point of every run (metrics.jsonl;
                                                    a CSV needs a 'run' column), C = 6 N tokens
For kaplan-* the fit uses, per distinct x, the lowest-loss run (L(N): each N's best D; L(C):
the compute frontier), as Kaplan et al. did; the count used is printed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys
import warnings

import numpy as np

LAWS = ("chinchilla", "kaplan-n", "kaplan-d", "kaplan-c", "isoflop", "approach1")
KAPLAN_X = {"kaplan-n": ("N", "non-embedding parameters N"), "kaplan-d": ("D", "training tokens D"),
            "kaplan-c": ("C", "training compute C (FLOPs)")}


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so errors print one clean line and return 2."""

    def error(self, message):
        raise ValueError(message)


def _law_name(s: str) -> str:
    name = s.lower().replace("_", "-")
    if name not in LAWS:
        raise argparse.ArgumentTypeError(f"unknown law {s!r}; valid: {', '.join(LAWS)}")
    return name


def _fit_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="scaling fit", description=__doc__.split("\n\n", 2)[2],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="sweep directory (SWEEP/runs/*/result.json) or CSV "
                                "(n_params, tokens, loss [, flops, budget])")
    p.add_argument("--law", required=True, type=_law_name, help=" | ".join(LAWS))
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for CIs (0: none; default 1000)")
    p.add_argument("--out", type=pathlib.Path, help="output directory for fit.json and figures")
    p.add_argument("--on-error", choices=("warn", "raise"), default="warn",
                   help="unfinished/failed/corrupt runs: skip with a warning (default) or fail")
    p.add_argument("--loss", choices=("eval", "train"), default="eval",
                   help="sweep dirs: final held-out eval loss (default) or final train loss")
    p.add_argument("--irreducible", action="store_true", help="kaplan-*: add a constant E")
    p.add_argument("--n-starts", type=int, default=0, metavar="K",
                   help="use K starts evenly taken from the law's default grid (0: all)")
    p.add_argument("--drop-noninterior", action="store_true",
                   help="isoflop: drop budgets without an interior minimum instead of failing")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return p


def starts_subset(law, k: int):
    if k < 0:
        raise ValueError(f"--n-starts={k}: must be >= 0 (0: the full default grid)")
    grid = law.start_grid()
    if k == 0 or k >= len(grid):
        return None
    return grid[np.unique(np.linspace(0, len(grid) - 1, k).round().astype(int))]


def _default_out(path: pathlib.Path, law: str) -> pathlib.Path:
    return path / f"fit-{law}" if path.is_dir() else pathlib.Path(f"fit-{path.stem}-{law}")


def _ci_str(ci) -> str:
    return f"  95% CI ({ci[0]:.4g}, {ci[1]:.4g})" if ci is not None else ""


def _budgets_for_table(c_data) -> np.ndarray:
    """Decades from the smallest data budget to 100x the largest (at most 7)."""
    lo, hi = np.floor(np.log10(np.min(c_data))), np.ceil(np.log10(np.max(c_data))) + 2
    return 10.0 ** np.linspace(lo, hi, int(min(hi - lo + 1, 7)))


def _allocation_rows(budgets, n_opt, d_opt, n_band=None, d_band=None) -> list[dict]:
    rows = []
    for i, c in enumerate(budgets):
        r = {"C": float(c), "N_opt": float(n_opt[i]), "D_opt": float(d_opt[i]),
             "tokens_per_param": float(d_opt[i] / n_opt[i])}
        if n_band is not None:
            r["N_opt_ci"] = [float(n_band[0][i]), float(n_band[1][i])]
            r["D_opt_ci"] = [float(d_band[0][i]), float(d_band[1][i])]
        rows.append(r)
    return rows


def _print_allocation(scaling, rows) -> None:
    ci = scaling.ci or {}
    print(f"compute-optimal allocation ({scaling.method}): N_opt ∝ C^a, D_opt ∝ C^b")
    print(f"  a = {scaling.a:.4f}{_ci_str(ci.get('a'))}")
    print(f"  b = {scaling.b:.4f}{_ci_str(ci.get('b'))}")
    print(f"  {'C (FLOPs)':>10}  {'N_opt (params)':>24}  {'D_opt (tokens)':>24}  tokens/param")
    for r in rows:
        n = f"{r['N_opt']:.3g}" + (" ({:.2g}-{:.2g})".format(*r["N_opt_ci"]) if "N_opt_ci" in r else "")
        d = f"{r['D_opt']:.3g}" + (" ({:.2g}-{:.2g})".format(*r["D_opt_ci"]) if "D_opt_ci" in r else "")
        print(f"  {r['C']:>10.0e}  {n:>24}  {d:>24}  {r['tokens_per_param']:.3g}")


def _print_fit(result) -> None:
    print(f"law: {result.law.formula}")
    print(f"  points {result.n_points}, starts {result.n_starts} ({result.n_at_best} reached the best), "
          f"objective (sum Huber, delta={result.delta:g}) {result.objective:.6g}")
    for k, v in result.params.items():
        print(f"  {k:>8} = {v:.6g}{_ci_str((result.ci or {}).get(k))}")


def fit_chinchilla(df, args, out) -> dict:
    """Approach 3 on df (n_params, tokens, loss): prints, draws into `out`, returns a JSON-ready dict.
    `args` needs n_starts, bootstrap, seed (as parsed by `scaling fit`; analysis.report builds one)."""
    from analysis import chinchilla, figures, kaplan, laws, reproduce
    law = laws.chinchilla()
    result = chinchilla.approach3({"N": df.n_params, "D": df.tokens}, df.loss,
                                  starts=starts_subset(law, args.n_starts), n_bootstrap=args.bootstrap,
                                  seed=args.seed)
    _print_fit(result)
    scaling = chinchilla.scaling_from_fit(result)
    c_data = df.flops_6nd.to_numpy()
    budgets = _budgets_for_table(c_data)
    c_line = np.geomspace(c_data.min() / 2, budgets[-1], 100)
    n_opt, d_opt = chinchilla.compute_optimal(result.params, budgets)
    n_line, d_line = chinchilla.compute_optimal(result.params, c_line)
    line = {"c": c_line, "n": n_line, "d": d_line, "label": f"Approach 3 frontier (a = {scaling.a:.3f})"}
    bands = (None, None)
    if result.boot_params is not None:
        bands = reproduce.bootstrap_band(result.boot_params, budgets, result.ci_level)
        line["band_n"], line["band_d"] = reproduce.bootstrap_band(result.boot_params, c_line,
                                                                    result.ci_level)
    rows = _allocation_rows(budgets, n_opt, d_opt, *bands)
    _print_allocation(scaling, rows)
    files = figures.loss_contours(lambda n, d: result.predict(N=n, D=d), out / "contours",
                                  n_params=df.n_params, c=c_data, loss=df.loss,
                                  frontier_c=c_line, frontier_n=n_line)
    resid = np.log(df.loss.to_numpy() / result.predict(N=df.n_params, D=df.tokens))
    files += figures.residuals(c_data, {"L(N, D) fit": resid}, out / "residuals",
                               x_label="compute C = 6ND (FLOPs)")
    files += figures.loss_vs_compute(c_data, df.loss, out / "loss_vs_compute", n_params=df.n_params,
                                     frontier=kaplan.frontier(c_data, df.loss),
                                     c_label="compute C = 6ND (FLOPs)")
    files += figures.allocation(None, None, None, out / "allocation", lines=[line])
    return {"fit": result.to_dict(), "allocation": scaling.to_dict(), "budgets": rows,
            "files": files}


def _best_per_x(x, loss):
    """Indices of the lowest-loss row per distinct x (L(N), L(D)) as Kaplan et al. fit them."""
    order = np.lexsort((loss, x))
    first = np.r_[True, np.diff(x[order]) != 0]
    return order[first]


def fit_kaplan(df, args, out) -> dict:
    """Kaplan L(N|D|C) (args.law kaplan-n|d|c; args.irreducible adds E); same contract as fit_chinchilla."""
    from analysis import figures, kaplan, laws
    var, label = KAPLAN_X[args.law]
    law = laws.get(args.law + ("+e" if args.irreducible else ""))
    if var == "N":
        col = "n_params_nonembed" if "n_params_nonembed" in df.columns else "n_params"
        if col == "n_params":
            print("note: no n_params_nonembed column; L(N) uses n_params (total, incl. embeddings)")
            label = "parameters N (total)"
    else:
        col = {"D": "tokens", "C": "flops" if "flops" in df.columns else "flops_6nd"}[var]
    x, loss = df[col].to_numpy(dtype=float), df.loss.to_numpy(dtype=float)
    if var == "C":
        c_f, l_f = kaplan.frontier(x, loss)
        keep = np.flatnonzero(np.isin(x, c_f) & np.isin(loss, l_f))
        how = "on the compute frontier"
    else:
        keep = _best_per_x(x, loss)
        how = f"best loss per distinct {col}"
    print(f"{args.law}: fitting {len(keep)} of {len(df)} runs ({how}); x = {col}")
    result = kaplan.fit_power_law(var, x[keep], loss[keep], irreducible=args.irreducible,
                                  starts=starts_subset(law, args.n_starts), n_bootstrap=args.bootstrap,
                                  seed=args.seed)
    _print_fit(result)
    xs = np.geomspace(x.min() / 1.5, x.max() * 1.5, 100)
    files = figures.kaplan(x, loss, out / "kaplan", used=keep, fit_x=xs, fit_loss=result.predict(**{var: xs}),
                           fit_label=law.formula, x_label=label, title=f"Kaplan {law.formula}")
    resid = np.log(loss[keep] / result.predict(**{var: x[keep]}))
    files += figures.residuals(x[keep], {law.formula: resid}, out / "residuals", x_label=label)
    return {"fit": result.to_dict(), "x_column": col, "n_used": int(len(keep)), "files": files}


def fit_isoflop(df, args, out) -> dict:
    """Approach 2 over the sweep's isoFLOP budgets (args.drop_noninterior); same contract as fit_chinchilla."""
    from analysis import chinchilla, figures, kaplan, reproduce
    c = df.flops_6nd.to_numpy(dtype=float)
    if "budget" in df.columns and df.budget.notna().all():
        labels, src = df.budget.to_numpy(dtype=float), "the sweep's nominal budgets"
    else:
        labels, src = chinchilla.group_budgets(c), "C = 6ND grouped within 10%"
    scaling = chinchilla.approach2(c, df.n_params, df.loss, budget=labels,
                                   drop_noninterior=args.drop_noninterior,
                                   n_bootstrap=args.bootstrap, seed=args.seed)
    print(f"isoflop (Approach 2): {len(np.unique(labels))} budgets from {src}; "
          f"{len(scaling.points['C'])} with interior minima")
    budgets = _budgets_for_table(c)
    rows = _allocation_rows(budgets, scaling.n_opt(budgets), scaling.d_opt(budgets))
    _print_allocation(scaling, rows)
    c_line = np.geomspace(c.min() / 2, budgets[-1], 100)
    files = figures.isoflop_curves(
        reproduce.isoflop_budget_dicts(c, df.n_params, df.loss, labels, scaling), out / "isoflop")
    line = {"c": c_line, "n": scaling.n_opt(c_line), "d": scaling.d_opt(c_line),
            "label": f"power law (a = {scaling.a:.3f}, b = {scaling.b:.3f})"}
    files += figures.allocation(scaling.points["C"], scaling.points["N_opt"], scaling.points["D_opt"],
                                out / "allocation", lines=[line])
    files += figures.loss_vs_compute(c, df.loss, out / "loss_vs_compute", n_params=df.n_params,
                                     frontier=kaplan.frontier(c, df.loss),
                                     c_label="compute C = 6ND (FLOPs)")
    return {"allocation": scaling.to_dict(), "budgets": rows, "files": files}


def _fit_approach1(curves, args, out) -> dict:
    from analysis import chinchilla, figures, kaplan
    if "run" not in curves.columns:  # sweep dirs: the run directory identifies a curve
        if curves.run_dir.str.contains(r"\.csv:\d+$").any():
            raise ValueError("approach1 on a CSV needs a 'run' column naming each point's training "
                             "run (one curve per run); columns: n_params, tokens, loss, run")
        curves = curves.assign(run=curves.run_dir)
    c = curves.flops_6nd.to_numpy(dtype=float)
    scaling = chinchilla.approach1(curves.run.to_numpy(), curves.n_params, curves.tokens, c,
                                   curves.loss)
    print(f"approach1: {len(curves)} eval points from {curves.run.nunique()} runs "
          f"({curves.n_params.nunique()} sizes); envelope on {len(scaling.points['C'])} C values")
    budgets = _budgets_for_table(c)
    rows = _allocation_rows(budgets, scaling.n_opt(budgets), scaling.d_opt(budgets))
    _print_allocation(scaling, rows)
    pts = {k: np.asarray(v)[:: max(1, len(v) // 60)] for k, v in scaling.points.items()}
    c_line = np.geomspace(c.min(), budgets[-1], 100)
    line = {"c": c_line, "n": scaling.n_opt(c_line), "d": scaling.d_opt(c_line),
            "label": f"power law (a = {scaling.a:.3f}, b = {scaling.b:.3f})"}
    files = figures.allocation(pts["C"], pts["N_opt"], pts["D_opt"], out / "allocation",
                               lines=[line], points_label="envelope (every few grid points)",
                               title="Approach 1: compute-optimal N and D from the loss envelope")
    files += figures.loss_vs_compute(c, curves.loss, out / "loss_vs_compute",
                                     frontier=kaplan.frontier(c, curves.loss), n_params=curves.n_params,
                                     c_label="compute C = 6 N tokens (FLOPs)",
                                     title="Training curves (eval points) and their envelope")
    return {"allocation": scaling.to_dict(), "budgets": rows, "files": files}


@contextlib.contextmanager
def _plain_warnings():
    """Warnings (skipped runs, dropped budgets) print as 'warning: ...' lines, not source lines."""
    with warnings.catch_warnings():
        warnings.formatwarning = lambda msg, *a, **k: f"warning: {msg}\n"
        try:
            yield
        finally:
            warnings.formatwarning = _FORMATWARNING


_FORMATWARNING = warnings.formatwarning


def fit_main(argv: list[str]) -> int:
    """`scaling fit`: returns 0 on success, 2 on bad input (message on stderr, no traceback)."""
    with _plain_warnings():
        return _fit_main(argv)


def _fit_main(argv: list[str]) -> int:
    try:
        args = _fit_parser().parse_args(argv)  # -h/--help exits 0 via SystemExit
        if args.bootstrap < 0 or args.bootstrap == 1:
            raise ValueError(f"--bootstrap={args.bootstrap}: use 0 (no CIs) or >= 2 resamples")
        from analysis import results
        if args.law == "approach1":
            df = results.load_curves(args.path, on_error=args.on_error)
        else:
            df = results.load(args.path, on_error=args.on_error, loss=args.loss)
        out = args.out or _default_out(pathlib.Path(args.path), args.law)
        out.mkdir(parents=True, exist_ok=True)
        print(f"{args.path}: {len(df)} {'eval points' if args.law == 'approach1' else 'runs'} loaded"
              + (f" ({len(df.attrs['skipped'])} skipped, see warning)" if df.attrs["skipped"] else ""))
        run = {"chinchilla": fit_chinchilla, "isoflop": fit_isoflop,
               "approach1": _fit_approach1}.get(args.law, fit_kaplan)
        summary = run(df, args, out)
    except (ValueError, FileNotFoundError) as e:
        print(f"scaling fit: error: {e}", file=sys.stderr)
        return 2
    summary = {"law": args.law, "source": str(args.path), "argv": list(argv), "n_rows": len(df),
               "skipped": df.attrs["skipped"], "loss": args.loss, **summary}
    summary["files"] = [str(f) for f in summary["files"]] + [str(out / "fit.json")]
    (out / "fit.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print(f"wrote {out / 'fit.json'} and {len(summary['files']) - 1} figure files in {out}")
    return 0


def reproduce_main(argv: list[str]) -> int:
    """`scaling reproduce chinchilla --data PATH [--out DIR]`."""
    with _plain_warnings():
        return _reproduce_main(argv)


def _reproduce_main(argv: list[str]) -> int:
    p = _Parser(prog="scaling reproduce", description="reproduce a paper's fits from its data")
    p.add_argument("paper", choices=("chinchilla",), help="which reproduction")
    p.add_argument("--data", required=True, type=pathlib.Path,
                   help="the Epoch CSV (epoch_chinchilla_svg_extracted_data.csv)")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("reproduce/chinchilla"))
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N")
    p.add_argument("--n-starts", type=int, default=0, metavar="K",
                   help="K starts evenly taken from the 4500-start grid (0: all, the protocol)")
    p.add_argument("--seed", type=int, default=0)
    try:
        args = p.parse_args(argv)
        from analysis import laws, reproduce
        s = reproduce.run_chinchilla(args.data, args.out, n_bootstrap=args.bootstrap, seed=args.seed,
                                     starts=starts_subset(laws.chinchilla(), args.n_starts))
    except (ValueError, FileNotFoundError) as e:
        print(f"scaling reproduce: error: {e}", file=sys.stderr)
        return 2
    import pandas as pd
    with pd.option_context("display.width", 200, "display.max_columns", 20,
                           "display.float_format", "{:.6g}".format):
        print(f"Chinchilla Approach 3 on {s['n_fit_approach3']} of {s['n_points']} Epoch points "
              f"(5 highest-loss dropped; sum Huber delta=1e-3):")
        print(s["table_df"].to_string())
    a2 = s["approach2_obj"]
    h2 = reproduce.HOFFMANN_2022_TABLE2["approach_2"]
    print(f"\nApproach 2 on {s['approach2_points_used']} points on Hoffmann's isoFLOP budgets: "
          f"a = {a2.a:.3f}{_ci_str((a2.ci or {}).get('a'))}, b = {a2.b:.3f}; "
          f"Hoffmann et al. Table 2: a = {h2['a']} {h2['a_ci']}, b = {h2['b']} {h2['b_ci']}")
    print(f"wrote {len(s['files'])} files in {args.out}")
    return 0
