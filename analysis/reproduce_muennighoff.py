"""`scaling reproduce muennighoff`: the data-constrained law (Muennighoff et al. 2023) refitted.

    scaling reproduce muennighoff --data ../shared/data/muennighoff2023_c4_runs_rd_rn_fitset.csv

Protocol (theirs, as in the datablations notebook): the base Chinchilla-form law is held fixed at
their C4 fit (E, A, B, alpha = beta below) and only the decay constants R_D*, R_N* of repeated
data are fitted, minimising the sum of Huber(delta=1e-3) on log-loss residuals over the runs.
We fit with the project engine (analysis.fit: multi-start L-BFGS from a 5 x 5 grid of
log R*, bootstrap percentile CIs over runs), then (a) refit from the published point, which is
itself a local minimum (starts within 2% of it all reach it), (b) profile the objective over a (R_D*, R_N*) grid: the valley is long and
flat, so "the" optimum is not unique and the test compares objective values, not digits, and
(c) draw the return on repeated data: loss vs epochs at fixed compute, from the fitted law.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from analysis import chinchilla, figures, fit, laws, results, style

# ===================== published numbers (quoted from the paper; never computed) ===============
# Muennighoff et al. 2023, "Scaling Data-Constrained Language Models" (arXiv:2305.16264), C4 fit.
MUENNIGHOFF_2023_BASE = {"E": 1.869, "A": 520.8, "B": 1487.7, "alpha": 0.3527, "beta": 0.3527}
MUENNIGHOFF_2023_R_STAR = {"R_D*": 15.387756, "R_N*": 5.309743}
MUENNIGHOFF_2023_DELTA = 1e-3
# ===============================================================================================

COLUMNS = {"n_params": "N", "tokens_D": "D", "unique_tokens_U": "U", "val_loss": "loss"}
VALLEY_REL = 0.01  # the printed valley: grid points within 1% of the best objective
PROFILE_RD = np.geomspace(1.0, 300.0, 61)  # R_D* grid of the profile
PROFILE_RN = np.geomspace(0.3, 100.0, 61)  # R_N* grid of the profile


def base_tuple(base: dict = MUENNIGHOFF_2023_BASE) -> tuple:
    """(E, A, B, alpha, beta): the hashable base of laws.data_constrained."""
    return tuple(float(base[k]) for k in ("E", "A", "B", "alpha", "beta"))


def load_runs(path) -> pd.DataFrame:
    """The datablations runs as N (parameters), D (tokens), U (unique tokens), loss (nats/token)."""
    raw = results.read_published(path, COLUMNS, "muennighoff2023_c4_runs_rd_rn_fitset.csv", "Muennighoff")
    return raw[list(COLUMNS)].rename(columns=COLUMNS).astype(float)


def near_published(published_log, n=25, rel=0.02, seed=0):
    """The published log R* and n-1 starts within +-rel of it: the local minimum it sits in.
    (25, the default grid's size, lets the solver reuse its compiled batch shape.)"""
    jitter = np.random.default_rng(seed).uniform(-rel, rel, (n - 1, 2))
    return np.vstack([published_log, published_log + np.log1p(jitter)])


def _inputs(df):
    return {"N": df.N.to_numpy(), "D": df.D.to_numpy(), "U": df.U.to_numpy()}


@dataclasses.dataclass
class Profile:
    """The fixed-base objective on a (R_D*, R_N*) grid and its near-optimal valley."""

    r_d: np.ndarray  # R_D* grid [I]
    r_n: np.ndarray  # R_N* grid [J]
    objective: np.ndarray  # [I, J] sum Huber(delta) on log residuals at each grid point
    rel: float  # valley threshold: objective <= (1 + rel) * the best (grid or fit)
    best: float  # the reference best objective (the fit's, which is <= the grid's)
    r_d_range: tuple  # (min, max) R_D* over the valley's grid points
    r_n_range: tuple  # (min, max) R_N* over the valley's grid points

    @property
    def at_edge(self) -> bool:
        """Whether the valley reaches the edge of the grid (so it continues beyond it)."""
        return (self.r_d_range[0] <= self.r_d[0] or self.r_d_range[1] >= self.r_d[-1]
                or self.r_n_range[0] <= self.r_n[0] or self.r_n_range[1] >= self.r_n[-1])

    def in_valley(self, objective_value: float) -> bool:
        """Whether an objective value is within the valley's threshold."""
        return objective_value <= (1 + self.rel) * self.best


def profile(law: laws.Law, df, best: float, rel: float = VALLEY_REL,
            r_d=PROFILE_RD, r_n=PROFILE_RN) -> Profile:
    """Evaluate the objective on the grid (one vmapped JAX call) and find the valley."""
    logx = np.log(np.stack([df.N, df.D, df.U], axis=1))
    logy = np.log(df.loss.to_numpy())
    th = np.log(np.stack(np.meshgrid(r_d, r_n, indexing="ij"), axis=-1)).reshape(-1, 2)
    with jax.enable_x64(True):
        obj = jax.vmap(lambda t: jnp.sum(fit.huber(law.log_predict(t, logx) - logy,
                                                   MUENNIGHOFF_2023_DELTA)))(jnp.asarray(th))
    obj = np.asarray(obj).reshape(len(r_d), len(r_n))
    best = min(best, float(obj.min()))
    i, j = np.nonzero(obj <= (1 + rel) * best)
    return Profile(np.asarray(r_d), np.asarray(r_n), obj, rel, best,
                   (float(r_d[i].min()), float(r_d[i].max())),
                   (float(r_n[j].min()), float(r_n[j].max())))


def profile_figure(prof: Profile, points: dict, out) -> list[pathlib.Path]:
    """Contours of objective / best over (R_D*, R_N*), the valley shaded, named points marked."""
    fig, ax = style.subplots()
    ratio = prof.objective.T / prof.best
    levels = [1.0, 1 + prof.rel, 1.02, 1.05, 1.1, 1.2, 1.5, 2.0]
    cs = ax.contour(prof.r_d, prof.r_n, ratio, levels=levels[1:], cmap=style.CMAP)
    ax.clabel(cs, fmt=lambda v: f"{v:.2f}", fontsize=7)
    ax.contourf(prof.r_d, prof.r_n, ratio, levels=levels[:2], colors=["0.6"], alpha=0.4)
    for k, ((label, (rd, rn)), m, ms) in enumerate(zip(points.items(), ("*", "o", "s"), (14, 9, 7))):
        ax.plot(rd, rn, m, ms=ms, color=style.colour(k, len(points)), mec="k", label=label,
                zorder=3 if m == "*" else 4)
    ax.set(xscale="log", yscale="log", xlabel="R_D*, decay constant of repeated data (repetitions)",
           ylabel="R_N*, decay constant of excess parameters (unitless)")
    ax.set_title(f"Muennighoff et al. data-constrained law: objective / best (shaded: within "
                 f"{100 * prof.rel:g}%)")
    ax.grid(False)
    ax.legend()
    return figures.save(fig, out)


def epochs_figure(r_stars: dict, base: dict, budgets, out, epochs=np.geomspace(1, 100, 60)):
    """Return on repeated data: predicted loss vs epochs at fixed compute C = 6ND, with N and D
    the base law's compute-optimal split of C and U = D / epochs unique tokens; one line style
    per (R_D*, R_N*) pair in r_stars (label -> {"R_D*": .., "R_N*": ..})."""
    law = laws.data_constrained(base_tuple(base))
    fig, ax = style.subplots(figsize=(5.5, 4.6))
    for k, c in enumerate(budgets):
        n_opt, d_opt = chinchilla.compute_optimal(base, np.array([c]))
        logx = np.log(np.stack([np.full_like(epochs, n_opt[0]), np.full_like(epochs, d_opt[0]),
                                d_opt[0] / epochs], axis=1))
        for (name, r_star), ls in zip(r_stars.items(), ("-", "--", ":")):
            theta = np.log([r_star["R_D*"], r_star["R_N*"]])
            with jax.enable_x64(True):
                loss = np.exp(np.asarray(law.log_predict(jnp.asarray(theta), jnp.asarray(logx))))
            ax.plot(epochs, loss / loss[0] - 1, ls=ls, color=style.colour(k, len(budgets)),
                    label=f"C = {c:.0e} (N = {n_opt[0]:.2g}, D = {d_opt[0]:.2g}), {name}")
    for e in (4, 40):
        ax.axvline(e, color="grey", lw=0.7, ls=":")
    ax.set(xscale="log", xlabel="epochs D/U over the same unique tokens U (epochs)",
           ylabel="loss increase vs unique data, relative (unitless)")
    ax.set_title("Return on repeated data at fixed compute (both ends of the flat valley)")
    ax.legend(fontsize=6.5)
    return figures.save(fig, out)


def run_muennighoff(data, out, *, starts=None, n_bootstrap=200, seed=0) -> dict:
    """Fixed-base fit, refit from the published point, profile, figures; writes reproduce.json."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = load_runs(data)
    law = laws.data_constrained(base_tuple())
    inputs, published = _inputs(df), np.log(list(MUENNIGHOFF_2023_R_STAR.values()))
    ours = fit.fit(law, inputs, df.loss, delta=MUENNIGHOFF_2023_DELTA, starts=starts,
                   n_bootstrap=n_bootstrap, seed=seed)
    local = fit.fit(law, inputs, df.loss, delta=MUENNIGHOFF_2023_DELTA,
                    starts=near_published(published))
    obj_pub = fit.objective(law, published, inputs, df.loss, delta=MUENNIGHOFF_2023_DELTA)
    prof = profile(law, df, ours.objective)
    points = {"published": tuple(MUENNIGHOFF_2023_R_STAR.values()),
              "ours (best start)": (ours.params["R_D*"], ours.params["R_N*"]),
              "ours (from published)": (local.params["R_D*"], local.params["R_N*"])}
    files = profile_figure(prof, points, out / "profile")
    files += epochs_figure({"published R*": MUENNIGHOFF_2023_R_STAR, "our best R*": ours.params},
                           MUENNIGHOFF_2023_BASE, (1e20, 1e22, 1e24), out / "epochs")
    summary = {
        "data": str(data), "n_runs": len(df), "base_fixed": MUENNIGHOFF_2023_BASE,
        "published": MUENNIGHOFF_2023_R_STAR, "published_objective": obj_pub,
        "ours": ours.to_dict(), "ours_from_published": local.to_dict(),
        "valley": {"rel": prof.rel, "best_objective": prof.best, "R_D*": prof.r_d_range,
                   "R_N*": prof.r_n_range, "published_in_valley": prof.in_valley(obj_pub)},
        "files": [str(f) for f in files] + [str(out / "reproduce.json")],
    }
    (out / "reproduce.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    summary.update(fit=ours, local=local, profile=prof)
    return summary
