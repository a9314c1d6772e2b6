"""Chinchilla compute-optimal scaling (Hoffmann et al. 2022): Approaches 1, 2 and 3.

All three estimate how a compute budget C (FLOPs, C ≈ 6·N·D) is best split between parameters
N and tokens D, as power laws N_opt = k_N·C^a and D_opt = k_D·C^b:

- Approach 1 (`approach1`): the minimum-loss envelope over training curves. At each of many
  log-spaced compute values, the run with the lowest (interpolated) loss gives N_opt(C) and its
  tokens D_opt(C); power laws are then fitted through these points.
- Approach 2 (`approach2`): isoFLOP profiles. For each budget, a parabola of loss in log N
  gives the loss-minimising N. A budget with fewer than 4 sizes, no interior minimum, or a flat
  parabola is left out with a warning naming it and why; the fit needs 3 budgets that remain.
  Power laws through the per-budget optima; bootstrap CIs by resampling points within budgets.
- Approach 3 (`approach3`): the parametric fit L(N, D) = E + A/N^α + B/D^β (analysis.fit with
  laws.chinchilla(), Huber δ=1e-3, the 4500-start grid), then the closed-form allocation
  N_opt = G·(C/6)^a, D_opt = G⁻¹·(C/6)^b, a = β/(α+β), b = α/(α+β), G = (αA/(βB))^(1/(α+β)).

Results are `OptimalScaling` (N_opt = k_N·C^a, D_opt = k_D·C^b with bootstrap percentile CIs);
Approach 2 also keeps one `Parabola` per budget (kept or left out, with the reason).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import scipy.stats

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

    method: str  # "approach1" | "approach2" | "approach3"
    a: float  # N_opt ∝ C^a
    b: float  # D_opt ∝ C^b
    k_N: float  # N_opt = k_N · C^a (C in FLOPs)
    k_D: float  # D_opt = k_D · C^b
    ci: dict | None = None  # {"a": (lo, hi), "b": (lo, hi)}: bootstrap percentile intervals
    ci_level: float | None = None  # their central level, e.g. 0.95
    points: dict | None = None  # arrays: C, N_opt, D_opt (and loss_opt where known)
    dropped: list | None = None  # budgets (FLOPs) left out (Approach 2); reasons in `parabolas`
    boot: dict | None = None  # successful bootstrap samples {"a": [R'], "b": [R']}
    note: str | None = None  # e.g. why there is no CI
    n_bootstrap: int = 0  # resamples drawn
    n_boot_failed: int = 0  # resamples that failed (counted, not in the CI; see `warnings`)
    parabolas: list | None = None  # Approach 2: one Parabola per budget, kept or left out
    warnings: list = dataclasses.field(default_factory=list)  # budgets left out, failed resamples

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
            d["left_out"] = [{"C": p.C, "reason": p.reason} for p in self.parabolas or () if p.reason]
        if self.note:
            d["note"] = self.note
        if self.n_bootstrap:
            d.update(ci_kind=fitlib.CI_KIND, n_bootstrap=self.n_bootstrap,
                     n_boot_failed=self.n_boot_failed)
        d["warnings"] = list(self.warnings)
        return d


def _percentile_cis(samples: dict, level: float) -> dict:
    return {k: tuple(float(x) for x in fitlib.percentile_interval(v, level)) for k, v in samples.items()}


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
        out.n_bootstrap = len(ok) + result.n_boot_failed
        out.n_boot_failed = int((~ok).sum()) + result.n_boot_failed
        if not ok.all():
            out.warnings.append(f"allocation bootstrap: {int((~ok).sum())} of {len(ok)} refits have "
                                f"alpha <= 0 or beta <= 0 (no compute-optimal allocation) and are "
                                f"left out of the CIs of a and b")
        boot = {k: v[ok] for k, v in allocation({k: v[ok] for k, v in bp.items()}).items()}
        out.boot = {"a": boot["a"], "b": boot["b"]}
        out.ci, out.ci_level = _percentile_cis(out.boot, result.ci_level), result.ci_level
    return out


def compute_optimal_band(boot_params: dict, C, level: float = 0.95):
    """Bootstrap percentile bands ((N_lo, N_hi), (D_lo, D_hi)) of N_opt(C) and D_opt(C) from
    Approach 3 resamples (those with alpha, beta > 0: the others have no allocation)."""
    ok = (boot_params["alpha"] > 0) & (boot_params["beta"] > 0)
    bp = {k: np.asarray(v)[ok][:, None] for k, v in boot_params.items()}
    n, d = compute_optimal(bp, np.asarray(C, dtype=np.float64)[None, :])
    return fitlib.percentile_interval(n, level), fitlib.percentile_interval(d, level)


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


MIN_SIZES = 4  # distinct N per budget: a parabola through 3 points fits them exactly (no residual)
MIN_BUDGETS = 3  # budgets with an interior minimum needed for the power laws through the optima
# "Flat": the curvature c2 is not significantly > 0 (one-sided t-test at FLAT_P on the n - 3
# residual degrees of freedom). Why this test: the vertex x* = -c1/(2 c2) is a ratio of
# estimates, and by Fieller's theorem its confidence set at level 1 - 2·FLAT_P (90%) is a bounded
# interval exactly when c2/SE(c2) exceeds t_{1-FLAT_P, n-3}. A budget that fails it does not
# locate N_opt even roughly, and its vertex would steer the power law arbitrarily.
FLAT_P = 0.05


@dataclasses.dataclass
class Parabola:
    """One isoFLOP budget's least-squares parabola loss = c0 + c1·x + c2·x², x = log N − x_mean."""

    label: object  # the budget's label (the sweep's nominal budget, or a group index)
    C: float  # the budget: geometric mean of its points' C (FLOPs)
    N: np.ndarray = dataclasses.field(repr=False)  # its points' parameter counts
    loss: np.ndarray = dataclasses.field(repr=False)  # its points' losses (nats/token)
    n_sizes: int  # distinct N among its points
    coef: tuple | None  # (c0, c1, c2); None when fewer than 3 distinct sizes determine none
    x_mean: float  # the centring of x: mean log N of its points
    t_curvature: float | None  # c2 / SE(c2); None without residual degrees of freedom
    n_opt: float | None  # the vertex N = N_opt(C) of a kept budget, else None
    status: str  # "kept" | "too few sizes" | "no interior minimum" | "flat"
    reason: str | None  # why it was left out (for warnings); None when kept

    def predict(self, N) -> np.ndarray:
        """The parabola's loss at N (parameters)."""
        x = np.log(np.asarray(N, dtype=np.float64)) - self.x_mean
        return self.coef[0] + self.coef[1] * x + self.coef[2] * x * x

    def describe(self) -> str:
        """'C=1e+20 (9 points, 9 sizes, N in [1e+08, 1e+09])': names the budget in messages."""
        return (f"C={self.C:.3g} ({len(self.N)} points, {self.n_sizes} sizes, N in "
                f"[{self.N.min():.3g}, {self.N.max():.3g}])")


def _parabola_fits(x_N, y_N, w_RN, groups):
    """Weighted quadratic fits per group and per weight row, in x centred on the group's mean.

    Returns coef [R, G, 3] and ok [R, G] (>= 3 distinct x with weight and a solvable system)."""
    R = w_RN.shape[0]
    coef_RG3, ok_RG = np.zeros((R, len(groups), 3)), np.zeros((R, len(groups)), bool)
    for g, idx in enumerate(groups):
        x, y, w = x_N[idx] - x_N[idx].mean(), y_N[idx], w_RN[:, idx]
        X = np.stack([np.ones_like(x), x, x * x], axis=1)  # [n, 3]
        XtWX = np.einsum("rn,ni,nj->rij", w, X, X)
        XtWy = np.einsum("rn,ni,n->ri", w, X, y)
        distinct = np.array([len(np.unique(x[wr > 0])) for wr in w])
        ok = (distinct >= 3) & (np.abs(np.linalg.det(XtWX)) > 1e-12)
        if ok.any():
            coef_RG3[ok, g] = np.linalg.solve(XtWX[ok], XtWy[ok][..., None])[..., 0]
        ok_RG[:, g] = ok
    return coef_RG3, ok_RG


def _interior_vertex(coef_R3, x):
    """Vertex x* (in the centred x of `x`) where the parabola has an interior minimum, else NaN."""
    c1, c2 = coef_R3[..., 1], coef_R3[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        vx = -c1 / (2 * c2)
    xc = x - x.mean()
    return np.where((c2 > 0) & (vx > xc.min()) & (vx < xc.max()), vx, np.nan)


def _budget_parabola(label, C, N, loss, coef, ok) -> Parabola:
    """Judge one budget's parabola: kept, or left out with the reason."""
    x = np.log(N)
    p = Parabola(label=label, C=float(np.exp(np.mean(np.log(C)))), N=N, loss=loss,
                 n_sizes=len(np.unique(N)), coef=tuple(map(float, coef)) if ok else None,
                 x_mean=float(x.mean()), t_curvature=None, n_opt=None, status="kept", reason=None)
    if p.n_sizes < MIN_SIZES:
        p.status, p.reason = "too few sizes", (
            f"{p.n_sizes} distinct sizes; a parabola needs >= {MIN_SIZES} (through 3 it fits them "
            f"exactly, leaving no residual to test its curvature against)")
        return p
    vx = _interior_vertex(np.asarray(coef), x)
    if p.coef[2] <= 0:
        p.status, p.reason = "no interior minimum", "no interior minimum (the parabola opens downward)"
        return p
    if np.isnan(vx):
        p.status, p.reason = "no interior minimum", (
            f"no interior minimum (the vertex N={np.exp(-coef[1] / (2 * coef[2]) + p.x_mean):.3g} "
            f"lies outside the sampled N range)")
        return p
    xc = x - p.x_mean
    X = np.stack([np.ones_like(xc), xc, xc * xc], axis=1)
    dof = len(x) - 3
    s2 = np.sum((loss - X @ np.asarray(coef)) ** 2) / dof
    se = np.sqrt(s2 * np.linalg.inv(X.T @ X)[2, 2])
    p.t_curvature = float(coef[2] / se) if se > 0 else float("inf")
    crit = float(scipy.stats.t.ppf(1 - FLAT_P, dof))
    if p.t_curvature < crit:
        p.status, p.reason = "flat", (
            f"flat: curvature {coef[2]:.3g} is not significantly > 0 (t = {p.t_curvature:.2f} < "
            f"{crit:.2f}, one-sided {100 * FLAT_P:g}% on {dof} dof: the 90% interval of N_opt is unbounded)")
        return p
    p.n_opt = float(np.exp(vx + p.x_mean))
    return p


def budget_groups(C, budget=None) -> tuple[list, list[np.ndarray]]:
    """(budget labels ordered by C, the row indices of each): `budget` labels per point, or
    `group_budgets(C)` when None. The grouping `approach2` and its parabolas use."""
    C = np.asarray(C, dtype=np.float64)
    labels = group_budgets(C) if budget is None else np.asarray(budget)
    uniq = list(dict.fromkeys(labels[np.argsort(C, kind="stable")]))
    return uniq, [np.flatnonzero(labels == u) for u in uniq]


def approach2(C, N, loss, *, budget=None, n_bootstrap=0, seed=0, ci=0.95) -> OptimalScaling:
    """IsoFLOP profiles: per budget, loss ≈ parabola in log N; its vertex is N_opt(C).

    C: FLOPs per point; N: parameters; loss: nats/token; D = C/(6N). `budget`: a label per point
    (default: `group_budgets(C)`). Budgets with fewer than MIN_SIZES sizes, no interior minimum
    or a flat parabola are left out (`parabolas`, `warnings` say which and why); the fit needs
    MIN_BUDGETS that remain. Bootstrap (n_bootstrap > 0): resample points within each kept budget.
    """
    C, N, loss = (np.asarray(x, dtype=np.float64) for x in (C, N, loss))
    if not (len(C) == len(N) == len(loss)):
        raise ValueError("approach2: C, N and loss must have the same length")
    for name, v in (("C", C), ("N", N)):
        if np.any(~np.isfinite(v) | (v <= 0)):
            raise ValueError(f"approach2: {name} must be finite and > 0")
    uniq, groups = budget_groups(C, budget)
    if len(groups) < MIN_BUDGETS:
        raise ValueError(f"approach2 needs at least {MIN_BUDGETS} budgets, got {len(groups)}")
    x = np.log(N)
    coef, ok = _parabola_fits(x, loss, np.ones((1, len(N))), groups)
    parabolas = [_budget_parabola(u, C[g], N[g], loss[g], coef[0, i], ok[0, i])
                 for i, (u, g) in enumerate(zip(uniq, groups))]
    left_out = [f"approach2: budget {p.describe()} left out: {p.reason}" for p in parabolas if p.reason]
    keep = [i for i, p in enumerate(parabolas) if not p.reason]
    if len(keep) < MIN_BUDGETS:
        raise ValueError(f"approach2 needs at least {MIN_BUDGETS} budgets with an interior minimum, "
                         f"got {len(keep)} of {len(groups)}; " + "; ".join(left_out))
    c_b = np.array([parabolas[i].C for i in keep])
    n_opt = np.array([parabolas[i].n_opt for i in keep])
    d_opt = c_b / (6 * n_opt)
    a, k_N = _power_law(c_b, n_opt)
    b, k_D = _power_law(c_b, d_opt)
    out = OptimalScaling(method="approach2", a=a, b=b, k_N=k_N, k_D=k_D,
                         points=dict(C=c_b, N_opt=n_opt, D_opt=d_opt,
                                     loss_opt=np.array([parabolas[i].predict(parabolas[i].n_opt) for i in keep])),
                         dropped=[p.C for p in parabolas if p.reason], parabolas=parabolas,
                         warnings=left_out)
    if n_bootstrap:
        out.n_bootstrap = n_bootstrap
        try:
            out.boot, out.n_boot_failed = _approach2_bootstrap(x, loss, [groups[i] for i in keep], c_b,
                                                               n_bootstrap, seed)
            out.ci, out.ci_level = _percentile_cis(out.boot, ci), ci
        except _DegenerateBootstrap as e:  # the point estimate stands; say why it has no interval
            out.n_boot_failed = e.n_failed
            out.note = f"no bootstrap CI: {e}"
            out.warnings.append(f"approach2: {out.note}")
        if out.n_boot_failed and out.ci is not None:
            out.warnings.append(f"approach2 bootstrap: {out.n_boot_failed} of {n_bootstrap} resamples "
                                f"lost a kept budget's interior minimum and are left out of the CIs")
    return out


class _DegenerateBootstrap(ValueError):
    def __init__(self, message, n_failed):
        super().__init__(message)
        self.n_failed = n_failed


def _approach2_bootstrap(x, loss, groups, c_b, n_resamples, seed):
    """Resample points within each budget (counts as weights) and refit its parabola. A resample
    fails when a budget keeps < 3 distinct sizes or loses its interior minimum (no MIN_SIZES or
    flatness test here: that would keep only the resamples that look certain). Returns
    ({"a": [R'], "b": [R']}, number failed); raises when more than half fail."""
    xs, _, good = bootstrap_vertices(x, loss, groups, n_resamples, seed)
    n_failed = int(n_resamples - good.sum())
    if good.sum() < 0.5 * n_resamples:
        raise _DegenerateBootstrap(f"approach2 bootstrap: only {good.sum()} of {n_resamples} resamples "
                                   f"have interior minima in every budget; the optima are not well "
                                   f"determined", n_failed)
    lc = np.log(c_b) - np.log(c_b).mean()
    slope_a = (xs[good] - xs[good].mean(1, keepdims=True)) @ lc / (lc @ lc)
    # log D_opt = log C − log 6 − log N_opt, so b = 1 − a exactly for each resample.
    return {"a": slope_a, "b": 1.0 - slope_a}, n_failed


def bootstrap_vertices(x, loss, groups, n_resamples: int, seed: int = 0):
    """Resample points within each budget (multinomial counts as weights) and refit its parabola:
    vertices x* = log N_opt [R, G], minimum losses [R, G] (NaN where no interior minimum), and
    `good` [R]: the resamples with >= 3 distinct sizes and an interior minimum in every budget."""
    rng = np.random.default_rng(seed)
    w_RN = np.zeros((n_resamples, len(x)))
    for g in groups:
        w_RN[:, g] = rng.multinomial(len(g), np.full(len(g), 1.0 / len(g)), size=n_resamples)
    coef, ok = _parabola_fits(x, loss, w_RN, groups)
    vx = np.stack([_interior_vertex(coef[:, i], x[g]) for i, g in enumerate(groups)], axis=1)
    ys = coef[..., 0] + coef[..., 1] * vx + coef[..., 2] * vx * vx
    xs = vx + np.array([x[g].mean() for g in groups])
    good = ok.all(axis=1) & ~np.isnan(xs).any(axis=1)
    return xs, ys, good
