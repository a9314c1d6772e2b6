"""`scaling forecast` with the run's config: the sweep's ladder and rules give the predicted-optimal
run (launch.sweep.spec_for), hashed as the trainer hashes it (scaling.config.config_hash).

    scaling forecast sweeps/demo_cpu --target-flops 3.2e12 --out f/forecast.json   # + f/forecast.config.json
    scaling forecast points.csv --target-flops 1e20 --out f.json --sweep experiments/x.py

The sweep config is `--sweep FILE`, else the `source` the sweep directory's manifest names; a CSV
without --sweep gets a forecast without a config.
"""
from __future__ import annotations

import pathlib

import ml_collections

from scaling import rundir


def sweep_source(sweep_dir) -> str | None:
    """The sweep config file named by SWEEP_DIR's manifest, or None when it names none."""
    source = (rundir.read_manifest(sweep_dir) or {}).get("source")  # RunDirError names a corrupt file
    return str(source) if source else None


def config_hash(config: dict) -> str:
    """The trainer's identity hash of a resolved config given as a plain dict."""
    from scaling.config import config_hash as hash_resolved
    return hash_resolved(ml_collections.ConfigDict(config))


def spec_maker(cfg, target_flops: float):
    """(N*, D*) -> the RunSpec of the sweep `cfg`'s rules for that run, labelled with the budget."""
    from launch import sweep
    return lambda n, d: sweep.spec_for(cfg, n, d, budget=float(target_flops))


def make_config(source, sweep_file, target_flops):
    """forecast_cli's hook: the sweep config from --sweep or the manifest -> (N*, D*) -> config dict."""
    from launch import sweep
    path = pathlib.Path(source)
    sweep_file = sweep_file or (sweep_source(path) if path.is_dir() else None)
    if sweep_file is None:
        if path.is_dir():
            raise ValueError(f"{path}: its {rundir.SWEEP_MANIFEST} names no sweep config; pass --sweep FILE")
        return None
    make = spec_maker(sweep.load_sweep(sweep_file), target_flops)
    return lambda n, d: make(n, d).config.to_dict()


def forecast_main(argv: list[str]) -> int:
    """`scaling forecast`: analysis.forecast_cli's command with the sweep-config hooks; --flagfile FILE
    is read as in `scaling train` (scaling/flags.py), and --sweep takes FILE.py:ARG variants."""
    import sys

    from analysis import forecast_cli
    from scaling import flags
    from scaling.provenance import git_state
    try:
        argv = flags.expand_flagfiles(argv)
    except flags.FlagError as e:
        print(f"scaling forecast: error: {e}", file=sys.stderr)
        return 2
    sha, dirty = git_state()
    return forecast_cli.forecast_main(argv, make_config=make_config, hash_config=config_hash,
                                      git_sha=f"{sha}+dirty" if sha and dirty else sha)
