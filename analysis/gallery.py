"""`scaling reproduce all --out DIR`: every reproduction, one index page (Markdown + HTML).

Each reproduction runs into DIR/PAPER (its own files, as `scaling reproduce PAPER` writes them);
DIR/index.md and a self-contained DIR/index.html (figures embedded as base64 PNG) show per
reproduction its main figure, its protocol in three lines and the ours-vs-paper table, then the
fitting benchmark (analysis.law_benchmark) at a cheap setting. To run in minutes on 2 CPU cores
the gallery uses fewer starts and bootstrap resamples than the full protocols; the protocol
lines say which (GALLERY_* below), and `scaling reproduce PAPER` runs the full one.
"""
from __future__ import annotations

import json
import pathlib
import time

from analysis import law_benchmark, render, reproduce, workflows

GALLERY_BOOTSTRAP = 100  # resamples (the full protocols: 1000; Epoch 4000)
GALLERY_STARTS = 300  # starts taken evenly from each law's grid (Chinchilla's full grid: 4500)
GALLERY_BENCHMARK = law_benchmark.Settings(n_bootstrap=10, max_cutoffs=2, n_starts=64)


def _reduced(full: str) -> str:
    return (f"Gallery setting: {GALLERY_STARTS} starts evenly taken from {full}, "
            f"{GALLERY_BOOTSTRAP} bootstrap resamples (`scaling reproduce` default: all starts, 1000).")


def _chinchilla(s) -> tuple[list[str], list, list]:
    t = s["table_df"]
    rows = [[str(i)] + [_cell(v) for v in r] for i, r in zip(t.index, t.itertuples(index=False))]
    a2, h2 = s["approach2_obj"], reproduce.HOFFMANN_2022_TABLE2["approach_2"]
    ci = (a2.ci or {}).get("a")
    rows.append(["Approach 2: a", f"{a2.a:.4f}", "({:.4f}, {:.4f})".format(*ci) if ci else "", "", "",
                 "", f"{h2['a']} ({reproduce.HOFFMANN_2022_TABLE2_CI_KIND} {h2['a_ci'][0]}, {h2['a_ci'][1]})"])
    protocol = [
        f"Data: Epoch's {s['n_points']} points digitised from Hoffmann et al. Fig. 4; the 5 highest-loss "
        f"dropped ({s['n_fit_approach3']} fitted); D = C/(6N).",
        "Fit: L = E + A/N^alpha + B/D^beta, sum of Huber(delta=1e-3) on log L, multi-start L-BFGS; "
        "Epoch's Table 1 adds a maximum-likelihood step we do not. " + _reduced("the 4500-point grid"),
        "Approach 2 on the points within Hoffmann's isoFLOP budgets (parabolas in log N); "
        "Hoffmann's intervals are 10-90% percentiles, ours and Epoch's 95%."]
    return protocol, ["", *t.columns], rows


def _cell(v) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.6g}"
    return str(v)


def _porian(s):
    rows = [[r.dataset, r.label, f"{r.n_budgets}/{r.n_budgets_total}",
             "refused" if r.a is None else f"{r.a:.4f}",
             "({:.3f}, {:.3f})".format(*r.a_ci) if r.a_ci else "no CI (see reproduce.json)",
             f"{r.a_theirs:.4f}", "({:.3f}, {:.3f})".format(*r.a_theirs_ci)] for r in s["results"]]
    protocol = [
        "Data: Porian et al.'s isoFLOP grids, every set-up of both data sets (RefinedWeb, OWT2).",
        "Fit: Approach 2 per set-up: a parabola of loss in log N per budget (budgets with < 4 sizes, no "
        "interior minimum or a flat parabola left out), OLS of log N_opt on log C; "
        f"{GALLERY_BOOTSTRAP} bootstrap resamples of points within budgets (default 1000).",
        "Theirs: Akima interpolation of each curve and a bootstrap over seed noise, so the two intervals "
        "are not of one kind; a set-up whose resamples often lose a budget's minimum gets no CI from us."]
    header = ["data", "set-up", "budgets kept", "a ours", f"ours {s['our_ci_kind']}", "a theirs",
              f"theirs: {s['their_ci_kind']}"]
    return protocol, header, rows


def _muennighoff(s):
    from analysis import reproduce_muennighoff as rm
    ours, local, prof, pub = s["fit"], s["local"], s["profile"], rm.MUENNIGHOFF_2023_R_STAR
    ci = ours.ci or {}
    rows = [["ours (best of grid)", f"{ours.params['R_D*']:.4g}", f"{ours.params['R_N*']:.4g}",
             f"{ours.objective:.6g}"],
            ["ours 95% bootstrap percentile CI", "({:.3g}, {:.3g})".format(*ci["R_D*"]) if ci else "",
             "({:.3g}, {:.3g})".format(*ci["R_N*"]) if ci else "", ""],
            ["ours (refit from published)", f"{local.params['R_D*']:.4g}", f"{local.params['R_N*']:.4g}",
             f"{local.objective:.6g}"],
            ["published (Muennighoff et al.)", f"{pub['R_D*']:.4g}", f"{pub['R_N*']:.4g}",
             f"{s['published_objective']:.6g}"],
            [f"valley: within {100 * prof.rel:g}% of the best objective",
             f"{prof.r_d_range[0]:.3g}-{prof.r_d_range[1]:.3g}",
             f"{prof.r_n_range[0]:.3g}-{prof.r_n_range[1]:.3g}", ""]]
    protocol = [
        f"Data: {s['n_runs']} runs of Muennighoff et al.'s R_D*/R_N* fit set (C4; N, D, unique tokens U).",
        "Fit: base law fixed at their C4 fit, R_D* and R_N* by the sum of Huber(delta=1e-3) on log loss "
        f"from a 5 x 5 grid of log R*; {GALLERY_BOOTSTRAP} bootstrap resamples over runs (default 1000).",
        "The optimum is not unique: a long flat valley holds the published point, so compare objective "
        f"values (the published point's is {100 * (s['published_objective'] / ours.objective - 1):.2g}% "
        "above our best), not digits."]
    return protocol, ["", "R_D*", "R_N*", "objective (sum Huber)"], rows


def _bnsl(s):
    rows = [[name, f"{sc['rmsle_extrapolate']:.4g}", f"{sc['rmsle_fit']:.4g}",
             ", ".join(f"{p:.4g}" for p in sc["pred_extrapolate"]),
             ", ".join(f"{y:.4g}" for y in s["y_extrapolate"])] for name, sc in s["scores"].items()]
    protocol = [
        f"Data: Caballero et al.'s 4-digit-addition learning curve: {s['n_fit']} rows to fit, "
        f"{s['n_extrapolate']} held-out rows (x = {', '.join(f'{x:g}' for x in s['x_extrapolate'])}).",
        "Fit: BNSL with one break (and a power law + constant), sum of Huber(delta=1e-3) on log y; theirs: "
        "grid search, least squares on log(y + 1). " + _reduced("the BNSL grid (1008)"),
        "Score (theirs): RMSLE = sqrt(mean((log(1 + pred) - log(1 + y))^2)) on the held-out rows, for "
        "both laws; the published side is the measured held-out points themselves."]
    return protocol, ["law", "held-out RMSLE", "fit-rows RMSLE", "predicted held-out y",
                      "measured held-out y"], rows


ENTRIES = {  # paper -> (title, figure stem, formatter)
    "chinchilla": ("Chinchilla Approach 3 (Epoch's refit of Hoffmann et al. 2022)", "contours", _chinchilla),
    "porian": ("Porian et al. 2024: the exponent a per set-up", "exponents", _porian),
    "muennighoff": ("Muennighoff et al. 2023: the data-constrained law", "profile", _muennighoff),
    "bnsl": ("Caballero et al. 2022: a broken power law extrapolated", "extrapolation", _bnsl),
}


def build(data_dir, out, run_paper, *, papers=tuple(ENTRIES), benchmark=GALLERY_BENCHMARK,
          options=workflows.FitOptions(n_bootstrap=GALLERY_BOOTSTRAP, n_starts=GALLERY_STARTS),
          log=print) -> dict:
    """Run the reproductions (run_paper(paper, data, out, options) -> summary) into out/PAPER and
    the benchmark (None: no benchmark), then write out/index.md and out/index.html.
    Returns {paper: seconds, ...}. papers / benchmark / options: smaller galleries for tests."""
    out, data_dir = pathlib.Path(out), pathlib.Path(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    blocks = [("h1", "Paper reproductions"),
              ("p", "Each section: the figure, the protocol in three lines, ours next to the paper's numbers. "
                    "Loss in nats/token; every interval with its level and kind.")]
    times = {}
    for paper in papers:
        title, stem, fmt = ENTRIES[paper]
        log(f"gallery: {paper} ...")
        t0 = time.perf_counter()
        s = run_paper(paper, data_dir, out / paper, options)
        times[paper] = time.perf_counter() - t0
        protocol, header, rows = fmt(s)
        blocks += [("h2", title), ("img", f"{paper}/{stem}.png", title),
                   ("p", "Protocol:"), ("pre", "\n".join(f"{i + 1}. {p}" for i, p in enumerate(protocol))),
                   ("table", header, rows),
                   ("p", f"Files: {paper}/ ({len(s['files'])} files); {times[paper]:.0f} s here.")]
    if benchmark is not None:
        blocks += _benchmark_blocks(data_dir, out, benchmark, times, log)
    (out / "index.md").write_text(render.markdown(blocks))
    (out / "index.html").write_text(render.page(blocks, out, "Paper reproductions"))
    (out / "gallery.json").write_text(json.dumps({"seconds": times}, indent=1) + "\n")
    return times


def _benchmark_blocks(data_dir, out, st, times, log) -> list:
    """The fitting benchmark's section (its table also as out/benchmark.csv)."""
    log("gallery: fitting benchmark ...")
    t0 = time.perf_counter()
    bench = law_benchmark.run(data_dir, st, log=log)
    times["benchmark"] = time.perf_counter() - t0
    bench.to_csv(out / "benchmark.csv", index=False)
    return [("h2", "Fitting benchmark: each law x each published set (rollout backtests)"),
            ("p", f"Setting: at most {st.max_cutoffs or 'all'} cutoffs per backtest (2: the smallest and "
                  f"the largest), {st.n_bootstrap} bootstrap refits, {st.n_starts} starts; "
                  f"{st.level:.0%} prediction intervals (bootstrap + noise). The full benchmark: "
                  f"python benchmarks/fit_laws.py."),
            ("table", *law_benchmark.markdown_rows(bench))]

