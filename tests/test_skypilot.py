"""launch.skypilot: tasks built with SkyPilot's own API validate, for GPU, TPU slice and TPU pod runs.

No cloud account exists here: tasks are built with sky.Task.from_yaml_config and checked with
task.validate() (schema, enums, num_nodes, job recovery, file mounts); sky.jobs.launch and the
optimizer are never called. SkyPilot canonicalises GPU names against its accelerator catalog, a
file it downloads; the GPU test runs in a subprocess whose SKY_RUNTIME_DIR holds a one-row copy of
that catalog (the columns SkyPilot reads), so nothing is fetched.
"""
import copy
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("sky")

from launch import cli, skypilot, sweep  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def _specs(name: str, n: int = 2, **cloud):
    cfg = sweep.load_sweep(REPO / "experiments" / f"{name}.py")
    for k, v in cloud.items():
        with cfg.cloud.ignore_type():
            cfg.cloud[k] = v
    return cfg, sweep.expand(cfg)[:n]


def _check_task(task, spec, cfg, accelerator: str, num_nodes: int):
    y = task.to_yaml_config()
    assert y["num_nodes"] == num_nodes
    res = y["resources"]
    assert res["accelerators"] == {accelerator.split(":")[0]: int(accelerator.split(":")[1])
                                   if ":" in accelerator else 1}
    assert res["use_spot"] is True
    assert res["job_recovery"] == {"strategy": "FAILOVER",
                                   "max_restarts_on_errors": cfg.cloud.max_restarts_on_errors}
    mount = y["file_mounts"][cfg.cloud.mount]
    assert mount["mode"] == "MOUNT_CACHED" and mount["source"].startswith(cfg.cloud.bucket)
    env = y["envs"]
    assert env["SCALING_RUN_DIR"] == f"{cfg.cloud.mount}/runs/{spec.run_id}"
    assert json.loads(env["SCALING_RUN_CONFIG"]) == spec.config.to_dict()  # the exact resolved config
    assert "python -m scaling train --config" in y["run"] and '--workdir "$SCALING_RUN_DIR"' in y["run"]
    return res


def test_single_host_tpu_task_validates():
    cfg, specs = _specs("chinchilla_isoflop", accelerator="tpu-v5litepod-8", chips=8)
    for spec in specs:
        task = skypilot.build_task(spec, cfg.cloud, "chinchilla_isoflop")
        res = _check_task(task, spec, cfg, "tpu-v5litepod-8", 1)
        assert res["accelerator_args"]["runtime_version"] == "v2-alpha-tpuv5-lite"
        assert task.name == skypilot.job_name(spec, "chinchilla_isoflop")


def test_multi_host_tpu_pod_task_validates():
    """A pod is one SkyPilot node; every host runs the same command (jax.distributed finds the rest)."""
    cfg, specs = _specs("kaplan_n")
    assert cfg.cloud.accelerator == "tpu-v4-32"
    for spec in specs:
        task = skypilot.build_task(spec, cfg.cloud, "kaplan_n")
        res = _check_task(task, spec, cfg, "tpu-v4-32", 1)
        assert res["accelerator_args"]["runtime_version"] == "tpu-ubuntu2204-base"
        assert task.to_yaml_config()["file_mounts"]["/data"]["source"] == "gs://YOUR-BUCKET/corpora"


GPU_SCRIPT = """
import json, sys
sys.path.insert(0, {repo!r})
from launch import skypilot, sweep
cfg = sweep.load_sweep({config!r})
out = []
for num_nodes in (1, 2):  # one 8-GPU machine; two of them (multi-node, coordinator from SKYPILOT_* env)
    cfg.cloud.accelerator = "H100:8"
    cfg.cloud.num_nodes = num_nodes
    for spec in sweep.expand(cfg)[:2]:
        task = skypilot.build_task(spec, cfg.cloud, "kaplan_d")
        out.append({{"run_id": spec.run_id, "yaml": task.to_yaml_config()}})
print("TASKS " + json.dumps(out))
"""


def test_gpu_tasks_validate(tmp_path):
    catalog = tmp_path / ".sky" / "catalogs" / "v8" / "common"
    catalog.mkdir(parents=True)
    (catalog / "accelerators.csv").write_text("AcceleratorName,Clouds\nH100,\"['GCP', 'AWS']\"\n")
    script = GPU_SCRIPT.format(repo=str(REPO), config=str(REPO / "experiments" / "kaplan_d.py"))
    env = dict(os.environ, SKY_RUNTIME_DIR=str(tmp_path), HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    tasks = json.loads(out.stdout.split("TASKS ", 1)[1])
    cfg, specs = _specs("kaplan_d")
    assert len(tasks) == 4
    for t, spec, num_nodes in zip(tasks, specs + specs, (1, 1, 2, 2)):
        assert t["run_id"] == spec.run_id
        y = t["yaml"]
        assert y["num_nodes"] == num_nodes
        assert y["resources"]["accelerators"] == {"H100": 8}
        assert "accelerator_args" not in y["resources"]
        assert y["resources"]["job_recovery"]["strategy"] == "FAILOVER"
        assert json.loads(y["envs"]["SCALING_RUN_CONFIG"]) == spec.config.to_dict()


@pytest.mark.parametrize("key,value,match", [
    ("accelerator", "tpu-v5e-16", "tpu-v5litepod-16"),
    ("runtime_version", "", "runtime_version is empty"),
    ("num_nodes", 2, "a TPU slice or pod is one SkyPilot node"),
    ("bucket", "my-bucket", "must be a bucket URL"),
])
def test_our_checks_name_the_key(key, value, match):
    cfg, specs = _specs("chinchilla_isoflop", n=1)
    with cfg.cloud.ignore_type():
        cfg.cloud[key] = value
    with pytest.raises(ValueError, match=match):
        skypilot.build_task(specs[0], cfg.cloud, "x")


def test_skypilot_validation_catches_what_we_do_not():
    """SkyPilot's own validation is really applied: a bad recovery strategy or field is rejected."""
    import sky

    cfg, specs = _specs("chinchilla_isoflop", n=1)
    good = skypilot.task_config(specs[0], cfg.cloud, "x")
    bad = copy.deepcopy(good)
    bad["resources"]["job_recovery"]["strategy"] = "BOGUS"
    with pytest.raises(ValueError, match="BOGUS"):
        sky.Task.from_yaml_config(bad).validate()
    bad = copy.deepcopy(good)
    bad["resources"]["acelerators"] = bad["resources"].pop("accelerators")
    with pytest.raises(Exception, match="acelerators"):
        sky.Task.from_yaml_config(bad).validate()


def test_cli_dry_run_prints_validated_tasks(capsys):
    rc = cli.sweep_main([str(REPO / "experiments" / "kaplan_n.py"), "--backend", "skypilot", "--dry-run",
                         "--only", "L3-"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "1 SkyPilot managed-job tasks" in out and "tpu-v4-32" in out and "MOUNT_CACHED" in out
    rc = cli.sweep_main([str(REPO / "experiments" / "demo_cpu.py"), "--backend", "skypilot", "--dry-run"])
    assert rc == 2 and "no `cloud` section" in capsys.readouterr().err
