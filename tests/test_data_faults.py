"""Corpus preparation and loading under bad input and faults: every case is refused with one
clear message naming the file, and nothing is left at --out (no corpus that looks complete)."""
import builtins
import errno
import gzip
import json
import pathlib

import numpy as np
import pytest

from scaling.data import preparation
from scaling.data import load, open_corpus, prepare

DOCS = [f"document {i}: {'some words ' * (i + 2)}\n" for i in range(6)]


def assert_nothing_written(tmp_path, out="c"):
    assert not (tmp_path / out).exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def write_files(root, texts):
    root.mkdir(exist_ok=True)
    for i, t in enumerate(texts):
        (root / f"{i}.txt").write_text(t)
    return str(root / "*.txt")


@pytest.mark.parametrize("texts, fraction, message", [
    ([""], 0.0, r"source '.*': every training document is empty or whitespace \(1: .*0.txt\)"),
    ([" \n\t\n", "\n"], 0.0, r"every training document is empty or whitespace \(2: .*0.txt, .*1.txt\)"),
    (["one whole document\n"], 0.02, r"source '.*': it has 1 document, but the eval split needs at least "
                                     r"one held-out document .* or eval_fraction 0"),
    ([""], 0.02, r"has 1 document, but the eval split needs"),
])
def test_sources_without_usable_text_are_refused(tmp_path, texts, fraction, message):
    glob = write_files(tmp_path / "src", texts)
    with pytest.raises(ValueError, match=message):
        prepare(glob, tmp_path / "c", eval_fraction=fraction)
    assert_nothing_written(tmp_path)


def test_eval_split_of_only_whitespace_documents_is_refused(tmp_path):
    """3 documents, one of them blank; the seed that holds out the blank one is refused, a seed
    that holds out a real one gives a corpus whose sidecar counts the blank document."""
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["a b c", "   ", "d e f"]))
    seeds = {s: int(preparation.choose_eval_documents(3, 0.3, s)[0]) for s in range(20)}
    blank_seed = next(s for s, i in seeds.items() if i == 1)
    real_seed = next(s for s, i in seeds.items() if i != 1)
    with pytest.raises(ValueError, match=r"every held-out \(eval\) document is empty or whitespace "
                                         r"\(1: .*d.jsonl:2\); .* choose another --seed"):
        prepare(str(src), tmp_path / "c", eval_fraction=0.3, seed=blank_seed)
    assert_nothing_written(tmp_path)
    c = prepare(str(src), tmp_path / "c", eval_fraction=0.3, seed=real_seed)
    assert (c.meta["train"]["empty_documents"], c.meta["eval"]["empty_documents"]) == (1, 0)


GZ_CUT = gzip.compress(b"".join(json.dumps({"text": d}).encode() + b"\n" for d in DOCS), mtime=0)[:40]  # mtime 0: the same bytes (and test id) in every pytest-xdist worker


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", b'{"text": "fine"}\n\n{"text": broken\n', r"source .*bad.jsonl:3: not valid JSON"),
    ("nofield.jsonl", b'{"text": "a"}\n{"body": "b"}\n',
     r"nofield.jsonl:2: no text field 'text' \(found keys \['body'\]\)"),
    ("latin.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"latin.jsonl:2: not UTF-8 text"),
    ("cut.jsonl.gz", GZ_CUT, r"cut.jsonl.gz:\d+: not a readable gzip file \(truncated"),
    ("empty.jsonl", b"\n\n", r"source '.*empty.jsonl': it has no documents"),
    ("junk.parquet", b"not parquet", r"junk.parquet': not a readable Parquet file"),
])
def test_bad_source_files_name_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        prepare(str(tmp_path / name), tmp_path / "c")
    assert_nothing_written(tmp_path)


def test_out_paths_that_cannot_take_a_corpus(tmp_path):
    glob = write_files(tmp_path / "src", DOCS)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match=r"--out .*file is an existing file"):
        prepare(glob, tmp_path / "file")
    with pytest.raises(FileExistsError, match=r"--out .*file/sub: .*file is a file, not a directory"):
        prepare(glob, tmp_path / "file" / "sub")
    first = prepare(glob, tmp_path / "c", eval_fraction=0.2)
    with pytest.raises(FileExistsError, match="already holds a prepared corpus"):
        prepare(glob, tmp_path / "c", tokenizer="bpe:300")  # another corpus: refused, not mixed
    assert open_corpus(tmp_path / "c").meta == first.meta
    with pytest.raises(ValueError, match=r"seed=-1 \(the eval split's seed\) must be an integer >= 0"):
        prepare(glob, tmp_path / "c2", seed=-1)


class FullDisk:
    """`open` for the corpus module whose binary files accept `budget` bytes, then ENOSPC."""

    def __init__(self, budget):
        self.budget, self.failed_in = budget, None

    def __call__(self, path, mode="r", *args, **kw):
        f = builtins.open(path, mode, *args, **kw)
        if "w" not in mode:
            return f
        outer = self

        class Limited:
            def __getattr__(self, name):
                return getattr(f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, data):
                outer.budget -= len(data)
                if outer.budget < 0:
                    outer.failed_in = pathlib.Path(path).name
                    raise OSError(errno.ENOSPC, "No space left on device")
                return f.write(data)

        return Limited()


@pytest.mark.parametrize("where", ["first token", "mid tokens", "meta.json"])
def test_disk_full_leaves_no_corpus(tmp_path, monkeypatch, where):
    glob = write_files(tmp_path / "src", DOCS * 10)
    token_bytes = 2 * sum(len(d.encode()) + 1 for d in DOCS * 10)  # uint16, one eot per doc
    budget = {"first token": 0, "mid tokens": token_bytes // 2, "meta.json": token_bytes + 100}
    full = FullDisk(budget[where])
    monkeypatch.setattr(preparation, "open", full, raising=False)
    with pytest.raises(OSError, match=r"disk full: no space left on the file system of .* while "
                                      r"writing the corpus .*/c; nothing was kept") as e:
        prepare(glob, tmp_path / "c", eval_fraction=0.1)
    assert e.value.errno == errno.ENOSPC
    assert full.failed_in == ("meta.json" if where == "meta.json" else "train.bin")
    assert_nothing_written(tmp_path)
    monkeypatch.undo()
    c = load({"corpus": glob, "cache_dir": str(tmp_path / "cache"), "eval_fraction": 0.1})
    assert c.meta["train"]["documents"] == 54  # and a retry with space prepares it whole


def test_corrupt_prepared_corpora_name_the_file(tmp_path):
    glob = write_files(tmp_path / "src", DOCS)
    c = prepare(glob, tmp_path / "c", eval_fraction=0.2)
    meta_path = c.path / "meta.json"
    good = meta_path.read_text()
    for text, message in [("{", r"meta.json: not valid JSON"),
                          ("[1, 2]", r"meta.json: a JSON list, not an object"),
                          (json.dumps({**json.loads(good), "dtype": "float99"}),
                           r"meta.json: missing or invalid entry \(TypeError"),
                          (json.dumps({k: v for k, v in json.loads(good).items() if k != "eval"}),
                           r"meta.json: missing or invalid entry \(KeyError: 'eval'\)")]:
        meta_path.write_text(text)
        with pytest.raises(ValueError, match=message):
            open_corpus(c.path)
    meta_path.write_text(good)
    train = c.path / "train.bin"
    data = train.read_bytes()
    train.write_bytes(data[:-1])  # half a uint16 token
    with pytest.raises(ValueError, match=r"train.bin: \d+ bytes is not a whole number of uint16"):
        open_corpus(c.path)
    train.write_bytes(data[:-2])
    with pytest.raises(ValueError, match=r"train.bin: \d+ tokens, sidecar says \d+ \(corrupt"):
        open_corpus(c.path)
    train.unlink()
    with pytest.raises(FileNotFoundError, match=r"train.bin: token file missing"):
        open_corpus(c.path)


def test_load_refuses_a_bpe_corpus_smaller_than_its_spec(tmp_path):
    """A corpus prepared before the vocabulary check (spec bpe:1000, real vocab smaller) names
    the vocabulary to use instead of failing later on one of two contradicting checks."""
    glob = write_files(tmp_path / "src", DOCS)
    c = prepare(glob, tmp_path / "c", tokenizer="bpe:270", eval_fraction=0.2)
    meta = json.loads((c.path / "meta.json").read_text())
    meta["tokenizer"]["spec"] = "bpe:1000"
    (c.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"prepared with tokenizer 'bpe:1000' but its text only "
                                         r"gave 270 tokens; prepare it again with bpe:270"):
        load({"corpus": str(c.path), "tokenizer": "bpe:1000"})
    with pytest.raises(ValueError, match=r"tokenizer.json: 270 tokens, but the corpus's tokenizer "
                                         r"is 'bpe:1000'"):
        open_corpus(c.path).tokenizer()


def test_cache_dir_that_is_a_file(tmp_path):
    (tmp_path / "cache").write_text("")
    glob = write_files(tmp_path / "src", DOCS)
    with pytest.raises(FileExistsError, match=r"data.cache_dir='.*cache' is an existing file"):
        load({"corpus": glob, "cache_dir": str(tmp_path / "cache")})
    np.testing.assert_equal((tmp_path / "cache").read_text(), "")


def test_load_names_the_config_key_for_any_source_error(tmp_path, monkeypatch):
    """Errors whose class takes other arguments (JSONDecodeError) are still re-raised with the
    config key, as a plain ValueError."""
    def broken(spec, text_field):
        raise json.JSONDecodeError("Expecting value", "x", 0)

    monkeypatch.setattr(preparation.sources, "open_source", broken)
    with pytest.raises(ValueError, match=r"data.corpus='some.jsonl' \(neither .*\): Expecting value"):
        load({"corpus": "some.jsonl", "cache_dir": str(tmp_path / "cache")})
