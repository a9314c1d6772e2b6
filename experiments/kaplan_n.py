"""Kaplan-style L(N) sweep on a TPU v4-32 pod: 8 model sizes (non-embedding N 1M..1B), one large D.

    scaling sweep experiments/kaplan_n.py --backend skypilot --dry-run   # plan + task YAML
    scaling sweep experiments/kaplan_n.py --backend skypilot             # launch (managed jobs)
    scaling fit sweeps/kaplan_n --law kaplan_n                           # after syncing the bucket

Kaplan et al. (2020) fit L(N) = (N_c / N)^alpha_N with N the NON-embedding parameter count, each
model trained long enough that data is not the bottleneck; here every size sees D = 20B tokens
(more than 20 tokens per parameter up to the largest size), with 10 evaluations per run for the
learning curves. Shapes: d_model = 64 * n_layers (Kaplan's d/L ~ 50-100 region where the loss is
flat in aspect ratio), head_dim 64. Corpus preparation as in experiments/chinchilla_isoflop.py.
Runs on spot TPU v4-32 pods (4 hosts, one SkyPilot node; jax.distributed.initialize() with no
arguments on every host), checkpoints in the bucket, FAILOVER recovery.
"""
from experiments.base import get_config as base_config
from launch.skypilot import cloud_config
from launch.sweep import sweep_defaults


def get_config():
    c = base_config()
    c.model.vocab_size = 32768
    c.model.tie_embeddings = False
    c.model.compute_dtype = "bfloat16"
    c.data.corpus = "/data/fineweb-edu-bpe32k"
    c.data.tokenizer = "bpe:32768"
    c.data.seq_len = 1024
    c.train.batch_size = 512  # 0.5M tokens per step for every size (Kaplan: fixed 0.5M-token batches)
    c.train.eval_tokens = 4_194_304
    c.train.log_every = 50
    c.checkpoint.every_steps = 500
    c.mesh.data = 1
    c.mesh.fsdp = -1

    c.sweep = s = sweep_defaults()
    s.kind = "grid"
    s.tokens = (2e10,)
    s.min_steps = 200
    s.shapes.n_targets = (1e6, 3e6, 1e7, 3e7, 1e8, 3e8, 6e8, 1e9)
    s.shapes.n_kind = "nonembed"  # Kaplan's N
    s.shapes.max_layers = 48
    s.rules.lr_ref = 1e-3
    s.rules.lr_exponent = -0.2
    s.rules.batch_multiple = 32
    s.rules.warmup_fraction = 0.01
    s.rules.eval_every_fraction = 0.1
    s.est_flops_per_s = 32 * 275e12 * 0.4
    s.overhead_s = 600.0

    c.cloud = cloud_config(accelerator="tpu-v4-32", runtime_version="tpu-ubuntu2204-base", chips=32,
                           peak_flops_per_chip=275e12, data_mounts=(("/data", "gs://YOUR-BUCKET/corpora"),))
    return c
