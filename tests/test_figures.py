"""Every figure the project draws, rendered and inspected: PNG + vector PDF, no overlapping tick
labels, a unit on every axis label, no data under a legend, greyscale-distinguishable series."""
import itertools
import re
import types

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from analysis import backtest, figures, mup_figures, reproduce_bnsl, reproduce_muennighoff, reproduce_porian, style

PNG_MAGIC, PDF_MAGIC = b"\x89PNG\r\n\x1a\n", b"%PDF"
UNIT_AT_END = re.compile(r"\(([^()]+)\)\s*$")


def _law(n, d):
    return 1.82 + 482.0 / n**0.348 + 2085.0 / d**0.366


# ----- what is checked on every rendered figure -------------------------------------------------


def _boxes_overlap(a, b, pad=0.5):
    return a.x0 < b.x1 - pad and b.x0 < a.x1 - pad and a.y0 < b.y1 - pad and b.y0 < a.y1 - pad


def _problems(fig) -> list[str]:
    """Everything wrong with a drawn figure, as readable strings (empty: fine)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    out = []
    for ax in fig.axes:
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            lo, hi = sorted(axis.get_view_interval())
            labels = [t.label1 for t in axis.get_major_ticks() + axis.get_minor_ticks()
                      if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi]
            for a, b in itertools.combinations(labels, 2):
                if _boxes_overlap(a.get_window_extent(r), b.get_window_extent(r)):
                    out.append(f"{name} tick labels overlap: {a.get_text()!r} and {b.get_text()!r}")
            if axis.get_scale() == "log" and len({"$" in t.get_text() for t in labels}) > 1:
                out.append(f"{name} log axis mixes plain and 10^e labels: {[t.get_text() for t in labels]}")
            if labels:  # a drawn scale needs a label ending in its unit
                m = UNIT_AT_END.search(axis.get_label_text())
                if not m or m.group(1) not in style.UNITS:
                    out.append(f"{name} label without a unit: {axis.get_label_text()!r}")
        if ax.get_legend() is not None and (n := style.covered(fig, ax)):
            out.append(f"legend covers {n} data points of {ax.get_title()!r}")
    return out


@pytest.fixture
def drawn(monkeypatch):
    """Every figure closed while the test runs (style.save closes each after writing it),
    inspected just before it closes: {problems: [...], count: n}."""
    seen = {"problems": [], "count": 0}
    close = plt.close

    def inspecting_close(fig=None):
        if isinstance(fig, matplotlib.figure.Figure):
            seen["count"] += 1
            seen["problems"] += _problems(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", inspecting_close)
    return seen


def _check(paths):
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    png, pdf = (p.read_bytes() for p in paths)
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000  # a drawn figure, not a blank canvas
    assert pdf.startswith(PDF_MAGIC) and len(pdf) > 2_000
    assert b"/Subtype /Image" not in pdf  # vector: no raster image embedded in the PDF


# ----- the figures ------------------------------------------------------------------------------


@pytest.fixture
def grid():
    """Three isoFLOP budgets of 6 runs each from a known L(N, D)."""
    budgets = []
    for c in (1e18, 1e19, 1e20):
        n = np.geomspace(c**0.5 / 300, c**0.5 / 10, 6)
        loss = _law(n, c / (6 * n))
        p = np.polyfit(np.log(n), loss, 2)
        xs = np.linspace(np.log(n[0]), np.log(n[-1]), 30)
        x_opt = -p[1] / (2 * p[0])
        budgets.append({"C": c, "n_params": n, "loss": loss, "curve_n": np.exp(xs),
                        "curve_loss": np.polyval(p, xs), "n_opt": np.exp(x_opt),
                        "loss_opt": np.polyval(p, x_opt)})
    return budgets


def test_isoflop_and_allocation(tmp_path, grid, drawn):
    grid[0]["refused"] = "minimum at the edge"
    _check(figures.isoflop_curves(grid, tmp_path / "sub" / "iso"))
    c = np.array([b["C"] for b in grid])
    n = np.array([b["n_opt"] for b in grid])
    line_c = np.geomspace(1e17, 1e21, 20)
    line_n = 0.1 * line_c**0.5
    line = {"c": line_c, "n": line_n, "d": line_c / (6 * line_n), "label": "fit",
            "band_n": (line_n / 2, line_n * 2), "band_d": (line_c / (12 * line_n), line_c / (3 * line_n))}
    plain = {"c": line_c, "n": line_n * 2, "d": line_c / (12 * line_n), "label": "other"}
    _check(figures.allocation(c, n, c / (6 * n), tmp_path / "alloc", lines=[line, plain]))
    assert drawn == {"problems": [], "count": 2}


def test_loss_contours_compute_residuals_kaplan(tmp_path, grid, drawn):
    n = np.concatenate([b["n_params"] for b in grid])
    c = np.concatenate([np.full(len(b["n_params"]), b["C"]) for b in grid])
    loss = np.concatenate([b["loss"] for b in grid])
    fc = np.geomspace(1e17, 1e21, 10)
    _check(figures.loss_contours(_law, tmp_path / "contours", n_params=n, c=c, loss=loss,
                                 frontier_c=fc, frontier_n=0.1 * fc**0.5))
    _check(figures.loss_vs_compute(c, loss, tmp_path / "lvc", frontier=(c[:3], loss[:3]),
                                   n_params=n, fit_c=fc, fit_loss=2 + fc**-0.05))
    _check(figures.residuals(c, {"a": np.log(loss / _law(n, c / (6 * n))), "b": loss * 0.01},
                             tmp_path / "res"))
    _check(figures.kaplan(n, loss, tmp_path / "kaplan", used=[0, 3, 5], fit_x=n, fit_loss=loss))
    assert drawn == {"problems": [], "count": 4}


@pytest.mark.parametrize("lo, hi", [(2.1e5, 3.4e5), (3e5, 4e6), (1e15, 1e24), (1.5, 4.0), (3.8e3, 1.3e4)])
def test_log_axes_of_any_span_get_two_or_more_readable_labels(tmp_path, lo, hi, drawn):
    """Under half a decade to nine decades, on a narrow panel: >= 2 major labels, no overlaps."""
    x = np.geomspace(lo, hi, 30)
    fig, ax = style.subplots(figsize=(3.0, 2.5))
    ax.plot(x, x, "o-", label="y = x")
    ax.set(xscale="log", yscale="log", xlabel=style.N_LABEL, ylabel=style.D_LABEL)
    ax.legend()
    style.finish(fig)
    for axis in (ax.xaxis, ax.yaxis):
        shown = [t for t in axis.get_ticklabels() if t.get_text() and lo <= t.get_position()[0 if axis is ax.xaxis else 1] <= hi]
        assert len(shown) >= 2, [t.get_text() for t in axis.get_ticklabels()]
    _check(style.save(fig, tmp_path / "span"))
    assert drawn == {"problems": [], "count": 1}


def test_the_checks_can_fail(drawn):
    """The inspection finds each defect it looks for on a figure drawn with all of them."""
    fig, ax = plt.subplots(figsize=(2.0, 2.0))
    x = np.geomspace(2e5, 9e5, 20)
    ax.plot(x, x, "o", label="runs")
    ax.set(xscale="log", xlabel="parameters N")  # no unit on x; y has ticks and no label at all
    ax.xaxis.set_minor_formatter(matplotlib.ticker.LogFormatterSciNotation(labelOnlyBase=False))
    ax.legend(loc="center", markerscale=3, fontsize=14)  # over the middle of the diagonal
    found = _problems(fig)
    plt.close(fig)
    assert any("tick labels overlap" in p for p in found), found
    assert any("x label without a unit" in p for p in found) and any("y label" in p for p in found)
    assert any(p.startswith("legend covers") for p in found), found


def test_a_line_through_the_legend_counts_as_covered():
    """A line segment crossing the legend box with no vertex inside it is still data under it."""
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "-", label="diagonal")  # two vertices, both far from the centre
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="center")
    assert style.covered(fig, ax) > 0
    ax.get_legend().set_loc("upper left")
    assert style.covered(fig, ax) == 0
    plt.close(fig)


def test_series_survive_greyscale():
    """Discrete series differ in luminance (and in marker and line style) when printed grey."""
    n = 5
    grey = [0.299 * r + 0.587 * g + 0.114 * b for r, g, b, _ in (style.colour(i, n) for i in range(n))]
    assert all(b - a > 0.08 for a, b in zip(grey, grey[1:])), grey
    kw = [style.series(i, n) for i in range(n)]
    assert len({k["marker"] for k in kw}) == n and len({str(k["linestyle"]) for k in kw}) == n


def test_backtest_and_reproduction_figures(tmp_path, drawn):
    """The figures the backtest and the paper reproductions draw, from small synthetic inputs."""
    rng = np.random.default_rng(0)
    measured = 3 + rng.normal(0, 0.05, 12)
    rows = pd.DataFrame({"measured": measured, "predicted": measured + 0.02, "lo": measured - 0.1,
                         "hi": measured + 0.12, "factor": np.repeat([2.0, 4.0, 8.0], 4),
                         "run": ["r"] * 9 + ["optimum"] * 3})
    _check(backtest.figure(rows, tmp_path / "backtest"))

    x = np.geomspace(1e2, 1e5, 12)
    curve = pd.DataFrame({"x": x, "y": 2 * x**-0.3 + 0.1})
    fake = types.SimpleNamespace(predict=lambda D: 2 * np.asarray(D) ** -0.3 + 0.1)
    _check(reproduce_bnsl._figure(curve[:9], curve[9:], {"BNSL": fake, "power law": fake},
                                  {"BNSL": {"rmsle_extrapolate": 0.01}, "power law": {"rmsle_extrapolate": 0.02}},
                                  tmp_path / "bnsl"))

    r_d, r_n = reproduce_muennighoff.PROFILE_RD[::4], reproduce_muennighoff.PROFILE_RN[::4]
    obj = 1 + (np.log(r_d)[:, None] - np.log(15)) ** 2 + 0.3 * (np.log(r_n)[None, :] - np.log(5)) ** 2
    prof = reproduce_muennighoff.Profile(r_d, r_n, obj, 0.01, 1.0, (10, 20), (3, 8))
    _check(reproduce_muennighoff.profile_figure(prof, {"published": (15.4, 5.3), "ours": (14, 6)},
                                                tmp_path / "profile"))
    _check(reproduce_muennighoff.epochs_figure(
        {"published R*": reproduce_muennighoff.MUENNIGHOFF_2023_R_STAR},
        reproduce_muennighoff.MUENNIGHOFF_2023_BASE, (1e20, 1e22), tmp_path / "epochs"))

    setups = [reproduce_porian.SetupResult(ds, f"set-up {k}", "f.csv", 0.5 + 0.1 * k, (0.45 + 0.1 * k, 0.55 + 0.1 * k),
                                           5, 6, 0.52 + 0.1 * k, (0.5 + 0.1 * k, 0.54 + 0.1 * k), [])
              for ds in ("rw", "owt2") for k in range(4)]
    _check(reproduce_porian.figure(setups, tmp_path / "porian", "95% bootstrap percentile CI"))
    assert drawn == {"problems": [], "count": 5}


def test_mup_figures(tmp_path, drawn):
    """The μP coordinate-check and LR-transfer figures, from synthetic records (SP grows, μP flat)."""
    widths, steps, layers = (32, 64, 128, 256), (0, 2, 4), ["logits", "block0.mlp_out"]
    records = [{"parametrization": p, "width": w, "step": t, "layer": layer,
                "rms": (1 + t) * (w / 32 if p == "sp" else 1.0)}
               for p in ("sp", "mup") for w in widths for t in steps for layer in layers]
    _check(mup_figures.coord_sizes(records, tmp_path / "coord", layers=layers))
    lrs = np.geomspace(1e-3, 1e-1, 5)
    points = [{"parametrization": p, "width": w, "lr": lr,
               "loss": 2 + (np.log(lr) - np.log(5e-3 * (32 / w if p == "sp" else 1))) ** 2 / 10}
              for p in ("sp", "mup") for w in widths[:3] for lr in lrs]
    optima = [{"parametrization": p, "width": w, "best": 5e-3, "edge": False} for p in ("sp", "mup") for w in widths[:3]]
    _check(mup_figures.lr_transfer(points, optima, tmp_path / "lr"))
    assert drawn == {"problems": [], "count": 2}
