"""CPU hyperparameter sweep: an LR x batch grid at each of three FLOP budgets, for fitted eta*(C) and B*(C).

    scaling sweep experiments/hparams_cpu.py --dry-run              # the plan, with each run's LR, batch, source
    scaling sweep experiments/hparams_cpu.py --parallel 2           # 3 budgets x 5 LRs x 3 batches = 45 runs
    scaling hparams-fit sweeps/hparams_cpu --out sweeps/hparams_cpu/fit.json
    # feed back: a sweep with c.sweep.hparams.fit_file = "sweeps/hparams_cpu/fit.json" takes its LR and
    # batch from the fitted laws (the file's hash in every run id)

One shape (L2 d24, ~20k total parameters: the demo's middle size), byte-level sotu, seq_len 64;
budgets C = 6ND of 2.5e10, 5e10 and 1e11 FLOPs (D = 0.2M..0.8M tokens). Per budget: Adam LR = 3e-3 x
(1/4, 1/2, 1, 2, 4) (sweep.hparams.lr_multipliers over the demo's LR) and batch = 16 x (1/2, 1, 2)
sequences (8, 16, 32). With a single shape the budget axis is a data axis: eta*(C) here is eta* vs
D at fixed N, not DeepSeek's compute-optimal frontier.
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.data = dict(seq_len=64)
    c.train = dict(batch_size=16, eval_tokens=32_768, log_every=25)
    c.checkpoint = dict(every_steps=500)
    c.optim = dict(lr=3e-3, warmup_steps=10)  # warmup replaced per run by sweep.rules.warmup_fraction

    c.sweep = s = ml_collections.ConfigDict()
    s.kind = "isoflop"
    s.budgets = (2.5e10, 5e10, 1e11)
    s.flop_convention = "6nd"
    s.min_steps = 50
    s.shapes = h = ml_collections.ConfigDict()
    h.n_targets = (20e3,)
    h.aspect = 12.0
    h.head_dim = 8
    h.max_layers = 12
    s.rules = r = ml_collections.ConfigDict()
    r.warmup_fraction = 0.05
    r.eval_every_fraction = 1.0  # evaluate at the end only
    s.hparams = p = ml_collections.ConfigDict()
    p.lr_multipliers = (0.25, 0.5, 1.0, 2.0, 4.0)
    p.batch_multipliers = (0.5, 1.0, 2.0)
    s.est_flops_per_s = 1e10
    s.overhead_s = 15.0
    return c
