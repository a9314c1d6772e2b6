"""The hyperparameter-law fit file: written by analysis.hparams, read by sweep rules (launch.hparams).

A JSON object:
    kind     "hparam_laws"
    format   2 (format 1 files, which lack `source`, are still read)
    laws     {name: law}, name '<y>_vs_<x>', e.g. 'lr_vs_flops' (eta*(C), Adam LR vs the budget C in
             FLOPs) or 'batch_size_vs_flops' (B*(C), sequences per step); each law has y_name, x_name,
             coef (a), exponent (b) for y = a * x**b, coef_ci, exponent_ci, level, n_groups, left_out
    optima   the per-group optima the laws were fitted to
    source   where the laws came from (format 2): sweep_dir (the sweep directory fitted), sweep_file
             (the sweep file that planned it, from its sweep.json; "" if unknown), n_runs (runs with a
             result that entered the fit), command (the `scaling hparams-fit` command line that wrote
             the file). No timestamp, so refitting the same runs rewrites the same bytes.
The file's identity is the SHA-256 of its bytes (runs planned from it carry its first 8 hex digits).
JAX-free, so a sweep is planned without loading JAX.
"""
from __future__ import annotations

import hashlib
import json
import pathlib

KIND = "hparam_laws"
FORMAT = 2
READABLE_FORMATS = (1, 2)  # 1: before `source` was recorded
SOURCE_KEYS = ("sweep_dir", "sweep_file", "n_runs", "command")


def write(path, laws: dict, optima: list, source: dict) -> str:
    """Write the file (source: SOURCE_KEYS); return its SHA-256 (hex)."""
    missing = [k for k in SOURCE_KEYS if k not in source]
    if missing:
        raise ValueError(f"hyperparameter fit file {path}: source lacks {missing} (needs {SOURCE_KEYS})")
    doc = {"kind": KIND, "format": FORMAT, "laws": laws, "optima": optima, "source": source}
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def read_document(path) -> tuple[dict, str]:
    """(the whole file as a dict, its SHA-256); ValueError naming the file when it is not such a file."""
    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
        doc = json.loads(raw)
    except FileNotFoundError:
        raise FileNotFoundError(f"hyperparameter fit file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON hyperparameter fit file ({e})") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND or doc.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{path}: not a hyperparameter fit file (kind {KIND!r}, format one of {READABLE_FORMATS}); "
                         "write one with `scaling hparams-fit`")
    return doc, hashlib.sha256(raw).hexdigest()


def read(path) -> tuple[dict, str]:
    """(the file's laws, its SHA-256); ValueError naming the file when it is not such a file."""
    doc, sha = read_document(path)
    return doc["laws"], sha


def evaluate(laws: dict, name: str, x: float, where: str = "the fit file") -> float:
    """y = coef * x**exponent of law `name`; ValueError naming the laws present when it is missing."""
    if name not in laws:
        raise ValueError(f"{where} has no law {name!r} (it has {sorted(laws)})")
    law = laws[name]
    return float(law["coef"] * float(x) ** law["exponent"])
