"""Scaling-law figures (matplotlib, Agg): each function draws one figure and writes PNG + PDF.

Inputs are plain arrays, fitted-parameter dicts and callables, so figures know nothing about
how a fit was made. Every function takes `out` (a path stem: 'figs/isoflop' writes
figs/isoflop.png and figs/isoflop.pdf) and returns the list of files written.

Units on every axis: parameters N (total unless the caller says non-embedding), tokens D,
compute C in FLOPs, loss in nats/token. The look (fonts, colours, markers, log ticks, legend
placement, PNG + PDF) is analysis.style's.
"""
from __future__ import annotations

import pathlib
from typing import Callable, Sequence

import numpy as np
from matplotlib import colors, ticker

from analysis import style
from analysis.style import (C6ND_LABEL, C_LABEL, D_LABEL, LOSS_LABEL, N_LABEL, N_NONEMBED_LABEL,  # noqa: F401
                            RESIDUAL_LABEL, save)


def isoflop_curves(budgets: Sequence[dict], out, *, title="IsoFLOP curves",
                   n_label=N_LABEL) -> list[pathlib.Path]:
    """Loss vs N per compute budget, with each budget's fitted parabola and its minimum.

    Each budget dict: C (FLOPs), n_params, loss (the runs); optional curve_n, curve_loss (the
    fitted parabola sampled), n_opt, loss_opt (its minimum), and refused (str: why it was left
    out, e.g. "flat"; its parabola is drawn dashed).
    """
    fig, ax = style.subplots(title)
    order = np.argsort([b["C"] for b in budgets])  # colour and marker rise with the budget
    for k, i in enumerate(order):
        b = budgets[i]
        st = style.series(k, len(budgets))
        label = f"C = {b['C']:.1e} FLOPs"
        if b.get("refused"):
            label += f" (left out: {b['refused']})"
        ax.plot(b["n_params"], b["loss"], ls="none", marker=st["marker"], color=st["color"],
                label=label, zorder=3)
        if b.get("curve_n") is not None:  # a refused budget's parabola is drawn dotted
            ax.plot(b["curve_n"], b["curve_loss"], color=st["color"], lw=1.1,
                    ls=":" if b.get("refused") else "-")
        if b.get("n_opt") is not None:
            ax.plot(b["n_opt"], b["loss_opt"], marker="*", ms=12, color=st["color"], mec="k", zorder=4)
    ax.plot([], [], "k*", ms=10, ls="none", label="fitted minimum N_opt(C)")
    ax.set_xscale("log")
    ax.set_xlabel(n_label)
    ax.set_ylabel(LOSS_LABEL)
    ax.legend(ncol=2 if len(budgets) > 6 else 1)
    return save(fig, out)


def loss_vs_compute(c, loss, out, *, frontier=None, n_params=None, fit_c=None, fit_loss=None,
                    fit_label="fit", title="Loss vs compute", c_label=C_LABEL) -> list[pathlib.Path]:
    """Loss vs C (log x); points coloured by N if given; `frontier` = (C_f, loss_f), the
    empirical compute frontier (analysis.kaplan.frontier), drawn as a staircase."""
    fig, ax = style.subplots(title)
    c, loss = np.asarray(c, float), np.asarray(loss, float)
    if n_params is not None:
        sc = ax.scatter(c, loss, c=n_params, norm=colors.LogNorm(), cmap=style.CMAP, s=14,
                        label="runs (colour = N)")
        fig.colorbar(sc, ax=ax, label=N_LABEL)
    else:
        ax.scatter(c, loss, s=14, color=style.colour(0, 2), label="runs")
    if frontier is not None:
        ax.plot(frontier[0], frontier[1], "k-", drawstyle="steps-post", lw=1.2,
                label="frontier (lowest loss at ≤ C)")
    if fit_c is not None:
        ax.plot(fit_c, fit_loss, color="0.35", ls="--", lw=1.5, label=fit_label)
    ax.set_xscale("log")
    ax.set_xlabel(c_label)
    ax.set_ylabel(LOSS_LABEL)
    ax.legend()
    return save(fig, out)


def loss_contours(predict: Callable, out, *, n_params=None, c=None, loss=None, frontier_c=None,
                  frontier_n=None, n_range=None, c_range=None, levels=12,
                  title="Fitted L(N, D) and the efficient frontier") -> list[pathlib.Path]:
    """Chinchilla Fig. 4 style: log N vs log C, contours of predict(N, D=C/(6N)), the frontier
    N_opt(C) (arrays frontier_c, frontier_n), and the data points coloured by their loss."""
    fig, ax = style.subplots(title)
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
    cs = ax.contour(cg, ng, lg, levels=lev, cmap=style.CMAP, norm=norm, linewidths=0.8)
    ax.clabel(cs, fontsize=6, fmt="%.2f")
    if n_params is not None:
        sc = ax.scatter(c, n_params, c=loss, cmap=style.CMAP, norm=norm, s=14, edgecolor="k",
                        linewidth=0.3, zorder=3, label="runs (colour = loss)")
        fig.colorbar(sc, ax=ax, label=LOSS_LABEL)
    if frontier_c is not None:
        ax.plot(frontier_c, frontier_n, color="k", ls="--", lw=1.8, label="efficient frontier N_opt(C)")
    ax.set(xscale="log", yscale="log", xlim=c_range, ylim=n_range, xlabel=C_LABEL, ylabel=N_LABEL)
    ax.grid(False)
    ax.legend()
    return save(fig, out)


def allocation(points_c, points_n, points_d, out, *, lines=(), n_label=N_LABEL,
               points_label="per-budget optimum", title="Compute-optimal allocation"
               ) -> list[pathlib.Path]:
    """Two panels: N_opt(C) and D_opt(C), log-log: points (e.g. isoFLOP minima) and fitted lines.

    lines: dicts with c, n, d (arrays over c), label, and optional band_n, band_d ((lo, hi)
    arrays over c, drawn as shaded CIs) and ci_label.
    """
    fig, (an, ad) = style.subplots(title, figsize=(9, 3.8), ncols=2)
    for ax, pts, key, ylabel in ((an, points_n, "n", f"optimal {n_label}"),
                                 (ad, points_d, "d", f"optimal {D_LABEL}")):
        if pts is not None:
            ax.scatter(points_c, pts, color="k", s=22, zorder=3, label=points_label)
        for k, line in enumerate(lines):
            st = style.series(k, len(lines))
            ax.plot(line["c"], line[key], color=st["color"], ls=st["linestyle"], lw=1.5,
                    label=line["label"])
            band = line.get(f"band_{key}")
            if band is not None:
                ax.fill_between(line["c"], band[0], band[1], color=st["color"], alpha=0.2,
                                label=line.get("ci_label", "CI"))
        ax.set(xscale="log", yscale="log", xlabel=C_LABEL, ylabel=ylabel)
        ax.legend()
    return save(fig, out)


def residuals(x, series: dict, out, *, x_label=C_LABEL, title="Fit residuals",
              log_x=True) -> list[pathlib.Path]:
    """Residuals log(L_observed / L_predicted) vs x, one marker set per fitted model
    (series: label -> residual array), and their histograms side by side."""
    fig, (ax, ah) = style.subplots(title, figsize=(9, 3.8), ncols=2)
    allr = np.concatenate([np.asarray(r, float) for r in series.values()])
    bins = np.linspace(allr.min(), allr.max(), 40)
    for k, (name, r) in enumerate(series.items()):
        st = style.series(k, len(series))
        r = np.asarray(r, float)
        lab = f"{name} (RMS {np.sqrt(np.mean(r ** 2)):.4f}, mean {np.mean(r):+.4f})"
        ax.scatter(x, r, s=12, marker=st["marker"], color=st["color"], alpha=0.8, label=lab)
        ah.hist(r, bins=bins, alpha=0.35, histtype="stepfilled", color=st["color"], edgecolor="k",
                lw=0.5, label=name)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel=x_label, ylabel=RESIDUAL_LABEL)
    if log_x:
        ax.set_xscale("log")
    ax.legend()
    ah.axvline(0, color="k", lw=0.8)
    ah.set(xlabel=RESIDUAL_LABEL, ylabel="runs per bin (count)")
    ah.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))  # counts: whole numbers
    ah.legend()
    return save(fig, out)


def kaplan(x, loss, out, *, used=None, fit_x=None, fit_loss=None, fit_label="fit",
           x_label=style.N_NONEMBED_LABEL, title="Kaplan power law") -> list[pathlib.Path]:
    """Loss vs one variable (N, D or C) on log-log axes with the fitted law. `used`: indices of
    the points the fit used (the rest are drawn hollow as 'not fitted')."""
    fig, ax = style.subplots(title)
    x, loss = np.asarray(x, float), np.asarray(loss, float)
    mask = np.zeros(len(x), bool)
    mask[np.arange(len(x)) if used is None else np.asarray(used, int)] = True
    ax.scatter(x[mask], loss[mask], s=20, color=style.colour(0, 2), label="runs used in the fit", zorder=3)
    if (~mask).any():
        ax.scatter(x[~mask], loss[~mask], s=20, marker="s", facecolor="none", edgecolor="0.45",
                   label="runs not used in the fit")
    if fit_x is not None:
        ax.plot(fit_x, fit_loss, color="k", ls="--", lw=1.4, label=fit_label)
    ax.set(xscale="log", yscale="log", xlabel=x_label, ylabel=LOSS_LABEL)
    ax.legend()
    return save(fig, out)
