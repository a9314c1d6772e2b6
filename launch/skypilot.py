"""Cloud backend: one SkyPilot managed job per run, on TPU VM slices/pods or GPU machines.

    source = source_state(allow_dirty=False)                              # git sha; refuses a dirty tree
    tasks = [build_task(spec, cfg.cloud, sweep_name, source) for spec in specs]   # sky.Task, validated
    print(tasks_yaml(tasks))                                               # what --dry-run shows
    launch(tasks)                                                          # sky.jobs.launch per task

Host environment (`setup_script`): the image's Python is not used (Ubuntu 22.04 TPU images ship
3.10; the pinned JAX stack needs >= 3.11). Setup installs a pinned `uv` (from PyPI with the image's
pip, else uv's standalone installer), a uv-managed CPython (cloud.python; uv's UV_PYTHON /
UV_PYTHON_PREFERENCE override it when the host sets them) in ~/scaling-env, the project from the
synced working tree (the launching commit: its sha is in SCALING_GIT_SHA) and JAX with the
accelerator's extra (jax[tpu] or jax[cuda12], the launching machine's JAX version). Test hook:
SCALING_HOST_PYTHON=<an interpreter with the dependencies> replaces those installs (no downloads).
Run directories (`RUN_SCRIPT`): the trainer writes to a LOCAL run directory on the host; results
reach BUCKET/<sweep>/runs/<run_id> through launch.sync: every host pulls them before training (a
recovered job resumes; all hosts see the same result.json), and only node rank 0 (JAX process 0,
the one that writes them) pushes: every cloud.sync_every_s, whenever a new checkpoint step is
complete in the bucket, and once more at the end, result.json last. Checkpoints are written by Orbax
straight into the bucket (the run's `checkpoint.dir`), by every host its own shards; they never
travel with the sync.
Spot: job_recovery FAILOVER (restarts on errors bounded by cloud.max_restarts_on_errors); a
recovered job reruns the same command and the trainer resumes from the newest complete checkpoint.
Multi-host: SkyPilot runs the command on every host, with SKYPILOT_NODE_IPS / _NUM_NODES / _NODE_RANK
(a TPU pod such as tpu-v4-32 is one SkyPilot node but each of its hosts counts in those variables;
multi-node GPU: cloud.num_nodes > 1), which scaling/distributed.py turns into a coordinator.
Corpora are mounted read-only in use (mode MOUNT, no write-back cache): nothing writes to them.
Offline limits: SkyPilot checks GPU names and regions against its catalog, which it downloads; without
network build_task() says so in one line (catalog_unreachable). `launch()` needs cloud credentials and
was not run here; tests/test_cloud_emulation.py runs the tasks' setup and run strings on local processes.
"""
import copy
import importlib.metadata
import json
import pathlib
import subprocess

from scaling import memory

REPO = pathlib.Path(__file__).resolve().parents[1]
PLACEHOLDER = "YOUR-BUCKET"  # the experiments' stand-in bucket name: refused at launch
HOST_ENV = "$HOME/scaling-env"  # the host environment setup_script creates

SETUP_SCRIPT = """\
set -euo pipefail
export PATH="$HOME/.local/bin:$PATH"
if [ -n "${{SCALING_HOST_PYTHON:-}}" ]; then
  # test hook (tests/test_cloud_emulation.py): an existing interpreter that already holds the project's
  # dependencies stands in for steps 1-3, which need PyPI and python-build-standalone downloads
  mkdir -p "{env}/bin"
  printf '#!/bin/sh\\nexec "%s" "$@"\\n' "$SCALING_HOST_PYTHON" > "{env}/bin/python"
  chmod +x "{env}/bin/python"
else
  # 1. uv {uv}: from PyPI with the image's pip; uv's standalone installer if that pip is missing or refuses
  if ! uv --version 2>/dev/null | grep -qx "uv {uv}.*"; then
    python3 -m pip install --user --quiet "uv=={uv}" || curl -LsSf https://astral.sh/uv/{uv}/install.sh | sh
  fi
  # 2. our own Python: a uv-managed CPython {python}, whatever the image's python3 is (uv's own UV_PYTHON /
  #    UV_PYTHON_PREFERENCE, when the host sets them, choose another interpreter)
  uv venv --quiet --allow-existing --python "${{UV_PYTHON:-{python}}}" \\
    --python-preference "${{UV_PYTHON_PREFERENCE:-only-managed}}" "{env}"
  # 3. the project as synced from the launching commit, and JAX for this accelerator
  uv pip install --quiet --python "{env}/bin/python" -e . "{jax}"
fi
"{env}/bin/python" -c "import jax, scaling; print('host environment ready: python', __import__('sys').version.split()[0], 'jax', jax.__version__)"
"""

RUN_SCRIPT = """\
set -euo pipefail
PY="{env}/bin/python"
mkdir -p "$SCALING_RUN_DIR"
# every host: what the bucket holds, so a recovered job resumes and all hosts see the same result.json
"$PY" -m launch.sync pull "$SCALING_BUCKET_RUN" "$SCALING_RUN_DIR"
printf '%s' "$SCALING_RUN_CONFIG" > "$HOME/scaling_launch_config_$SCALING_RUN_ID.json"
# only the host of JAX process 0 (node rank 0) writes the run's files; only it pushes them (another
# host's copies are the stale ones it pulled)
WRITER=0
if [ "${{SKYPILOT_NODE_RANK:-0}}" = 0 ]; then WRITER=1; fi
if [ "$WRITER" = 1 ]; then
  "$PY" -m launch.sync push "$SCALING_RUN_DIR" "$SCALING_BUCKET_RUN" --watch "$SCALING_SYNC_EVERY_S" &
  SYNC_PID=$!
fi
rc=0
"$PY" -m scaling train --config "$HOME/scaling_launch_config_$SCALING_RUN_ID.json" --workdir "$SCALING_RUN_DIR" || rc=$?
if [ "$WRITER" = 1 ]; then
  kill "$SYNC_PID" 2>/dev/null || true
  wait "$SYNC_PID" 2>/dev/null || true
  "$PY" -m launch.sync push "$SCALING_RUN_DIR" "$SCALING_BUCKET_RUN"
fi
exit "$rc"
"""


def source_state(allow_dirty: bool = False, repo=REPO, warn=print) -> dict:
    """{git_sha, git_dirty} of the tree SkyPilot will sync; ValueError on a dirty tree unless allow_dirty
    (then a warning): a run must be reproducible from its recorded commit."""
    def git(*args):
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        if out.returncode:
            raise ValueError(f"{repo} is not a git checkout ({out.stderr.strip()}): runs record the launching "
                             "commit; launch from a clone of the project")
        return out.stdout
    sha, changes = git("rev-parse", "HEAD").strip(), git("status", "--porcelain").splitlines()
    if changes:
        msg = (f"the working tree has {len(changes)} uncommitted change(s) (e.g. {changes[0].strip()!r}); the "
               f"runs would not match commit {sha[:12]}")
        if not allow_dirty:
            raise ValueError(msg + ": commit them, or pass --allow-dirty (recorded as git_dirty)")
        warn(f"warning: {msg} (--allow-dirty: recorded as git_dirty=1)")
    return {"git_sha": sha, "git_dirty": bool(changes)}


def jax_requirement(accelerator: str, extra: str = "") -> str:
    """The JAX the host installs: this machine's JAX version with the accelerator's extra."""
    extra = extra or ("tpu" if _is_tpu(accelerator) else "cuda12")
    return f"jax[{extra}]=={importlib.metadata.version('jax')}"


def setup_script(cloud) -> str:
    """The task's setup: host environment (uv, managed Python, project, JAX) plus cloud.setup."""
    script = SETUP_SCRIPT.format(uv=cloud.uv_version, python=cloud.python, env=HOST_ENV,
                                 jax=jax_requirement(cloud.accelerator, cloud.jax_extra))
    return script + (cloud.setup.rstrip() + "\n" if cloud.setup else "")


def bucket_root(bucket: str) -> str:
    """'gs://b/scaling' -> 'gs://b' (data_mounts sources may say '{bucket_root}/corpora')."""
    scheme, _, rest = str(bucket).partition("://")
    return f"{scheme}://{rest.split('/')[0]}"


def data_mounts(cloud) -> dict:
    """SkyPilot file_mounts for the prepared corpora, sources with {bucket_root} filled in."""
    root = bucket_root(cloud.bucket)
    return {remote: {"source": source.format(bucket_root=root), "mode": "MOUNT"}
            for remote, source in cloud.data_mounts}


def placeholder_problems(cloud) -> list[str]:
    """The bucket paths that still name the experiments' placeholder bucket."""
    paths = [("cloud.bucket", str(cloud.bucket))] + [
        (f"cloud.data_mounts[{remote!r}]", m["source"]) for remote, m in data_mounts(cloud).items()]
    return [f"{key}={path!r} is the placeholder bucket; pass --cloud.bucket=gs://YOUR-REAL-BUCKET/scaling"
            for key, path in paths if PLACEHOLDER in path]


def _is_tpu(accelerator: str) -> bool:
    return memory.accelerator_platform(accelerator) == "tpu"


def check_cloud(cloud, for_launch: bool = True) -> None:
    """Our own checks, before SkyPilot's: the mistakes SkyPilot would only catch at launch (or never).
    A placeholder bucket is refused only for_launch (a dry run shows the tasks anyway)."""
    acc = cloud.accelerator
    if not acc:
        raise ValueError("cloud.accelerator is empty; e.g. 'tpu-v5litepod-16', 'tpu-v4-32' or 'H100:8'")
    if _is_tpu(acc):
        if acc.lower().startswith("tpu-v5e"):
            raise ValueError(f"cloud.accelerator={acc!r}: SkyPilot names v5e slices 'tpu-v5litepod-N' "
                             f"(e.g. {acc.lower().replace('tpu-v5e', 'tpu-v5litepod')!r})")
        if not cloud.runtime_version:
            raise ValueError(f"cloud.runtime_version is empty for TPU {acc!r}: set it explicitly (SkyPilot's "
                             "default for every v5 is the v5p runtime); e.g. 'v2-alpha-tpuv5-lite' for v5e, "
                             "'tpu-ubuntu2204-base' for v4")
        if cloud.num_nodes != 1:
            raise ValueError(f"cloud.num_nodes={cloud.num_nodes} for TPU {acc!r}: a TPU slice or pod is one "
                             "SkyPilot node (it runs the command on every host); pick a bigger slice instead")
    if not str(cloud.bucket).startswith(("gs://", "s3://", "r2://", "https://")):
        raise ValueError(f"cloud.bucket={cloud.bucket!r}: must be a bucket URL such as 'gs://my-bucket/scaling' "
                         "(run results and checkpoints live there so preempted runs resume)")
    if not cloud.max_restarts_on_errors >= 0:
        raise ValueError(f"cloud.max_restarts_on_errors={cloud.max_restarts_on_errors!r}: must be >= 0")
    if not cloud.sync_every_s > 0:
        raise ValueError(f"cloud.sync_every_s={cloud.sync_every_s!r}: must be > 0 (seconds between result pushes)")
    if cloud.jax_extra not in ("", "tpu", "cuda12", "cuda13"):
        raise ValueError(f"cloud.jax_extra={cloud.jax_extra!r}: use '' (tpu for TPUs, cuda12 otherwise), "
                         "'tpu', 'cuda12' or 'cuda13'")
    if for_launch and placeholder_problems(cloud):
        raise ValueError("; ".join(placeholder_problems(cloud)))


def task_config(spec, cloud, sweep_name: str, source: dict | None = None, for_launch: bool = True) -> dict:
    """The SkyPilot task YAML (as a dict) for one run; build_task() turns it into a validated sky.Task.
    source: {git_sha, git_dirty} of the launching tree (source_state())."""
    check_cloud(cloud, for_launch)
    resources = {
        "accelerators": cloud.accelerator,
        "use_spot": bool(cloud.use_spot),
        "job_recovery": {"strategy": "FAILOVER", "max_restarts_on_errors": int(cloud.max_restarts_on_errors)},
    }
    if cloud.infra:
        resources["infra"] = cloud.infra
    if _is_tpu(cloud.accelerator):
        resources["accelerator_args"] = {"runtime_version": cloud.runtime_version}
    if cloud.disk_size:
        resources["disk_size"] = int(cloud.disk_size)
    bucket_run = f"{str(cloud.bucket).rstrip('/')}/{sweep_name}/runs/{spec.run_id}"
    run_config = spec.config.to_dict()
    run_config["checkpoint"]["dir"] = f"{bucket_run}/checkpoints"  # Orbax writes the bucket itself
    source = source or {}
    envs = {"SCALING_RUN_ID": spec.run_id,
            "SCALING_RUN_DIR": f"{cloud.local_runs}/{spec.run_id}",
            "SCALING_BUCKET_RUN": bucket_run,
            "SCALING_SYNC_EVERY_S": str(cloud.sync_every_s),
            "SCALING_GIT_SHA": str(source.get("git_sha") or ""),
            "SCALING_GIT_DIRTY": "1" if source.get("git_dirty") else "0",
            "SCALING_RUN_CONFIG": json.dumps(run_config, sort_keys=True, separators=(",", ":"))}
    for k, v in cloud.envs.items():
        envs[k] = str(v)
    return {
        "name": job_name(spec, sweep_name),
        "resources": resources,
        "num_nodes": int(cloud.num_nodes),
        "workdir": str(REPO),
        "file_mounts": data_mounts(cloud),
        "envs": envs,
        "setup": setup_script(cloud),
        "run": RUN_SCRIPT.format(env=HOST_ENV),
    }


def job_name(spec, sweep_name: str) -> str:
    """Managed-job name of a RunSpec (see job_name_of)."""
    return job_name_of(spec.run_id, sweep_name)


def job_name_of(run_id: str, sweep_name: str) -> str:
    """Managed-job name: sweep name + run id, lowercase, [a-z0-9-] only."""
    raw = f"{sweep_name}-{run_id}".lower()
    return "".join(ch if ch.isalnum() else "-" for ch in raw).strip("-")


def _field(record, key: str):
    return record.get(key) if isinstance(record, dict) else getattr(record, key, None)


def job_states(run_ids, sweep_name: str, records) -> dict[str, str]:
    """{run_id: state of its newest managed job ('RUNNING', 'RECOVERING', 'SUCCEEDED', ...)} from the
    records of `sky jobs queue` (dicts or objects with job_id, job_name, status); '-' when it has none."""
    newest = {}
    for r in records:
        name, job_id = _field(r, "job_name"), _field(r, "job_id") or 0
        if name not in newest or job_id > newest[name][0]:
            newest[name] = (job_id, str(_field(r, "status")).rsplit(".", 1)[-1])
    return {rid: newest.get(job_name_of(rid, sweep_name), (0, "-"))[1] for rid in run_ids}


def queue_records() -> list:
    """The managed jobs of this user, from the SkyPilot API server (needs it running; untested here)."""
    import sky

    return sky.get(sky.jobs.queue(refresh=False))


def build_task(spec, cloud, sweep_name: str, source: dict | None = None, for_launch: bool = True):
    """A validated sky.Task for one run (SkyPilot parses and checks the task config)."""
    return validated_task(task_config(spec, cloud, sweep_name, source, for_launch), cloud)


def validated_task(config: dict, cloud):
    """SkyPilot's sky.Task of a task config (dict), parsed and checked by SkyPilot itself."""
    import sky
    from sky import sky_logging

    try:
        with sky_logging.silent():  # no catalog-update spinners in the dry run's output (errors still show)
            task = sky.Task.from_yaml_config(copy.deepcopy(config))  # it empties its input
            task.validate()
    except OSError as e:  # requests' ConnectionError is an OSError: the catalog download failed
        raise ValueError(catalog_unreachable(cloud, e)) from None
    return task


def catalog_unreachable(cloud, e: OSError) -> str:
    """The one-line error for a catalog lookup that found no network: what needed it, what works offline."""
    return (f"SkyPilot could not download its catalog (raw.githubusercontent.com; {type(e).__name__}) to check "
            f"cloud.infra={cloud.infra!r} / cloud.accelerator={cloud.accelerator!r}: retry with network access "
            "(offline, only a TPU accelerator with a region-less cloud.infra such as 'gcp' can be checked)")


def task_yaml(task) -> str:
    """The task as SkyPilot serialises it (to_yaml_config), for --dry-run."""
    import yaml

    cfg = task.to_yaml_config()
    cfg.pop("_user_specified_yaml", None)
    return yaml.safe_dump(cfg, sort_keys=False, width=120)


def tasks_yaml(tasks) -> str:
    """All tasks' YAML, as one multi-document stream."""
    return "---\n".join(task_yaml(t) for t in tasks)


def est_flops_per_s(cloud) -> float:
    """Sustained FLOP/s of one run, from the stated chip count, per-chip peak and assumed MFU (data)."""
    return float(cloud.chips * cloud.peak_flops_per_chip * cloud.assumed_mfu)


def launch(tasks) -> list:
    """Submit each task as a SkyPilot managed job (needs credentials; never called in tests: untested here)."""
    import sky

    return [sky.stream_and_get(sky.jobs.launch(t, name=t.name)) for t in tasks]


def cloud_config(**overrides):
    """A `cloud` section with every key the backend reads, defaults for a spot TPU v5e slice on GCP.

    Keys: accelerator (SkyPilot name: 'tpu-v5litepod-16', 'tpu-v4-32', 'H100:8'), runtime_version
    (TPU VM software; required for TPUs), num_nodes (GPU machines; 1 for any TPU slice or pod),
    infra ('gcp' or 'gcp/us-west4': the region is checked against the catalog only at launch),
    use_spot, max_restarts_on_errors (job_recovery FAILOVER), bucket (run results + checkpoints live at
    BUCKET/<sweep name>/runs/<run_id>; the 'YOUR-BUCKET' placeholder is refused at launch),
    local_runs (the hosts' local run directories), sync_every_s (seconds between result pushes),
    data_mounts ((remote path, source) pairs for prepared corpora; '{bucket_root}' = gs://<bucket>),
    python (the uv-managed CPython of the host environment), uv_version, jax_extra ('' = 'tpu' for
    TPUs, 'cuda12' otherwise), setup (extra commands after the host environment), envs, disk_size
    (GB, 0 = default), and for the plan's time estimate: chips, peak_flops_per_chip (bf16, see
    scaling.accounting.PEAK_FLOPS), assumed_mfu, overhead_s (provisioning + install + compile).
    """
    import ml_collections

    c = ml_collections.ConfigDict()
    c.accelerator = "tpu-v5litepod-16"
    c.runtime_version = "v2-alpha-tpuv5-lite"
    c.num_nodes = 1
    c.infra = "gcp"
    c.use_spot = True
    c.max_restarts_on_errors = 3
    c.bucket = f"gs://{PLACEHOLDER}/scaling"
    c.local_runs = "/tmp/scaling_runs"
    c.sync_every_s = 300.0
    c.data_mounts = ()
    c.python = "3.11"
    c.uv_version = "0.13.9"
    c.jax_extra = ""
    c.setup = ""
    c.envs = ml_collections.ConfigDict()
    c.disk_size = 0
    c.chips = 16
    c.peak_flops_per_chip = 197e12
    c.assumed_mfu = 0.4
    c.overhead_s = 600.0
    for k, v in overrides.items():
        if k not in c:
            raise ValueError(f"cloud_config: unknown key {k!r}; valid: {sorted(c.keys())}")
        with c.ignore_type():
            c[k] = v
    return c
