"""Base config: one small decoder-only LM on the embedded corpus (byte-level).

Run it:
    scaling train --config experiments/base.py --workdir runs/base
    scaling train --config experiments/base.py --config.model.d_model=128 --workdir runs/d128

Every key below is part of the run's identity (its config hash). Units: `train.tokens` is D,
training tokens seen; batch sizes are in sequences of `data.seq_len` tokens.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
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

    c.optim = o = ml_collections.ConfigDict()
    o.lr = 3e-3
    o.schedule = "cosine"  # cosine | wsd | constant
    o.warmup_steps = 50
    o.min_lr_ratio = 0.1  # floor of the decay, as a fraction of lr
    o.decay_fraction = 0.2  # wsd only: final fraction of steps spent decaying
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
    return c
