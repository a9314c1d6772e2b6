"""`python -m scaling`: the trainer's own commands, run on every host of a training job.

    python -m scaling train --config experiments/base.py --config.model.d_model=64 --workdir runs/x
    python -m scaling data prepare --help

The user-facing `scaling` command (these plus sweep, status, fit, reproduce, demo) is cli/main.py,
which reuses `dispatch` with a longer command table.
"""
import importlib
import sys

# subcommand -> (module, function, one-line help). Each function takes argv (list[str]) -> int.
COMMANDS = {
    "train": ("scaling.train_cli", "main", "train one model from a config file"),
    "train-pack": ("scaling.packed_cli", "main", "train same-shape runs as one packed job (one step for all members)"),
    "data": ("scaling.data.cli", "main", "prepare a corpus (text -> token file + sidecar)"),
    "worker": ("scaling.worker", "main", "run train jobs read from stdin, one after another (the sweep runner's "
               "warm worker)"),
}


def usage(prog: str, commands: dict) -> str:
    """The command list printed by `PROG --help` and after an unknown command."""
    lines = [f"usage: {prog} COMMAND [ARGS...]   |   {prog} --version", "", "commands:"]
    width = max(map(len, commands))
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in commands.items()]
    return "\n".join(lines)


def version_line(prog: str) -> str:
    """'PROG 0.1.0 (git <sha>, dirty)': the installed package version and the code's commit."""
    import importlib.metadata

    from scaling.provenance import git_state
    try:
        version = importlib.metadata.version("scaling")
    except importlib.metadata.PackageNotFoundError:
        version = "(not installed)"
    sha, dirty = git_state()
    code = "git sha unknown (not a git checkout)" if sha is None else \
        f"git {sha}{', uncommitted changes' if dirty else ', clean'}"
    return f"{prog} {version} ({code})"


def dispatch(prog: str, commands: dict, argv: list[str] | None) -> int:
    """Run the subcommand named by argv[0] from `commands`, importing only its module; returns its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(prog, commands))
        return 0
    if argv[0] in ("--version", "-V", "version"):
        print(version_line(prog.split()[-1] if prog.startswith("python -m") else prog))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"{prog}: unknown command {name!r}\n\n{usage(prog, commands)}", file=sys.stderr)
        return 2
    module, func, _ = commands[name]
    fn = getattr(importlib.import_module(module), func)
    return int(fn(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    """`python -m scaling COMMAND ...`: train or data."""
    return dispatch("python -m scaling", COMMANDS, argv)
