"""Prediction intervals for fitted scaling laws: a loss at any (N, D), and the compute optimum.

The model (everything in log space, where the fits are made):

    log L_obs(x) = log L_pred(θ; x) + ε,    ε ~ N(0, σ²)   (run-to-run noise of one run)

Parameter uncertainty is the bootstrap distribution of the fit: θ_b, b = 1..B, refits on
resamples (with replacement) of the fitted points. Run-to-run noise σ is the residual scatter of
the fit, sqrt(Σ r² / (n − P)) with r = log L_obs − log L_pred(θ̂) ("fit residuals"), or the pooled
within-group standard deviation of log loss over runs that share (N, D) but differ in seed
("replicate seeds") when the table has such replicates and it is the larger (residuals wider than
the seeds' scatter are the law's misfit, which a forecast inherits). The two are
combined by sampling: for each θ_b draw M values of ε, form log L_pred(θ_b; x) + ε, and take
the central `level` percentiles of the B·M samples ("prediction interval (bootstrap + noise)").

The compute optimum at a target C (FLOPs, C = 6ND): per θ_b the optimum (N*_b, D*_b) — the
closed form of Approach 3, or the Approach-2 power laws — gives the percentile interval of N*
and D* ("bootstrap percentile CI": parameter uncertainty only; a run is placed at one N, D),
and L*_b + ε gives the prediction interval of the loss a run at the optimum will measure.
When the N* interval spans more than FLAT_FACTOR (hi/lo), the isoFLOP curves are flat there
and N* is uncertain: `Optimum.note` says so.

Approach 2 (`approach2_fit`): chinchilla.approach2's per-budget parabolas of loss in log N give
N_opt and the minimum loss L_opt; a budget with fewer than 4 distinct sizes, without an interior
minimum or flat is left out with a warning naming it (at least 3 must remain). Then OLS
power laws through the per-budget optima: N_opt(C) = k_N·C^a, and L*(C) = k_L·C^(−γ) through
the parabola minima (a pure power law: it has no floor, so it overestimates the fall of the
loss far beyond the data). D*(C) = C / (6 N*(C)). Bootstrap: resample points within budgets;
resamples where a budget loses its interior minimum are counted as failed, never hidden.

Public API: `Noise`, `estimate_noise`, `describe_noise`, `Interval`, `Prediction`, `Optimum`, `LawSamples`,
`columns`, `fit_masks`, `loss_interval`, `chinchilla_optimum`, `Approach2Fit`,
`approach2_fit`, `approach2_optimum`.
"""
from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from analysis import chinchilla, fit as fitlib, laws

KIND_PI = "prediction interval (bootstrap + noise)"
KIND_CI = "bootstrap percentile CI (parameter uncertainty only)"
FLAT_FACTOR = 2.0  # an N* interval wider than this (hi/lo) means N* is not determined
MIN_SAMPLES = 4000  # bootstrap × noise draws per prediction (percentile resolution)
MIN_BUDGETS = chinchilla.MIN_BUDGETS  # Approach 2: budgets that keep their parabola


@dataclasses.dataclass
class Noise:
    """Run-to-run noise of log loss (one run at fixed N, D)."""

    sigma: float
    """standard deviation of log loss (dimensionless: a relative error of the loss)"""
    source: str
    """where sigma comes from: 'replicate seeds' (pooled within-group variance) or 'fit residuals'"""
    dof: int
    """degrees of freedom of the estimate"""
    replicate_sigma: float | None = None
    """the replicate seeds' pooled sigma when the table has replicates (also when the residuals' larger
    sigma is the one used); None without replicates"""
    replicate_dof: int = 0
    """its degrees of freedom (sum over (N, D) groups of seeds - 1)"""


def describe_noise(noise: dict) -> str:
    """'σ(log L) = 0.0145 from fit residuals (replicate seeds: 0.0119, 15 dof)' for a Noise as a dict (asdict)."""
    text = f"σ(log L) = {noise['sigma']:.3g} from {noise['source']}"
    if noise.get("replicate_sigma") is not None and noise["source"] != "replicate seeds":
        text += f" (replicate seeds: {noise['replicate_sigma']:.3g}, {noise['replicate_dof']} dof)"
    return text


def _replicate_noise(table) -> tuple[float, int] | None:
    """(pooled within-group sd of log loss, dof) over runs sharing (n_params, tokens) and each with its own
    seed (runs at one (N, D) with one seed differ in something else, e.g. the LR: not replicates);
    None with fewer than 2 dof."""
    if "seed" not in table.columns or not table["seed"].notna().any():
        return None
    logl = np.log(table["loss"].to_numpy(dtype=float))
    ss, dof = 0.0, 0
    for _, grp in table.assign(_l=logl).groupby(["n_params", "tokens"]):
        g = grp["_l"]
        if len(g) >= 2 and grp["seed"].nunique() == len(g):
            ss += float(np.sum((g - g.mean()) ** 2))
            dof += len(g) - 1
    return (float(np.sqrt(ss / dof)), dof) if dof >= 2 else None


def estimate_noise(table, log_resid=None, n_fit_params: int = 0) -> Noise:
    """σ of one run's log loss. From replicate seeds (same n_params, tokens; >= 2 seeds) when the table
    has them, from the fit residuals when it does not; with both, the larger: residuals wider than the
    seeds' scatter are the law's misfit, which a prediction from the law inherits, and residuals
    narrower than it come from a fit that follows its points' noise."""
    rep = _replicate_noise(table)
    res = None
    if log_resid is not None:
        r = np.asarray(log_resid, dtype=float)
        dof = len(r) - n_fit_params
        if dof < 1:
            if rep is None:
                raise ValueError(f"{len(r)} points cannot estimate the noise of a {n_fit_params}-"
                                 f"parameter fit (need more points than parameters)")
        else:
            res = (float(np.sqrt(np.sum(r * r) / dof)), dof)
    if rep is None and res is None:
        raise ValueError("no replicate seeds in the table and no fit residuals given")
    rep_kw = dict(replicate_sigma=rep[0], replicate_dof=rep[1]) if rep else {}
    if res is not None and (rep is None or res[0] > rep[0]):
        return Noise(sigma=res[0], source="fit residuals", dof=res[1], **rep_kw)
    return Noise(sigma=rep[0], source="replicate seeds", dof=rep[1], **rep_kw)


@dataclasses.dataclass
class Interval:
    """A central interval around a point value."""

    value: float
    """point value (from the fit on all points)"""
    lo: float
    """lower end of the central interval"""
    hi: float
    """upper end"""
    level: float
    """central probability, e.g. 0.9"""
    kind: str
    """KIND_PI (bootstrap + noise) or KIND_CI (bootstrap only)"""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Prediction:
    """Predicted losses (nats/token) at given inputs, with prediction intervals."""

    inputs: dict
    """input name -> array of raw values (N params, D tokens, C FLOPs)"""
    value: np.ndarray
    """point prediction L_pred(θ̂)"""
    lo: np.ndarray
    """lower end of the prediction interval"""
    hi: np.ndarray
    """upper end"""
    level: float
    """central probability of [lo, hi]"""
    kind: str
    """always KIND_PI"""
    noise: Noise
    """the run-to-run noise used, and where it came from"""
    n_bootstrap: int
    """bootstrap refits behind the interval"""


@dataclasses.dataclass
class Optimum:
    """Compute-optimal allocation at a target budget, with intervals."""

    C: float
    """target compute (FLOPs, 6ND)"""
    N: Interval
    """N* (parameters): KIND_CI"""
    D: Interval
    """D* (tokens): KIND_CI"""
    L: Interval
    """loss a run at (N*, D*) will measure (nats/token): KIND_PI"""
    method: str
    """'approach3' (closed form of the L(N, D) fit) or 'approach2' (power laws of optima)"""
    noise: Noise
    """run-to-run noise in L's interval"""
    n_bootstrap: int
    """bootstrap refits that gave a valid optimum"""
    n_failed: int
    """bootstrap refits without one (e.g. alpha <= 0, a budget without a minimum)"""
    note: str = ""
    """warnings, e.g. 'isoFLOP curves flat: N* uncertain'"""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["noise"] = dataclasses.asdict(self.noise)
        return d


# ----- fitting with bootstrap, many masks of one table at once ----------------------------------


@dataclasses.dataclass
class LawSamples:
    """A law fitted on one subset of a table's points, with its bootstrap refits."""

    law: laws.Law
    """the functional form"""
    theta: np.ndarray
    """[P] fit-space parameters of the fit on all points of the subset"""
    boot_theta: np.ndarray
    """[B, P] refits on resamples of the subset's points"""
    mask: np.ndarray
    """[N] bool: the table's points in the subset"""
    noise: Noise
    """run-to-run noise estimated on the subset"""


def columns(table, law: laws.Law) -> dict:
    """The law's inputs from table columns: N = n_params (Kaplan L(N): n_params_nonembed when
    present), D = tokens, C = flops when present, else flops_6nd."""
    src = {"N": "n_params_nonembed" if law.inputs == ("N",) and "n_params_nonembed" in table
           else "n_params", "D": "tokens",
           "C": "flops" if "flops" in table and table["flops"].notna().all() else "flops_6nd"}
    return {k: table[src[k]].to_numpy(dtype=float) for k in law.inputs}


def fit_masks(law, table, masks_KN, *, loss_KN=None, starts=None, n_bootstrap=200,
              seed=0, check=True) -> list[LawSamples]:
    """Fit `law` on K subsets of `table` (bool masks) in two vmapped solves: the point fits
    (all starts, excluded points weighted 0) and the bootstrap refits (multinomial counts over
    each subset's points, started from that subset's optimum). Shapes are shared, so the
    compiled solver is reused across subsets. `loss_KN` replaces the table's loss per subset
    (synthetic studies: K noisy copies of one design). check=False skips the identifiability
    check (for predictions of the fitted surface, not of its parameters)."""
    masks = np.asarray(masks_KN, dtype=bool)
    K, n = masks.shape
    inputs = columns(table, law)
    loss = np.broadcast_to(table["loss"].to_numpy(dtype=float) if loss_KN is None
                           else np.asarray(loss_KN, dtype=float), (K, n))
    if n_bootstrap < 2:
        raise ValueError(f"n_bootstrap={n_bootstrap}: need >= 2 resamples for an interval")
    for m, y in zip(masks, loss if check else ()):
        fitlib.check_identifiable(law, {k: v[m] for k, v in inputs.items()}, y[m])
    theta, _ = fitlib.fit_datasets(law, inputs, loss, starts=starts, weights_RN=masks.astype(float))
    rng = np.random.default_rng(seed)
    w = np.zeros((K, n_bootstrap, n))
    for k, m in enumerate(masks):
        idx = np.flatnonzero(m)
        w[k][:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), n_bootstrap)
    boot, _ = fitlib.fit_datasets(law, inputs, np.repeat(loss, n_bootstrap, 0),
                                  starts=np.repeat(theta, n_bootstrap, 0)[:, None, :],
                                  weights_RN=w.reshape(K * n_bootstrap, n))
    logx = np.log(np.stack([inputs[c] for c in law.inputs], 1))
    out = []
    for k, m in enumerate(masks):
        resid = np.log(loss[k][m]) - log_predict(law, theta[k][None], logx[m])[0]
        sub = table[m].assign(loss=loss[k][m])
        out.append(LawSamples(law, theta[k], boot[k * n_bootstrap:(k + 1) * n_bootstrap], m,
                              estimate_noise(sub, resid, law.n_params)))
    return out


def log_predict(law: laws.Law, theta_BP, logx_NI) -> np.ndarray:
    """log L_pred for B parameter vectors at N points -> [B, N] (float64, vectorised)."""
    with jax.enable_x64(True):
        f = jax.vmap(law.log_predict, in_axes=(0, None))
        return np.asarray(f(jnp.asarray(theta_BP, jnp.float64), jnp.asarray(logx_NI, jnp.float64)))


def _with_noise(logpred_BN, sigma, seed):
    """Samples log L_pred(θ_b) + ε: M noise draws per bootstrap row -> [B·M, N]."""
    B = logpred_BN.shape[0]
    M = max(1, -(-MIN_SAMPLES // B))
    eps = np.random.default_rng(seed).normal(0.0, sigma, (B, M, logpred_BN.shape[1]))
    return (logpred_BN[:, None, :] + eps).reshape(B * M, -1)


def _central(samples, level, axis=0):
    q = 100 * np.array([(1 - level) / 2, (1 + level) / 2])
    lo, hi = np.percentile(samples, q, axis=axis)
    return lo, hi


def _check_level(level):
    if not 0 < level < 1:
        raise ValueError(f"level={level}: must be in (0, 1), e.g. 0.9")


def loss_interval(s: LawSamples, inputs: dict, *, level=0.9, seed=0) -> Prediction:
    """Predicted loss with its prediction interval at raw inputs (e.g. N=..., D=...)."""
    _check_level(level)
    cols = [np.atleast_1d(np.asarray(inputs[k], dtype=float)) for k in s.law.inputs]
    logx = np.log(np.stack(np.broadcast_arrays(*cols), 1))
    boot = log_predict(s.law, s.boot_theta, logx)
    ok = np.isfinite(boot).all(1)
    lo, hi = _central(_with_noise(boot[ok], s.noise.sigma, seed), level)
    value = np.exp(log_predict(s.law, s.theta[None], logx)[0])
    return Prediction(inputs={k: c for k, c in zip(s.law.inputs, cols)}, value=value,
                      lo=np.exp(lo), hi=np.exp(hi), level=level, kind=KIND_PI, noise=s.noise,
                      n_bootstrap=int(ok.sum()))


def _optimum(C, n_B, l_B, n_point, l_point, noise, level, seed, method, n_failed) -> Optimum:
    """Assemble an Optimum from per-bootstrap N*_b, L*_b (finite rows) and point values."""
    n_lo, n_hi = _central(np.log(n_B), level)
    l_lo, l_hi = _central(_with_noise(np.log(l_B)[:, None], noise.sigma, seed), level)
    d = lambda n: C / (6.0 * n)  # noqa: E731  D* from C = 6 N D
    n_iv = Interval(float(n_point), float(np.exp(n_lo)), float(np.exp(n_hi)), level, KIND_CI)
    d_iv = Interval(float(d(n_point)), float(d(n_iv.hi)), float(d(n_iv.lo)), level, KIND_CI)
    note = ""
    if n_iv.hi / n_iv.lo > FLAT_FACTOR:
        note = (f"isoFLOP curves flat: N* uncertain ({level:.0%} interval spans a factor "
                f"{n_iv.hi / n_iv.lo:.3g} > {FLAT_FACTOR:g})")
    if n_failed:
        note += ("; " if note else "") + f"{n_failed} bootstrap refits had no optimum"
    return Optimum(C=float(C), N=n_iv, D=d_iv,
                   L=Interval(float(l_point), float(np.exp(l_lo[0])), float(np.exp(l_hi[0])),
                              level, KIND_PI),
                   method=method, noise=noise, n_bootstrap=len(n_B), n_failed=n_failed, note=note)


def chinchilla_optimum(s: LawSamples, C: float, *, level=0.9, seed=0) -> Optimum:
    """Approach 3: N*, D* (closed form under C = 6ND) and L* at budget C, per bootstrap refit."""
    _check_level(level)
    if s.law.name != "chinchilla":
        raise ValueError(f"chinchilla_optimum needs a 'chinchilla' fit, got {s.law.name!r}")
    rep = s.law.to_reported(s.boot_theta)
    ok = (rep["alpha"] > 0) & (rep["beta"] > 0) & np.isfinite(s.boot_theta).all(1)
    if ok.sum() < 2:
        raise ValueError("fewer than 2 bootstrap refits have alpha > 0 and beta > 0")
    n_B, d_B = chinchilla.compute_optimal({k: v[ok] for k, v in rep.items()}, C)
    logx = np.log(np.stack([n_B, d_B], 1))
    with jax.enable_x64(True):  # each refit at its own optimum: one point per parameter vector
        l_B = np.exp(np.asarray(jax.vmap(lambda th, x: s.law.log_predict(th, x[None])[0])(
            jnp.asarray(s.boot_theta[ok]), jnp.asarray(logx))))
    n0, d0 = chinchilla.compute_optimal(s.law.to_reported(s.theta), C)
    l0 = np.exp(log_predict(s.law, s.theta[None], np.log([[float(n0), float(d0)]]))[0, 0])
    return _optimum(C, n_B, l_B, n0, l0, s.noise, level, seed, "approach3", int((~ok).sum()))


# ----- Approach 2: per-budget parabolas, power laws through their optima ------------------------


@dataclasses.dataclass
class Approach2Fit:
    """Approach 2 on isoFLOP budgets: power laws N_opt(C) = k_N·C^a and L*(C) = k_L·C^-gamma."""

    C: np.ndarray
    """[G] budgets kept (FLOPs; geometric mean of each budget's points)"""
    n_opt: np.ndarray
    """[G] parabola vertices N_opt (parameters)"""
    loss_opt: np.ndarray
    """[G] parabola minima (nats/token)"""
    coef: np.ndarray
    """[4] (a, log k_N, -gamma, log k_L) of the OLS power laws on all points"""
    boot_coef: np.ndarray
    """[B, 4] the same per bootstrap resample that kept an interior minimum in every budget"""
    n_failed: int
    """bootstrap resamples where some budget lost its interior minimum"""
    dropped: list
    """(budget C, reason) for budgets left out"""
    noise: Noise
    """run-to-run noise (replicate seeds, or the parabolas' residuals in log loss)"""


def _power_laws(logc, xs_RG, ys_RG):
    """OLS slopes/intercepts of log N_opt and log L_opt on log C per row -> [R, 4]."""
    lc = logc - logc.mean()
    out = []
    for v in (xs_RG, np.log(ys_RG)):
        slope = (v - v.mean(1, keepdims=True)) @ lc / (lc @ lc)
        out += [slope, v.mean(1) - slope * logc.mean()]
    return np.stack(out, 1)


def approach2_fit(table, *, budget=None, n_bootstrap=200, seed=0) -> Approach2Fit:
    """Approach 2 on table (n_params, loss, flops_6nd or flops; `budget` labels per row,
    default: C grouped within 10%): chinchilla.approach2's parabolas and budget rules, power
    laws of their vertices and minima, and its bootstrap within budgets."""
    c = columns(table, laws.kaplan("C"))["C"]
    n, y = table["n_params"].to_numpy(dtype=float), table["loss"].to_numpy(dtype=float)
    fit = chinchilla.approach2(c, n, y, budget=budget)  # raises with < MIN_BUDGETS kept
    _, groups = chinchilla.budget_groups(c, budget)
    kept = [(p, g) for p, g in zip(fit.parabolas, groups) if not p.reason]
    dropped = [(p.C, p.reason) for p in fit.parabolas if p.reason]
    for cg, why in dropped:
        warnings.warn(f"approach2: budget C={cg:.3g} left out: {why}", stacklevel=2)
    groups = [g for _, g in kept]
    logc = np.log([p.C for p, _ in kept])
    x0 = np.log([p.n_opt for p, _ in kept])
    y0 = np.array([p.predict(p.n_opt) for p, _ in kept])
    resid = np.concatenate([np.log(p.loss) - np.log(np.clip(p.predict(p.N), 1e-300, None)) for p, _ in kept])
    bx, by, ok = chinchilla.bootstrap_vertices(np.log(n), y, groups, n_bootstrap, seed)
    noise = estimate_noise(table.iloc[np.concatenate(groups)], resid, 3 * len(groups))
    return Approach2Fit(C=np.exp(logc), n_opt=np.exp(x0), loss_opt=y0,
                        coef=_power_laws(logc, x0[None], y0[None])[0],
                        boot_coef=_power_laws(logc, bx[ok], by[ok]),
                        n_failed=int((~ok).sum()), dropped=dropped, noise=noise)


def approach2_optimum(m: Approach2Fit, C: float, *, level=0.9, seed=0) -> Optimum:
    """N*, D* = C/(6N*) and L* at budget C from the Approach-2 power laws, per resample."""
    _check_level(level)
    if len(m.boot_coef) < 2:
        raise ValueError(f"approach2: only {len(m.boot_coef)} bootstrap resamples kept an "
                         f"interior minimum in every budget ({m.n_failed} failed)")
    lc = np.log(C)

    def at(k):  # (N_opt, L*) at C from power-law coefficients [..., 4]
        return np.exp(k[..., 0] * lc + k[..., 1]), np.exp(k[..., 2] * lc + k[..., 3])

    n_B, l_B = at(m.boot_coef)
    n0, l0 = at(m.coef)
    return _optimum(C, n_B, l_B, n0, l0, m.noise, level, seed, "approach2", m.n_failed)
