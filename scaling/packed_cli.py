"""`scaling train-pack`: train same-shape runs as one packed job (also `python -m scaling train-pack`).

    scaling train-pack --config R1/launch_config.json --workdir R1 --config R2/launch_config.json --workdir R2

One --config (a .py with get_config() or a .json config) per --workdir, paired in order; the
members must differ only in scaling.packed.PACKED_KEYS (else a one-line error naming the keys).
Each workdir becomes an ordinary run directory (scaling/rundir.py); a rerun resumes the pack,
skipping members already finished.

Exit status: 0 when every member finished ok, stopped as asked (--stop-after-steps), or failed
with a non-finite loss that is recorded in its result.json (the other members trained on);
2 for a bad command line or config (nothing trained); 1 when the pack itself failed (each
unfinished member's result.json says why); 130 when interrupted (rerun to resume).
"""
import argparse
import pathlib
import sys


def main(argv: list[str]) -> int:
    """Parse the member pairs, load their configs and train the pack."""
    parser = argparse.ArgumentParser(prog="scaling train-pack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[], help="a member's config (repeat per member)")
    parser.add_argument("--workdir", action="append", default=[], help="a member's run directory (repeat per member)")
    parser.add_argument("--stop-after-steps", type=int, default=None,
                        help="checkpoint every member and exit after this step (testing resume)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if not args.config or len(args.config) != len(args.workdir):
        parser.error(f"give one --config per --workdir (got {len(args.config)} --config and "
                     f"{len(args.workdir)} --workdir)")
    if args.stop_after_steps is not None and args.stop_after_steps < 1:
        parser.error(f"--stop-after-steps={args.stop_after_steps}: must be >= 1 (a step to stop after)")
    workdirs = [pathlib.Path(w) for w in args.workdir]
    for w in workdirs:
        if w.exists() and not w.is_dir():
            parser.error(f"--workdir {w} is an existing file; give a run directory (new, or one to resume)")

    from scaling import config as cfg_lib
    try:
        configs = [cfg_lib.load(c) for c in args.config]
    except cfg_lib.ConfigError as e:
        print(f"scaling train-pack: {e}", file=sys.stderr)
        return 2

    from scaling.train_cli import enable_compilation_cache, remove_if_nothing_to_resume
    enable_compilation_cache()
    from scaling.packed_train import train_pack
    fresh = [not w.exists() for w in workdirs]
    try:
        results = train_pack(configs, workdirs, stop_after_steps=args.stop_after_steps, verbose=not args.quiet)
    except cfg_lib.ConfigError as e:
        for w, f in zip(workdirs, fresh):
            remove_if_nothing_to_resume(w, f)
        print(f"scaling train-pack: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nscaling train-pack: interrupted; rerun the same command to resume the pack from its members' "
              "last checkpoints", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # OSError: disk full, unreadable corpus, ...
        for w, f in zip(workdirs, fresh):
            remove_if_nothing_to_resume(w, f)
        print(f"scaling train-pack: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    for w, r in zip(workdirs, results):
        if r.get("status") == "failed":
            print(f"scaling train-pack: {w} failed: {r.get('error')}", file=sys.stderr)
    return 0
