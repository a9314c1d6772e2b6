"""`scaling reproduce PAPER|all`: parsing, running and printing the paper reproductions.

    scaling reproduce chinchilla --data ../shared/data/epoch_chinchilla_svg_extracted_data.csv
    scaling reproduce porian | muennighoff | bnsl            # default data: ../shared/data/...
    scaling reproduce all --out gallery/                     # every one + index.md / index.html

The reproductions are analysis.reproduce*.py; the gallery is analysis.gallery. Bad input prints
one `error:` line and returns 2.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from analysis.cli import PAPERS, Parser, ci_str, output_dir, plain_warnings, print_fit


def main(argv: list[str]) -> int:
    """`scaling reproduce PAPER|all [--data PATH] [--out DIR]`."""
    with plain_warnings():
        return _reproduce_main(argv)


def _reproduce_parser() -> argparse.ArgumentParser:
    p = Parser(prog="scaling reproduce", description="reproduce a paper's fits from its data")
    p.add_argument("paper", choices=(*PAPERS, "all"), help="which reproduction; all: every one "
                   "and the fitting benchmark into --out with index.md and index.html (a gallery)")
    p.add_argument("--data", type=pathlib.Path,
                   help="all: the directory of the data files (../shared/data); else "
                        "the paper's data file (default: ../shared/data/" + ", ".join(
                       f"{k}: {v}" for k, v in PAPERS.items()) + ")")
    p.add_argument("--out", type=pathlib.Path, help="output directory (default: reproduce/PAPER)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N")
    p.add_argument("--n-starts", type=int, default=0, metavar="K",
                   help="K starts evenly taken from the law's start grid (0: all, the protocol)")
    p.add_argument("--seed", type=int, default=0)
    return p


def _reproduce_main(argv: list[str]) -> int:
    try:
        args = _reproduce_parser().parse_args(argv)
        from analysis import workflows
        options = workflows.FitOptions(n_bootstrap=args.bootstrap, n_starts=args.n_starts, seed=args.seed)
        out = args.out or pathlib.Path("reproduce") / args.paper
        if args.paper == "all":
            return _gallery(args.data or pathlib.Path("..") / "shared" / "data", out)
        data = args.data or pathlib.Path("..") / "shared" / "data" / PAPERS[args.paper]
        if data.is_file() and data.stat().st_size == 0:  # a missing file: the paper's loader says where it is
            raise ValueError(f"--data {data} is an empty file; give the paper's CSV ({PAPERS[args.paper]})")
        with output_dir(out):
            s = _REPRODUCE[args.paper](data, out, options)
    except (ValueError, OSError) as e:
        print(f"scaling reproduce: error: {e}", file=sys.stderr)
        return 2
    _PRINT[args.paper](s)
    print(f"wrote {len(s['files'])} files in {out}")
    return 0


def _gallery(data_dir: pathlib.Path, out: pathlib.Path) -> int:
    """`scaling reproduce all`: analysis.gallery with this module's runners."""
    from analysis import gallery
    if not data_dir.is_dir():
        raise ValueError(f"--data {data_dir}: give the directory holding the papers' data files")
    with output_dir(out):
        times = gallery.build(data_dir, out, lambda p, d, o, opt: _REPRODUCE[p](d / PAPERS[p], o, opt))
    print("; ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    print(f"wrote {out / 'index.md'} and {out / 'index.html'}")
    return 0


def _run_chinchilla(data, out, options):
    from analysis import laws, reproduce, workflows
    return reproduce.run_chinchilla(data, out, n_bootstrap=options.n_bootstrap, seed=options.seed,
                                    starts=workflows.starts_subset(laws.chinchilla(), options.n_starts))


def _print_chinchilla(s) -> None:
    from analysis import reproduce
    import pandas as pd
    with pd.option_context("display.width", 200, "display.max_columns", 20,
                           "display.float_format", "{:.6g}".format):
        print(f"Chinchilla Approach 3 on {s['n_fit_approach3']} of {s['n_points']} Epoch points "
              f"(5 highest-loss dropped; sum Huber delta=1e-3):")
        print(s["table_df"].to_string())
    a2 = s["approach2_obj"]
    h2 = reproduce.HOFFMANN_2022_TABLE2["approach_2"]
    kind = reproduce.HOFFMANN_2022_TABLE2_CI_KIND
    print(f"\nApproach 2 on {s['approach2_points_used']} points on Hoffmann's isoFLOP budgets: "
          f"a = {a2.a:.3f}{ci_str((a2.ci or {}).get('a'), a2.ci_level)}, b = {a2.b:.3f}; "
          f"Hoffmann et al. Table 2: a = {h2['a']} ({kind} {h2['a_ci'][0]}, {h2['a_ci'][1]}), "
          f"b = {h2['b']} ({kind} {h2['b_ci'][0]}, {h2['b_ci'][1]})")
    for w in s["fit"].warnings + a2.warnings:
        print(f"warning: {w}")


def _run_muennighoff(data, out, options):
    from analysis import laws, reproduce_muennighoff as rm, workflows
    law = laws.data_constrained(rm.base_tuple())
    return rm.run_muennighoff(data, out, n_bootstrap=options.n_bootstrap, seed=options.seed,
                              starts=workflows.starts_subset(law, options.n_starts))


def _print_muennighoff(s) -> None:
    from analysis import reproduce_muennighoff as rm
    ours, local, prof = s["fit"], s["local"], s["profile"]
    print(f"Muennighoff et al. data-constrained law on {s['n_runs']} runs, base law fixed at "
          f"{rm.MUENNIGHOFF_2023_BASE} (sum Huber delta={ours.delta:g} on log loss):")
    print(f"  {'':24} {'R_D*':>10} {'R_N*':>10} {'objective':>12}")
    for name, f in (("ours (best of grid)", ours), ("ours (from published)", local)):
        print(f"  {name:24} {f.params['R_D*']:>10.4g} {f.params['R_N*']:>10.4g} {f.objective:>12.6g}")
    pub = rm.MUENNIGHOFF_2023_R_STAR
    print(f"  {'published':24} {pub['R_D*']:>10.4g} {pub['R_N*']:>10.4g} "
          f"{s['published_objective']:>12.6g}")
    for k in ("R_D*", "R_N*"):
        if ours.ci:
            print(f"  ours {k} = {ours.params[k]:.4g}{ci_str(ours.ci[k], ours.ci_level)} "
                  f"({len(ours.boot_theta)} resamples over runs)")
    print(f"  profile over a {len(prof.r_d)}x{len(prof.r_n)} (R_D*, R_N*) grid: within "
          f"{100 * prof.rel:g}% of the best objective, R_D* spans {prof.r_d_range[0]:.3g}-"
          f"{prof.r_d_range[1]:.3g} and R_N* {prof.r_n_range[0]:.3g}-{prof.r_n_range[1]:.3g}"
          f"{' (a range ending at the grid edge continues beyond it)' if prof.at_edge else ''}; "
          f"published point {'inside' if prof.in_valley(s['published_objective']) else 'outside'}")
    for w in ours.warnings:
        print(f"warning: {w}")


def _run_bnsl(data, out, options):
    from analysis import laws, reproduce_bnsl, workflows
    return reproduce_bnsl.run_bnsl(data, out, n_bootstrap=options.n_bootstrap, seed=options.seed,
                                   starts=workflows.starts_subset(laws.bnsl("D"), options.n_starts))


def _print_bnsl(s) -> None:
    print(f"Caballero et al. 4-digit addition: fit on {s['n_fit']} rows, extrapolated to "
          f"{s['n_extrapolate']} held-out rows (x = {s['x_extrapolate']}); sum Huber delta=1e-3 on "
          f"log y (theirs: least squares on log(y + 1))")
    for name, f in s["fit_objs"].items():
        print(f"{name}:")
        print_fit(f)
        sc = s["scores"][name]
        print(f"  RMSLE held-out {sc['rmsle_extrapolate']:.4g} (fit rows {sc['rmsle_fit']:.4g}); "
              f"predicted {', '.join(f'{p:.4g}' for p in sc['pred_extrapolate'])} vs measured "
              f"{', '.join(f'{y:.4g}' for y in s['y_extrapolate'])}")
        for w in f.warnings:
            print(f"warning: {name}: {w}")


def _run_porian(data, out, options):
    from analysis import reproduce_porian
    return reproduce_porian.run_porian(data, out, n_bootstrap=options.n_bootstrap, seed=options.seed)


def _print_porian(s) -> None:
    print(f"Porian et al. 2024: Approach 2 (parabolas in log N) per set-up; ours: {s['our_ci_kind']}; "
          f"theirs (Akima interpolation): {s['their_ci_kind']}")
    print(f"  {'data':4} {'set-up':46} {'budgets':>7} {'a ours':>7} {'ours CI':>16} "
          f"{'a theirs':>8} {'theirs CI':>16}")
    for r in s["results"]:
        ours = "refused" if r.a is None else f"{r.a:.4f}"
        ci = "({:.3f}, {:.3f})".format(*r.a_ci) if r.a_ci else ""
        print(f"  {r.dataset:4} {r.label[:46]:46} {r.n_budgets:>3}/{r.n_budgets_total:<3} {ours:>7} "
              f"{ci:>16} {r.a_theirs:>8.4f} {'({:.3f}, {:.3f})'.format(*r.a_theirs_ci):>16}")
        for n in r.notes:
            print(f"warning: {r.dataset} {r.label}: {n}")


_REPRODUCE = {"chinchilla": _run_chinchilla, "muennighoff": _run_muennighoff, "bnsl": _run_bnsl,
              "porian": _run_porian}
_PRINT = {"chinchilla": _print_chinchilla, "muennighoff": _print_muennighoff, "bnsl": _print_bnsl,
          "porian": _print_porian}
