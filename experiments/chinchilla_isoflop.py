"""Chinchilla-style isoFLOP grid on cloud TPUs: 5 budgets 1e18..1e20 FLOPs x a ladder of shapes.

    scaling sweep experiments/chinchilla_isoflop.py --backend skypilot --dry-run   # plan + task YAML
    scaling sweep experiments/chinchilla_isoflop.py --backend skypilot --cloud.bucket=gs://B/scaling  # launch
    scaling sync sweeps/chinchilla_isoflop                            # results back from the bucket
    scaling fit sweeps/chinchilla_isoflop --law chinchilla                         # on the synced results

Corpus: the largest run (1e20 FLOPs, 18 layers x d_model 1152) trains on 46.0G tokens, so without
repetition the corpus needs >= 47.0G bpe:32768 tokens (2% of documents held out for eval): ~200 GB
of text at ~4.3 bytes/token. Prepare it once straight into the bucket path the runs mount (see
experiments/base.py `cloud_lm` and the README's "A corpus for the cloud sweep"). The bucket,
accelerator, region (cloud.infra) and spot policy are overridden with --cloud.KEY=VALUE.

Memory: every block is rematerialised (model.remat='full'): the plan estimates 1.5-6.5 GiB per v5e
chip (16 GiB); without remat 16 of the 26 runs would need 17-103 GiB (dense T x T attention scores).

Time: 26 runs, 8.2e20 training FLOPs in all; the plan estimates 2.1 days of v5e-64 pod time at an
assumed 40% MFU plus 10 minutes per run (the managed jobs run side by side). Expected result: each
budget's loss minimum inside its shape range, and compute-optimal N_opt(C), D_opt(C) growing about
equally with C (Hoffmann et al. 2022: exponents near 0.5, ~20 tokens per parameter).

Grid: D = C / (6 N) with N the TOTAL parameter count (Hoffmann et al. 2022 use 6ND with total N);
shapes d_model = 64 * n_layers (head_dim 128), targets 30M..2B total params; a (budget, shape)
point is kept when 2 <= D/N <= 200, which leaves each budget 5-7 shapes around its optimum
(D/N ~ 20), a diagonal band like Chinchilla's Figure 3. lr falls as N^-0.25 from 3e-3 at 100M
non-embedding parameters and the batch grows as D^0.25 from 256 x 2048 tokens at 20B tokens
(assumptions to tune, written as data in sweep.rules). Runs: spot TPU v5e-64 pods (16 hosts; one
SkyPilot node, every host runs the trainer), checkpoints in the bucket, FAILOVER recovery.
"""
import ml_collections

from experiments.base import CORPUS_MOUNTS, cloud_lm


def get_config():
    c = cloud_lm(seq_len=2048)
    c.model.qk_norm = True
    c.model.remat = "full"  # without it 16 of 26 runs exceed a v5e's 16 GiB (the plan's mem/dev column)
    c.train.eval_every = 1000
    c.checkpoint = dict(every_steps=250)  # spot: lose at most 250 steps to a preemption

    c.sweep = s = ml_collections.ConfigDict()  # kind 'isoflop', flop_convention '6nd': the defaults
    s.budgets = (1e18, 3e18, 1e19, 3e19, 1e20)
    s.tokens_per_param = (2.0, 200.0)
    s.min_steps = 200
    s.shapes = dict(n_targets=(30e6, 50e6, 80e6, 130e6, 200e6, 320e6, 500e6, 800e6, 1.3e9, 2e9),
                    head_dim=128, max_layers=48)
    s.rules = r = ml_collections.ConfigDict()
    r.lr_ref = 3e-3
    r.lr_exponent = -0.25
    r.batch_ref = 256
    r.batch_d_ref = 2e10
    r.batch_exponent = 0.25
    r.batch_multiple = 64
    r.batch_max = 1024
    r.warmup_fraction = 0.02
    r.eval_every_fraction = 0.1
    s.est_flops_per_s = 64 * 197e12 * 0.4  # the local plan's estimate; --backend skypilot uses cloud's
    s.overhead_s = 600.0

    c.cloud = dict(accelerator="tpu-v5litepod-64", runtime_version="v2-alpha-tpuv5-lite", chips=64,
                   data_mounts=CORPUS_MOUNTS)
    return c
