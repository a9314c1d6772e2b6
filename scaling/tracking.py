"""Trackers: the run shown in TensorBoard and, optionally, Weights & Biases — views of its run directory.

The run directory (metrics.jsonl, result.json) is the source of truth; a tracker only shows it. A
tracker that fails (W&B not installed, no network, a full disk under its files) prints one warning
and is dropped; the run goes on and loses nothing.

What each view holds (the `track` section of the config chooses them; scaling/config_schema.py):

- TensorBoard (track.tensorboard, on by default), in RUN_DIR/tensorboard: every numeric field of
  every metrics row as a scalar `SPLIT/KEY` (train/loss, eval/loss, eval/bpb, train/mfu, ...); at
  start the HParams session of the run: `hparams(...)` below (the flattened config, N, D, C,
  tokens/param, the sweep, the MFU peak); at the end the final metrics (`final/...`, FINAL_METRICS)
  and the session's end. A sweep's runs live in SWEEP_DIR/runs/ID/tensorboard, so
  `tensorboard --logdir sweeps/NAME` shows one sweep, its HParams view filtering and comparing its
  runs by any of those columns, and `--logdir sweeps` all sweeps, told apart by the `sweep` column.
- Weights & Biases (track.wandb=true; `pip install -e '.[wandb]'`): project track.wandb_project,
  group = the sweep (track.group overrides), name = the run id, config = the same flat hparams,
  history = the metrics rows, summary = FINAL_METRICS. W&B keeps its files in RUN_DIR/wandb; its offline
  mode (WANDB_MODE=offline or track.wandb_mode=offline) writes them there for a later `wandb sync`.
  The W&B run id is derived from the sweep, run id and config hash, so a resumed run continues the
  same W&B run. A run that stops early (preemption) is closed by W&B when its process exits.
"""
import dataclasses
import hashlib
import math
import os
import pathlib
import sys

from scaling import accounting, rundir
from scaling import config as cfg_lib

# Final metrics every tracker shows: tag -> result.json key (units as there: loss in nats/token).
FINAL_METRICS = {
    "final/eval_loss": "final_eval_loss",
    "final/eval_bpb": "final_eval_bpb",
    "final/train_loss": "final_train_loss",
    "final/tokens_per_s": "tokens_per_s",
    "final/mfu": "mfu",
    "final/wall_time_s": "wall_time_s",
}
# Curves listed beside them as HParams metrics (their last value is the column).
CURVE_METRICS = ("eval/loss", "eval/bpb", "train/loss", "train/mfu")


@dataclasses.dataclass
class RunView:
    """What every tracker shows of one run."""

    run_id: str
    """The run directory's name (a sweep's run id)."""
    group: str
    """The sweep the run belongs to (track.group, else SWEEP for RUN_DIR = SWEEP/runs/ID), or ''."""
    hparams: dict
    """Flat scalar hparams: config keys as 'section.key', plus run_id, sweep, config_hash, the
    headline accounting (n_params, n_params_nonembed, tokens, flops, flops_6nd, tokens_per_param)
    and the MFU peak (mfu_peak_flops, mfu_peak_source)."""
    mfu_peak: dict
    """{'mfu_peak_flops': peak FLOP/s of the whole mesh (or None), 'mfu_peak_source': where it came from}."""
    track: dict
    """The config's track section."""


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; tuples and lists become their repr (hparams are scalars)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = repr(value)
    return flat


def group_of(run_dir, track) -> str:
    """track.group if set, else the sweep directory's name when run_dir is SWEEP/runs/ID, else ''."""
    run_dir = pathlib.Path(run_dir).resolve()
    if track.get("group"):
        return str(track["group"])
    return run_dir.parent.parent.name if run_dir.parent.name == rundir.RUNS else ""


def headline(config) -> dict:
    """N (total and non-embedding), D, C (exact and 6ND) and tokens/param of a resolved config."""
    m, seq_len = config.model, config.data.seq_len
    counts = accounting.param_counts(m)
    tokens = cfg_lib.num_steps(config) * config.train.batch_size * seq_len
    flops = accounting.run_flops(m, seq_len, tokens)
    return {"n_params": counts["total"], "n_params_nonembed": counts["nonembedding"], "tokens": tokens,
            "flops": flops["flops"], "flops_6nd": flops["flops_6nd"], "tokens_per_param": tokens / counts["total"]}


def run_view(config, run_dir, peak: float | None, peak_source: str | None) -> RunView:
    """The view of a resolved config trained in run_dir, whose MFU divides by `peak` (from `peak_source`)."""
    d = config.to_dict()
    track = d.pop("track", {})
    run_id, group = pathlib.Path(run_dir).resolve().name, group_of(run_dir, track)
    mfu_peak = {"mfu_peak_flops": peak, "mfu_peak_source": peak_source or "none (MFU not computed)"}
    hparams = {"run_id": run_id, "sweep": group, "config_hash": cfg_lib.config_hash(config),
               **headline(config), **{k: v for k, v in mfu_peak.items() if v is not None}, **flatten(d)}
    return RunView(run_id=run_id, group=group, hparams=hparams, mfu_peak=mfu_peak, track=track)


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def final_metrics(result: dict) -> dict:
    """FINAL_METRICS' values from a result, finite numbers only."""
    return {tag: float(result[key]) for tag, key in FINAL_METRICS.items() if _finite_number(result.get(key))}


def numeric_fields(row: dict) -> dict:
    """A metrics row's finite numbers as {'SPLIT/KEY': value} (step, split and the MFU peak left out)."""
    split = row.get("split", "train")
    return {f"{split}/{k}": v for k, v in row.items()
            if k not in ("split", "step", "mfu_peak_flops") and _finite_number(v)}


class TensorBoardTracker:
    """Scalars of every row; the HParams session (start: hparams; end: final metrics, status)."""

    def __init__(self, run_dir, view: RunView | None):
        from tensorboardX import SummaryWriter  # imported lazily: only the main process needs it

        self.logdir = str(pathlib.Path(run_dir) / rundir.TENSORBOARD)
        self.view = view
        # tensorboardX names an event file by the second and the host only: the suffix keeps this
        # file and publish()'s apart when a run takes under a second (a warm worker's compiled step)
        self._tb = SummaryWriter(self.logdir, filename_suffix=f".{os.getpid()}.run")
        self.last_step = 0
        if view is not None:
            experiment, start, _ = self._sessions({})
            for summary in (experiment, start):
                self._tb._get_file_writer().add_summary(summary)
            self._tb.flush()

    def _sessions(self, final: dict):
        from tensorboardX.summary import hparams
        metrics = {tag: None for tag in (*FINAL_METRICS, *CURVE_METRICS)}
        metrics.update(final)
        return hparams(self.view.hparams, metrics)

    def log(self, row: dict) -> None:
        self.last_step = row["step"]
        for tag, value in numeric_fields(row).items():
            self._tb.add_scalar(tag, value, row["step"])

    def close(self) -> None:
        self._tb.close()

    def publish(self, result: dict) -> None:
        """The final metrics at the run's last step, then the session's end (a new event file)."""
        from tensorboardX import SummaryWriter

        step = int(result.get("step") or self.last_step)
        final = final_metrics(result)
        with SummaryWriter(self.logdir, filename_suffix=f".{os.getpid()}.end") as tb:
            for tag, value in final.items():
                tb.add_scalar(tag, value, step)
            if self.view is not None:
                tb._get_file_writer().add_summary(self._sessions(final)[2])


class WandbTracker:
    """A W&B run: config = the flat hparams, history = the metrics rows, summary = the final metrics."""

    def __init__(self, run_dir, view: RunView):
        try:
            import wandb
        except ImportError:
            raise RuntimeError("track.wandb=true but wandb is not installed: pip install -e '.[wandb]'") from None
        track = view.track
        # A stable id: the same run resumed (another process, another day) continues one W&B run.
        key = f"{view.group}/{view.run_id}/{view.hparams['config_hash']}"
        self.run = wandb.init(
            project=track.get("wandb_project") or "scaling", entity=track.get("wandb_entity") or None,
            group=view.group or None, name=view.run_id, id=hashlib.sha256(key.encode()).hexdigest()[:16],
            dir=str(run_dir), config=view.hparams, resume="allow", job_type="train",
            mode=track.get("wandb_mode") or None, settings=wandb.Settings(console="off", quiet=True))

    def log(self, row: dict) -> None:
        self.run.log(numeric_fields(row), step=int(row["step"]))

    def close(self) -> None:
        """Nothing yet: publish() ends the W&B run (or W&B does at process exit)."""

    def publish(self, result: dict) -> None:
        self.run.summary.update(final_metrics(result))
        self.run.finish()


class Trackers:
    """The enabled trackers of a run; any tracker's failure is one warning and drops that tracker."""

    def __init__(self, run_dir, view: RunView | None, *, tensorboard: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.active = []
        track = view.track if view is not None else {}
        makers = []
        if tensorboard and track.get("tensorboard", True):
            makers.append(("TensorBoard", lambda: TensorBoardTracker(run_dir, view)))
        if track.get("wandb"):
            makers.append(("Weights & Biases", lambda: WandbTracker(run_dir, view)))
        for name, make in makers:
            try:
                self.active.append((name, make()))
            except Exception as e:  # a view must never stop the run
                self._warn(name, "start", e)

    def _warn(self, name: str, what: str, e: Exception) -> None:
        try:
            print(f"warning: {name} tracker failed to {what} ({type(e).__name__}: {e}); it is turned off "
                  "for this run, which goes on (its run directory holds everything)", file=self.stream, flush=True)
        except (OSError, ValueError):
            pass

    def _each(self, what: str, method: str, *args) -> None:
        for entry in list(self.active):
            name, tracker = entry
            try:
                getattr(tracker, method)(*args)
            except Exception as e:  # a view must never stop the run
                self._warn(name, what, e)
                self.active.remove(entry)

    def log(self, row: dict) -> None:
        self._each("log a metrics row", "log", row)

    def close(self) -> None:
        self._each("close", "close")

    def publish(self, result: dict) -> None:
        self._each("record the final metrics", "publish", result)
