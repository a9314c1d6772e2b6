"""A corpus in a bucket: prepared by two "nodes" (processes) into a local directory standing in
for the bucket (file:// URLs go through the same fsspec code as gs:// and s3://), and read back
through a fake slow object store that counts requests: one per batch, not one per window."""
import json
import os
import subprocess
import sys
import time

import fsspec
import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem

from scaling.data import cli, load, open_corpus, sharded, train_loader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jsonl(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"document {i}: " + "words and more words " * (20 + i)}) + "\n")
    return str(path)


def node(*args):
    """One 'machine': `scaling data ...` in its own process."""
    return subprocess.Popen([sys.executable, "-m", "scaling", "data", *args], env=dict(
        os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def batches(corpus, steps=4, **kw):
    loader, _ = train_loader(corpus, seq_len=64, global_batch=8, num_steps=steps, seed=1, **kw)
    return [b["inputs"] for b in loader]


@pytest.mark.slow
def test_two_nodes_prepare_shard_ranges_into_a_bucket(tmp_path, capsys):
    src = write_jsonl(tmp_path / "d.jsonl", 30)
    bucket = f"file://{tmp_path}/bucket/corpora/web"
    args = ["--source", src, "--tokenizer", "bpe:300", "--shard-docs", "4", "--out", bucket]
    assert cli.main(["prepare", *args, "--plan-only"]) == 0  # once: split, shards, tokenizer
    assert "8 shards" in capsys.readouterr().out
    assert cli.main(["finalize", bucket]) == 2  # nothing encoded yet
    assert "8 of 8 shards are not prepared yet (shard 0, 1, 2" in capsys.readouterr().err
    nodes = [node("prepare", *args, "--shards", "0:5"), node("prepare", *args, "--shards", "5:8")]
    logs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], logs
    assert cli.main(["finalize", bucket]) == 0
    in_bucket = open_corpus(bucket)
    local = sharded.prepare(src, tmp_path / "local", tokenizer="bpe:300", shard_docs=4)
    assert in_bucket.meta == local.meta  # the same manifest, byte for byte in content
    np.testing.assert_array_equal(np.asarray(in_bucket.train_tokens), np.asarray(local.train_tokens))
    for a, b in zip(batches(in_bucket), batches(local)):  # read through fsspec vs memory maps
        np.testing.assert_array_equal(a, b)
    # The trainer's entry point takes the URL as data.corpus, with its tokenizer fetched from there.
    c = load({"corpus": bucket, "tokenizer": "bpe:300"})
    assert c.tokenizer().decode(np.asarray(c.eval_tokens)[:3]).startswith("document")


class SlowCountingFS(LocalFileSystem):
    """A local directory posing as an object store with 20 ms per request; counts requests."""

    protocol = "slowfs"
    root_marker = "/"
    calls = {}

    @classmethod
    def _strip_protocol(cls, path):
        return path[len("slowfs://"):] if str(path).startswith("slowfs://") else path

    def _count(self, name, n=1):
        SlowCountingFS.calls[name] = SlowCountingFS.calls.get(name, 0) + n
        time.sleep(0.02)

    def cat_ranges(self, paths, starts, ends, **kw):
        self._count("cat_ranges")
        SlowCountingFS.calls["ranges"] = SlowCountingFS.calls.get("ranges", 0) + len(paths)
        return [self.cat_file(p, s, e, _counted=True) for p, s, e in zip(paths, starts, ends)]

    def cat_file(self, path, start=None, end=None, _counted=False, **kw):
        if not _counted:
            self._count("cat_file")
        self._inside = True  # the local implementation opens the file: not another request
        try:
            return super().cat_file(path, start=start, end=end, **kw)
        finally:
            self._inside = False

    def ls(self, path, detail=True, **kw):
        self._count("ls")
        return super().ls(path, detail=detail, **kw)

    def _open(self, path, *a, **kw):
        if not getattr(self, "_inside", False):
            self._count("open")
        return super()._open(path, *a, **kw)


def test_bucket_reads_are_batched_and_each_host_reads_only_its_windows(tmp_path):
    fsspec.register_implementation("slowfs", SlowCountingFS, clobber=True)
    local = sharded.prepare(write_jsonl(tmp_path / "d.jsonl", 40), tmp_path / "c", shard_docs=5)
    SlowCountingFS.calls = {}
    remote = open_corpus(f"slowfs://{tmp_path}/c")
    assert SlowCountingFS.calls == {"cat_file": 1, "ls": 1}  # the manifest, one shard listing
    SlowCountingFS.calls = {}
    steps = 6
    got = batches(remote, steps=steps, process_index=1, process_count=2)
    # One request per batch of 4 windows (this host's half of the global batch of 8), never a
    # per-window or per-token read, and no whole-shard downloads.
    assert SlowCountingFS.calls["cat_ranges"] == steps and "open" not in SlowCountingFS.calls
    assert steps * 4 <= SlowCountingFS.calls["ranges"] <= steps * 4 * 2  # a window may span 2 shards
    want = batches(local, steps=steps, process_index=1, process_count=2)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
