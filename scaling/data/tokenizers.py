"""Tokenizers: text <-> token ids. One small class per kind, chosen by a spec string.

    bytes               UTF-8 bytes, vocab 256, no training. The default: bits/byte is then
                        independent of any tokenizer choice.
    bpe:<vocab>         byte-level BPE trained with the `tokenizers` library on the corpus's
                        training documents, saved as tokenizer.json next to the tokens.
    tiktoken:<name>     a tiktoken encoding (e.g. cl100k_base), only if its BPE file is already
                        on disk (no network at run time) and tiktoken is installed.

Each document in a corpus is followed by the tokenizer's end-of-document id `eot_id`. For
`bytes` that is byte 0 (NUL), which does not occur in ordinary text; BPE adds a special token
`<|endoftext|>`; tiktoken uses its own eot token.
"""
import hashlib
import os
import pathlib
from collections.abc import Iterable

import numpy as np

EOT_TEXT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"


def _sha256_file(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


class BytesTokenizer:
    """UTF-8 bytes as tokens: vocab 256, eot = 0 (NUL)."""

    kind = "bytes"
    vocab_size = 256
    eot_id = 0
    file = None
    sha256 = hashlib.sha256(b"utf-8 bytes, vocab 256, eot 0").hexdigest()

    @property
    def spec(self) -> str:
        return "bytes"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return bytes(np.asarray(ids, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")


class BPETokenizer:
    """Byte-level BPE from the `tokenizers` library (any text round-trips: bytes are the base)."""

    kind = "bpe"

    def __init__(self, tok, path: pathlib.Path | None = None):
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.eot_id = tok.token_to_id(EOT_TEXT)
        if self.eot_id is None:
            raise ValueError(f"BPE tokenizer {path} has no {EOT_TEXT!r} special token")
        self.file = TOKENIZER_FILE
        self.sha256 = _sha256_file(path) if path is not None else None

    @property
    def spec(self) -> str:
        return f"bpe:{self.vocab_size}"

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, out_dir) -> "BPETokenizer":
        """Train on `texts` and save `out_dir/tokenizer.json`."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        got = tok.get_vocab_size()
        if got < vocab_size:  # the text ran out of pairs to merge
            raise ValueError(
                f"tokenizer 'bpe:{vocab_size}': the training text supports a BPE vocabulary of at "
                f"most {got} (256 bytes, end-of-text and {got - 257} merges); use bpe:{got} or "
                "less, or more text")
        path = pathlib.Path(out_dir) / TOKENIZER_FILE
        try:
            tok.save(str(path))
        except Exception as e:  # the Rust library raises a plain Exception, e.g. on a full disk
            raise OSError(f"could not write the BPE tokenizer to {path}: {e}") from e
        return cls(tok, path)

    @classmethod
    def load(cls, path) -> "BPETokenizer":
        from tokenizers import Tokenizer

        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"BPE tokenizer file not found: {path}")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust library raises a plain Exception
            raise ValueError(f"{path}: not a readable BPE tokenizer file ({e})") from e
        return cls(tok, path)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.uint32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.uint32) for e in self._tok.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


class TiktokenTokenizer:
    """A tiktoken encoding, loaded from the local tiktoken cache only."""

    kind = "tiktoken"
    file = None

    def __init__(self, name: str):
        try:
            import tiktoken
            import tiktoken.load
        except ImportError as e:
            raise ImportError(
                f"tokenizer 'tiktoken:{name}' needs the tiktoken package, which is not installed "
                "(pip install tiktoken); or use tokenizer 'bytes' or 'bpe:<vocab>'"
            ) from e
        self.name = name
        cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
        try:
            # tiktoken reads its BPE file from the cache dir; with no network a missing file
            # fails inside a download attempt, which we turn into a clear message.
            self._enc = tiktoken.get_encoding(name)
        except ValueError as e:
            raise ValueError(f"unknown tiktoken encoding {name!r}: {e}") from e
        except Exception as e:  # network errors come in many types
            raise FileNotFoundError(
                f"tiktoken encoding {name!r}: its BPE file is not available locally and there is "
                f"no network. Put the file in the tiktoken cache (TIKTOKEN_CACHE_DIR={cache!r}) "
                f"or use tokenizer 'bytes' or 'bpe:<vocab>'. ({type(e).__name__}: {e})"
            ) from e
        self.vocab_size = self._enc.n_vocab
        self.eot_id = self._enc.eot_token
        ranks = sorted(self._enc._mergeable_ranks.items(), key=lambda kv: kv[1])
        h = hashlib.sha256()
        for token, rank in ranks:
            h.update(token + b"\x00" + str(rank).encode() + b"\n")
        self.sha256 = h.hexdigest()

    @property
    def spec(self) -> str:
        return f"tiktoken:{self.name}"

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._enc.encode_ordinary(text), dtype=np.uint32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(x, dtype=np.uint32) for x in self._enc.encode_ordinary_batch(texts)]

    def decode(self, ids) -> str:
        return self._enc.decode([int(i) for i in ids])


def parse_spec(spec: str) -> tuple[str, int | str | None]:
    """'bytes' -> ('bytes', None); 'bpe:8192' -> ('bpe', 8192); 'tiktoken:x' -> ('tiktoken', 'x')."""
    valid = "valid: 'bytes', 'bpe:<vocab>' (e.g. bpe:8192), 'tiktoken:<encoding>'"
    if not isinstance(spec, str):
        raise ValueError(f"data.tokenizer={spec!r} is not a string; {valid}")
    kind, _, arg = spec.partition(":")
    if kind == "bytes" and not arg:
        return "bytes", None
    if kind == "bpe":
        try:
            vocab = int(arg)
        except ValueError:
            raise ValueError(f"data.tokenizer={spec!r}: vocab size must be an integer; {valid}")
        if not 257 <= vocab <= 2**32 - 1:
            raise ValueError(f"data.tokenizer={spec!r}: BPE vocab must be in [257, 2**32); {valid}")
        return "bpe", vocab
    if kind == "tiktoken" and arg:
        return "tiktoken", arg
    raise ValueError(f"data.tokenizer={spec!r} is not a known tokenizer; {valid}")


def build(spec: str, train_texts: Iterable[str] | None, out_dir):
    """Make the tokenizer for `spec`, training a BPE on `train_texts` (saved into out_dir)."""
    kind, arg = parse_spec(spec)
    if kind == "bytes":
        return BytesTokenizer()
    if kind == "bpe":
        return BPETokenizer.train(train_texts, arg, out_dir)
    return TiktokenTokenizer(arg)


def load_at(spec: str, location):
    """The tokenizer of the corpus at a store.Location (a bucket's tokenizer file is fetched)."""
    if location.fs is None:
        return load(spec, location.root)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        if parse_spec(spec)[0] == "bpe":
            (pathlib.Path(tmp) / TOKENIZER_FILE).write_text(location.read_text(TOKENIZER_FILE))
        return load(spec, tmp)


def load(spec: str, corpus_dir):
    """The tokenizer a prepared corpus was made with (BPE from its saved tokenizer.json)."""
    kind, arg = parse_spec(spec)
    if kind == "bytes":
        return BytesTokenizer()
    if kind == "bpe":
        path = pathlib.Path(corpus_dir) / TOKENIZER_FILE
        tok = BPETokenizer.load(path)
        if tok.vocab_size != arg:
            raise ValueError(f"{path}: {tok.vocab_size} tokens, but the corpus's tokenizer is "
                             f"{spec!r}; prepare the corpus again with bpe:{tok.vocab_size}")
        return tok
    return TiktokenTokenizer(arg)
