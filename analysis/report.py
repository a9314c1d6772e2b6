"""The sweep report: a scored forecast, plan, per-run results, fitted laws with CIs, allocation, extrapolation.

    from analysis import report
    report.build("sweeps/demo_cpu", plan_text=..., n_bootstrap=200)

writes, in the sweep directory: report.md, report.html (analysis.render: self-contained, figures
inlined as base64 PNG), fit.json (every number the report shows) and figures/ (PNG + PDF). Every number in
the report is computed here from the run directories (analysis.results.load), never typed in.

Fits (each one failing independently: a refused fit is reported with its reason, not hidden):
- Chinchilla Approach 3: L(N, D) = E + A/N^α + B/D^β on (N total, D, final eval loss).
- Chinchilla Approach 2: per isoFLOP budget a parabola in log N -> N_opt(C), D_opt(C).
- Kaplan L(N) = (N_c/N)^α_N on non-embedding N, each size's best loss among its runs with
  >= 20 tokens/parameter (not data-limited); Kaplan L(C) on the compute frontier.
- Extrapolation: Approach 3 refitted on every budget but the largest, then its predicted loss
  for each run of the largest budget next to the measured one.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib

import numpy as np

from analysis import extrapolation, predict, render, results, workflows

RUN_COLUMNS = (  # (results column, header, format)
    ("run_id", "run", "{}"),
    ("budget", "budget C", "{:.1e}"),
    ("n_params", "N (total)", "{:,.0f}"),
    ("n_params_nonembed", "N (non-emb.)", "{:,.0f}"),
    ("tokens", "D (tokens)", "{:,.0f}"),
    ("tokens_per_param", "D/N", "{:.2f}"),
    ("flops", "C exact (FLOPs)", "{:.3e}"),
    ("flops_6nd", "C 6ND (FLOPs)", "{:.3e}"),
    ("loss", "eval loss (nats/token)", "{:.4f}"),
    ("final_eval_bpb", "eval bits/byte", "{:.4f}"),
    ("tokens_per_s", "tokens/s", "{:,.0f}"),
    ("wall_time_s", "wall (s)", "{:.0f}"),
)


# Kaplan's L(N) is a law for models not limited by data: use runs with at least this many tokens per
# parameter (Chinchilla's compute-optimal ratio is ~20).
KAPLAN_MIN_TOKENS_PER_PARAM = 20


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


def run_table(df) -> tuple[list[str], list[list[str]]]:
    """The per-run results table exactly as the report prints it (one row per run)."""
    df = df.assign(run_id=[pathlib.Path(p).name for p in df.run_dir],
                   tokens_per_param=df.tokens / df.n_params)
    order = df.sort_values(["budget", "n_params"] if "budget" in df else ["n_params"]).index
    cols = [c for c in RUN_COLUMNS if c[0] in df.columns]
    rows = [[_fmt(df.at[i, c], spec) for c, _, spec in cols] for i in order]
    return [h for _, h, _ in cols], rows


def _ci_header(fit_dict: dict) -> str:
    return f"{100 * (fit_dict.get('ci_level') or 0.95):.0f}% {fit_dict.get('ci_kind', 'bootstrap percentile')} CI"


def _band(ci) -> str:
    return f"{ci[0]:.3g} – {ci[1]:.3g}" if ci else "–"


def _largest_budget(df) -> float:
    """The largest isoFLOP budget of the runs (FLOPs), else their largest 6ND."""
    if "budget" in df and df.budget.notna().any():
        return float(df.budget.max())
    return float(df.flops_6nd.max())


def _where(c: float, c_max: float) -> str:
    """'extrapolated (Nx)' above the data's largest budget, else 'up to the data's largest'."""
    return f"extrapolated ({c / c_max:.3g}x)" if c > c_max * (1 + 1e-6) else "not above the data"


def _ci(fit_dict: dict, name: str) -> str:
    ci = (fit_dict.get("ci") or {}).get(name)
    return f" ({ci[0]:.4g} – {ci[1]:.4g})" if ci else ""


def _png(files, root: pathlib.Path, stem: str) -> str | None:
    for f in files:
        f = pathlib.Path(f)
        if f.suffix == ".png" and f.stem == stem:
            return str(f.relative_to(root))
    return None


def forecast_section(forecast_path, inputs) -> tuple[list, list[str], dict]:
    """(blocks, summary lines, fit.json entry) of a pre-registered forecast scored against its run
    (the run directories beside the forecast file); `inputs`: the table it was fitted on."""
    from analysis import forecast
    path = pathlib.Path(forecast_path)
    doc = forecast.load_forecast(path)
    scores = forecast.score(path, results.load(path.parent), inputs=inputs)
    fitted = inputs[inputs.run_dir.astype(str).isin(set(doc["inputs"]["runs"] or ()))]
    budgets = sorted(fitted.budget.dropna().unique()) if "budget" in fitted else []
    o = doc["optimum"]
    blocks = [("h2", f"Forecast: C = {doc['target_flops']:.2g} FLOPs, written before the run"),
              ("p", f"On {doc['created'][:19].replace('T', ' ')} UTC (git {str(doc['git_sha'] or 'sha unknown')[:10]}), "
                    f"before the run existed, the {doc['law']} law fitted on the {doc['inputs']['n_rows']} runs "
                    + (f"at budgets {', '.join(f'{b:.2g}' for b in budgets)} FLOPs " if budgets else "")
                    + f"forecast C = {doc['target_flops']:.3g} FLOPs (6ND), {doc['factor_beyond_data']:.3g}x "
                    f"the largest fitted budget: N* = {o['N']['value']:.3g} ({o['N']['lo']:.3g} – "
                    f"{o['N']['hi']:.3g}), D* = {o['D']['value']:.3g} tokens ({o['D']['lo']:.3g} – "
                    f"{o['D']['hi']:.3g}), L* = {o['L']['value']:.4f} nats/token ({o['L']['lo']:.4f} – "
                    f"{o['L']['hi']:.4f}); {o['N']['level']:.0%} intervals ({o['N']['kind']} for N*, D*; "
                    f"{o['L']['kind']} for L*, noise {predict.describe_noise(o['noise'])}). The file is frozen (`{path}`, inputs sha256 "
                    f"{doc['inputs']['sha256'][:12]}…, verified unchanged before scoring)."
                    + (f" Note: {o['note']}." if o.get("note") else "")),
              ("p", "The run made from it: the sweep's ladder shape nearest N* with D = D* under the sweep's "
                    "rules. Predicted loss at that run's own N and D vs measured:"),
              ("table", ["run", "N", "D", "C = 6ND", "predicted", f"{scores[0].level:.0%} interval",
                         "measured", "error", "inside"],
               [[pathlib.Path(s.run).name, f"{s.n_params:,.0f}", f"{s.tokens:,.0f}",
                 f"{6 * s.n_params * s.tokens:.3g}", f"{s.predicted:.4f}",
                 f"{s.lo:.4f} – {s.hi:.4f}", f"{s.measured:.4f}", f"{100 * s.rel_error:+.2f}%",
                 "yes" if s.inside else "**no**"] for s in scores]),
              ("p", f"Interval kind: {scores[0].kind}.")]
    summary = [f"forecast at C = {doc['target_flops']:.2g} ({doc['factor_beyond_data']:.3g}x beyond the fits): "
               f"predicted {s.predicted:.4f} ({s.level:.0%} PI {s.lo:.4f} – {s.hi:.4f}), measured "
               f"{s.measured:.4f} nats/token, error {100 * s.rel_error:+.2f}%, "
               f"{'inside' if s.inside else 'OUTSIDE'} the interval" for s in scores]
    entry = {"file": str(path), "target_flops": doc["target_flops"], "factor": doc["factor_beyond_data"],
             "fitted_budgets": [float(b) for b in budgets], "optimum": o,
             "scores": [dataclasses.asdict(s) for s in scores]}
    return blocks, summary, entry


def warning_blocks(name: str, res: dict, log=print) -> list:
    """The report blocks for a fit's warnings (none when it has none); each is also logged."""
    if not res.get("warnings"):
        return []
    log(f"   {name}: " + "; ".join(res["warnings"]))
    return [("p", "**Warnings:**"), ("ul", [f"{w}." for w in res["warnings"]])]


def build(sweep_dir, *, plan_text: str = "", n_bootstrap: int = 200, n_starts: int = 0, log=print,
          forecast=None) -> list[str]:
    """Fit, draw and write report.md / report.html / fit.json (led by `forecast`, a forecast file
    scored against the runs beside it, when given); returns summary lines."""
    root = pathlib.Path(sweep_dir)
    df = results.load(root, on_error="warn")
    if len(df) == 0:
        raise ValueError(f"{root}: no finished runs to report on")
    figs = root / "figures"
    blocks = [("h1", f"Scaling study: {root.name}"),
              ("p", f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} from "
                    f"{len(df)} finished runs in `{root}`"
                    + (f" ({len(df.attrs['skipped'])} skipped: see below)" if df.attrs.get("skipped") else "")
                    + ". Units: N = parameters (total unless marked non-embedding), D = training tokens, "
                      "C = training FLOPs (exact = 3 x forward matmuls incl. attention and LM head; "
                      "6ND = 6 x N_total x D), loss = held-out eval cross-entropy in nats/token.")]
    summary, fits = [], {"n_runs": len(df)}
    if forecast is not None:
        try:
            fb, fs, fits["forecast"] = forecast_section(forecast, df)
            blocks += fb
            summary += fs
        except (ValueError, FileNotFoundError) as e:
            log(f"   forecast: not scored: {e}")
            fits["forecast"] = {"error": str(e)}
            blocks += [("h2", "Forecast"), ("p", f"**Forecast not scored** — {e}")]
    if plan_text:
        blocks += [("h2", "Plan"), ("pre", plan_text)]
    header, rows = run_table(df)
    blocks += [("h2", "Runs"), ("table", header, rows)]
    if df.attrs.get("skipped"):
        blocks.append(("p", "Skipped runs: " + "; ".join(str(s) for s in df.attrs["skipped"])))
    fits["runs_table"] = {"header": header, "rows": rows}

    def attempt(name, fn):
        try:
            return fn()
        except (ValueError, FloatingPointError) as e:
            log(f"   {name}: not fitted: {e}")
            fits[name] = {"error": str(e)}
            blocks.append(("p", f"**{name}: not fitted** — {e}"))
            summary.append(f"{name}: not fitted ({e})")
            return None

    def warned(name, res: dict):
        blocks.extend(warning_blocks(name, res, log))

    opts = workflows.FitOptions(n_bootstrap=n_bootstrap, n_starts=n_starts)
    # Approach 3
    blocks.append(("h2", "Chinchilla Approach 3: L(N, D) = E + A/N^α + B/D^β"))
    a3 = attempt("approach3", lambda: workflows.approach3(df, opts, figs / "approach3").to_dict())
    if a3:
        fits["approach3"] = a3
        warned("approach3", a3)
        f, al = a3["fit"], a3["allocation"]
        blocks.append(("table", ["parameter", "value", _ci_header(f)],
                       [[k, f"{v:.4g}", _ci(f, k).strip(" ()") or "–"] for k, v in f["params"].items()]
                       + [["a = β/(α+β)", f"{al['a']:.4f}", _ci(al, "a").strip(" ()") or "–"],
                          ["b = α/(α+β)", f"{al['b']:.4f}", _ci(al, "b").strip(" ()") or "–"]]))
        blocks.append(("p", f"Fit on {f['n_points']} runs: sum of Huber(δ={f['delta']:g}) on log residuals, "
                            f"{f['n_starts']} L-BFGS starts ({f['n_at_best']} reached the best objective "
                            f"{f['objective']:.4g}); CIs from {f.get('n_bootstrap', 0)} bootstrap resamples"
                            f" ({f.get('n_boot_failed', 0)} failed)."))
        blocks.append(("h3", "Compute-optimal allocation (Approach 3)"))
        c_max = _largest_budget(df)
        blocks.append(("table", ["C (FLOPs)", "N_opt", f"N_opt {_ci_header(f)}", "D_opt",
                                 f"D_opt {_ci_header(f)}", "tokens / parameter", "data"],
                       [[f"{r['C']:.0e}", f"{r['N_opt']:.3g}", _band(r.get("N_opt_ci")), f"{r['D_opt']:.3g}",
                         _band(r.get("D_opt_ci")), f"{r['tokens_per_param']:.3g}", _where(r["C"], c_max)]
                        for r in a3["budgets"]]))
        blocks.append(("p", f"Rows above the largest budget in the data (C = {c_max:.2g} FLOPs) are "
                            "extrapolated: the law is assumed to hold where no run tested it; their "
                            "intervals carry only the fit's parameter uncertainty."))
        for stem, cap in (("allocation", f"Approach 3 compute-optimal N_opt(C) and D_opt(C) with their "
                                         f"{_ci_header(f)} bands"),
                          ("contours", "Fitted L(N, D) contours, runs coloured by loss, efficient frontier"),
                          ("residuals", "Residuals of the Approach 3 fit"),
                          ("loss_vs_compute", "Loss vs compute with the empirical frontier")):
            if (p := _png(a3["files"], root, stem)):
                blocks.append(("img", p, cap))
        tpp = a3["budgets"][len(a3["budgets"]) // 2]
        summary.append(f"Approach 3: alpha = {f['params']['alpha']:.3f}{_ci(f, 'alpha')}, beta = "
                       f"{f['params']['beta']:.3f}{_ci(f, 'beta')}, E = {f['params']['E']:.3f} nats/token; "
                       f"a = {al['a']:.3f}; {tpp['tokens_per_param']:.3g} tokens/param at C = {tpp['C']:.0e}")

    # Approach 2
    blocks.append(("h2", "Chinchilla Approach 2: isoFLOP profiles"))
    a2 = attempt("approach2", lambda: workflows.approach2(
        df, workflows.FitOptions(n_bootstrap=n_bootstrap), figs / "approach2").to_dict())
    if a2:
        fits["approach2"] = a2
        warned("approach2", a2)
        al = a2["allocation"]
        pts = al["points"]
        blocks.append(("table", ["budget C (FLOPs)", "N_opt (parabola vertex)", "D_opt = C/(6 N_opt)", "D/N"],
                       [[f"{c:.3g}", f"{n:.3g}", f"{d:.3g}", f"{d / n:.3g}"]
                        for c, n, d in zip(pts["C"], pts["N_opt"], pts["D_opt"])]))
        blocks.append(("p", f"N_opt ∝ C^a with a = {al['a']:.3f}{_ci(al, 'a')}, D_opt ∝ C^b with b = "
                            f"{al['b']:.3f}{_ci(al, 'b')}"
                            + "".join(f"; budget C = {d['C']:.3g} left out: {d['reason']}"
                                      for d in al.get("left_out", [])) + "."
                            + (f" {al['note'][0].upper()}{al['note'][1:]} (with a handful of runs per budget, many "
                               "resamples repeat runs and lose some budget's interior minimum)." if al.get("note") else "")))
        for stem, cap in (("isoflop", "IsoFLOP curves with fitted parabolas and their minima"),
                          ("allocation", "N_opt(C) and D_opt(C) from the isoFLOP minima")):
            if (p := _png(a2["files"], root, stem)):
                blocks.append(("img", p, cap))
        summary.append(f"Approach 2: a = {al['a']:.3f}{_ci(al, 'a')}, b = {al['b']:.3f}{_ci(al, 'b')}")

    # Kaplan L(N) and L(C)
    blocks.append(("h2", "Kaplan L(N) = (N_c / N)^α_N and L(C) = (C_c / C)^α_C"))
    rich = df[df.tokens / df.n_params >= KAPLAN_MIN_TOKENS_PER_PARAM]
    kn = attempt("kaplan_n", lambda: workflows.kaplan(
        rich, "N", workflows.FitOptions(n_bootstrap=n_bootstrap), figs / "kaplan_n").to_dict())
    if kn:
        fits["kaplan_n"] = kn
        warned("kaplan_n", kn)
        f = kn["fit"]
        blocks.append(("table", ["parameter", "value", _ci_header(f)],
                       [[k, f"{v:.4g}", _ci(f, k).strip(" ()") or "–"] for k, v in f["params"].items()]))
        blocks.append(("p", f"Each model size's best loss among its runs with at least "
                            f"{KAPLAN_MIN_TOKENS_PER_PARAM} tokens per parameter ({kn['n_used']} sizes, N = "
                            f"{kn['x_column']}): Kaplan's L(N) describes models not limited by data, and in an "
                            "isoFLOP grid the large models are trained on few tokens. These runs are still not "
                            "converged, so α_N here describes this sweep, not Kaplan's converged L(N)."))
        if (p := _png(kn["files"], root, "kaplan")):
            blocks.append(("img", p, "Loss vs non-embedding parameters with the fitted power law"))
        summary.append(f"Kaplan L(N): alpha_N = {f['params'].get('alpha_N', float('nan')):.3f}{_ci(f, 'alpha_N')}")
    kc = attempt("kaplan_c", lambda: workflows.kaplan(
        df, "C", workflows.FitOptions(n_bootstrap=n_bootstrap), figs / "kaplan_c").to_dict())
    if kc:
        fits["kaplan_c"] = kc
        warned("kaplan_c", kc)
        f = kc["fit"]
        blocks.append(("table", ["parameter", "value", _ci_header(f)],
                       [[k, f"{v:.4g}", _ci(f, k).strip(" ()") or "–"] for k, v in f["params"].items()]))
        blocks.append(("p", f"L(C) on the compute frontier ({kc['n_used']} runs; C = {kc['x_column']})."))
        if (p := _png(kc["files"], root, "kaplan")):
            blocks.append(("img", p, "Loss vs compute on the frontier with the fitted power law"))
        summary.append(f"Kaplan L(C): alpha_C = {f['params'].get('alpha_C', float('nan')):.3f}{_ci(f, 'alpha_C')}")

    # Extrapolation
    blocks.append(("h2", "Extrapolation check"))
    ex = attempt("extrapolation", lambda: extrapolation.held_out_budget(df, n_starts=n_starts,
                                                                         n_bootstrap=n_bootstrap))
    if ex:
        fits["extrapolation"] = ex
        blocks.append(("p", f"Approach 3 refitted on budgets {', '.join(f'{b:.1e}' for b in ex['fit_budgets'])} "
                            f"only, then asked for the losses of the held-out largest budget "
                            f"C = {ex['held_out_budget']:.1e}, each run at its own N and D "
                            f"({ex['level']:.0%} {ex['kind']}; noise {predict.describe_noise(ex['noise'])}):"))
        blocks.append(("table", ["run", "N", "D", "measured", "predicted", f"{ex['level']:.0%} interval",
                                 "error", "inside"],
                       [[r["run_id"], f"{r['n_params']:,}", f"{r['tokens']:,}", f"{r['measured']:.4f}",
                         f"{r['predicted']:.4f}", f"{r['lo']:.4f} – {r['hi']:.4f}",
                         f"{r['predicted'] - r['measured']:+.4f}", "yes" if r["inside"] else "**no**"]
                        for r in ex["runs"]]))
        blocks.append(("p", f"{ex['n_inside']} of {len(ex['runs'])} measured losses inside their interval. "
                            f"Mean absolute error {ex['mean_abs_error']:.4f} nats/token "
                            f"({100 * ex['mean_rel_error']:.2f}%), max {ex['max_abs_error']:.4f}; best loss at that "
                            f"budget: measured {ex['best_measured']:.4f}, predicted {ex['best_predicted']:.4f}. "
                            "(E, A, B are weakly identified on a sweep this small; the check tests the fitted "
                            "surface's predictions, not its parameters.)"))
        o = ex["optimum"]
        if "n_opt_predicted" in o:
            blocks.append(("p", f"Compute-optimal size at C = {ex['held_out_budget']:.1e}: predicted "
                                f"{o['n_opt_predicted']:.3g} parameters by Approach 2 on the smaller budgets, "
                                f"measured {o['n_opt_measured']:.3g} (the held-out budget's own parabola vertex)."))
        else:
            blocks.append(("p", f"No N_opt comparison: {o['n_opt_note']}"))
        summary.append(f"extrapolation to C = {ex['held_out_budget']:.1e}: mean |error| {ex['mean_abs_error']:.4f} "
                       f"nats/token ({100 * ex['mean_rel_error']:.2f}%)")

    (root / "fit.json").write_text(json.dumps(fits, indent=2, default=_json_default) + "\n")
    (root / "report.md").write_text(render.markdown(blocks))
    (root / "report.html").write_text(render.page(blocks, root, f"Scaling study: {root.name}"))
    return summary


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
