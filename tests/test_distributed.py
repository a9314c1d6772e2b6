"""Multi-host start-up: the layout decision (pure), and two real local CPU processes that
initialize, build global arrays from their local rows and all-reduce correctly."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from scaling import distributed as dist
from scaling import sharding as sh

REPO = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- resolve (no cluster needed)

def test_resolve_single_process_by_default():
    assert dist.resolve(env={}) is None or dist._on_tpu_vm()
    assert dist.resolve(env={"SKYPILOT_NUM_NODES": "1", "SCALING_DISTRIBUTED": "none"}) is None
    assert dist.resolve(env={"SCALING_COORDINATOR": "h:1", "SCALING_NUM_PROCESSES": "1",
                             "SCALING_PROCESS_ID": "0"}) is None


def test_resolve_explicit_env_and_config():
    env = {"SCALING_COORDINATOR": "10.0.0.1:1234", "SCALING_NUM_PROCESSES": "4",
           "SCALING_PROCESS_ID": "3"}
    assert dist.resolve(env=env) == {"coordinator_address": "10.0.0.1:1234",
                                     "num_processes": 4, "process_id": 3}
    cfg = {"coordinator": "h:9", "num_processes": 2, "process_id": 0}
    assert dist.resolve(cfg, env={}) == {"coordinator_address": "h:9", "num_processes": 2,
                                         "process_id": 0}


def test_resolve_skypilot():
    env = {"SKYPILOT_NODE_IPS": "10.1.0.5\n10.1.0.6\n", "SKYPILOT_NUM_NODES": "2",
           "SKYPILOT_NODE_RANK": "1"}
    assert dist.resolve(env=env) == {"coordinator_address": f"10.1.0.5:{dist.DEFAULT_PORT}",
                                     "num_processes": 2, "process_id": 1}
    assert dist.resolve(env=env | {"SCALING_COORDINATOR_PORT": "7000"})["coordinator_address"] \
        == "10.1.0.5:7000"


SLURM_2 = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": "2",
           "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
OMPI_2 = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911", "OMPI_COMM_WORLD_SIZE": "2",
          "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}


@pytest.mark.parametrize("env", [SLURM_2, OMPI_2], ids=["slurm", "openmpi"])
def test_resolve_slurm_and_openmpi_leave_the_layout_to_jax(env, monkeypatch):
    """initialize() with no arguments; JAX's own detection then finds this launcher and its layout."""
    assert dist.resolve(env=env) == {}
    from jax._src import clusters  # the detection JAX runs inside initialize()
    monkeypatch.setattr(os, "environ", dict(env))
    addr, n, i, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None, None, 10)
    assert (n, i) == (2, int(env.get("SLURM_PROCID", env.get("OMPI_COMM_WORLD_RANK"))))
    assert addr.split(":")[0] in ("node001", "10.96.0.1")


@pytest.mark.parametrize("env,match", [
    ({"SLURM_NTASKS": "4", "SLURM_JOB_ID": "1"}, r"Slurm started 4 processes .*SLURM_STEP_NODELIST.* not set"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, r"Open MPI started 2 processes .*OMPI_MCA_orte_hnp_uri"),
    (SLURM_2 | {"SCALING_DISTRIBUTED": "none"}, r"Slurm started 2 processes .*SCALING_DISTRIBUTED=none"),
])
def test_a_multi_process_launcher_never_gets_lone_trainers(env, match):
    with pytest.raises(ValueError, match=match + ".*same run directory"):
        dist.resolve(env=env)


def test_single_task_launchers_stay_single_process():
    assert dist.resolve(env={"SLURM_NTASKS": "1", "SLURM_JOB_ID": "1"}) is None or dist._on_tpu_vm()
    assert dist.resolve(env={"OMPI_COMM_WORLD_SIZE": "1", "SCALING_DISTRIBUTED": "none"}) is None


def test_resolve_tpu_pod():
    assert dist.resolve(env={"SCALING_DISTRIBUTED": "tpu"}) == {}  # initialize() with no args


@pytest.mark.parametrize("env,match", [
    ({"SCALING_COORDINATOR": "h:1"}, r"SCALING_NUM_PROCESSES, SCALING_PROCESS_ID not set"),
    ({"SCALING_COORDINATOR": "h", "SCALING_NUM_PROCESSES": "2", "SCALING_PROCESS_ID": "0"},
     r"SCALING_COORDINATOR='h': must be host:port"),
    ({"SCALING_COORDINATOR": "h:1", "SCALING_NUM_PROCESSES": "2", "SCALING_PROCESS_ID": "2"},
     r"SCALING_PROCESS_ID=2: must be in \[0, SCALING_NUM_PROCESSES=2\)"),
    ({"SCALING_COORDINATOR": "h:1", "SCALING_NUM_PROCESSES": "two", "SCALING_PROCESS_ID": "0"},
     r"SCALING_NUM_PROCESSES='two': must be an integer"),
    ({"SKYPILOT_NUM_NODES": "3", "SKYPILOT_NODE_IPS": "a\nb", "SKYPILOT_NODE_RANK": "0"},
     r"SKYPILOT_NODE_IPS lists 2 hosts but SKYPILOT_NUM_NODES=3"),
    ({"SCALING_DISTRIBUTED": "mpi"}, r"SCALING_DISTRIBUTED='mpi'"),
])
def test_resolve_errors(env, match):
    with pytest.raises(ValueError, match=match):
        dist.resolve(env=env)


def test_single_process_helpers():
    assert dist.initialize_from_env() == (0, 1) or jax.distributed.is_initialized()
    assert dist.is_main_process()
    mesh = sh.make_mesh(dict(data=2, fsdp=2, model=2, num_devices=0))
    bs = sh.batch_sharding(mesh)
    assert dist.process_batch_slice(bs, 16) == (0, 1)
    x = np.arange(16 * 3).reshape(16, 3)
    g = dist.global_array({"inputs": x}, bs)["inputs"]
    assert g.sharding == bs
    np.testing.assert_array_equal(np.asarray(g), x)


# ---------------------------------------------------------------- two real processes

CHILD = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jax.experimental import multihost_utils
    from scaling import distributed as dist, sharding as sh

    pid, n = dist.initialize_from_env()
    out = {"process": [pid, n], "main": dist.is_main_process(),
           "devices": jax.device_count(), "local": jax.local_device_count()}
    B, T = 8, 3
    full = np.arange(B * T, dtype=np.int32).reshape(B, T)  # the global batch every step would see
    for shape in [(4, 1, 1), (1, 2, 2), (1, 1, 4)]:
        mesh = sh.make_mesh(dict(zip(("data", "fsdp", "model"), shape), num_devices=0))
        bs = sh.batch_sharding(mesh)
        j, k = dist.process_batch_slice(bs, B)
        rows = B // k
        g = dist.global_array(full[j * rows:(j + 1) * rows], bs)  # this process's rows only
        total = jax.jit(lambda x: jnp.sum(x), out_shardings=sh.replicated(mesh))(g)
        # explicit all-reduce: per-device partial sums, psum over the batch axes
        psum = jax.jit(jax.shard_map(
            lambda x: jax.lax.psum(jnp.sum(x), ("data", "fsdp")),
            mesh=mesh, in_specs=P(("data", "fsdp"), None), out_specs=P()))(g)
        gathered = multihost_utils.process_allgather(g, tiled=True)
        out[str(shape)] = {"slice": [j, k], "sum": int(total), "psum": int(psum),
                           "gathered_ok": bool(np.array_equal(gathered, full))}
    multihost_utils.sync_global_devices("done")
    print("RESULT " + json.dumps(out), flush=True)
""")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(script, n=2, devices_per_process=2, timeout=240, extra_env=None):
    """Run `script` in n local CPU processes joined through SCALING_* env; return stdouts."""
    port = free_port()
    procs = []
    for i in range(n):
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
                   SCALING_COORDINATOR=f"127.0.0.1:{port}", SCALING_NUM_PROCESSES=str(n),
                   SCALING_PROCESS_ID=str(i), **(extra_env or {}))
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, f"process failed rc={p.returncode}:\n{err.decode()[-4000:]}"
            outs.append(out.decode())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


def test_two_processes_global_array_and_all_reduce():
    outs = run_processes(CHILD)
    results = [json.loads(line[len("RESULT "):]) for o in outs for line in o.splitlines()
               if line.startswith("RESULT ")]
    assert len(results) == 2
    full_sum = sum(range(8 * 3))
    for pid, r in enumerate(results):
        assert r["process"] == [pid, 2] and r["main"] == (pid == 0)
        assert r["devices"] == 4 and r["local"] == 2
        # batch split over processes on (4,1,1) and (1,2,2) ...
        assert r["(4, 1, 1)"]["slice"] == [pid, 2] and r["(1, 2, 2)"]["slice"] == [pid, 2]
        # ... but replicated over a model axis spanning both: each process feeds all rows
        assert r["(1, 1, 4)"]["slice"] == [0, 1]
        for shape in ("(4, 1, 1)", "(1, 2, 2)", "(1, 1, 4)"):
            assert r[shape]["sum"] == full_sum
            assert r[shape]["psum"] == full_sum
            assert r[shape]["gathered_ok"]
