"""Multi-host start-up: one JAX process per host, joined with `jax.distributed.initialize`.

Where the process layout comes from, first match wins:
    1. explicit: a config with coordinator / num_processes / process_id, or the environment
       SCALING_COORDINATOR (host:port), SCALING_NUM_PROCESSES, SCALING_PROCESS_ID
    2. SkyPilot multi-host jobs (multi-node GPU, and the hosts of a TPU pod, which SkyPilot 0.14
       counts as nodes; also SkyPilot on Slurm, which unsets the step's SLURM_* variables):
       SKYPILOT_NODE_IPS (first line = coordinator host), SKYPILOT_NUM_NODES, SKYPILOT_NODE_RANK;
       port SCALING_COORDINATOR_PORT (default 8476)
    3. Slurm (srun: SLURM_NTASKS > 1 with SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_PROCID,
       SLURM_LOCALID) or Open MPI (mpirun: OMPI_COMM_WORLD_SIZE > 1 with OMPI_MCA_orte_hnp_uri):
       `jax.distributed.initialize()` with no arguments; JAX reads the layout from those variables
       (port from the job id, or JAX_COORDINATOR_PORT)
    4. a Cloud TPU VM (libtpu installed and TPU chips present, or SCALING_DISTRIBUTED=tpu):
       `jax.distributed.initialize()` with no arguments; JAX reads the pod layout itself
    5. otherwise a single process (nothing is initialized)
SCALING_DISTRIBUTED=none forces 5. A launcher that started several processes (SLURM_NTASKS or
OMPI_COMM_WORLD_SIZE > 1) whose layout JAX cannot read, or with SCALING_DISTRIBUTED=none, is
refused: N single-process trainers would each train alone into the same run directory. Call `initialize_from_env` before anything touches a JAX
device. CPU processes use gloo collectives, JAX 0.10's default for CPU
(jax_cpu_collectives_implementation), so nothing extra is needed for CPU multi-process runs.

After start-up every process sees all devices (`jax.devices()`), owns its local ones, and feeds
only its rows of the global batch (`global_array`). Logging and result files are written by
process 0 (`is_main_process`).
"""
from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

DEFAULT_PORT = 8476


def _cfg_get(cfg: Any, key: str) -> Any:
    if cfg is None:
        return None
    if isinstance(cfg, Mapping):
        return cfg.get(key)
    return getattr(cfg, key, None)


def _int(name: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: must be an integer") from None


def _on_tpu_vm() -> bool:
    has_libtpu = importlib.util.find_spec("libtpu") is not None
    return has_libtpu and bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def resolve(cfg: Any = None, env: Mapping[str, str] | None = None) -> dict | None:
    """The keyword arguments for `jax.distributed.initialize`, or None for a single process.

    Pure (reads `env`, default os.environ), so the decision can be tested without starting a
    cluster. Raises ValueError naming the variable when the layout is incomplete or invalid.
    """
    env = os.environ if env is None else env
    mode = env.get("SCALING_DISTRIBUTED", "").lower()
    if mode in ("none", "off", "0"):
        _refuse_lone_copies(env, "SCALING_DISTRIBUTED=none asks for one process")
        return None
    if mode not in ("", "auto", "tpu"):
        raise ValueError(f"SCALING_DISTRIBUTED={mode!r}: use 'auto' (default), 'tpu' or 'none'")

    # 1. explicit config / environment
    explicit = {
        "coordinator_address": _cfg_get(cfg, "coordinator") or env.get("SCALING_COORDINATOR"),
        "num_processes": _cfg_get(cfg, "num_processes") or env.get("SCALING_NUM_PROCESSES"),
        "process_id": _cfg_get(cfg, "process_id") if _cfg_get(cfg, "process_id") is not None
        else env.get("SCALING_PROCESS_ID"),
    }
    given = {k for k, v in explicit.items() if v not in (None, "")}
    if given:
        names = {"coordinator_address": "SCALING_COORDINATOR",
                 "num_processes": "SCALING_NUM_PROCESSES", "process_id": "SCALING_PROCESS_ID"}
        missing = [names[k] for k in names if k not in given]
        if missing:
            raise ValueError(f"multi-process layout incomplete: {', '.join(missing)} not set "
                             f"(set all of SCALING_COORDINATOR=host:port, SCALING_NUM_PROCESSES, "
                             f"SCALING_PROCESS_ID, or none of them)")
        n = _int("SCALING_NUM_PROCESSES", explicit["num_processes"])
        i = _int("SCALING_PROCESS_ID", explicit["process_id"])
        addr = str(explicit["coordinator_address"])
        if ":" not in addr:
            raise ValueError(f"SCALING_COORDINATOR={addr!r}: must be host:port")
        return _checked(addr, n, i, "SCALING_NUM_PROCESSES", "SCALING_PROCESS_ID")

    # 2. SkyPilot multi-node
    if "SKYPILOT_NUM_NODES" in env and _int("SKYPILOT_NUM_NODES", env["SKYPILOT_NUM_NODES"]) > 1:
        n = _int("SKYPILOT_NUM_NODES", env["SKYPILOT_NUM_NODES"])
        ips = [line.strip() for line in env.get("SKYPILOT_NODE_IPS", "").splitlines() if line.strip()]
        if len(ips) != n:
            raise ValueError(f"SKYPILOT_NODE_IPS lists {len(ips)} hosts but SKYPILOT_NUM_NODES={n}")
        i = _int("SKYPILOT_NODE_RANK", env.get("SKYPILOT_NODE_RANK"))
        port = _int("SCALING_COORDINATOR_PORT", env.get("SCALING_COORDINATOR_PORT", DEFAULT_PORT))
        return _checked(f"{ips[0]}:{port}", n, i, "SKYPILOT_NUM_NODES", "SKYPILOT_NODE_RANK")

    # 3. Slurm / Open MPI: JAX's own cluster detection reads their variables
    if _launcher_size(env, SLURM) > 1 or _launcher_size(env, OPENMPI) > 1:
        _refuse_lone_copies(env, "")
        return {}
    # 4. TPU VM / pod: JAX discovers the layout from the TPU metadata
    if mode == "tpu" or _on_tpu_vm():
        return {}
    return None


# (name, process-count variable, the variables JAX 0.10's detection needs)
SLURM = ("Slurm", "SLURM_NTASKS", ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID"))
OPENMPI = ("Open MPI", "OMPI_COMM_WORLD_SIZE", ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_RANK",
                                                 "OMPI_COMM_WORLD_LOCAL_RANK"))


def _launcher_size(env: Mapping[str, str], launcher: tuple) -> int:
    """How many processes the launcher started (1 when its count variable is absent)."""
    return _int(launcher[1], env.get(launcher[1], 1))


def _refuse_lone_copies(env: Mapping[str, str], why: str) -> None:
    """ValueError when a launcher started several processes that would not form one JAX job."""
    for name, count, needed in (SLURM, OPENMPI):
        n = _launcher_size(env, (name, count, needed))
        missing = [v for v in needed if v not in env]
        if n > 1 and (why or missing):
            reason = why or (f"{', '.join(missing)} not set, so jax.distributed cannot find the other "
                             "processes (Slurm: start the trainer with srun inside the allocation; Open MPI "
                             "5 has no ORTE URI: set SCALING_COORDINATOR / SCALING_NUM_PROCESSES / "
                             "SCALING_PROCESS_ID from the launcher's rank variables)")
            raise ValueError(f"{name} started {n} processes ({count}={n}) but {reason}: each would train "
                             "alone into the same run directory; refusing")


def _checked(addr: str, n: int, i: int, n_name: str, i_name: str) -> dict | None:
    if n < 1:
        raise ValueError(f"{n_name}={n}: must be >= 1")
    if not 0 <= i < n:
        raise ValueError(f"{i_name}={i}: must be in [0, {n_name}={n})")
    if n == 1:
        return None
    return {"coordinator_address": addr, "num_processes": n, "process_id": i}


def initialize_from_env(cfg: Any = None) -> tuple[int, int]:
    """Join the multi-process job described by `cfg`/the environment (see the module docstring);
    returns (process_index, process_count). Idempotent; a single process returns (0, 1)."""
    if jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    kwargs = resolve(cfg)
    if kwargs is None:
        return 0, 1
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as e:
        raise RuntimeError(
            f"jax.distributed.initialize({kwargs}) failed: {e}. It must run before any JAX "
            f"computation or device query in this process.") from e
    return jax.process_index(), jax.process_count()


def is_main_process() -> bool:
    """True on process 0: the one that logs and writes metrics.jsonl / result.json."""
    return jax.process_index() == 0


def global_array(local: Any, sharding: jax.sharding.Sharding) -> Any:
    """A global jax.Array (tree) from this process's rows.

    `local` (an array or a dict of arrays, e.g. {'inputs', 'targets'} int32[B/P, T]) holds the
    rows of the global batch that this process feeds (process p: rows [p*B/P, (p+1)*B/P), the
    order scaling.data.pipeline uses); `sharding` is the global batch sharding. With a single
    process this is a plain device_put.
    """
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def process_batch_slice(sharding: jax.sharding.Sharding, global_batch: int) -> tuple[int, int]:
    """(shard_index, shard_count): this process feeds rows
    [shard_index * B/shard_count, (shard_index+1) * B/shard_count) of each global batch of B rows.

    Read off the sharding itself, not assumed: usually (process_index, process_count), but when
    the batch is replicated across processes (e.g. a 'model' axis spanning hosts) several
    processes feed the same rows, and shard_count < process_count. Pass the pair to the data
    pipeline as its process_index / process_count.
    """
    spans = set()
    for idx in sharding.addressable_devices_indices_map((global_batch, 1)).values():
        rows = idx[0] if idx else slice(None)
        spans.add((rows.start or 0, global_batch if rows.stop is None else rows.stop))
    spans = sorted(spans)
    start, stop = spans[0][0], spans[-1][1]
    covered = sum(b - a for a, b in spans)
    n = stop - start
    if covered != n or any(b0 != a1 for (_, b0), (a1, _) in zip(spans, spans[1:])) \
            or global_batch % n or start % n:
        raise ValueError(
            f"process {jax.process_index()}'s devices hold rows {spans} of the global batch of "
            f"{global_batch}: not one aligned contiguous block, so the data pipeline cannot feed "
            f"them; order the mesh devices so each process's devices are adjacent on the batch axes")
    return start // n, global_batch // n
