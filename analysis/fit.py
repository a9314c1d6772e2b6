"""One robust fitting engine for scaling laws: Huber on log residuals, multi-start L-BFGS in JAX.

Objective (Hoffmann et al. 2022; Besiroglu et al. 2024):
    J(θ) = Σ_i w_i · Huber_δ(log L_pred(θ; x_i) − log L_i),  δ = 1e-3 by default,
summed (not averaged) over points, with Huber_δ(r) = r²/2 for |r| ≤ δ, δ(|r| − δ/2) beyond.
With δ = 1e-3 this is close to least absolute deviations: robust to outliers, but kinked, so
fits start from a grid of points and keep the best; a single start lands in a local minimum.

The optimiser is the compact L-BFGS of analysis.lbfgs (one evaluation per iteration, so no
problem waits on another's line search), `jax.vmap`-ed over a batch of problems. A batch element is (start θ0, log-loss vector, weight
vector), so the same compiled solver runs the multi-start grid (one data set, many starts),
bootstrap refits (resampling = multinomial counts used as weights) and synthetic studies (many
data sets). All of it runs in float64 under `jax.enable_x64(True)` *locally* — training code in
the same process keeps its float32 defaults.

`fit_scipy` minimises the same objective with SciPy's L-BFGS-B (Fortran) from the same starts:
an independent optimiser used as a cross-check in tests and in benchmarks/fit.py.

Entry points: `fit` (multi-start fit, optional bootstrap), `bootstrap`, `fit_scipy` (the
cross-check), `fit_datasets` (many data sets in one solve), `objective`, `check_identifiable`
(refusals) and `percentile_interval` (the one percentile-CI helper of the analysis package).
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import scipy.stats

from analysis import diagnostics, lbfgs
from analysis.laws import Law

DEFAULT_DELTA = 1e-3
AT_BEST_ABS = 1e-20  # objective differences below this are float64 round-off, not another optimum
CI_KIND = "bootstrap percentile"  # the kind of every parameter interval this package computes


def percentile_interval(samples, level: float, axis: int = 0):
    """(lo, hi): the central `level` percentile interval of bootstrap samples along `axis`."""
    if not 0 < level < 1:
        raise ValueError(f"CI level must be in (0, 1), got {level}")
    q = 100 * np.array([(1 - level) / 2, (1 + level) / 2])
    lo, hi = np.percentile(np.asarray(samples, dtype=np.float64), q, axis=axis)
    return lo, hi


# ----- objective -------------------------------------------------------------------------------


def huber(r, delta):
    """Huber_δ(r): quadratic within ±δ, linear (slope δ) outside; continuous first derivative."""
    abs_r = jnp.abs(r)
    return jnp.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta))


def _objective(law: Law, theta_P, logx_NI, logy_N, w_N, delta):
    resid_N = law.log_predict(theta_P, logx_NI) - logy_N
    return jnp.sum(w_N * huber(resid_N, delta))


SOLVER = dict(memory=10, gtol=1e-12, ftol=1e-10, max_backtracks=20)
FIRST_ROUND = 100  # iterations before finished problems are dropped from the batch


def _vg(law, logx_NI, logy_N, w_N, delta):
    return jax.value_and_grad(lambda th: _objective(law, th, logx_NI, logy_N, w_N, delta))


@functools.partial(jax.jit, static_argnames=("law",))
def _init_batch(law, theta0_BP, logx_NI, logy_BN, w_BN, delta):
    """Solver states for B problems: start theta0_BP[b], data (logx_NI, logy_BN[b], w_BN[b])."""
    return jax.vmap(lambda th, y, w: lbfgs.init(_vg(law, logx_NI, y, w, delta), th,
                                               memory=SOLVER["memory"], gtol=SOLVER["gtol"])
                    )(theta0_BP, logy_BN, w_BN)


@functools.partial(jax.jit, static_argnames=("law", "max_iter"))
def _run_batch(law, state_B, logx_NI, logy_BN, w_BN, delta, *, max_iter):
    """Advance B solver states until each is done or has made max_iter evaluations in total."""
    opts = {k: SOLVER[k] for k in ("gtol", "ftol", "max_backtracks")}
    return jax.vmap(lambda st, y, w: lbfgs.run(_vg(law, logx_NI, y, w, delta), st,
                                               max_iter=max_iter, **opts))(state_B, logy_BN, w_BN)


def _bucket(n: int) -> int:
    """Padded size: a power of two up to 256, then a multiple of 256 (fewer recompiles)."""
    return 1 << max(n - 1, 1).bit_length() if n <= 256 else -(-n // 256) * 256


def _solve(law, theta0_BP, logx_NI, logy_BN, w_BN, delta, max_iter):
    """Minimise B problems; returns numpy (theta_BP, f_B, converged_B, n_evals_B).

    Shapes are padded to buckets (extra points get weight 0, extra problems repeat the first)
    so fits of different sizes reuse compiled code. Under vmap a while loop runs until its
    slowest problem stops, so after FIRST_ROUND iterations the finished problems are dropped
    and only the rest (typically a few tenths on the Chinchilla grid) continue to max_iter.
    """
    B, N = logy_BN.shape
    Np = _bucket(N)
    logx = np.pad(logx_NI, ((0, Np - N), (0, 0)))
    logy = np.pad(logy_BN, ((0, 0), (0, Np - N)))
    w = np.pad(w_BN, ((0, 0), (0, Np - N)))

    def padded(idx):  # problem indices -> a bucket-sized index vector
        return np.concatenate([idx, np.repeat(idx[:1], _bucket(len(idx)) - len(idx))])

    with jax.enable_x64(True):
        idx = padded(np.arange(B))
        state = _init_batch(law, jnp.asarray(theta0_BP[idx]), jnp.asarray(logx),
                            jnp.asarray(logy[idx]), jnp.asarray(w[idx]), delta)
        state = _run_batch(law, state, logx, jnp.asarray(logy[idx]), jnp.asarray(w[idx]),
                           delta, max_iter=min(FIRST_ROUND, max_iter))
        state = {k: np.array(v[:B]) for k, v in state.items()}  # writable copies
        active = np.flatnonzero(~state["done"] & (state["it"] < max_iter))
        if len(active):
            idx = padded(active)
            sub = _run_batch(law, {k: jnp.asarray(v[idx]) for k, v in state.items()}, logx,
                             jnp.asarray(logy[idx]), jnp.asarray(w[idx]), delta,
                             max_iter=max_iter)
            for k, v in sub.items():
                state[k][active] = np.asarray(v)[: len(active)]
    return state["x"], state["f"], state["converged"], state["it"]


# ----- data preparation and refusal ------------------------------------------------------------


def _prepare(law: Law, inputs: Mapping, loss, weights):
    """Raw inputs/loss -> (logx_NI, logy_N, w_N) as float64 numpy, with clear errors."""
    cols = []
    for name in law.inputs:
        try:
            col = inputs[name]
        except (KeyError, IndexError, TypeError):
            raise ValueError(
                f"law {law.name!r} needs input column {name!r}; got {sorted(map(str, inputs.keys()))}"
            ) from None
        cols.append(np.asarray(col, dtype=np.float64).reshape(-1))
    y = np.asarray(loss, dtype=np.float64).reshape(-1)
    n = y.shape[0]
    for name, col in zip(law.inputs, cols):
        if col.shape[0] != n:
            raise ValueError(f"input {name!r} has {col.shape[0]} values but loss has {n}")
        bad = ~(np.isfinite(col) & (col > 0))
        if bad.any():
            raise ValueError(f"input {name!r} must be finite and > 0; bad value {col[bad][0]!r} "
                             f"at index {int(np.flatnonzero(bad)[0])}")
    bad = ~(np.isfinite(y) & (y > 0))
    if bad.any():
        raise ValueError(f"loss must be finite and > 0; bad value {y[bad][0]!r} at index "
                         f"{int(np.flatnonzero(bad)[0])}")
    if weights is None:
        w = np.ones(n)
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != n or not (np.isfinite(w).all() and (w >= 0).all()) or w.sum() <= 0:
            raise ValueError(f"weights must be {n} finite values >= 0 with a positive sum")
    logx = np.stack([np.log(c) for c in cols], axis=1)
    return logx, np.log(y), w


def check_identifiable(law: Law, inputs: Mapping, loss, weights=None) -> None:
    """Raise ValueError, saying why, when the data cannot identify `law`'s parameters."""
    logx, logy, w = _prepare(law, inputs, loss, weights)
    n_eff = int((w > 0).sum())
    if n_eff < law.n_params + 2:
        raise ValueError(
            f"law {law.name!r} has {law.n_params} parameters {law.param_names}; it needs at least "
            f"{law.n_params + 2} points (parameters + 2) with positive weight, got {n_eff}"
        )
    logx, logy = logx[w > 0], logy[w > 0]
    for i, name in enumerate(law.inputs):
        if np.ptp(logx[:, i]) < 1e-6:
            raise ValueError(f"input {name!r} has no variation (all values ≈ {np.exp(logx[0, i]):.4g});"
                             f" law {law.name!r} cannot be fitted")
    lin = np.column_stack([np.ones(len(logy)), logx])
    if len(law.inputs) > 1:
        sv = np.linalg.svd(lin - np.r_[0, logx.mean(0)], compute_uv=False)
        if sv[-1] < 1e-6 * sv[0]:
            raise ValueError(
                f"inputs {law.inputs} are collinear in log space (e.g. a single isoFLOP budget, "
                f"D = C/6N); law {law.name!r} needs them to vary independently"
            )
    if law.irreducible:
        # The constant E is only identified by curvature of log L in log x: compare a linear and
        # a quadratic regression of log L (F-test at 1%). A straight line means a pure power law.
        quad = np.column_stack([lin, logx**2])
        rss = [np.sum((logy - X @ np.linalg.lstsq(X, logy, rcond=None)[0]) ** 2) for X in (lin, quad)]
        q, dof = logx.shape[1], len(logy) - quad.shape[1]
        if dof <= 0 or rss[0] <= 1e-24:
            ok = False
        elif rss[1] <= 1e-12 * rss[0]:
            ok = True
        else:
            f_stat = ((rss[0] - rss[1]) / q) / (rss[1] / dof)
            ok = f_stat > scipy.stats.f.ppf(0.99, q, dof)
        if not ok:
            raise ValueError(
                f"no curvature: log loss is linear in log {'/'.join(law.inputs)} (F-test, 1%), so the "
                f"irreducible term E of law {law.name!r} is not identified; fit the law without E "
                f"or add points closer to the floor"
            )


# ----- results ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Fit:
    """A fitted law. `params` are the reported parameters (E, A, B, alpha, ...)."""

    law: Law
    theta: np.ndarray  # [P] fit-space parameters
    objective: float  # Σ w·Huber_δ at theta
    n_points: int
    n_starts: int
    n_converged: int  # starts that stopped on a tolerance (not on max_iter / failed search)
    n_at_best: int  # starts whose objective is within 1e-9 (relative) or AT_BEST_ABS of the best
    delta: float
    method: str  # "jax-lbfgs" | "scipy-lbfgsb"
    ci_level: float | None = None
    ci: dict | None = None  # name -> (lo, hi), percentile bootstrap
    boot_theta: np.ndarray | None = None  # [B, P], the successful resamples only
    boot_params: dict | None = None  # name -> [B]
    boot_starts: np.ndarray | None = dataclasses.field(default=None, repr=False)  # [K, P]
    n_boot_failed: int = 0  # resamples whose refit failed (non-finite objective): not in the CI
    warnings: list = dataclasses.field(default_factory=list)  # diagnostics.fit_warnings, bootstrap

    @property
    def params(self) -> dict:
        return {k: float(v) for k, v in self.law.to_reported(self.theta).items()}

    def predict(self, **inputs) -> np.ndarray:
        """Predicted loss at raw inputs, e.g. fit.predict(N=..., D=...)."""
        missing = [k for k in self.law.inputs if k not in inputs]
        if missing:
            raise ValueError(f"predict() needs inputs {self.law.inputs}; missing {missing}")
        cols = [np.log(np.asarray(inputs[k], dtype=np.float64)) for k in self.law.inputs]
        shape = np.broadcast_shapes(*[c.shape for c in cols])
        logx = np.stack([np.broadcast_to(c, shape).reshape(-1) for c in cols], axis=1)
        with jax.enable_x64(True):
            out = self.law.log_predict(jnp.asarray(self.theta), jnp.asarray(logx))
            return np.exp(np.asarray(out)).reshape(shape)

    def to_dict(self) -> dict:
        d = dict(law=self.law.name, formula=self.law.formula, method=self.method,
                 params=self.params, theta=dict(zip(self.law.param_names, map(float, self.theta))),
                 objective=self.objective, delta=self.delta, n_points=self.n_points,
                 n_starts=self.n_starts, n_converged=self.n_converged, n_at_best=self.n_at_best)
        if self.ci is not None:
            d["ci_level"] = self.ci_level
            d["ci"] = {k: [float(lo), float(hi)] for k, (lo, hi) in self.ci.items()}
            d["ci_kind"] = CI_KIND
            d["n_bootstrap"] = int(self.boot_theta.shape[0]) + self.n_boot_failed
            d["n_boot_failed"] = self.n_boot_failed
        d["warnings"] = list(self.warnings)
        return d


def _summarise(law, theta_SP, f_S, conv_S, n_points, delta, method) -> Fit:
    f_S = np.where(np.isfinite(f_S), f_S, np.inf)
    best = int(np.argmin(f_S))
    f_best = float(f_S[best])
    if not np.isfinite(f_best):
        raise ValueError(f"law {law.name!r}: the objective is not finite from any start; check "
                         f"the inputs' units and the starts")
    # within 1e-9 relative, or 1e-20 absolute: on noise-free data the best objective is ~1e-32 and
    # starts at 1e-28 sit in the same optimum (log residuals ~1e-14, float64 round-off)
    at_best_S = f_S <= f_best + max(1e-9 * abs(f_best), AT_BEST_ABS)
    at_best = int(np.sum(at_best_S))
    if not np.any(at_best_S & np.asarray(conv_S, dtype=bool)):
        warnings.warn(f"law {law.name!r} ({method}): no start reaching the best objective "
                      f"{f_best:.6g} met the convergence tolerance (max_iter too small?)",
                      stacklevel=3)
    return Fit(law=law, theta=np.asarray(theta_SP[best], dtype=np.float64), objective=f_best,
               n_points=n_points, n_starts=len(f_S), n_converged=int(np.sum(conv_S)),
               n_at_best=at_best, delta=delta, method=method)


def _starts(law, starts):
    s = law.start_grid() if starts is None else np.asarray(starts, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != law.n_params:
        raise ValueError(f"starts must be [S, {law.n_params}] for {law.param_names}, got {s.shape}")
    return s


# ----- public entry points ---------------------------------------------------------------------


def objective(law: Law, theta, inputs: Mapping, loss, *, weights=None, delta=DEFAULT_DELTA) -> float:
    """Σ w·Huber_δ(log L_pred − log L) at fit-space theta (float64)."""
    logx, logy, w = _prepare(law, inputs, loss, weights)
    with jax.enable_x64(True):
        return float(_objective(law, jnp.asarray(theta, jnp.float64), logx, logy, w, delta))


def fit(law: Law, inputs: Mapping, loss, *, weights=None, delta=DEFAULT_DELTA, starts=None,
        n_bootstrap=0, seed=0, ci=0.95, check=True, max_iter=300) -> Fit:
    """Multi-start L-BFGS fit of `law` (vmapped over starts, float64); optional bootstrap CIs."""
    if check:
        check_identifiable(law, inputs, loss, weights)
    logx, logy, w = _prepare(law, inputs, loss, weights)
    theta0 = _starts(law, starts)
    S = theta0.shape[0]
    theta, f, conv, _ = _solve(law, theta0, logx, np.broadcast_to(logy, (S, len(logy))),
                               np.broadcast_to(w, (S, len(w))), delta, max_iter)
    result = _summarise(law, theta, f, conv, len(logy), delta, "jax-lbfgs")
    # Remember good, diverse origins for bootstrap refits: the starts that reached the best.
    order = np.argsort(np.where(np.isfinite(f), f, np.inf))
    result.boot_starts = np.concatenate([result.theta[None], theta0[order[:2]]])
    result.warnings = diagnostics.fit_warnings(law, result.theta, logx[w > 0], logy[w > 0],
                                               n_starts=result.n_starts, n_at_best=result.n_at_best,
                                               objective=result.objective)
    if n_bootstrap:
        result = bootstrap(result, inputs, loss, n_resamples=n_bootstrap, seed=seed, ci=ci,
                           weights=weights, max_iter=max_iter)
    return result


def bootstrap(result: Fit, inputs: Mapping, loss, *, n_resamples=1000, seed=0, ci=0.95,
              weights=None, starts=None, max_iter=300) -> Fit:
    """Percentile bootstrap: refit on `n_resamples` resamples of the points (with replacement).

    A resample is a vector of multinomial counts used as weights, so all refits are one vmapped
    solve of n_resamples × K problems. Starts (K): the full-data optimum plus the grid starts
    that reached it (or `starts`); each resample keeps its best.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be >= 2, got {n_resamples}")
    law = result.law
    logx, logy, w = _prepare(law, inputs, loss, weights)
    n = len(logy)
    if starts is None:
        starts = result.boot_starts if result.boot_starts is not None else result.theta[None]
    starts = _starts(law, starts)
    K = starts.shape[0]
    rng = np.random.default_rng(seed)
    counts_RN = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)
    w_RKN = np.repeat(counts_RN * w, K, axis=0)
    theta0 = np.tile(starts, (n_resamples, 1))
    theta, f, _, _ = _solve(law, theta0, logx, np.broadcast_to(logy, (n_resamples * K, n)),
                            w_RKN, result.delta, max_iter)
    theta, f = theta.reshape(n_resamples, K, -1), f.reshape(n_resamples, K)
    f = np.where(np.isfinite(f), f, np.inf)
    best = np.argmin(f, axis=1)
    boot_theta = theta[np.arange(n_resamples), best]
    ok = np.isfinite(f[np.arange(n_resamples), best]) & np.isfinite(boot_theta).all(axis=1)
    n_failed = int(n_resamples - ok.sum())
    if n_failed == n_resamples:
        raise ValueError(f"law {law.name!r} bootstrap: all {n_resamples} refits failed "
                         f"(non-finite objective from every start)")
    boot_theta = boot_theta[ok]
    boot_params = {k: np.asarray(v) for k, v in law.to_reported(boot_theta).items()}
    cis = {k: tuple(float(b) for b in percentile_interval(v, ci)) for k, v in boot_params.items()}
    notes = [m for m in result.warnings if not m.startswith("bootstrap:")]
    if n_failed:
        notes.append(f"bootstrap: {n_failed} of {n_resamples} resamples failed (non-finite "
                     f"objective from every start) and are left out of the CIs")
    return dataclasses.replace(result, ci_level=ci, ci=cis, boot_theta=boot_theta,
                               boot_params=boot_params, boot_starts=starts,
                               n_boot_failed=n_failed, warnings=notes)


def fit_datasets(law: Law, inputs: Mapping, loss_RN, *, starts=None, weights_RN=None,
                 delta=DEFAULT_DELTA, max_iter=300) -> tuple[np.ndarray, np.ndarray]:
    """Fit R data sets that share the inputs (synthetic studies, simulation): one vmapped solve
    of R × S problems. loss_RN: [R, N]; weights_RN: [R, N] or None; starts: [S, P] shared by
    all data sets or [R, S, P] per data set (default: the law's grid). No identifiability check.
    Returns (theta_RP, objective_R), each data set's best over the S starts."""
    loss_RN = np.asarray(loss_RN, dtype=np.float64)
    if loss_RN.ndim != 2:
        raise ValueError(f"loss_RN must be [R, N], got shape {loss_RN.shape}")
    R, n = loss_RN.shape
    logx, _, _ = _prepare(law, inputs, loss_RN[0], None)
    if not (np.isfinite(loss_RN).all() and (loss_RN > 0).all()):
        raise ValueError("loss_RN must be finite and > 0")
    w = np.ones((R, n)) if weights_RN is None else np.asarray(weights_RN, dtype=np.float64)
    if starts is not None and np.ndim(starts) == 3:
        if np.shape(starts)[0] != R:
            raise ValueError(f"per-data-set starts must be [R={R}, S, P], got {np.shape(starts)}")
        theta0_RSP = np.stack([_starts(law, s) for s in starts])
    else:
        theta0_RSP = np.broadcast_to(_starts(law, starts), (R,) + _starts(law, starts).shape)
    K = theta0_RSP.shape[1]
    theta, f, _, _ = _solve(law, theta0_RSP.reshape(R * K, -1), logx,
                            np.repeat(np.log(loss_RN), K, axis=0), np.repeat(w, K, axis=0),
                            delta, max_iter)
    theta, f = theta.reshape(R, K, -1), np.where(np.isfinite(f), f, np.inf).reshape(R, K)
    best = np.argmin(f, axis=1)
    return theta[np.arange(R), best], f[np.arange(R), best]


@functools.lru_cache(maxsize=None)
def _jitted_value_and_grad(law: Law):
    return jax.jit(jax.value_and_grad(
        lambda th, logx, logy, w, delta: _objective(law, th, logx, logy, w, delta)))


def fit_scipy(law: Law, inputs: Mapping, loss, *, weights=None, delta=DEFAULT_DELTA, starts=None,
              check=True, maxiter=15000, ftol=1e-15, gtol=1e-12) -> Fit:
    """The same objective minimised by SciPy's L-BFGS-B from each start (a cross-check).

    SciPy's default tolerances stop early on this kinked objective (f is ~1e-2, and its relative
    reduction test is floored at 1), so they are tightened here; compare objective values.
    """
    if check:
        check_identifiable(law, inputs, loss, weights)
    logx, logy, w = _prepare(law, inputs, loss, weights)
    theta0 = _starts(law, starts)
    vg = _jitted_value_and_grad(law)
    thetas, fs, convs = [], [], []
    with jax.enable_x64(True):
        args = (jnp.asarray(logx), jnp.asarray(logy), jnp.asarray(w), jnp.float64(delta))

        def fun(th):
            f, g = vg(jnp.asarray(th), *args)
            return float(f), np.asarray(g, dtype=np.float64)

        for th0 in theta0:
            r = scipy.optimize.minimize(fun, th0, jac=True, method="L-BFGS-B",
                                        options=dict(maxiter=maxiter, ftol=ftol, gtol=gtol))
            thetas.append(r.x)
            fs.append(r.fun)
            convs.append(bool(r.success))
    return _summarise(law, np.array(thetas), np.array(fs), np.array(convs), len(logy), delta,
                      "scipy-lbfgsb")
