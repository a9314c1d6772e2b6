"""Reproduce published scaling-law fits from published data: `scaling reproduce chinchilla`.

    scaling reproduce chinchilla --data ../shared/data/epoch_chinchilla_svg_extracted_data.csv \
        --out reproduce/chinchilla

Chinchilla (Hoffmann et al. 2022) from the 245 points Besiroglu et al. (2024) digitised from
Hoffmann's Fig. 4 (N = total parameters, C = training FLOPs, loss in nats/token; D = C/(6N)):

- Approach 3, Besiroglu et al.'s protocol: drop the 5 highest-loss points, minimise the SUM of
  Huber(delta=1e-3) on log residuals from the 4500-start grid (analysis.fit), bootstrap CIs.
  Table: ours vs Epoch's Table 1 vs Hoffmann's reported values, with the objective each reaches
  on the same points and the allocation exponent a = beta/(alpha+beta).
- Approach 2 on the same 240 points: they cluster around Hoffmann's nine isoFLOP budgets
  (measured: each cluster sits 0.01-0.04 dex below its nominal C, the digitisation offset), so
  each point within +-BIN_DEX of its cluster's centre is binned to that budget; the rest (runs of
  Approach 1's fixed-N sweeps) are left out, and how many is printed.
- Figures: isoFLOP parabolas, N_opt(C)/D_opt(C) with CIs, L(N, D) contours with the frontier,
  and residuals of our refit vs Hoffmann's reported law (which fits these points visibly worse).

The published numbers live in the block below and nowhere else.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import pandas as pd

from analysis import chinchilla, figures, fit, kaplan, laws, results, workflows

# ===================== published numbers (quoted from the papers; never computed) ==============
# Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (arXiv:2203.15556).
# Approach 3 parametric fit (Section 3.3 / Eq. 10): L(N, D) = E + A/N^alpha + B/D^beta.
HOFFMANN_2022_APPROACH3 = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
# Table 2: N_opt ∝ C^a, D_opt ∝ C^b; intervals are the paper's 10th-90th bootstrap percentiles.
HOFFMANN_2022_TABLE2_CI_KIND = "10-90% bootstrap percentiles"
HOFFMANN_2022_TABLE2 = {
    "approach_1": {"a": 0.50, "a_ci": (0.488, 0.502), "b": 0.50, "b_ci": (0.501, 0.512)},
    "approach_2": {"a": 0.49, "a_ci": (0.462, 0.534), "b": 0.51, "b_ci": (0.483, 0.529)},
    "approach_3": {"a": 0.46, "a_ci": (0.454, 0.455), "b": 0.54, "b_ci": (0.542, 0.543)},
    "kaplan_2020": {"a": 0.73, "a_ci": None, "b": 0.27, "b_ci": None},
}
# Figure 3: the nine isoFLOP budgets (FLOPs).
HOFFMANN_2022_ISOFLOP_BUDGETS = (6e18, 1e19, 3e19, 6e19, 1e20, 3e20, 6e20, 1e21, 3e21)
# Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt" (arXiv:2404.10102), Table 1:
# their refit (after a final maximum-likelihood step) and bootstrap 95% intervals (4000 resamples).
EPOCH_2024_TABLE1 = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
EPOCH_2024_TABLE1_CI_KIND = "95% bootstrap CI"
EPOCH_2024_TABLE1_CI = {"E": (1.769, 1.871), "A": (285.0, 744.0), "B": (1042.0, 5810.0),
                        "alpha": (0.317, 0.373), "beta": (0.331, 0.415)}
# Their plain sum-Huber optimum (no maximum-likelihood step), as recorded with the data in
# ../shared/data/README.md (epoch-research/analyzing-chinchilla).
EPOCH_2024_PLAIN_HUBER = {"E": 1.8172, "A": 477.8, "B": 2143.4, "alpha": 0.3473, "beta": 0.3672}
EPOCH_2024_N_DROP = 5  # highest-loss points removed before fitting
EPOCH_2024_DELTA = 1e-3  # Huber delta on log-loss residuals
# ===============================================================================================

EPOCH_COLUMNS = {"Model Size": "n_params", "Training FLOP": "flops", "loss": "loss"}
BIN_DEX = 0.05  # half-width of an isoFLOP bin in log10 C (+-12%); clusters' spread is 0.01-0.02
PARAMS = ("E", "A", "B", "alpha", "beta")


def load_epoch(path) -> pd.DataFrame:
    """The Epoch CSV as n_params (N, total), flops (C), tokens (D = C/(6N)), loss (nats/token)."""
    raw = results.read_published(path, EPOCH_COLUMNS, "epoch_chinchilla_svg_extracted_data.csv", "Epoch")
    df = raw[list(EPOCH_COLUMNS)].rename(columns=EPOCH_COLUMNS).astype(float)
    df["tokens"] = df.flops / (6.0 * df.n_params)
    return df


def drop_highest_loss(df: pd.DataFrame, n: int = EPOCH_2024_N_DROP) -> pd.DataFrame:
    """Besiroglu et al.'s outlier step: remove the n highest-loss points."""
    return df.sort_values("loss", kind="stable").iloc[: len(df) - n].reset_index(drop=True)


def theta_of(params: dict) -> np.ndarray:
    """Chinchilla reported parameters -> fit-space theta (a, b, e, alpha, beta) = logs of A, B, E."""
    return np.array([np.log(params["A"]), np.log(params["B"]), np.log(params["E"]),
                     params["alpha"], params["beta"]])


def approach3(df: pd.DataFrame, *, starts=None, n_bootstrap=1000, seed=0) -> fit.Fit:
    """Sum-Huber(1e-3) fit of L(N, D) on (already filtered) points; bootstrap CIs if n_bootstrap."""
    return fit.fit(laws.chinchilla(), {"N": df.n_params, "D": df.tokens}, df.loss,
                   delta=EPOCH_2024_DELTA, starts=starts, n_bootstrap=n_bootstrap, seed=seed)


def comparison_table(ours: fit.Fit, df: pd.DataFrame) -> pd.DataFrame:
    """Rows E, A, B, alpha, beta, a = beta/(alpha+beta), objective (sum-Huber on df's points);
    columns: ours (+ CI), Epoch plain Huber, Epoch Table 1 (+ CI), Hoffmann 2022."""
    law, inputs = laws.chinchilla(), {"N": df.n_params, "D": df.tokens}
    sets = {"ours": ours.params, "epoch_plain_huber": EPOCH_2024_PLAIN_HUBER,
            "epoch_table1": EPOCH_2024_TABLE1, "hoffmann_2022": HOFFMANN_2022_APPROACH3}
    rows = {}
    for name in PARAMS:
        rows[name] = {k: v[name] for k, v in sets.items()}
    rows["a = beta/(alpha+beta)"] = {k: v["beta"] / (v["alpha"] + v["beta"]) for k, v in sets.items()}
    rows["objective (sum Huber)"] = {
        k: fit.objective(law, theta_of(v), inputs, df.loss, delta=EPOCH_2024_DELTA)
        for k, v in sets.items()}
    table = pd.DataFrame(rows).T[list(sets)]
    if ours.ci:
        a_boot = ours.boot_params["beta"] / (ours.boot_params["alpha"] + ours.boot_params["beta"])
        cis = dict(ours.ci, **{"a = beta/(alpha+beta)": fit.percentile_interval(a_boot, ours.ci_level)})
        table.insert(1, f"ours {ours_ci_kind(ours)}", [_fmt_ci(cis.get(r)) for r in table.index])
        table.insert(4, f"epoch_table1 {EPOCH_2024_TABLE1_CI_KIND}",
                     [_fmt_ci(EPOCH_2024_TABLE1_CI.get(r)) for r in table.index])
    return table


def ours_ci_kind(ours: fit.Fit) -> str:
    """'95% bootstrap percentile CI': the level and kind of our intervals, for labels."""
    return f"{100 * ours.ci_level:.0f}% {fit.CI_KIND} CI" if ours.ci_level else "no CI"


def _fmt_ci(ci) -> str:
    return "" if ci is None else f"({ci[0]:.4g}, {ci[1]:.4g})"


def residual_figure(df: pd.DataFrame, ours: fit.Fit, out) -> list[pathlib.Path]:
    """Residuals log(L_obs/L_pred) of our refit, Epoch's Table 1 and Hoffmann's reported law."""
    series = {}
    for name, params in (("our refit", ours.params), ("Epoch Table 1", EPOCH_2024_TABLE1),
                         ("Hoffmann et al. reported", HOFFMANN_2022_APPROACH3)):
        pred = dataclasses.replace(ours, theta=theta_of(params)).predict(N=df.n_params, D=df.tokens)
        series[name] = np.log(df.loss.to_numpy() / pred)
    return figures.residuals(df.flops, series, out, title=(
        "Chinchilla Approach 3 on the Epoch points: residuals of each parameter set"))


def isoflop_labels(flops, budgets=HOFFMANN_2022_ISOFLOP_BUDGETS, half_width_dex=BIN_DEX):
    """Budget index per point (-1: on no budget). Each budget's centre is re-estimated as the
    median log10 C of the points within 0.1 dex of its nominal value (digitised points sit
    slightly off it); points within +-half_width_dex of that centre belong to the budget."""
    logc = np.log10(np.asarray(flops, dtype=np.float64))
    labels = np.full(len(logc), -1)
    for i, b in enumerate(budgets):
        near = np.abs(logc - np.log10(b)) < 0.1
        if near.any():
            labels[np.abs(logc - np.median(logc[near])) < half_width_dex] = i
    return labels


def run_chinchilla(data, out, *, starts=None, n_bootstrap=1000, seed=0) -> dict:
    """Approach 3 refit + table, Approach 2 on the same points, figures; writes into `out`:
    table.csv, reproduce.json and the figures (PNG + PDF). Returns the summary dict."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = load_epoch(data)
    pts = drop_highest_loss(df)
    ours = approach3(pts, starts=starts, n_bootstrap=n_bootstrap, seed=seed)
    table = comparison_table(ours, pts)
    table.to_csv(out / "table.csv")
    a3 = chinchilla.scaling_from_fit(ours)

    # Approach 2 on the same 240 points: 4 of the 5 dropped high-loss points sit on the 1e19
    # budget and would bend its parabola (with them: a = 0.486, without: 0.500).
    labels = isoflop_labels(pts.flops)
    on = labels >= 0
    a2 = chinchilla.approach2(pts.flops[on], pts.n_params[on], pts.loss[on], budget=labels[on],
                              n_bootstrap=n_bootstrap, seed=seed)

    c_line = np.geomspace(df.flops.min() / 2, df.flops.max() * 2, 100)
    files = []
    files += figures.isoflop_curves(
        workflows.isoflop_panels(a2),
        out / "isoflop", title=f"Chinchilla Approach 2: Epoch points on Hoffmann's 9 isoFLOP "
                               f"budgets ({on.sum()} of {len(pts)})")
    n3, d3 = chinchilla.compute_optimal(ours.params, c_line)
    n_h, d_h = chinchilla.compute_optimal(HOFFMANN_2022_APPROACH3, c_line)
    line3 = {"c": c_line, "n": n3, "d": d3, "label": f"Approach 3, our refit (a = {a3.a:.3f})"}
    if ours.boot_params is not None:
        line3["band_n"], line3["band_d"] = chinchilla.compute_optimal_band(ours.boot_params, c_line,
                                                                          ours.ci_level)
        line3["ci_label"] = ours_ci_kind(ours)
    line2 = {"c": c_line, "n": a2.n_opt(c_line), "d": a2.d_opt(c_line),
             "label": f"Approach 2 power law (a = {a2.a:.3f})"}
    line_h = {"c": c_line, "n": n_h, "d": d_h, "label": "Approach 3, Hoffmann et al. reported "
              f"(a = {HOFFMANN_2022_APPROACH3['beta'] / (HOFFMANN_2022_APPROACH3['alpha'] + HOFFMANN_2022_APPROACH3['beta']):.3f})"}
    files += figures.allocation(a2.points["C"], a2.points["N_opt"], a2.points["D_opt"],
                                out / "allocation", lines=[line3, line2, line_h],
                                points_label="Approach 2 isoFLOP minima",
                                title="Compute-optimal N and D on the Epoch Chinchilla points")
    files += figures.loss_contours(
        lambda n, d: ours.predict(N=n, D=d), out / "contours", n_params=pts.n_params,
        c=pts.flops, loss=pts.loss, frontier_c=c_line, frontier_n=n3,
        title="Our L(N, D) refit on the Epoch points (Chinchilla Fig. 4 style)")
    files += residual_figure(pts, ours, out / "residuals")
    files += figures.loss_vs_compute(df.flops, df.loss, out / "loss_vs_compute",
                                     frontier=kaplan.frontier(df.flops, df.loss),
                                     n_params=df.n_params, title="Epoch Chinchilla points")
    summary = {
        "data": str(data), "n_points": len(df), "n_fit_approach3": len(pts),
        "approach3": ours.to_dict(), "approach3_allocation": a3.to_dict(),
        "approach2": a2.to_dict(), "approach2_points_used": int(on.sum()),
        "approach2_budget_counts": {f"{b:.0e}": int((labels == i).sum())
                                    for i, b in enumerate(HOFFMANN_2022_ISOFLOP_BUDGETS)},
        "table": json.loads(table.to_json(orient="index")),
        "published": {"hoffmann_2022_approach3": HOFFMANN_2022_APPROACH3,
                      "hoffmann_2022_table2": HOFFMANN_2022_TABLE2,
                      "epoch_2024_table1": EPOCH_2024_TABLE1,
                      "epoch_2024_table1_ci": EPOCH_2024_TABLE1_CI,
                      "epoch_2024_plain_huber": EPOCH_2024_PLAIN_HUBER},
        "files": [str(f) for f in files] + [str(out / "table.csv"), str(out / "reproduce.json")],
    }
    (out / "reproduce.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    summary["table_df"], summary["fit"], summary["approach2_obj"] = table, ours, a2
    return summary
