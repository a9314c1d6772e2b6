"""A fitting benchmark across the published data sets: each law × each set, rollout backtests.

    rows = run(data_dir, Settings(n_bootstrap=20, max_cutoffs=1))   # one row per (set, law, bin)

For every published set (../shared/data) and every law of analysis.backtest that applies to it,
the rollout backtest (fit on the budgets at or below a cutoff, predict everything above with a
prediction interval) is summarised per extrapolation-factor bin: median and max |relative
error| of the predicted loss and the empirical coverage of the intervals (with its 95% Wilson
interval). A law that does not apply to a set (no unique-token column, one model size, not an
isoFLOP grid) gets a row saying why instead of numbers.

Sets: Epoch's digitised Chinchilla points (5 highest-loss dropped) on Hoffmann's nine isoFLOP
budgets (D = C/6N), one
Porian et al. set-up (RefinedWeb, "Optimizer tuning (no decay)", val loss; their isoFLOP
budgets), Muennighoff et al.'s 296 runs (with U), Caballero et al.'s addition curve (cutoffs on
the training-set size). The backtest of 'bnsl' and 'data-constrained' predicts runs; those of
'chinchilla' and 'isoflop' also the best loss of each budget above the cutoff (analysis.backtest).
"""
from __future__ import annotations

import dataclasses
import pathlib
import warnings

import numpy as np
import pandas as pd

from analysis import backtest, reproduce, results, workflows

PORIAN_SETUP = ("rw", "Optimizer tuning (no decay)")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much work each backtest does (the gallery uses a cheap setting)."""

    n_bootstrap: int = 100
    """bootstrap refits per cutoff"""
    max_cutoffs: int | None = None
    """cutoffs per backtest (evenly spaced in rank; None: all)"""
    n_starts: int = 256
    """starts taken evenly from each law's grid"""
    level: float = 0.9
    """central level of the prediction intervals"""


def _epoch(d: pathlib.Path) -> pd.DataFrame:
    """Epoch's points without the 5 highest-loss ones, on Hoffmann et al.'s nine isoFLOP budgets
    (the points `scaling reproduce chinchilla` fits Approach 2 on), D = C/6N, nominal budgets."""
    pts = reproduce.drop_highest_loss(reproduce.load_epoch(d / "epoch_chinchilla_svg_extracted_data.csv"))
    label = reproduce.isoflop_labels(pts.flops)
    t = pd.DataFrame({"n_params": pts.n_params, "tokens": pts.tokens, "flops_6nd": pts.flops,
                      "loss": pts.loss,
                      "budget": np.array(reproduce.HOFFMANN_2022_ISOFLOP_BUDGETS + (np.nan,))[label]})
    return t[label >= 0].reset_index(drop=True)


def _porian(d: pathlib.Path) -> pd.DataFrame:
    raw = results.read_published(d / "porian2024_isoflop_points.csv",
                                 ("dataset", "label", "flops", "n_params", "tokens", "loss"),
                                 "porian2024_isoflop_points.csv", "Porian")
    g = raw[(raw.dataset == PORIAN_SETUP[0]) & (raw.label == PORIAN_SETUP[1])]
    return pd.DataFrame({"n_params": g.n_params, "tokens": g.tokens, "flops_6nd": 6 * g.n_params * g.tokens,
                         "budget": g.flops, "loss": g.loss}).reset_index(drop=True)


def _muennighoff(d: pathlib.Path) -> pd.DataFrame:
    raw = results.read_published(d / "muennighoff2023_c4_runs_all.csv",
                                 ("n_params", "tokens_D", "unique_tokens_U", "val_loss"),
                                 "muennighoff2023_c4_runs_all.csv", "Muennighoff")
    t = pd.DataFrame({"n_params": raw.n_params.astype(float), "tokens": raw.tokens_D.astype(float),
                      "unique_tokens": raw.unique_tokens_U.astype(float), "loss": raw.val_loss})
    return t.assign(flops_6nd=6 * t.n_params * t.tokens)


def _caballero(d: pathlib.Path) -> pd.DataFrame:
    raw = results.read_published(d / "caballero2022_bnsl_4digit_addition.csv",
                                 ("train_dataset_size", "test_cross_entropy"),
                                 "caballero2022_bnsl_4digit_addition.csv", "Caballero")
    x = raw.train_dataset_size.astype(float)
    return pd.DataFrame({"n_params": 1.0, "tokens": x, "flops_6nd": 6 * x, "loss": raw.test_cross_entropy})


SETS = {  # name -> (loader, {law: reason it does not apply})
    "Epoch (Hoffmann's isoFLOP points)": (_epoch, {"data-constrained": "no unique tokens U",
                                    "bnsl": "a one-variable law; the points vary N and D"}),
    f"Porian {PORIAN_SETUP[0]}: {PORIAN_SETUP[1]}": (_porian, {
        "data-constrained": "no unique tokens U", "bnsl": "a one-variable law; the points vary N and D"}),
    "Muennighoff (296 runs)": (_muennighoff, {"isoflop": "not an isoFLOP grid",
                                               "bnsl": "a one-variable law; the runs vary N, D, U"}),
    "Caballero (addition)": (_caballero, {"chinchilla": "one model size (x is the training-set size)",
                                          "isoflop": "one model size",
                                          "data-constrained": "no unique tokens U"}),
}


def run(data_dir, settings: Settings = Settings(), log=print) -> pd.DataFrame:
    """One row per (set, law, factor bin): n, median/max |rel error|, coverage and its Wilson CI;
    a `note` instead of numbers where the law does not apply or its backtest was refused."""
    data_dir = pathlib.Path(data_dir)
    out = []
    for name, (loader, not_applicable) in SETS.items():
        table = loader(data_dir)
        for law in backtest.LAWS:
            if law in not_applicable:
                out.append({"set": name, "law": law, "note": f"n/a: {not_applicable[law]}"})
                continue
            log(f"benchmark: {name} x {law} ...")
            starts = None if law == "isoflop" else workflows.starts_subset(backtest.law_of(law),
                                                                            settings.n_starts)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # skipped cutoffs are counted in the note
                    rows = backtest.backtest(table, law, level=settings.level, starts=starts,
                                             n_bootstrap=settings.n_bootstrap,
                                             max_cutoffs=settings.max_cutoffs)
                if rows.empty and rows.attrs["skipped_cutoffs"]:  # the reason, not "no rows"
                    raise ValueError(f"every cutoff: {rows.attrs['skipped_cutoffs'][-1]['reason']}")
                summary = backtest.summarize(rows)
            except ValueError as e:
                out.append({"set": name, "law": law, "note": f"refused: {str(e).splitlines()[0]}"})
                continue
            note = f"{rows.cutoff.nunique()} cutoffs"
            if rows.attrs["skipped_cutoffs"]:
                note += f", {len(rows.attrs['skipped_cutoffs'])} skipped"
            out += [{"set": name, "law": law, **r, "note": note} for r in summary.to_dict("records")]
    df = pd.DataFrame(out)
    df.attrs.update(dataclasses.asdict(settings))
    return df


def markdown_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """(header, rows) for a markdown / HTML table."""
    header = ["set", "law", "factor C/C_cut (bnsl: D/D_cut)", "n", "median abs rel. error", "max abs rel. error",
              f"coverage of {df.attrs.get('level', 0.9):.0%} PI (95% Wilson)", "note"]
    rows = []
    for r in df.to_dict("records"):
        if pd.isna(r.get("n", np.nan)):
            rows.append([r["set"], r["law"], "", "", "", "", "", r["note"]])
            continue
        rows.append([r["set"], r["law"], r["factor"], f"{int(r['n'])}", f"{r['median_abs_error']:.3%}",
                     f"{r['max_abs_error']:.3%}",
                     f"{r['coverage']:.2f} ({r['coverage_lo']:.2f}, {r['coverage_hi']:.2f})", r["note"]])
    return header, rows
