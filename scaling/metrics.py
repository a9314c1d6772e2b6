"""Run metrics: the metrics file of the run directory (the source of truth), its views (TensorBoard,
optionally W&B: scaling/tracking.py), and a progress line.

Only the main process writes; other processes get a writer whose methods do nothing. Given the
run's view, every train row also says which peak its MFU divides by: `mfu_peak_flops` (FLOP/s of
the whole mesh) and `mfu_peak_source` (config, measured CPU matmul, or the datasheet table entry).
"""
import json
import math
import os
import pathlib
import sys
import time

from scaling import rundir
from scaling.rundir import read_metrics  # noqa: F401  (the reader belongs to the contract)


class MetricsWriter:
    """Appends one JSON object per line to the run's metrics file and mirrors each row to the trackers."""

    def __init__(self, run_dir, *, enabled: bool = True, tensorboard: bool = True, view=None):
        """view: the run's tracking.RunView (hparams, MFU peak, track section); None: TensorBoard
        scalars only, no hparams."""
        from scaling import tracking

        self.enabled = enabled
        self.run_dir = pathlib.Path(run_dir)
        self.path = rundir.metrics_path(run_dir)
        self._peak = view.mfu_peak if view is not None else {}
        self.trackers = tracking.Trackers(run_dir, view, tensorboard=tensorboard) if enabled else None

    def truncate_after(self, step: int) -> list[str]:
        """On resume: drop rows newer than the restored checkpoint, which the resumed run will redo.

        Returns a description of each line at or before `step` that was lost (it does not parse):
        the caller records them, since the finished run will lack those rows. A last line cut
        short by a kill is newer than any checkpoint and is dropped without a note."""
        if not self.enabled or not self.path.exists():
            return []
        keep, lost = [], []
        for lineno, line, row, why in rundir.metrics_lines(self.run_dir):
            if row is not None:
                if row.get("step", 0) <= step:
                    keep.append(line)
            elif not why.startswith("cut short"):
                lost.append(f"{self.path} line {lineno} {why}: dropped on resume at step {step}")
        rundir.write_text(self.path, "".join(f"{line}\n" for line in keep))
        return lost

    def write(self, row: dict) -> None:
        """Append `row` to the metrics file (durable on sync()), then show it in the trackers."""
        if not self.enabled:
            return
        if row.get("split", "train") == "train":
            row = {**row, **self._peak}
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
        except OSError as e:
            if rundir.is_disk_full(e):
                raise rundir.DiskFullError(self.path) from e
            raise
        self.trackers.log(row)

    def sync(self) -> None:
        """Make every row written so far durable (called before each checkpoint, which counts on them)."""
        if not self.enabled or not self.path.exists():
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()

    def publish(self, result: dict) -> None:
        """After result.json is written: the final metrics to the trackers (hparams session end, W&B summary)."""
        if self.trackers is not None:
            self.trackers.publish(result)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


class Progress:
    """One line per log step: step, loss, tokens/s, MFU, ETA. Lines (not \\r) so logs stay readable."""

    def __init__(self, total_steps: int, *, enabled: bool = True, prefix: str = "", stream=None):
        self.total = total_steps
        self.enabled = enabled
        self.prefix = prefix
        self.stream = stream or sys.stdout
        self.t0 = time.perf_counter()

    def line(self, step: int, loss: float, tokens_per_s: float, mfu: float | None, steps_per_s: float) -> str:
        eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("inf")
        if not math.isfinite(tokens_per_s):  # the segment's first step: compiling, no rate to report
            return f"{self.prefix}step {step}/{self.total} | loss {loss:.4f} | tok/s from the next line on"
        mfu_txt = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
        return (f"{self.prefix}step {step}/{self.total} | loss {loss:.4f} | {_si(tokens_per_s)} tok/s | "
                f"MFU {mfu_txt} | ETA {_duration(eta)}")

    def log(self, *args, **kwargs) -> None:
        self._print(self.line(*args, **kwargs))

    def message(self, text: str) -> None:
        self._print(f"{self.prefix}{text}")

    def _print(self, text: str) -> None:
        """Progress is a view: a closed stream (`| head`, a dead terminal) turns it off, never fails the run."""
        if not self.enabled:
            return
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):  # BrokenPipeError, EIO; ValueError: the stream was closed
            self.enabled = False
