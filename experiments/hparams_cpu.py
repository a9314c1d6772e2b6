"""CPU hyperparameter sweep: an LR x batch grid at each of three FLOP budgets, for fitted eta*(C) and B*(C).

    scaling sweep experiments/hparams_cpu.py --dry-run              # the plan, with each run's LR, batch, source
    scaling sweep experiments/hparams_cpu.py --parallel 2           # 3 budgets x 5 LRs x 3 batches = 45 runs
    scaling hparams-fit sweeps/hparams_cpu --out experiments/hparams_cpu_fit.json
    scaling sweep experiments/demo_cpu.py:tuned --parallel 2        # the demo's isoFLOP grid, LR from that file

One shape (L2 d24, ~20k total parameters: the demo's middle size), byte-level sotu, seq_len 64;
budgets C = 6ND of 2.5e10, 5e10 and 1e11 FLOPs (D = 0.2M..0.8M tokens). Per budget: Adam LR = 3e-3 x
(1/4, 1/2, 1, 2, 4) (sweep.hparams.lr_multipliers over the demo's LR) and batch = 16 x (1/2, 1, 2)
sequences (8, 16, 32). With a single shape the budget axis is a data axis: eta*(C) here is eta* vs
D at fixed N, not DeepSeek's compute-optimal frontier.

Time: estimated 16.9 min sequential on a quiet machine; measured 23.0 min wall with --parallel 2 on
2 cores shared with other jobs (load average 10-13). Result (held-out loss, nats/token): the best
batch is the grid's smallest (8) at every budget, so B*(C) is reported as on the grid's EDGE and not
fitted; the optimal LR at batch 8 is 6.5e-3, 5.1e-3, 1.0e-2 at the three budgets (90% delta-method
intervals 5.7e-4..7.5e-2, 3.4e-3..7.5e-3, 1.4e-3..7.2e-2: the loss-vs-LR curves are noisy this early
in training), and eta*(C) = 3.0e-6 C^0.31 with a 90% t interval on the exponent of -2.2..+2.8
(3 budgets, 1 dof): this grid does not determine how eta* scales. The fit file it wrote is
experiments/hparams_cpu_fit.json (sha256 7ea8d64f...), which experiments/demo_cpu.py:tuned reads.
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
    s.budgets = (1.25e10, 2.5e10, 5e10, 1e11)
    s.flop_convention = "6nd"
    s.min_steps = 50
    s.shapes = h = ml_collections.ConfigDict()
    h.n_targets = (20e3,)
    h.aspect = 12.0
    h.head_dim = 8
    h.max_layers = 12
    s.rules = r = ml_collections.ConfigDict()
    r.warmup_fraction = 0.05
    r.batch_multiple = 1  # batches of 2 and 4 sequences (the default rounds to multiples of 8)
    r.eval_every_fraction = 1.0  # evaluate at the end only
    s.hparams = p = ml_collections.ConfigDict()
    p.lr_multipliers = (0.25, 0.5, 1.0, 2.0, 4.0)
    p.batch_multipliers = (0.125, 0.25, 0.5, 1.0)  # 2, 4, 8, 16 sequences
    s.est_flops_per_s = 1e10
    s.overhead_s = 15.0
    return c
