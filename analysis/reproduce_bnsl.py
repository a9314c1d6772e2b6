"""`scaling reproduce bnsl`: Caballero et al.'s (2022) broken power law on 4-digit addition.

    scaling reproduce bnsl --data ../shared/data/caballero2022_bnsl_4digit_addition.csv

Fit on the rows with split = fit (training set size x, test cross-entropy y), extrapolate to the
held-out rows (split = extrapolate), and compare with a plain power law + constant
(y = E + (x_c/x)^alpha, laws.kaplan("D", irreducible=True)) fitted to the same rows.
Their protocol: a grid search, then least squares on log(y + 1). Ours: the project engine, the
sum of Huber(delta=1e-3) on log y residuals minimised by L-BFGS from every point of the law's
start grid (laws.bnsl: 1008 starts over floor, scale, both exponents, break location and
sharpness), bootstrap percentile CIs over the fit rows. The score is theirs: RMSLE =
sqrt(mean((log(1 + y_pred) - log(1 + y))^2)) on the held-out rows.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pandas as pd

from analysis import figures, fit, laws, results, style

COLUMNS = ("train_dataset_size", "test_cross_entropy", "split")
SPLITS = ("fit", "extrapolate")


def load_curve(path) -> pd.DataFrame:
    """Caballero's learning curve: x (training set size), y (test cross-entropy), split."""
    raw = results.read_published(path, COLUMNS, "caballero2022_bnsl_4digit_addition.csv", "BNSL")
    bad = sorted(set(raw.split) - set(SPLITS))
    if bad:
        raise ValueError(f"{path}: column 'split' has value(s) {bad}; valid: {list(SPLITS)}")
    return pd.DataFrame({"x": raw.train_dataset_size.astype(float),
                         "y": raw.test_cross_entropy.astype(float), "split": raw.split})


def rmsle(pred, y) -> float:
    """Caballero et al.'s score: sqrt(mean((log(1 + pred) - log(1 + y))^2))."""
    return float(np.sqrt(np.mean((np.log1p(pred) - np.log1p(y)) ** 2)))


def run_bnsl(data, out, *, starts=None, n_bootstrap=200, seed=0) -> dict:
    """Fit BNSL and power law + constant on split=fit, score both on split=extrapolate, figure."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = load_curve(data)
    tr, ho = df[df.split == "fit"], df[df.split == "extrapolate"]
    if ho.empty:
        raise ValueError(f"{data}: no rows with split = 'extrapolate' to score the extrapolation on")
    fits = {"BNSL (1 break)": fit.fit(laws.bnsl("D"), {"D": tr.x}, tr.y, starts=starts,
                                      n_bootstrap=n_bootstrap, seed=seed),
            "power law + constant": fit.fit(laws.kaplan("D", irreducible=True), {"D": tr.x}, tr.y,
                                            n_bootstrap=n_bootstrap, seed=seed)}
    scores = {name: {"rmsle_extrapolate": rmsle(f.predict(D=ho.x.to_numpy()), ho.y.to_numpy()),
                     "rmsle_fit": rmsle(f.predict(D=tr.x.to_numpy()), tr.y.to_numpy()),
                     "pred_extrapolate": f.predict(D=ho.x.to_numpy()).tolist()}
              for name, f in fits.items()}
    files = _figure(tr, ho, fits, scores, out / "extrapolation")
    summary = {"data": str(data), "n_fit": len(tr), "n_extrapolate": len(ho),
               "x_extrapolate": ho.x.tolist(), "y_extrapolate": ho.y.tolist(),
               "fits": {k: f.to_dict() for k, f in fits.items()}, "scores": scores,
               "files": [str(f) for f in files] + [str(out / "reproduce.json")]}
    (out / "reproduce.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    summary["fit_objs"] = fits
    return summary


def _figure(tr, ho, fits, scores, out) -> list[pathlib.Path]:
    fig, ax = style.subplots()
    ax.plot(tr.x, tr.y, "o", color="k", label="fit rows")
    ax.plot(ho.x, ho.y, "s", mfc="none", color="0.4", ms=7, label="held-out rows (extrapolate)")
    xs = np.geomspace(tr.x.min(), ho.x.max() * 1.1, 200)
    for k, (name, f) in enumerate(fits.items()):
        ax.plot(xs, f.predict(D=xs), color=style.colour(k, len(fits)), ls=style.LINESTYLES[k],
                label=f"{name}: held-out RMSLE {scores[name]['rmsle_extrapolate']:.3g}")
    ax.axvline(tr.x.max(), color="grey", lw=0.7, ls=":")
    ax.set(xscale="log", yscale="log", xlabel="training set size (examples)",
           ylabel="test cross-entropy (nats)")
    ax.set_title("Caballero et al. 2022, 4-digit addition: fit left of the line, extrapolate right")
    ax.legend()
    return figures.save(fig, out)
