"""Where a run's numbers came from: hardware, process layout, mesh, code, data and the MFU peak.

`provenance(run)` returns a FLAT dict (scalars only, so analysis.results makes each a column of the
results table) that run_record.finish merges into result.json (`versions`, `git_sha`, `process_count`,
`num_devices` already existed there):

    prov_device_kind, prov_device_count   the devices of the run's mesh
    prov_process_count                    JAX processes (hosts) in the job
    prov_mesh                             the resolved mesh shape, e.g. "data=1,fsdp=8,model=1"
    prov_git_sha, prov_git_dirty          the code: this checkout's commit, or SCALING_GIT_SHA /
                                          SCALING_GIT_DIRTY set by the launcher (cloud hosts get a
                                          synced tree without .git)
    prov_corpus_sha256                    the prepared corpus' content hash (its meta.json)
    prov_version_<package>                python, jax, jaxlib, flax, optax, orbax-checkpoint, grain, numpy
    prov_peak_flops, prov_peak_source     the peak FLOP/s of the whole mesh used for MFU, and where it
                                          came from: 'config train.peak_flops', 'measured CPU matmul'
                                          or 'table scaling.accounting.PEAK_FLOPS[<key>]'
"""
from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform
import subprocess

from scaling import accounting

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")


def git_state(env=os.environ) -> tuple[str | None, bool | None]:
    """(sha, dirty) of the code: the launcher's SCALING_GIT_SHA if set, else this checkout's git."""
    if env.get("SCALING_GIT_SHA"):
        return env["SCALING_GIT_SHA"], env.get("SCALING_GIT_DIRTY", "0") == "1"
    here = pathlib.Path(__file__).parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        # --no-optional-locks: a run killed mid-probe (kill -9 of a sweep) must not leave the
        # checkout's index.lock behind, which would block the user's next git command
        status = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain"], cwd=here,
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None, None
    if sha.returncode:
        return None, None
    return sha.stdout.strip(), bool(status.stdout.strip())


def versions() -> dict:
    """Installed versions of the packages a result depends on (None when absent)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def peak_source(config, device) -> str | None:
    """Where train.py's MFU peak comes from (mirrors its choice): config, CPU measurement or table."""
    if config.train.peak_flops > 0:
        return "config train.peak_flops"
    if device.platform == "cpu":
        return "measured CPU matmul (scaling.accounting.measure_cpu_peak)"
    kind = device.device_kind.lower()
    key = next((k for k in accounting.PEAK_FLOPS if k in kind), None)
    return f"table scaling.accounting.PEAK_FLOPS[{key!r}]" if key else None


def provenance(run) -> dict:
    """The prov_* fields of result.json for a run_record.Run (mesh, corpus, config, peak)."""
    import jax

    device = run.mesh.devices.flat[0]
    sha, dirty = git_state()
    return {
        "prov_device_kind": device.device_kind, "prov_device_count": int(run.mesh.devices.size),
        "prov_process_count": jax.process_count(), "prov_mesh": ",".join(f"{k}={int(v)}" for k, v in run.mesh.shape.items()),
        "prov_git_sha": sha, "prov_git_dirty": dirty,
        "prov_corpus_sha256": run.corpus.meta.get("content_sha256"),
        "prov_peak_flops": run.peak, "prov_peak_source": peak_source(run.config, device),
        **{f"prov_version_{name}": v for name, v in versions().items()},
    }
