"""FLOP-convention sensitivity: how a, b, N* and the forecast move with the definition of C.

    scaling fit SWEEP_DIR_OR_CSV --conventions [--target-flops C] [--bootstrap N] [--out DIR]

Three conventions, as the result files record them (README, Definitions):

    flops               exact training FLOPs (attention and LM head included); N = n_params (total)
    flops_6nd           C = 6 · N_total · D (Chinchilla);                       N = n_params
    flops_6nd_nonembed  C = 6 · N_nonembed · D (Kaplan);                        N = n_params_nonembed

Per convention: Approach 3, L(N, D) = E + A/N^α + B/D^β fitted with that convention's N (the
exact and 6ND conventions share one fit), then the compute-optimal allocation under that
convention's C: minimise L(N, D) subject to D · f(N) = C, where f(N) = C/D is the FLOPs per
token of the table's runs as a function of N (piecewise linear in log-log through the runs,
extended by its end slopes; exactly 6N for the 6ND conventions). The minimisation is a dense
grid over log N refined by a parabola, done for the point fit and every bootstrap refit, so
a and b (the OLS slopes of log N* and log D* on log C over K budgets from the data's smallest
C to the target) and N*, D*, L* at the target carry bootstrap percentile CIs. Under 6ND this
is Chinchilla's closed form (a = β/(α+β)); the exact convention costs more FLOPs per token than
6N for small models (attention), which moves a. C is in each convention's own FLOPs: the same
number is a different amount of compute in each row. A convention whose columns the table
lacks gets a row saying which column is missing.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from analysis import chinchilla, fit as fitlib, figures

K_BUDGETS = 9  # budgets from the data's smallest C to the target: the slopes a, b
GRID_SPAN = (-6.0, 12.0)  # log N grid: this far (e-folds) below / above the runs' sizes
GRID_POINTS = 3000


@dataclasses.dataclass(frozen=True)
class Convention:
    """A FLOP convention: which columns give C and the N that goes with it."""

    name: str
    """the C column (flops | flops_6nd | flops_6nd_nonembed)"""
    label: str
    """what C means, for tables"""
    n_column: str
    """the N that goes with it (n_params total, or n_params_nonembed)"""


CONVENTIONS = (
    Convention("flops", "exact (attention incl.)", "n_params"),
    Convention("flops_6nd", "6 N_total D", "n_params"),
    Convention("flops_6nd_nonembed", "6 N_nonembed D", "n_params_nonembed"),
)


@dataclasses.dataclass
class Row:
    """One convention's allocation; `missing` set (and everything else None) when unavailable."""

    convention: Convention
    """which C and N"""
    missing: str | None = None
    """why the convention could not be evaluated (a missing column), else None"""
    a: tuple | None = None
    """(value, lo, hi): N* ∝ C^a"""
    b: tuple | None = None
    """(value, lo, hi): D* ∝ C^b"""
    n_star: tuple | None = None
    """(value, lo, hi) N* at the target (parameters, this convention's N)"""
    d_star: tuple | None = None
    """(value, lo, hi) D* at the target (tokens)"""
    l_star: tuple | None = None
    """(value, lo, hi) loss at (N*, D*) (nats/token), parameter uncertainty only"""
    curve: dict | None = None
    """c, n, d over the K budgets (point fit), for the figure"""
    fit: fitlib.Fit | None = None
    """the Approach-3 fit of L(N, D) with this convention's N"""


def flops_per_token(n, c_over_d):
    """log f(N), f = C/D the FLOPs per token as a smooth function of N from the runs: f = 6N
    (1 + r(N)) with the relative overhead r (attention, LM head, embeddings not computed) a power
    law in N, fitted by OLS on log |r| when r has one sign (a constant per-token overhead K is
    r = K/N exactly; attention's share falls like a power of N); f = 6N when r ≈ 0 (the 6ND
    conventions); otherwise piecewise linear in log-log through the runs, ends extended."""
    ln, lf = np.log(np.asarray(n, float)), np.log(np.asarray(c_over_d, float))
    r = np.exp(lf - ln - np.log(6.0)) - 1.0
    if np.all(np.abs(r) < 1e-9):
        return lambda log_n: np.log(6.0) + log_n
    if (np.all(r > 0) or np.all(r < 0)) and np.ptp(ln) > 0:
        sign, (q1, q0) = np.sign(r[0]), np.polyfit(ln, np.log(np.abs(r)), 1)
        return lambda log_n: np.log(6.0) + log_n + np.log1p(sign * np.exp(q0 + q1 * log_n))
    u, inv = np.unique(ln, return_inverse=True)
    lf_u = np.bincount(inv, lf) / np.bincount(inv)
    if len(u) == 1:  # one size: f ∝ N through it
        return lambda log_n: lf_u[0] + (log_n - u[0])
    s_lo = (lf_u[1] - lf_u[0]) / (u[1] - u[0])
    s_hi = (lf_u[-1] - lf_u[-2]) / (u[-1] - u[-2])

    def log_f(log_n):
        inside = np.interp(log_n, u, lf_u)
        return np.where(log_n < u[0], lf_u[0] + s_lo * (log_n - u[0]),
                        np.where(log_n > u[-1], lf_u[-1] + s_hi * (log_n - u[-1]), inside))
    return log_f


def optimal_n(params: dict, log_f, c, log_n_grid) -> np.ndarray:
    """log N* minimising L(N, C/f(N)) per parameter sample and budget -> [S, K].
    params: E, A, B, alpha, beta arrays [S]; c: budgets [K]; log_n_grid: [G]."""
    p = {k: np.asarray(params[k], float)[:, None, None] for k in ("E", "A", "B", "alpha", "beta")}
    lg = log_n_grid[None, None, :]
    log_d = np.log(np.asarray(c, float))[None, :, None] - log_f(lg)
    loss = p["A"] * np.exp(-p["alpha"] * lg) + p["B"] * np.exp(-p["beta"] * log_d)  # E is flat
    i = np.clip(np.argmin(loss, axis=-1), 1, len(log_n_grid) - 2)
    # A parabola through the grid minimum and its neighbours: sub-grid precision.
    y0, y1, y2 = (np.take_along_axis(loss, (i + k)[..., None], -1)[..., 0] for k in (-1, 0, 1))
    den = y0 - 2 * y1 + y2
    shift = np.where(den > 0, 0.5 * (y0 - y2) / np.where(den > 0, den, 1.0), 0.0)
    return log_n_grid[i] + np.clip(shift, -1, 1) * (log_n_grid[1] - log_n_grid[0])


def _slope(log_c, log_y_SK) -> np.ndarray:
    lc = log_c - log_c.mean()
    return (log_y_SK - log_y_SK.mean(-1, keepdims=True)) @ lc / (lc @ lc)


def _with_ci(point, samples, level) -> tuple:
    if samples is None or len(samples) < 2:
        return (float(point), None, None)
    lo, hi = fitlib.percentile_interval(samples, level)
    return (float(point), float(lo), float(hi))


def _missing(table, conv: Convention, source) -> str | None:
    cols = [c for c in (conv.name, conv.n_column) if c not in table or table[c].isna().any()]
    if not cols:
        return None
    return f"not available: {source} has no (complete) column(s) {cols}"


def analyse(table, target: float, *, n_bootstrap=200, starts=None, seed=0, level=0.95,
            source="the table") -> list[Row]:
    """One Row per convention (see the module docstring)."""
    rows, fits = [], {}
    for conv in CONVENTIONS:
        why = _missing(table, conv, source)
        if why:
            rows.append(Row(conv, missing=why))
            continue
        n = table[conv.n_column].to_numpy(float)
        d, loss = table["tokens"].to_numpy(float), table["loss"].to_numpy(float)
        if conv.n_column not in fits:  # the exact and 6ND conventions share the N_total fit
            fits[conv.n_column] = chinchilla.approach3({"N": n, "D": d}, loss, starts=starts,
                                                       n_bootstrap=n_bootstrap, seed=seed, ci=level)
        rows.append(_row(conv, fits[conv.n_column], n, d, table[conv.name].to_numpy(float),
                         target, level))
    return rows


def _row(conv, f, n, d, c_runs, target, level) -> Row:
    log_f = flops_per_token(n, c_runs / d)
    c = np.geomspace(c_runs.min(), target, K_BUDGETS)
    grid = np.linspace(np.log(n.min()) + GRID_SPAN[0], np.log(n.max()) + GRID_SPAN[1], GRID_POINTS)
    samples = {k: np.atleast_1d(v) for k, v in f.params.items()}
    if f.boot_params is not None:  # row 0: the point fit, then the bootstrap refits
        samples = {k: np.concatenate([samples[k], f.boot_params[k]]) for k in samples}
    log_n = optimal_n(samples, log_f, c, grid)
    log_d = np.log(c)[None, :] - log_f(log_n)
    a_s, b_s = _slope(np.log(c), log_n), _slope(np.log(c), log_d)
    n_t, d_t = np.exp(log_n[:, -1]), np.exp(log_d[:, -1])
    l_t = samples["E"] + samples["A"] / n_t ** samples["alpha"] + samples["B"] / d_t ** samples["beta"]
    boot = slice(1, None) if f.boot_params is not None else slice(0, 0)
    return Row(conv, a=_with_ci(a_s[0], a_s[boot], level), b=_with_ci(b_s[0], b_s[boot], level),
               n_star=_with_ci(n_t[0], n_t[boot], level), d_star=_with_ci(d_t[0], d_t[boot], level),
               l_star=_with_ci(l_t[0], l_t[boot], level),
               curve={"c": c, "n": np.exp(log_n[0]), "d": np.exp(log_d[0])}, fit=f)


def _fmt(v, spec) -> str:
    s = format(v[0], spec)
    return s + (f" ({format(v[1], spec)}, {format(v[2], spec)})" if v[1] is not None else "")


def table_lines(rows: list[Row], target: float, level: float) -> list[str]:
    """The printed (and markdown) table, with the CI level and kind in the header."""
    ci = f"value ({100 * level:.0f}% {fitlib.CI_KIND} CI)"
    out = [f"| convention (C) | N | a: N* ∝ C^a, {ci} | b: D* ∝ C^b | N* at C = {target:.3g} | "
           f"D* | L* (nats/token) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r.convention.name}: {r.convention.label} | {r.convention.n_column} |"
        if r.missing:
            out.append(f"{head} {r.missing} | | | | |")
            continue
        out.append(f"{head} {_fmt(r.a, '.4f')} | {_fmt(r.b, '.4f')} | {_fmt(r.n_star, '.3g')} | "
                   f"{_fmt(r.d_star, '.3g')} | {_fmt(r.l_star, '.4g')} |")
    return out


def figure(rows: list[Row], out) -> list[pathlib.Path]:
    """N*(C), D*(C) per available convention (each C in its own FLOPs)."""
    lines = [{**r.curve, "label": f"{r.convention.name} (a = {r.a[0]:.3f})"} for r in rows if r.curve]
    return figures.allocation(None, None, None, out, lines=lines,
                              title="Compute-optimal allocation under each FLOP convention")


def to_dict(rows: list[Row], target: float, level: float) -> dict:
    return {"target_flops": target, "ci_level": level, "ci_kind": fitlib.CI_KIND,
            "rows": [{"convention": r.convention.name, "n_column": r.convention.n_column,
                      "missing": r.missing, "a": r.a, "b": r.b, "N_star": r.n_star,
                      "D_star": r.d_star, "L_star": r.l_star} for r in rows]}


def write(rows, target, level, out) -> list[pathlib.Path]:
    """conventions.json and the figure into out."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "conventions.json").write_text(json.dumps(to_dict(rows, target, level), indent=1) + "\n")
    files = figure(rows, out / "conventions") if any(r.curve for r in rows) else []
    return [out / "conventions.json", *files]


def main(argv: list[str]) -> int:
    """`scaling fit PATH --conventions`: print the table, write conventions.json + figure."""
    import sys
    from analysis import results, workflows
    from analysis.cli import Parser, output_dir, plain_warnings
    p = Parser(prog="scaling fit --conventions", description=__doc__.split("\n\n")[2])
    p.add_argument("path", help="sweep directory or CSV (n_params, tokens, loss [, flops, "
                                "n_params_nonembed])")
    p.add_argument("--conventions", action="store_true", required=True)
    p.add_argument("--target-flops", type=float, metavar="C",
                   help="forecast budget (default: 100x the largest 6ND budget in the data)")
    p.add_argument("--bootstrap", type=int, default=200, metavar="N")
    p.add_argument("--n-starts", type=int, default=0, metavar="K")
    p.add_argument("--level", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path)
    with plain_warnings():
        try:
            args = p.parse_args(argv)
            opts = workflows.FitOptions(n_bootstrap=args.bootstrap, n_starts=args.n_starts,
                                        seed=args.seed, ci_level=args.level)
            df = results.load(args.path)
            target = args.target_flops or 100 * float(df.flops_6nd.max())
            if not target > 0:
                raise ValueError(f"--target-flops {target}: must be > 0")
            out = args.out or _default_out(pathlib.Path(args.path))
            from analysis import laws
            with output_dir(out):
                rows = analyse(df, target, n_bootstrap=opts.n_bootstrap, seed=opts.seed,
                               level=opts.ci_level, source=str(args.path),
                               starts=workflows.starts_subset(laws.chinchilla(), opts.n_starts))
                files = write(rows, target, opts.ci_level, out)
        except (ValueError, OSError) as e:
            print(f"scaling fit: error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 2
    print(f"{args.path}: {len(df)} runs; Approach 3 per N convention, the optimum under each C "
          f"convention (C in that convention's FLOPs; {opts.n_bootstrap} bootstrap refits)")
    print("\n".join(table_lines(rows, target, opts.ci_level)))
    print(f"wrote {len(files)} files in {out}")
    return 0


def _default_out(path: pathlib.Path) -> pathlib.Path:
    return path / "fit-conventions" if path.is_dir() else pathlib.Path(f"fit-{path.stem}-conventions")
