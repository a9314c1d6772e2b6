"""Copy run directories between a host's local disk and a bucket, so a bucket holds only complete files.

    scaling sync sweeps/chinchilla_isoflop                  # results of every run, bucket -> here
    scaling sync sweeps/chinchilla_isoflop --checkpoints    # ... and their complete checkpoints
    scaling sync sweeps/x --from gs://b/scaling/x           # the bucket path, when cloud.json is absent
    python -m launch.sync push LOCAL_RUN_DIR gs://b/.../runs/ID [--watch 300]   # on a cloud host

Paths are etils.epath paths: gs://, s3:// and plain local directories (tests use a local directory
as the bucket). What a copy guarantees:
- every file lands under a temporary name and is renamed into place (on object stores each object
  appears whole anyway), so a reader never sees a torn file;
- result.json is copied LAST: when it is in the destination, so is everything it describes;
- checkpoints (only with checkpoints=True) are copied per complete step (those holding
  commit_success.txt), with commit_success.txt last, into `<step>.orbax-checkpoint-tmp-sync`
  then renamed on local destinations, so Orbax never takes a half-copied step for a complete one.
A sweep launched on the cloud records its bucket path in SWEEP_DIR/cloud.json (`write_cloud_record`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from etils import epath

from scaling import rundir

COMMIT = "commit_success.txt"  # Orbax's marker of a complete checkpoint step
RESULT_FILES = (rundir.CONFIG, rundir.METRICS, rundir.FAILED_RESULT, rundir.RESULT)  # RESULT last
SYNC_TMP = ".orbax-checkpoint-tmp-sync"
POLL_S = 2.0  # seconds between looks at the bucket's checkpoints while a run trains


def _is_local(path: epath.Path) -> bool:
    return "://" not in str(path)


def copy_file(src: epath.Path, dst: epath.Path) -> None:
    """Copy one file so that `dst` appears whole or not at all: on a local disk through a temporary
    name and a rename; an object store (gs://, s3://) makes each uploaded object appear whole itself."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    if not _is_local(dst):
        dst.write_bytes(data)
        return
    tmp = dst.parent / f".{dst.name}.sync-tmp"
    tmp.write_bytes(data)
    os.replace(tmp, dst)
    rundir.fsync_dir(str(dst.parent))


def _complete_steps(ckpt_dir: epath.Path) -> dict[str, epath.Path]:
    """{step name: dir} of the complete checkpoint steps (digit names holding commit_success.txt)."""
    if not ckpt_dir.exists():
        return {}
    return {p.name: p for p in ckpt_dir.iterdir() if p.name.isdigit() and (p / COMMIT).exists()}


def _files(d: epath.Path) -> list[epath.Path]:
    """Every file under d (no '**' globbing: object stores refuse it)."""
    out = []
    for p in d.iterdir():
        out += _files(p) if p.is_dir() else [p]
    return out


def _copy_step(src: epath.Path, dst: epath.Path) -> None:
    """One checkpoint step, the commit marker last; on local disks built under a tmp name first."""
    target = dst.parent / f"{dst.name}{SYNC_TMP}" if _is_local(dst) else dst
    if target.exists():
        target.rmtree()
    files = sorted(_files(src), key=lambda p: p.name == COMMIT)
    for f in files:
        copy_file(f, target / f.relative_to(src))
    if target != dst:
        if dst.exists():
            dst.rmtree()
        target.rename(dst)


def copy_checkpoints(src_run: epath.Path, dst_run: epath.Path) -> list[str]:
    """Mirror the complete checkpoint steps of src_run into dst_run; returns the steps copied.
    Steps complete in dst but no longer in src (keep-N removed them) are deleted after the copy."""
    src = _complete_steps(src_run / rundir.CHECKPOINTS)
    dst_dir = dst_run / rundir.CHECKPOINTS
    have = _complete_steps(dst_dir)
    new = sorted((s for s in src if s not in have), key=int)
    for step in new:
        _copy_step(src[step], dst_dir / step)
    for step in set(have) - set(src):
        if src:  # never empty the destination because the source has nothing (yet)
            have[step].rmtree()
    return new


def copy_run(src_run, dst_run, checkpoints: bool = False) -> list[str]:
    """Copy one run's result files (and, if asked, complete checkpoints) src -> dst; result.json last.
    Returns the names copied. A missing source run copies nothing."""
    src_run, dst_run = epath.Path(src_run), epath.Path(dst_run)
    copied = []
    if checkpoints:
        copied += [f"{rundir.CHECKPOINTS}/{s}" for s in copy_checkpoints(src_run, dst_run)]
    for name in RESULT_FILES:
        if (src_run / name).exists():
            copy_file(src_run / name, dst_run / name)
            copied.append(name)
    return copied


def write_cloud_record(sweep_dir, bucket_sweep: str) -> None:
    """Record where a launched sweep's runs live (read by `scaling sync`)."""
    import pathlib

    pathlib.Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    rundir.write_json(pathlib.Path(sweep_dir) / rundir.CLOUD_RECORD, {"bucket": str(bucket_sweep)})


def bucket_of(sweep_dir, given: str | None) -> epath.Path:
    """The bucket path of a sweep: --from if given, else SWEEP_DIR/cloud.json; ValueError naming both."""
    import pathlib

    if given:
        return epath.Path(given)
    rec = rundir.read_json_object(pathlib.Path(sweep_dir) / rundir.CLOUD_RECORD)
    if not rec or not rec.get("bucket"):
        raise ValueError(f"{sweep_dir}/{rundir.CLOUD_RECORD} not found (written when a sweep is launched with "
                         "--backend skypilot); pass --from BUCKET/<sweep name>, e.g. gs://my-bucket/scaling/x")
    return epath.Path(rec["bucket"])


def sync_sweep(bucket_sweep, sweep_dir, checkpoints: bool = False) -> dict[str, list[str]]:
    """Bring every run of a sweep back from the bucket: {run_id: names copied}; sweep.json too if there."""
    bucket_sweep, local = epath.Path(bucket_sweep), epath.Path(sweep_dir)
    if not bucket_sweep.exists():
        raise FileNotFoundError(f"{bucket_sweep}: no such bucket path (is the sweep launched, the bucket right?)")
    if (bucket_sweep / rundir.SWEEP_MANIFEST).exists():
        copy_file(bucket_sweep / rundir.SWEEP_MANIFEST, local / rundir.SWEEP_MANIFEST)
    runs = bucket_sweep / rundir.RUNS
    out = {}
    for run in sorted(runs.iterdir()) if runs.exists() else []:
        out[run.name] = copy_run(run, local / rundir.RUNS / run.name, checkpoints)
    return out


def push_watch(local_run, bucket_run, every_s: float, checkpoints: bool, stop=lambda: False,
               poll_s: float = POLL_S) -> None:
    """Push the run's files every `every_s` seconds until stop(), and also as soon as the bucket holds a
    new complete checkpoint step (Orbax writes there directly): the trainer writes a step's metrics rows
    before it saves the step, so a host lost after a checkpoint leaves the bucket the rows up to it,
    unless it is lost within poll_s (+ the upload) of the commit."""
    last_push, seen = float("-inf"), None
    while not stop():
        steps = set(_complete_steps(epath.Path(bucket_run) / rundir.CHECKPOINTS))
        if steps != seen or time.monotonic() - last_push >= every_s:
            copy_run(local_run, bucket_run, checkpoints)
            last_push, seen = time.monotonic(), steps
        time.sleep(min(poll_s, every_s))


def sync_main(argv: list[str]) -> int:
    """`scaling sync SWEEP_DIR [--from BUCKET] [--checkpoints]`: 0 on success, 2 on bad input."""
    p = argparse.ArgumentParser(prog="scaling sync", description="Bring a cloud sweep's results back from its bucket.")
    p.add_argument("sweep_dir")
    p.add_argument("--from", dest="source", default=None, help="BUCKET/<sweep> (default: SWEEP_DIR/cloud.json)")
    p.add_argument("--checkpoints", action="store_true", help="also copy complete checkpoints (large)")
    args = p.parse_args(argv)
    try:
        copied = sync_sweep(bucket_of(args.sweep_dir, args.source), args.sweep_dir, args.checkpoints)
    except (ValueError, FileNotFoundError) as e:
        print(f"scaling sync: error: {e}", file=sys.stderr)
        return 2
    done = sum(rundir.RESULT in names for names in copied.values())
    print(f"synced {len(copied)} runs into {args.sweep_dir} ({done} with a result.json); "
          f"`scaling status {args.sweep_dir}` / `scaling fit {args.sweep_dir}` read them")
    return 0


def host_main(argv: list[str]) -> int:
    """`python -m launch.sync push|pull SRC DST [--checkpoints] [--watch S]`: the cloud host's side."""
    p = argparse.ArgumentParser(prog="python -m launch.sync")
    p.add_argument("direction", choices=("push", "pull"))
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--checkpoints", action="store_true")
    p.add_argument("--watch", type=float, default=0.0, help="repeat every this many seconds (until killed)")
    args = p.parse_args(argv)
    if args.watch > 0:
        push_watch(args.src, args.dst, args.watch, args.checkpoints)
    copy_run(args.src, args.dst, args.checkpoints)
    return 0


if __name__ == "__main__":
    sys.exit(host_main(sys.argv[1:]))
