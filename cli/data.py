"""`scaling data ...`: scaling/data/cli.py, except `prepare ... --backend skypilot`, which launches the
preparation as a SkyPilot job on cloud CPU nodes (launch/data_job.py); `--backend local` is the default."""
import sys

from scaling.data import cli as data_cli


def _backend(argv: list[str]) -> tuple[str, list[str]]:
    """('local' | 'skypilot' | whatever was given, argv without a `--backend local`)."""
    for i, a in enumerate(argv):
        if a == "--backend" and i + 1 < len(argv):
            value, n = argv[i + 1], 2
        elif a.startswith("--backend="):
            value, n = a.split("=", 1)[1], 1
        else:
            continue
        return value, (argv[:i] + argv[i + n:] if value == "local" else argv)
    return "local", argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    backend, rest = _backend(argv)
    if argv[:1] == ["prepare"] and backend != "local":
        from launch import data_job  # argparse refuses a backend other than skypilot

        return data_job.submit_main(rest[1:])
    return data_cli.main(rest)
