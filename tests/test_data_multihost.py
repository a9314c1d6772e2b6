"""Two real JAX processes (jax.distributed on CPU): each loads its shard of the batch; the
assembled global array equals the single-process batch."""
import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from scaling.data import prepare, train_loader

WORKER = """
import json, sys
import jax
import numpy as np
from jax.experimental import multihost_utils
from scaling.data import open_corpus, train_loader

port, pid, path, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid)
loader, _ = train_loader(open_corpus(path), seq_len=16, global_batch=8, num_steps=3, seed=5,
                         process_index=jax.process_index(), process_count=jax.process_count())
mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
got = []
for b in loader:
    x = jax.make_array_from_process_local_data(sh, b["inputs"])
    assert x.shape == (8, 16), x.shape
    got.append(np.asarray(multihost_utils.process_allgather(x, tiled=True)).tolist())
if pid == 0:
    json.dump(got, open(out, "w"))
jax.distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_global_batch_equals_single_process(tmp_path):
    for i in range(8):
        (tmp_path / f"{i}.txt").write_text(f"document {i} " * 60)
    corpus = prepare(str(tmp_path / "*.txt"), tmp_path / "c", eval_fraction=0.0)
    out, port = tmp_path / "global.json", _free_port()
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(port), str(i), str(corpus.path),
                               str(out)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    single, _ = train_loader(corpus, seq_len=16, global_batch=8, num_steps=3, seed=5)
    want = [b["inputs"] for b in single]
    got = [np.asarray(g) for g in json.loads(out.read_text())]
    assert len(got) == 3
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
