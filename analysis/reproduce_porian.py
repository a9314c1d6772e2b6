"""`scaling reproduce porian`: Approach 2 per training set-up on Porian et al.'s (2024) isoFLOP grids.

    scaling reproduce porian --data ../shared/data/porian2024_isoflop_points.csv

For every set-up (a `label` within a data set and source file of porian2024_isoflop_points.csv)
we run the project's Approach 2 (analysis.chinchilla.approach2: per budget a least-squares
parabola of loss in log N, its vertex N_opt(C), a power law N_opt ∝ C^a through the vertices;
budgets with < 4 sizes, no interior minimum or a flat parabola left out, as warnings) with a
bootstrap percentile interval over the points within each budget, and put their exponent a
(porian2024_exponent_fits.csv, next to the data file) beside it with their 95% seed-noise
bootstrap interval. Why the numbers differ: they interpolate each isoFLOP curve with an Akima
spline (no parabola: asymmetric curves move their minimum, not ours) and bootstrap over seed
noise; we fit parabolas in log N and resample points. Order of the set-ups: as the corrections
are applied in their Figure 1 (the order of their exponent file).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import warnings

import numpy as np
import pandas as pd

from analysis import chinchilla, figures, style
from analysis.results import read_published

POINT_COLUMNS = ("source_file", "dataset", "label", "flops", "n_params", "loss")
FIT_COLUMNS = ("source_file", "dataset", "label", "a_n_exponent", "a_ci95_lo", "a_ci95_hi")
EXPONENT_FILE = "porian2024_exponent_fits.csv"
THEIR_CI_KIND = "95% seed-noise bootstrap (Porian et al.)"
KEY = ["source_file", "dataset", "label"]


@dataclasses.dataclass
class SetupResult:
    """One set-up's exponent a of N_opt ∝ C^a: ours and theirs."""

    dataset: str  # "rw" (RefinedWeb) or "owt2" (OpenWebText2)
    label: str  # the set-up, as their Figure 1 names it
    source_file: str  # their summary file (which FLOP/parameter counting it uses)
    a: float | None  # ours (Approach 2, parabolas in log N); None when Approach 2 refused
    a_ci: tuple | None  # ours: bootstrap percentile interval over points within budgets
    n_budgets: int  # budgets with an interior minimum that our power law used
    n_budgets_total: int  # budgets in the grid
    a_theirs: float  # theirs (Akima interpolation)
    a_theirs_ci: tuple  # theirs: THEIR_CI_KIND
    notes: list  # budgets left out, bootstrap notes, refusals


def fit_setups(points: pd.DataFrame, theirs: pd.DataFrame, *, n_bootstrap=200, seed=0,
               ci=0.95) -> list[SetupResult]:
    """Approach 2 for each set-up of `theirs` (in its order) on its isoFLOP points."""
    out = []
    for _, row in theirs.iterrows():
        g = points[(points[KEY] == row[KEY]).all(axis=1)]
        notes, a, a_ci, kept = [], None, None, 0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = chinchilla.approach2(g.flops, g.n_params, g.loss, budget=g.flops.to_numpy(),
                                         n_bootstrap=n_bootstrap, seed=seed, ci=ci)
            a, kept, notes = s.a, len(s.points["C"]), list(s.warnings)
            a_ci = (s.ci or {}).get("a")
        except ValueError as e:
            notes.append(f"approach2 refused: {e}")
        out.append(SetupResult(row.dataset, row.label, row.source_file, a,
                               None if a_ci is None else tuple(map(float, a_ci)), kept,
                               int(g.flops.nunique()), float(row.a_n_exponent),
                               (float(row.a_ci95_lo), float(row.a_ci95_hi)), notes))
    return out


def figure(results: list[SetupResult], out, ci_label: str) -> list[pathlib.Path]:
    """Their Figure 1 in spirit: the exponent a per set-up, in the order of the corrections."""
    datasets = list(dict.fromkeys(r.dataset for r in results))
    fig, axes = style.subplots("Porian et al. 2024: the exponent as the corrections are applied "
                               "(top to bottom)", ncols=len(datasets),
                               figsize=(5.0 * len(datasets), 5.0), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        rs = [r for r in results if r.dataset == ds]
        y = np.arange(len(rs))
        th = np.array([r.a_theirs for r in rs])
        th_err = np.abs(np.array([r.a_theirs_ci for r in rs]).T - th)
        ax.errorbar(th, y + 0.12, xerr=th_err, fmt="s", color=style.colour(0, 2), label=f"theirs, {THEIR_CI_KIND}")
        ok = [i for i, r in enumerate(rs) if r.a is not None]
        ours = np.array([rs[i].a for i in ok])
        err = np.array([[abs(rs[i].a - rs[i].a_ci[0]), abs(rs[i].a_ci[1] - rs[i].a)]
                        if rs[i].a_ci else [0, 0] for i in ok]).T
        ax.errorbar(ours, y[ok] - 0.12, xerr=err, fmt="o", mfc="none", color="k", label=f"ours, {ci_label}")
        for v, name in ((0.88, "Kaplan ~0.88"), (0.5, "Chinchilla ~0.5")):
            ax.axvline(v, color="grey", ls=":", lw=0.8)
            ax.text(v, len(rs) - 0.4, name, fontsize=7, ha="center")
        ax.set_yticks(y, [r.label for r in rs], fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel="exponent a of N_opt ∝ C^a (unitless)", ylabel="set-up (categorical)",
               title=f"data set {ds}")
        ax.legend()
    return figures.save(fig, out)


def run_porian(data, out, *, n_bootstrap=200, seed=0, ci=0.95) -> dict:
    """Every set-up's Approach 2 exponent next to theirs; table.csv, figure, reproduce.json."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    points = read_published(data, POINT_COLUMNS, "porian2024_isoflop_points.csv", "Porian")
    theirs = read_published(pathlib.Path(data).parent / EXPONENT_FILE, FIT_COLUMNS, EXPONENT_FILE, "Porian")
    results = fit_setups(points, theirs, n_bootstrap=n_bootstrap, seed=seed, ci=ci)
    ci_label = f"{100 * ci:.0f}% bootstrap percentile over points" if n_bootstrap else "no CI"
    table = pd.DataFrame([{**{k: v for k, v in dataclasses.asdict(r).items() if k != "notes"},
                           "our_ci_kind": ci_label, "their_ci_kind": THEIR_CI_KIND}
                          for r in results])
    table.to_csv(out / "table.csv", index=False)
    files = figure(results, out / "exponents", ci_label)
    summary = {"data": str(data), "n_setups": len(results), "our_ci_kind": ci_label,
               "their_ci_kind": THEIR_CI_KIND, "setups": [dataclasses.asdict(r) for r in results],
               "files": [str(f) for f in files] + [str(out / "table.csv"), str(out / "reproduce.json")]}
    (out / "reproduce.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    summary["results"] = results
    return summary
