"""Cloud backend: one SkyPilot managed job per run, on TPU VM slices/pods or GPU machines.

    tasks = [build_task(spec, cfg.cloud, sweep_name) for spec in specs]   # sky.Task, validated
    print(tasks_yaml(tasks))                                               # what --dry-run shows
    launch(tasks)                                                          # sky.jobs.launch per task

Why it is spot-safe: every run's directory (config, metrics, Orbax checkpoints, result.json) lives
in a bucket mounted with MOUNT_CACHED at cloud.mount; a preempted job is recovered by SkyPilot
(job_recovery FAILOVER, restarts on errors bounded by cloud.max_restarts_on_errors) and reruns the
same command, and the trainer resumes from the newest complete checkpoint (or returns at once if
result.json says ok).
Multi-host: a TPU pod (e.g. tpu-v4-32, tpu-v5litepod-64) is ONE SkyPilot node and SkyPilot runs
the command on every host; on TPU jax.distributed.initialize() takes no arguments. Multi-node GPU
(cloud.num_nodes > 1) gets SKYPILOT_NODE_IPS / SKYPILOT_NUM_NODES / SKYPILOT_NODE_RANK from
SkyPilot, which scaling/distributed.py turns into the coordinator address; the command is the same.
Tasks are built with SkyPilot's own API (Task.from_yaml_config + validate), so SkyPilot parses them.
Offline limits: accelerator names of GPUs and regions are checked against SkyPilot's catalog (a
download) — regions only at launch. `launch()` needs cloud credentials and was not run here.
"""
import copy
import json
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]

RUN_SCRIPT = """\
set -euo pipefail
mkdir -p "$SCALING_RUN_DIR"
printf '%s' "$SCALING_RUN_CONFIG" > "$HOME/scaling_launch_config_$SCALING_RUN_ID.json"
python -m scaling train --config "$HOME/scaling_launch_config_$SCALING_RUN_ID.json" --workdir "$SCALING_RUN_DIR"
"""


def _is_tpu(accelerator: str) -> bool:
    return accelerator.lower().startswith("tpu-")


def check_cloud(cloud) -> None:
    """Our own checks, before SkyPilot's: the mistakes SkyPilot would only catch at launch (or never)."""
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
                         "(run directories and checkpoints live there so preempted runs resume)")
    if not cloud.max_restarts_on_errors >= 0:
        raise ValueError(f"cloud.max_restarts_on_errors={cloud.max_restarts_on_errors!r}: must be >= 0")


def task_config(spec, cloud, sweep_name: str) -> dict:
    """The SkyPilot task YAML (as a dict) for one run; build_task() turns it into a validated sky.Task."""
    check_cloud(cloud)
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
    bucket = f"{str(cloud.bucket).rstrip('/')}/{sweep_name}"
    file_mounts = {cloud.mount: {"source": bucket, "mode": "MOUNT_CACHED"}}
    for remote, source in cloud.data_mounts:
        file_mounts[remote] = {"source": source, "mode": "MOUNT_CACHED"}
    envs = {"SCALING_RUN_ID": spec.run_id,
            "SCALING_RUN_DIR": f"{cloud.mount}/runs/{spec.run_id}",
            "SCALING_RUN_CONFIG": json.dumps(spec.config.to_dict(), sort_keys=True, separators=(",", ":"))}
    for k, v in cloud.envs.items():
        envs[k] = str(v)
    return {
        "name": job_name(spec, sweep_name),
        "resources": resources,
        "num_nodes": int(cloud.num_nodes),
        "workdir": str(REPO),
        "file_mounts": file_mounts,
        "envs": envs,
        "setup": cloud.setup,
        "run": RUN_SCRIPT,
    }


def job_name(spec, sweep_name: str) -> str:
    """Managed-job name: sweep name + run id, lowercase, [a-z0-9-] only."""
    raw = f"{sweep_name}-{spec.run_id}".lower()
    return "".join(ch if ch.isalnum() else "-" for ch in raw).strip("-")


def build_task(spec, cloud, sweep_name: str):
    """A validated sky.Task for one run (SkyPilot parses and checks the task config)."""
    import sky

    task = sky.Task.from_yaml_config(copy.deepcopy(task_config(spec, cloud, sweep_name)))  # it empties its input
    task.validate()
    return task


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
    use_spot, max_restarts_on_errors (job_recovery FAILOVER), bucket (run dirs + checkpoints live at
    BUCKET/<sweep name>/runs/<run_id>), mount (where the bucket appears on the hosts), data_mounts
    ((remote path, bucket URL) pairs for prepared corpora), setup (install command), envs, disk_size
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
    c.bucket = "gs://YOUR-BUCKET/scaling"
    c.mount = "/ckpt"
    c.data_mounts = ()
    c.setup = 'pip install -e . && pip install "jax[tpu]==0.10.2"'
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
