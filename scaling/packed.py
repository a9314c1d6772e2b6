"""Packing: which runs can train as one job, parameters stacked on a leading axis and one vmapped step.

Runs that differ only in per-member scalars — the init seed, the data order, the optimizer's scalars
and the init scale (PACKED_KEYS) — run the same program on differently valued inputs, so k of them can
be one jitted step over arrays with a leading member axis. WSD branches (scaling/branch.py) at one
branch point may also differ in their trunk (train.branch.trunk: where a member's state comes from,
e.g. the trunks of seed replicates), not in the branch step. Everything else (shape, batch, steps,
schedule kind, corpus, dtype, execution keys) must be equal: `pack_key` is that equality, the one
place the runner and the packed trainer agree on what may share a pack.
"""
import json

from scaling import config as cfg_lib

# (section, key) pairs that may differ between members of one pack ("" section = top level).
PACKED_KEYS = (("", "seed"), ("data", "seed"), ("model", "init_std"), ("optim", "lr"), ("optim", "b1"),
               ("optim", "b2"), ("optim", "eps"), ("optim", "weight_decay"), ("optim", "clip_norm"),
               ("train", "z_loss"))
# Labels and views describe a member; they never decide whether runs can share a step.
_IGNORED_SECTIONS = cfg_lib.LABEL_SECTIONS + cfg_lib.VIEW_SECTIONS


def _shared_part(config) -> dict:
    """The config as a dict with PACKED_KEYS, labels and views removed: what members must share."""
    d = {k: v for k, v in config.to_dict().items() if k not in _IGNORED_SECTIONS}
    for section, key in PACKED_KEYS:
        (d.get(section, {}) if section else d).pop(key, None)
    (d.get("train", {}).get("branch") or {}).pop("trunk", None)  # each member restores its own trunk
    return d


def pack_key(config) -> str:
    """Canonical JSON of a resolved run config with PACKED_KEYS, labels and views removed: runs with
    equal keys can train in one pack (same shapes, steps and schedule; per-member scalars differ)."""
    return json.dumps(_shared_part(config), sort_keys=True, separators=(",", ":"))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def differing_keys(a, b) -> list[str]:
    """Dotted config keys outside PACKED_KEYS whose values differ between configs a and b (sorted):
    why two runs cannot share a pack ([] when pack_key(a) == pack_key(b))."""
    fa, fb = _flat(_shared_part(a)), _flat(_shared_part(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k, None) != fb.get(k, None) or (k in fa) != (k in fb))
