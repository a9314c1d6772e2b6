"""Optimal hyperparameters: the best LR (or batch size) of each group, and power laws through them.

    opt = fit_optimum(lrs, losses)              # parabola in log LR around the grid's best point
    law = fit_power_law(budgets, optimal_lrs)   # eta*(C) = a * C**b, by least squares in log-log

Optimum of one group (one width, one model size N or one budget C): the loss is modelled as a
parabola in u = ln(x) through the grid's best point and its neighbours (up to two on each side);
the optimum is its vertex exp(-b / 2c). Interval: the delta method on the vertex with the parabola's
residual variance, a t quantile with n - 3 degrees of freedom (none with only 3 points). A grid
whose best point is its smallest or largest value (diverged runs left out) has its optimum on the
EDGE: reported as that grid value with edge='low' or 'high' and no interval, never extrapolated;
a parabola that is not convex is reported as edge='flat'. Such groups are left out of the laws,
which say so.

Power law (DeepSeek-LLM's form): y = a * x**b fitted as ln y = ln a + b ln x by ordinary least
squares over the groups' optima; intervals on b and on a from the t distribution with n - 2
degrees of freedom (none with 2 groups).

The fit file (`write_fit_file`; format in scaling/hparam_file.py): the laws, every group's optimum and
the sweep and command they came from (`fit_source`), for sweep rules to read back (launch.hparams);
its identity is the SHA-256 of its bytes.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np
import scipy.stats

from scaling import hparam_file

EDGES = ("", "low", "high", "flat")  # interior, best at the grid's smallest / largest value, not convex
LEVEL = 0.9  # the default interval level


class HparamFitError(ValueError):
    """The data cannot give an optimum or a law (too few points, non-positive values)."""


@dataclasses.dataclass(frozen=True)
class Optimum:
    """The best value of one hyperparameter in one group."""
    x_name: str  # which hyperparameter: 'lr' or 'batch_size'
    best: float  # the optimum: the parabola's vertex (interior) or the grid value (edge)
    lo: float  # lower end of the interval on `best` (nan: no interval)
    hi: float  # upper end (nan: no interval)
    level: float  # the interval's level (two-sided), e.g. 0.9
    edge: str  # '' interior; 'low'/'high': best at the grid's smallest/largest value; 'flat': not convex
    grid_best: float  # the grid value with the lowest loss
    loss_at_best: float  # the lowest loss on the grid (nats/token)
    n_points: int  # grid points used (finite losses)
    n_diverged: int  # grid points whose loss was not finite (left out)
    note: str  # what was done, in words

    @property
    def interior(self) -> bool:
        return self.edge == ""


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """y = coef * x ** exponent fitted over groups' optima."""
    y_name: str  # e.g. 'lr' (eta*) or 'batch_size' (B*, sequences)
    x_name: str  # e.g. 'flops' (C, the group's budget in FLOPs) or 'n_params' (N, total)
    coef: float  # a
    exponent: float  # b
    coef_ci: tuple[float, float]  # interval on a (nan, nan with 2 points)
    exponent_ci: tuple[float, float]  # interval on b
    level: float  # the intervals' level (two-sided; t distribution, n - 2 dof)
    n_groups: int  # groups used (interior optima)
    left_out: tuple[str, ...]  # groups left out and why

    def __call__(self, x: float) -> float:
        return float(self.coef * float(x) ** self.exponent)


def fit_optimum(xs, losses, *, x_name: str = "lr", level: float = LEVEL) -> Optimum:
    """The optimum of `x_name` over one grid (xs > 0, losses in nats/token; inf/nan = diverged)."""
    xs, losses = np.asarray(xs, float), np.asarray(losses, float)
    if xs.shape != losses.shape or xs.ndim != 1:
        raise HparamFitError(f"{x_name}: {xs.shape} grid values but {losses.shape} losses")
    if np.any(~(xs > 0)):
        raise HparamFitError(f"{x_name}: grid values must be > 0, got {xs.tolist()}")
    if len(set(xs.tolist())) != len(xs):
        raise HparamFitError(f"{x_name}: the grid repeats a value ({sorted(xs.tolist())}); average replicates first")
    ok = np.isfinite(losses)
    order = np.argsort(xs[ok])
    x, y = xs[ok][order], losses[ok][order]
    n_div = int((~ok).sum())
    if len(x) < 3:
        raise HparamFitError(f"{x_name}: {len(x)} finite losses; an optimum needs at least 3 grid points")
    i = int(np.argmin(y))
    common = dict(x_name=x_name, level=level, grid_best=float(x[i]), loss_at_best=float(y[i]),
                  n_points=len(x), n_diverged=n_div)
    if i in (0, len(x) - 1):
        edge = "low" if i == 0 else "high"
        return Optimum(best=float(x[i]), lo=math.nan, hi=math.nan, edge=edge,
                       note=f"best at the grid's {'smallest' if i == 0 else 'largest'} {x_name} {x[i]:.3g}: "
                            "the optimum may lie beyond the grid (not extrapolated); widen the grid", **common)
    # The parabola through the best point and up to two neighbours on each side: a local model.
    window = slice(max(i - 2, 0), min(i + 3, len(x)))
    u, yw = np.log(x[window]), y[window]
    X = np.stack([np.ones_like(u), u, u * u], axis=1)
    coef, *_ = np.linalg.lstsq(X, yw, rcond=None)
    a0, b, c = coef
    if not c > 0:
        return Optimum(best=float(x[i]), lo=math.nan, hi=math.nan, edge="flat",
                       note=f"the loss is not convex in log {x_name} around the best point; grid value reported",
                       **common)
    u_star = -b / (2 * c)
    dof = len(u) - 3
    lo = hi = math.nan
    note = f"parabola in ln {x_name} through {len(u)} points"
    if dof > 0:
        resid = yw - X @ coef
        cov = float(resid @ resid) / dof * np.linalg.inv(X.T @ X)
        grad = np.array([0.0, -1 / (2 * c), b / (2 * c * c)])
        se = math.sqrt(max(float(grad @ cov @ grad), 0.0))
        t = float(scipy.stats.t.ppf(0.5 + level / 2, dof))
        lo, hi = math.exp(u_star - t * se), math.exp(u_star + t * se)
        note += f"; {level:.0%} delta-method interval (t, {dof} dof)"
    else:
        note += "; no interval (3 points leave no residual degrees of freedom)"
    return Optimum(best=float(math.exp(u_star)), lo=lo, hi=hi, edge="", note=note, **common)


def fit_power_law(xs, optima: list[Optimum], labels, *, y_name: str, x_name: str,
                  level: float = LEVEL) -> PowerLaw:
    """y* = a * x**b through the interior optima (edge ones are left out and named)."""
    keep, left_out = [], []
    for x, opt, label in zip(xs, optima, labels):
        if opt.interior:
            keep.append((float(x), opt.best))
        else:
            left_out.append(f"{label}: optimum on the grid's edge ({opt.edge})")
    if len(keep) < 2:
        raise HparamFitError(f"{y_name}*({x_name}): {len(keep)} groups with an interior optimum "
                             f"(left out: {left_out}); a power law needs at least 2")
    lx, ly = np.log([k[0] for k in keep]), np.log([k[1] for k in keep])
    if np.ptp(lx) == 0:
        raise HparamFitError(f"{y_name}*({x_name}): every group has the same {x_name}")
    X = np.stack([np.ones_like(lx), lx], axis=1)
    (ln_a, b), *_ = np.linalg.lstsq(X, ly, rcond=None)
    dof = len(lx) - 2
    a_ci = b_ci = (math.nan, math.nan)
    if dof > 0:
        resid = ly - X @ np.array([ln_a, b])
        cov = float(resid @ resid) / dof * np.linalg.inv(X.T @ X)
        t = float(scipy.stats.t.ppf(0.5 + level / 2, dof))
        se_a, se_b = math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1])
        a_ci = (math.exp(ln_a - t * se_a), math.exp(ln_a + t * se_a))
        b_ci = (float(b - t * se_b), float(b + t * se_b))
    return PowerLaw(y_name, x_name, float(math.exp(ln_a)), float(b), a_ci, b_ci, level, len(keep), tuple(left_out))


def law_doubts(law: PowerLaw) -> list[str]:
    """What should make one doubt a fitted law, in words: no interval (2 groups), or an exponent
    interval that includes 0 (the optima do not show y* changing with x at the interval's level)."""
    name = f"{law.y_name}*({law.x_name})"
    lo, hi = law.exponent_ci
    if math.isnan(lo):
        return [f"{name}: {law.n_groups} groups leave no degrees of freedom: the exponent has no interval"]
    if lo <= 0 <= hi:
        return [f"{name}: the exponent's {law.level:.0%} interval [{lo:.3g}, {hi:.3g}] includes 0: these optima "
                f"do not show {law.y_name}* changing with {law.x_name}; add groups or widen their range"]
    return []


def write_fit_file(path, laws: dict[str, PowerLaw], optima: list[dict], source: dict) -> str:
    """Write the laws ({'lr_vs_flops': law, ...}), the per-group optima and where they came from
    (`fit_source`; scaling.hparam_file's format); return the file's SHA-256."""
    return hparam_file.write(path, {name: _finite(dataclasses.asdict(law)) for name, law in laws.items()},
                             [_finite(o) for o in optima], source)


def fit_source(sweep_dirs, df, command: str) -> dict:
    """The fit file's provenance: the sweep directories as given, the sweep files their sweep.json
    name ("" when none; several joined by " + ", in the order given), the number of runs fitted
    (rows of `df`) and the command line."""
    from scaling import rundir
    dirs = [sweep_dirs] if isinstance(sweep_dirs, (str, pathlib.Path)) else list(sweep_dirs)
    files = [str((rundir.read_manifest(d) or {}).get("source", "")) for d in dirs]
    return {"sweep_dir": " + ".join(str(d) for d in dirs), "sweep_file": " + ".join(files),
            "n_runs": int(len(df)), "command": command}


def _finite(d: dict) -> dict:
    """NaN -> None (JSON has no NaN), recursively through tuples/lists."""
    def fix(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v
    return fix(d)


GROUP_XS = {"flops": "budget", "n_params": "n_params"}  # law's x -> the table column that groups runs


def sweep_table(paths, *, on_error: str = "warn"):
    """analysis.results.load of each sweep directory in `paths` (one path or several: e.g. a grid and
    its extensions, planned as separate sweeps) plus each run's Adam LR (`lr`) and batch
    (`batch_size`, sequences) from its config.json; runs that failed (e.g. diverged at too high an
    LR) are skipped, with the results loader's warning. A run found in two directories (the same
    run id) is refused: its loss would count twice."""
    import pandas as pd
    from analysis import results
    from scaling import rundir
    paths = [paths] if isinstance(paths, (str, pathlib.Path)) else list(paths)
    df = pd.concat([results.load(p, on_error=on_error) for p in paths], ignore_index=True)
    ids = pd.Series([pathlib.Path(d).name for d in df["run_dir"]])
    if ids.duplicated().any():
        dup = ids[ids.duplicated()].iloc[0]
        raise HparamFitError(f"run {dup} is in more than one of {', '.join(map(str, paths))}: give each run once")
    configs = [rundir.read_json_object(pathlib.Path(d) / rundir.CONFIG) or {} for d in df["run_dir"]]
    df["lr"] = [c.get("optim", {}).get("lr") for c in configs]
    df["batch_size"] = [c.get("train", {}).get("batch_size") for c in configs]
    return df


def fit_table(df, *, x: str = "flops", level: float = LEVEL) -> tuple[dict[str, PowerLaw], list[dict]]:
    """Per group (budget C, or model size N) the optimal LR (at the group's best batch size) and the
    optimal batch size (each batch's best loss over LRs), then the laws lr_vs_<x> and batch_size_vs_<x>.

    df: columns lr, batch_size, loss and the group column (budget for x='flops', n_params for
    x='n_params'). Returns ({law name: PowerLaw}, [per-group optimum dicts]); a law that cannot be
    fitted (fewer than 2 interior optima) is left out and named in the optima's notes.
    """
    if x not in GROUP_XS:
        raise HparamFitError(f"x={x!r}: must be one of {tuple(GROUP_XS)}")
    col = GROUP_XS[x]
    missing = [c for c in (col, "lr", "batch_size", "loss") if c not in df.columns]
    if missing or df[col].isna().all():
        raise HparamFitError(f"the runs lack {missing or [col]}: an x={x!r} fit needs them "
                             "(x='flops' needs an isoflop sweep's budgets)")
    rows, lr_opt, b_opt = [], [], []
    for g, sub in sorted(df.groupby(col), key=lambda kv: kv[0]):
        by_batch = sub.groupby("batch_size")["loss"].min()
        best_b = float(by_batch.idxmin())
        at_b = sub[sub["batch_size"] == best_b].groupby("lr")["loss"].mean()  # replicates averaged
        lr_o = fit_optimum(at_b.index.to_numpy(float), at_b.to_numpy(float), x_name="lr", level=level)
        b_o = (fit_optimum(by_batch.index.to_numpy(float), by_batch.to_numpy(float), x_name="batch_size", level=level)
               if len(by_batch) >= 3 else None)
        lr_opt.append((float(g), lr_o))
        b_opt.append((float(g), b_o))
        rows.append({col: float(g), "lr": dataclasses.asdict(lr_o), "batch_size": b_o and dataclasses.asdict(b_o)})
    laws = {}
    for name, pairs in (("lr", lr_opt), ("batch_size", b_opt)):
        pairs = [(g, o) for g, o in pairs if o is not None]
        try:
            laws[f"{name}_vs_{x}"] = fit_power_law([g for g, _ in pairs], [o for _, o in pairs],
                                                   [f"{col}={g:.3g}" for g, _ in pairs], y_name=name, x_name=x,
                                                   level=level)
        except HparamFitError as e:
            rows.append({"law": f"{name}_vs_{x}", "not_fitted": str(e)})
    return laws, rows
