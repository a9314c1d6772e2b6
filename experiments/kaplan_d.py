"""Kaplan-style L(D) sweep on GPUs: one 560M-parameter model at 7 token counts (0.3B..20B).

    scaling sweep experiments/kaplan_d.py --backend skypilot --dry-run   # plan + task YAML
    scaling sweep experiments/kaplan_d.py --backend skypilot --cloud.bucket=gs://B/scaling  # launch
    scaling sync sweeps/kaplan_d                                      # results back from the bucket
    scaling fit sweeps/kaplan_d --law kaplan_d                           # on the synced results

Kaplan et al. (2020) fit L(D) = (D_c / D)^alpha_D for a model large enough that N is not the
bottleneck. One shape (24 layers, d_model 1280, head_dim 64; 476M non-embedding parameters,
560M total) sees D = 0.3B..20B tokens, each run with its own cosine schedule decayed over exactly its D (so this is
7 runs, not one run's learning curve: Chinchilla's correction of Kaplan). Data order is nested:
a shorter run sees a prefix of a longer run's tokens. Runs on 2 nodes of 8x H100 (spot, multi-node
data parallel; scaling.distributed takes the coordinator from SKYPILOT_NODE_IPS/NUM_NODES/NODE_RANK).
Model family, corpus, batch (0.5M tokens) and eval as in experiments/kaplan_n.py; corpus: see
experiments/base.py `cloud_lm`.

Time: 7 runs, 1.4e20 training FLOPs in all; the plan estimates 7.2 hours of 16-H100 time at an
assumed 40% MFU plus 10 minutes per run. Expected result: loss falling as a power law in D with
alpha_D near Kaplan's 0.095 (the exponent depends on the corpus and tokenizer).
"""
import ml_collections

from experiments.base import CORPUS_MOUNTS, cloud_lm


def get_config():
    c = cloud_lm(seq_len=1024)
    c.train.batch_size = 512  # 0.5M tokens per step, as in the L(N) sweep
    c.optim = dict(lr=6e-4)  # the single shape keeps it (no sweep.rules.lr_ref)

    c.sweep = s = ml_collections.ConfigDict()
    s.kind = "grid"
    s.tokens = (3e8, 6e8, 1.2e9, 2.5e9, 5e9, 1e10, 2e10)
    s.min_steps = 200
    s.shapes = dict(explicit=((24, 1280),))
    s.rules = dict(warmup_fraction=0.01, eval_every_fraction=0.1)
    s.est_flops_per_s = 16 * 989e12 * 0.4
    s.overhead_s = 600.0

    c.cloud = dict(accelerator="H100:8", runtime_version="", num_nodes=2, chips=16, peak_flops_per_chip=989e12,
                   data_mounts=CORPUS_MOUNTS)  # setup: uv env with jax[cuda12] (launch/skypilot.py)
    return c
