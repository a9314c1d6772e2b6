"""Scaling-law functional forms, as pure JAX functions evaluated in log space.

Every law is a `Law`: a function `log_predict(theta_P, logx_NI) -> logL_N` of a flat vector of
fit-space parameters `theta_P` and the logs of the inputs (`logx_NI`, columns named by
`Law.inputs`), plus what a fit needs around it: the fit-space parameter names, how to map them
to the reported parameters (A = e^a, ...), and the default grid of starting points.

Fitting in log space (log L, log N, log D; positive constants as their logs) keeps the
parameters O(1) and the residuals relative; the logsumexp form log(E + A/N^α + B/D^β) =
LSE(a − α log N, b − β log D, e) is exact and never takes the log of a negative number.

`chinchilla()`, `kaplan(var, irreducible)`, `data_constrained(base)` (Muennighoff et al. 2023)
and `bnsl(var)` (Caballero et al. 2022, one break) build the laws, `get(name)` finds one by name
("chinchilla", "kaplan-n", ..., optionally "+e", "data-constrained", "bnsl"). Fit-space names follow one convention that
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


# ----- Muennighoff et al. (2023): data-constrained L(N, D, U) ------------------------------


def _chinchilla_log_g(a, b, alpha, beta):
    """log G of the compute-optimal split N_opt = G (C/6)^a, G = (αA / βB)^(1/(α+β))."""
    return (jnp.log(alpha) + a - jnp.log(beta) - b) / (alpha + beta)


def _log_effective(log_u, log_x, log_r_star):
    """log(U + U·R*·(1 − e^(−R/R*))) with R = X/U − 1 (clipped at 0): the effective count of X."""
    r = jnp.maximum(jnp.exp(log_x - log_u) - 1.0, 0.0)
    r_star = jnp.exp(log_r_star)
    return log_u + jnp.log1p(-r_star * jnp.expm1(-r / r_star))


def data_constrained_log_predict(base_theta, log_rd, log_rn, logx_NI):
    """log L(N, D, U) for fit-space base (a, b, e, alpha, beta) and log R_D*, log R_N*.

    D' = U + U R_D* (1 − e^(−R_D/R_D*)), R_D = D/U − 1; N' likewise from U_N = min(N, N_opt(U)),
    N_opt(U) = G² U the parameters whose compute-optimal D_opt is U; L = E + A/N'^α + B/D'^β.
    """
    a, b, e, alpha, beta = base_theta
    log_n, log_d, log_u = logx_NI[:, 0], logx_NI[:, 1], logx_NI[:, 2]
    log_un = jnp.minimum(log_n, 2.0 * _chinchilla_log_g(a, b, alpha, beta) + log_u)
    log_d_eff = _log_effective(log_u, log_d, log_rd)
    log_n_eff = _log_effective(log_un, log_n, log_rn)
    return _lse3(a - alpha * log_n_eff, b - beta * log_d_eff, e)


def _dc_grid(fixed: bool):
    r = np.log([1.0, 3.0, 10.0, 30.0, 100.0])  # log R*: from 1 to 100 effective repetitions
    if fixed:
        return grid(r, r)
    # A coarse Chinchilla grid around typical LM values (log A, log B, log E, α, β) × R* grid.
    return grid([4.0, 6.0, 8.0], [5.0, 7.0, 9.0], [0.0, 0.6], [0.3, 0.5], [0.3, 0.5],
                r[[1, 3]], r[[0, 2]])


@functools.lru_cache(maxsize=None)
def data_constrained(base: tuple | None = None) -> Law:
    """Muennighoff et al. (2023) L(N, D, U): the Chinchilla law of effective N', D' (unique
    tokens U). base = (E, A, B, alpha, beta) holds the base law fixed (fit R_D*, R_N* only);
    None fits all seven parameters."""
    formula = ("L = E + A/N'^alpha + B/D'^beta, D' = U + U R_D* (1 - exp(-R_D/R_D*)), "
               "N' likewise (U_N = min(N, N_opt(U)))")
    if base is not None:
        E, A, B, alpha, beta = (float(v) for v in base)
        base_theta = (np.log(A), np.log(B), np.log(E), alpha, beta)

        def log_predict(theta_P, logx_NI):
            return data_constrained_log_predict(base_theta, theta_P[0], theta_P[1], logx_NI)

        def to_reported(theta):
            theta = np.asarray(theta, dtype=np.float64)
            return {"R_D*": np.exp(theta[..., 0]), "R_N*": np.exp(theta[..., 1])}

        return Law(name="data-constrained-fixed-base", formula=formula + f" with base {base}",
                   inputs=("N", "D", "U"), param_names=("log_rd", "log_rn"),
                   reported_names=("R_D*", "R_N*"), log_predict=log_predict,
                   to_reported=to_reported, start_grid=lambda: _dc_grid(True), irreducible=False)

    def log_predict(theta_P, logx_NI):
        return data_constrained_log_predict(tuple(theta_P[i] for i in range(5)), theta_P[5],
                                            theta_P[6], logx_NI)

    def to_reported(theta):
        theta = np.asarray(theta, dtype=np.float64)
        return dict(_chinchilla_reported(theta[..., :5]), **{"R_D*": np.exp(theta[..., 5]),
                                                             "R_N*": np.exp(theta[..., 6])})

    return Law(name="data-constrained", formula=formula, inputs=("N", "D", "U"),
               param_names=("a", "b", "e", "alpha", "beta", "log_rd", "log_rn"),
               reported_names=("E", "A", "B", "alpha", "beta", "R_D*", "R_N*"),
               log_predict=log_predict, to_reported=to_reported,
               start_grid=lambda: _dc_grid(False), irreducible=True)


# ----- Caballero et al. (2022): broken neural scaling law, one break -------------------------


def _bnsl_grid():
    return grid([-3.0, 0.0],  # log a (the floor)
                [0.0, 3.0, 6.0],  # log b
                [0.0, 0.3],  # c0: the exponent before the break
                [0.5, 2.0, 8.0],  # c1: the change of exponent at the break
                np.linspace(2.0, 28.0, 14),  # log d1: the break's location, e^2 .. e^28
                [np.log(0.1), 0.0])  # log f1: sharp or smooth break


@functools.lru_cache(maxsize=None)
def bnsl(var: str = "D") -> Law:
    """Caballero et al. (2022) broken power law in one variable x, one break:
    y = a + b x^(−c0) (1 + (x/d1)^(1/f1))^(−c1 f1). Fit space: e = log a, b = log b, c0, c1,
    log d1, log f1, with log(1 + (x/d1)^(1/f1)) = softplus((log x − log d1)/f1)."""
    if var not in ("N", "D", "C"):
        raise ValueError(f"bnsl law: var={var!r} is not one of 'N', 'D', 'C'")

    def log_predict(theta_P, logx_NI):
        e, b, c0, c1, log_d1, log_f1 = (theta_P[i] for i in range(6))
        lx, f1 = logx_NI[:, 0], jnp.exp(log_f1)
        power = b - c0 * lx - c1 * f1 * jax.nn.softplus((lx - log_d1) / f1)
        return jnp.logaddexp(power, jnp.broadcast_to(e, power.shape))

    def to_reported(theta):
        theta = np.asarray(theta, dtype=np.float64)
        return {"a": np.exp(theta[..., 0]), "b": np.exp(theta[..., 1]), "c0": theta[..., 2],
                "c1": theta[..., 3], "d1": np.exp(theta[..., 4]), "f1": np.exp(theta[..., 5])}

    return Law(name="bnsl" if var == "D" else f"bnsl-{var.lower()}",
               formula=f"L({var}) = a + b {var}^-c0 (1 + ({var}/d1)^(1/f1))^(-c1 f1)",
               inputs=(var,), param_names=("e", "b", "c0", "c1", "log_d1", "log_f1"),
               reported_names=("a", "b", "c0", "c1", "d1", "f1"), log_predict=log_predict,
               to_reported=to_reported, start_grid=_bnsl_grid,
               # Not `irreducible`: that flag's checks (curvature F-test, "curves the wrong way")
               # assume one power law + E; a break legitimately bends log y downward.
               irreducible=False)


def get(name: str) -> Law:
    """A law by name: chinchilla | kaplan-n | kaplan-d | kaplan-c (optionally with '+e') |
    data-constrained (all seven parameters fitted) | bnsl (x = D)."""
    key = name.lower()
    if key == "chinchilla":
        return chinchilla()
    if key == "data-constrained":
        return data_constrained()
    if key == "bnsl":
        return bnsl("D")
    base, plus_e = (key[:-2], True) if key.endswith("+e") else (key, False)
    if base in ("kaplan-n", "kaplan-d", "kaplan-c"):
        return kaplan(base[-1].upper(), irreducible=plus_e)
    valid = ("chinchilla, kaplan-n, kaplan-d, kaplan-c (each kaplan-* optionally with '+e'), "
             "data-constrained, bnsl")
    raise ValueError(f"unknown law {name!r}; valid: {valid}")
