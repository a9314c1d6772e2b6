"""make_trainer(config, mesh, rules, steps) -> Trainer: a run's model, optimizer state and jitted steps.

The jitted train and eval steps are built once per *program* and kept in a small per-process cache
(`_PROGRAMS`), so a warm worker (scaling/worker.py) that trains run after run of one shape traces
and compiles them once. What makes two runs one program is `program_key`: the model config, the
optimizer's compile-time constants (every optim key but the schedule's), train.z_loss, the batch
shape, the mesh and the logical-axis rules. Nothing that differs between runs of one shape at
different D is in it: the LR schedule (its kind, step counts, lr and floor) enters the step as
traced scalars (scaling.optim.ScheduleArgs) bound per run, and the parameters, optimizer state and
data are inputs. So a WSD trunk and each of its branches, and standalone runs of other lengths, run
one compiled step; across processes, JAX's persistent compilation cache serves the same program.
`trace_counts` counts how often each step's Python body was traced (tests check the sharing).
"""
import collections
import json
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from scaling import sharding
from scaling.model import build_model, lm_loss, nll_sums
from scaling.optim import ScheduleArgs, lr_at, optimizer_chain, schedule_args

# optim keys that the step takes as traced ScheduleArgs, so they are not part of the program
SCHEDULE_KEYS = ("lr", "schedule", "warmup_steps", "min_lr_ratio", "decay_fraction", "decay_shape")
# Compiled programs kept per process (least recently used dropped first): a worker rarely sees more shapes.
MAX_PROGRAMS = 8
# How many times each step function's body was traced in this process ("train_step", "eval_step").
trace_counts: collections.Counter = collections.Counter()


class Trainer(NamedTuple):
    state: dict  # {"params", "opt_state", "step"}, placed with its shardings
    step_fn: Callable  # (state, inputs_BT, targets_BT) -> (state, {"loss", "grad_norm", "lr"}); donates state
    eval_fn: Callable  # (params, inputs_BT, targets_BT, weights_BT) -> (sum of weighted NLL, sum of weights)
    batch_sh: jax.sharding.NamedSharding


class _Program(NamedTuple):
    """The jitted functions and shardings shared by every run of one program_key."""
    train_step: Callable  # (state, schedule ScheduleArgs, inputs_BT, targets_BT) -> (state, metrics)
    eval_step: Callable
    init_opt: Callable  # params -> optimizer state, placed
    state_sh: dict
    batch_sh: jax.sharding.NamedSharding
    repl: jax.sharding.NamedSharding


_PROGRAMS: "collections.OrderedDict[str, _Program]" = collections.OrderedDict()


def program_key(config, mesh, rules) -> str:
    """What the compiled steps depend on (see the module docstring); runs with equal keys share them."""
    optim = {k: v for k, v in config.optim.to_dict().items() if k not in SCHEDULE_KEYS}
    return json.dumps({"model": config.model.to_dict(), "optim": optim, "z_loss": config.train.z_loss,
                       "batch": [config.train.batch_size, config.data.seq_len],
                       "mesh": [[int(d.id) for d in mesh.devices.flat], list(mesh.axis_names),
                                list(mesh.devices.shape)], "rules": rules}, sort_keys=True, default=repr)


def cached_program(cache: collections.OrderedDict, key: str, build: Callable):
    """cache[key], built by build() when absent; the least recently used beyond MAX_PROGRAMS dropped.
    The one program cache policy of the unpacked and the packed trainer (scaling/packed_step.py)."""
    program = cache.get(key)
    if program is None:
        program = cache[key] = build()
        while len(cache) > MAX_PROGRAMS:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return program


def make_trainer(config, mesh, rules, steps: int) -> Trainer:
    """Model, optimizer state and jitted steps with explicit in/out shardings (the modern pjit) for a
    run of `steps` steps; the steps come from the process's cache when a run of the same program built them."""
    m = config.model
    model_kwargs = dict(parametrization=config.optim.parametrization, base_d_model=config.optim.base_d_model)
    with nnx.use_eager_sharding(False):  # shapes + logical names only: nothing allocated or compiled
        abstract = nnx.eval_shape(lambda: build_model(m, config.seed, **model_kwargs))
    sharding.validate(abstract, mesh, rules)  # names every parameter that does not divide its axis
    model = build_model(m, config.seed, mesh, rules, **model_kwargs)
    graphdef, params = nnx.split(model)
    key = program_key(config, mesh, rules)
    program = cached_program(_PROGRAMS, key, lambda: _build_program(config, mesh, graphdef, params))
    state = {"params": params, "opt_state": program.init_opt(params),
             "step": jax.device_put(jnp.zeros((), jnp.int32), program.repl)}
    # this run's schedule: traced inputs of the shared step, bound here (placed once, replicated)
    schedule = jax.device_put(schedule_args(config.optim, steps), program.repl)
    return Trainer(state, RunStep(program.train_step, schedule), program.eval_step, program.batch_sh)


class RunStep(NamedTuple):
    """The program's jitted train step with one run's schedule bound: called (and lowered) as that run's step."""
    jitted: Callable  # (state, ScheduleArgs, inputs_BT, targets_BT) -> (state, metrics)
    schedule: ScheduleArgs  # this run's, placed replicated

    def __call__(self, state, inputs_BT, targets_BT):
        return self.jitted(state, self.schedule, inputs_BT, targets_BT)

    def lower(self, state, inputs_BT, targets_BT):
        """The lowered step for these arguments (memory analysis, HLO)."""
        return self.jitted.lower(state, self.schedule, inputs_BT, targets_BT)


def _build_program(config, mesh, graphdef, params) -> _Program:
    """The jitted steps of `config`'s program; they read only what program_key holds."""
    t = config.train
    param_sh = jax.tree.map(lambda x: x.sharding, params)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)  # no run's arrays kept

    def chain(schedule_fn):  # the optimizer: its constants from config, the lr from the traced schedule
        return optimizer_chain(config, shapes, schedule_fn)
    tx0 = chain(lambda count: 0.0)  # the state's structure and shardings do not depend on the schedule
    repl = sharding.replicated(mesh)
    opt_sh = optax.tree_map_params(tx0, lambda _, s: s, jax.eval_shape(tx0.init, params), param_sh,
                                   transform_non_params=lambda _: repl)
    state_sh = {"params": param_sh, "opt_state": opt_sh, "step": repl}
    batch_sh = sharding.batch_sharding(mesh)
    schedule_sh = ScheduleArgs(*(repl,) * len(ScheduleArgs._fields))

    def loss_fn(params, inputs_BT, targets_BT):
        model = nnx.merge(graphdef, params)
        return lm_loss(model, model.features(inputs_BT), targets_BT, t.z_loss)

    def train_step(state, schedule, inputs_BT, targets_BT):
        trace_counts["train_step"] += 1
        tx = chain(lambda count: lr_at(schedule, count))
        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], inputs_BT, targets_BT)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
               "step": state["step"] + 1}
        return new, {"loss": aux["nll"], "grad_norm": optax.global_norm(grads), "lr": lr_at(schedule, state["step"])}

    def eval_step(params, inputs_BT, targets_BT, weights_BT):
        trace_counts["eval_step"] += 1
        model = nnx.merge(graphdef, params)  # chunked like the loss (model.loss_chunk): no full logits
        return nll_sums(model, model.features(inputs_BT), targets_BT, weights_BT)

    return _Program(
        train_step=jax.jit(train_step, in_shardings=(state_sh, schedule_sh, batch_sh, batch_sh),
                           out_shardings=(state_sh, repl), donate_argnums=0),
        eval_step=jax.jit(eval_step, in_shardings=(param_sh, batch_sh, batch_sh, batch_sh), out_shardings=repl),
        init_opt=jax.jit(tx0.init, out_shardings=opt_sh), state_sh=state_sh, batch_sh=batch_sh, repl=repl)
