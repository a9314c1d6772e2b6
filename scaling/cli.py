"""`scaling` command line: one entry point, each subcommand owned by the module that does the work.

    scaling train --config experiments/base.py --config.model.d_model=64 --workdir runs/x
    scaling data prepare --help
    scaling sweep experiments/demo_cpu.py [--dry-run]
    scaling status SWEEP_DIR
    scaling fit SWEEP_DIR_OR_CSV --law chinchilla
    scaling reproduce chinchilla --data PATH
    scaling demo
"""
import importlib
import sys

# subcommand -> (module, function, one-line help). Each function takes argv (list[str]) -> int.
COMMANDS = {
    "train": ("scaling.train_cli", "main", "train one model from a config file"),
    "data": ("scaling.data.cli", "main", "prepare a corpus (text -> token file + sidecar)"),
    "sweep": ("launch.cli", "sweep_main", "plan (--dry-run) or run a sweep"),
    "status": ("launch.cli", "status_main", "status table of a sweep directory"),
    "fit": ("analysis.cli", "fit_main", "fit scaling laws to a sweep directory or CSV"),
    "reproduce": ("analysis.cli", "reproduce_main", "reproduce a paper's fit and figures"),
    "demo": ("launch.demo", "main", "the CPU demo: corpus -> sweep -> fits -> report"),
}


def _usage() -> str:
    lines = ["usage: scaling COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"scaling: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    fn = getattr(importlib.import_module(module), func)
    return int(fn(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
