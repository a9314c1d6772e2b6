"""Run configs: loading (a config file laid over the defaults, then overrides), resolution of the
derived values, validation, and a run's identity (its config hash).

The schema (the defaults, the valid values, the sections outside a run's identity) is
scaling/config_schema.py; reading config files and overrides is scaling/config_files.py. `load` lays
a .py or .json config over `defaults()`, so a key the defaults do not know is an error naming the file.
This module imports neither JAX nor the model, so a planner can validate every run of a sweep without
loading JAX.
"""
import hashlib
import json
import math

import ml_collections

from scaling.accounting import MLP_KINDS, d_ff_of
from scaling.config_files import apply_override, load_json, load_py, overlay, split_spec
from scaling.config_schema import (ATTENTION_IMPLS, DECAY_SHAPES, DTYPES, EXECUTION_KEYS, EXECUTION_SECTIONS,
                                   IDENTITY_DEFAULTS, LABEL_SECTIONS, PARAMETRIZATIONS, REMAT_POLICIES, SCHEDULES,
                                   VIEW_SECTIONS, ConfigError, defaults)


def load(path, overrides: list[str] | tuple = ()) -> ml_collections.ConfigDict:
    """Load a .py (or 'file.py:ARG') or .json config laid over defaults() and apply
    `--config.a.b=value` overrides."""
    spec = path
    path, _ = split_spec(spec)
    if path.suffix == ".json":
        written = load_json(path)
    elif path.suffix == ".py":
        written = load_py(spec)
        if "sweep" in written:
            raise ConfigError(f"{path} is a sweep config (it has a `sweep` section); plan or run it with "
                              f"`scaling sweep {path}`")
    else:
        raise ConfigError(f"config must be a .py or .json file, got {path}")
    config = overlay(defaults(), written, str(path))
    for item in overrides:
        apply_override(config, item)
    return config


def science(config) -> dict:
    """The config as a dict without its execution-only sections and keys, its labels and its views."""
    d = {k: v for k, v in config.to_dict().items() if k not in EXECUTION_SECTIONS + LABEL_SECTIONS + VIEW_SECTIONS}
    for section, key in EXECUTION_KEYS:
        d.get(section, {}).pop(key, None)
    for (section, key), neutral in IDENTITY_DEFAULTS:
        if d.get(section, {}).get(key, neutral) == neutral:
            d.get(section, {}).pop(key, None)
    return d


def tokenizer_vocab(tokenizer: str) -> int | None:
    """Vocab size implied by a tokenizer spec, or None when only the prepared corpus knows it."""
    if tokenizer == "bytes":
        return 256
    if tokenizer.startswith("bpe:"):
        size = tokenizer.split(":", 1)[1]
        if not size.isdigit() or int(size) < 257:
            raise ConfigError(f"data.tokenizer={tokenizer!r}: a BPE vocabulary looks like bpe:8192 (> 256)")
        return int(size)
    return None


def num_steps(config) -> int:
    """Optimizer steps of the run: train.tokens // (batch_size * seq_len)."""
    return config.train.tokens // (config.train.batch_size * config.data.seq_len)


def decay_steps(optim_cfg, total_steps: int) -> int:
    """WSD: steps over which lr falls from its peak to the floor (reached at the final step)."""
    return max(int(round(optim_cfg.decay_fraction * total_steps)), 1)


def resolve(config) -> ml_collections.ConfigDict:
    """Fill derived values (max_seq_len, d_ff) so the saved config says what actually ran."""
    config = ml_collections.ConfigDict(config.to_dict())
    if config.model.max_seq_len == 0:
        config.model.max_seq_len = config.data.seq_len
    if config.model.d_ff == 0 and config.model.mlp in MLP_KINDS:
        config.model.d_ff = d_ff_of(config.model)
    return config


def model_problems(cfg) -> list[str]:
    """Every problem of a `model` section that would stop it being built (key, value, what is valid)."""
    problems = []
    for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "max_seq_len"):
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            hint = " (0 means data.seq_len and must be resolved before the model is built)" \
                if key == "max_seq_len" else ""
            problems.append(f"model.{key}={v!r} is not valid; it must be a positive integer{hint}")
    chunk = cfg.get("loss_chunk", 0)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 0:
        problems.append(f"model.loss_chunk={chunk!r} is not valid; use 0 (full logits) or a positive int")
    if not isinstance(cfg.d_ff, int) or cfg.d_ff < 0:
        problems.append(f"model.d_ff={cfg.d_ff!r} is not valid; use 0 (derived) or a positive int")
    for key, choices in (("mlp", MLP_KINDS), ("compute_dtype", DTYPES), ("param_dtype", DTYPES),
                         ("remat", REMAT_POLICIES), ("attention", ATTENTION_IMPLS)):
        if cfg.get(key, choices[0]) not in choices:
            problems.append(f"model.{key}={cfg[key]!r} is not valid; use one of {choices}")
    for key in ("rope_theta", "norm_eps", "init_std"):
        if not cfg[key] > 0:
            problems.append(f"model.{key}={cfg[key]!r} is not valid; it must be > 0")
    if problems:  # the shape checks below divide by these sizes
        return problems
    if cfg.d_model % cfg.n_heads:
        problems.append(f"model.d_model={cfg.d_model} is not divisible by model.n_heads={cfg.n_heads}; "
                        f"d_model must be a multiple of n_heads")
    if cfg.n_heads % cfg.n_kv_heads:
        problems.append(f"model.n_kv_heads={cfg.n_kv_heads} does not divide model.n_heads={cfg.n_heads}; "
                        f"valid: a divisor of n_heads (n_heads = MHA, 1 = MQA)")
    head_dim = cfg.d_model // cfg.n_heads
    if head_dim % 2:
        problems.append(f"head_dim = model.d_model / model.n_heads = {cfg.d_model}/{cfg.n_heads} = {head_dim} "
                        f"is odd; RoPE rotates pairs of dimensions, so head_dim must be even")
    return problems


def validate_model_config(cfg) -> None:
    """Raise ConfigError (a ValueError) listing model_problems(cfg), before anything is built."""
    problems = model_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))


def _positive_problems(config, keys, kind: str, ok) -> list[str]:
    bad = [(key, config[key.split(".")[0]][key.split(".")[1]]) for key in keys]
    return [f"{key}={value!r}: must be a positive {kind}" for key, value in bad if not ok(value)]


def validate(config) -> None:
    """Raise ConfigError listing every problem of a resolved config (key, value, what is valid)."""
    problems = model_problems(config.model)

    def need(ok: bool, msg: str):
        if not ok:
            problems.append(msg)

    for key, value, choices in (("optim.schedule", config.optim.schedule, SCHEDULES),
                                ("optim.parametrization", config.optim.parametrization, PARAMETRIZATIONS),
                                ("optim.decay_shape", config.optim.decay_shape, DECAY_SHAPES)):
        need(value in choices, f"{key}={value!r}: must be one of {choices}")
    problems += _positive_problems(
        config, ("data.seq_len", "train.tokens", "train.batch_size", "train.log_every", "train.eval_every",
                 "train.eval_tokens", "checkpoint.every_steps", "checkpoint.keep"),
        "integer", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0)
    problems += _positive_problems(
        config, ("optim.lr", "optim.b1", "optim.b2", "optim.eps"),
        "number", lambda v: isinstance(v, (int, float)) and v > 0 and math.isfinite(v))
    o = config.optim
    need(0 <= o.min_lr_ratio <= 1, f"optim.min_lr_ratio={o.min_lr_ratio!r}: must be in [0, 1]")
    need(0 < o.decay_fraction <= 1, f"optim.decay_fraction={o.decay_fraction!r}: must be in (0, 1]")
    need(o.warmup_steps >= 0, f"optim.warmup_steps={o.warmup_steps!r}: must be >= 0")
    need(o.clip_norm >= 0, f"optim.clip_norm={o.clip_norm!r}: must be >= 0 (0 = off)")
    need(config.train.z_loss >= 0, f"train.z_loss={config.train.z_loss!r}: must be >= 0")
    need(0 < config.data.eval_fraction < 1, f"data.eval_fraction={config.data.eval_fraction!r}: must be in (0, 1)")
    need(math.isfinite(config.meta.budget) and config.meta.budget >= 0,
         f"meta.budget={config.meta.budget!r}: must be a FLOP count >= 0 (0 = none)")
    vocab = tokenizer_vocab(config.data.tokenizer)
    if vocab is not None:
        need(config.model.vocab_size == vocab,
             f"model.vocab_size={config.model.vocab_size}: the tokenizer {config.data.tokenizer!r} has a "
             f"vocabulary of {vocab}; set --config.model.vocab_size={vocab}")
    if config.model.max_seq_len:
        need(config.data.seq_len <= config.model.max_seq_len,
             f"data.seq_len={config.data.seq_len}: longer than model.max_seq_len="
             f"{config.model.max_seq_len} (the RoPE table); raise max_seq_len or use 0 (= seq_len)")
    if not problems:
        problems += _schedule_problems(config) + branch_problems(config)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def branch_problems(config) -> list[str]:
    """train.branch and checkpoint.keep_steps: a branch names its trunk and a step inside the constant phase."""
    b, problems = config.train.branch, []
    keep = config.checkpoint.keep_steps
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in keep):
        problems.append(f"checkpoint.keep_steps={keep!r}: must be positive step numbers")
    if not b.trunk and not b.step:
        return problems
    if not b.trunk or not isinstance(b.step, int) or b.step < 1:
        return problems + [f"train.branch=(trunk={b.trunk!r}, step={b.step!r}): a branch needs a trunk run id "
                           "and a step >= 1 (or neither: an ordinary run)"]
    if config.optim.schedule != "wsd":
        return problems + [f"train.branch: a branch continues a trunk with its own WSD cooldown; optim.schedule="
                           f"{config.optim.schedule!r} must be 'wsd'"]
    steps = num_steps(config)
    if steps > 0 and b.step != branch_step(config.optim, steps):
        problems.append(f"train.branch.step={b.step}: a run of {steps} steps leaves the constant phase at step "
                        f"{branch_step(config.optim, steps)} (steps - WSD decay steps); branch there")
    return problems


def branch_step(optim_cfg, total_steps: int) -> int:
    """WSD: the last step of the constant phase (steps 1 .. b run at the peak lr after warmup): a run
    of total_steps steps branches from its trunk here, b = total_steps - decay_steps."""
    return total_steps - decay_steps(optim_cfg, total_steps)


def _schedule_problems(config) -> list[str]:
    """The run's step count against its warmup and WSD decay (only meaningful once the rest is valid)."""
    steps, o = num_steps(config), config.optim
    if steps < 1:
        return [f"train.tokens={config.train.tokens}: less than one batch of "
                f"{config.train.batch_size}x{config.data.seq_len} tokens"]
    if o.warmup_steps >= steps:
        return [f"optim.warmup_steps={o.warmup_steps}: must be below the run's {steps} steps"]
    n_decay = decay_steps(o, steps)
    if o.schedule == "wsd" and o.warmup_steps + n_decay > steps:
        return [f"optim.warmup_steps={o.warmup_steps} + the WSD decay ({n_decay} steps = "
                f"optim.decay_fraction={o.decay_fraction} of {steps}) exceed the run's steps"]
    return []


def config_hash(config) -> str:
    """Stable short hash of a resolved config's canonical JSON, execution sections and labels excluded."""
    blob = json.dumps(science(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
