"""Kaplan-style L(N) sweep on a TPU v4-32 pod: 8 model sizes (non-embedding N 1M..1B), one large D.

    scaling sweep experiments/kaplan_n.py --backend skypilot --dry-run   # plan + task YAML
    scaling sweep experiments/kaplan_n.py --backend skypilot --cloud.bucket=gs://B/scaling  # launch
    scaling sync sweeps/kaplan_n                                      # results back from the bucket
    scaling fit sweeps/kaplan_n --law kaplan_n                           # on the synced results

Kaplan et al. (2020) fit L(N) = (N_c / N)^alpha_N with N the NON-embedding parameter count, each
model trained long enough that data is not the bottleneck; here every size sees D = 20B tokens
(more than 20 tokens per parameter up to the largest size), with 10 evaluations per run for the
learning curves. Shapes: d_model = 64 * n_layers (Kaplan's d/L ~ 50-100 region where the loss is
flat in aspect ratio), head_dim 64. Corpus: see experiments/base.py `cloud_lm`.
Runs on spot TPU v4-32 pods (4 hosts, one SkyPilot node; jax.distributed.initialize() with no
arguments on every host), checkpoints in the bucket, FAILOVER recovery.

Time: 8 runs, 3e20 training FLOPs in all; the plan estimates 24.7 hours of v4-32 pod time at an
assumed 40% MFU plus 10 minutes per run. Expected result: a power law in N over three decades with
alpha_N near Kaplan's 0.076 (the exponent depends on the corpus and tokenizer).
"""
import ml_collections

from experiments.base import CORPUS_MOUNTS, cloud_lm


def get_config():
    c = cloud_lm(seq_len=1024)
    c.train.batch_size = 512  # 0.5M tokens per step for every size (Kaplan: fixed 0.5M-token batches)

    c.sweep = s = ml_collections.ConfigDict()
    s.kind = "grid"
    s.tokens = (2e10,)
    s.min_steps = 200
    s.shapes = dict(n_targets=(1e6, 3e6, 1e7, 3e7, 1e8, 3e8, 6e8, 1e9),
                    n_kind="nonembed",  # Kaplan's N
                    max_layers=48)
    s.rules = dict(lr_ref=1e-3, lr_exponent=-0.2, batch_multiple=32, warmup_fraction=0.01,
                   eval_every_fraction=0.1)
    s.est_flops_per_s = 32 * 275e12 * 0.4
    s.overhead_s = 600.0

    c.cloud = dict(accelerator="tpu-v4-32", runtime_version="tpu-ubuntu2204-base", chips=32,
                   peak_flops_per_chip=275e12, data_mounts=CORPUS_MOUNTS)
    return c
