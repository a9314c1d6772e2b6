"""What a training run writes to and reads from its run directory, shared by train.py and packed_train.py.

The file names and when each file is written are the contract's (scaling/rundir.py); this module is
the trainers' side of it: the run's host-side record (`Run`, `HostState`), the checks before a run
starts (`check_same_run`, `load_finished`), the metrics rows (`write_train_row`, `write_eval_row`,
`missing_rows`), result.json (`finish`, `record_failure`), and the setup facts result.json carries
(`load_corpus`, `memory_estimate`, `peak_flops`). The unpacked trainer (train.py) owns one `Run`;
the packed trainer (packed_train.py) owns one per member, so each member keeps the unpacked
run's contract in its own run directory.
"""
import dataclasses
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scaling import accounting, branch, data, distributed, memory, rundir, sharding
from scaling import config as cfg_lib
from scaling.checkpoint import Checkpointer
from scaling.metrics import MetricsWriter, Progress
from scaling.provenance import git_state, provenance, versions
from scaling.trainer import Trainer


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf; the message names the step."""

    @classmethod
    def at(cls, loss: float, step: int) -> "NonFiniteLossError":
        """The error for `loss` (NaN/inf) at `step`, with what to try (one message for both trainers)."""
        return cls(f"non-finite training loss {loss} at step {step}; "
                   "lower optim.lr, raise optim.warmup_steps, or check the data")


@dataclasses.dataclass
class HostState:
    """Host-side loop state, saved in every checkpoint's metadata so a resumed run continues it exactly."""

    interval_losses: list[float] = dataclasses.field(default_factory=list)
    """Training losses (nats/token) of the log interval in progress; a train row's loss is their mean."""
    last_train_loss: float | None = None
    """Loss of the last train row (for result.json when the run stopped right after its final checkpoint)."""
    last_eval: float | None = None
    """Last eval loss (nats/token), for the same reason."""
    elapsed_s: float = 0.0
    """Wall seconds of the run's earlier segments (before the last restart)."""
    timed_s: float = 0.0
    """Seconds of the timed log intervals (compilation excluded), for tokens/s and MFU."""
    timed_tokens: int = 0
    """Training tokens processed in those timed intervals."""
    metrics_lost: list[str] = dataclasses.field(default_factory=list)
    """Metrics lines found corrupt and dropped on a resume: the finished run lacks their rows."""

    @classmethod
    def from_meta(cls, meta: dict) -> "HostState":
        """From checkpoint metadata; older checkpoints hold a plain dict without the newer fields."""
        host = meta.get("host") or {}
        return cls(**{f.name: host[f.name] for f in dataclasses.fields(cls) if f.name in host})

    def to_meta(self, elapsed_s: float) -> dict:
        """A copy for checkpoint metadata (saves may be asynchronous), with the elapsed time so far."""
        return {"host": {**dataclasses.asdict(self), "elapsed_s": elapsed_s}}


@dataclasses.dataclass
class Run:
    """One run's record: everything train.py's setup builds for its loop and `finish`."""

    config: object
    run_dir: pathlib.Path
    progress: Progress
    corpus: data.Corpus
    mesh: jax.sharding.Mesh
    trainer: Trainer
    state: dict  # the trainer state, replaced by every step (donated)
    data_iter: object  # checkpointable Grain iterator over this process's rows of each batch
    data_info: dict
    eval_set: list  # fixed eval batches (global rows; this process feeds `rows`)
    rows: slice  # this process's rows of a global batch
    ckpt: Checkpointer
    writer: MetricsWriter
    host: HostState
    start: int  # the step restored from (0: a fresh run)
    steps: int
    tokens_per_step: int
    counts: dict  # parameter counts: total, embedding, nonembedding
    fpt: dict  # FLOPs per token (exact): train, forward
    peak: float | None  # peak FLOP/s of the mesh, for MFU
    memory: dict  # scaling.memory's per-device estimate of a step (bytes), for result.json
    t_segment: float  # time.time() when this segment (process) started the run
    trunk_dir: pathlib.Path | None = None  # a branch's trunk run directory (scaling/branch.py)
    stopped_at: int | None = None

    def to_global(self, local_BT):
        return distributed.global_array(local_BT, self.trainer.batch_sh)

    def evaluate(self) -> float:
        """Mean NLL (nats/token) over the fixed eval windows; padding rows have weight 0."""
        sums = jax.device_get([self.trainer.eval_fn(self.state["params"], *(
            self.to_global(b[k][self.rows]) for k in ("inputs", "targets", "weights"))) for b in self.eval_set])
        return float(sum(float(n) for n, _ in sums) / sum(float(w) for _, w in sums))

    def elapsed_s(self) -> float:
        """Wall seconds of the whole run: earlier segments plus this one."""
        return self.host.elapsed_s + time.time() - self.t_segment

    def save(self, step: int, force: bool, state: dict | None = None) -> None:
        """Checkpoint `state` (default: this run's own; a pack member's is cut from the pack's)."""
        self.writer.sync()  # the rows this checkpoint counts on reach the disk before it does
        self.ckpt.save(step, self.state if state is None else state, self.data_iter,
                       meta=self.host.to_meta(self.elapsed_s()), force=force)

    def close(self) -> None:
        self.ckpt.wait()
        self.ckpt.close()
        self.writer.close()


def load_corpus(config):
    """The run's corpus (prepared on first use); ConfigError when its vocabulary is not the model's."""
    corpus = data.load(config.data)
    if corpus.vocab_size != config.model.vocab_size:
        raise cfg_lib.ConfigError(f"model.vocab_size={config.model.vocab_size} but the corpus' tokenizer has "
                                  f"{corpus.vocab_size} tokens; set --config.model.vocab_size={corpus.vocab_size}")
    return corpus


def memory_estimate(config, mesh, run_dir: pathlib.Path) -> dict:
    """The step's per-device memory estimate (bytes); a ConfigError naming what would fit when the
    device's memory is known (GPU/TPU: accounting.DEVICE_MEMORY; not CPU) and the run exceeds it."""
    shape = tuple(mesh.shape[a] for a in sharding.AXES)
    device = mesh.devices.flat[0]
    limit = accounting.device_memory_for(device)
    problem = memory.refusal(config, shape, limit, run_dir.name, device.platform) if limit else None
    if problem:
        raise cfg_lib.ConfigError(problem)
    return memory.estimate(config, shape, platform=device.platform).as_dict()


# The host's measured matmul peak (FLOP/s) per compute dtype, kept for the process's later runs.
_CPU_PEAK: dict = {}


def peak_flops(config, mesh) -> float | None:
    """Peak FLOP/s of the whole mesh, for MFU. CPU: one measured matmul peak for the host."""
    if config.train.peak_flops > 0:
        return config.train.peak_flops * mesh.devices.size
    device = mesh.devices.flat[0]
    if device.platform == "cpu":  # fake CPU devices share the host's cores: the host is the unit
        dtype = jnp.dtype(config.model.compute_dtype)
        if dtype not in _CPU_PEAK:  # measured once per process: a warm worker's runs share the host's peak
            _CPU_PEAK[dtype] = accounting.measure_cpu_peak(dtype)
        return _CPU_PEAK[dtype] * jax.process_count()
    peak = accounting.peak_flops_for(device)
    return peak * mesh.devices.size if peak else None


def check_same_run(run_dir: pathlib.Path, config) -> None:
    """ConfigError when run_dir's config.json is of a different config (by config_hash)."""
    path = run_dir / rundir.CONFIG
    if path.exists():
        old = cfg_lib.load(path)  # through the same JSON path, so tuples vs lists cannot differ
        if cfg_lib.config_hash(old) != cfg_lib.config_hash(config):
            refuse_other_config(run_dir, config, old)


def refuse_other_config(run_dir, config, old=None) -> None:
    """Raise the ConfigError for a run directory holding another config, naming the differing keys."""
    diff = []
    if old is not None:
        a, b = cfg_lib.science(old), cfg_lib.science(config)
        diff = sorted(f"{s}.{k}" for s in b if isinstance(b[s], dict) for k in b[s] if a.get(s, {}).get(k) != b[s][k])
    raise cfg_lib.ConfigError(
        f"{run_dir} already holds a run of a different config (differing keys: {diff or 'see ' + rundir.CONFIG}); "
        "use a new --workdir, or delete the old run directory")


def load_finished(run_dir: pathlib.Path, config, progress: Progress) -> dict | None:
    """The run's result if it finished ok. A failed or unreadable result is moved aside (the
    contract's rule): result.json must mean "finished", and this run is about to be retried."""
    try:
        result = rundir.read_result(run_dir)
    except rundir.RunDirError as e:
        progress.message(f"warning: {e}; retrying the run")
        result = None
    if result is not None and result.get("status") == "ok":
        if result.get("config_hash") != cfg_lib.config_hash(config):
            refuse_other_config(run_dir, config)
        return result
    if distributed.is_main_process():
        rundir.set_aside_failed_result(run_dir)
    return None


def record_failure(run_dir: pathlib.Path, config, e: Exception) -> None:
    """A failed result.json (never over an ok one); with the disk full even that may not fit, and
    then the run stays unfinished, which is just as true."""
    try:
        rundir.write_result(run_dir, {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                      "config_hash": cfg_lib.config_hash(config), "git_sha": git_state()[0]})
    except rundir.DiskFullError:
        pass  # the error being raised is what the user needs to see


def missing_rows(run: Run) -> list[str]:
    """A note when the metrics file stops short of the restored checkpoint: a cloud host lost before
    its last rows reached the bucket (launch.sync pushes them when a checkpoint completes, not atomically
    with it). Those steps are not redone, so the finished run lacks their train rows."""
    log_every = run.config.train.log_every
    due = run.start - run.start % log_every  # the last train row the checkpointed run had written
    if not run.writer.enabled or due <= 0:
        return []
    last = max((r["step"] for r in rundir.read_metrics(run.run_dir) if r.get("split") == "train"), default=0)
    if last >= due:
        return []
    return [f"{run.writer.path}: train rows for steps {last + 1}..{run.start} missing at the resume from the "
            f"checkpoint at step {run.start} (they never reached this run directory): the run lacks them"]


def write_train_row(run: Run, step: int, last_out: dict, tokens_per_s: float, mfu: float | None) -> None:
    """A train row: its "loss" is the mean training loss over the steps since the previous row."""
    host = run.host
    host.last_train_loss = float(np.mean(host.interval_losses))
    host.interval_losses = []
    tokens = step * run.tokens_per_step
    run.writer.write({"split": "train", "step": step, "tokens": tokens, "loss": host.last_train_loss,
                      "lr": float(last_out["lr"]), "grad_norm": float(last_out["grad_norm"]),
                      # no rate yet at the segment's first (compiling) step: none, rather than one with compile in it
                      "tokens_per_s": tokens_per_s if math.isfinite(tokens_per_s) else None,
                      "mfu": mfu if mfu is not None and math.isfinite(mfu) else None, "flops": run.fpt["train"] * tokens,
                      "time_s": run.elapsed_s()})
    run.progress.log(step, host.last_train_loss, tokens_per_s, mfu, steps_per_s=tokens_per_s / run.tokens_per_step)


def write_eval_row(run: Run, step: int) -> None:
    """An eval row: mean NLL over the fixed held-out windows, and bits per byte."""
    run.host.last_eval = run.evaluate()
    bpb = data.bits_per_byte(run.host.last_eval, run.corpus.bytes_per_token_eval)
    tokens = step * run.tokens_per_step
    run.writer.write({"split": "eval", "step": step, "tokens": tokens, "loss": run.host.last_eval, "bpb": bpb,
                      "flops": run.fpt["train"] * tokens})
    run.progress.message(f"eval at step {step}: loss {run.host.last_eval:.4f} nats/token, {bpb:.4f} bits/byte")


def finish(run: Run, tokens_per_s: float, mfu: float | None) -> dict:
    """The result: N, D, FLOPs, final losses, throughput and provenance."""
    config, m, host = run.config, run.config.model, run.host
    if run.start == run.steps:
        # killed between the final checkpoint and result.json: the throughput is in the last train row
        run.progress.message("the final checkpoint was already written: finishing the run's result")
        rows = [r for r in rundir.read_metrics(run.run_dir) if r["split"] == "train"]
        tokens_per_s = rows[-1]["tokens_per_s"] if rows else float("nan")
        mfu = rows[-1]["mfu"] if rows else None
    seq_len = config.data.seq_len
    tokens = run.steps * run.tokens_per_step
    flops = accounting.run_flops(m, seq_len, tokens)
    prov = provenance(run)  # probes git once: git_sha below is its prov_git_sha
    return {
        "status": "ok", "error": None, "config_hash": cfg_lib.config_hash(config), "step": run.steps,
        "tokens": tokens, "n_params": run.counts["total"], "n_params_nonembed": run.counts["nonembedding"],
        "n_params_embed": run.counts["embedding"], "flops_6nd": flops["flops_6nd"],
        "flops_6nd_nonembed": flops["flops_6nd_nonembed"], "flops": flops["flops"],
        "final_train_loss": host.last_train_loss, "final_eval_loss": host.last_eval,
        "final_eval_bpb": data.bits_per_byte(host.last_eval, run.corpus.bytes_per_token_eval),
        "epochs": run.data_info["epochs"], "wall_time_s": run.elapsed_s(),
        "tokens_per_s": tokens_per_s, "mfu": mfu, "seq_len": seq_len, "batch_size": config.train.batch_size,
        "model": {k: m[k] for k in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "vocab_size",
                                    "mlp", "tie_embeddings", "qk_norm", "compute_dtype")},
        "budget": config.meta.budget or None, "seed": config.seed, "data_seed": config.data.seed, "num_devices": int(run.mesh.devices.size),
        "process_count": jax.process_count(), "versions": versions(), "git_sha": prov["prov_git_sha"],
        "metrics_lost": list(host.metrics_lost), **prov,
        "memory": run.memory, "peak_bytes_measured": peak_bytes_measured(run.mesh),
        **({"branch": branch.record(config, run.tokens_per_step, run.fpt["train"])} if run.trunk_dir else {}),
    }


def peak_bytes_measured(mesh) -> int | None:
    """Peak bytes in use on this process's busiest device of the mesh, where the platform reports
    it (GPU/TPU memory_stats); None on CPU."""
    stats = [d.memory_stats() for d in mesh.devices.flat if d.process_index == jax.process_index()]
    peaks = [s["peak_bytes_in_use"] for s in stats if s and "peak_bytes_in_use" in s]
    return max(peaks) if peaks else None
