"""Pre-registered forecasts: a frozen JSON file written before the run it predicts, scored after.

    doc = write_forecast(table, 1e13, "forecast.json")          # fit, predict N*, D*, L* at C
    s = score("forecast.json", measured_table, inputs=table)    # error, inside the interval?

The file holds: the law and its parameters, the target C (FLOPs), the predicted N*, D*
(bootstrap percentile CIs) and L* (prediction interval) with level and kind, the noise used,
the bootstrap samples (so the loss can be predicted at the run's actual N, D), the identities
(run_dir) and a sha256 of the rows it was fitted on, time, git sha, an optional config for the
predicted-optimal run (built by the caller's `make_config(N*, D*)` hook) with the caller's
hash of it, and `content_hash`: the sha256 of everything else, so a hand edit is detected.

`score` refuses (ValueError, one line) a file whose content hash does not match, inputs whose
fitted rows changed or went missing (`verify_inputs`), runs none of which has the planned
config hash, and (without a planned config) a table with no run at the target budget. The
planned run is the ladder shape nearest N* trained on D*, so its 6ND is near C, not equal to it.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import pathlib

import numpy as np

from analysis import backtest, laws, predict

FORMAT = "scaling-forecast/1"
HASHED_COLUMNS = ("n_params", "tokens", "loss")
TARGET_TOL = 0.1  # a run scores a forecast if its 6ND is within this relative distance of the target


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=float).encode()


def sha256(obj) -> str:
    """sha256 hex of the canonical JSON of obj (sorted keys, no whitespace)."""
    return hashlib.sha256(_canonical(obj)).hexdigest()


def table_hash(table) -> str:
    """sha256 of the rows' (n_params, tokens, loss) as 17-digit floats, sorted (order-free)."""
    rows = sorted(tuple(f"{float(v):.17g}" for v in r)
                  for r in table[list(HASHED_COLUMNS)].itertuples(index=False))
    return sha256(rows)


def _fit(table, law, target, level, n_bootstrap, starts, seed):
    """(optimum, params, samples) of the law fitted on all of `table`."""
    if law == "chinchilla":
        s = predict.fit_masks(laws.chinchilla(), table, np.ones((1, len(table)), bool),
                              starts=starts, n_bootstrap=n_bootstrap, seed=seed)[0]
        opt = predict.chinchilla_optimum(s, target, level=level, seed=seed)
        return opt, s.law.to_reported(s.theta), {"theta": s.theta.tolist(),
                                                 "boot_theta": s.boot_theta.tolist()}
    m = predict.approach2_fit(table, budget=backtest.budgets_of(table), n_bootstrap=n_bootstrap,
                              seed=seed)
    opt = predict.approach2_optimum(m, target, level=level, seed=seed)
    a, log_kn, slope_l, log_kl = m.coef
    return opt, {"a": a, "k_N": np.exp(log_kn), "gamma": -slope_l, "k_L": np.exp(log_kl)}, None


def write_forecast(table, target_flops: float, out_path, *, law="chinchilla", level=0.9,
                   n_bootstrap=200, starts=None, seed=0, make_config=None, hash_config=None,
                   source="", git_sha=None) -> dict:
    """Fit `law` ('chinchilla' or 'isoflop') on table, predict the optimum at target_flops and
    write the frozen forecast to out_path (refuses to overwrite). Returns the document."""
    out_path = pathlib.Path(out_path)
    if out_path.exists():
        raise ValueError(f"{out_path} exists; a forecast is frozen once written (choose a new path)")
    budgets = backtest.budgets_of(table)
    if law not in backtest.OPTIMUM_LAWS:  # a forecast predicts the compute optimum N*, D*, L*
        raise ValueError(f"forecast: law {law!r} has no compute optimum to forecast; valid: "
                         f"{', '.join(backtest.OPTIMUM_LAWS)}")
    need = backtest.MIN_BUDGETS[law]
    if len(np.unique(budgets)) < need:
        raise ValueError(f"forecast --law {law} needs at least {need} budgets; the data has "
                         f"{len(np.unique(budgets))} ({', '.join(f'{c:.3g}' for c in np.unique(budgets))})")
    if not target_flops > budgets.max():
        raise ValueError(f"--target-flops {target_flops:.3g} is not above the largest budget in "
                         f"the data ({budgets.max():.3g} FLOPs); a forecast predicts a larger run")
    opt, params, samples = _fit(table, law, float(target_flops), level, n_bootstrap, starts, seed)
    config = make_config(opt.N.value, opt.D.value) if make_config else None
    doc = {"format": FORMAT, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "git_sha": git_sha, "law": law, "target_flops": float(target_flops),
           "factor_beyond_data": float(target_flops / budgets.max()),
           "inputs": {"source": str(source), "sha256": table_hash(table), "n_rows": len(table),
                      "runs": [str(r) for r in table["run_dir"]] if "run_dir" in table else None},
           "params": {k: float(v) for k, v in params.items()}, "optimum": opt.to_dict(),
           "samples": samples, "config": config,
           "config_hash": hash_config(config) if (config is not None and hash_config) else None}
    doc["content_hash"] = sha256(doc)
    tmp = out_path.with_name(out_path.name + ".tmp")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    os.replace(tmp, out_path)
    return doc


def load_forecast(path) -> dict:
    """The forecast document; ValueError when it is not one or was edited after writing."""
    path = pathlib.Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such forecast file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a forecast file (JSON does not parse: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "content_hash" not in doc:
        raise ValueError(f"{path}: not a forecast file (format {FORMAT!r} expected)")
    body = {k: v for k, v in doc.items() if k != "content_hash"}
    if sha256(body) != doc["content_hash"]:
        raise ValueError(f"{path}: content hash does not match: the forecast was edited after it "
                         f"was written; refusing to score it")
    return doc


def verify_inputs(doc: dict, table) -> None:
    """ValueError unless `table` still holds the forecast's fitted rows, unchanged."""
    runs = doc["inputs"].get("runs")
    if runs is not None and "run_dir" in table:
        have = set(map(str, table["run_dir"]))
        missing = [r for r in runs if r not in have]
        if missing:
            raise ValueError(f"inputs changed after the forecast was written: {len(missing)} fitted "
                             f"run(s) missing, e.g. {missing[0]}; refusing to score")
        table = table[table["run_dir"].astype(str).isin(set(runs))]
    if table_hash(table) != doc["inputs"]["sha256"]:
        raise ValueError(f"inputs changed after the forecast was written: sha256 of the fitted rows "
                         f"is {table_hash(table)[:12]}…, the forecast recorded "
                         f"{doc['inputs']['sha256'][:12]}…; refusing to score")


@dataclasses.dataclass
class Score:
    """A forecast compared with the run made at its target budget."""

    run: str
    """the measured run (run_dir, or file:line of a CSV)"""
    n_params: float
    """the run's N (parameters)"""
    tokens: float
    """the run's D (tokens)"""
    measured: float
    """its loss (nats/token)"""
    predicted: float
    """predicted loss at the run's own (N, D) (Approach 3), else the forecast L*"""
    lo: float
    """lower end of the prediction interval"""
    hi: float
    """upper end"""
    level: float
    """central probability of [lo, hi]"""
    kind: str
    """interval kind (predict.KIND_PI)"""
    rel_error: float
    """predicted / measured − 1"""
    inside: bool
    """lo <= measured <= hi"""
    forecast_L: dict
    """the forecast's L* interval at (N*, D*), as written"""


def _runs_to_score(doc: dict, measured):
    """The planned run(s) by config hash when the forecast planned a config and `measured` has
    hashes (the ladder shape nearest N* trained on D* need not spend exactly C), else the runs
    whose 6ND is within TARGET_TOL of the target C."""
    planned = doc.get("config_hash")
    if planned and "config_hash" in measured and measured["config_hash"].notna().any():
        runs = measured[measured["config_hash"] == planned]
        if not len(runs):
            other = measured[measured["config_hash"].notna()]
            raise ValueError(f"run {other['run_dir'].iloc[0]} has config hash "
                             f"{str(other['config_hash'].iloc[0])[:12]}…, not the forecast's planned "
                             f"{planned[:12]}…; refusing to score another config")
        return runs
    c = 6.0 * measured["n_params"].to_numpy(dtype=float) * measured["tokens"].to_numpy(dtype=float)
    at = np.abs(c / doc["target_flops"] - 1) <= TARGET_TOL
    if not at.any():
        raise ValueError(f"no run at the forecast's target C = {doc['target_flops']:.3g} FLOPs (6ND, "
                         f"within {TARGET_TOL:.0%}); runs have 6ND in [{c.min():.3g}, {c.max():.3g}]")
    return measured[at]


def score(forecast_path, measured, *, inputs=None) -> list[Score]:
    """Score the forecast against its run(s) in `measured` (a results table): the planned config,
    else the runs at its target C.
    `inputs`: the table the forecast was fitted on, re-read now (checked by verify_inputs)."""
    doc = load_forecast(forecast_path)
    if inputs is not None:
        verify_inputs(doc, inputs)
    runs = _runs_to_score(doc, measured)
    opt = doc["optimum"]
    if doc["samples"]:
        noise = predict.Noise(**opt["noise"])
        s = predict.LawSamples(laws.chinchilla(), np.array(doc["samples"]["theta"]),
                               np.array(doc["samples"]["boot_theta"]), np.ones(0, bool), noise)
        p = predict.loss_interval(s, {"N": runs.n_params, "D": runs.tokens},
                                  level=opt["L"]["level"])
        pred, lo, hi = p.value, p.lo, p.hi
    else:
        pred, lo, hi = (np.full(len(runs), opt["L"][k]) for k in ("value", "lo", "hi"))
    meas = runs["loss"].to_numpy(dtype=float)
    return [Score(run=str(runs["run_dir"].iloc[i]) if "run_dir" in runs else str(i),
                  n_params=float(runs.n_params.iloc[i]), tokens=float(runs.tokens.iloc[i]),
                  measured=float(meas[i]), predicted=float(pred[i]), lo=float(lo[i]),
                  hi=float(hi[i]), level=opt["L"]["level"], kind=opt["L"]["kind"],
                  rel_error=float(pred[i] / meas[i] - 1), inside=bool(lo[i] <= meas[i] <= hi[i]),
                  forecast_L=opt["L"]) for i in range(len(runs))]
