"""Rollout backtests: fit on the budgets at or below a cutoff, predict everything above it.

For every cutoff budget C_cut (budgets sorted; each cutoff with at least `MIN_BUDGETS[law]`
budgets at or below it, and at least one above), the law is fitted on the runs with budget
<= C_cut, with bootstrap refits and a run-to-run noise estimate (analysis.predict), and
predicts with a prediction interval
- every run above the cutoff at its own (N, D) (law 'chinchilla'; row `run` = its run_dir), and
- the optimum of every budget above it (row `run` = 'optimum'): predicted L* at the budget's C
  vs the budget's best measured loss. The best of a grid of sizes sits above the continuous
  optimum by the grid's spacing, so these rows carry a small bias towards measured > predicted.
Law 'isoflop' (Approach 2) predicts only the optimum rows. The laws without a compute optimum
predict only the runs above the cutoff, at their own inputs: 'data-constrained' (Muennighoff et
al.'s L(N, D, U), all seven parameters fitted; cutoffs on the budget C as above; needs a
`unique_tokens` column) and 'bnsl' (Caballero et al.'s broken power law in D = tokens; the
cutoffs are on D itself, so `target` and `cutoff` are token counts and factor = D / D_cut).
`max_cutoffs` keeps that many cutoffs, evenly spaced in rank (a table whose C or D is not on a
grid has as many cutoffs as rows).

Rows: cutoff, target (budget C, FLOPs), factor = C / C_cut, run, n_params, tokens, predicted,
lo, hi, measured (nats/token), rel_error = predicted / measured − 1, inside (lo <= measured <= hi).

`summarize` gives median and max |rel_error| per extrapolation-factor bin (≤2×, 2–4×, 4–16×,
>16×) and the empirical coverage of the intervals with a 95% Wilson score interval (binomial;
rows from one cutoff share a fit, so the true uncertainty is somewhat larger). `figure` draws
predicted vs measured with interval bars, coloured by the extrapolation factor.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from analysis import chinchilla, fit as fitlib, laws, predict

OPTIMUM_LAWS = ("chinchilla", "isoflop")  # laws with a compute optimum (forecasts use these)
PER_RUN_LAWS = {"data-constrained": laws.data_constrained, "bnsl": lambda: laws.bnsl("D")}
LAWS = OPTIMUM_LAWS + tuple(PER_RUN_LAWS)
INPUT_COLUMNS = {"N": "n_params", "D": "tokens", "U": "unique_tokens"}  # per-run laws' inputs
MIN_BUDGETS = {"chinchilla": 2, "isoflop": predict.MIN_BUDGETS, "data-constrained": 3,
               "bnsl": 8}  # budgets (bnsl: distinct D) a fit needs
BINS = (1.0, 2.0 * 1.001, 4.0 * 1.001, 16.0 * 1.001, np.inf)  # 2x = 2.0000001x (rounding)
BIN_LABELS = ("<=2x", "2-4x", "4-16x", ">16x")


def budgets_of(table, rel_tol=0.1) -> np.ndarray:
    """Budget (FLOPs) per row: the table's `budget` column when complete, else C (flops, or
    6ND) grouped within a factor 1 + rel_tol (analysis.chinchilla.group_budgets), each
    group's geometric mean."""
    if "budget" in table and table["budget"].notna().all():
        return table["budget"].to_numpy(dtype=float)
    c = predict.columns(table, laws.kaplan("C"))["C"]
    labels = chinchilla.group_budgets(c, rel_tol)
    means = {g: np.exp(np.log(c[labels == g]).mean()) for g in np.unique(labels)}
    return np.array([means[g] for g in labels])


def cutoffs(budgets, law: str, max_cutoffs: int | None = None) -> np.ndarray:
    """The cutoff budgets a rollout uses: from the MIN_BUDGETS[law]-th smallest to the second
    largest (at most max_cutoffs of them, evenly spaced in rank, the largest kept); ValueError
    naming the count when there are none."""
    if law not in LAWS:
        raise ValueError(f"backtest: unknown law {law!r}; valid: {', '.join(LAWS)}")
    u = np.unique(budgets)
    need = MIN_BUDGETS[law]
    if len(u) < need + 1:
        raise ValueError(f"backtest --law {law} needs at least {need + 1} budgets ({need} to fit, "
                         f"1 to predict); the table has {len(u)}: "
                         f"{', '.join(f'{c:.3g}' for c in u[:12])}{' ...' if len(u) > 12 else ''}")
    return thin(u[need - 1:-1], max_cutoffs)


def thin(cuts, k: int | None) -> np.ndarray:
    """At most k of the sorted cutoffs, evenly spaced in rank, the largest always kept."""
    if not k or len(cuts) <= k:
        return cuts
    return cuts[np.unique(np.linspace(len(cuts) - 1, 0, k).round().astype(int))]


def backtest(table, law: str = "chinchilla", *, level=0.9, n_bootstrap=200, starts=None,
             seed=0, rel_tol=0.1, max_cutoffs=None) -> pd.DataFrame:
    """Rollout backtest rows (see the module docstring); cutoffs whose fit is refused are
    skipped with a warning and listed in `.attrs['skipped_cutoffs']`. rel_tol: budget_of's."""
    if law in PER_RUN_LAWS:
        return _backtest_per_run(table, law, level, n_bootstrap, starts, seed, rel_tol, max_cutoffs)
    budgets = budgets_of(table, rel_tol)
    cuts = cutoffs(budgets, law, max_cutoffs)
    measured = table["loss"].to_numpy(dtype=float)
    rows, skipped = [], []
    fits = _fit_cutoffs(table, budgets, cuts, law, n_bootstrap, starts, seed, skipped)
    for cut, model in fits:
        try:  # a cutoff whose refits give no optimum is skipped, not the whole rollout
            rows += _predict_above(table, budgets, measured, cut, model, law, level, seed)
        except ValueError as e:
            _skip(skipped, cut, e)
    out = pd.DataFrame(rows)
    out.attrs.update(law=law, level=level, n_bootstrap=n_bootstrap, skipped_cutoffs=skipped)
    return out


def _predict_above(table, budgets, measured, cut, model, law, level, seed) -> list[dict]:
    """Rows for one cutoff: every run above it (Approach 3) and every budget's optimum."""
    rows = []
    above = budgets > cut
    if law == "chinchilla":
        p = predict.loss_interval(model, {"N": table.n_params[above], "D": table.tokens[above]},
                                  level=level, seed=seed)
        for j, i in enumerate(np.flatnonzero(above)):
            rows.append(_row(cut, budgets[i], str(table["run_dir"].iloc[i])
                             if "run_dir" in table else str(i), table.n_params.iloc[i],
                             table.tokens.iloc[i], p.value[j], p.lo[j], p.hi[j], measured[i]))
    for c in np.unique(budgets[above]):
        opt = (predict.chinchilla_optimum(model, c, level=level, seed=seed) if law == "chinchilla"
               else predict.approach2_optimum(model, c, level=level, seed=seed))
        rows.append(_row(cut, c, "optimum", opt.N.value, opt.D.value, opt.L.value, opt.L.lo,
                         opt.L.hi, measured[budgets == c].min()))
    return rows


def _fit_cutoffs(table, budgets, cuts, law, n_bootstrap, starts, seed, skipped):
    """[(cutoff, fitted model)] for the cutoffs whose fit succeeds; failures go to `skipped`."""
    if law == "chinchilla":
        ok, masks = [], []
        law_ = laws.chinchilla()
        inputs, loss = predict.columns(table, law_), table["loss"].to_numpy(dtype=float)
        for c in cuts:
            m = budgets <= c
            try:  # refuse here, cutoff by cutoff, so one bad cutoff does not stop the rollout
                fitlib.check_identifiable(law_, {k: v[m] for k, v in inputs.items()}, loss[m])
            except ValueError as e:
                _skip(skipped, c, e)
                continue
            ok.append(c)
            masks.append(m)
        if not ok:
            return []
        fits = predict.fit_masks(law_, table, np.array(masks), starts=starts,
                                 n_bootstrap=n_bootstrap, seed=seed)
        return list(zip(ok, fits))
    out = []
    for c in cuts:
        m = budgets <= c
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # dropped budgets are listed in the model
                out.append((c, predict.approach2_fit(table[m], budget=budgets[m],
                                                     n_bootstrap=n_bootstrap, seed=seed)))
        except ValueError as e:
            _skip(skipped, c, e)
    return out


def law_of(name: str) -> laws.Law:
    """The Law a backtest of `name` fits (the Approach-3 law for 'chinchilla' and 'isoflop')."""
    return PER_RUN_LAWS[name]() if name in PER_RUN_LAWS else laws.chinchilla()


def _backtest_per_run(table, law_name, level, n_bootstrap, starts, seed, rel_tol, max_cutoffs):
    """Per-run rows of a law without a compute optimum: fit on the rows at or below each
    cutoff (analysis.fit with its bootstrap), predict every row above with its interval."""
    law = law_of(law_name)
    missing = [INPUT_COLUMNS[k] for k in law.inputs if INPUT_COLUMNS[k] not in table]
    if missing:
        raise ValueError(f"backtest --law {law_name} needs column(s) {missing}")
    inputs = {k: table[INPUT_COLUMNS[k]].to_numpy(dtype=float) for k in law.inputs}
    axis = inputs["D"] if law_name == "bnsl" else budgets_of(table, rel_tol)
    loss, rows, skipped = table["loss"].to_numpy(dtype=float), [], []
    cuts = cutoffs(axis, law_name)  # then only those leaving the fit enough rows, thinned
    cuts = thin(np.array([c for c in cuts if (axis <= c).sum() >= law.n_params + 2]), max_cutoffs)
    for cut in cuts:
        m = axis <= cut
        try:
            s = _fit_subset(law, table, inputs, loss, m, n_bootstrap, starts, seed)
        except ValueError as e:
            _skip(skipped, cut, e)
            continue
        p = predict.loss_interval(s, {k: v[~m] for k, v in inputs.items()}, level=level, seed=seed)
        for j, i in enumerate(np.flatnonzero(~m)):
            rows.append(_row(cut, axis[i], str(table["run_dir"].iloc[i]) if "run_dir" in table
                             else str(i), table.n_params.iloc[i], table.tokens.iloc[i],
                             p.value[j], p.lo[j], p.hi[j], loss[i]))
    out = pd.DataFrame(rows)
    out.attrs.update(law=law_name, level=level, n_bootstrap=n_bootstrap, skipped_cutoffs=skipped)
    return out


def _fit_subset(law, table, inputs, loss, m, n_bootstrap, starts, seed) -> predict.LawSamples:
    """The law fitted on the rows in mask m, its bootstrap refits and the noise of its residuals."""
    sub = {k: v[m] for k, v in inputs.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a start that hit max_iter: the fit's warnings say so
        f = fitlib.fit(law, sub, loss[m], starts=starts, n_bootstrap=n_bootstrap, seed=seed)
    resid = np.log(loss[m] / f.predict(**sub))
    noise = predict.estimate_noise(table[m], resid, law.n_params)
    return predict.LawSamples(law, f.theta, f.boot_theta, m, noise)


def _skip(skipped, cut, err):
    skipped.append({"cutoff": float(cut), "reason": str(err)})
    warnings.warn(f"backtest: cutoff C={cut:.3g} skipped: {err}", stacklevel=3)


def _row(cut, target, run, n, d, pred, lo, hi, meas) -> dict:
    return {"cutoff": float(cut), "target": float(target), "factor": float(target / cut),
            "run": run, "n_params": float(n), "tokens": float(d), "predicted": float(pred),
            "lo": float(lo), "hi": float(hi), "measured": float(meas),
            "rel_error": float(pred / meas - 1), "inside": bool(lo <= meas <= hi)}


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (default 95%)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, float(centre - half)), min(1.0, float(centre + half)))


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per extrapolation-factor bin (and 'all'): n, median and max |rel_error|, coverage of the
    intervals with its 95% Wilson interval (coverage_lo, coverage_hi)."""
    if rows.empty:
        raise ValueError("backtest produced no predictions (every cutoff was skipped)")
    bins = pd.cut(rows.factor, BINS, labels=BIN_LABELS, right=True)
    out = []
    for label, g in [*((b, rows[bins == b]) for b in BIN_LABELS), ("all", rows)]:
        if g.empty:
            continue
        k, n = int(g.inside.sum()), len(g)
        lo, hi = wilson(k, n)
        err = g.rel_error.abs()
        out.append({"factor": label, "n": n, "median_abs_error": float(err.median()),
                    "max_abs_error": float(err.max()), "coverage": k / n,
                    "coverage_lo": lo, "coverage_hi": hi})
    return pd.DataFrame(out)


def figure(rows: pd.DataFrame, out, *, title="Rollout backtest") -> list:
    """Predicted vs measured loss with interval bars, coloured by C / C_cut (PNG + PDF)."""
    import matplotlib
    from matplotlib import cm, colors
    from analysis import figures, style
    fig, ax = style.subplots(figsize=(5.5, 4.6))
    norm = colors.LogNorm(1.0, max(2.0, rows.factor.max()))
    cmap = matplotlib.colormaps[style.CMAP]
    for opt, marker in ((False, "o"), (True, "*")):
        g = rows[(rows.run == "optimum") == opt]
        if g.empty:
            continue
        ax.errorbar(g.measured, g.predicted, yerr=[g.predicted - g.lo, g.hi - g.predicted],
                    fmt="none", ecolor=cmap(norm(g.factor)), alpha=0.5, lw=0.8)
        ax.scatter(g.measured, g.predicted, c=g.factor, cmap=cmap, norm=norm, marker=marker,
                   s=40 if opt else 14, edgecolors="k" if opt else "none", linewidths=0.4,
                   label="budget optimum (best run)" if opt else "run", zorder=3)
    lim = [min(rows.lo.min(), rows.measured.min()), max(rows.hi.max(), rows.measured.max())]
    ax.plot(lim, lim, "k--", lw=0.8, label="predicted = measured")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax,
                 label="extrapolation factor C / C_cut (unitless)")
    level = rows.attrs.get("level", 0.9)
    ax.set_xlabel(figures.LOSS_LABEL.replace("loss", "measured loss"))
    ax.set_ylabel(f"predicted loss with {level:.0%} prediction interval (nats/token)")
    ax.set_title(title)
    ax.legend()
    return figures.save(fig, out)
