"""Chinchilla compute-optimal scaling (Hoffmann et al. 2022): Approaches 1, 2 and 3.

All three estimate how a compute budget C (FLOPs, C ≈ 6·N·D) is best split between parameters
N and tokens D, as power laws N_opt = k_N·C^a and D_opt = k_D·C^b:

- Approach 1 (`approach1`): the minimum-loss envelope over training curves. At each of many
  log-spaced compute values, the run with the lowest (interpolated) loss gives N_opt(C) and its
  tokens D_opt(C); power laws are then fitted through these points.
- Approach 2 (`approach2`): isoFLOP profiles. For each budget, a parabola of loss in log N gives
  the loss-minimising N; a budget whose parabola has no interior minimum is REFUSED (an error
  naming it) unless `drop_noninterior=True` (dropped with a warning). Power laws through the
  per-budget optima; bootstrap CIs by resampling points within budgets.
- Approach 3 (`approach3`): the parametric fit L(N, D) = E + A/N^α + B/D^β (analysis.fit with
  laws.chinchilla(), Huber δ=1e-3, the 4500-start grid), then the closed-form allocation
  N_opt = G·(C/6)^a, D_opt = G⁻¹·(C/6)^b, a = β/(α+β), b = α/(α+β), G = (αA/(βB))^(1/(α+β)).

Public API (stable):
- `allocation(params) -> {"a", "b", "G"}` from reported params {E, A, B, alpha, beta}.
- `compute_optimal(params, C) -> (N_opt, D_opt)` for Approach 3 params (C in FLOPs).
- `approach3(inputs, loss, **fit_kwargs) -> Fit` (inputs: "N", "D"; kwargs of analysis.fit.fit).
- `scaling_from_fit(fit) -> OptimalScaling` (with CIs when the fit was bootstrapped).
- `approach1(run, N, tokens, flops, loss, *, n_grid=1500, c_range=None) -> OptimalScaling`.
- `approach2(C, N, loss, *, budget=None, drop_noninterior=False, n_bootstrap=0, seed=0,
  ci=0.95) -> OptimalScaling` (D = C / 6N per point).
- `OptimalScaling`: method, a, b, k_N, k_D, ci {"a": (lo, hi), "b": ...} or None, points
  (dict of per-budget / per-grid arrays: C, N_opt, D_opt, loss_opt), dropped (budgets),
  n_opt(C), d_opt(C), to_dict().
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from analysis import fit as fitlib
from analysis import laws


# ----- Approach 3: parametric fit and closed-form allocation ----------------------------------


def allocation(params: dict) -> dict:
    """Exponents and constant of the compute-optimal frontier of E + A/N^α + B/D^β under C=6ND."""
    A, B, alpha, beta = (np.asarray(params[k], dtype=np.float64) for k in ("A", "B", "alpha", "beta"))
    if np.any(alpha <= 0) or np.any(beta <= 0):
        raise ValueError(f"allocation needs alpha > 0 and beta > 0, got alpha={alpha}, beta={beta}")
    s = alpha + beta
    return {"a": beta / s, "b": alpha / s, "G": (alpha * A / (beta * B)) ** (1.0 / s)}


def compute_optimal(params: dict, C) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt, D_opt) minimising E + A/N^α + B/D^β subject to 6·N·D = C (FLOPs)."""
    al = allocation(params)
    c6 = np.asarray(C, dtype=np.float64) / 6.0
    return al["G"] * c6 ** al["a"], c6 ** al["b"] / al["G"]


def approach3(inputs, loss, **fit_kwargs) -> fitlib.Fit:
    """Fit L(N, D) = E + A/N^α + B/D^β (Huber on log residuals, multi-start L-BFGS)."""
    return fitlib.fit(laws.chinchilla(), inputs, loss, **fit_kwargs)


@dataclasses.dataclass
class OptimalScaling:
    """N_opt = k_N·C^a and D_opt = k_D·C^b (C in FLOPs), with the points they were fitted to."""

    method: str
    a: float
    b: float
    k_N: float
    k_D: float
    ci: dict | None = None  # {"a": (lo, hi), "b": (lo, hi)}
    ci_level: float | None = None
    points: dict | None = None  # arrays: C, N_opt, D_opt (and loss_opt where known)
    dropped: list | None = None  # budgets (FLOPs) dropped as non-interior (Approach 2)
    boot: dict | None = None  # bootstrap samples {"a": [R], "b": [R]}
    note: str | None = None  # e.g. why there is no CI

    def n_opt(self, C):
        return self.k_N * np.asarray(C, dtype=np.float64) ** self.a

    def d_opt(self, C):
        return self.k_D * np.asarray(C, dtype=np.float64) ** self.b

    def to_dict(self) -> dict:
        d = dict(method=self.method, a=self.a, b=self.b, k_N=self.k_N, k_D=self.k_D)
        if self.ci is not None:
            d["ci_level"] = self.ci_level
            d["ci"] = {k: [float(lo), float(hi)] for k, (lo, hi) in self.ci.items()}
        if self.points is not None:
            d["points"] = {k: np.asarray(v).tolist() for k, v in self.points.items()}
        if self.dropped:
            d["dropped_budgets"] = [float(c) for c in self.dropped]
        if self.note:
            d["note"] = self.note
        return d


def _percentile_ci(samples: dict, ci: float) -> dict:
    q = 100 * np.array([(1 - ci) / 2, (1 + ci) / 2])
    return {k: tuple(float(x) for x in np.percentile(v, q)) for k, v in samples.items()}


def scaling_from_fit(result: fitlib.Fit) -> OptimalScaling:
    """Approach 3's allocation from a Chinchilla fit; CIs from its bootstrap samples if any."""
    if result.law.name != "chinchilla":
        raise ValueError(f"scaling_from_fit needs a 'chinchilla' fit, got {result.law.name!r}")
    al = allocation(result.params)
    out = OptimalScaling(method="approach3", a=float(al["a"]), b=float(al["b"]),
                         k_N=float(al["G"] * 6.0 ** -al["a"]), k_D=float(6.0 ** -al["b"] / al["G"]))
    if result.boot_params is not None:
        bp = result.boot_params
        ok = (bp["alpha"] > 0) & (bp["beta"] > 0)
        boot = {k: v[ok] for k, v in allocation({k: v[ok] for k, v in bp.items()}).items()}
        out.boot = {"a": boot["a"], "b": boot["b"]}
        out.ci, out.ci_level = _percentile_ci(out.boot, result.ci_level), result.ci_level
    return out


# ----- power law through optima ----------------------------------------------------------------


def _power_law(C, Y):
    """OLS of log Y on log C: returns (exponent, coefficient) of Y = coef · C^exponent."""
    slope, intercept = np.polyfit(np.log(C), np.log(Y), 1)
    return float(slope), float(np.exp(intercept))


# ----- Approach 1: minimum-loss envelope over training curves ---------------------------------


def approach1(run, N, tokens, flops, loss, *, n_grid=1500, c_range=None) -> OptimalScaling:
    """Envelope of training curves: at each of `n_grid` log-spaced FLOP values the run with the
    lowest loss (linear interpolation in log FLOPs within each run's own range) gives
    N_opt(C) = its N and D_opt(C) = its tokens at C; power laws through those points.

    run: a run id per row; N: parameters; tokens: tokens seen (D); flops: cumulative training
    FLOPs; loss: nats/token. `c_range` (lo, hi) defaults to the span where at least two runs
    have data.
    """
    run = np.asarray(run)
    N, tokens, flops, loss = (np.asarray(x, dtype=np.float64) for x in (N, tokens, flops, loss))
    if not (len(run) == len(N) == len(tokens) == len(flops) == len(loss)):
        raise ValueError("approach1: run, N, tokens, flops and loss must have the same length")
    if np.any(~np.isfinite(flops) | (flops <= 0)) or np.any(~np.isfinite(loss)):
        raise ValueError("approach1: flops must be finite and > 0 and loss finite")
    curves = []
    for r in np.unique(run):
        m = run == r
        if len(np.unique(N[m])) != 1:
            raise ValueError(f"approach1: run {r!r} has more than one N value")
        order = np.argsort(flops[m])
        if m.sum() >= 2:
            curves.append((N[m][0], np.log(flops[m][order]), loss[m][order],
                           np.log(tokens[m][order])))
    if len({c[0] for c in curves}) < 3:
        raise ValueError(f"approach1 needs curves of at least 3 model sizes (with >= 2 points "
                         f"each), got {len({c[0] for c in curves})}")
    if c_range is None:
        ends = np.sort([c[1][-1] for c in curves])
        starts = np.sort([c[1][0] for c in curves])
        lo, hi = starts[1], ends[-2]  # at least two runs span every grid point
    else:
        lo, hi = np.log(c_range[0]), np.log(c_range[1])
    if not hi > lo:
        raise ValueError("approach1: the runs' FLOP ranges do not overlap; pass c_range")
    grid = np.linspace(lo, hi, n_grid)
    L_RG = np.full((len(curves), n_grid), np.inf)
    logD_RG = np.zeros((len(curves), n_grid))
    for i, (_, lc, lv, ld) in enumerate(curves):
        inside = (grid >= lc[0]) & (grid <= lc[-1])
        L_RG[i, inside] = np.interp(grid[inside], lc, lv)
        logD_RG[i, inside] = np.interp(grid[inside], lc, ld)
    covered = np.isfinite(L_RG).any(axis=0)
    if covered.sum() < 2:
        raise ValueError("approach1: fewer than 2 grid points of c_range are covered by any run")
    grid, L_RG, logD_RG = grid[covered], L_RG[:, covered], logD_RG[:, covered]
    best = np.argmin(L_RG, axis=0)
    cols = np.arange(len(grid))
    C = np.exp(grid)
    n_opt = np.array([curves[i][0] for i in best])
    d_opt = np.exp(logD_RG[best, cols])
    a, k_N = _power_law(C, n_opt)
    b, k_D = _power_law(C, d_opt)
    return OptimalScaling(method="approach1", a=a, b=b, k_N=k_N, k_D=k_D,
                          points=dict(C=C, N_opt=n_opt, D_opt=d_opt, loss_opt=L_RG[best, cols]))


# ----- Approach 2: isoFLOP parabolas -----------------------------------------------------------


def group_budgets(C, rel_tol=0.1) -> np.ndarray:
    """Budget label per point, for budgets that are nominally equal but not exactly (digitised,
    rounded): going up in C, a point joins the current budget if its C is within a factor
    (1 + rel_tol) of that budget's smallest C, else starts a new one. Labels 0, 1, ... by C."""
    logc = np.log(np.asarray(C, dtype=np.float64))
    order = np.argsort(logc, kind="stable")
    labels = np.empty(len(logc), dtype=int)
    label, first = -1, -np.inf
    for i in order:
        if logc[i] > first + np.log1p(rel_tol):
            label, first = label + 1, logc[i]
        labels[i] = label
    return labels


def _parabola_vertices(x_N, y_N, w_RN, groups):
    """Weighted quadratic fits y = c0 + c1·x + c2·x² per group and per weight row.

    Returns vertex x* [R, G] (NaN when the fit has no interior minimum: c2 <= 0, or x* outside
    the group's x range, or too few distinct points) and the curvature c2 [R, G].
    """
    R = w_RN.shape[0]
    xs_G, c2_G = np.full((R, len(groups)), np.nan), np.full((R, len(groups)), np.nan)
    for g, idx in enumerate(groups):
        x, y, w = x_N[idx], y_N[idx], w_RN[:, idx]
        xc = x - x.mean()  # centred for conditioning
        X = np.stack([np.ones_like(xc), xc, xc * xc], axis=1)  # [n, 3]
        XtWX = np.einsum("rn,ni,nj->rij", w, X, X)
        XtWy = np.einsum("rn,ni,n->ri", w, X, y)
        distinct = np.array([len(np.unique(x[wr > 0])) for wr in w])
        ok = (distinct >= 3) & (np.abs(np.linalg.det(XtWX)) > 1e-12)
        coef = np.zeros((R, 3))
        if ok.any():
            coef[ok] = np.linalg.solve(XtWX[ok], XtWy[ok][..., None])[..., 0]
        c1, c2 = coef[:, 1], coef[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            vx = -c1 / (2 * c2) + x.mean()
        interior = ok & (c2 > 0) & (vx > x.min()) & (vx < x.max())
        xs_G[:, g] = np.where(interior, vx, np.nan)
        c2_G[:, g] = np.where(ok, c2, np.nan)
    return xs_G, c2_G


def approach2(C, N, loss, *, budget=None, drop_noninterior=False, n_bootstrap=0, seed=0,
              ci=0.95) -> OptimalScaling:
    """IsoFLOP profiles: per budget, loss ≈ parabola in log N; its vertex is N_opt(C).

    C: FLOPs per point; N: parameters; loss: nats/token; D = C/(6N). `budget`: a label per point
    (default: `group_budgets(C)`); each budget's C is the geometric mean of its points' C.
    A budget with fewer than 3 distinct N, a non-convex parabola, or a vertex outside its N range
    is refused with a ValueError naming it, or dropped with a warning if drop_noninterior=True.
    Bootstrap (n_bootstrap > 0): resample points within each budget, refit, percentile CIs.
    """
    C, N, loss = (np.asarray(x, dtype=np.float64) for x in (C, N, loss))
    if not (len(C) == len(N) == len(loss)):
        raise ValueError("approach2: C, N and loss must have the same length")
    for name, v in (("C", C), ("N", N)):
        if np.any(~np.isfinite(v) | (v <= 0)):
            raise ValueError(f"approach2: {name} must be finite and > 0")
    labels = group_budgets(C) if budget is None else np.asarray(budget)
    uniq = list(dict.fromkeys(labels[np.argsort(C, kind="stable")]))  # ordered by C
    groups = [np.flatnonzero(labels == u) for u in uniq]
    c_budget = np.array([np.exp(np.mean(np.log(C[g]))) for g in groups])
    x = np.log(N)
    xs, _ = _parabola_vertices(x, loss, np.ones((1, len(N))), groups)
    bad = np.isnan(xs[0])
    if bad.any():
        names = ", ".join(f"C={c:.3g} ({len(groups[i])} points, N in "
                          f"[{N[groups[i]].min():.3g}, {N[groups[i]].max():.3g}])"
                          for i, c in zip(np.flatnonzero(bad), c_budget[bad]))
        msg = (f"approach2: no interior loss minimum (convex parabola in log N with its vertex "
               f"inside the sampled N range) for budget(s) {names}")
        if not drop_noninterior:
            raise ValueError(msg + "; extend the N range of those budgets, or pass "
                             "drop_noninterior=True to drop them")
        warnings.warn(msg + "; dropped", stacklevel=2)
    keep = np.flatnonzero(~bad)
    if len(keep) < 2:
        raise ValueError(f"approach2 needs at least 2 budgets with interior minima, got {len(keep)}")
    groups = [groups[i] for i in keep]
    c_b = c_budget[keep]
    n_opt = np.exp(xs[0, keep])
    d_opt = c_b / (6 * n_opt)
    a, k_N = _power_law(c_b, n_opt)
    b, k_D = _power_law(c_b, d_opt)
    out = OptimalScaling(method="approach2", a=a, b=b, k_N=k_N, k_D=k_D,
                         points=dict(C=c_b, N_opt=n_opt, D_opt=d_opt),
                         dropped=[float(c) for c in c_budget[bad]])
    if n_bootstrap:
        try:
            out.boot = _approach2_bootstrap(x, loss, groups, c_b, n_bootstrap, seed)
            out.ci, out.ci_level = _percentile_ci(out.boot, ci), ci
        except ValueError as e:  # the point estimate stands; say why it has no interval
            out.note = f"no bootstrap CI: {e}"
            warnings.warn(out.note, stacklevel=2)
    return out


def _approach2_bootstrap(x, loss, groups, c_b, n_resamples, seed):
    """Resample points within each budget (counts as weights); drop resamples where some
    budget loses its interior minimum. Returns {"a": [R'], "b": [R']}."""
    rng = np.random.default_rng(seed)
    w_RN = np.zeros((n_resamples, len(x)))
    for g in groups:
        w_RN[:, g] = rng.multinomial(len(g), np.full(len(g), 1.0 / len(g)), size=n_resamples)
    xs, _ = _parabola_vertices(x, loss, w_RN, groups)
    ok = ~np.isnan(xs).any(axis=1)
    if ok.sum() < 0.5 * n_resamples:
        raise ValueError(f"approach2 bootstrap: only {ok.sum()} of {n_resamples} resamples have "
                         f"interior minima in every budget; the optima are not well determined")
    logc = np.log(c_b)
    lc = logc - logc.mean()
    slope_a = (xs[ok] - xs[ok].mean(1, keepdims=True)) @ lc / (lc @ lc)
    # log D_opt = log C − log 6 − log N_opt, so b = 1 − a exactly for each resample.
    return {"a": slope_a, "b": 1.0 - slope_a}
