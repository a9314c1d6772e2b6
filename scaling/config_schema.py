"""The run config's schema: the trainer's defaults, the valid values of every enumerated key, which
sections and keys are outside a run's identity, and the error for a value that cannot work.

A config is an ml_collections ConfigDict with the keys of `defaults()`. The valid values of every
enumerated key are defined here once; the model and the optimizer read them from here (through
scaling.config, which validates with them). JAX-free, like the rest of the config modules, so a
planner can validate every run of a sweep without loading JAX.
"""
import ml_collections


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


def resolve_attention(m, platform: str | None) -> str:
    """The attention implementation model config `m` runs on `platform` ('cpu', 'gpu'/'cuda', 'tpu'):
    m.attention unless 'auto', which picks 'blocked' on CPU, 'cudnn' on GPU when it can run it (bf16
    compute, head_dim a multiple of 8 up to 128) and 'xla' elsewhere. platform None (not known, e.g.
    a plan before its devices exist) resolves 'auto' as an accelerator's 'xla'."""
    impl = m.get("attention", "auto")
    if impl != "auto":
        return impl
    if platform == "cpu":
        return "blocked"
    head_dim = m.d_model // m.n_heads
    fused_ok = m.compute_dtype == "bfloat16" and head_dim % 8 == 0 and head_dim <= 128
    return "cudnn" if platform in ("gpu", "cuda") and fused_ok else "xla"

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


class ConfigError(ValueError):
    """A config key holds a value that cannot work; the message names key, value and what is valid."""
