"""Cloud and Slurm launches emulated on this machine: two local processes stand in for two hosts.

SkyPilot: `scaling sweep --backend skypilot` is run for a tiny sweep with `skypilot.launch` replaced
by a capture of the tasks it would submit; each task's own setup and run strings then run under
bash on two "hosts" (processes with their own HOME), with the variables SkyPilot 0.14 gives a
2-host TPU slice (setup: SKYPILOT_SETUP_NODE_RANK / _NODE_IPS, SKYPILOT_NUM_NODES; run:
SKYPILOT_NODE_RANK, SKYPILOT_NODE_IPS, SKYPILOT_NUM_NODES, SKYPILOT_TASK_ID, read in
sky/backends/cloud_vm_ray_backend.py and task_codegen.py: a pod's hosts are its nodes) plus the task's
envs. What differs from a cloud host, and why:
  - the bucket gs://emulated-bucket is a local directory: the bucket prefix is replaced in the task's
    envs (SCALING_BUCKET_RUN and the config's checkpoint.dir) -- etils/Orbax treat both alike;
  - setup runs with SCALING_HOST_PYTHON=this interpreter (the script's test hook): uv, a managed
    CPython and the jax[tpu] install need downloads (the uv path is checked by hand, see README);
  - "hosts" are CPU processes with 2 fake devices each (one 4-device mesh, gloo collectives), both
    at 127.0.0.1, the coordinator port chosen free (SCALING_COORDINATOR_PORT) since 8476 may be taken.
Host 0 (the coordinator and the writer) is SIGKILLed once a checkpoint step is complete in the
bucket and its metrics rows were pushed, then host 1 (a recovery replaces the whole slice); both
are relaunched (setup is not rerun: the same hosts), resume from the bucket's newest checkpoint and
finish with every train row once; `scaling sync` brings the result back for `scaling status` and the results
table. Slurm: `python -m scaling train` in two processes with srun's SLURM_* variables (JAX's own
Slurm detection picks coordinator, count and rank; the port derives from SLURM_JOB_ID), a shared
run directory, the same kill, relaunch and resume.
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from launch import cli, local, skypilot, sync
from scaling import rundir
from test_distributed import free_port  # tests/ is on sys.path

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS, EVERY = 40, 5  # optimizer steps; a checkpoint every EVERY steps (and the last); the kill comes
# after the first checkpoint whose metrics reached the bucket, so the steps after it are the margin
FAKE_BUCKET = "gs://emulated-bucket"
SWEEP = """
import ml_collections
def get_config():
    c = ml_collections.ConfigDict()
    c.data = dict(seq_len=32, cache_dir={cache!r})
    c.train = dict(batch_size=8, log_every=1, eval_every={steps}, eval_tokens=8 * 32 * 2, peak_flops=1e11)
    c.optim = dict(warmup_steps=3)
    c.mesh = dict(num_devices=0)  # every device of the job: 2 hosts x 2 = a 4-way data mesh
    c.checkpoint = dict(every_steps={every}, keep=2)
    c.sweep = s = ml_collections.ConfigDict()
    s.kind = "grid"
    s.tokens = ({tokens},)
    s.shapes = dict(explicit=((1, 16),), head_dim=8)
    c.cloud = dict(accelerator="tpu-v4-16", runtime_version="tpu-ubuntu2204-base", chips=8,
                   bucket="{bucket}/scaling", sync_every_s=0.25)  # pushes 4x a second
    return c
"""


def _host_env(home: pathlib.Path, **extra) -> dict:
    """A host's environment: its own HOME, 2 fake CPU devices, the session's compilation cache."""
    home.mkdir(parents=True, exist_ok=True)
    names = ("PATH", "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")
    keep = {k: os.environ[k] for k in names if k in os.environ}
    return {**keep, "HOME": str(home), "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2", **extra}


def _start(script: list[str], env: dict, log: pathlib.Path) -> subprocess.Popen:
    """One host's command, in its own process group (a SIGKILL of the group = the host is gone)."""
    return subprocess.Popen(script, cwd=REPO, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_all(procs, logs, timeout=120) -> None:
    deadline = time.time() + timeout
    for p, log in zip(procs, logs):
        try:
            rc = p.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            _kill(procs)
            raise AssertionError(f"host timed out; log:\n{log.read_text()[-3000:]}") from None
        assert rc == 0, f"host exited {rc}; log:\n{log.read_text()[-3000:]}"


def _kill(procs) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def _newest_complete(ckpt_dir: pathlib.Path) -> int | None:
    steps = [int(p.name) for p in ckpt_dir.glob("*") if p.name.isdigit() and (p / sync.COMMIT).exists()]
    return max(steps, default=None)


def _kill_after_a_checkpoint(procs, run_dir: pathlib.Path, logs, timeout=90) -> int:
    """Wait until a checkpoint step is complete in run_dir/checkpoints and run_dir's metrics reach it,
    then SIGKILL host 0, then the other hosts; returns the newest complete step left behind."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        step = _newest_complete(run_dir / rundir.CHECKPOINTS)
        rows = rundir.read_metrics(run_dir) if (run_dir / rundir.METRICS).exists() else []
        if step and any(r.get("step") == step for r in rows):
            _kill(procs)
            left = _newest_complete(run_dir / rundir.CHECKPOINTS)
            assert left < STEPS, f"the run finished (step {left}) before the kill; give it more steps"
            return left
        assert all(p.poll() is None for p in procs), "a host exited early:\n" + logs[0].read_text()[-3000:]
        time.sleep(0.05)
    _kill(procs)
    raise AssertionError("no checkpoint reached the run directory in time:\n" + logs[0].read_text()[-3000:])


def _check_finished(run_dir: pathlib.Path, resumed_from: int, log0: pathlib.Path) -> dict:
    """One 2-process job ran to the end, resumed from `resumed_from`, every train row exactly once."""
    assert f"resumed from checkpoint at step {resumed_from}" in log0.read_text()
    result = rundir.read_result(run_dir)
    assert result["status"] == "ok" and result["step"] == STEPS
    assert result["process_count"] == 2 and result["num_devices"] == 4
    assert result["prov_process_count"] == 2 and result["prov_mesh"].startswith("data=4")
    steps = [r["step"] for r in rundir.read_metrics(run_dir) if r["split"] == "train"]
    assert steps == list(range(1, STEPS + 1))
    assert _newest_complete(run_dir / rundir.CHECKPOINTS) == STEPS
    return result


def _sweep_config(tmp_path, corpus_cache) -> pathlib.Path:
    path = tmp_path / "emu.py"
    path.write_text(SWEEP.format(cache=corpus_cache, steps=STEPS, every=EVERY, tokens=STEPS * 8 * 32,
                                 bucket=FAKE_BUCKET))
    return path


def _launched_tasks(config: pathlib.Path, sweep_dir: pathlib.Path, monkeypatch) -> list:
    """`scaling sweep --backend skypilot` with sky.jobs.launch replaced by a capture of the tasks."""
    captured = []
    monkeypatch.setattr(skypilot, "launch", lambda tasks: captured.extend(tasks))
    rc = cli.sweep_main([str(config), "--backend", "skypilot", "--sweep-dir", str(sweep_dir), "--allow-dirty"])
    assert rc == 0 and len(captured) == 1
    return captured


@pytest.mark.slow
def test_skypilot_two_host_job_resumes_and_syncs_back(tmp_path, corpus_cache, monkeypatch):
    pytest.importorskip("sky", reason="the cloud extra (SkyPilot) builds the tasks")
    bucket = tmp_path / "bucket"
    sweep_dir = tmp_path / "sweeps" / "emu"
    task = _launched_tasks(_sweep_config(tmp_path, corpus_cache), sweep_dir, monkeypatch)[0]
    envs = {k: str(v).replace(FAKE_BUCKET, str(bucket)) for k, v in task.envs.items()}
    run_id = envs["SCALING_RUN_ID"]
    bucket_run = bucket / "scaling" / "emu" / "runs" / run_id
    assert envs["SCALING_BUCKET_RUN"] == str(bucket_run)
    assert json.loads(envs["SCALING_RUN_CONFIG"])["checkpoint"]["dir"] == str(bucket_run / "checkpoints")
    logs = [tmp_path / f"host{i}.log" for i in range(2)]
    ips = "127.0.0.1\n127.0.0.1"
    # (HOME, task envs) per host; each its own local run dir, as on separate machines
    hosts = [(tmp_path / f"host{i}", {**envs, "SKYPILOT_NUM_NODES": "2", "SCALING_HOST_PYTHON": sys.executable,
                                      "SCALING_RUN_DIR": str(tmp_path / f"host{i}" / "runs" / run_id)})
             for i in range(2)]

    # setup on both hosts (SkyPilot runs it once per host, before the run)
    procs = [_start(["bash", "-c", task.setup], _host_env(h, **e, SKYPILOT_SETUP_NODE_RANK=str(i),
                                                          SKYPILOT_SETUP_NODE_IPS=ips), logs[i])
             for i, (h, e) in enumerate(hosts)]
    _wait_all(procs, logs)
    assert "host environment ready: python 3." in logs[0].read_text()

    def launch():
        port = str(free_port())
        return [_start(["bash", "-c", task.run],
                       _host_env(h, **e, SKYPILOT_NODE_RANK=str(i), SKYPILOT_NODE_IPS=ips,
                                 SKYPILOT_TASK_ID=f"emu-{run_id}", SCALING_COORDINATOR_PORT=port), logs[i])
                for i, (h, e) in enumerate(hosts)]

    # the bucket gets checkpoints from Orbax and metrics from host 0's pusher; then host 0 is lost
    resumed_from = _kill_after_a_checkpoint(launch(), bucket_run, logs)
    assert not (bucket_run / rundir.RESULT).exists()
    procs = launch()  # the recovery: both hosts run the same command again
    _wait_all(procs, logs)
    result = _check_finished(bucket_run, resumed_from, logs[0])
    assert result["prov_git_sha"] == skypilot.source_state(allow_dirty=True)["git_sha"]
    assert not (pathlib.Path(hosts[1][1]["SCALING_RUN_DIR"]) / rundir.RESULT).exists()  # host 1 writes nothing

    # results (not checkpoints) back into the sweep directory the launch wrote
    assert sync.bucket_of(sweep_dir, None) == sync.epath.Path(f"{FAKE_BUCKET}/scaling/emu")
    assert sync.sync_main([str(sweep_dir), "--from", str(bucket / "scaling" / "emu")]) == 0
    local_run = sweep_dir / "runs" / run_id
    assert rundir.read_result(local_run) == rundir.read_result(bucket_run)
    assert not (local_run / rundir.CHECKPOINTS).exists()
    assert {r["run_id"]: r["state"] for r in local.sweep_status(sweep_dir)} == {run_id: "done"}
    from analysis import results

    table = results.load(sweep_dir, on_error="raise")
    assert [pathlib.Path(d).name for d in table["run_dir"]] == [run_id]
    assert int(table["prov_process_count"].iloc[0]) == 2 and table["prov_git_sha"].iloc[0] == result["prov_git_sha"]


def _slurm_port_job_id() -> int:
    """A SLURM_JOB_ID whose port (JAX: job_id % 4096 + 61440) is free right now."""
    for job_id in range(os.getpid() % 4096, os.getpid() % 4096 + 4096):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", job_id % 4096 + 61440))
                return job_id
            except OSError:
                continue
    raise RuntimeError("no free port in 61440..65535")


@pytest.mark.slow
def test_slurm_two_task_job_resumes(tmp_path, corpus_cache):
    from launch import sweep

    config = _sweep_config(tmp_path, corpus_cache)
    sweep_dir = tmp_path / "shared" / "sweeps" / "emu"  # a shared filesystem in a Slurm cluster
    spec = sweep.expand(sweep.load_sweep(config))[0]
    local.write_manifest(sweep_dir, [spec], config)
    run_dir = sweep_dir / "runs" / spec.run_id
    cfg_json = tmp_path / "shared" / "run_config.json"
    cfg_json.write_text(json.dumps(spec.config.to_dict()))
    logs = [tmp_path / f"task{i}.log" for i in range(2)]

    def srun():
        job_id = str(_slurm_port_job_id())
        return [_start([sys.executable, "-m", "scaling", "train", "--config", str(cfg_json), "--workdir", str(run_dir)],
                       _host_env(tmp_path / f"node{i}", SLURM_JOB_ID=job_id, SLURM_NTASKS="2",
                                 SLURM_STEP_NODELIST="localhost", SLURM_STEP_NUM_NODES="1", SLURM_PROCID=str(i),
                                 SLURM_LOCALID=str(i), SLURM_NODEID="0"), logs[i])
                for i in range(2)]

    resumed_from = _kill_after_a_checkpoint(srun(), run_dir, logs)
    procs = srun()
    _wait_all(procs, logs)
    _check_finished(run_dir, resumed_from, logs[0])
    assert {r["run_id"]: r["state"] for r in local.sweep_status(sweep_dir)} == {spec.run_id: "done"}


def test_rows_lost_with_a_host_are_named_in_the_result(tiny_config, tmp_path):
    """A host lost between a checkpoint's commit and the next push leaves the bucket metrics that stop
    short of that checkpoint: the resumed run cannot redo those steps, and says so in result.json."""
    from scaling.train import train

    run = tmp_path / "run"
    train(tiny_config, run, stop_after_steps=10, verbose=False)  # train rows at steps 5 and 10
    lines = (run / rundir.METRICS).read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["step"] <= 5]
    (run / rundir.METRICS).write_text("\n".join(kept) + "\n")  # the bucket's copy, pushed at step 5
    result = train(tiny_config, run, verbose=False)
    assert result["status"] == "ok"
    assert [n for n in result["metrics_lost"] if "train rows for steps 6..10 missing" in n]
    assert [r["step"] for r in rundir.read_metrics(run) if r["split"] == "train"] == [5, 15, 20]
