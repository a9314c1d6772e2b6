"""`scaling`: the user-facing command; each subcommand is owned by the module that does the work.

    scaling train --config experiments/base.py --config.model.d_model=64 --workdir runs/x
    scaling data prepare --help
    scaling data prepare --source gs://B/raw/x.jsonl --out gs://B/corpora/x --backend skypilot --nodes 4 --dry-run
    scaling sweep experiments/demo_cpu.py [--dry-run]
    scaling status SWEEP_DIR
    scaling fit SWEEP_DIR_OR_CSV --law chinchilla
    scaling reproduce chinchilla --data PATH
    scaling backtest SWEEP_DIR_OR_CSV --law chinchilla
    scaling forecast SWEEP_DIR_OR_CSV --target-flops C --out FORECAST.json
    scaling score FORECAST.json RUN_DIR_OR_CSV
    scaling demo
    scaling mup-check --widths 32,64,128,256 --out mup_check
    scaling lr-transfer --widths 32,64,128 --steps 200 --out lr_transfer
    scaling hparams-fit sweeps/hparams_cpu --out fits/hparams.json
    scaling --version                     # package version and the git sha of the code (dirty or clean)

Only the chosen subcommand's module is imported, so planning a sweep loads no JAX.
`python -m cli` is the same command.
"""
from scaling import cli as trainer_cli

COMMANDS = {
    **trainer_cli.COMMANDS,
    "data": ("cli.data", "main", "prepare a sharded corpus (locally, or --backend skypilot on cloud nodes)"),
    "sweep": ("launch.cli", "sweep_main", "plan (--dry-run) or run a sweep"),
    "status": ("launch.cli", "status_main", "status table of a sweep directory"),
    "sync": ("launch.sync", "sync_main", "bring a cloud sweep's results back from its bucket"),
    "fit": ("analysis.cli", "fit_main", "fit scaling laws to a sweep directory or CSV"),
    "reproduce": ("analysis.cli", "reproduce_main", "reproduce a paper's fit and figures"),
    "backtest": ("analysis.forecast_cli", "backtest_main", "rollout backtest: fit small budgets, predict larger"),
    "forecast": ("cli.forecast", "forecast_main", "pre-register a forecast (+ the run's config) at a budget"),
    "score": ("analysis.forecast_cli", "score_main", "score a forecast against the run it predicted"),
    "demo": ("cli.demo", "main", "the CPU demo: corpus -> sweep -> fits -> report"),
    "mup-check": ("cli.mup", "mup_check_main", "μP coordinate check: activation sizes vs width, SP and μP"),
    "lr-transfer": ("cli.mup", "lr_transfer_main", "LR x width sweep, SP and μP: does the optimal LR transfer?"),
    "hparams-fit": ("cli.hparams", "fit_main", "optimal LR / batch per group of an LR x batch sweep, and their laws"),
}


def main(argv: list[str] | None = None) -> int:
    """`scaling COMMAND ...`: dispatch to the subcommand's module."""
    return trainer_cli.dispatch("scaling", COMMANDS, argv)
