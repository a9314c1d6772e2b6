"""train_pack(configs, run_dirs) -> results: K same-shape runs trained as one packed job.

The members must share packed.pack_key (they differ only in PACKED_KEYS). One process, one device,
one jitted vmapped step (scaling/packed_step.py). Each member keeps the unpacked run's contract in
its own run directory (scaling/rundir.py): config.json first, the same metrics rows, result.json
last; and its checkpoints are the unpacked trainer's, in its own checkpoints/ (params, its own
optimizer chain's state, step, data iterator, HostState): a killed pack resumes, and a member could
even resume unpacked with `scaling train`. A WSD branch member (scaling/branch.py) starts from its
own trunk's checkpoint at the branch point, as unpacked; trunks keep their branch points.

Each member's batch stream is its unpacked run's (its own data.seed; one shared batch when every
member has the same data.seed). A member whose loss is NaN/inf is recorded failed as the unpacked
trainer records it (result.json status "failed", "NonFiniteLossError: ... at step s") and frozen;
the others train on. On a rerun, members finished ok are skipped, and so are members failed with
a non-finite loss (deterministic: a retry would diverge again at the same step, and its older
checkpoint could not rejoin the pack's step); other failures are retried.
"""
import dataclasses
import math
import pathlib
import time

import jax
import numpy as np
from flax import nnx

from scaling import accounting, branch, data, packed, rundir, sharding, tracking
from scaling import config as cfg_lib
from scaling import packed_step as ps
from scaling.checkpoint import CheckpointError, Checkpointer, abstract_of
from scaling.metrics import MetricsWriter, Progress
from scaling.model import build_model
from scaling.optim import make_optimizer
from scaling.provenance import peak_source
from scaling.run_record import (HostState, NonFiniteLossError, Run, check_same_run, finish, load_corpus, load_finished,
                                memory_estimate, missing_rows, peak_flops, record_failure, write_eval_row,
                                write_train_row)


@dataclasses.dataclass
class _Member(Run):
    """One member: an unpacked run's record (scaling/run_record.py `Run`) whose steps the pack takes."""

    index: int = 0
    """Position on the pack's member axis."""
    own_treedef: object = None
    """Tree structure of the member's own make_optimizer state (the checkpoint format)."""
    eval_value: float = math.nan
    """The pack's latest eval of this member (nats/token), returned by evaluate()."""
    failed: str | None = None
    """Why the member failed (its loss went non-finite); None while it trains."""
    last_rate: tuple = (math.nan, None)
    """(tokens/s, MFU) of its latest train row: this member's tokens only."""

    def evaluate(self) -> float:
        return self.eval_value


def check_pack(configs, run_dirs) -> None:
    """ConfigError (one line) when these cannot train as one pack."""
    if not configs or len(configs) != len(run_dirs):
        raise cfg_lib.ConfigError(f"a pack needs one run directory per config; got {len(configs)} configs "
                                  f"and {len(run_dirs)} run directories")
    dirs = [pathlib.Path(d).resolve() for d in run_dirs]
    dup = next((d for d in dirs if dirs.count(d) > 1), None)
    if dup is not None:
        raise cfg_lib.ConfigError(f"run directory {dup} is given for two members of the pack")
    free = ", ".join([".".join(filter(None, k)) for k in packed.PACKED_KEYS] + ["train.branch.trunk"])
    for i, c in enumerate(configs[1:], 1):
        diff = packed.differing_keys(configs[0], c)
        if diff:
            raise cfg_lib.ConfigError(
                f"member {i} ({run_dirs[i]}) cannot share a pack with member 0 ({run_dirs[0]}): they differ in "
                f"{', '.join(diff)} (members may differ only in {free})")


def _skip_result(run_dir: pathlib.Path, config, progress: Progress) -> dict | None:
    """A member's result when it is not to be trained: finished ok, or failed with a non-finite loss."""
    try:
        result = rundir.read_result(run_dir)
    except rundir.RunDirError:
        result = None
    if result is not None and result.get("status") == "failed" and \
            str(result.get("error", "")).startswith(NonFiniteLossError.__name__):
        return result
    return load_finished(run_dir, config, progress)


def train_pack(configs, run_dirs, *, stop_after_steps: int | None = None, verbose: bool = True,
               loop: str | None = None) -> list[dict]:
    """Train the members as one pack; one result per member, in order (also each run_dir/result.json):
    finished ok, failed (non-finite loss), or {"status": "stopped", "step"} after stop_after_steps.
    loop: how members run inside the step (packed_step.make_packed_step); None: "map" on CPU, else "vmap"."""
    configs = [cfg_lib.resolve(c) for c in configs]
    for c in configs:
        cfg_lib.validate(c)
    run_dirs = [pathlib.Path(d) for d in run_dirs]
    check_pack(configs, run_dirs)
    progress = Progress(cfg_lib.num_steps(configs[0]), enabled=verbose, prefix=f"[pack of {len(configs)}] ")
    results, todo = [None] * len(configs), []
    for i, (c, d) in enumerate(zip(configs, run_dirs)):
        d.mkdir(parents=True, exist_ok=True)
        check_same_run(d, c)
        results[i] = _skip_result(d, c, progress)
        if results[i] is None:
            todo.append(i)
    if not todo:
        return results
    members = []
    try:
        for i in todo:
            rundir.write_json(run_dirs[i] / rundir.CONFIG, configs[i].to_dict())
        pack = _setup([configs[i] for i in todo], [run_dirs[i] for i in todo], progress, members, loop)
        _loop(pack, stop_after_steps)
        for m in members:
            results[todo[m.index]] = _member_result(pack, m)
    except Exception as e:
        if rundir.is_disk_full(e) and not isinstance(e, rundir.DiskFullError):
            e = rundir.DiskFullError(run_dirs[todo[0]].parent)
        diverged = {todo[m.index] for m in members if m.failed}  # already recorded as failed
        for i in todo:
            if i not in diverged:
                record_failure(run_dirs[i], configs[i], e)
        if isinstance(e, rundir.DiskFullError):
            raise e from None
        raise
    return results


@dataclasses.dataclass
class _Pack:
    """The packed job: its members, compiled step, stacked state and shared batches."""

    members: list
    step: ps.PackedStep
    state: dict  # {"params": [K..], "opt_state": [K..], "alive": bool[K], "step"}; replaced (donated) each step
    iters: list  # the data iterators: one shared, or one per member
    eval_set: list
    progress: Progress
    start: int
    steps: int
    stopped_at: int | None = None

    @property
    def alive(self) -> list:
        return [m for m in self.members if m.failed is None]


def _setup(configs, run_dirs, progress: Progress, members: list, loop: str | None) -> _Pack:
    """Corpus, device, compiled packed step, data iterators; each member from its newest checkpoint."""
    t_segment = time.time()
    c0 = configs[0]
    m_cfg, t = c0.model, c0.train
    corpus = load_corpus(c0)
    mesh = sharding.make_mesh(c0.mesh)
    if mesh.devices.size != 1:
        raise cfg_lib.ConfigError(f"a pack trains on one device, but mesh.num_devices={c0.mesh.num_devices} selects "
                                  f"{mesh.devices.size}; set --config.mesh.num_devices=1")
    steps, seq_len, batch = cfg_lib.num_steps(c0), c0.data.seq_len, t.batch_size
    mem, peak = memory_estimate(c0, mesh, run_dirs[0]), peak_flops(c0, mesh)
    seeds = [c.data.seed for c in configs]
    loaders = {s: data.train_loader(corpus, seq_len=seq_len, global_batch=batch, num_steps=steps, seed=s,
                                    process_index=0, process_count=1, allow_repeat=c0.data.allow_repeat,
                                    num_workers=c0.data.num_workers) for s in dict.fromkeys(seeds)}
    shared = len(loaders) == 1
    iters = [iter(loaders[seeds[0]][0])] if shared else [iter(loaders[s][0]) for s in seeds]
    for i, (c, d) in enumerate(zip(configs, run_dirs)):
        members.append(_Member(
            config=c, run_dir=d, progress=Progress(steps, enabled=False), corpus=corpus, mesh=mesh, trainer=None,
            state=None, data_iter=iters[0 if shared else i], data_info=loaders[c.data.seed][1], eval_set=[],
            rows=slice(0, batch),
            ckpt=Checkpointer(c.checkpoint.dir or d / rundir.CHECKPOINTS, every_steps=c.checkpoint.every_steps,
                              keep=c.checkpoint.keep, async_save=c.checkpoint.async_save,
                              keep_steps=tuple(c.checkpoint.keep_steps)),
            writer=MetricsWriter(d, view=tracking.run_view(c, d, peak, peak_source(c, mesh.devices.flat[0]))),
            host=None, start=0, steps=steps, tokens_per_step=batch * seq_len, counts=accounting.param_counts(m_cfg),
            fpt=accounting.flops_per_token(m_cfg, seq_len), peak=peak, memory=mem, t_segment=t_segment, index=i,
            trunk_dir=rundir.branch_trunk_dir(d, c.train.branch.trunk) if c.train.branch.trunk else None))
    fresh = [init_member(m) for m in members]
    start, states = _resume(members, [f[1] for f in fresh], progress)
    if start == 0:  # a restore that was then dropped may have moved an iterator: start them afresh
        iters = [iter(loaders[seeds[0]][0])] if shared else [iter(loaders[s][0]) for s in seeds]
        for i, m in enumerate(members):
            m.data_iter = iters[0 if shared else i]
    graphdef = fresh[0][0]
    scalars = ps.varying_scalars(configs)
    loop = loop or ("map" if mesh.devices.flat[0].platform == "cpu" else "vmap")
    step = ps.make_packed_step(configs, graphdef, fresh[0][1]["params"], steps, scalars, batch_per_member=not shared,
                               loop=loop)
    state = {"params": ps.stack([s["params"] for s in states]),
             "opt_state": ps.stack([ps.retree(s["opt_state"], step.opt_treedef) for s in states]),
             "alive": jax.numpy.ones((len(members),), bool), "step": jax.numpy.asarray(start, jax.numpy.int32)}
    eval_set = data.eval_batches(corpus, seq_len=seq_len, batch_size=batch, n_tokens=t.eval_tokens)
    return _Pack(members=members, step=step, state=state, iters=iters, eval_set=eval_set, progress=progress,
                 start=start, steps=steps)


def init_member(m: _Member) -> tuple:
    """(graphdef, state) of a member's fresh start, in the unpacked trainer's format
    {"params", "opt_state" (its own make_optimizer chain), "step"}. The one place a member's
    initial state is made: a branch that starts from a trunk's checkpoint replaces this state."""
    c = m.config
    model = build_model(c.model, c.seed, parametrization=c.optim.parametrization, base_d_model=c.optim.base_d_model)
    graphdef, params = nnx.split(model)
    tx, _ = make_optimizer(c, params, m.steps)
    opt_state = tx.init(params)
    m.own_treedef = jax.tree.structure(opt_state)
    return graphdef, {"params": params, "opt_state": opt_state, "step": jax.numpy.zeros((), jax.numpy.int32)}


def _resume(members: list, fresh: list, progress: Progress) -> tuple[int, list]:
    """(start step, member states): every member from its newest checkpoint that restores (a branch
    without one of its own: its trunk's checkpoint at the branch point, scaling/branch.py), then all at
    the oldest of those steps (a pack killed while saving its members' checkpoints left some a save
    behind); metrics rows newer than the start are dropped, as in an unpacked resume."""
    restored = [m.ckpt.restore_latest(abstract_of(f), m.data_iter, log=progress.message)
                for m, f in zip(members, fresh)]
    restored = [_from_trunk(m, f) if r is None and m.trunk_dir is not None else r
                for m, f, r in zip(members, fresh, restored)]
    start = min(r[0] if r else 0 for r in restored)
    states, branched = [], 0
    for m, f, r in zip(members, fresh, restored):
        if r is not None and r[0] != start:
            if start == 0:
                r = None
            elif start in m.ckpt.all_steps():
                r = (start, *m.ckpt.restore(start, abstract_of(f), m.data_iter))
            elif m.trunk_dir is not None and start == m.config.train.branch.step:
                r = _from_trunk(m, f)  # the pack restarts at the branch point: this member too
            else:
                raise CheckpointError(f"{m.run_dir}: no checkpoint at step {start}, where the pack's other members "
                                      f"resume (it has {m.ckpt.all_steps()}); rerun this member alone or afresh")
        branched += bool(r is not None and r[2].get(branch.FROM_TRUNK))
        states.append(f if r is None else r[1])
        m.host = HostState() if r is None else HostState.from_meta(r[2])
        m.start = start
        lost = m.writer.truncate_after(start) or missing_rows(m)
        for note in lost:
            progress.message(f"warning: {note}")
        m.host.metrics_lost += lost
    if branched:
        progress.message(f"{branched} members branched from their trunks at step {start}")
    if start and branched < len(members):
        progress.message(f"resumed {len(members) - branched} members from their checkpoints at step {start}")
    elif not start:
        c = members[0].counts
        progress.message(f"{len(members)} members of {c['total']:,} params, {members[0].steps} steps x "
                         f"{members[0].tokens_per_step:,} tokens, one vmapped step")
    return start, states


def _from_trunk(m: _Member, fresh: dict) -> tuple:
    """(b, state, meta) of a branch member's first start: its trunk's checkpoint at the branch point,
    with the trunk's metrics rows up to it written to the member's metrics file (as unpacked)."""
    b, state, meta = branch.restore(m.config, m.trunk_dir, abstract_of(fresh), m.data_iter)
    m.writer.truncate_after(0)  # rows of an earlier start that stopped before its first checkpoint
    for row in branch.trunk_rows(m.config, m.trunk_dir):
        m.writer.write(row)
    return b, state, {**meta, branch.FROM_TRUNK: True}


def _loop(pack: _Pack, stop_after_steps: int | None) -> None:
    """Train from pack.start to the last step (or stop_after_steps); each member's rows as unpacked."""
    t = pack.members[0].config.train
    pending = []  # (step, device metrics [K]) not yet fetched
    t_log, step_log = time.perf_counter(), pack.start
    for step in range(pack.start + 1, pack.steps + 1):
        inputs, targets = _next_batch(pack)
        pack.state, out = pack.step.step_fn(pack.state, inputs, targets)
        pending.append((step, out))
        is_log = step % t.log_every == 0 or step == pack.steps
        is_eval = step % t.eval_every == 0 or step == pack.steps
        is_stop = step == stop_after_steps
        force_ckpt = step == pack.steps or is_stop
        is_ckpt = any(m.ckpt.should_save(step, force=force_ckpt) for m in pack.alive)
        if not (is_log or is_eval or is_ckpt):
            continue  # no host sync between schedule points
        last = _fetch_losses(pack, pending)
        pending = []
        if not pack.alive:
            pack.progress.message(f"every member failed by step {step}")
            break
        if is_log:
            now = time.perf_counter()
            _write_train_rows(pack, step, step - step_log, now - t_log, timed=step_log > pack.start, last=last)
            t_log, step_log = now, step
        if is_eval:
            _write_eval_rows(pack, step)
            t_log = time.perf_counter()  # eval time is not training throughput
        if is_ckpt:
            _save(pack, step, force_ckpt)
        if is_stop and step < pack.steps:
            pack.progress.message(f"stopped after step {step} (checkpoints saved); rerun to resume")
            pack.stopped_at = step
            break
    for m in pack.alive:
        m.close()


def _next_batch(pack: _Pack):
    """The step's inputs/targets: [B, T] shared by all members, or [K, B, T], member k's own stream."""
    batches = [next(it) for it in pack.iters]
    if len(batches) == 1:
        return batches[0]["inputs"], batches[0]["targets"]
    return np.stack([b["inputs"] for b in batches]), np.stack([b["targets"] for b in batches])


def _fetch_losses(pack: _Pack, pending: list) -> dict:
    """Bring the pending steps' metrics to the host; each live member's losses join its interval, and a
    member whose loss is NaN/inf fails (recorded as the unpacked trainer records it). Returns the last
    step's metrics ([K] arrays)."""
    outs = jax.device_get([o for _, o in pending])
    for m in pack.alive:
        for (s, _), o in zip(pending, outs):
            loss = float(o["loss"][m.index])
            if not math.isfinite(loss):
                e = NonFiniteLossError.at(loss, s)
                m.failed = str(e)
                record_failure(m.run_dir, m.config, e)
                pack.progress.message(f"{m.run_dir.name} failed: {m.failed}; the other members train on")
                m.close()
                break
            m.host.interval_losses.append(loss)
    return outs[-1]


def _write_train_rows(pack: _Pack, step: int, n_steps: int, dt: float, timed: bool, last: dict) -> None:
    """Each live member's train row; its tokens/s counts its own tokens (the pack's total is K times it)."""
    for m in pack.alive:
        host = m.host
        if timed:  # the first interval after a (re)start includes compilation
            host.timed_s += dt
            host.timed_tokens += n_steps * m.tokens_per_step
        tps = host.timed_tokens / host.timed_s if host.timed_s > 0 else n_steps * m.tokens_per_step / max(dt, 1e-9)
        m.last_rate = tps, accounting.mfu(tps, m.fpt["train"], m.peak) if m.peak else None
        write_train_row(m, step, {k: v[m.index] for k, v in last.items()}, *m.last_rate)
    losses = [m.host.last_train_loss for m in pack.alive]
    tps = sum(m.last_rate[0] for m in pack.alive)
    pack.progress.log(step, float(np.mean(losses)), tps, None, steps_per_s=tps / pack.members[0].tokens_per_step
                      / len(pack.alive))


def _write_eval_rows(pack: _Pack, step: int) -> None:
    """Each live member's eval row: mean NLL over the fixed held-out windows (summed as unpacked)."""
    sums = jax.device_get([pack.step.eval_fn(pack.state["params"], b["inputs"], b["targets"], b["weights"])
                           for b in pack.eval_set])
    for m in pack.alive:
        i = m.index
        m.eval_value = float(sum(float(n[i]) for n, _ in sums) / sum(float(w[i]) for _, w in sums))
        write_eval_row(m, step)
    pack.progress.message(f"eval at step {step}: mean loss {np.mean([m.eval_value for m in pack.alive]):.4f} "
                          "nats/token")


def _save(pack: _Pack, step: int, force: bool) -> None:
    """Each live member's checkpoint in its own run directory, in the unpacked trainer's format."""
    for m in pack.alive:
        state = {"params": ps.unstack(pack.state["params"], m.index),
                 "opt_state": ps.retree(ps.unstack(pack.state["opt_state"], m.index), m.own_treedef),
                 "step": pack.state["step"]}
        m.save(step, force, state)


def _member_result(pack: _Pack, m: _Member) -> dict:
    """The member's result: stopped, failed (already recorded), or finished (written now)."""
    if m.failed is not None:
        return rundir.read_result(m.run_dir)
    if pack.stopped_at is not None:
        return {"status": "stopped", "step": pack.stopped_at}
    result = {**finish(m, *m.last_rate), "pack_size": len(pack.members)}
    rundir.write_result(m.run_dir, result)  # the member is finished from here on
    m.writer.publish(result)
    pack.progress.message(f"{m.run_dir.name} done: eval loss {result['final_eval_loss']:.4f} nats/token, "
                          f"{result['tokens_per_s']:,.0f} tokens/s of its own")
    return result
