"""`scaling data prepare --backend skypilot`: the SkyPilot data job (launch/data_job.py).

The emulation follows tests/test_cloud_emulation.py: the task is built by the real command with
`skypilot.launch` replaced by a capture, then its own setup and run strings run under bash as two
"nodes" (processes with their own HOME and SkyPilot's SKYPILOT_NODE_RANK / SKYPILOT_NUM_NODES).
What differs from a cloud node: the bucket is a local directory (the task's gs:// --out becomes a
file:// URL, which goes through the same fsspec code), the mounted source folder is that directory's
copy of the bucket's files (the task's mount point is replaced by it in SCALING_DATA_SOURCE), and
setup uses the SCALING_HOST_PYTHON hook instead of downloads.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from launch import data_job, skypilot
from scaling.data import shards, sharded

REPO = pathlib.Path(__file__).resolve().parents[1]
FAKE_BUCKET = "gs://emulated-bucket"


def _write_docs(path: pathlib.Path, n: int = 30) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"document {i}: " + "some words " * (5 + i % 7)}) + "\n")
    return path


def _captured_task(monkeypatch, capsys, *args) -> object:
    """The task `scaling data prepare ... --backend skypilot` would launch (launch() captured)."""
    from cli import data as data_cmd

    captured = []
    monkeypatch.setattr(skypilot, "launch", lambda tasks: captured.extend(tasks))
    rc = data_cmd.main(["prepare", *args, "--backend", "skypilot", "--allow-dirty"])
    assert rc == 0, capsys.readouterr().err
    assert len(captured) == 1
    return captured[0]


def test_node_source_rules(tmp_path):
    assert data_job.node_source("gs://b/raw/fw/*.parquet") == (
        "/scaling-source/*.parquet", {"/scaling-source": {"source": "gs://b/raw/fw", "mode": "MOUNT"}})
    assert data_job.node_source("s3://b/docs.jsonl") == (
        "/scaling-source/docs.jsonl", {"/scaling-source": {"source": "s3://b", "mode": "MOUNT"}})
    assert data_job.node_source("gs://b/web/**/*.jsonl")[1]["/scaling-source"]["source"] == "gs://b/web"
    assert data_job.node_source("sotu") == ("sotu", {})
    assert data_job.node_source("hf:HuggingFaceFW/fineweb-edu") == ("hf:HuggingFaceFW/fineweb-edu", {})
    for bad, says in (("docs.jsonl", "a path on this machine"), (str(tmp_path / "*.txt"), "a path on this machine"),
                      ("https://x.org/a.jsonl", "a URL the nodes cannot read"), (f"hf:{tmp_path}", "a dataset on this"),
                      ("gs://b", "names a bucket")):
        with pytest.raises(ValueError, match=says):
            data_job.node_source(bad)


def test_shares_cover_every_shard_once():
    for n_nodes in (1, 2, 3, 4, 7):
        for n_shards in (1, 2, 5, 8, 13):
            got = [i for r in range(n_nodes) for i in data_job.share(r, n_nodes, n_shards)]
            assert got == list(range(n_shards))
            sizes = [len(data_job.share(r, n_nodes, n_shards)) for r in range(n_nodes)]
            assert max(sizes) - min(sizes) <= 1


def test_dry_run_prints_the_validated_task(capsys):
    from cli import data as data_cmd

    pytest.importorskip("sky", reason="the cloud extra (SkyPilot) builds the task")
    rc = data_cmd.main(["prepare", "--source", "gs://b/raw/fw/*.parquet", "--tokenizer", "bpe:32768",
                        "--out", "gs://b/corpora/fw", "--backend", "skypilot", "--nodes", "4", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "name: data-fw\n" in out and "num_nodes: 4\n" in out and "cpus: 8+" in out
    assert "SCALING_DATA_OUT: gs://b/corpora/fw" in out and "source: gs://b/raw/fw" in out
    assert "-m launch.data_job node" in out and "dry run: nothing launched" in out


@pytest.mark.parametrize("args, says", [
    (["--source", "docs.jsonl", "--out", "gs://b/x"], "--source 'docs.jsonl' is a path on this machine"),
    (["--source", "sotu", "--out", "corpora/x"], "--out 'corpora/x': the nodes write the corpus into a bucket"),
    (["--source", "sotu", "--out", "gs://b/x", "--nodes", "0"], "--nodes 0: must be >= 1"),
    (["--source", "sotu", "--out", "gs://b/x", "--tokenizer-file", "t.json"], "--tokenizer-file is a file on"),
])
def test_refusals_are_one_line(args, says, capsys):
    from cli import data as data_cmd

    assert data_cmd.main(["prepare", *args, "--backend", "skypilot", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


def _node(out, rank: int, n_nodes: int, monkeypatch, *extra) -> int:
    """One node's command in this process (for the waiting errors, which need no second process)."""
    monkeypatch.setenv("SKYPILOT_NODE_RANK", str(rank))
    monkeypatch.setenv("SKYPILOT_NUM_NODES", str(n_nodes))
    return data_job.node_main(["--source", str(out[0]), "--out", out[1], "--shard-docs", "4",
                               "--processes", "1", *extra])


def test_waits_time_out_with_one_line_naming_what_is_missing(tmp_path, monkeypatch, capsys):
    src = _write_docs(tmp_path / "docs.jsonl")
    out = f"file://{tmp_path}/bucket/c"
    assert _node((src, out), 1, 2, monkeypatch, "--wait-timeout", "0.3") == 2  # no plan yet
    err = capsys.readouterr().err
    assert f"data job node 1/2: error: {out}: no plan.json after 0.3 s; node rank 0 makes it" in err
    # rank 0 of 3: plans, encodes shards 0..1 of 8, and waits in vain for ranks 1 and 2
    assert _node((src, out), 0, 3, monkeypatch, "--wait-timeout", "0.3") == 2
    err = capsys.readouterr().err
    assert (f"{out}: after 0.3 s, 6 of 8 shards have no record (shard 2, 3, 4, 5, 6, 7; node rank 1, 2): "
            "relaunch the job") in err and err.count("\n") == 1
    assert not (tmp_path / "bucket" / "c" / shards.MANIFEST_FILE).exists()


def _host_env(home: pathlib.Path, envs: dict, **extra) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONUNBUFFERED": "1",
            "SCALING_HOST_PYTHON": sys.executable, **envs, **extra}


def _start(script: str, env: dict, log: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", script], cwd=REPO, env=env, stdout=log.open("a"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ok(procs, logs, timeout=120) -> None:
    for p, log in zip(procs, logs):
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            raise AssertionError(f"node timed out; log:\n{log.read_text()[-3000:]}") from None
        assert rc == 0, f"node exited {rc}; log:\n{log.read_text()[-3000:]}"


def test_two_node_job_killed_and_relaunched_equals_one_process(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sky", reason="the cloud extra (SkyPilot) builds the task")
    bucket = tmp_path / "bucket"
    src = _write_docs(bucket / "raw" / "docs.jsonl")  # the bucket's copy of the source
    task = _captured_task(monkeypatch, capsys, "--source", f"{FAKE_BUCKET}/raw/docs.jsonl", "--shard-docs", "4",
                          "--out", f"{FAKE_BUCKET}/corpora/docs", "--nodes", "2", "--processes", "2")
    assert task.num_nodes == 2
    [(mount, storage)] = task.storage_mounts.items()
    assert storage.source == f"{FAKE_BUCKET}/raw"
    envs = dict(task.envs)
    assert envs["SCALING_DATA_SOURCE"] == f"{mount}/docs.jsonl"
    envs["SCALING_DATA_SOURCE"] = envs["SCALING_DATA_SOURCE"].replace(mount, str(bucket / "raw"))
    envs["SCALING_DATA_OUT"] = envs["SCALING_DATA_OUT"].replace(FAKE_BUCKET, f"file://{bucket}")
    out = bucket / "corpora" / "docs"
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    homes = [tmp_path / f"node{i}" for i in range(2)]

    setups = [_start(task.setup, _host_env(h, envs, SKYPILOT_SETUP_NODE_RANK=str(i), SKYPILOT_NUM_NODES="2"), log)
              for i, (h, log) in enumerate(zip(homes, logs))]
    _wait_ok(setups, logs)

    def node(i):
        return _start(task.run, _host_env(homes[i], envs, SKYPILOT_NODE_RANK=str(i), SKYPILOT_NUM_NODES="2"), logs[i])

    # node 1 is not up yet; node 0 plans, encodes its shards 0..3 and waits for 4..7: it is lost there
    first = node(0)
    deadline = time.time() + 60
    while not all((out / shards.record_file(i, 8)).exists() for i in range(4)):
        assert first.poll() is None and time.time() < deadline, logs[0].read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (out / shards.MANIFEST_FILE).exists()
    # the recovery: both nodes run the same command again; node 0's shards are kept, not redone
    again = [node(0), node(1)]
    _wait_ok(again, logs)
    log0 = logs[0].read_text()
    assert "node 0/2: shards 0..3 of 8 (2 processes)" in log0
    assert "node 0/2: 0 shard(s) encoded now, 4 were done" in log0
    assert "node 1/2: 4 shard(s) encoded now, 0 were done" in logs[1].read_text()
    in_bucket = json.loads((out / shards.MANIFEST_FILE).read_text())
    one_process = sharded.prepare(str(src), tmp_path / "local", shard_docs=4).meta
    assert in_bucket["content_sha256"] == one_process["content_sha256"]
    assert in_bucket["train"] == one_process["train"] and in_bucket["eval"]["tokens"] == one_process["eval"]["tokens"]
