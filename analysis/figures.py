"""Scaling-law figures (matplotlib, Agg): each function draws one figure and writes PNG + PDF.

Inputs are plain arrays, fitted-parameter dicts and callables, so figures know nothing about
how a fit was made. Every function takes `out` (a path stem: 'figs/isoflop' writes
figs/isoflop.png and figs/isoflop.pdf) and returns the list of files written.

Units on every axis: parameters N (total unless the caller says non-embedding), tokens D,
compute C in FLOPs, loss in nats/token.
"""
from __future__ import annotations

import pathlib
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors, ticker  # noqa: E402

N_LABEL = "parameters N"
D_LABEL = "training tokens D"
C_LABEL = "training compute C (FLOPs)"
LOSS_LABEL = "loss (nats/token)"


def save(fig, out) -> list[pathlib.Path]:
    """Write `fig` as out.png (150 dpi) and out.pdf; close it; return both paths."""
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, dpi=150)
    plt.close(fig)
    return paths


def _new(title: str, figsize=(6.4, 4.8), ncols=1):
    fig, ax = plt.subplots(1, ncols, figsize=figsize, constrained_layout=True)
    fig.suptitle(title, fontsize=11)
    return fig, ax


def isoflop_curves(budgets: Sequence[dict], out, *, title="IsoFLOP curves",
                   n_label=N_LABEL) -> list[pathlib.Path]:
    """Loss vs N per compute budget, with each budget's fitted parabola and its minimum.

    Each budget dict: C (FLOPs), n_params, loss (the runs); optional curve_n, curve_loss (the
    fitted parabola sampled), n_opt, loss_opt (its minimum), and refused (str: why it was left
    out, e.g. "flat"; its parabola is drawn dashed).
    """
    fig, ax = _new(title)
    cs = np.array([b["C"] for b in budgets], float)
    norm = colors.LogNorm(cs.min(), cs.max()) if cs.min() < cs.max() else None
    cmap = plt.get_cmap("plasma")
    for b in budgets:
        col = cmap(0.85 * norm(b["C"])) if norm else cmap(0.3)
        label = f"C = {b['C']:.1e}"
        if b.get("refused"):
            label += f" (left out: {b['refused']})"
        ax.scatter(b["n_params"], b["loss"], color=col, s=18, label=label, zorder=3)
        if b.get("curve_n") is not None:  # a refused budget's parabola is drawn dashed
            ax.plot(b["curve_n"], b["curve_loss"], color=col, lw=1.2,
                    ls="--" if b.get("refused") else "-")
        if b.get("n_opt") is not None:
            ax.plot(b["n_opt"], b["loss_opt"], marker="*", ms=13, color=col, mec="k", zorder=4)
    ax.plot([], [], "k*", ms=11, ls="none", label="fitted minimum N_opt(C)")
    ax.set_xscale("log")
    ax.set_xlabel(n_label)
    ax.set_ylabel(LOSS_LABEL)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2 if len(budgets) > 6 else 1)
    return save(fig, out)


def loss_vs_compute(c, loss, out, *, frontier=None, n_params=None, fit_c=None, fit_loss=None,
                    fit_label="fit", title="Loss vs compute", c_label=C_LABEL) -> list[pathlib.Path]:
    """Loss vs C (log x); points coloured by N if given; `frontier` = (C_f, loss_f), the
    empirical compute frontier (analysis.kaplan.frontier), drawn as a staircase."""
    fig, ax = _new(title)
    c, loss = np.asarray(c, float), np.asarray(loss, float)
    if n_params is not None:
        sc = ax.scatter(c, loss, c=n_params, norm=colors.LogNorm(), cmap="viridis", s=14)
        fig.colorbar(sc, ax=ax, label=N_LABEL)
    else:
        ax.scatter(c, loss, s=14, color="tab:blue", label="runs")
    if frontier is not None:
        ax.plot(frontier[0], frontier[1], "k-", drawstyle="steps-post", lw=1.2,
                label="frontier (lowest loss at <= C)")
    if fit_c is not None:
        ax.plot(fit_c, fit_loss, "r--", lw=1.5, label=fit_label)
    ax.set_xscale("log")
    ax.set_xlabel(c_label)
    ax.set_ylabel(LOSS_LABEL)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save(fig, out)


def loss_contours(predict: Callable, out, *, n_params=None, c=None, loss=None, frontier_c=None,
                  frontier_n=None, n_range=None, c_range=None, levels=12,
                  title="Fitted L(N, D) and the efficient frontier") -> list[pathlib.Path]:
    """Chinchilla Fig. 4 style: log N vs log C, contours of predict(N, D=C/(6N)), the frontier
    N_opt(C) (arrays frontier_c, frontier_n), and the data points coloured by their loss."""
    fig, ax = _new(title)
    if n_range is None:
        n_range = (np.min(n_params) / 2, np.max(n_params) * 2)
    if c_range is None:
        c_range = (np.min(c) / 2, np.max(c) * 2)
    cg, ng = np.meshgrid(np.geomspace(*c_range, 200), np.geomspace(*n_range, 200))
    lg = np.asarray(predict(ng, cg / (6 * ng)), float)
    vmin = np.min(loss) if loss is not None else np.nanmin(lg)
    vmax = np.max(loss) if loss is not None else np.nanpercentile(lg, 90)
    norm = colors.Normalize(vmin, vmax)
    lev = np.linspace(max(np.nanmin(lg), vmin - 0.1 * (vmax - vmin)), vmax, levels)
    cs = ax.contour(cg, ng, lg, levels=lev, cmap="viridis", norm=norm, linewidths=0.8)
    ax.clabel(cs, fontsize=6, fmt="%.2f")
    if n_params is not None:
        sc = ax.scatter(c, n_params, c=loss, cmap="viridis", norm=norm, s=14, edgecolor="k",
                        linewidth=0.3, zorder=3, label="runs (colour = loss)")
        fig.colorbar(sc, ax=ax, label=LOSS_LABEL)
    if frontier_c is not None:
        ax.plot(frontier_c, frontier_n, color="tab:red", lw=2, label="efficient frontier N_opt(C)")
    ax.set(xscale="log", yscale="log", xlim=c_range, ylim=n_range, xlabel=C_LABEL, ylabel=N_LABEL)
    for axis in (ax.xaxis, ax.yaxis):  # less than a decade shown: minor labels would collide
        axis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, out)


def allocation(points_c, points_n, points_d, out, *, lines=(), n_label=N_LABEL,
               points_label="per-budget optimum", title="Compute-optimal allocation"
               ) -> list[pathlib.Path]:
    """Two panels: N_opt(C) and D_opt(C), log-log: points (e.g. isoFLOP minima) and fitted lines.

    lines: dicts with c, n, d (arrays over c), label, and optional band_n, band_d ((lo, hi)
    arrays over c, drawn as shaded CIs) and ci_label.
    """
    fig, (an, ad) = _new(title, figsize=(10, 4.4), ncols=2)
    for ax, pts, key, ylabel in ((an, points_n, "n", f"optimal {n_label}"),
                                 (ad, points_d, "d", f"optimal {D_LABEL}")):
        if pts is not None:
            ax.scatter(points_c, pts, color="k", s=22, zorder=3, label=points_label)
        for line, col in zip(lines, ("tab:blue", "tab:red", "tab:green", "tab:purple")):
            ax.plot(line["c"], line[key], color=col, lw=1.5, label=line["label"])
            band = line.get(f"band_{key}")
            if band is not None:
                ax.fill_between(line["c"], band[0], band[1], color=col, alpha=0.2,
                                label=line.get("ci_label", "CI"))
        ax.set(xscale="log", yscale="log", xlabel=C_LABEL, ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return save(fig, out)


def residuals(x, series: dict, out, *, x_label=C_LABEL, title="Fit residuals",
              log_x=True) -> list[pathlib.Path]:
    """Residuals log(L_observed / L_predicted) vs x, one marker set per fitted model
    (series: label -> residual array), and their histograms side by side."""
    fig, (ax, ah) = _new(title, figsize=(10, 4.4), ncols=2)
    allr = np.concatenate([np.asarray(r, float) for r in series.values()])
    bins = np.linspace(allr.min(), allr.max(), 40)
    for (name, r), m in zip(series.items(), "os^vD"):
        r = np.asarray(r, float)
        lab = f"{name} (RMS {np.sqrt(np.mean(r ** 2)):.4f}, mean {np.mean(r):+.4f})"
        ax.scatter(x, r, s=12, marker=m, alpha=0.7, label=lab)
        ah.hist(r, bins=bins, alpha=0.35, histtype="stepfilled", edgecolor="k", lw=0.5, label=name)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel=x_label, ylabel="residual log(L_obs / L_pred)")
    if log_x:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ah.axvline(0, color="k", lw=0.8)
    ah.set(xlabel="residual log(L_obs / L_pred)", ylabel="number of runs")
    ah.legend(fontsize=7)
    return save(fig, out)


def kaplan(x, loss, out, *, used=None, fit_x=None, fit_loss=None, fit_label="fit",
           x_label="non-embedding parameters N", title="Kaplan power law") -> list[pathlib.Path]:
    """Loss vs one variable (N, D or C) on log-log axes with the fitted law. `used`: indices of
    the points the fit used (the rest are drawn hollow as 'not fitted')."""
    fig, ax = _new(title)
    x, loss = np.asarray(x, float), np.asarray(loss, float)
    mask = np.zeros(len(x), bool)
    mask[np.arange(len(x)) if used is None else np.asarray(used, int)] = True
    ax.scatter(x[mask], loss[mask], s=20, color="tab:blue", label="runs used in the fit", zorder=3)
    if (~mask).any():
        ax.scatter(x[~mask], loss[~mask], s=20, facecolor="none", edgecolor="gray",
                   label="runs not fitted (not the best loss at their x)")
    if fit_x is not None:
        ax.plot(fit_x, fit_loss, "r-", lw=1.5, label=fit_label)
    ax.set(xscale="log", yscale="log", xlabel=x_label, ylabel=LOSS_LABEL)
    ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.1f"))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save(fig, out)
