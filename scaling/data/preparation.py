"""Corpus preparation: a text source -> a new prepared corpus directory (see `corpus`).

The eval split (whole documents, chosen by seed) is fixed before any text is read; a BPE is
trained on the training documents only; every document is encoded and appended, with an eot,
to its split's token file. Everything is written into a temporary sibling directory that is
renamed into place at the end, so a failure (bad input, a full disk, Ctrl-C) leaves nothing
at the output path. Input that would make a useless corpus is refused with one line naming
the source: no documents, one document with an eval split, a split of only empty text.
"""
import dataclasses
import errno
import hashlib
import json
import os
import pathlib
import shutil
import time
import uuid

import numpy as np

from scaling.data import sources, tokenizers
from scaling.data.corpus import (FORMAT_VERSION, META_FILE, SPLIT_FILES, Corpus, open_corpus,
                                 token_dtype)

ENCODE_CHUNK = 256  # documents per encode_batch call (BPE encodes a batch in parallel)


def check_split_args(eval_fraction: float, seed: int) -> None:
    """Refuse an eval fraction outside [0, 1) or a negative split seed."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"data.eval_fraction={eval_fraction!r} must be in [0, 1)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} (the eval split's seed) must be an integer >= 0")


def choose_eval_documents(n_docs: int, eval_fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of held-out documents: round(fraction * n) of them (at least 1 when the
    fraction is > 0), drawn without replacement by `seed`; at least one document stays train."""
    check_split_args(eval_fraction, seed)
    if n_docs < 1:
        raise ValueError("it has no documents (an empty file?)")
    if eval_fraction > 0 and n_docs < 2:
        raise ValueError(
            "it has 1 document, but the eval split needs at least one held-out document "
            "and training at least one: give 2 or more documents (more files, or one JSONL line "
            "per document), or eval_fraction 0 for no eval split")
    n_eval = int(round(eval_fraction * n_docs))
    if eval_fraction > 0:
        n_eval = max(n_eval, 1)
    n_eval = min(n_eval, n_docs - 1)
    rng = np.random.default_rng([int(seed), 0xE7A1])
    return np.sort(rng.choice(n_docs, size=n_eval, replace=False)).astype(np.int64)


def sha256_files(paths) -> str:
    """sha256 over the files' bytes, concatenated in the given order (a flat corpus' content hash)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def check_not_under_a_file(out_dir: pathlib.Path) -> None:
    """Refuse an --out path that is an existing file or lies under one (flat and sharded corpora)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {out_dir} is an existing file; give a new directory path")
    for parent in out_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FileExistsError(f"--out {out_dir}: {parent} is a file, not a directory")
            break


def _check_out_dir(out_dir: pathlib.Path) -> None:
    """Refuse an output path that is a file, lies under a file, or is a non-empty directory."""
    check_not_under_a_file(out_dir)
    if (out_dir / META_FILE).exists():
        raise FileExistsError(f"{out_dir} already holds a prepared corpus; choose another --out")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose another --out")


@dataclasses.dataclass
class Written:
    """What `write_splits` wrote into the temporary corpus directory."""

    stats: dict
    """per split: documents, empty_documents (empty or whitespace only), bytes (UTF-8), tokens"""
    eval_names: list
    """names of the held-out documents, in corpus order"""
    empty_names: dict
    """per split: the names of up to 3 empty or whitespace-only documents (for messages)"""
    source_sha256: str
    """sha256 over every document's name and text, in source order"""
    token_sha256: dict = dataclasses.field(default_factory=dict)
    """per split: sha256 of the token file as written"""


def write_splits(docs, tok, is_eval: np.ndarray, paths: dict, dtype) -> Written:
    """Encode every (index, name, text) of `docs` and append it (plus eot) to its split's token
    file (paths: split -> file); `is_eval` is indexed by the documents' source indices."""
    w = Written({s: {"documents": 0, "empty_documents": 0, "bytes": 0, "tokens": 0}
                 for s in SPLIT_FILES}, [], {s: [] for s in SPLIT_FILES}, "")
    source_hash = hashlib.sha256()
    token_hash = {s: hashlib.sha256() for s in SPLIT_FILES}
    files = {s: open(paths[s], "wb") for s in SPLIT_FILES}
    try:
        chunk = []

        def flush():
            ids_list = tok.encode_batch([t for _, _, t in chunk])
            for (i, name, text), ids in zip(chunk, ids_list):
                split = "eval" if is_eval[i] else "train"
                if ids.size and int(ids.max()) >= tok.vocab_size:
                    raise ValueError(f"token id {int(ids.max())} >= vocab {tok.vocab_size}")
                raw = np.append(ids, tok.eot_id).astype(dtype).tobytes()
                files[split].write(raw)
                token_hash[split].update(raw)
                st = w.stats[split]
                st["documents"] += 1
                st["bytes"] += len(text.encode("utf-8"))
                st["tokens"] += len(raw) // dtype.itemsize
                if not text.strip():
                    st["empty_documents"] += 1
                    if len(w.empty_names[split]) < 3:
                        w.empty_names[split].append(name)
                if split == "eval":
                    w.eval_names.append(name)
            chunk.clear()

        for i, name, text in docs:
            source_hash.update(name.encode() + b"\x00" + text.encode("utf-8") + b"\x00")
            chunk.append((i, name, text))
            if len(chunk) >= ENCODE_CHUNK:
                flush()
        flush()
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
    finally:
        for f in files.values():
            f.close()
    w.source_sha256 = source_hash.hexdigest()
    w.token_sha256 = {s: h.hexdigest() for s, h in token_hash.items()}
    return w


def check_has_text(source: str, w: Written) -> None:
    """Refuse a split whose documents are all empty or whitespace: it holds no text."""
    for split, what, fix in (
            ("train", "training", "the source has no text to train on"),
            ("eval", "held-out (eval)", "remove the empty documents or choose another --seed")):
        st = w.stats[split]
        if st["documents"] and st["empty_documents"] == st["documents"]:
            names = ", ".join(w.empty_names[split]) + (", ..." if st["documents"] > 3 else "")
            raise ValueError(f"source {source!r}: every {what} document is empty or whitespace "
                             f"({st['documents']}: {names}); {fix}")


def _disk_full(e: OSError, out_dir: pathlib.Path) -> OSError:
    """A one-line OSError for a full disk while preparing `out_dir` (nothing of it is kept)."""
    free = shutil.disk_usage(out_dir.parent).free
    return OSError(e.errno, f"disk full: no space left on the file system of {out_dir.parent} "
                            f"({free:,} bytes free) while writing the corpus {out_dir}; nothing "
                            "was kept there. Free some space or write the corpus elsewhere")


def prepare(source: str, out_dir, *, tokenizer: str = "bytes", eval_fraction: float = 0.02,
            seed: int = 0, text_field: str = "text") -> Corpus:
    """Tokenize `source` into a new corpus directory `out_dir` (which must not exist).

    The BPE tokenizer (if any) is trained on the training documents only, so the eval text
    has no influence on the vocabulary. Everything is written into a temporary sibling
    directory that is renamed into place at the end: a failed run leaves nothing at `out_dir`.
    """
    t0 = time.time()
    out_dir = pathlib.Path(out_dir)
    _check_out_dir(out_dir)
    tokenizers.parse_spec(tokenizer)  # fail on a bad spec before reading any text
    check_split_args(eval_fraction, seed)
    src = sources.open_source(source, text_field)
    try:
        eval_idx = choose_eval_documents(len(src), eval_fraction, seed)
    except ValueError as e:
        raise ValueError(f"source {source!r}: {e}") from e
    is_eval = np.zeros(len(src), dtype=bool)
    is_eval[eval_idx] = True

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        train_texts = (text for i, (_, text) in enumerate(src) if not is_eval[i])
        tok = tokenizers.build(tokenizer, train_texts, tmp)
        dtype = token_dtype(tok.vocab_size)
        docs = ((i, name, text) for i, (name, text) in enumerate(src))
        w = write_splits(docs, tok, is_eval, {s: tmp / f for s, f in SPLIT_FILES.items()}, dtype)
        check_has_text(source, w)
        for st in w.stats.values():
            st["bytes_per_token"] = st["bytes"] / st["tokens"] if st["tokens"] else None
        meta = {
            "format": FORMAT_VERSION,
            "source": {"spec": source, **src.describe(), "documents": len(src),
                       "sha256": w.source_sha256},
            "tokenizer": {"spec": tokenizer, "kind": tok.kind, "vocab_size": tok.vocab_size,
                          "eot_id": tok.eot_id, "file": tok.file, "sha256": tok.sha256},
            "dtype": dtype.name,
            "seed": int(seed),
            "eval_fraction": float(eval_fraction),
            "train": {"file": SPLIT_FILES["train"], **w.stats["train"]},
            "eval": {"file": SPLIT_FILES["eval"], **w.stats["eval"],
                     "description": (
                         f"{len(eval_idx)} whole documents of {len(src)} held out, drawn without "
                         f"replacement with seed {seed} (eval_fraction {eval_fraction}); never in "
                         "train.bin"),
                     "document_indices": eval_idx.tolist(), "document_names": w.eval_names},
            "content_sha256": sha256_files([tmp / f for f in SPLIT_FILES.values()]),
            "prepare_seconds": round(time.time() - t0, 3),
        }
        with open(tmp / META_FILE, "w") as f:
            f.write(json.dumps(meta, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(tmp, out_dir)  # atomic; fails if another process already put one there
        except OSError:
            if not (out_dir / META_FILE).exists():
                raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(e, out_dir) from e
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return open_corpus(out_dir)
