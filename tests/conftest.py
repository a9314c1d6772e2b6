"""Test-wide setup: 8 fake CPU devices (multi-device tests), before JAX is imported."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Persistent compilation cache for the session (subprocesses inherit it): tests train the same tiny
# shapes many times, and compiling dominates their run time on 2 cores.
import tempfile  # noqa: E402

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="scaling-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """Path to ../shared/data; fail under CI=true when missing, skip elsewhere."""
    if not SHARED_DATA.is_dir():
        msg = f"published data not found at {SHARED_DATA}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return SHARED_DATA


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory):
    """One data.cache_dir for the whole session, so the embedded corpus is prepared once."""
    return str(tmp_path_factory.mktemp("data_cache"))


@pytest.fixture
def tiny_config(corpus_cache):
    """A config that trains in seconds on CPU: bytes tokenizer, 2 layers, d=32, one device."""
    from scaling import config as cfg_lib

    c = cfg_lib.defaults()
    c.data.cache_dir = corpus_cache
    c.data.seq_len = 32
    c.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2)
    c.train.update(batch_size=8, tokens=8 * 32 * 20, log_every=5, eval_every=10, eval_tokens=8 * 32 * 4,
                   peak_flops=1e11)
    c.optim.update(warmup_steps=5, lr=3e-3)
    c.mesh.num_devices = 1
    c.checkpoint.every_steps = 10
    return c
