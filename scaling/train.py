"""train(config, run_dir) -> result: one model, from config to result.json.

What the run directory holds and when each file is written: scaling/rundir.py; what a run writes
there and reads back (its `Run` record, metrics rows, result.json): scaling/run_record.py.

The run is three steps: `_setup` (corpus, mesh, model, optimizer, compiled steps, data, resume),
`_loop` (train steps; log, eval and checkpoint on their schedules) and `run_record.finish`
(result.json). Resume: if the checkpoints directory holds a complete checkpoint, the run restores
params, optimizer state, step, data iterator and `HostState` from the newest one, drops metrics rows
newer than it, and continues; the losses then equal those of an uninterrupted run. A run whose
result.json says "ok" is returned as is, and is never rewritten.
"""
import math
import pathlib
import time

import jax

from scaling import accounting, branch, data, distributed, rundir, sharding, tracking
from scaling import config as cfg_lib
from scaling.checkpoint import Checkpointer, abstract_of
from scaling.metrics import MetricsWriter, Progress
from scaling.provenance import peak_source
from scaling.run_record import (HostState, NonFiniteLossError, Run, check_same_run, finish, load_corpus, load_finished,
                                memory_estimate, missing_rows, peak_flops, record_failure, write_eval_row,
                                write_train_row)
from scaling.trainer import make_trainer


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
    check_same_run(run_dir, config)
    finished = load_finished(run_dir, config, progress)
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
        result = finish(run, tokens_per_s, mfu)
        if is_main:
            rundir.write_result(run_dir, result)  # the run is finished from here on
            run.writer.publish(result)  # then its views: final metrics, hparams session end
    except Exception as e:
        if rundir.is_disk_full(e) and not isinstance(e, rundir.DiskFullError):
            e = rundir.DiskFullError(run_dir)  # e.g. inside Orbax: name the run directory
        if is_main:
            record_failure(run_dir, config, e)
        if isinstance(e, rundir.DiskFullError):
            raise e from None
        raise
    progress.message(f"done: eval loss {result['final_eval_loss']:.4f} nats/token, "
                     f"{result['final_eval_bpb']:.4f} bpb, {result['wall_time_s']:.1f}s")
    return result


def _setup(config, run_dir: pathlib.Path, progress: Progress, is_main: bool, trunk_dir=None) -> Run:
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

    mem = memory_estimate(config, mesh, run_dir)  # refuses a run that would not fit, before compiling
    peak = peak_flops(config, mesh)
    trainer = make_trainer(config, mesh, rules, steps)
    loader, data_info = data.train_loader(
        corpus, seq_len=seq_len, global_batch=batch, num_steps=steps, seed=config.data.seed,
        process_index=shard, process_count=n_shards, allow_repeat=config.data.allow_repeat,
        num_workers=config.data.num_workers)
    run = Run(
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


def _resume(run: Run) -> None:
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
    lost = lost or missing_rows(run)  # else: rows older than it that never reached this run directory
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


def _loop(run: Run, stop_after_steps: int | None) -> tuple[float, float | None]:
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
            write_train_row(run, step, last_out, tokens_per_s, mfu)
            t_log, step_log = now, step
        if is_eval:
            write_eval_row(run, step)
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
            raise NonFiniteLossError.at(loss, s)
        host.interval_losses.append(loss)
    return o
