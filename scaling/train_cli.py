"""`scaling train`: train one model from a config file (also `python -m scaling train`).

    scaling train --config experiments/base.py --config.model.d_model=64 --workdir runs/x
    scaling train --config runs/x/config.json --workdir runs/x        # a resolved config (resume)
    scaling train --config my_variants.py:wide --config.model.d_model 64 --workdir runs/x   # get_config("wide")
    scaling train --flagfile run.flags --workdir runs/x              # flags one per line, # comments

Config flags (scaling/flags.py): --config FILE, --config=FILE.py:ARG (get_config(ARG)),
--config.a.b=VALUE or --config.a.b VALUE, --flagfile FILE. Tracking: --config.track.* (TensorBoard
hparams in RUN_DIR/tensorboard; --config.track.wandb=true for Weights & Biases, scaling/tracking.py).

The config is validated once, by scaling.train.train(); an invalid one exits with status 2.

Multi-host: set SCALING_COORDINATOR / SCALING_NUM_PROCESSES / SCALING_PROCESS_ID, or run under
SkyPilot or on a TPU pod; see scaling/distributed.py.
"""
import argparse
import pathlib
import sys


def enable_compilation_cache() -> None:
    """Reuse compiled steps across runs of a sweep (same shapes): halves a small run's start-up on CPU.
    JAX_COMPILATION_CACHE_DIR overrides the location; an empty value turns the cache off."""
    import os
    import pathlib

    import jax

    path = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if path is None:
        base = os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
        path = str(pathlib.Path(base) / "scaling" / "jax")
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def main(argv: list[str]) -> int:
    """Parse the arguments, load the config and train; 0 when the run finished or stopped as asked."""
    parser = argparse.ArgumentParser(prog="scaling train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a .py file with get_config() (FILE.py:ARG calls get_config(ARG)) "
                        "or a .json config; --config.a.b VALUE overrides a key")
    parser.add_argument("--flagfile", help="read more flags from this file (whitespace-separated, # comments)")
    parser.add_argument("--workdir", required=True, help="the run directory (created; resumed if it exists)")
    parser.add_argument("--stop-after-steps", type=int, default=None,
                        help="checkpoint and exit after this step, as a preemption would (testing resume)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--trunk-dir", default=None, help="a WSD branch (train.branch.trunk set): its trunk's run "
                        "directory (default: SWEEP/trunks/runs/<trunk id> beside SWEEP/runs/<workdir>)")
    from scaling import flags
    try:
        given = flags.split(argv)
    except flags.FlagError as e:
        parser.error(str(e))
    args, bad = parser.parse_known_args(given.rest)
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (overrides look like --config.train.tokens=1e6)")
    if given.config is None:
        parser.error("--config is required (e.g. --config experiments/base.py, or in a --flagfile)")
    if args.stop_after_steps is not None and args.stop_after_steps < 1:
        parser.error(f"--stop-after-steps={args.stop_after_steps}: must be >= 1 (a step to stop after)")

    workdir = pathlib.Path(args.workdir)
    if workdir.exists() and not workdir.is_dir():
        parser.error(f"--workdir {workdir} is an existing file; give a run directory (new, or one to resume)")

    from scaling import config as cfg_lib
    try:
        config = cfg_lib.load(given.config, given.overrides)
    except cfg_lib.ConfigError as e:
        print(f"scaling train: {e}", file=sys.stderr)
        return 2
    if args.trunk_dir is not None and not config.train.branch.trunk:
        print("scaling train: --trunk-dir is for a branch run; the config sets no train.branch.trunk", file=sys.stderr)
        return 2

    enable_compilation_cache()
    from scaling import distributed
    try:
        distributed.initialize_from_env()
    except ValueError as e:  # a multi-process launcher that JAX cannot join: refused, not N lone trainers
        print(f"scaling train: {e}", file=sys.stderr)
        return 2
    if config.data.num_workers > 0:  # grain worker processes need parsed absl flags
        from absl import flags
        flags.FLAGS.mark_as_parsed()

    from scaling.run_record import NonFiniteLossError
    from scaling.train import train
    fresh = not workdir.exists()
    try:
        result = train(config, workdir, stop_after_steps=args.stop_after_steps, verbose=not args.quiet,
                       trunk_dir=args.trunk_dir)
    except cfg_lib.ConfigError as e:
        remove_if_nothing_to_resume(workdir, fresh)
        print(f"scaling train: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        remove_if_nothing_to_resume(workdir, fresh)
        print(f"\nscaling train: interrupted; rerun the same command to resume {workdir} from its last "
              "checkpoint", file=sys.stderr)
        return 130
    except (NonFiniteLossError, ValueError, OSError) as e:  # OSError: disk full, unreadable corpus, ...
        if not isinstance(e, NonFiniteLossError):  # a diverged run's metrics are the evidence: kept
            remove_if_nothing_to_resume(workdir, fresh)
        print(f"scaling train: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0 if result.get("status") in ("ok", "stopped") else 1


def remove_if_nothing_to_resume(workdir: pathlib.Path, fresh: bool) -> None:
    """Remove a run directory this command created when it failed before its first checkpoint (e.g.
    a corpus that does not load): its config.json would refuse the corrected config on the next try."""
    from scaling import rundir

    ckpts = workdir / rundir.CHECKPOINTS
    if fresh and workdir.is_dir() and not (ckpts.is_dir() and any(ckpts.iterdir())):
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
