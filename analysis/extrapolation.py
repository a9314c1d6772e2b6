"""The extrapolation check: fit on the smaller isoFLOP budgets, predict the largest one's runs.

Used by the sweep report (analysis.report); the one place this check is defined.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from analysis import chinchilla, laws, predict, workflows


def held_out_budget(df, *, n_starts: int = 0, n_bootstrap: int = 200, level: float = 0.9) -> dict:
    """Fit on all budgets but the largest; predict the largest budget's runs and optimum.

    Two predictions, each compared with what the held-out runs measured:
    - Approach 3's L(N, D) for every held-out run, with its `level` prediction interval
      (analysis.predict: bootstrap + run-to-run noise) and whether the measured loss is inside.
      Its parameters may not be individually identified on a small sweep (E especially), so the
      identifiability check is off here: what is tested is the fitted surface's prediction.
    - The held-out budget's N_opt from a power law through the smaller budgets'
      isoFLOP optima (Approach 2 vertices) against the held-out budget's own vertex.
    """
    budgets = np.sort(df.budget.dropna().unique()) if "budget" in df else np.array([])
    if len(budgets) < 3:
        raise ValueError(f"the extrapolation check needs >= 3 isoFLOP budgets, the sweep has {len(budgets)}")
    df = df.sort_values("n_params").reset_index(drop=True)
    held = (df.budget == budgets[-1]).to_numpy()
    train = df[~held]
    s = predict.fit_masks(laws.chinchilla(), df, ~held[None], n_bootstrap=n_bootstrap, check=False,
                          starts=workflows.starts_subset(laws.chinchilla(), n_starts))[0]
    test = df[held]
    pred = predict.loss_interval(s, {"N": test.n_params, "D": test.tokens}, level=level)
    meas = test.loss.to_numpy(float)
    err = pred.value - meas
    inside = (pred.lo <= meas) & (meas <= pred.hi)
    out = {"held_out_budget": float(budgets[-1]), "fit_budgets": [float(b) for b in budgets[:-1]],
           "params": {k: float(v) for k, v in s.law.to_reported(s.theta).items()},
           "level": level, "kind": pred.kind, "noise": dataclasses.asdict(pred.noise),
           "n_bootstrap": pred.n_bootstrap,
           "runs": [{"run_id": pathlib.Path(r).name, "n_params": int(n), "tokens": int(d),
                     "measured": float(m), "predicted": float(v), "lo": float(lo), "hi": float(hi),
                     "inside": bool(i)}
                    for r, n, d, m, v, lo, hi, i in zip(test.run_dir, test.n_params, test.tokens, meas,
                                                        pred.value, pred.lo, pred.hi, inside)],
           "n_inside": int(inside.sum()),
           "mean_abs_error": float(np.mean(np.abs(err))), "max_abs_error": float(np.max(np.abs(err))),
           "mean_rel_error": float(np.mean(np.abs(err) / meas)),
           "best_measured": float(meas.min()), "best_predicted": float(pred.value.min())}
    # the compute-optimal size: Approach 2's N_opt(C) power law from the smaller budgets
    out["optimum"] = {}
    try:
        small = chinchilla.approach2(train.flops_6nd, train.n_params, train.loss, budget=train.budget)
        full = chinchilla.approach2(df.flops_6nd, df.n_params, df.loss, budget=df.budget)
    except ValueError as e:  # too few budgets with an interior minimum: no N_opt comparison
        out["optimum"]["n_opt_note"] = str(e)
        return out
    (own,) = [p for p in full.parabolas if p.label == budgets[-1]]
    if own.reason:
        out["optimum"]["n_opt_note"] = f"the held-out budget {own.describe()} has no N_opt: {own.reason}"
    else:
        out["optimum"].update(n_opt_predicted=float(small.n_opt(budgets[-1])), n_opt_measured=own.n_opt)
    out["optimum"]["warnings"] = small.warnings
    return out
