"""`scaling data prepare|info`: writes a corpus; bad input prints one clear line, exits 2."""
import errno
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from scaling import cli as top_cli
from scaling.data import cli, open_corpus
from scaling.data import preparation


def test_prepare_jsonl_and_info(tmp_path, capsys):
    docs = [f"record {i} " * 40 for i in range(10)]
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"content": d}) + "\n" for d in docs))
    out = tmp_path / "corpus"
    rc = cli.main(["prepare", "--source", str(src), "--text-field", "content", "--out", str(out),
                   "--eval-fraction", "0.2", "--seed", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    c = open_corpus(out)
    assert c.meta["eval"]["documents"] == 2 and c.meta["seed"] == 1
    assert f"{c.meta['train']['tokens']:,} tokens" in printed
    ids = c.meta["eval"]["document_indices"]
    want = b"".join(docs[i].encode() + b"\0" for i in ids)
    np.testing.assert_array_equal(np.asarray(c.eval_tokens), np.frombuffer(want, np.uint8))
    assert top_cli.main(["data", "info", str(out)]) == 0
    assert c.meta["content_sha256"] in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--source", "{tmp}/missing.jsonl"], "JSONL file not found"),
    (["--source", "{tmp}/d.jsonl", "--text-field", "body"], "d.jsonl:1: no text field 'body'"),
    (["--source", "{tmp}/none*.txt"], "no files match this glob"),
    (["--source", "{tmp}/d.jsonl", "--tokenizer", "bpe:x"], "vocab size must be an integer"),
    (["--source", "{tmp}/d.jsonl", "--eval-fraction", "2"], "eval_fraction=2.0 must be in"),
    (["--source", "{tmp}/d.jsonl", "--seed", "-3"], "seed=-3 (the eval split's seed) must be"),
    (["--source", "{tmp}/d.jsonl", "--tokenizer", "bpe:1000"],
     "the training text supports a BPE vocabulary of at most"),
    (["--source", "{tmp}/empty.txt"], "it has 1 document, but the eval split needs"),
    (["--source", "{tmp}/empty.txt", "--eval-fraction", "0"],
     "every training document is empty or whitespace (1: {tmp}/empty.txt)"),
    (["--source", "{tmp}/bad.jsonl"], "bad.jsonl:2: not valid JSON"),
    (["--source", "{tmp}/d.jsonl", "--out", "{tmp}/d.jsonl"], "d.jsonl is an existing file"),
])
def test_prepare_errors_are_one_line(tmp_path, capsys, args, message):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": f"hello {i}"}) + "\n"
                                              for i in range(3)))
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n')
    (tmp_path / "empty.txt").write_text("")
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = ["prepare", "--out", str(tmp_path / "out")] + [a.format(tmp=tmp_path) for a in args]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no out, no temporary dir


def test_info_on_a_non_corpus(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path)]) == 2
    assert "is not a prepared corpus (no manifest.json or meta.json)" in capsys.readouterr().err
    (tmp_path / "meta.json").write_text("{")
    assert cli.main(["info", str(tmp_path)]) == 2
    assert f"{tmp_path / 'meta.json'}: not valid JSON" in capsys.readouterr().err


def test_prepare_disk_full_and_interrupt(tmp_path, capsys, monkeypatch):
    """A full disk and Ctrl-C each print one line, exit non-zero, and leave no corpus."""
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": "x" * 100}) + "\n"
                                              for _ in range(5)))
    argv = ["prepare", "--source", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "out")]

    def fail(exc):
        def write_splits(*a, **k):
            raise exc
        return write_splits

    monkeypatch.setattr(preparation, "write_splits", fail(OSError(errno.ENOSPC, "No space")))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "scaling data prepare: error: [Errno 28] disk full while writing shard 0 of" in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setattr(preparation, "write_splits", fail(KeyboardInterrupt()))
    assert cli.main(argv) == 130
    assert capsys.readouterr().err == "scaling data prepare: interrupted; nothing was written\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_closed_stdout_is_not_an_error(tmp_path):
    """`scaling data info X | head` closing the pipe early: exit 0, nothing on stderr."""
    out = tmp_path / "c"
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n"
                                              for i in range(3)))
    assert cli.main(["prepare", "--source", str(tmp_path / "d.jsonl"), "--out", str(out)]) == 0
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "scaling", "data", "info", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is printed
    assert proc.wait(timeout=120) == 0
    assert proc.stderr.read() == b""


def test_a_failed_plan_leaves_nothing(tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": f"hi {i}"}) + "\n" for i in range(3)))
    argv = ["prepare", "--source", str(tmp_path / "d.jsonl"), "--tokenizer", "bpe:1000",
            "--out", str(tmp_path / "out"), "--plan-only"]
    assert cli.main(argv) == 2
    assert "the training text supports a BPE vocabulary of at most" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]
