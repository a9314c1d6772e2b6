"""Fit workflows: a table of runs in, a typed result out. No printing: the CLI and the report do.

    from analysis import results, workflows
    df = results.load("sweeps/demo_cpu")
    r = workflows.approach3(df, workflows.FitOptions(n_bootstrap=200), out="figs/approach3")
    r.fit.params, r.fit.ci, r.allocation.a, r.rows, r.warnings, r.files

`approach3`, `approach2`, `approach1` (training curves: analysis.results.load_curves),
`kaplan` (L(N), L(D) or L(C)), `bnsl` (a broken power law in N, D or C) and `data_constrained`
(L(N, D, U), Muennighoff et al.) each fit, draw their figures into `out` (skipped when out is
None) and return a `WorkflowResult`.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from analysis import chinchilla, figures, fit as fitlib, kaplan as kaplanlib, laws

C6ND_LABEL = figures.C6ND_LABEL


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """How a workflow fits; the same options for every workflow."""

    n_bootstrap: int = 1000  # resamples for bootstrap percentile CIs; 0: no CIs
    n_starts: int = 0  # starts evenly taken from the law's default grid; 0: the whole grid
    seed: int = 0  # bootstrap seed
    ci_level: float = 0.95  # central level of the percentile CIs

    def __post_init__(self):
        if self.n_bootstrap < 0 or self.n_bootstrap == 1:
            raise ValueError(f"--bootstrap={self.n_bootstrap}: use 0 (no CIs) or >= 2 resamples")
        if self.n_starts < 0:
            raise ValueError(f"--n-starts={self.n_starts}: must be >= 0 (0: the full default grid)")
        if not 0 < self.ci_level < 1:
            raise ValueError(f"ci_level={self.ci_level}: must be in (0, 1)")


@dataclasses.dataclass
class AllocationRow:
    """The compute-optimal split of one budget C."""

    C: float  # budget, FLOPs (C = 6ND)
    N_opt: float  # parameters (total)
    D_opt: float  # training tokens
    N_opt_ci: tuple | None = None  # bootstrap percentile interval of N_opt (Approach 3 only)
    D_opt_ci: tuple | None = None  # same for D_opt

    def to_dict(self) -> dict:
        d = {"C": self.C, "N_opt": self.N_opt, "D_opt": self.D_opt,
             "tokens_per_param": self.D_opt / self.N_opt}
        if self.N_opt_ci is not None:
            d["N_opt_ci"], d["D_opt_ci"] = list(self.N_opt_ci), list(self.D_opt_ci)
        return d


@dataclasses.dataclass
class WorkflowResult:
    """What one fit workflow found and wrote."""

    workflow: str  # "approach3" | "approach2" | "approach1" | "kaplan-n|d|c" | "bnsl" | "data-constrained"
    notes: list[str]  # what was fitted on, one line each (printed before the fit)
    fit: fitlib.Fit | None = None  # parametric law (approach3, kaplan): params, ci, ci_level
    allocation: chinchilla.OptimalScaling | None = None  # a, b with their CIs (ci_level)
    rows: list[AllocationRow] = dataclasses.field(default_factory=list)  # allocation table
    warnings: list[str] = dataclasses.field(default_factory=list)  # fit, budgets left out, bootstrap
    files: list[pathlib.Path] = dataclasses.field(default_factory=list)  # figures written (PNG+PDF)
    x_column: str | None = None  # kaplan: the table column used as x
    n_used: int | None = None  # kaplan: rows the fit used (best per x, or the compute frontier)
    ci_kind: str = fitlib.CI_KIND  # the kind of every interval in this result

    @property
    def left_out(self) -> list[dict]:
        """Approach 2's budgets left out: [{"C": FLOPs, "reason": str}]."""
        parabolas = (self.allocation.parabolas if self.allocation else None) or ()
        return [{"C": p.C, "reason": p.reason} for p in parabolas if p.reason]

    def to_dict(self) -> dict:
        """The JSON of `scaling fit`'s fit.json (without the run-level keys the CLI adds)."""
        d = {}
        if self.fit is not None:
            d["fit"] = self.fit.to_dict()
        if self.allocation is not None:
            d["allocation"] = self.allocation.to_dict()
            d["budgets"] = [r.to_dict() for r in self.rows]
        if self.x_column is not None:
            d["x_column"], d["n_used"] = self.x_column, self.n_used
        d["warnings"] = list(self.warnings)
        d["files"] = [str(f) for f in self.files]
        return d


def starts_subset(law, k: int):
    """k starts evenly taken from `law`'s default grid (None: the whole grid, for k = 0 or >= its size)."""
    if k < 0:
        raise ValueError(f"--n-starts={k}: must be >= 0 (0: the full default grid)")
    grid = law.start_grid()
    if k == 0 or k >= len(grid):
        return None
    return grid[np.unique(np.linspace(0, len(grid) - 1, k).round().astype(int))]


def table_budgets(c_data) -> np.ndarray:
    """Decades from the smallest data budget to 100x the largest (at most 7): the allocation table."""
    lo, hi = np.floor(np.log10(np.min(c_data))), np.ceil(np.log10(np.max(c_data))) + 2
    return 10.0 ** np.linspace(lo, hi, int(min(hi - lo + 1, 7)))


def _rows(budgets, n_opt, d_opt, n_band=None, d_band=None) -> list[AllocationRow]:
    return [AllocationRow(float(c), float(n_opt[i]), float(d_opt[i]),
                          None if n_band is None else (float(n_band[0][i]), float(n_band[1][i])),
                          None if d_band is None else (float(d_band[0][i]), float(d_band[1][i])))
            for i, c in enumerate(budgets)]


def _power_line(scaling, c_line) -> dict:
    return {"c": c_line, "n": scaling.n_opt(c_line), "d": scaling.d_opt(c_line),
            "label": f"power law (a = {scaling.a:.3f}, b = {scaling.b:.3f})"}


def approach3(df, options: FitOptions = FitOptions(), out=None) -> WorkflowResult:
    """Chinchilla Approach 3 on df (n_params total, tokens, loss) and its compute-optimal allocation."""
    law = laws.chinchilla()
    f = chinchilla.approach3({"N": df.n_params, "D": df.tokens}, df.loss, ci=options.ci_level,
                             starts=starts_subset(law, options.n_starts),
                             n_bootstrap=options.n_bootstrap, seed=options.seed)
    scaling = chinchilla.scaling_from_fit(f)
    c_data = df.flops_6nd.to_numpy()
    budgets = table_budgets(c_data)
    bands = (None, None)
    if f.boot_params is not None:
        bands = chinchilla.compute_optimal_band(f.boot_params, budgets, f.ci_level)
    res = WorkflowResult("approach3", notes=[], fit=f, allocation=scaling,
                         rows=_rows(budgets, *chinchilla.compute_optimal(f.params, budgets), *bands),
                         warnings=f.warnings + scaling.warnings)
    if out is None:
        return res
    out = pathlib.Path(out)
    c_line = np.geomspace(c_data.min() / 2, budgets[-1], 100)
    n_line, d_line = chinchilla.compute_optimal(f.params, c_line)
    line = {"c": c_line, "n": n_line, "d": d_line, "label": f"Approach 3 frontier (a = {scaling.a:.3f})"}
    if f.boot_params is not None:
        line["ci_label"] = f"{100 * f.ci_level:.0f}% {fitlib.CI_KIND} CI"
        line["band_n"], line["band_d"] = chinchilla.compute_optimal_band(f.boot_params, c_line, f.ci_level)
    res.files += figures.loss_contours(lambda n, d: f.predict(N=n, D=d), out / "contours",
                                       n_params=df.n_params, c=c_data, loss=df.loss,
                                       frontier_c=c_line, frontier_n=n_line)
    resid = np.log(df.loss.to_numpy() / f.predict(N=df.n_params, D=df.tokens))
    res.files += figures.residuals(c_data, {"L(N, D) fit": resid}, out / "residuals", x_label=C6ND_LABEL)
    res.files += figures.loss_vs_compute(c_data, df.loss, out / "loss_vs_compute", n_params=df.n_params,
                                         frontier=kaplanlib.frontier(c_data, df.loss), c_label=C6ND_LABEL)
    res.files += figures.allocation(None, None, None, out / "allocation", lines=[line])
    return res


def isoflop_panels(scaling: chinchilla.OptimalScaling) -> list[dict]:
    """figures.isoflop_curves' budget dicts from Approach 2's parabolas (kept and left out)."""
    panels = []
    for p in scaling.parabolas:
        b = {"C": p.C, "n_params": p.N, "loss": p.loss}
        if p.coef is not None:
            b["curve_n"] = np.geomspace(p.N.min(), p.N.max(), 60)
            b["curve_loss"] = p.predict(b["curve_n"])
        if p.reason:
            b["refused"] = p.status
        else:
            b["n_opt"], b["loss_opt"] = p.n_opt, float(p.predict(p.n_opt))
        panels.append(b)
    return panels


def approach2(df, options: FitOptions = FitOptions(), out=None) -> WorkflowResult:
    """Chinchilla Approach 2 over the isoFLOP budgets of df (flops_6nd, n_params, loss[, budget])."""
    c = df.flops_6nd.to_numpy(dtype=float)
    if "budget" in df.columns and df.budget.notna().all():
        labels, src = df.budget.to_numpy(dtype=float), "the sweep's nominal budgets"
    else:
        labels, src = chinchilla.group_budgets(c), "C = 6ND grouped within 10%"
    scaling = chinchilla.approach2(c, df.n_params, df.loss, budget=labels, ci=options.ci_level,
                                   n_bootstrap=options.n_bootstrap, seed=options.seed)
    budgets = table_budgets(c)
    res = WorkflowResult(
        "approach2", notes=[f"isoflop (Approach 2): {len(np.unique(labels))} budgets from {src}; "
                            f"{len(scaling.points['C'])} with interior minima"],
        allocation=scaling, rows=_rows(budgets, scaling.n_opt(budgets), scaling.d_opt(budgets)),
        warnings=list(scaling.warnings))
    if out is None:
        return res
    out = pathlib.Path(out)
    c_line = np.geomspace(c.min() / 2, budgets[-1], 100)
    res.files += figures.isoflop_curves(isoflop_panels(scaling), out / "isoflop")
    res.files += figures.allocation(scaling.points["C"], scaling.points["N_opt"], scaling.points["D_opt"],
                                    out / "allocation", lines=[_power_line(scaling, c_line)])
    res.files += figures.loss_vs_compute(c, df.loss, out / "loss_vs_compute", n_params=df.n_params,
                                         frontier=kaplanlib.frontier(c, df.loss), c_label=C6ND_LABEL)
    return res


def approach1(curves, options: FitOptions = FitOptions(), out=None) -> WorkflowResult:
    """Chinchilla Approach 1 on training curves (every eval point: run or run_dir, n_params,
    tokens, flops_6nd, loss). `options` is accepted for a uniform signature (no bootstrap here)."""
    if "run" not in curves.columns:  # sweep dirs: the run directory identifies a curve
        if curves.run_dir.str.contains(r"\.csv:\d+$").any():
            raise ValueError("approach1 on a CSV needs a 'run' column naming each point's training "
                             "run (one curve per run); columns: n_params, tokens, loss, run")
        curves = curves.assign(run=curves.run_dir)
    c = curves.flops_6nd.to_numpy(dtype=float)
    scaling = chinchilla.approach1(curves.run.to_numpy(), curves.n_params, curves.tokens, c, curves.loss)
    budgets = table_budgets(c)
    res = WorkflowResult(
        "approach1", notes=[f"approach1: {len(curves)} eval points from {curves.run.nunique()} runs "
                            f"({curves.n_params.nunique()} sizes); envelope on {len(scaling.points['C'])} "
                            f"C values"],
        allocation=scaling, rows=_rows(budgets, scaling.n_opt(budgets), scaling.d_opt(budgets)))
    if out is None:
        return res
    out = pathlib.Path(out)
    pts = {k: np.asarray(v)[:: max(1, len(v) // 60)] for k, v in scaling.points.items()}
    c_line = np.geomspace(c.min(), budgets[-1], 100)
    res.files += figures.allocation(pts["C"], pts["N_opt"], pts["D_opt"], out / "allocation",
                                    lines=[_power_line(scaling, c_line)],
                                    points_label="envelope (every few grid points)",
                                    title="Approach 1: compute-optimal N and D from the loss envelope")
    res.files += figures.loss_vs_compute(c, curves.loss, out / "loss_vs_compute",
                                         frontier=kaplanlib.frontier(c, curves.loss), n_params=curves.n_params,
                                         c_label="compute C = 6 N tokens (FLOPs)",
                                         title="Training curves (eval points) and their envelope")
    return res


KAPLAN_X = {"N": figures.N_NONEMBED_LABEL, "D": figures.D_LABEL, "C": figures.C_LABEL}


def _best_per_x(x, loss):
    """Indices of the lowest-loss row per distinct x (L(N), L(D)) as Kaplan et al. fit them."""
    order = np.lexsort((loss, x))
    first = np.r_[True, np.diff(x[order]) != 0]
    return order[first]


def kaplan(df, var: str, options: FitOptions = FitOptions(), out=None, *,
           irreducible: bool = False) -> WorkflowResult:
    """Kaplan L(X) for var X in N (non-embedding), D (tokens), C (exact FLOPs, else 6ND), + E if
    irreducible: per distinct N or D its best run; for C the compute frontier."""
    if var not in KAPLAN_X:
        raise ValueError(f"kaplan: var={var!r} is not one of {list(KAPLAN_X)}")
    name = f"kaplan-{var.lower()}"
    return _one_variable(df, var, laws.get(name + ("+e" if irreducible else "")), name, options, out)


def bnsl(df, var: str = "D", options: FitOptions = FitOptions(), out=None) -> WorkflowResult:
    """Caballero et al. (2022)'s broken power law (one break) in X = N, D or C, on the same rows
    as kaplan (best run per distinct N or D; the compute frontier for C). Fewer rows than the
    law's 6 parameters + 2 is refused (analysis.fit.check_identifiable) with the count."""
    if var not in KAPLAN_X:
        raise ValueError(f"bnsl: x={var!r} is not one of {list(KAPLAN_X)}")
    return _one_variable(df, var, laws.bnsl(var), "bnsl", options, out)


def _one_variable(df, var, law, name, options, out) -> WorkflowResult:
    """Fit a one-input law L(X) on the best run per distinct X (the compute frontier for C)."""
    label, notes = KAPLAN_X[var], []
    if var == "N":
        col = "n_params_nonembed" if "n_params_nonembed" in df.columns else "n_params"
        if col == "n_params":
            notes.append("note: no n_params_nonembed column; L(N) uses n_params (total, incl. embeddings)")
            label = "model size N, total (parameters)"
    else:
        col = {"D": "tokens", "C": "flops" if "flops" in df.columns else "flops_6nd"}[var]
    x, loss = df[col].to_numpy(dtype=float), df.loss.to_numpy(dtype=float)
    if not len(x):
        raise ValueError(f"{name}: no runs to fit")
    if var == "C":
        c_f, l_f = kaplanlib.frontier(x, loss)
        keep, how = np.flatnonzero(np.isin(x, c_f) & np.isin(loss, l_f)), "on the compute frontier"
    else:
        keep, how = _best_per_x(x, loss), f"best loss per distinct {col}"
    notes.append(f"{name}: fitting {len(keep)} of {len(df)} runs ({how}); x = {col}")
    f = fitlib.fit(law, {var: x[keep]}, loss[keep], ci=options.ci_level,
                   starts=starts_subset(law, options.n_starts), n_bootstrap=options.n_bootstrap,
                   seed=options.seed)
    res = WorkflowResult(name, notes=notes, fit=f, warnings=list(f.warnings), x_column=col,
                         n_used=int(len(keep)))
    if out is None:
        return res
    out = pathlib.Path(out)
    xs = np.geomspace(x.min() / 1.5, x.max() * 1.5, 100)
    res.files += figures.kaplan(x, loss, out / name.split("-")[0], used=keep, fit_x=xs,
                                fit_loss=f.predict(**{var: xs}), fit_label=law.formula,
                                x_label=label, title=("Kaplan " if name.startswith("kaplan") else "Caballero et al.: ")
                                + law.formula)
    resid = np.log(loss[keep] / f.predict(**{var: x[keep]}))
    res.files += figures.residuals(x[keep], {law.formula: resid}, out / "residuals", x_label=label)
    return res


def data_constrained(df, options: FitOptions = FitOptions(), out=None, *,
                     base: tuple | None = None) -> WorkflowResult:
    """Muennighoff et al. (2023)'s data-constrained law on df (n_params, tokens, unique_tokens,
    loss): base = (E, A, B, alpha, beta) held fixed (fit R_D*, R_N* only), or None (all seven)."""
    law = laws.data_constrained(base)
    epochs = (df.tokens / df.unique_tokens).to_numpy(dtype=float)
    inputs = {"N": df.n_params, "D": df.tokens, "U": df.unique_tokens}
    f = fitlib.fit(law, inputs, df.loss, ci=options.ci_level, starts=starts_subset(law, options.n_starts),
                   n_bootstrap=options.n_bootstrap, seed=options.seed)
    how = ("base law fixed at (E, A, B, alpha, beta) = " + ", ".join(f"{v:.4g}" for v in base)
           if base is not None else "base law fitted jointly (7 parameters)")
    res = WorkflowResult("data-constrained", fit=f, warnings=list(f.warnings), notes=[
        f"data-constrained: {len(df)} runs, epochs D/U {epochs.min():.3g}-{epochs.max():.3g}; {how}"])
    if not (epochs > 1.0 + 1e-9).any():  # R_D = D/U - 1 = 0 everywhere: nothing to decay
        res.warnings.append("no run repeats data (D <= U everywhere): R_D* and R_N* are not "
                            "identified by these runs")
    if out is None:
        return res
    resid = np.log(df.loss.to_numpy(dtype=float) / f.predict(**inputs))
    res.files += figures.residuals(epochs, {"data-constrained L(N, D, U)": resid},
                                   pathlib.Path(out) / "residuals", x_label="epochs D/U")
    return res
