"""train(config, run_dir) -> result: one model, from config to result.json.

The run directory is the contract with the sweep runner and the analysis (see README):
config.json (resolved config, first), metrics.jsonl + TensorBoard events (as it goes),
checkpoints/ (Orbax), result.json (last, atomic; its presence means "finished").

Resume: if run_dir/checkpoints holds a complete checkpoint, the run restores params, optimizer state,
step and the data iterator from the newest one, drops metrics rows newer than it, and continues; the
losses then equal those of an uninterrupted run. A run whose result.json says "ok" is returned as is.
"""
import json
import math
import os
import pathlib
import subprocess
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scaling import accounting, data, distributed, sharding
from scaling import config as cfg_lib
from scaling.checkpoint import Checkpointer, abstract_of
from scaling.metrics import MetricsWriter, Progress, read_metrics
from scaling.model import build_model, cross_entropy
from scaling.optim import make_optimizer


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf; the message names the step."""


def _write_json_atomic(path: pathlib.Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())  # a hard stop must not leave an empty result.json behind the rename
    os.replace(tmp, path)


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


def _peak_flops(config, mesh) -> float | None:
    """Peak FLOP/s of the whole mesh, for MFU. CPU: one measured matmul peak for the host."""
    if config.train.peak_flops > 0:
        return config.train.peak_flops * mesh.devices.size
    device = mesh.devices.flat[0]
    if device.platform == "cpu":  # fake CPU devices share the host's cores: the host is the unit
        return accounting.measure_cpu_peak(jnp.dtype(config.model.compute_dtype)) * jax.process_count()
    peak = accounting.peak_flops_for(device)
    return peak * mesh.devices.size if peak else None


def _load_finished(run_dir: pathlib.Path, config) -> dict | None:
    """The run's result if it finished ok. A failed result is moved aside (result.failed.json):
    result.json must mean "finished", and this run is about to be retried."""
    path = run_dir / "result.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    if result.get("status") == "ok":
        if result.get("config_hash") != cfg_lib.config_hash(config):
            _refuse_other_config(run_dir, config)
        return result
    if distributed.is_main_process():
        os.replace(path, run_dir / "result.failed.json")
    return None


def _check_same_run(run_dir: pathlib.Path, config) -> None:
    path = run_dir / "config.json"
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
        f"{run_dir} already holds a run of a different config (differing keys: {diff or 'see config.json'}); "
        "use a new --workdir, or delete the old run directory")


class Trainer(NamedTuple):
    state: dict  # {"params", "opt_state", "step"}, placed with its shardings
    step_fn: Callable  # (state, inputs_BT, targets_BT) -> (state, {"loss", "grad_norm", "lr"}); donates state
    eval_fn: Callable  # (params, inputs_BT, targets_BT, weights_BT) -> (sum of weighted NLL, sum of weights)
    batch_sh: jax.sharding.NamedSharding


def make_trainer(config, mesh, rules, steps: int) -> Trainer:
    """Model, optimizer and jitted steps with explicit in/out shardings (the modern pjit)."""
    m, t = config.model, config.train
    model_kwargs = dict(parametrization=config.optim.parametrization, base_d_model=config.optim.base_d_model)
    with nnx.use_eager_sharding(False):  # shapes + logical names only: nothing allocated or compiled
        abstract = nnx.eval_shape(lambda: build_model(m, config.seed, **model_kwargs))
    sharding.validate(abstract, mesh, rules)  # names every parameter that does not divide its axis
    model = build_model(m, config.seed, mesh, rules, **model_kwargs)
    graphdef, params = nnx.split(model)
    param_sh = jax.tree.map(lambda x: x.sharding, params)
    tx, schedule = make_optimizer(config, params, steps)
    repl = sharding.replicated(mesh)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, jax.eval_shape(tx.init, params), param_sh,
                                   transform_non_params=lambda _: repl)
    state_sh = {"params": param_sh, "opt_state": opt_sh, "step": repl}
    state = {"params": params, "opt_state": jax.jit(tx.init, out_shardings=opt_sh)(params),
             "step": jax.device_put(jnp.zeros((), jnp.int32), repl)}
    batch_sh = sharding.batch_sharding(mesh)

    def loss_fn(params, inputs_BT, targets_BT):
        logits_BTV = nnx.merge(graphdef, params)(inputs_BT)
        return cross_entropy(logits_BTV, targets_BT, t.z_loss)

    def train_step(state, inputs_BT, targets_BT):
        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], inputs_BT, targets_BT)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
               "step": state["step"] + 1}
        return new, {"loss": aux["nll"], "grad_norm": optax.global_norm(grads), "lr": schedule(state["step"])}

    def eval_step(params, inputs_BT, targets_BT, weights_BT):
        logits_BTV = nnx.merge(graphdef, params)(inputs_BT)
        nll_BT = jax.nn.logsumexp(logits_BTV, axis=-1) - jnp.take_along_axis(
            logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
        return jnp.sum(nll_BT * weights_BT), jnp.sum(weights_BT)

    step_fn = jax.jit(train_step, in_shardings=(state_sh, batch_sh, batch_sh),
                      out_shardings=(state_sh, repl), donate_argnums=0)
    eval_fn = jax.jit(eval_step, in_shardings=(param_sh, batch_sh, batch_sh, batch_sh), out_shardings=repl)
    return Trainer(state, step_fn, eval_fn, batch_sh)


def train(config, run_dir, *, stop_after_steps: int | None = None, verbose: bool = True) -> dict:
    """Train one model; returns the result dict (also written to run_dir/result.json).

    stop_after_steps: checkpoint and return after this step without writing result.json, as a
    preempted run would (used to test resume).
    """
    config = cfg_lib.resolve(config)
    cfg_lib.validate(config)
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_same_run(run_dir, config)
    finished = _load_finished(run_dir, config)
    if finished is not None:
        return finished
    is_main = distributed.is_main_process()
    if is_main:
        _write_json_atomic(run_dir / "config.json", config.to_dict())
    try:
        return _train(config, run_dir, stop_after_steps, verbose and is_main, is_main)
    except Exception as e:
        if is_main:
            _write_json_atomic(run_dir / "result.json", {
                "status": "failed", "error": f"{type(e).__name__}: {e}",
                "config_hash": cfg_lib.config_hash(config), "git_sha": _git_sha()})
        raise


def _train(config, run_dir, stop_after_steps, verbose, is_main) -> dict:
    t_start = time.time()
    m, t = config.model, config.train
    progress = Progress(cfg_lib.num_steps(config), enabled=verbose)

    corpus = data.load(config.data)
    if corpus.vocab_size != m.vocab_size:
        raise cfg_lib.ConfigError(f"model.vocab_size={m.vocab_size} but the corpus' tokenizer has "
                                  f"{corpus.vocab_size} tokens; set --config.model.vocab_size={corpus.vocab_size}")
    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.logical_rules(mesh, m)  # kv heads that don't divide 'model' are replicated
    sharding.validate_batch(t.batch_size, mesh)
    # Which rows of each global batch this process feeds, read off the sharding (usually
    # (process_index, process_count); fewer shards when a 'model' axis spans processes).
    shard, n_shards = distributed.process_batch_slice(sharding.batch_sharding(mesh), t.batch_size)
    steps = cfg_lib.num_steps(config)
    seq_len, batch = config.data.seq_len, t.batch_size
    tokens_per_step = batch * seq_len
    counts = accounting.param_counts(m)
    fpt = accounting.flops_per_token(m, seq_len)
    peak = _peak_flops(config, mesh)

    # --- model, optimizer, shardings, compiled steps ----------------------------------------------
    tr = make_trainer(config, mesh, rules, steps)
    state, step_fn, eval_fn, batch_sh = tr.state, tr.step_fn, tr.eval_fn, tr.batch_sh

    # --- data ---------------------------------------------------------------------------------
    loader, data_info = data.train_loader(
        corpus, seq_len=seq_len, global_batch=batch, num_steps=steps, seed=config.data.seed,
        process_index=shard, process_count=n_shards, allow_repeat=config.data.allow_repeat,
        num_workers=config.data.num_workers)
    data_iter = iter(loader)
    eval_set = data.eval_batches(corpus, seq_len=seq_len, batch_size=batch, n_tokens=t.eval_tokens)
    rows = slice(shard * batch // n_shards, (shard + 1) * batch // n_shards)

    def to_global(local_BT):
        return distributed.global_array(local_BT, batch_sh)

    def evaluate(params) -> float:
        """Mean NLL (nats/token) over the fixed eval windows; padding rows have weight 0."""
        sums = jax.device_get([eval_fn(params, *(to_global(b[k][rows]) for k in ("inputs", "targets", "weights")))
                               for b in eval_set])
        return float(sum(float(n) for n, _ in sums) / sum(float(w) for _, w in sums))

    # --- resume -------------------------------------------------------------------------------
    ckpt = Checkpointer(run_dir / "checkpoints", every_steps=config.checkpoint.every_steps,
                        keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    writer = MetricsWriter(run_dir, enabled=is_main)
    # Host-side loop state, saved with every checkpoint so a resumed run continues it exactly:
    # the losses of the log interval in progress, the last losses (for result.json when the run
    # stopped right after its final checkpoint), and the elapsed / timed seconds so far.
    host = {"interval_losses": [], "last_train_loss": None, "last_eval": None, "elapsed_s": 0.0,
            "timed_s": 0.0, "timed_tokens": 0}
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:
        state, meta = ckpt.restore(latest, abstract_of(state), data_iter)
        host.update(meta.get("host", {}))
        start = latest
        writer.truncate_after(start)
        progress.message(f"resumed from checkpoint at step {start}")
    else:
        writer.truncate_after(0)
    if start == 0:
        progress.message(
            f"{counts['total']:,} params ({counts['nonembedding']:,} non-embedding), {steps} steps x "
            f"{tokens_per_step:,} tokens = D {steps * tokens_per_step:,}; mesh {dict(mesh.shape)}; "
            f"{fpt['train'] / 1e6:.2f} MFLOP/token (exact)")

    # --- loop ---------------------------------------------------------------------------------
    # Device metrics are fetched only at log / eval / checkpoint steps (one host sync for all
    # the steps since the last fetch); the loss of every step is still checked for NaN/inf.
    pending = []  # (step, device metrics) not yet fetched
    t_log, step_log, t_segment = time.perf_counter(), start, t_start  # this segment's wall time counts from setup
    tokens_per_s = mfu = float("nan")

    def save(step, force=False):
        snapshot = {**host, "interval_losses": list(host["interval_losses"]),
                    "elapsed_s": host["elapsed_s"] + time.time() - t_segment}  # saves may be async: a copy
        ckpt.save(step, state, data_iter, meta={"host": snapshot}, force=force)

    for step in range(start + 1, steps + 1):
        b = next(data_iter)
        state, out = step_fn(state, to_global(b["inputs"]), to_global(b["targets"]))
        pending.append((step, out))
        is_log = step % t.log_every == 0 or step == steps
        is_eval = step % t.eval_every == 0 or step == steps
        is_stop = step == stop_after_steps
        is_ckpt = ckpt.should_save(step, force=(step == steps or is_stop))
        if not (is_log or is_eval or is_ckpt):
            continue
        for (s, _), o in zip(pending, jax.device_get([o for _, o in pending])):
            loss = float(o["loss"])
            if not math.isfinite(loss):
                raise NonFiniteLossError(f"non-finite training loss {loss} at step {s}; "
                                         "lower optim.lr, raise optim.warmup_steps, or check the data")
            host["interval_losses"].append(loss)
        last_out, pending = o, []
        if is_log:
            now = time.perf_counter()
            n_steps = step - step_log
            if step_log > start:  # the first interval after (re)start includes compilation: not timed
                host["timed_s"] += now - t_log
                host["timed_tokens"] += n_steps * tokens_per_step
            interval_tps = n_steps * tokens_per_step / max(now - t_log, 1e-9)
            tokens_per_s = host["timed_tokens"] / host["timed_s"] if host["timed_s"] > 0 else interval_tps
            mfu = accounting.mfu(tokens_per_s, fpt["train"], peak) if peak else None
            # "loss" of a train row: mean training loss over the steps since the previous row
            host["last_train_loss"] = float(np.mean(host["interval_losses"]))
            host["interval_losses"] = []
            writer.write({"split": "train", "step": step, "tokens": step * tokens_per_step,
                          "loss": host["last_train_loss"], "lr": float(last_out["lr"]),
                          "grad_norm": float(last_out["grad_norm"]), "tokens_per_s": tokens_per_s,
                          "mfu": mfu, "flops": fpt["train"] * step * tokens_per_step,
                          "time_s": host["elapsed_s"] + time.time() - t_segment})
            progress.log(step, host["last_train_loss"], tokens_per_s, mfu,
                         steps_per_s=tokens_per_s / tokens_per_step)
            t_log, step_log = now, step
        if is_eval:
            host["last_eval"] = evaluate(state["params"])
            bpb = data.bits_per_byte(host["last_eval"], corpus.bytes_per_token_eval)
            writer.write({"split": "eval", "step": step, "tokens": step * tokens_per_step,
                          "loss": host["last_eval"], "bpb": bpb, "flops": fpt["train"] * step * tokens_per_step})
            progress.message(f"eval at step {step}: loss {host['last_eval']:.4f} nats/token, {bpb:.4f} bits/byte")
            t_log = time.perf_counter()  # eval time is not training throughput
        if is_ckpt:
            save(step, force=(step == steps or is_stop))
        if is_stop and step < steps:
            ckpt.wait()
            ckpt.close()
            writer.close()
            progress.message(f"stopped after step {step} (checkpoint saved); rerun to resume")
            return {"status": "stopped", "step": step}
    ckpt.wait()
    ckpt.close()
    writer.close()
    last_train_loss, last_eval = host["last_train_loss"], host["last_eval"]
    if start == steps:
        progress.message("the final checkpoint was already written: finishing the run's result")
        rows = [r for r in read_metrics(run_dir) if r["split"] == "train"]
        tokens_per_s = rows[-1]["tokens_per_s"] if rows else float("nan")
        mfu = rows[-1]["mfu"] if rows else None

    tokens = steps * tokens_per_step
    flops = accounting.run_flops(m, seq_len, tokens)
    result = {
        "status": "ok", "error": None, "config_hash": cfg_lib.config_hash(config), "step": steps,
        "tokens": tokens, "n_params": counts["total"], "n_params_nonembed": counts["nonembedding"],
        "n_params_embed": counts["embedding"], "flops_6nd": flops["flops_6nd"],
        "flops_6nd_nonembed": flops["flops_6nd_nonembed"], "flops": flops["flops"],
        "final_train_loss": last_train_loss, "final_eval_loss": last_eval,
        "final_eval_bpb": data.bits_per_byte(last_eval, corpus.bytes_per_token_eval),
        "epochs": data_info["epochs"], "wall_time_s": host["elapsed_s"] + time.time() - t_segment,
        "tokens_per_s": tokens_per_s, "mfu": mfu, "seq_len": seq_len, "batch_size": batch,
        "model": {k: m[k] for k in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "vocab_size",
                                    "mlp", "tie_embeddings", "qk_norm", "compute_dtype")},
        "seed": config.seed, "data_seed": config.data.seed, "num_devices": int(mesh.devices.size),
        "process_count": jax.process_count(), "versions": _versions(), "git_sha": _git_sha(),
    }
    if is_main:
        _write_json_atomic(run_dir / "result.json", result)
        progress.message(f"done: eval loss {last_eval:.4f} nats/token, {result['final_eval_bpb']:.4f} bpb, "
                         f"{result['wall_time_s']:.1f}s")
    return result
