"""`scaling fit` and `scaling reproduce`: from a sweep directory (or CSV) to fitted laws + figures.

    scaling fit sweeps/chinchilla_cpu --law chinchilla --bootstrap 1000      # -> sweeps/.../fit-chinchilla/
    scaling fit points.csv --law isoflop --out fits/iso
    scaling fit sweeps/kaplan_n --law kaplan-n [--irreducible]
    scaling fit sweeps/demo_cpu --conventions [--target-flops C]          # a, b, N* per FLOP convention
    scaling reproduce chinchilla --data ../shared/data/epoch_chinchilla_svg_extracted_data.csv

`fit` prints the fitted parameters with bootstrap CIs and the compute-optimal allocation
(a, b, and N_opt, D_opt, tokens/param at a few budgets), and writes fit.json plus figures
(PNG + PDF) into --out (default: SWEEP_DIR/fit-LAW, or ./fit-STEM-LAW for a CSV).

Laws (what each fits, which columns):
  chinchilla   L(N, D) = E + A/N^alpha + B/D^beta   N = n_params (total), D = tokens
  kaplan-n     L(N) = (N_c/N)^alpha_N               N = n_params_nonembed (n_params if absent)
  kaplan-d     L(D) = (D_c/D)^alpha_D               D = tokens
  kaplan-c     L(C) = (C_c/C)^alpha_C               C = flops (exact; flops_6nd if absent)
  isoflop      Approach 2: per-budget parabolas     C = flops_6nd, budgets: each run's meta.budget
  approach1    Approach 1: envelope of the curves   every eval point of every run (metrics.jsonl;
                                                    a CSV needs a 'run' column), C = 6 N tokens
  data-constrained  Muennighoff et al.: L = E + A/N'^alpha + B/D'^beta with effective N', D' of
               unique tokens U (R_D*, R_N*)         CSV column unique_tokens; sweeps: tokens/epochs;
                                                    --base fixes E, A, B, alpha, beta (else all 7 fitted)
  bnsl         Caballero et al., one break: a + b x^-c0 (1 + (x/d1)^(1/f1))^(-c1 f1), x = --x (D)
For kaplan-* and bnsl the fit uses, per distinct x, the lowest-loss run (L(N): each N's best D; L(C):
the compute frontier), as Kaplan et al. did; the count used is printed.
Every interval is printed with its level and kind; what should make you doubt a fit (a parameter
at a bound of the law's domain, data curving the wrong way for E, one start at the best
objective, budgets left out, failed bootstrap resamples) prints as `warning: ...` lines.
The fits themselves are analysis.workflows; this module parses, prints and writes fit.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import shutil
import sys
import warnings


LAWS = ("chinchilla", "kaplan-n", "kaplan-d", "kaplan-c", "isoflop", "approach1",
        "data-constrained", "bnsl")


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so errors print one clean line and return 2."""

    def error(self, message):
        raise ValueError(message)


def _law_name(s: str) -> str:
    name = s.lower().replace("_", "-")
    if name not in LAWS:
        raise argparse.ArgumentTypeError(f"unknown law {s!r}; valid: {', '.join(LAWS)}")
    return name


def _fit_parser() -> argparse.ArgumentParser:
    p = Parser(prog="scaling fit", description=__doc__.split("\n\n", 2)[2],
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
    p.add_argument("--base", metavar="E,A,B,ALPHA,BETA|FIT_JSON",
                   help="data-constrained: hold the base law fixed at these five numbers or at the "
                        "params of a `scaling fit --law chinchilla` fit.json (default: fit all 7)")
    p.add_argument("--x", choices=("N", "D", "C"), default="D", help="bnsl: the law's variable (D)")
    p.add_argument("--conventions", action="store_true",
                   help="instead of one law: a, b, N*, D*, L* under each FLOP convention (exact, "
                        "6 N_total D, 6 N_nonembed D); see `scaling fit PATH --conventions --help`")
    p.add_argument("--n-starts", type=int, default=0, metavar="K",
                   help="use K starts evenly taken from the law's default grid (0: all)")
    p.add_argument("--drop-noninterior", action="store_true",
                   help="accepted for compatibility: isoflop now always leaves out (with a warning "
                        "naming it and why) a budget with < 4 sizes, no interior minimum or a flat "
                        "parabola, and goes on while >= 3 budgets remain")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return p


def _default_out(path: pathlib.Path, law: str) -> pathlib.Path:
    return path / f"fit-{law}" if path.is_dir() else pathlib.Path(f"fit-{path.stem}-{law}")


def ci_str(ci, level) -> str:
    """'  95% bootstrap percentile CI (lo, hi)', or '' without an interval."""
    from analysis.fit import CI_KIND
    return f"  {100 * level:.0f}% {CI_KIND} CI ({ci[0]:.4g}, {ci[1]:.4g})" if ci is not None else ""


def _print_allocation(scaling, rows) -> None:
    ci = scaling.ci or {}
    print(f"compute-optimal allocation ({scaling.method}): N_opt ∝ C^a, D_opt ∝ C^b")
    print(f"  a = {scaling.a:.4f}{ci_str(ci.get('a'), scaling.ci_level)}")
    print(f"  b = {scaling.b:.4f}{ci_str(ci.get('b'), scaling.ci_level)}")
    if scaling.n_bootstrap:
        print(f"  bootstrap: {scaling.n_bootstrap} resamples, {scaling.n_boot_failed} failed")
    print(f"  {'C (FLOPs)':>10}  {'N_opt (params)':>24}  {'D_opt (tokens)':>24}  tokens/param")
    for r in rows:
        n = f"{r.N_opt:.3g}" + (" ({:.2g}-{:.2g})".format(*r.N_opt_ci) if r.N_opt_ci else "")
        d = f"{r.D_opt:.3g}" + (" ({:.2g}-{:.2g})".format(*r.D_opt_ci) if r.D_opt_ci else "")
        print(f"  {r.C:>10.0e}  {n:>24}  {d:>24}  {r.D_opt / r.N_opt:.3g}")


def print_fit(result) -> None:
    print(f"law: {result.law.formula}")
    print(f"  points {result.n_points}, starts {result.n_starts} ({result.n_at_best} reached the best), "
          f"objective (sum Huber, delta={result.delta:g}) {result.objective:.6g}")
    for k, v in result.params.items():
        print(f"  {k:>8} = {v:.6g}{ci_str((result.ci or {}).get(k), result.ci_level)}")
    if result.ci is not None:
        print(f"  bootstrap: {len(result.boot_theta) + result.n_boot_failed} resamples, "
              f"{result.n_boot_failed} failed")


def print_result(res) -> None:
    """A workflow's result as `scaling fit` prints it: notes, fit, allocation, warnings."""
    for line in res.notes:
        print(line)
    if res.fit is not None:
        print_fit(res.fit)
    if res.allocation is not None:
        _print_allocation(res.allocation, res.rows)
    for w in res.warnings:
        print(f"warning: {w}")


def _run_workflow(args, df, options, out):
    from analysis import workflows
    if args.law == "chinchilla":
        return workflows.approach3(df, options, out)
    if args.law == "isoflop":
        return workflows.approach2(df, options, out)
    if args.law == "approach1":
        return workflows.approach1(df, options, out)
    if args.law == "bnsl":
        return workflows.bnsl(df, args.x, options, out)
    if args.law == "data-constrained":
        return workflows.data_constrained(df, options, out, base=_base(args.base))
    return workflows.kaplan(df, args.law[-1].upper(), options, out, irreducible=args.irreducible)


def _base(spec: str | None) -> tuple | None:
    """--base: five numbers E,A,B,alpha,beta, or a chinchilla fit.json's fitted params."""
    if spec is None:
        return None
    names = ("E", "A", "B", "alpha", "beta")
    if pathlib.Path(spec).is_file():
        try:
            params = json.loads(pathlib.Path(spec).read_text())["fit"]["params"]
            return tuple(float(params[k]) for k in names)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"--base {spec}: not a `scaling fit --law chinchilla` fit.json "
                             f"(fit.params with {', '.join(names)}): {e!r}") from None
    try:
        values = tuple(float(v) for v in spec.split(","))
    except ValueError:
        values = ()
    if len(values) != 5 or not all(v > 0 for v in values):
        raise ValueError(f"--base {spec!r}: give five positive numbers E,A,B,alpha,beta or a "
                         f"chinchilla fit.json")
    return values


@contextlib.contextmanager
def output_dir(out: pathlib.Path, flag: str = "--out"):
    """Check `out` can be a directory; if it is new and the work in the block fails, remove it again
    (no half-written output is left behind)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is an existing file; give a directory for the output")
    existed = out.exists()
    try:
        yield out
    except BaseException:
        if not existed and out.is_dir():
            shutil.rmtree(out, ignore_errors=True)
        raise


@contextlib.contextmanager
def plain_warnings():
    """Warnings (skipped runs, dropped budgets) print as 'warning: ...' lines, not source lines."""
    with warnings.catch_warnings():
        warnings.formatwarning = lambda msg, *a, **k: f"warning: {msg}\n"
        try:
            yield
        finally:
            warnings.formatwarning = _FORMATWARNING


_FORMATWARNING = warnings.formatwarning


def run_command(name: str, body, argv) -> int:
    """`scaling NAME`: run body(argv) with plain warning lines; bad input (ValueError,
    FileNotFoundError) is one 'scaling NAME: error: ...' line on stderr and exit code 2."""
    with plain_warnings():
        try:
            return body(argv)
        except (ValueError, FileNotFoundError) as e:
            print(f"scaling {name}: error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 2


def fit_main(argv: list[str]) -> int:
    """`scaling fit`: returns 0 on success, 2 on bad input (message on stderr, no traceback)."""
    if "--conventions" in argv:  # FLOP-convention sensitivity: its own parser and table
        from analysis import conventions
        return conventions.main(argv)
    with plain_warnings():
        return _fit_main(argv)


def _fit_main(argv: list[str]) -> int:
    try:
        args = _fit_parser().parse_args(argv)  # -h/--help exits 0 via SystemExit
        from analysis import results, workflows
        options = workflows.FitOptions(n_bootstrap=args.bootstrap, n_starts=args.n_starts, seed=args.seed)
        if args.law == "approach1":
            df = results.load_curves(args.path, on_error=args.on_error)
        else:
            need = (results.UNIQUE_TOKENS,) if args.law == "data-constrained" else ()
            df = results.load(args.path, on_error=args.on_error, loss=args.loss, require=need)
        out = args.out or _default_out(pathlib.Path(args.path), args.law)
        print(f"{args.path}: {len(df)} {'eval points' if args.law == 'approach1' else 'runs'} loaded"
              + (f" ({len(df.attrs['skipped'])} skipped, see warning)" if df.attrs["skipped"] else ""))
        with output_dir(out):
            out.mkdir(parents=True, exist_ok=True)
            res = _run_workflow(args, df, options, out)
    except (ValueError, OSError) as e:
        print(f"scaling fit: error: {e}", file=sys.stderr)
        return 2
    print_result(res)
    summary = {"law": args.law, "source": str(args.path), "argv": list(argv), "n_rows": len(df),
               "skipped": df.attrs["skipped"], "loss": args.loss, **res.to_dict()}
    summary["files"] = summary["files"] + [str(out / "fit.json")]
    try:
        (out / "fit.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    except OSError as e:
        print(f"scaling fit: error: cannot write {out / 'fit.json'}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out / 'fit.json'} and {len(summary['files']) - 1} figure files in {out}")
    return 0


PAPERS = {  # paper -> the default data file in ../shared/data
    "chinchilla": "epoch_chinchilla_svg_extracted_data.csv",
    "muennighoff": "muennighoff2023_c4_runs_rd_rn_fitset.csv",
    "bnsl": "caballero2022_bnsl_4digit_addition.csv",
    "porian": "porian2024_isoflop_points.csv",
}


def reproduce_main(argv: list[str]) -> int:
    """`scaling reproduce PAPER|all [--data PATH] [--out DIR]` (analysis.reproduce_cli)."""
    from analysis import reproduce_cli
    return reproduce_cli.main(argv)
