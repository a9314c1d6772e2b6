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
from scaling.checkpoint import Checkpointer
from scaling.metrics import MetricsWriter, Progress
from scaling.model import build_model, cross_entropy
from scaling.optim import make_optimizer


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf; the message names the step."""


def _write_json_atomic(path: pathlib.Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
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


def _load_finished(run_dir: pathlib.Path) -> dict | None:
    path = run_dir / "result.json"
    if path.exists():
        result = json.loads(path.read_text())
        if result.get("status") == "ok":
            return result
    return None


def _check_same_run(run_dir: pathlib.Path, config) -> None:
    path = run_dir / "config.json"
    if not path.exists():
        return
    old = {k: v for k, v in json.loads(path.read_text()).items() if k not in cfg_lib.EXECUTION_SECTIONS}
    new = {k: v for k, v in config.to_dict().items() if k not in cfg_lib.EXECUTION_SECTIONS}
    if old != new:
        diff = sorted(f"{s}.{k}" for s in new for k in (new[s] if isinstance(new[s], dict) else [None])
                      if isinstance(new[s], dict) and old.get(s, {}).get(k) != new[s].get(k))
        raise cfg_lib.ConfigError(
            f"{run_dir} already holds a run of a different config (differing keys: {diff or 'top level'}); "
            "use a new --workdir, or delete the old run directory")


class Trainer(NamedTuple):
    state: dict  # {"params", "opt_state", "step"}, placed with its shardings
    step_fn: Callable  # (state, inputs_BT, targets_BT) -> (state, {"loss", "grad_norm", "lr"}); donates state
    eval_fn: Callable  # (params, inputs_BT, targets_BT) -> mean NLL (nats/token)
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

    def eval_step(params, inputs_BT, targets_BT):
        return loss_fn(params, inputs_BT, targets_BT)[1]["nll"]

    step_fn = jax.jit(train_step, in_shardings=(state_sh, batch_sh, batch_sh),
                      out_shardings=(state_sh, repl), donate_argnums=0)
    eval_fn = jax.jit(eval_step, in_shardings=(param_sh, batch_sh, batch_sh), out_shardings=repl)
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
    finished = _load_finished(run_dir)
    if finished is not None:
        return finished
    is_main = jax.process_index() == 0
    _check_same_run(run_dir, config)
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
        return jax.make_array_from_process_local_data(batch_sh, np.asarray(local_BT, np.int32))

    def evaluate(params) -> float:
        losses = [eval_fn(params, to_global(b["inputs"][rows]), to_global(b["targets"][rows])) for b in eval_set]
        return float(np.mean(jax.device_get(losses)))

    # --- resume -------------------------------------------------------------------------------
    ckpt = Checkpointer(run_dir / "checkpoints", every_steps=config.checkpoint.every_steps,
                        keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    writer = MetricsWriter(run_dir, enabled=is_main)
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:
        abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        state, _ = ckpt.restore(latest, abstract_state, data_iter)
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
    pending = []  # (step, device metrics) since the last log: fetched together, one host sync
    t_log, step_log, timed_s, timed_tokens = time.perf_counter(), start, 0.0, 0
    last_train_loss = last_eval = None
    tokens_per_s = mfu = float("nan")
    for step in range(start + 1, steps + 1):
        b = next(data_iter)
        state, out = step_fn(state, to_global(b["inputs"]), to_global(b["targets"]))
        pending.append((step, out))
        if step % t.log_every and step != steps and step % t.eval_every and step != stop_after_steps:
            continue
        fetched = jax.device_get([o for _, o in pending])
        for (s, _), o in zip(pending, fetched):
            if not math.isfinite(float(o["loss"])):
                raise NonFiniteLossError(f"non-finite training loss {float(o['loss'])} at step {s}; "
                                         "lower optim.lr, raise optim.warmup_steps, or check the data")
        now = time.perf_counter()
        n_steps = step - step_log
        if step_log > start:  # the first interval includes compilation: not timed
            timed_s += now - t_log
            timed_tokens += n_steps * tokens_per_step
        interval_tps = n_steps * tokens_per_step / max(now - t_log, 1e-9)
        tokens_per_s = timed_tokens / timed_s if timed_s > 0 else interval_tps
        mfu = accounting.mfu(tokens_per_s, fpt["train"], peak) if peak else None
        last_train_loss = float(np.mean([o["loss"] for o in fetched]))
        writer.write({"split": "train", "step": step, "tokens": step * tokens_per_step,
                      "loss": last_train_loss, "lr": float(fetched[-1]["lr"]),
                      "grad_norm": float(fetched[-1]["grad_norm"]), "tokens_per_s": tokens_per_s,
                      "mfu": mfu, "flops": fpt["train"] * step * tokens_per_step,
                      "time_s": time.time() - t_start})
        progress.log(step, last_train_loss, tokens_per_s, mfu, steps_per_s=tokens_per_s / tokens_per_step)
        pending, t_log, step_log = [], now, step
        if step % t.eval_every == 0 or step == steps:
            last_eval = evaluate(state["params"])
            writer.write({"split": "eval", "step": step, "tokens": step * tokens_per_step, "loss": last_eval,
                          "bpb": data.bits_per_byte(last_eval, corpus.bytes_per_token_eval),
                          "flops": fpt["train"] * step * tokens_per_step})
            progress.message(f"eval at step {step}: loss {last_eval:.4f} nats/token, "
                             f"{data.bits_per_byte(last_eval, corpus.bytes_per_token_eval):.4f} bits/byte")
            t_log = time.perf_counter()  # eval time is not training throughput
        ckpt.save(step, state, data_iter, force=(step == steps or step == stop_after_steps))
        if step == stop_after_steps and step < steps:
            ckpt.wait()
            ckpt.close()
            writer.close()
            progress.message(f"stopped after step {step} (checkpoint saved); rerun to resume")
            return {"status": "stopped", "step": step}
    ckpt.wait()
    ckpt.close()
    writer.close()

    tokens = steps * tokens_per_step
    flops = accounting.run_flops(m, seq_len, tokens)
    result = {
        "status": "ok", "error": None, "config_hash": cfg_lib.config_hash(config), "step": steps,
        "tokens": tokens, "n_params": counts["total"], "n_params_nonembed": counts["nonembedding"],
        "n_params_embed": counts["embedding"], "flops_6nd": flops["flops_6nd"],
        "flops_6nd_nonembed": flops["flops_6nd_nonembed"], "flops": flops["flops"],
        "final_train_loss": last_train_loss, "final_eval_loss": last_eval,
        "final_eval_bpb": data.bits_per_byte(last_eval, corpus.bytes_per_token_eval),
        "epochs": data_info["epochs"], "wall_time_s": time.time() - t_start,
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
