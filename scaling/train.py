"""train(config, run_dir) -> result: one model, from config to result.json.

What the run directory holds and when each file is written: scaling/rundir.py.

The run is three steps: `_setup` (corpus, mesh, model, optimizer, compiled steps, data, resume),
`_loop` (train steps; log, eval and checkpoint on their schedules) and `_finish` (result.json).
Resume: if the checkpoints directory holds a complete checkpoint, the run restores params,
optimizer state, step, data iterator and `HostState` from the newest one, drops metrics rows newer
than it, and continues; the losses then equal those of an uninterrupted run. A run whose
result.json says "ok" is returned as is, and is never rewritten.
"""
import dataclasses
import math
import pathlib
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scaling import accounting, branch, data, distributed, memory, rundir, sharding, tracking
from scaling import config as cfg_lib
from scaling.checkpoint import Checkpointer, abstract_of
from scaling.metrics import MetricsWriter, Progress
from scaling.provenance import peak_source, provenance
from scaling.trainer import Trainer, make_trainer


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf; the message names the step."""


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=pathlib.Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    import flax
    import grain
    import orbax.checkpoint as ocp

    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "orbax": getattr(ocp, "__version__", "?"), "grain": getattr(grain, "__version__", "?")}


# The host's measured matmul peak (FLOP/s) per compute dtype, kept for the process's later runs.
_CPU_PEAK: dict = {}


def _peak_flops(config, mesh) -> float | None:
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


def _load_finished(run_dir: pathlib.Path, config, progress: Progress) -> dict | None:
    """The run's result if it finished ok. A failed or unreadable result is moved aside (the
    contract's rule): result.json must mean "finished", and this run is about to be retried."""
    try:
        result = rundir.read_result(run_dir)
    except rundir.RunDirError as e:
        progress.message(f"warning: {e}; retrying the run")
        result = None
    if result is not None and result.get("status") == "ok":
        if result.get("config_hash") != cfg_lib.config_hash(config):
            _refuse_other_config(run_dir, config)
        return result
    if distributed.is_main_process():
        rundir.set_aside_failed_result(run_dir)
    return None


def _check_same_run(run_dir: pathlib.Path, config) -> None:
    path = run_dir / rundir.CONFIG
    if path.exists():
        old = cfg_lib.load(path)  # through the same JSON path, so tuples vs lists cannot differ
        if cfg_lib.config_hash(old) != cfg_lib.config_hash(config):
            _refuse_other_config(run_dir, config, old)


def _refuse_other_config(run_dir, config, old=None) -> None:
    diff = []
    if old is not None:
        a, b = cfg_lib.science(old), cfg_lib.science(config)
        diff = sorted(f"{s}.{k}" for s in b if isinstance(b[s], dict) for k in b[s] if a.get(s, {}).get(k) != b[s][k])
    raise cfg_lib.ConfigError(
        f"{run_dir} already holds a run of a different config (differing keys: {diff or 'see ' + rundir.CONFIG}); "
        "use a new --workdir, or delete the old run directory")


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


def train(config, run_dir, *, stop_after_steps: int | None = None, verbose: bool = True,
          trunk_dir=None) -> dict:
    """Train one model; returns the result dict (also written to run_dir/result.json).

    stop_after_steps: checkpoint and return {"status": "stopped", "step"} after this step without
    writing result.json, as a preempted run would (used to test resume).
    Raises rundir.DiskFullError (naming what filled) when the disk fills.
    trunk_dir: a branch's trunk run directory (train.branch); default: by the sweep layout (scaling/rundir.py).
    """
    config = cfg_lib.resolve(config)
    cfg_lib.validate(config)
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    is_main = distributed.is_main_process()
    progress = Progress(cfg_lib.num_steps(config), enabled=verbose and is_main)
    _check_same_run(run_dir, config)
    finished = _load_finished(run_dir, config, progress)
    if finished is not None:
        return finished
    try:
        if is_main:
            rundir.write_json(run_dir / rundir.CONFIG, config.to_dict())
        if config.train.branch.trunk and trunk_dir is None:
            trunk_dir = rundir.branch_trunk_dir(run_dir, config.train.branch.trunk)
        run = _setup(config, run_dir, progress, is_main, trunk_dir)
        tokens_per_s, mfu = _loop(run, stop_after_steps)
        if run.stopped_at is not None:
            return {"status": "stopped", "step": run.stopped_at}
        result = _finish(run, tokens_per_s, mfu)
        if is_main:
            rundir.write_result(run_dir, result)  # the run is finished from here on
            run.writer.publish(result)  # then its views: final metrics, hparams session end
    except Exception as e:
        if rundir.is_disk_full(e) and not isinstance(e, rundir.DiskFullError):
            e = rundir.DiskFullError(run_dir)  # e.g. inside Orbax: name the run directory
        if is_main:
            _record_failure(run_dir, config, e)
        if isinstance(e, rundir.DiskFullError):
            raise e from None
        raise
    progress.message(f"done: eval loss {result['final_eval_loss']:.4f} nats/token, "
                     f"{result['final_eval_bpb']:.4f} bpb, {result['wall_time_s']:.1f}s")
    return result


def _record_failure(run_dir: pathlib.Path, config, e: Exception) -> None:
    """A failed result.json (never over an ok one); with the disk full even that may not fit, and
    then the run stays unfinished, which is just as true."""
    try:
        rundir.write_result(run_dir, {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                      "config_hash": cfg_lib.config_hash(config), "git_sha": _git_sha()})
    except rundir.DiskFullError:
        pass  # the error being raised is what the user needs to see


@dataclasses.dataclass
class _Run:
    """Everything `_setup` builds for `_loop` and `_finish`."""

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

    def save(self, step: int, force: bool) -> None:
        self.writer.sync()  # the rows this checkpoint counts on reach the disk before it does
        self.ckpt.save(step, self.state, self.data_iter, meta=self.host.to_meta(self.elapsed_s()), force=force)

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


def _setup(config, run_dir: pathlib.Path, progress: Progress, is_main: bool, trunk_dir=None) -> _Run:
    """Corpus, mesh, model, optimizer, compiled steps, data iterator; restored from the newest checkpoint."""
    t_segment = time.time()  # this segment's wall time counts from setup
    m, t = config.model, config.train
    corpus = load_corpus(config)
    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.logical_rules(mesh, m)  # kv heads that don't divide 'model' are replicated
    sharding.validate_batch(t.batch_size, mesh)
    # Which rows of each global batch this process feeds, read off the sharding (usually
    # (process_index, process_count); fewer shards when a 'model' axis spans processes).
    shard, n_shards = distributed.process_batch_slice(sharding.batch_sharding(mesh), t.batch_size)
    steps = cfg_lib.num_steps(config)
    seq_len, batch = config.data.seq_len, t.batch_size

    mem = _memory_estimate(config, mesh, run_dir)  # refuses a run that would not fit, before compiling
    peak = _peak_flops(config, mesh)
    trainer = make_trainer(config, mesh, rules, steps)
    loader, data_info = data.train_loader(
        corpus, seq_len=seq_len, global_batch=batch, num_steps=steps, seed=config.data.seed,
        process_index=shard, process_count=n_shards, allow_repeat=config.data.allow_repeat,
        num_workers=config.data.num_workers)
    run = _Run(
        config=config, run_dir=run_dir, progress=progress, corpus=corpus, mesh=mesh, trainer=trainer,
        state=trainer.state, data_iter=iter(loader), data_info=data_info,
        eval_set=data.eval_batches(corpus, seq_len=seq_len, batch_size=batch, n_tokens=t.eval_tokens),
        rows=slice(shard * batch // n_shards, (shard + 1) * batch // n_shards),
        ckpt=Checkpointer(config.checkpoint.dir or run_dir / rundir.CHECKPOINTS, every_steps=config.checkpoint.every_steps,
                          keep=config.checkpoint.keep, async_save=config.checkpoint.async_save,
                          keep_steps=tuple(config.checkpoint.keep_steps)),
        writer=MetricsWriter(run_dir, enabled=is_main, view=tracking.run_view(
            config, run_dir, peak, peak_source(config, mesh.devices.flat[0]))), host=HostState(), start=0, steps=steps,
        tokens_per_step=batch * seq_len, counts=accounting.param_counts(m),
        fpt=accounting.flops_per_token(m, seq_len), peak=peak, memory=mem,
        t_segment=t_segment, trunk_dir=None if trunk_dir is None else pathlib.Path(trunk_dir))
    _resume(run)
    return run


def _memory_estimate(config, mesh, run_dir: pathlib.Path) -> dict:
    """The step's per-device memory estimate (bytes); a ConfigError naming what would fit when the
    device's memory is known (GPU/TPU: accounting.DEVICE_MEMORY; not CPU) and the run exceeds it."""
    shape = tuple(mesh.shape[a] for a in sharding.AXES)
    device = mesh.devices.flat[0]
    limit = accounting.device_memory_for(device)
    problem = memory.refusal(config, shape, limit, run_dir.name, device.platform) if limit else None
    if problem:
        raise cfg_lib.ConfigError(problem)
    return memory.estimate(config, shape, platform=device.platform).as_dict()


def _peak_bytes_measured(mesh) -> int | None:
    """Peak bytes in use on this process's busiest device of the mesh, where the platform reports
    it (GPU/TPU memory_stats); None on CPU."""
    stats = [d.memory_stats() for d in mesh.devices.flat if d.process_index == jax.process_index()]
    peaks = [s["peak_bytes_in_use"] for s in stats if s and "peak_bytes_in_use" in s]
    return max(peaks) if peaks else None


def _resume(run: _Run) -> None:
    """Restore state, data position and HostState from the newest checkpoint; align the metrics file with it."""
    # The newest checkpoint that restores: damaged newer ones are moved aside, each named in one line.
    restored = run.ckpt.restore_latest(abstract_of(run.state), run.data_iter, log=run.progress.message)
    from_trunk = restored is None and run.trunk_dir is not None
    if from_trunk:  # a branch's first start: the trunk's state at the branch point, and its rows before it
        restored = branch.restore(run.config, run.trunk_dir, abstract_of(run.state), run.data_iter)
        run.writer.truncate_after(0)  # rows of an earlier start that stopped before its first checkpoint
        for row in branch.trunk_rows(run.config, run.trunk_dir):
            run.writer.write(row)
    if restored is not None:
        run.start, run.state, meta = restored
        run.host = HostState.from_meta(meta)
    lost = run.writer.truncate_after(run.start)  # rows newer than the checkpoint are redone
    lost = lost or _missing_rows(run)  # else: rows older than it that never reached this run directory
    for note in lost:  # kept in the host state and result.json: the finished run lacks these rows
        run.progress.message(f"warning: {note}")
    run.host.metrics_lost += lost
    if from_trunk:
        run.progress.message(f"branched from trunk {run.config.train.branch.trunk} at step {run.start}")
    elif restored is not None:
        run.progress.message(f"resumed from checkpoint at step {run.start}")
    else:
        c, fpt = run.counts, run.fpt
        run.progress.message(
            f"{c['total']:,} params ({c['nonembedding']:,} non-embedding), {run.steps} steps x "
            f"{run.tokens_per_step:,} tokens = D {run.steps * run.tokens_per_step:,}; mesh "
            f"{dict(run.mesh.shape)}; {fpt['train'] / 1e6:.2f} MFLOP/token (exact)")


def _missing_rows(run: _Run) -> list[str]:
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


def _loop(run: _Run, stop_after_steps: int | None) -> tuple[float, float | None]:
    """Train from run.start to the last step (or stop_after_steps); returns the last (tokens/s, MFU)."""
    t, host, tokens_per_step = run.config.train, run.host, run.tokens_per_step
    # Device metrics are fetched only at log / eval / checkpoint steps (one host sync for all
    # the steps since the last fetch); the loss of every step is still checked for NaN/inf.
    pending = []  # (step, device metrics) not yet fetched
    t_log, step_log = time.perf_counter(), run.start
    tokens_per_s = mfu = float("nan")
    for step in range(run.start + 1, run.steps + 1):
        # one optimizer step on the next global batch; the old state's buffers are donated
        b = next(run.data_iter)
        if step == run.start + 1:  # this segment's first call compiles the step: say so, not a silent pause
            run.progress.message("compiling the train step ...")
        run.state, out = run.trainer.step_fn(run.state, run.to_global(b["inputs"]), run.to_global(b["targets"]))
        pending.append((step, out))
        if step == run.start + 1:  # time it apart, so no tokens/s figure includes compilation
            jax.block_until_ready(out)
            now = time.perf_counter()
            run.progress.message(f"train step compiled and run once in {now - t_log:.1f}s")
            t_log, step_log = now, step
        is_log = step % t.log_every == 0 or step == run.steps
        is_eval = step % t.eval_every == 0 or step == run.steps
        is_stop = step == stop_after_steps
        force_ckpt = step == run.steps or is_stop  # the last step, and a preemption, always checkpoint
        is_ckpt = run.ckpt.should_save(step, force=force_ckpt)
        if not (is_log or is_eval or is_ckpt):
            continue  # keep the device busy: no host sync between schedule points
        # fetch the pending steps' metrics at once; a NaN stops the run naming its step
        last_out = _fetch_losses(pending, host)
        pending = []
        if is_log:
            # throughput over timed intervals only: they start after the segment's first (compiling) step
            now = time.perf_counter()
            n_steps = step - step_log
            if n_steps:
                host.timed_s += now - t_log
                host.timed_tokens += n_steps * tokens_per_step
            interval_tps = n_steps * tokens_per_step / max(now - t_log, 1e-9) if n_steps else float("nan")
            tokens_per_s = host.timed_tokens / host.timed_s if host.timed_s > 0 else interval_tps
            mfu = accounting.mfu(tokens_per_s, run.fpt["train"], run.peak) if run.peak else None
            _write_train_row(run, step, last_out, tokens_per_s, mfu)
            t_log, step_log = now, step
        if is_eval:
            _write_eval_row(run, step)
            t_log = time.perf_counter()  # eval time is not training throughput
        if is_ckpt:
            run.save(step, force=force_ckpt)
        if is_stop and step < run.steps:
            run.close()
            run.progress.message(f"stopped after step {step} (checkpoint saved); rerun to resume")
            run.stopped_at = step
            return tokens_per_s, mfu
    run.close()
    return tokens_per_s, mfu


def _fetch_losses(pending: list, host: HostState) -> dict:
    """Bring the pending steps' metrics to the host, append their losses to the interval, return the
    last step's metrics; NonFiniteLossError naming the first step whose loss is NaN/inf."""
    for (s, _), o in zip(pending, jax.device_get([o for _, o in pending])):
        loss = float(o["loss"])
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"non-finite training loss {loss} at step {s}; "
                                     "lower optim.lr, raise optim.warmup_steps, or check the data")
        host.interval_losses.append(loss)
    return o


def _write_train_row(run: _Run, step: int, last_out: dict, tokens_per_s: float, mfu: float | None) -> None:
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


def _write_eval_row(run: _Run, step: int) -> None:
    """An eval row: mean NLL over the fixed held-out windows, and bits per byte."""
    run.host.last_eval = run.evaluate()
    bpb = data.bits_per_byte(run.host.last_eval, run.corpus.bytes_per_token_eval)
    tokens = step * run.tokens_per_step
    run.writer.write({"split": "eval", "step": step, "tokens": tokens, "loss": run.host.last_eval, "bpb": bpb,
                      "flops": run.fpt["train"] * tokens})
    run.progress.message(f"eval at step {step}: loss {run.host.last_eval:.4f} nats/token, {bpb:.4f} bits/byte")


def _finish(run: _Run, tokens_per_s: float, mfu: float | None) -> dict:
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
        "process_count": jax.process_count(), "versions": _versions(), "git_sha": _git_sha(),
        "metrics_lost": list(host.metrics_lost), **provenance(run),
        "memory": run.memory, "peak_bytes_measured": _peak_bytes_measured(run.mesh),
        **({"branch": branch.record(config, run.tokens_per_step, run.fpt["train"])} if run.trunk_dir else {}),
    }
