"""Tokenizers: bytes and byte-level BPE round-trip text; specs and tiktoken fail clearly."""
import importlib.util

import numpy as np
import pytest

from scaling.data import open_corpus, prepare, tokenizers

TEXTS = [
    "Fellow-Citizens of the Senate and House of Representatives:\n\n  indented\ttab",
    "Unicode: caf\u00e9, na\u00efve, \u4e2d\u6587, emoji \U0001f600, rtl \u05e9\u05dc\u05d5\u05dd",
    "",
    "trailing spaces   \n\n\n",
]


def test_bytes_round_trip():
    tok = tokenizers.BytesTokenizer()
    for t in TEXTS:
        ids = tok.encode(t)
        assert ids.size == len(t.encode("utf-8")) and (ids < 256).all()
        assert tok.decode(ids) == t


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe")
    corpus = [("the quick brown fox jumps over the lazy dog. " * 20) + t for t in TEXTS] * 5
    return tokenizers.BPETokenizer.train(corpus, 300, out), out


def test_bpe_round_trip_and_compresses(bpe):
    tok, out = bpe
    assert tok.vocab_size == 300 and tok.eot_id is not None
    for t in TEXTS + ["text never seen in training: \u00fc\u00df \U0001f680 xyzzy"]:
        assert tok.decode(tok.encode(t)) == t
    s = "the quick brown fox jumps over the lazy dog. " * 3
    assert tok.encode(s).size < len(s.encode()) / 2  # merges learned: fewer tokens than bytes
    again = tokenizers.BPETokenizer.load(out / tokenizers.TOKENIZER_FILE)
    assert again.sha256 == tok.sha256 and len(tok.sha256) == 64
    np.testing.assert_array_equal(again.encode(s), tok.encode(s))


def test_bpe_corpus_decodes_to_its_documents(tmp_path):
    docs = [f"Address {i}. The state of the union is strong; caf\u00e9 {i * 7}.\n" * 30
            for i in range(12)]
    for i, d in enumerate(docs):
        (tmp_path / f"{i:02d}.txt").write_text(d)
    c = prepare(str(tmp_path / "*.txt"), tmp_path / "c", tokenizer="bpe:300", eval_fraction=0.2)
    m = c.meta
    assert m["tokenizer"]["file"] == "tokenizer.json" and m["dtype"] == "uint16"
    assert (c.path / "tokenizer.json").is_file()
    assert c.vocab_size == m["tokenizer"]["vocab_size"] == 300
    tok = open_corpus(c.path).tokenizer()
    assert tok.sha256 == m["tokenizer"]["sha256"]
    eot = m["tokenizer"]["eot_id"]
    ev = np.asarray(c.eval_tokens)
    pieces = np.split(ev, np.flatnonzero(ev == eot) + 1)[:-1]
    assert [tok.decode(p[:-1]) for p in pieces] == [docs[i] for i in m["eval"]["document_indices"]]
    assert m["train"]["bytes_per_token"] > 1.5  # BPE packs several bytes per token


def test_bpe_vocab_larger_than_the_text_supports_is_refused(tmp_path):
    """A short text runs out of pairs to merge: bpe:1000 is refused, naming the largest vocab
    the text supports; that vocab (and any smaller one) then trains exactly."""
    text = ["hello world, this is a small text\n"]
    with pytest.raises(ValueError, match=r"^tokenizer 'bpe:1000': the training text supports a "
                                         r"BPE vocabulary of at most (\d+) .*use bpe:\1 or less"
                       ) as e:
        tokenizers.BPETokenizer.train(text, 1000, tmp_path)
    most = int(e.value.args[0].split("at most ")[1].split()[0])
    # independent bound: each merge joins a pair of adjacent symbols, so a text of L bytes
    # allows at most L - 1 merges (and whitespace-split pre-tokens allow fewer)
    assert 257 < most <= 257 + len(text[0]) - 1
    assert not (tmp_path / tokenizers.TOKENIZER_FILE).exists()  # nothing saved on refusal
    for vocab in (most, most - 5):
        assert tokenizers.BPETokenizer.train(text, vocab, tmp_path).vocab_size == vocab


def test_bpe_corpus_with_a_vocab_the_text_cannot_fill_is_not_written(tmp_path):
    docs = ["short text number one\n", "short text number two\n", "and a third one\n"]
    for i, d in enumerate(docs):
        (tmp_path / f"{i}.txt").write_text(d)
    with pytest.raises(ValueError, match=r"'bpe:5000': the training text supports"):
        prepare(str(tmp_path / "*.txt"), tmp_path / "c", tokenizer="bpe:5000", eval_fraction=0.3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.txt", "1.txt", "2.txt"]


def test_bad_specs():
    for bad in ("bpe", "bpe:abc", "bpe:100", "tiktoken", "sentencepiece:8000", 256):
        with pytest.raises(ValueError, match="valid: 'bytes', 'bpe:<vocab>'"):
            tokenizers.parse_spec(bad)
    assert tokenizers.parse_spec("bpe:8192") == ("bpe", 8192)


def test_tiktoken_needs_package_and_local_file(tmp_path, monkeypatch):
    """No tiktoken: ImportError naming the fix. tiktoken but an empty cache and no network:
    FileNotFoundError naming the cache dir. (Where a network exists, it loads: round-trip.)"""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    if importlib.util.find_spec("tiktoken") is None:
        with pytest.raises(ImportError, match="needs the tiktoken package.*pip install tiktoken"):
            tokenizers.TiktokenTokenizer("cl100k_base")
        return
    with pytest.raises(ValueError, match="unknown tiktoken encoding 'no_such_encoding'"):
        tokenizers.TiktokenTokenizer("no_such_encoding")
    try:
        tok = tokenizers.TiktokenTokenizer("cl100k_base")
    except FileNotFoundError as e:
        assert "not available locally" in str(e) and str(tmp_path) in str(e)
    else:
        assert tok.decode(tok.encode(TEXTS[1])) == TEXTS[1]
