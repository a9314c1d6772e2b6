"""Config files, command-line overrides, resolution and validation — before anything compiles.

A config is an ml_collections ConfigDict with the keys of experiments/base.py. It comes from a Python
file whose `get_config()` returns one, or from a JSON file holding a resolved config (a run directory's
config.json): JSON keys are laid over the base config, so a key the base does not know is an error.
Overrides are `--config.a.b=value`; the value is parsed to the type of the existing leaf.
"""
import ast
import hashlib
import importlib.util
import json
import math
import pathlib

import ml_collections

_BASE = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "base.py"

ENUMS = {
    "model.mlp": ("swiglu", "gelu"),
    "model.compute_dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "optim.schedule": ("cosine", "wsd", "constant"),
    "optim.parametrization": ("standard", "mup"),
}


# Sections and keys that change how a run executes, not what it computes (up to float tolerance): a
# run may resume on another mesh or with its corpus cached elsewhere, and they are left out of the
# run's identity (config_hash). The Grain worker count is NOT among them (its iterator state differs).
EXECUTION_SECTIONS = ("mesh", "checkpoint")
EXECUTION_KEYS = (("data", "cache_dir"),)


def science(config) -> dict:
    """The config as a dict without its execution-only sections and keys."""
    d = {k: v for k, v in config.to_dict().items() if k not in EXECUTION_SECTIONS}
    for section, key in EXECUTION_KEYS:
        d.get(section, {}).pop(key, None)
    return d


class ConfigError(ValueError):
    """A config key holds a value that cannot work; the message names key, value and what is valid."""


def load_py(path) -> ml_collections.ConfigDict:
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config() returning a ConfigDict")
    return module.get_config()


def load(path, overrides: list[str] | tuple = ()) -> ml_collections.ConfigDict:
    """Load a .py or .json config and apply `--config.a.b=value` overrides."""
    path = pathlib.Path(path)
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        config = load_py(_BASE)
        _merge(config, data, prefix="")
    elif path.suffix == ".py":
        config = load_py(path)
    else:
        raise ConfigError(f"config must be a .py or .json file, got {path}")
    for item in overrides:
        apply_override(config, item)
    return config


def _merge(config, data: dict, prefix: str) -> None:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in config:
            raise ConfigError(f"unknown config key {name!r}; valid keys here: {sorted(config.keys())}")
        if isinstance(value, dict) and isinstance(config[key], ml_collections.ConfigDict):
            _merge(config[key], value, prefix=f"{name}.")
        else:
            with config.ignore_type():
                config[key] = value


def apply_override(config, item: str) -> None:
    """Apply one `--config.a.b=value` (or `a.b=value`) override in place."""
    text = item[2:] if item.startswith("--") else item
    if text.startswith("config."):
        text = text[len("config."):]
    if "=" not in text:
        raise ConfigError(f"override {item!r} must look like --config.section.key=value")
    dotted, raw = text.split("=", 1)
    *parents, leaf = dotted.split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            where = ".".join(parents[:i]) or "config"
            valid = sorted(k for k in node.keys() if isinstance(node[k], ml_collections.ConfigDict))
            raise ConfigError(f"unknown config section {'.'.join(parents[:i + 1])!r} in {item!r}; "
                              f"sections of {where}: {valid}")
        node = node[part]
    if leaf not in node:
        raise ConfigError(f"unknown config key {dotted!r} in {item!r}; keys of "
                          f"{'.'.join(parents) or 'config'}: {sorted(node.keys())}")
    old = node[leaf]
    with node.ignore_type():
        node[leaf] = _parse_like(raw, old, dotted)


def _parse_like(raw: str, old, key: str):
    if isinstance(old, bool):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key}={raw!r}: expected a boolean (true/false)")
    if isinstance(old, int):
        try:
            value = float(raw)  # accept 2e6 for integers
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: expected an integer") from None
        if not math.isfinite(value) or value != int(value):
            raise ConfigError(f"{key}={raw!r}: expected an integer")
        return int(value)
    if isinstance(old, float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: expected a number") from None
    if isinstance(old, str):
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


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
    return config.train.tokens // (config.train.batch_size * config.data.seq_len)


def resolve(config) -> ml_collections.ConfigDict:
    """Fill derived values (max_seq_len, d_ff) so the saved config says what actually ran."""
    from scaling.model import d_ff_of

    config = ml_collections.ConfigDict(config.to_dict())
    if config.model.max_seq_len == 0:
        config.model.max_seq_len = config.data.seq_len
    if config.model.d_ff == 0 and config.model.mlp in ENUMS["model.mlp"]:
        config.model.d_ff = d_ff_of(config.model)
    return config


def validate(config) -> None:
    """Raise ConfigError listing every problem found (key, value, what is valid)."""
    from scaling.model import validate_model_config

    problems = []

    def need(ok: bool, msg: str):
        if not ok:
            problems.append(msg)

    for key, choices in ENUMS.items():
        section, leaf = key.split(".")
        value = config[section][leaf]
        need(value in choices, f"{key}={value!r}: must be one of {choices}")
    for key in ("data.seq_len", "train.tokens", "train.batch_size", "train.log_every",
                "train.eval_every", "train.eval_tokens", "checkpoint.every_steps", "checkpoint.keep"):
        section, leaf = key.split(".")
        value = config[section][leaf]
        need(isinstance(value, int) and value > 0, f"{key}={value!r}: must be a positive integer")
    for key in ("optim.lr", "optim.b1", "optim.b2", "optim.eps"):
        section, leaf = key.split(".")
        value = config[section][leaf]
        need(isinstance(value, (int, float)) and value > 0 and math.isfinite(value),
             f"{key}={value!r}: must be a positive number")
    need(0 <= config.optim.min_lr_ratio <= 1, f"optim.min_lr_ratio={config.optim.min_lr_ratio!r}: must be in [0, 1]")
    need(0 < config.optim.decay_fraction <= 1,
         f"optim.decay_fraction={config.optim.decay_fraction!r}: must be in (0, 1]")
    need(config.optim.warmup_steps >= 0, f"optim.warmup_steps={config.optim.warmup_steps!r}: must be >= 0")
    need(config.optim.clip_norm >= 0, f"optim.clip_norm={config.optim.clip_norm!r}: must be >= 0 (0 = off)")
    need(config.train.z_loss >= 0, f"train.z_loss={config.train.z_loss!r}: must be >= 0")
    need(0 < config.data.eval_fraction < 1, f"data.eval_fraction={config.data.eval_fraction!r}: must be in (0, 1)")
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
        steps = num_steps(config)
        need(steps >= 1, f"train.tokens={config.train.tokens}: less than one batch of "
             f"{config.train.batch_size}x{config.data.seq_len} tokens")
        need(config.optim.warmup_steps < max(steps, 1),
             f"optim.warmup_steps={config.optim.warmup_steps}: must be below the run's {steps} steps")
        if config.optim.schedule == "wsd":
            from scaling.optim import decay_steps

            n_decay = decay_steps(config.optim, steps)
            need(config.optim.warmup_steps + n_decay <= steps,
                 f"optim.warmup_steps={config.optim.warmup_steps} + the WSD decay ({n_decay} steps = "
                 f"optim.decay_fraction={config.optim.decay_fraction} of {steps}) exceed the run's steps")
    try:
        validate_model_config(config.model)
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def config_hash(config) -> str:
    """Stable short hash of a resolved config's canonical JSON, execution sections excluded."""
    blob = json.dumps(science(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
