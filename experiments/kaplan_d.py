"""Kaplan-style L(D) sweep on GPUs: one 560M-parameter model at 7 token counts (0.3B..20B).

    scaling sweep experiments/kaplan_d.py --backend skypilot --dry-run   # plan + task YAML
    scaling sweep experiments/kaplan_d.py --backend skypilot             # launch (managed jobs)
    scaling fit sweeps/kaplan_d --law kaplan_d                           # after syncing the bucket

Kaplan et al. (2020) fit L(D) = (D_c / D)^alpha_D for a model large enough that N is not the
bottleneck. One shape (24 layers, d_model 1280, head_dim 64; 476M non-embedding parameters,
560M total) sees D = 0.3B..20B tokens, each run with its own cosine schedule decayed over exactly its D (so this is
7 runs, not one run's learning curve: Chinchilla's correction of Kaplan). Data order is nested:
a shorter run sees a prefix of a longer run's tokens. Runs on 2 nodes of 8x H100 (spot, multi-node
data parallel; scaling.distributed takes the coordinator from SKYPILOT_NODE_IPS/NUM_NODES/NODE_RANK).
Corpus preparation as in experiments/chinchilla_isoflop.py.
"""
from experiments.kaplan_n import get_config as kaplan_n_config
from launch.skypilot import cloud_config


def get_config():
    c = kaplan_n_config()  # same model family, corpus, batch (0.5M tokens) and eval as the L(N) sweep
    c.optim.lr = 6e-4
    s = c.sweep
    s.tokens = (3e8, 6e8, 1.2e9, 2.5e9, 5e9, 1e10, 2e10)
    s.shapes.n_targets = ()
    s.shapes.explicit = ((24, 1280),)
    s.rules.lr_ref = 0.0  # keep optim.lr for the single shape
    s.est_flops_per_s = 16 * 989e12 * 0.4
    c.cloud = cloud_config(accelerator="H100:8", runtime_version="", num_nodes=2, chips=16,
                           peak_flops_per_chip=989e12, setup='pip install -e . && pip install "jax[cuda12]==0.10.2"',
                           data_mounts=(("/data", "gs://YOUR-BUCKET/corpora"),))
    return c
