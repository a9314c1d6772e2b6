"""Kaplan et al. (2020) single-variable power laws, fitted with the shared engine (analysis.fit).

    L(N) = (N_c / N)^α_N,   L(D) = (D_c / D)^α_D,   L(C) = (C_c / C)^α_C,   each optionally + E.

N is the NON-embedding parameter count (Kaplan's convention; pass `n_params_nonembed`), D the
training tokens, C the training compute in whatever unit you pass (FLOPs here; Kaplan used
PF-days, 1 PF-day = 8.64e19 FLOP): X_c comes back in the unit of X. Kaplan fitted L(N) on
models trained to convergence and L(C) on the compute-efficient frontier; this module only
fits what it is given. Their published values: α_N = 0.076, N_c = 8.8e13; α_D = 0.095,
D_c = 5.4e13; α_C^min = 0.050, C_c^min = 3.1e8 PF-days.

`fit_power_law(var, x, loss)` fits one of them (reported params X_c, alpha_X[, E]); `fit_n`,
`fit_d`, `fit_c` fix var; `frontier` gives the lower envelope of loss over C that Kaplan fitted L(C) to.
"""
from __future__ import annotations

import numpy as np

from analysis import fit as fitlib
from analysis import laws

KAPLAN_2020 = {
    "N": {"N_c": 8.8e13, "alpha_N": 0.076},
    "D": {"D_c": 5.4e13, "alpha_D": 0.095},
    "C": {"C_c": 3.1e8, "alpha_C": 0.050},  # C_c in PF-days (compute-efficient frontier)
}


def fit_power_law(var: str, x, loss, *, irreducible: bool = False, **fit_kwargs) -> fitlib.Fit:
    """Fit L(X) = (X_c/X)^α_X (+ E) by the Huber/L-BFGS engine (see analysis.fit.fit)."""
    law = laws.kaplan(var, irreducible)
    return fitlib.fit(law, {var: x}, loss, **fit_kwargs)


def fit_n(n_params_nonembed, loss, **kw) -> fitlib.Fit:
    """L(N), N = non-embedding parameters."""
    return fit_power_law("N", n_params_nonembed, loss, **kw)


def fit_d(tokens, loss, **kw) -> fitlib.Fit:
    """L(D), D = training tokens."""
    return fit_power_law("D", tokens, loss, **kw)


def fit_c(compute, loss, **kw) -> fitlib.Fit:
    """L(C), C = training compute (unit of C_c = unit passed)."""
    return fit_power_law("C", compute, loss, **kw)


def frontier(C, loss):
    """Points on the compute-efficient frontier: those with a lower loss than every point with
    less compute. Returns (C_f, loss_f) sorted by C."""
    C, loss = np.asarray(C, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    if C.shape != loss.shape or C.ndim != 1 or len(C) == 0:
        raise ValueError(f"frontier: C and loss must be 1-D of equal length, got {C.shape}, {loss.shape}")
    order = np.lexsort((loss, C))
    c, l = C[order], loss[order]
    best_before = np.r_[np.inf, np.minimum.accumulate(l)[:-1]]
    on = l < best_before
    return c[on], l[on]
