"""Run configs: the trainer's defaults, config files laid over them, overrides, resolution, validation.

A config is an ml_collections ConfigDict with the keys of `defaults()`. A config file is either a
Python file whose `get_config()` returns a ConfigDict holding only what differs from the defaults
(a complete config works too), or a JSON file holding a resolved config (a run directory's
config.json). Both are laid over `defaults()`, so a key the defaults do not know is an error naming
the file. `FILE.py:ARG` passes ARG to `get_config(ARG)` (a named variant of one file). Overrides are
`--config.a.b=value`; the value is parsed to the type of the existing leaf (scaling/flags.py reads
the other command-line forms and hands them over in this one).

The valid values of every enumerated key are defined here once; the model and the optimizer read
them from here. This module imports neither JAX nor the model, so a planner can validate every run
of a sweep without loading JAX.
"""
import ast
import hashlib
import importlib.util
import json
import math
import pathlib

import ml_collections

from scaling.accounting import MLP_KINDS, d_ff_of


DTYPES = ("float32", "bfloat16")
PARAMETRIZATIONS = ("standard", "mup")
SCHEDULES = ("cosine", "wsd", "constant")
# optim.decay_shape, the WSD decay from lr to the floor over its n steps (t = 0 .. 1 across them):
# linear: lr(t) = floor + (lr - floor)·(1 - t); 1-sqrt (Hägele et al. 2024): floor + (lr - floor)·(1 - sqrt(t)).
DECAY_SHAPES = ("linear", "1-sqrt")
REMAT_POLICIES = ("none", "full")  # model.remat: save every activation for the backward, or recompute blocks
# model.attention: auto = by platform (scaling.model.attention_impl); dense = full T x T (reference);
# blocked = causal query blocks that skip fully masked keys (CPU); xla / cudnn = jax.nn.dot_product_attention.
ATTENTION_IMPLS = ("auto", "dense", "blocked", "xla", "cudnn")
# Query rows per block of 'blocked': at T = 256 two blocks skip 1/4 of the T x T scores (measured
# faster than blocks of 32 or 64 on XLA:CPU, whose smaller matmuls lose more than they skip).
ATTENTION_BLOCK = 128

# Sections and keys that change how a run executes, not what it computes (up to float tolerance): a
# run may resume on another mesh or with its corpus cached elsewhere. The Grain worker count is NOT
# among them (its iterator state differs).
EXECUTION_SECTIONS = ("mesh", "checkpoint")
# remat recomputes, attention / loss_chunk reorder the same sums: they compute the same up to float rounding
EXECUTION_KEYS = (("data", "cache_dir"), ("model", "remat"), ("model", "attention"), ("model", "loss_chunk"))
# Sections of labels that describe a run without changing it (e.g. the nominal budget it was planned for).
LABEL_SECTIONS = ("meta",)
# Sections that choose where a run is also shown (TensorBoard, W&B): views of the run directory.
VIEW_SECTIONS = ("track",)
# Keys added after runs existed, left out of the identity while they hold these values, so the ids of
# runs made before them stay valid (a run directory made then still resumes under the same id).
IDENTITY_DEFAULTS = ((("optim", "decay_shape"), "linear"), (("train", "branch"), {"trunk": "", "step": 0}))


def defaults() -> ml_collections.ConfigDict:
    """The trainer's base config: one small decoder-only LM on the embedded corpus (byte-level).

    Every key outside EXECUTION_SECTIONS, EXECUTION_KEYS, LABEL_SECTIONS and VIEW_SECTIONS is part of the run's
    identity (its config hash). Units: `train.tokens` is D, training tokens seen; batch sizes are
    in sequences of `data.seq_len` tokens.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0  # model init (and dropout-free training noise, none here)

    c.model = m = ml_collections.ConfigDict()
    m.vocab_size = 256  # must equal the tokenizer's vocab (checked against the corpus)
    m.d_model = 128
    m.n_layers = 2
    m.n_heads = 4
    m.n_kv_heads = 4  # < n_heads: grouped-query attention; 1: multi-query
    m.d_ff = 0  # 0: derived (SwiGLU: 8/3·d rounded up to a multiple of 64; GELU: 4·d)
    m.mlp = "swiglu"  # swiglu | gelu
    m.tie_embeddings = True
    m.qk_norm = False
    m.rope_theta = 10000.0
    m.max_seq_len = 0  # 0: data.seq_len; RoPE tables are built for this many positions
    m.norm_eps = 1e-6
    m.init_std = 0.02
    m.compute_dtype = "float32"  # float32 | bfloat16 (params and logits stay float32)
    m.param_dtype = "float32"
    m.remat = "none"  # none | full (each block recomputed in the backward pass: less memory, ~1/3 more FLOPs)
    m.attention = "auto"  # auto | dense | blocked | xla | cudnn (ATTENTION_IMPLS; FLOPs are counted alike)
    m.loss_chunk = 512  # >0: LM head + cross-entropy fused over chunks of this many tokens (no full logits); 0: full logits

    c.data = d = ml_collections.ConfigDict()
    d.corpus = "sotu"  # 'sotu' (embedded) or a prepared corpus directory
    d.tokenizer = "bytes"  # bytes | bpe:<vocab> | tiktoken:<name>
    d.text_field = "text"  # JSONL / Parquet / HF sources: the field holding the text
    d.cache_dir = "data_cache"  # prepared corpora live here (relative to cwd)
    d.seq_len = 128
    d.seed = 0  # data order; shared by every run of a sweep so shorter runs see a prefix
    d.split_seed = 0  # which whole documents are held out for eval: the same for every run of a study
    d.eval_fraction = 0.02  # fraction of documents held out
    d.allow_repeat = False  # D > corpus tokens: error unless True (epochs are recorded)
    d.num_workers = 0  # grain worker processes; the batch stream depends on it

    c.train = t = ml_collections.ConfigDict()
    t.tokens = 2_000_000  # D: training tokens; steps = tokens // (batch_size * seq_len)
    t.batch_size = 16  # global batch, in sequences
    t.z_loss = 1e-4
    t.eval_every = 200  # steps; the final step is always evaluated
    t.eval_tokens = 65_536  # tokens of the held-out split per evaluation
    t.log_every = 10
    t.peak_flops = 0.0  # per-device peak FLOP/s for MFU; 0 = measure (CPU) or look up
    # A WSD cooldown branch (scaling/branch.py): start from trunk run `trunk` (its run id) at step `step`
    # instead of step 0. "" = an ordinary run.
    t.branch = ml_collections.ConfigDict({"trunk": "", "step": 0})

    c.optim = o = ml_collections.ConfigDict()
    o.lr = 3e-3
    o.schedule = "cosine"  # cosine | wsd | constant
    o.warmup_steps = 50
    o.min_lr_ratio = 0.1  # floor of the decay, as a fraction of lr
    o.decay_fraction = 0.2  # wsd only: final fraction of steps spent decaying
    o.decay_shape = "linear"  # wsd only: linear | 1-sqrt (DECAY_SHAPES)
    o.b1 = 0.9
    o.b2 = 0.95
    o.eps = 1e-8
    o.weight_decay = 0.1
    o.decay_embeddings = False
    o.clip_norm = 1.0
    o.parametrization = "standard"  # standard | mup
    o.base_d_model = 128  # mup only: width at which the lr/init were tuned

    c.mesh = s = ml_collections.ConfigDict()
    s.data = -1  # -1: all remaining devices
    s.fsdp = 1
    s.model = 1
    s.num_devices = 0  # 0: all visible devices; else use the first k

    c.checkpoint = k = ml_collections.ConfigDict()
    k.every_steps = 500
    k.keep = 2
    k.async_save = True
    k.dir = ""  # "": RUN_DIR/checkpoints; or a bucket path (gs://..., s3://...) Orbax writes directly
    k.keep_steps = ()  # steps always checkpointed and never deleted by `keep` (a trunk's branch points)

    c.meta = e = ml_collections.ConfigDict()
    e.budget = 0.0  # the nominal FLOP budget C of an isoFLOP run (set by the planner); 0.0 = none

    c.track = r = ml_collections.ConfigDict()  # trackers: views of the run directory (scaling/tracking.py)
    r.tensorboard = True  # scalars and hparams (config + N, D, C) in RUN_DIR/tensorboard
    r.group = ""  # "": the sweep's name for a run in SWEEP_DIR/runs/ID, else none
    r.wandb = False  # also log to Weights & Biases (pip install -e '.[wandb]')
    r.wandb_project = "scaling"
    r.wandb_entity = ""  # "": W&B's default entity
    r.wandb_mode = ""  # "": W&B's own default (WANDB_MODE); or online | offline | disabled
    return c


def science(config) -> dict:
    """The config as a dict without its execution-only sections and keys, its labels and its views."""
    d = {k: v for k, v in config.to_dict().items() if k not in EXECUTION_SECTIONS + LABEL_SECTIONS + VIEW_SECTIONS}
    for section, key in EXECUTION_KEYS:
        d.get(section, {}).pop(key, None)
    for (section, key), neutral in IDENTITY_DEFAULTS:
        if d.get(section, {}).get(key, neutral) == neutral:
            d.get(section, {}).pop(key, None)
    return d


class ConfigError(ValueError):
    """A config key holds a value that cannot work; the message names key, value and what is valid."""


def split_spec(spec) -> tuple[pathlib.Path, str | None]:
    """'file.py:ARG' -> (file.py, 'ARG'); any other spec -> (path, None)."""
    text = str(spec)
    at = text.find(".py:")
    if at < 0:
        return pathlib.Path(text), None
    path, arg = pathlib.Path(text[:at + 3]), text[at + 4:]
    if not arg:
        raise ConfigError(f"config {text!r}: nothing after ':'; give get_config's argument ({path}:ARG) or "
                          f"drop the ':'")
    return path, arg


def load_py(spec) -> ml_collections.ConfigDict:
    """What a Python config file's get_config() (or get_config(ARG) for 'file.py:ARG') returns, as
    written (not laid over the defaults)."""
    path, arg = split_spec(spec)
    if path.suffix != ".py":
        raise ConfigError(f"{path}: a config here must be a Python file (.py) with get_config()")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (" (it is a directory)" if path.is_dir() else ""))
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{path}: line {e.lineno}: SyntaxError: {e.msg}; fix the file") from None
    except Exception as e:  # the file is user code: whatever it raises is a broken config
        raise ConfigError(f"{path}: raised {_error_at(e, path)} while loading; fix the file") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{path} defines no get_config() returning a ConfigDict")
    args = _get_config_args(module.get_config, path, arg)
    try:
        written = module.get_config(*args)
    except Exception as e:
        raise ConfigError(f"{path}: get_config({', '.join(map(repr, args))}) raised {_error_at(e, path)}; "
                          "fix the file") from None
    return _mapping(written, f"{path}: get_config()", "returned")


def _get_config_args(get_config, path: pathlib.Path, arg: str | None) -> tuple:
    """(arg,) or (): what get_config is called with; a ConfigError when its signature disagrees."""
    import inspect
    args, signature = () if arg is None else (arg,), "(...)"
    try:
        signature = inspect.signature(get_config)
        signature.bind(*args)
    except TypeError:
        if arg is None:
            raise ConfigError(f"{path}: get_config{signature} needs an argument; pass it as "
                              f"--config={path}:ARG") from None
        raise ConfigError(f"{path}: get_config() takes no argument, but {arg!r} was given ({path}:{arg}); "
                          f"drop ':{arg}' or give get_config a parameter") from None
    except ValueError:  # no signature to read (a builtin): call it as asked
        pass
    return args


def _error_at(e: BaseException, path: pathlib.Path) -> str:
    """'KeyError: 'x' (line 3)': an exception raised by a config file, with its deepest line in that file."""
    import traceback
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if pathlib.Path(f.filename).resolve() == path.resolve()]
    return f"{type(e).__name__}: {e}" + (f" (line {lines[-1]})" if lines else "")


def _mapping(value, what: str, verb: str = "holds"):
    """`value` when it is a dict or ConfigDict; else a ConfigError saying what `what` holds instead."""
    if not isinstance(value, (dict, ml_collections.ConfigDict)):
        raise ConfigError(f"{what} {verb} {_short(value)} (type {type(value).__name__}); expected a mapping "
                          "of keys to values (a dict or ConfigDict), e.g. {\"train\": {\"tokens\": 2000000}}")
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load(path, overrides: list[str] | tuple = ()) -> ml_collections.ConfigDict:
    """Load a .py (or 'file.py:ARG') or .json config laid over defaults() and apply
    `--config.a.b=value` overrides."""
    spec = path
    path, _ = split_spec(spec)
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            written = _mapping(json.loads(path.read_text()), str(path))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot be read ({e})") from None
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


def overlay(base, written, source: str, prefix: str = "") -> ml_collections.ConfigDict:
    """Lay `written` (a possibly partial, nested ConfigDict or dict) over `base` in place; returns base.

    A key `base` lacks, or a value of another type than the default's (ints are fine for floats,
    lists for tuples), is a ConfigError naming `source` and the key. An empty section of `base` is
    a free-form mapping: it takes `written`'s keys as they are.
    """
    _mapping(written, f"{source}: {prefix.rstrip('.') or 'the config'}")
    if isinstance(base, ml_collections.ConfigDict) and not base.keys():
        base.update(written)
        return base
    for key, value in written.items():
        name = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"{source}: unknown config key {name!r}; valid keys here: {sorted(base.keys())}")
        old = base[key]
        if isinstance(old, ml_collections.ConfigDict):
            if not isinstance(value, (dict, ml_collections.ConfigDict)):
                raise ConfigError(f"{source}: {name}={value!r}: {name} is a section; set its keys instead")
            overlay(old, value, source, prefix=f"{name}.")
            continue
        if isinstance(value, list) and isinstance(old, tuple):
            value = _tuples(value)
        try:
            base[key] = value
        except TypeError:
            raise ConfigError(f"{source}: {name}={value!r} is a {type(value).__name__}; the default "
                              f"{old!r} is a {type(old).__name__}") from None
    return base


def _tuples(value):
    """JSON lists back to the tuples a config holds (nested pairs included)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


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
