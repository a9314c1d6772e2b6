"""Hyperparameter grids and fitted hyperparameters for sweeps: the `sweep.hparams` section.

    c.sweep.hparams.lr_multipliers = (0.25, 0.5, 1, 2, 4)   # an LR grid around each run's LR
    c.sweep.hparams.batch_multipliers = (0.5, 1, 2)         # x a batch grid around its batch size
    c.sweep.hparams.fit_file = "fits/hparams.json"          # LR (and batch) from fitted laws

Every point the sweep would plan (a shape x D for kind 'grid', a budget x shape for 'isoflop') becomes
one run per (LR multiplier, batch multiplier): an LR x batch grid per shape or per budget, planned,
identified and resumed like any other run (each variant's config differs, so its id does). Batch
multipliers keep D: the steps change, rounded to whole steps as always.

Where each run's LR and batch come from (its `hp_source`, shown in the plan table):
  config    optim.lr / train.batch_size of the sweep file
  rule      sweep.rules (lr_ref * (N_ne / n_ref) ** lr_exponent; batch_ref * (D / batch_d_ref) ** ...)
  fit:HASH  the laws of a fit file (scaling/hparam_file.py, written by `scaling hparams-fit`):
            eta* = a * x**b and B* = c * x**d with x = the run's budget C in FLOPs (isoflop; grid runs:
            6 N D) when fit_x = 'flops', or its total N when fit_x = 'n_params'. HASH = the first 8
            hex digits of the file's SHA-256, also in the run's id, so a refit plans new runs.
  ... xM    times a grid multiplier M
"""
from __future__ import annotations

import ml_collections

from scaling import hparam_file

FIT_XS = ("flops", "n_params")


def section_defaults() -> ml_collections.ConfigDict:
    """sweep.hparams: lr_multipliers, batch_multipliers (() = no grid on that axis); fit_file ("" =
    none) and fit_x ('flops' | 'n_params': what the laws are evaluated at)."""
    h = ml_collections.ConfigDict()
    h.lr_multipliers = ()
    h.batch_multipliers = ()
    h.fit_file = ""
    h.fit_x = "flops"
    return h


def problems(sw) -> list[str]:
    """Every problem of sweep.hparams visible before planning."""
    h, out = sw.hparams, []
    for name in ("lr_multipliers", "batch_multipliers"):
        values = tuple(getattr(h, name))
        if any(not (isinstance(m, (int, float)) and m > 0) for m in values):
            out.append(f"sweep.hparams.{name}={values}: must be positive numbers, e.g. (0.5, 1, 2)")
        elif len(set(values)) != len(values):
            out.append(f"sweep.hparams.{name}={values}: repeats a value")
    if h.fit_x not in FIT_XS:
        out.append(f"sweep.hparams.fit_x={h.fit_x!r}: must be one of {FIT_XS}")
    return out


def _round_batch(b: float, rules) -> int:
    b = max(rules.batch_multiple, rules.batch_multiple * round(b / rules.batch_multiple))
    return int(min(b, rules.batch_max)) if rules.batch_max else int(b)


def variants(run, sw, counts: dict, tokens_raw: float, budget: float | None) -> list[tuple]:
    """[(run config, hp_source, id tag)] for one planned point whose sweep.rules are already applied."""
    h, rules = sw.hparams, sw.rules
    lr_src = "rule" if rules.lr_ref else "config"
    b_src = "rule" if rules.batch_ref else "config"
    tag = ""
    if h.fit_file:
        laws, sha = hparam_file.read(h.fit_file)
        x = float(counts["total"]) if h.fit_x == "n_params" else float(budget or 6 * counts["total"] * tokens_raw)
        where = f"sweep.hparams.fit_file={h.fit_file}"
        run.optim.lr = hparam_file.evaluate(laws, f"lr_vs_{h.fit_x}", x, where)
        lr_src = f"fit:{sha[:8]}"
        if f"batch_size_vs_{h.fit_x}" in laws:  # a fit file may hold the LR law alone
            run.train.batch_size = _round_batch(hparam_file.evaluate(laws, f"batch_size_vs_{h.fit_x}", x, where), rules)
            b_src = f"fit:{sha[:8]}"
        tag = f"fit{sha[:8]}"
    out = []
    for m_lr in tuple(h.lr_multipliers) or (None,):
        for m_b in tuple(h.batch_multipliers) or (None,):
            v = ml_collections.ConfigDict(run.to_dict())
            parts = [tag] if tag else []
            if m_lr is not None:
                v.optim.lr = float(run.optim.lr * m_lr)
                parts.append(f"lr{v.optim.lr:.3g}")
            if m_b is not None:
                v.train.batch_size = _round_batch(run.train.batch_size * m_b, rules)
                parts.append(f"b{v.train.batch_size}")
            source = (f"lr {lr_src}" + (f" x{m_lr:g}" if m_lr is not None else "")
                      + f", B {b_src}" + (f" x{m_b:g}" if m_b is not None else ""))
            out.append((v, source, "-".join(parts)))
    return out
