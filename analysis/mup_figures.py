"""Figures of the μP checks (matplotlib in the house style of analysis.style: PNG + PDF). Inputs are plain records.

coord_sizes: one panel per activation, RMS vs width (log-log), one line per step, SP and μP side by
side; lr_transfer: held-out loss vs LR, one line per width, SP and μP side by side, fitted optima as vertical lines.
"""
from __future__ import annotations

import numpy as np

from analysis import style
from analysis.style import plt, save


def coord_sizes(records: list[dict], out, *, layers: list[str]) -> list:
    """records: dicts with parametrization, width, step, layer, rms. One column per parametrization."""
    params = list(dict.fromkeys(r["parametrization"] for r in records))
    fig, axes = plt.subplots(len(layers), len(params), figsize=(4.2 * len(params), 2.3 * len(layers)),
                             squeeze=False, constrained_layout=True, sharex=True)
    fig.suptitle("coordinate check: RMS of each activation vs width (one line per step)", fontsize=11)
    steps = sorted({r["step"] for r in records})
    for col, p in enumerate(params):
        for row, layer in enumerate(layers):
            ax = axes[row][col]
            for k, t in enumerate(steps):
                pts = sorted((r["width"], r["rms"]) for r in records
                             if r["parametrization"] == p and r["layer"] == layer and r["step"] == t)
                if pts:
                    w, y = zip(*pts)
                    ax.plot(w, y, ms=3, lw=1, **style.series(k, len(steps)), label=f"step {t}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{'μP' if p == 'mup' else 'SP'}: {layer}", fontsize=8)
            ax.tick_params(labelsize=7)
            if row == len(layers) - 1:
                ax.set_xlabel("width d_model (unitless)", fontsize=8)
            ax.set_ylabel("RMS (unitless)", fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="best")
    return save(fig, out)


def lr_transfer(points: list[dict], optima: list[dict], out) -> list:
    """points: dicts with parametrization, width, lr, loss; optima: parametrization, width, best, edge."""
    params = list(dict.fromkeys(p["parametrization"] for p in points))
    fig, axes = style.subplots("LR transfer: held-out loss vs Adam LR (one line per width; dashed = fitted optimum, "
                               "dotted = on the grid edge)", figsize=(5.2 * len(params), 4.2), ncols=len(params))
    axes = np.atleast_1d(axes)
    widths = sorted({p["width"] for p in points})
    for ax, par in zip(axes, params):
        for k, w in enumerate(widths):
            kw = style.series(k, len(widths))
            col = kw["color"]
            pts = sorted((p["lr"], p["loss"]) for p in points
                         if p["parametrization"] == par and p["width"] == w and np.isfinite(p["loss"]))
            if not pts:
                continue
            x, y = zip(*pts)
            ax.plot(x, y, ms=4, **kw, label=f"d_model {w}")
            for o in optima:
                if o["parametrization"] == par and o["width"] == w:
                    ax.axvline(o["best"], color=col, lw=0.8, ls=":" if o["edge"] else "--")
        ax.set_xscale("log")
        ax.set_xlabel("Adam learning rate, μP: the base width's (unitless)")
        ax.set_ylabel("held-out loss (nats/token)")
        ax.set_title("μP" if par == "mup" else "SP (standard)")
        ax.legend(fontsize=7)
    return save(fig, out)
