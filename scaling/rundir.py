"""The run directory: the contract between training, the sweep runner and the analysis.

One run directory (written by `scaling.train`, one process: the main one):

    config.json         the resolved config. Written first, atomically, before any step; a rerun
                        with a different config in the same directory is refused.
    metrics.jsonl       one JSON object per line: {"split": "train"|"eval", "step", "tokens",
                        "loss" (nats/token), ...}. Appended as the run goes; fsynced before each
                        checkpoint, so every row a checkpoint says exists is on disk. On resume,
                        rows newer than the restored checkpoint are dropped (the run redoes them).
    tensorboard/        TensorBoard events mirroring metrics.jsonl (a view, not a source).
    checkpoints/        Orbax checkpoints (state, data iterator, host state); keep-N.
    result.json         written LAST, atomically: {"status": "ok", N, D, FLOPs, final losses,
                        provenance} or {"status": "failed", "error"}. The run is FINISHED exactly
                        when result.json holds status "ok"; an ok result is never replaced.
    result.failed.json  a failed (or unreadable) result.json moved aside before a retry, so that
                        result.json keeps meaning "finished".

Added by the local sweep runner (`launch.local`), one writer per run at a time:

    launch_config.json  the config the runner hands to `scaling train` (atomic, before each attempt).
    launch.json         attempts, state ("running" | "ok" | "failed"), exit code, error, history
                        (atomic; "running" while an attempt executes); worker ("warm": a warm
                        worker ran it, "process": a process of its own); pack (the run ids of its
                        packed job, when it ran in one).
    train.log           the trainer's stdout+stderr, appended per attempt (a packed job's output
                        goes to every member's log).
    .lock               flock()ed while an attempt runs; holds {pid, host, since}.

A sweep directory holds `sweep.json` (the planned runs, atomic, written by the runner before it
starts), one run directory per run under `runs/<run_id>/`, and for a sweep launched on the cloud
`cloud.json` ({"bucket": BUCKET/<sweep>}: where `scaling sync` fetches the runs from).

A sweep executed with WSD branches (launch/branches.py) also holds its trunks, each an ordinary run
directory, under `trunks/runs/<trunk_id>/` (`trunk_dir`): `trunks/` is laid out like a sweep of its own
(`scaling status SWEEP/trunks` shows them), and outside `runs/`, so analysis never loads a trunk as a
point. A branch run SWEEP/runs/<id> finds its trunk there by the trunk id in its config
(train.branch.trunk); its metrics rows copied from the trunk carry "from_trunk": true.

Every JSON file here is written with `write_json` (temp file, fsync, rename, fsync of the
directory), so a crash leaves the old file or the new one, never a torn one. Readers raise
`RunDirError` naming the file when one is unreadable.
"""
from __future__ import annotations

import errno
import json
import os
import pathlib

CONFIG = "config.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
RESULT = "result.json"
FAILED_RESULT = "result.failed.json"
LAUNCH_CONFIG = "launch_config.json"
LAUNCH = "launch.json"
TRAIN_LOG = "train.log"
LOCK = ".lock"
SWEEP_MANIFEST = "sweep.json"
CLOUD_RECORD = "cloud.json"
RUNS = "runs"
TRUNKS = "trunks"

_TAIL_BYTES = 8192  # enough for the last few metrics rows


class RunDirError(ValueError):
    """A run-directory file that does not parse or has the wrong shape; the message names the file."""


class DiskFullError(OSError):
    """The disk filled (ENOSPC) while writing a file; the message says which one and what to do."""

    def __init__(self, path):
        super().__init__(f"disk full (No space left on device) while writing {path}; free space there "
                         "and rerun: an unfinished run resumes from its last checkpoint")
        self.errno, self.filename = errno.ENOSPC, str(path)

    def __str__(self) -> str:
        return self.args[0]


def is_disk_full(e: BaseException) -> bool:
    """True for an OSError meaning "no space left on device"."""
    return isinstance(e, OSError) and e.errno == errno.ENOSPC


# -- writing -------------------------------------------------------------------------------------
def fsync_dir(path) -> None:
    """Make a rename or file creation inside directory `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path, obj) -> None:
    """Write `obj` as JSON to `path` atomically and durably; DiskFullError (naming it) on ENOSPC."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path, text: str) -> None:
    """Replace `path` by `text` atomically and durably; DiskFullError (naming it) on ENOSPC."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the data before the rename: never an empty file behind the new name
        os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename itself survives a power cut
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise DiskFullError(path) from e
        raise


# -- reading -------------------------------------------------------------------------------------
def read_json(path):
    """Parsed JSON of `path`, None when absent; RunDirError naming the file when it does not parse."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path}: cannot be read ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: does not parse as JSON ({e})") from None


def read_json_object(path) -> dict | None:
    """Like read_json, but the file must hold a JSON object (RunDirError otherwise)."""
    obj = read_json(path)
    if obj is not None and not isinstance(obj, dict):
        raise RunDirError(f"{path}: holds a JSON {type(obj).__name__}, expected an object {{...}}")
    return obj


def read_result(run_dir) -> dict | None:
    """The run's result.json (None when absent); RunDirError when corrupt or not an object."""
    return read_json_object(pathlib.Path(run_dir) / RESULT)


def is_finished(run_dir) -> bool:
    """True when result.json holds status "ok" (raises RunDirError when it is corrupt)."""
    result = read_result(run_dir)
    return result is not None and result.get("status") == "ok"


def write_result(run_dir, result: dict) -> bool:
    """Write result.json unless that would replace an "ok" result by another; returns whether written.

    A finished run stays finished: an error raised after its ok result was written (a closed stdout,
    a late failure in teardown) cannot turn it into a failed one."""
    run_dir = pathlib.Path(run_dir)
    try:
        if is_finished(run_dir):
            return False
    except RunDirError:
        pass  # a corrupt result.json is no finished result: replace it
    write_json(run_dir / RESULT, result)
    return True


def set_aside_failed_result(run_dir) -> str | None:
    """Move a result.json that is not "ok" (failed or unreadable) to result.failed.json before a
    retry, so that result.json keeps meaning "finished". Returns why it was moved, None if not."""
    run_dir = pathlib.Path(run_dir)
    try:
        result = read_result(run_dir)
    except RunDirError as e:
        why = f"corrupt: {e}"
    else:
        if result is None or result.get("status") == "ok":
            return None
        why = f"failed: {result.get('error')}"
    os.replace(run_dir / RESULT, run_dir / FAILED_RESULT)
    fsync_dir(run_dir)
    return why


# -- metrics.jsonl -------------------------------------------------------------------------------
def metrics_path(run_dir) -> pathlib.Path:
    return pathlib.Path(run_dir) / METRICS


def metrics_lines(run_dir) -> list[tuple[int, str, dict | None, str | None]]:
    """(line number, text, row or None, why it is unusable or None) for each non-empty line.

    A last line without its newline is a write cut short by a kill: its reason says so."""
    path = metrics_path(run_dir)
    if not path.exists():
        return []
    try:
        text = path.read_text(errors="replace")
    except OSError as e:  # e.g. a directory in its place
        raise RunDirError(f"{path}: cannot be read ({e})") from None
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            why = None if isinstance(row, dict) else f"holds a JSON {type(row).__name__}, not an object"
        except json.JSONDecodeError as e:
            row, why = None, f"does not parse ({e})"
        if why is not None:
            row = None
            if i == len(lines):  # no newline after it
                why = "cut short (no newline at the end of the file: a write interrupted by a kill)"
        out.append((i, line, row, why))
    return out


def read_metrics(run_dir) -> list[dict]:
    """Every row of metrics.jsonl ([] when absent). A last line cut short by a kill is skipped;
    any other line that is not a JSON object raises RunDirError naming the file and line."""
    rows = []
    for lineno, _, row, why in metrics_lines(run_dir):
        if row is not None:
            rows.append(row)
        elif not why.startswith("cut short"):
            raise RunDirError(f"{metrics_path(run_dir)} line {lineno} {why}")
    return rows


def last_metrics_row(run_dir) -> dict | None:
    """The last parsable row of metrics.jsonl, reading only the file's tail (for status tables);
    None when there is none or the file cannot be read (status shows no step rather than failing)."""
    path = metrics_path(run_dir)
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
    except OSError:  # absent, or e.g. a directory in its place
        return None
    for ln in reversed(lines):
        try:
            row = json.loads(ln)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(row, dict):
            return row
    return None


# -- sweep directories ---------------------------------------------------------------------------
def run_dir_of(sweep_dir, run_id: str) -> pathlib.Path:
    """Where run `run_id` of a sweep lives."""
    return pathlib.Path(sweep_dir) / RUNS / run_id


def trunks_dir(sweep_dir) -> pathlib.Path:
    """The sweep-like directory holding a sweep's WSD trunks (trunks/runs/<trunk_id>)."""
    return pathlib.Path(sweep_dir) / TRUNKS


def trunk_dir(sweep_dir, trunk_id: str) -> pathlib.Path:
    """Where trunk `trunk_id` of a sweep lives."""
    return run_dir_of(trunks_dir(sweep_dir), trunk_id)


def branch_trunk_dir(run_dir, trunk_id: str) -> pathlib.Path:
    """The trunk of branch run SWEEP/runs/<id>: SWEEP/trunks/runs/<trunk_id>."""
    return trunk_dir(pathlib.Path(run_dir).resolve().parent.parent, trunk_id)


def run_dirs(sweep_dir) -> list[pathlib.Path]:
    """The run directories of a sweep, sorted: SWEEP/runs/*/, else SWEEP/*/, holding a file of the
    contract; else [SWEEP] itself when it is a single run directory."""
    sweep_dir = pathlib.Path(sweep_dir)
    base = sweep_dir / RUNS if (sweep_dir / RUNS).is_dir() else sweep_dir
    contract = (RESULT, CONFIG, METRICS, LAUNCH)
    found = sorted(p for p in base.iterdir() if p.is_dir() and any((p / f).exists() for f in contract))
    if not found and any((sweep_dir / f).exists() for f in contract):
        return [sweep_dir]
    return found


def read_manifest(sweep_dir) -> dict | None:
    """SWEEP/sweep.json (None when absent); RunDirError unless it is {"runs": [{"run_id": ...}, ...]}."""
    path = pathlib.Path(sweep_dir) / SWEEP_MANIFEST
    man = read_json_object(path)
    if man is None:
        return None
    runs = man.get("runs")
    if not isinstance(runs, list) or not all(isinstance(r, dict) and "run_id" in r for r in runs):
        raise RunDirError(f"{path}: expected {{'runs': [{{'run_id': ..., ...}}, ...]}}")
    return man


def planned_runs(sweep_dir) -> dict[str, dict]:
    """run_id -> planned-run summary from SWEEP/sweep.json ({} when absent)."""
    man = read_manifest(sweep_dir)
    return {r["run_id"]: r for r in man["runs"]} if man else {}


def write_manifest(sweep_dir, manifest: dict) -> pathlib.Path:
    """Write SWEEP/sweep.json (creating the sweep directory); returns its path."""
    sweep_dir = pathlib.Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / SWEEP_MANIFEST
    write_json(path, manifest)
    return path
