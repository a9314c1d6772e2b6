"""The extrapolation check: fit on the smaller isoFLOP budgets, predict the largest one's runs.

Used by the sweep report (analysis.report); the one place this check is defined.
"""
from __future__ import annotations

import pathlib

import numpy as np

from analysis import chinchilla, laws, workflows


def held_out_budget(df, *, n_starts: int = 0) -> dict:
    """Fit on all budgets but the largest; predict the largest budget's runs and optimum.

    Two predictions, each compared with what the held-out runs measured:
    - Approach 3's L(N, D) for every held-out run. Its parameters may not be individually
      identified on a small sweep (E especially), so the identifiability check is off here: what
      is tested is the fitted surface's prediction, not its parameters.
    - The held-out budget's N_opt from a power law through the smaller budgets'
      isoFLOP optima (Approach 2 vertices) against the held-out budget's own vertex.
    """
    budgets = np.sort(df.budget.dropna().unique()) if "budget" in df else np.array([])
    if len(budgets) < 3:
        raise ValueError(f"the extrapolation check needs >= 3 isoFLOP budgets, the sweep has {len(budgets)}")
    held = df.budget == budgets[-1]
    train = df[~held]
    starts = workflows.starts_subset(laws.chinchilla(), n_starts)
    f = chinchilla.approach3({"N": train.n_params, "D": train.tokens}, train.loss, starts=starts, check=False)
    test = df[held].sort_values("n_params")
    pred = f.predict(N=test.n_params.to_numpy(float), D=test.tokens.to_numpy(float))
    meas = test.loss.to_numpy(float)
    err = pred - meas
    out = {"held_out_budget": float(budgets[-1]), "fit_budgets": [float(b) for b in budgets[:-1]],
           "fit": f.to_dict(),
           "runs": [{"run_id": pathlib.Path(r).name, "n_params": int(n), "tokens": int(d),
                     "measured": float(m), "predicted": float(p)}
                    for r, n, d, m, p in zip(test.run_dir, test.n_params, test.tokens, meas, pred)],
           "mean_abs_error": float(np.mean(np.abs(err))), "max_abs_error": float(np.max(np.abs(err))),
           "mean_rel_error": float(np.mean(np.abs(err) / meas)),
           "best_measured": float(meas.min()), "best_predicted": float(pred.min())}
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
