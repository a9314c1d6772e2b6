"""Load finished runs into one table: the only door from run directories into the fits.

    df = load("sweeps/chinchilla_cpu")        # one row per run (result.json + provenance)
    df = load("points.csv")                   # or a CSV with n_params, tokens, loss [, flops]
    cur = load_curves("sweeps/chinchilla_cpu")  # one row per eval point (Chinchilla Approach 1)

A sweep directory holds run directories (scaling/rundir.py, the run-directory contract, says
which files they hold and which one means "finished"). A run without result.json is unfinished;
`status: failed` is failed; a JSON file that does not parse is corrupt. `on_error='warn'` skips
such runs with ONE warning that counts them by reason and names them; `on_error='raise'` raises `RunLoadError` listing every problem.
Either way nothing is dropped silently: the skipped runs are also in `df.attrs['skipped']`.
When the sweep's manifest (the planned runs) exists, only its planned runs are loaded: planned runs
without a directory count as unfinished, and run directories outside the plan (an edited sweep
file, another sweep) are listed in a warning and in `df.attrs['unplanned']`, never mixed in. Each
row's nominal isoFLOP `budget` (FLOPs; NaN outside isoFLOP sweeps) comes from the run's own files.

Units: `loss` is nats/token; `tokens` is D; `n_params` total, `n_params_nonembed` Kaplan's N;
`flops` exact training FLOPs, `flops_6nd` = 6 * n_params * tokens, `flops_6nd_nonembed` =
6 * n_params_nonembed * tokens (when n_params_nonembed is known); `unique_tokens` U, the distinct
tokens a run saw (a CSV column; for a sweep run tokens / max(epochs, 1) from result.json).
`require=("unique_tokens",)` makes a missing U an error naming the column and the file.
"""
from __future__ import annotations

import math
import pathlib
import warnings

import pandas as pd

from scaling import rundir

ON_ERROR = ("warn", "raise")
LOSS_SOURCES = {"eval": "final_eval_loss", "train": "final_train_loss"}
CSV_REQUIRED = ("n_params", "tokens", "loss")
UNIQUE_TOKENS = "unique_tokens"  # U of the data-constrained law (Muennighoff et al. 2023)
NEEDED_BY = {UNIQUE_TOKENS: "U, each run's unique tokens, needed by the data-constrained law"}
# result.json keys a finished run must have for the fits to use it.
RESULT_REQUIRED = ("status", "tokens", "n_params", "final_eval_loss", "final_train_loss")
PROVENANCE = ("run_dir", "config_hash", "git_sha", "status")


class RunLoadError(ValueError):
    """Raised under on_error='raise' when a run (or CSV row) is unfinished, failed or corrupt."""


class _Skips:
    """Collects (where, reason, detail) for runs/rows that cannot be used; reports them once."""

    def __init__(self, on_error: str, what: str):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r} is not valid; use one of {ON_ERROR}")
        self.on_error, self.what, self.items = on_error, what, []

    def add(self, where: str, reason: str, detail: str) -> None:
        self.items.append({"where": where, "reason": reason, "detail": detail})

    def report(self, source: pathlib.Path, n_kept: int) -> None:
        if not self.items:
            return
        counts: dict[str, int] = {}
        for it in self.items:
            counts[it["reason"]] = counts.get(it["reason"], 0) + 1
        summary = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
        lines = "\n".join(f"  {it['where']}: {it['reason']}: {it['detail']}" for it in self.items)
        if self.on_error == "raise":
            raise RunLoadError(
                f"{source}: {len(self.items)} {self.what} cannot be used ({summary}):\n{lines}\n"
                "Pass on_error='warn' (CLI: --on-error warn) to skip them with a warning.")
        warnings.warn(f"{source}: skipped {len(self.items)} {self.what} ({summary}); "
                      f"kept {n_kept}:\n{lines}", stacklevel=3)


def _flatten(prefix: str, d: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in d.items() if not isinstance(v, (dict, list))}


def _run_row(run: pathlib.Path, loss_key: str) -> dict:
    """One table row from a run directory; raises (reason, detail) via _Unusable if unusable."""
    try:
        res = rundir.read_result(run)
    except rundir.RunDirError as e:
        raise _Unusable("corrupt", str(e)) from None
    if res is None:
        last = (rundir.last_metrics_row(run) or {}).get("step")
        raise _Unusable("unfinished", f"no {rundir.RESULT}" + (f" ({rundir.METRICS} reaches step {last})"
                                                               if last is not None else ""))
    if res.get("status") == "failed":
        raise _Unusable("failed", f"status 'failed': {res.get('error')}")
    missing = [k for k in RESULT_REQUIRED if k not in res]
    if missing:
        raise _Unusable("corrupt", f"{rundir.RESULT} lacks keys {missing}")
    if res["status"] != "ok":
        raise _Unusable("corrupt", f"status {res['status']!r} (valid: 'ok', 'failed')")
    loss = res[loss_key]
    if not isinstance(loss, (int, float)) or not math.isfinite(loss):
        raise _Unusable("failed", f"{loss_key} = {loss!r} is not a finite number")
    row = {k: v for k, v in res.items() if not isinstance(v, (dict, list))}
    row.update(_flatten("model", res.get("model") or {}))
    row["loss"] = float(loss)
    row["run_dir"] = str(run)
    for k in ("config_hash", "git_sha"):
        row.setdefault(k, None)
    return row


class _Unusable(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _check_path(path) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such sweep directory or CSV file")
    if path.is_file() and path.suffix.lower() != ".csv":
        raise ValueError(f"{path}: expected a sweep directory or a .csv file, got {path.suffix!r}")
    return path


def load(path, *, on_error: str = "warn", loss: str = "eval", require=()) -> pd.DataFrame:
    """One row per finished run (sweep directory) or per CSV row.

    loss: which final loss becomes the `loss` column for sweeps: 'eval' (held-out, default) or
    'train' (what Hoffmann et al. fit). Both raw columns are kept. Rows are sorted by
    (n_params, tokens) so tables and figures are stable. require: further columns a law needs
    (e.g. UNIQUE_TOKENS); a CSV without one is a ValueError naming it and the file.
    """
    if loss not in LOSS_SOURCES:
        raise ValueError(f"loss={loss!r} is not valid; use one of {tuple(LOSS_SOURCES)}")
    path = _check_path(path)
    if path.is_file():
        return _load_csv(path, on_error, require)
    skips = _Skips(on_error, "runs")
    rows = []
    runs = rundir.run_dirs(path)
    planned = rundir.planned_runs(path)  # RunDirError (a ValueError naming the file) when corrupt
    unplanned = [r for r in runs if planned and r.name not in planned]
    if unplanned:  # left by an edited sweep file or another sweep: listed, never mixed in
        warnings.warn(f"{path}: {len(unplanned)} run directories are not in the sweep's plan "
                      f"({rundir.SWEEP_MANIFEST}) and were not loaded: "
                      + ", ".join(r.name for r in unplanned[:5]) + (" ..." if len(unplanned) > 5 else ""),
                      stacklevel=2)
        runs = [r for r in runs if r.name in planned]
    for run in runs:
        try:
            row = _run_row(run, LOSS_SOURCES[loss])
        except _Unusable as e:
            skips.add(str(run), e.reason, e.detail)
            continue
        row["budget"] = _budget(run, row)
        rows.append(row)
    for run_id in sorted(set(planned) - {r.name for r in runs}):
        skips.add(str(rundir.run_dir_of(path, run_id)), "unfinished",
                  f"planned in {rundir.SWEEP_MANIFEST}, not started")
    skips.report(path, len(rows))
    if not rows:
        raise ValueError(f"{path}: no finished runs to load (found {len(runs)} run directories"
                         f"{', all skipped' if runs else ''}); expected SWEEP/{rundir.RUNS}/*/{rundir.RESULT}")
    df = pd.DataFrame(rows).sort_values(["n_params", "tokens"], kind="stable")
    df = df.reset_index(drop=True)
    df.attrs["skipped"] = skips.items
    df.attrs["unplanned"] = [str(r) for r in unplanned]
    df.attrs["source"] = str(path)
    if "epochs" in df:  # U = D / epochs; a run that saw less than one epoch saw D unique tokens
        df[UNIQUE_TOKENS] = df.tokens / pd.to_numeric(df.epochs, errors="coerce").clip(lower=1.0)
    _check_required(df, require, path, "the runs' result.json (epochs)")
    return df


def _check_required(df, require, path, where: str) -> None:
    """A column a law needs (e.g. unique_tokens) must be present and filled in every row."""
    for col in require:
        if col not in df.columns:
            raise ValueError(f"{path}: no column {col!r} ({NEEDED_BY.get(col, 'needed by this law')}); "
                             f"add it to {where}")
        if df[col].isna().any():
            raise ValueError(f"{path}: column {col!r} is empty in {int(df[col].isna().sum())} "
                             f"rows ({NEEDED_BY.get(col, 'needed by this law')})")


def _budget(run: pathlib.Path, row: dict) -> float:
    """The run's nominal isoFLOP budget C from its own files (result.json, else config.json's
    meta.budget); NaN for runs outside an isoFLOP sweep."""
    budget = row.get("budget")
    if budget is None:
        try:
            budget = ((rundir.read_json_object(run / rundir.CONFIG) or {}).get("meta") or {}).get("budget")
        except rundir.RunDirError:
            budget = None
    return float(budget) if budget else math.nan


def read_published(path, columns, name: str, what: str) -> pd.DataFrame:
    """A published data file (../shared/data): the CSV with `columns` checked; errors name the file,
    what is missing, whose data it is (`what`) and the file expected there (`name`)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} data not found; it is {name} in ../shared/data")
    raw = pd.read_csv(path)  # pandas copes with '#' in Epoch's colour columns
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: lacks column(s) {missing}; expected {name} with {list(columns)}; "
                         f"found {list(raw.columns)}")
    return raw


def _load_csv(path: pathlib.Path, on_error: str, require=()) -> pd.DataFrame:
    """CSV with n_params, tokens, loss (nats/token) and optional flops, n_params_nonembed,
    unique_tokens (and `require`d columns); adds flops_6nd (and flops_6nd_nonembed)."""
    skips = _Skips(on_error, "CSV rows")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot parse as CSV ({e})") from None
    missing = [c for c in CSV_REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: CSV lacks required column(s) {missing}; required "
                         f"{list(CSV_REQUIRED)} (loss in nats/token, tokens = D), optional "
                         f"'flops'; found columns {list(df.columns)}")
    _check_required(df, require, path, "the CSV")
    # Checked (a bad value skips the row): the required columns, flops and what the law needs;
    # the other optional numbers are only converted (a blank there must not drop a row).
    numeric = list(dict.fromkeys(c for c in (*CSV_REQUIRED, "flops", *require) if c in df.columns))
    for c in (*numeric, *(c for c in ("n_params_nonembed", UNIQUE_TOKENS) if c in df.columns)):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    bad = ~(df[numeric].gt(0) & df[numeric].apply(lambda s: s.map(math.isfinite))).all(axis=1)
    for i in df.index[bad]:
        vals = {c: df.at[i, c] for c in numeric}
        skips.add(f"line {i + 2}", "bad value", f"{vals} (need finite numbers > 0)")
    df = df[~bad].copy()
    skips.report(path, len(df))
    if df.empty:
        raise ValueError(f"{path}: no usable rows (need n_params, tokens, loss > 0)")
    df["flops_6nd"] = 6.0 * df["n_params"] * df["tokens"]
    if "n_params_nonembed" in df:
        df["flops_6nd_nonembed"] = 6.0 * df["n_params_nonembed"] * df["tokens"]
    df["run_dir"] = [f"{path}:{i + 2}" for i in df.index]  # file:line, the row's provenance
    df["config_hash"] = None
    df["git_sha"] = None
    df["status"] = "ok"
    df = df.reset_index(drop=True)
    df.attrs["skipped"] = skips.items
    df.attrs["source"] = str(path)
    return df


def load_curves(path, *, on_error: str = "warn") -> pd.DataFrame:
    """One row per eval point of every finished run: run_dir, step, tokens, flops, loss, bpb,
    plus the run's n_params, n_params_nonembed and run_tokens (its final D).

    A CSV is returned as by `load` (each row one point; `run_dir` is file:line). A run whose
    metrics file is missing, has no eval rows, or has a line that does not parse is skipped or
    raised under the same policy as `load`.
    """
    path = _check_path(path)
    if path.is_file():
        return _load_csv(path, on_error)
    runs = load(path, on_error=on_error)
    skips = _Skips(on_error, "runs")
    rows = []
    for run in runs.itertuples():
        try:
            rows += _eval_rows(pathlib.Path(run.run_dir), run)
        except _Unusable as e:
            skips.add(run.run_dir, e.reason, e.detail)
    skips.report(path, len(runs) - len(skips.items))
    if not rows:
        raise ValueError(f"{path}: no eval points in any run's {rundir.METRICS}")
    df = pd.DataFrame(rows).sort_values(["n_params", "tokens"], kind="stable")
    df = df.reset_index(drop=True)
    df.attrs["skipped"] = runs.attrs["skipped"] + skips.items
    df.attrs["source"] = str(path)
    return df


def _eval_rows(run: pathlib.Path, res) -> list[dict]:
    if not rundir.metrics_path(run).exists():
        raise _Unusable("corrupt", f"finished but has no {rundir.METRICS}")
    try:
        metrics = rundir.read_metrics(run)
    except rundir.RunDirError as e:
        raise _Unusable("corrupt", str(e)) from None
    rows = []
    for m in metrics:
        if m.get("split") != "eval":
            continue
        if not all(k in m for k in ("step", "tokens", "loss")):
            raise _Unusable("corrupt", f"{rundir.metrics_path(run)}: an eval row lacks step/tokens/loss: {m}")
        rows.append({"run_dir": str(run), "config_hash": res.config_hash, "git_sha": res.git_sha,
                     "status": res.status, "n_params": res.n_params,
                     "n_params_nonembed": getattr(res, "n_params_nonembed", None),
                     "run_tokens": res.tokens, "step": m["step"], "tokens": m["tokens"],
                     "flops": m.get("flops"), "flops_6nd": 6.0 * res.n_params * m["tokens"],
                     "loss": m["loss"], "bpb": m.get("bpb")})
    if not rows:
        raise _Unusable("corrupt", f"{rundir.METRICS} has no eval rows")
    return rows
