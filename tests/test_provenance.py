"""Provenance in result.json: a tiny real run records its devices, mesh, code, corpus hash, versions
and the MFU peak with its source; the pieces are checked against independent sources."""
import importlib.metadata
import json
import math
import subprocess
import types

import jax

from scaling import data, provenance, rundir
from scaling.train import train


def test_tiny_run_records_provenance(tiny_config, tmp_path):
    result = train(tiny_config, tmp_path / "run", verbose=False)
    on_disk = rundir.read_result(tmp_path / "run")
    for r in (result, on_disk):
        assert r["prov_device_kind"] == jax.devices()[0].device_kind
        assert r["prov_device_count"] == r["num_devices"] and r["prov_process_count"] == 1
        mesh = dict(kv.split("=") for kv in r["prov_mesh"].split(","))
        assert math.prod(int(v) for v in mesh.values()) == r["num_devices"] and "data" in mesh
        corpus_meta = json.loads((data.load(tiny_config.data).path / "meta.json").read_text())  # the sidecar
        assert r["prov_corpus_sha256"] == corpus_meta["content_sha256"]
        assert r["prov_version_jax"] == jax.__version__
        assert r["prov_version_flax"] == importlib.metadata.version("flax")
        assert not [k for k, v in r.items() if k.startswith("prov_") and isinstance(v, (dict, list))]  # columns
        assert tiny_config.train.peak_flops > 0  # the fixture states the peak: no measurement
        assert r["prov_peak_source"] == "config train.peak_flops"
        assert r["prov_peak_flops"] == tiny_config.train.peak_flops * r["num_devices"]
        assert r["prov_git_sha"] == r["git_sha"]


def test_git_state_prefers_the_launcher_record():
    assert provenance.git_state({"SCALING_GIT_SHA": "abc", "SCALING_GIT_DIRTY": "1"}) == ("abc", True)
    sha, dirty = provenance.git_state({})
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                         cwd=provenance.__file__.rsplit("/", 1)[0])
    assert sha == (out.stdout.strip() or None)


def test_peak_source_names_the_table_entry():
    cfg = types.SimpleNamespace(train=types.SimpleNamespace(peak_flops=0.0))
    tpu = types.SimpleNamespace(platform="tpu", device_kind="TPU v4")
    assert provenance.peak_source(cfg, tpu) == "table scaling.accounting.PEAK_FLOPS['tpu v4']"
    assert provenance.peak_source(cfg, types.SimpleNamespace(platform="gpu", device_kind="Mystery")) is None
    cfg.train.peak_flops = 1e12
    assert provenance.peak_source(cfg, tpu) == "config train.peak_flops"


def test_provenance_becomes_table_columns(tiny_config, tmp_path):
    from analysis import results
    train(tiny_config, tmp_path / "runs" / "r", verbose=False)
    df = results.load(tmp_path, on_error="raise")
    assert len(df) == 1
    for col in ("prov_device_kind", "prov_mesh", "prov_corpus_sha256", "prov_peak_source", "prov_version_jax"):
        assert col in df.columns
