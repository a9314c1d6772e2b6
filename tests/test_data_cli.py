"""`scaling data prepare|info`: writes a corpus; bad input prints one clear line, exits 2."""
import json

import numpy as np
import pytest

from scaling import cli as top_cli
from scaling.data import cli, open_corpus


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
    (["--source", "{tmp}/d.jsonl", "--text-field", "body"], "no text field 'body'"),
    (["--source", "{tmp}/none*.txt"], "no files match this glob"),
    (["--source", "{tmp}/d.jsonl", "--tokenizer", "bpe:x"], "vocab size must be an integer"),
    (["--source", "{tmp}/d.jsonl", "--eval-fraction", "2"], "eval_fraction=2.0 must be in"),
])
def test_prepare_errors_are_one_line(tmp_path, capsys, args, message):
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    argv = ["prepare", "--out", str(tmp_path / "out")] + [a.format(tmp=tmp_path) for a in args]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_info_on_a_non_corpus(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path)]) == 2
    assert "is not a prepared corpus (no meta.json)" in capsys.readouterr().err
