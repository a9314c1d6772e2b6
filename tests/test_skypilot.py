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
    cloud.setdefault("bucket", "gs://test-bucket/scaling")  # the experiments' placeholder is refused
    cfg = sweep.load_sweep(REPO / "experiments" / f"{name}.py")
    for k, v in cloud.items():
        with cfg.cloud.ignore_type():
            cfg.cloud[k] = v
    return cfg, sweep.expand(cfg)[:n]


def _check_run_config(env: dict, spec) -> None:
    """The task carries the exact resolved config, with Orbax writing the checkpoints straight into
    the bucket (checkpoint.dir, an execution key outside the run's identity)."""
    run_config = json.loads(env["SCALING_RUN_CONFIG"])
    assert run_config["checkpoint"].pop("dir") == f"{env['SCALING_BUCKET_RUN']}/checkpoints"
    expected = json.loads(json.dumps(spec.config.to_dict()))  # as it travels: JSON (tuples become lists)
    expected["checkpoint"].pop("dir")
    assert run_config == expected


def _check_task(task, spec, cfg, accelerator: str, num_nodes: int, sweep_name: str):
    y = task.to_yaml_config()
    assert y["num_nodes"] == num_nodes
    res = y["resources"]
    assert res["accelerators"] == {accelerator.split(":")[0]: int(accelerator.split(":")[1])
                                   if ":" in accelerator else 1}
    assert res["use_spot"] is True
    assert res["job_recovery"] == {"strategy": "FAILOVER",
                                   "max_restarts_on_errors": cfg.cloud.max_restarts_on_errors}
    assert all(m["mode"] == "MOUNT" for m in y.get("file_mounts", {}).values())  # no write-back cache
    env = y["envs"]
    assert env["SCALING_RUN_DIR"] == f"{cfg.cloud.local_runs}/{spec.run_id}"
    assert env["SCALING_BUCKET_RUN"] == f"gs://test-bucket/scaling/{sweep_name}/runs/{spec.run_id}"
    _check_run_config(env, spec)
    assert '-m scaling train --config' in y["run"] and '--workdir "$SCALING_RUN_DIR"' in y["run"]
    return res


def test_single_host_tpu_task_validates():
    cfg, specs = _specs("chinchilla_isoflop", accelerator="tpu-v5litepod-8", chips=8)
    for spec in specs:
        task = skypilot.build_task(spec, cfg.cloud, "chinchilla_isoflop")
        res = _check_task(task, spec, cfg, "tpu-v5litepod-8", 1, "chinchilla_isoflop")
        assert res["accelerator_args"]["runtime_version"] == "v2-alpha-tpuv5-lite"
        assert task.name == skypilot.job_name(spec, "chinchilla_isoflop")


def test_multi_host_tpu_pod_task_validates():
    """A pod is one SkyPilot node; every host runs the same command (jax.distributed finds the rest)."""
    cfg, specs = _specs("kaplan_n")
    assert cfg.cloud.accelerator == "tpu-v4-32"
    for spec in specs:
        task = skypilot.build_task(spec, cfg.cloud, "kaplan_n")
        res = _check_task(task, spec, cfg, "tpu-v4-32", 1, "kaplan_n")
        assert res["accelerator_args"]["runtime_version"] == "tpu-ubuntu2204-base"
        assert task.to_yaml_config()["file_mounts"]["/data"]["source"] == "gs://test-bucket/corpora"
    cfg, specs = _specs("kaplan_n", bucket="gs://mine/sub/scaling")  # the corpus follows --cloud.bucket
    y = skypilot.build_task(specs[0], cfg.cloud, "kaplan_n").to_yaml_config()
    assert y["file_mounts"]["/data"]["source"] == "gs://mine/corpora"


GPU_SCRIPT = """
import json, sys
sys.path.insert(0, {repo!r})
from launch import skypilot, sweep
cfg = sweep.load_sweep({config!r})
cfg.cloud.bucket = "gs://test-bucket/scaling"
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
        _check_run_config(y["envs"], spec)


@pytest.mark.parametrize("key,value,match", [
    ("accelerator", "tpu-v5e-16", "tpu-v5litepod-16"),
    ("runtime_version", "", "runtime_version is empty"),
    ("num_nodes", 2, "a TPU slice or pod is one SkyPilot node"),
    ("bucket", "my-bucket", "must be a bucket URL"),
    ("bucket", "gs://YOUR-BUCKET/x", "cloud.bucket='gs://YOUR-BUCKET/x' is the placeholder bucket"),
    ("jax_extra", "rocm", "cloud.jax_extra='rocm'"),
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
    assert "1 SkyPilot managed-job tasks" in out and "tpu-v4-32" in out and "jax[tpu]==" in out
    assert "warning: cloud.bucket='gs://YOUR-BUCKET/scaling' is the placeholder bucket" in out
    rc = cli.sweep_main([f"{REPO / 'experiments' / 'demo_cpu.py'}:classic", "--backend", "skypilot", "--dry-run"])
    assert rc == 2 and "no `cloud` section" in capsys.readouterr().err


def test_setup_script_builds_its_own_python_env():
    """The host environment does not use the image's python3 (3.10 on TPU Ubuntu 22.04 images) for
    the project: uv installs a managed CPython that the pinned stack supports, then the project and
    JAX with the accelerator's extra; the script parses as bash."""
    for name, acc, extra in (("chinchilla_isoflop", "tpu-v5litepod-8", "tpu"), ("kaplan_d", "H100:8", "cuda12")):
        cfg, _ = _specs(name, n=1, accelerator=acc)
        script = skypilot.setup_script(cfg.cloud)
        assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
        lines = [line.strip() for line in script.replace("\\\n", " ").splitlines()]
        venv = next(line for line in lines if line.startswith("uv venv"))
        # never the system interpreter, unless the host sets uv's own UV_PYTHON / UV_PYTHON_PREFERENCE
        assert '--python "${UV_PYTHON:-3.11}"' in venv and '"${UV_PYTHON_PREFERENCE:-only-managed}"' in venv
        install = next(line for line in lines if line.startswith("uv pip install"))
        import jax
        assert f'-e . "jax[{extra}]=={jax.__version__}"' in install and '--python "$HOME/scaling-env/bin/python"' in install
        assert not any(line.startswith(("pip ", "python -m pip", "python3 -m pip install -e")) for line in lines)
        run = skypilot.RUN_SCRIPT.format(env=skypilot.HOST_ENV)
        assert subprocess.run(["bash", "-n"], input=run, text=True).returncode == 0


def test_python_3_11_is_what_pyproject_requires():
    text = (REPO / "pyproject.toml").read_text()
    cfg, _ = _specs("chinchilla_isoflop", n=1)
    assert f'requires-python = ">={cfg.cloud.python}"' in text


def test_source_state_refuses_a_dirty_tree(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (repo / "f").write_text("1")
    git("add", "f")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert skypilot.source_state(repo=repo) == {"git_sha": sha, "git_dirty": False}
    (repo / "f").write_text("2")
    with pytest.raises(ValueError, match="uncommitted change.*--allow-dirty"):
        skypilot.source_state(repo=repo)
    warned = []
    assert skypilot.source_state(True, repo=repo, warn=warned.append) == {"git_sha": sha, "git_dirty": True}
    assert "warning" in warned[0]
    with pytest.raises(ValueError, match="not a git checkout"):
        skypilot.source_state(repo=tmp_path)


def test_cloud_overrides_on_the_command_line(capsys):
    rc = cli.sweep_main([str(REPO / "experiments" / "kaplan_n.py"), "--backend", "skypilot", "--dry-run",
                         "--only", "L3-", "--cloud.bucket=gs://real/scaling", "--cloud.use_spot=false",
                         "--cloud.disk_size=512", "--cloud.accelerator=tpu-v4-64"])  # a region (infra=gcp/REGION) is checked against the catalog: a download
    out = capsys.readouterr().out
    assert rc == 0 and "placeholder" not in out
    assert "gs://real/scaling/kaplan_n/runs/" in out and "source: gs://real/corpora" in out
    assert "use_spot: false" in out and "tpu-v4-64" in out and "disk_size: 512" in out
    rc = cli.sweep_main([str(REPO / "experiments" / "kaplan_n.py"), "--backend", "skypilot", "--dry-run",
                         "--cloud.bucket_name=x"])
    assert rc == 2 and "unknown config key 'cloud.bucket_name'" in capsys.readouterr().err


@pytest.mark.parametrize("override", ["--cloud.infra=gcp/us-west4", "--cloud.accelerator=H100:8"])
def test_catalog_lookup_without_network_is_one_line(tmp_path, override):
    """A region or GPU name needs SkyPilot's catalog, a download: without network (a proxy nobody listens
    on; a fresh catalog directory) the dry run ends in one `error:` line naming both keys, no traceback."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "https_proxy", "http_proxy")}
    env.update(HOME=str(tmp_path), SKY_RUNTIME_DIR=str(tmp_path), HTTPS_PROXY="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "cli", "sweep", "experiments/kaplan_n.py", "--backend", "skypilot",
                          "--dry-run", "--only", "L3-", "--cloud.bucket=gs://b/scaling", override],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    both = out.stderr + out.stdout
    assert "Traceback" not in both and "The above exception" not in both, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("scaling sweep: error: SkyPilot could not download its catalog")
    key, value = override[2:].split("=")
    assert f"{key}={value!r}" in last


def test_job_states_take_the_newest_job_per_run(tmp_path):
    records = [{"job_id": 1, "job_name": "s-a", "status": "ManagedJobStatus.FAILED"},
               {"job_id": 3, "job_name": "s-a", "status": "ManagedJobStatus.RUNNING"},
               {"job_id": 2, "job_name": "other", "status": "ManagedJobStatus.SUCCEEDED"}]
    assert skypilot.job_states(["a", "b"], "s", records) == {"a": "RUNNING", "b": "-"}
