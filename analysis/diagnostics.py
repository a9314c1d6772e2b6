"""Warnings about a fitted optimum: what to look at before trusting its parameters.

`fit_warnings` is run by analysis.fit.fit on every fit; its lines travel in `Fit.warnings` and
are printed by the CLI and the report as `warning: ...`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from analysis.laws import Law

# "At the bound": the fit is unconstrained in fit space, so a parameter reaches a bound of the
# law's domain only in a limit. A log-coefficient (fit-space names a, b, e: log A, log B, log E)
# is at its lower bound 0 when its term contributes less than BOUND_REL of the predicted loss
# at every data point (removing the term would change no prediction by more than 0.1%). An
# exponent (alpha*, beta*) is at its lower bound 0 when it is <= EXPONENT_MIN: the power law is
# flat (or rising) over the data.
BOUND_REL = 1e-3
EXPONENT_MIN = 1e-3
CURVATURE_SE = 2.0  # the data's curvature has the wrong sign when it is this many SEs below 0


def _reported_affected(law: Law, theta, i: int) -> list[str]:
    """The reported parameters that change when fit-space parameter i changes."""
    bumped = np.array(theta, dtype=np.float64)
    bumped[i] += 1.0
    a, b = law.to_reported(theta), law.to_reported(bumped)
    return [k for k in law.reported_names if not np.isclose(a[k], b[k], rtol=1e-12, atol=0)]


def _curvature(logx, logy):
    """x_i² coefficients of a full quadratic least-squares fit of log L in log x, and their SEs
    (None when there are too few points to estimate them)."""
    n, q = logx.shape
    xc = logx - logx.mean(0)
    cols = [np.ones(n), *xc.T] + [xc[:, i] * xc[:, j] for i in range(q) for j in range(i, q)]
    X = np.column_stack(cols)
    dof = n - X.shape[1]
    if dof <= 0:
        return None
    coef, *_ = np.linalg.lstsq(X, logy, rcond=None)
    s2 = np.sum((logy - X @ coef) ** 2) / dof
    cov = s2 * np.linalg.pinv(X.T @ X)
    sq = [1 + q + k for k, (i, j) in enumerate((i, j) for i in range(q) for j in range(i, q)) if i == j]
    return coef[sq], np.sqrt(np.maximum(np.diag(cov)[sq], 0.0))


def fit_warnings(law: Law, theta, logx, logy, *, n_starts: int, n_at_best: int,
                 objective: float) -> list[str]:
    """Why a fitted optimum may mislead: a parameter at a bound of the law's domain, data curving
    the wrong way for an irreducible term, or a best objective reached from a single start.
    logx [N, I], logy [N]: the logs of the points the fit used."""
    theta = np.asarray(theta, dtype=np.float64)
    out = []
    with jax.enable_x64(True):
        base = np.asarray(law.log_predict(jnp.asarray(theta), jnp.asarray(logx)))
        for i, name in enumerate(law.param_names):
            if name.startswith(("alpha", "beta")):
                if theta[i] <= EXPONENT_MIN:
                    out.append(f"{name} = {theta[i]:.3g} is at the lower bound 0 of the law's "
                               f"domain (<= {EXPONENT_MIN:g}): the power law is flat or rising")
                continue
            off = theta.copy()
            off[i] = -1e4  # the term's coefficient -> 0
            without = np.asarray(law.log_predict(jnp.asarray(off), jnp.asarray(logx)))
            if np.all(np.abs(base - without) < BOUND_REL):
                names = "/".join(_reported_affected(law, theta, i)) or name
                out.append(f"{names} is at the lower bound 0 of the law's domain: its term is < "
                           f"{100 * BOUND_REL:g}% of the predicted loss at every point, so the law "
                           f"has collapsed to a simpler one")
    if law.irreducible and (curv := _curvature(logx, logy)) is not None:
        for name, c, se in zip(law.inputs, *curv):
            if c + CURVATURE_SE * se < 0:
                out.append(f"log loss curves downward in log {name} (x² coefficient {c:.3g}, SE "
                           f"{se:.2g}): a law with an irreducible term curves upward (flattening "
                           f"toward E), so the data do not support E")
    if n_starts > 1 and n_at_best == 1:
        out.append(f"only 1 of {n_starts} starts reached the best objective "
                   f"{objective:.6g}: the optimum may be a narrow basin; refit with more starts")
    return out
