"""Chinchilla-style isoFLOP grid on cloud TPUs: 5 budgets 1e18..1e20 FLOPs x a ladder of shapes.

    scaling sweep experiments/chinchilla_isoflop.py --backend skypilot --dry-run   # plan + task YAML
    scaling sweep experiments/chinchilla_isoflop.py --backend skypilot             # launch (managed jobs)
    scaling fit sweeps/chinchilla_isoflop --law chinchilla                         # after syncing the bucket

Before launching: prepare the corpus once with `scaling data prepare` (BPE, 32k vocab) and copy the
prepared directory to gs://YOUR-BUCKET/corpora/fineweb-edu-bpe32k; set cloud.bucket to your bucket.

Grid: D = C / (6 N) with N the TOTAL parameter count (Hoffmann et al. 2022 use 6ND with total N);
shapes d_model = 64 * n_layers (head_dim 128), targets 30M..2B total params; a (budget, shape)
point is kept when 2 <= D/N <= 200, which leaves each budget 5-7 shapes around its optimum
(D/N ~ 20), a diagonal band like Chinchilla's Figure 3. lr falls as N^-0.25 from 3e-3 at 100M
non-embedding parameters and the batch grows as D^0.25 from 256 x 2048 tokens at 20B tokens
(assumptions to tune, written as data in sweep.rules). Runs: spot TPU v5e-64 pods (16 hosts; one
SkyPilot node, every host runs the trainer), checkpoints in the bucket, FAILOVER recovery.
"""
from experiments.base import get_config as base_config
from launch.skypilot import cloud_config
from launch.sweep import sweep_defaults


def get_config():
    c = base_config()
    c.model.vocab_size = 32768
    c.model.tie_embeddings = False
    c.model.compute_dtype = "bfloat16"
    c.model.qk_norm = True
    c.data.corpus = "/data/fineweb-edu-bpe32k"  # prepared corpus dir, mounted from the bucket
    c.data.tokenizer = "bpe:32768"
    c.data.seq_len = 2048
    c.train.eval_every = 1000
    c.train.eval_tokens = 4_194_304
    c.train.log_every = 50
    c.checkpoint.every_steps = 250  # spot: lose at most 250 steps to a preemption
    c.mesh.data = 1
    c.mesh.fsdp = -1  # FSDP over all chips of the pod

    c.sweep = s = sweep_defaults()
    s.budgets = (1e18, 3e18, 1e19, 3e19, 1e20)
    s.tokens_per_param = (2.0, 200.0)
    s.min_steps = 200
    s.shapes.n_targets = (30e6, 50e6, 80e6, 130e6, 200e6, 320e6, 500e6, 800e6, 1.3e9, 2e9)
    s.shapes.head_dim = 128
    s.shapes.max_layers = 48
    s.rules.lr_ref = 3e-3
    s.rules.lr_exponent = -0.25
    s.rules.batch_ref = 256
    s.rules.batch_d_ref = 2e10
    s.rules.batch_exponent = 0.25
    s.rules.batch_multiple = 64
    s.rules.batch_max = 1024
    s.rules.warmup_fraction = 0.02
    s.rules.eval_every_fraction = 0.1
    s.est_flops_per_s = 64 * 197e12 * 0.4  # local estimate unused here; the cloud one is below
    s.overhead_s = 600.0

    c.cloud = cloud_config(accelerator="tpu-v5litepod-64", runtime_version="v2-alpha-tpuv5-lite", chips=64,
                           data_mounts=(("/data", "gs://YOUR-BUCKET/corpora"),))
    return c
