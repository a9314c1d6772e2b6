"""The one house style of every figure the project draws (matplotlib, Agg).

    from analysis import style
    fig, ax = style.subplots("Title")
    ax.plot(x, y, label="fit", **style.series(0, 3))
    ax.set(xscale="log", xlabel=style.C_LABEL, ylabel=style.LOSS_LABEL)
    ax.legend()
    style.save(fig, "figs/name")          # -> figs/name.png and figs/name.pdf

What it owns:
- fonts and sizes (`RC`: STIX serif text and maths, paper-sized labels; applied on import);
- colours that survive greyscale printing: the perceptually uniform `CMAP` (viridis, luminance
  rises monotonically), and for discrete series `series(i, n)`, which pairs a viridis colour with a
  distinct marker and line style so series stay apart without colour;
- axis labels with units (the `*_LABEL` constants; every label ends in "(unit)" from `UNITS`);
- at save time: log-axis ticks chosen so that no two tick labels overlap (checked on the rendered
  figure), and legends moved off the data (checked on the rendered figure: no data point under a
  legend box; else another corner, else outside the axes);
- a vector PDF beside every PNG.
"""
from __future__ import annotations

import itertools
import math
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

RC = {
    "font.family": "STIXGeneral", "mathtext.fontset": "stix",  # Times-like text and maths, as in papers
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "figure.titlesize": 10.5,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 7.5, "legend.framealpha": 0.9,
    "axes.grid": True, "grid.alpha": 0.25, "grid.linewidth": 0.5, "axes.linewidth": 0.7,
    "lines.linewidth": 1.4, "lines.markersize": 4.5, "image.cmap": "viridis",
    "pdf.fonttype": 42, "savefig.dpi": 150,  # TrueType in the PDF: text stays text, editable
}
matplotlib.rcParams.update(RC)

CMAP = "viridis"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (1, 3)))

# Units an axis label may end in, "(unit)"; a ratio or exponent says "(unitless)".
UNITS = ("parameters", "tokens", "FLOPs", "nats/token", "nats", "examples", "epochs", "repetitions",
         "count", "unitless", "categorical")
N_LABEL = "model size N (parameters)"
N_NONEMBED_LABEL = "non-embedding model size N (parameters)"
D_LABEL = "training data D (tokens)"
C_LABEL = "training compute C (FLOPs)"
C6ND_LABEL = "compute C = 6ND (FLOPs)"
LOSS_LABEL = "loss (nats/token)"
RESIDUAL_LABEL = "residual ln(L_obs / L_pred) (unitless)"


def colour(i: int, n: int):
    """The i-th of n colours along viridis, stopping short of its pale yellow end (invisible on
    white paper); luminance rises with i, so the order survives greyscale."""
    return plt.get_cmap(CMAP)(0.85 * i / max(n - 1, 1))


def series(i: int, n: int) -> dict:
    """Plot keywords (color, marker, linestyle) of the i-th of n series."""
    return {"color": colour(i, n), "marker": MARKERS[i % len(MARKERS)],
            "linestyle": LINESTYLES[i % len(LINESTYLES)]}


def subplots(title: str | None = None, ncols: int = 1, figsize=(5.5, 4.0), **kw):
    """A figure in the house style with constrained layout (and a suptitle when given)."""
    fig, ax = plt.subplots(1, ncols, figsize=figsize, constrained_layout=True, **kw)
    if title:
        fig.suptitle(title)
    return fig, ax


def save(fig, out) -> list[pathlib.Path]:
    """Settle legends and log ticks on the rendered figure, write out.png (150 dpi) and the vector
    out.pdf, close the figure; return both paths."""
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    finish(fig)
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths


def finish(fig) -> None:
    """Make the figure readable before it is written: vector colorbars, log-axis ticks whose
    labels do not collide, legends off the data. Each step measures the laid-out figure (one
    layout pass each, ticks again if a legend had to move outside and so narrowed the axes)."""
    for ax in fig.axes:  # matplotlib rasterises colorbar gradients of >= 50 colours: keep them vector
        for coll in ax.collections:
            coll.set_rasterized(False)
    log_axes = [axis for ax in fig.axes for axis in (ax.xaxis, ax.yaxis) if axis.get_scale() == "log"]
    fig.draw_without_rendering()  # lay out once: positions and text sizes below are measured on it
    for axis in log_axes:
        log_ticks(fig, axis)
    legends = [ax for ax in fig.axes if ax.get_legend() is not None]
    if legends:
        fig.draw_without_rendering()
        if sum(_place_legend(fig, ax) for ax in legends) and log_axes:
            fig.draw_without_rendering()  # a legend moved outside: the axes shrank
            for axis in log_axes:
                log_ticks(fig, axis)


# ----- log-axis ticks --------------------------------------------------------------------------


def log_label(v: float, plain: bool = True) -> str:
    """A log-axis tick label: plain digits when `plain` (losses, ratios: every tick of the axis
    between 0.01 and 10^4), else m×10^e in maths (1×10^e written 10^e)."""
    if v <= 0 or not math.isfinite(v):
        return ""
    if plain:
        return f"{v:g}"
    e = math.floor(math.log10(v) + 1e-9)
    m = v / 10 ** e
    return f"$10^{{{e}}}$" if abs(m - 1) < 1e-6 else f"${m:.3g}\\times10^{{{e}}}$"


def _plain(values) -> bool:
    """One notation per axis: plain digits only if every label would be plain."""
    return all(1e-2 <= v < 1e4 for v in values)


def label_gaps(fig, axis, values) -> list[float]:
    """Free space in pixels between neighbouring tick labels at `values` along the axis, on the
    laid-out figure (negative: they overlap). Labels are centred on their ticks."""
    renderer = fig.canvas.get_renderer()
    prop = axis.get_major_ticks()[0].label1.get_fontproperties()
    horizontal = axis.axis_name == "x"
    pos, size, plain = [], [], _plain(values)
    for v in values:
        text = log_label(v, plain)
        w, h, _ = renderer.get_text_width_height_descent(text, prop, ismath="$" in text)
        xy = (v, 1.0) if horizontal else (1.0, v)
        pos.append(axis.axes.transData.transform(xy)[0 if horizontal else 1])
        size.append(w if horizontal else h)
    return [abs(b - a) - (sa + sb) / 2 for a, b, sa, sb in zip(pos, pos[1:], size, size[1:])]


def log_ticks(fig, axis) -> None:
    """Choose a log axis' labelled ticks: the densest of (narrow ranges) round linear steps, 1-2-5,
    1-3, every decade, every 2nd, 3rd, 5th, 10th decade that shows >= 2 labels with at least a
    third of the font size of space between neighbours; the other decade subdivisions stay as
    unlabelled minor ticks."""
    lo, hi = sorted(axis.get_view_interval())
    if lo <= 0:
        return
    decades = math.log10(hi / lo)
    candidates = [_tick_values((1.0,), stride, lo, hi) for stride in (1, 2, 3, 5, 10)]
    if decades < 2:  # 1-2-5 and 1-3 within each decade, densest first
        candidates[:0] = [_tick_values((1.0, 2.0, 5.0), 1, lo, hi), _tick_values((1.0, 3.0), 1, lo, hi)]
    if decades < 1:  # under a decade: every integer multiple, if the labels fit
        candidates.insert(0, _tick_values(tuple(float(m) for m in range(1, 10)), 1, lo, hi))
    if decades < 0.5:  # a narrow range: round values as on a linear axis (2.5e5, 3e5, ...)
        for nbins in (3, 5):
            candidates.insert(0, [v for v in ticker.MaxNLocator(nbins, steps=[1, 2, 2.5, 5, 10])
                                  .tick_values(lo, hi) if lo <= v <= hi])
    min_gap = axis.get_major_ticks()[0].label1.get_fontsize() / 3 * fig.dpi / 72
    fitting = [v for v in candidates if all(g >= min_gap for g in label_gaps(fig, axis, v))]
    chosen = next((v for v in fitting if len(v) >= 2), fitting[0] if fitting else candidates[-1][:1])
    axis.set_major_locator(ticker.FixedLocator(chosen))
    plain = _plain(chosen)
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: log_label(v, plain)))
    axis.set_minor_locator(ticker.LogLocator(subs=np.arange(2, 10)))
    axis.set_minor_formatter(ticker.NullFormatter())


def _tick_values(subs, stride: int, lo: float, hi: float) -> list[float]:
    """m x 10^e for m in subs and e a multiple of stride, inside [lo, hi] (a hair of slack)."""
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    return [m * 10.0 ** e for e in range(e0, e1 + 1) if e % stride == 0 for m in subs
            if lo * (1 - 1e-9) <= m * 10.0 ** e <= hi * (1 + 1e-9)]


# ----- legends off the data ---------------------------------------------------------------------


def data_points(ax) -> np.ndarray:
    """Display coordinates (K, 2) of the data an axes shows: scatter points, the markers and the
    drawn path of data lines (sampled every few pixels, steps included), errorbars and patch
    outlines (histograms). Reference lines in axes coordinates (axhline, axvline) are not data."""
    pts = []
    for line in ax.get_lines():
        if line.get_transform() is not ax.transData or not line.get_visible():
            continue
        xy = line.get_xydata()
        if line.get_drawstyle().startswith("steps") and len(xy) > 1:  # the staircase actually drawn
            xy = np.repeat(xy, 2, axis=0)[1:-1]
            xy[1::2, 1] = xy[0::2, 1]
        d = line.get_transform().transform(xy)
        pts.append(_densify(d) if line.get_linestyle() not in ("None", "", " ") else d)
    for coll in ax.collections:
        if not coll.get_visible():
            continue
        if coll.get_offset_transform() is ax.transData and len(coll.get_offsets()):
            pts.append(ax.transData.transform(coll.get_offsets()))
        if coll.get_transform() is ax.transData and hasattr(coll, "get_segments"):
            pts += [_densify(ax.transData.transform(s)) for s in coll.get_segments() if len(s)]
    for patch in ax.patches:
        path = patch.get_path().transformed(patch.get_transform())
        pts.append(_densify(path.vertices))
    pts = [p for p in pts if len(p)]
    return np.concatenate(pts) if pts else np.zeros((0, 2))


def _densify(xy, step: float = 3.0) -> np.ndarray:
    """Points along a polyline in display space, at most `step` pixels apart."""
    xy = xy[np.isfinite(xy).all(axis=1)]
    if len(xy) < 2:
        return xy
    out = [xy[:1]]
    for a, b in zip(xy[:-1], xy[1:]):
        k = max(1, int(np.hypot(*(b - a)) / step))
        out.append(a + (b - a) * np.linspace(0, 1, k + 1)[1:, None])
    return np.concatenate(out)


def covered(fig, ax) -> int:
    """How many of the axes' data points lie under its legend box (on the rendered figure)."""
    fig.draw_without_rendering()
    box = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
    return _inside(data_points(ax), (box.x0, box.y0, box.x1, box.y1))


def _inside(p, box) -> int:
    x0, y0, x1, y1 = box
    return int(((p[:, 0] > x0) & (p[:, 0] < x1) & (p[:, 1] > y0) & (p[:, 1] < y1)).sum())


# corners and edges tried in turn (loc, horizontal, vertical), then outside, right of the axes
_INSIDE = (("upper right", 1, 1), ("upper left", 0, 1), ("lower left", 0, 0), ("lower right", 1, 0),
           ("center right", 1, 0.5), ("center left", 0, 0.5), ("upper center", 0.5, 1),
           ("lower center", 0.5, 0))


def _place_legend(fig, ax) -> bool:
    """Put the legend where it covers no data (on the laid-out figure); True if it had to go
    outside the axes. A legend the caller anchored elsewhere is left alone."""
    legend = ax.get_legend()
    if legend.get_bbox_to_anchor() is not ax.bbox:
        return False
    renderer = fig.canvas.get_renderer()
    w, h = legend.get_window_extent(renderer).size
    pad = renderer.points_to_pixels(legend.borderaxespad * legend.prop.get_size_in_points())
    a, pts = ax.bbox, data_points(ax)
    for loc, fx, fy in _INSIDE:  # the box the legend would occupy at loc, as matplotlib places it
        x0 = a.x0 + pad + fx * (a.width - w - 2 * pad)
        y0 = a.y0 + pad + fy * (a.height - h - 2 * pad)
        if _inside(pts, (x0, y0, x0 + w, y0 + h)) == 0:
            legend.set_loc(loc)
            return False
    legend.set_loc("upper left")
    legend.set_bbox_to_anchor((1.02, 1.0), transform=ax.transAxes)
    return True
