"""Run metrics: metrics.jsonl (the source of truth), TensorBoard events, and a progress line.

Only the main process writes; other processes get a writer whose methods do nothing.
"""
import json
import math
import os
import pathlib
import sys
import time


class MetricsWriter:
    """Appends one JSON object per line to run_dir/metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = pathlib.Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter  # imported lazily: only the main process needs it
            self._tb = SummaryWriter(str(pathlib.Path(run_dir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """On resume: drop rows newer than the restored checkpoint, which the resumed run will redo."""
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if row.get("step", 0) <= step:
                keep.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(f"{line}\n" for line in keep))
        os.replace(tmp, self.path)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        if self._tb is not None:
            split = row.get("split", "train")
            for key, value in row.items():
                if key not in ("split", "step") and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"{split}/{key}", value, row["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir) -> list[dict]:
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
        mfu_txt = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
        return (f"{self.prefix}step {step}/{self.total} | loss {loss:.4f} | {_si(tokens_per_s)} tok/s | "
                f"MFU {mfu_txt} | ETA {_duration(eta)}")

    def log(self, *args, **kwargs) -> None:
        if self.enabled:
            print(self.line(*args, **kwargs), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            print(f"{self.prefix}{text}", file=self.stream, flush=True)
