"""Scaling-law functional forms, as pure JAX functions evaluated in log space.

Every law is a `Law`: a function `log_predict(theta_P, logx_NI) -> logL_N` of a flat vector of
fit-space parameters `theta_P` and the logs of the inputs (`logx_NI`, columns named by
`Law.inputs`), plus what a fit needs around it: the fit-space parameter names, how to map them
to the reported parameters (A = e^a, ...), and the default grid of starting points.

Fitting in log space (log L, log N, log D; positive constants as their logs) keeps the
parameters O(1) and the residuals relative; the logsumexp form log(E + A/N^α + B/D^β) =
LSE(a − α log N, b − β log D, e) is exact and never takes the log of a negative number.

`chinchilla()` and `kaplan(var, irreducible)` build the laws, `get(name)` finds one by name
("chinchilla", "kaplan-n", ..., optionally "+e"). Fit-space names follow one convention that
analysis.diagnostics relies on: a, b, e are log-coefficients of additive terms (log A, log B,
log E; Kaplan's a = alpha·log X_c), alpha* and beta* are exponents.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Law:
    """A functional form: what it predicts, from which inputs, with which parameters."""

    name: str
    formula: str  # human-readable, for reports and figure titles
    inputs: tuple[str, ...]  # columns of logx_NI, in order (their logs are passed)
    param_names: tuple[str, ...]  # fit-space parameters, order of theta_P
    reported_names: tuple[str, ...]  # reported parameters, keys of to_reported()
    log_predict: Callable  # (theta_P, logx_NI) -> log L_N, pure JAX
    to_reported: Callable  # numpy [..., P] -> {name: array [...]}
    start_grid: Callable  # () -> numpy [S, P] default starting points
    irreducible: bool  # has an additive constant E (needs curvature to be identified)

    @property
    def n_params(self) -> int:
        return len(self.param_names)


def grid(*axes) -> np.ndarray:
    """Cartesian product of 1-D axes -> [S, len(axes)] float64 array (first axis slowest)."""
    return np.array(list(itertools.product(*axes)), dtype=np.float64)


# ----- Chinchilla: L(N, D) = E + A / N^alpha + B / D^beta -----------------------------------


def _chinchilla_log_predict(theta_P, logx_NI):
    a, b, e, alpha, beta = (theta_P[i] for i in range(5))
    log_n, log_d = logx_NI[:, 0], logx_NI[:, 1]
    return _lse3(a - alpha * log_n, b - beta * log_d, e)


def _lse3(u, v, w):
    """log(e^u + e^v + e^w), elementwise; cheaper than a stacked logsumexp in the hot loop."""
    m = jnp.maximum(jnp.maximum(u, v), w)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    return m + jnp.log(jnp.exp(u - m) + jnp.exp(v - m) + jnp.exp(w - m))


def _chinchilla_reported(theta):
    theta = np.asarray(theta, dtype=np.float64)
    return {
        "E": np.exp(theta[..., 2]),
        "A": np.exp(theta[..., 0]),
        "B": np.exp(theta[..., 1]),
        "alpha": theta[..., 3],
        "beta": theta[..., 4],
    }


def _chinchilla_grid():
    ab = np.arange(0.0, 25.0 + 1e-9, 5.0)  # log A, log B
    e = np.arange(-1.0, 1.0 + 1e-9, 0.5)  # log E
    exps = np.arange(0.0, 2.0 + 1e-9, 0.5)  # alpha, beta
    return grid(ab, ab, e, exps, exps)  # 6*6*5*5*5 = 4500 starts


@functools.lru_cache(maxsize=None)
def chinchilla() -> Law:
    """Hoffmann et al. (2022) parametric loss L(N, D) = E + A/N^α + B/D^β (Approach 3)."""
    return Law(
        name="chinchilla",
        formula="L(N, D) = E + A / N^alpha + B / D^beta",
        inputs=("N", "D"),
        param_names=("a", "b", "e", "alpha", "beta"),
        reported_names=("E", "A", "B", "alpha", "beta"),
        log_predict=_chinchilla_log_predict,
        to_reported=_chinchilla_reported,
        start_grid=_chinchilla_grid,
        irreducible=True,
    )


# ----- Kaplan: L(X) = (X_c / X)^alpha_X (+ E) ------------------------------------------------


@functools.lru_cache(maxsize=None)  # one object per law: jit caches key on it
def kaplan(var: str = "N", irreducible: bool = False) -> Law:
    """Kaplan et al. (2020) power law in one variable X ∈ {N, D, C}, optionally + E.

    Fit space: log L = a − α log X (+ E via logsumexp), a = α log X_c, so X_c = exp(a / α).
    """
    if var not in ("N", "D", "C"):
        raise ValueError(f"kaplan law: var={var!r} is not one of 'N', 'D', 'C'")

    def log_predict(theta_P, logx_NI):
        power_N = theta_P[0] - theta_P[1] * logx_NI[:, 0]
        if not irreducible:
            return power_N
        e_N = jnp.broadcast_to(theta_P[2], power_N.shape)
        return jnp.logaddexp(power_N, e_N)

    def to_reported(theta):
        theta = np.asarray(theta, dtype=np.float64)
        a, alpha = theta[..., 0], theta[..., 1]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            x_c = np.exp(a / alpha)
        out = {f"{var}_c": x_c, f"alpha_{var}": alpha}
        if irreducible:
            out["E"] = np.exp(theta[..., 2])
        return out

    def start_grid():
        alphas = np.array([0.03, 0.1, 0.3, 0.6, 1.0])
        # a = alpha * log X_c; log X_c spans small to very large scales of X (e^5 .. e^60).
        axes = [np.linspace(0.0, 30.0, 7), alphas]
        if irreducible:
            axes.append(np.arange(-1.0, 1.0 + 1e-9, 0.5))
        return grid(*axes)

    names = ("a", "alpha") + (("e",) if irreducible else ())
    reported = (f"{var}_c", f"alpha_{var}") + (("E",) if irreducible else ())
    formula = f"L({var}) = ({var}_c / {var})^alpha_{var}" + (" + E" if irreducible else "")
    return Law(
        name=f"kaplan-{var.lower()}" + ("+e" if irreducible else ""),
        formula=formula,
        inputs=(var,),
        param_names=names,
        reported_names=reported,
        log_predict=log_predict,
        to_reported=to_reported,
        start_grid=start_grid,
        irreducible=irreducible,
    )


def get(name: str) -> Law:
    """A law by name: chinchilla | kaplan-n | kaplan-d | kaplan-c, optionally with '+e'."""
    key = name.lower()
    if key == "chinchilla":
        return chinchilla()
    base, plus_e = (key[:-2], True) if key.endswith("+e") else (key, False)
    if base in ("kaplan-n", "kaplan-d", "kaplan-c"):
        return kaplan(base[-1].upper(), irreducible=plus_e)
    valid = "chinchilla, kaplan-n, kaplan-d, kaplan-c (each kaplan-* optionally with '+e')"
    raise ValueError(f"unknown law {name!r}; valid: {valid}")
