"""The sharded corpus format (format 2): token shards plus one manifest, local or in a bucket.

    ROOT/plan.json                          what to make: source, tokenizer, split, shard ranges
    ROOT/tokenizer.json                     (BPE) the tokenizer, trained once before any shard
    ROOT/shards/train-00003-of-00012.bin    shard 3's training tokens (raw little-endian uint16/32)
    ROOT/shards/eval-00003-of-00012.bin     shard 3's held-out tokens
    ROOT/shards/00003-of-00012.json         shard 3's record, written after its token files:
                                            documents [start, stop) of the source, per split
                                            documents, bytes, tokens, sha256 of the token file
    ROOT/manifest.json                      written last, once every shard exists: the plan, the
                                            shard records, per-split totals, the content hash

Shard s holds documents [start_s, stop_s) of the source in source order, each split's documents
encoded and followed by eot as in the flat format. A split's token stream is its shards
concatenated in shard order, which is exactly the flat format's train.bin / eval.bin: the
windows, the nested order and the host sharding are those of the flat corpus of the same
source (see pipeline.py). The content hash is sha256 over the shards' token-file hashes.
"""
import hashlib
import json

import numpy as np

from scaling.data.store import Location
from scaling.data.tokens import TokenStream

FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
PLAN_FILE = "plan.json"
SHARDS_DIR = "shards"
SPLITS = ("train", "eval")


def shard_file(split: str, index: int, n_shards: int) -> str:
    return f"{SHARDS_DIR}/{split}-{index:05d}-of-{n_shards:05d}.bin"


def record_file(index: int, n_shards: int) -> str:
    return f"{SHARDS_DIR}/{index:05d}-of-{n_shards:05d}.json"


def content_hash(records: list) -> str:
    """sha256 over every shard's train then eval token-file hash, in shard order."""
    h = hashlib.sha256()
    for split in SPLITS:
        for r in records:
            h.update(f"{split}:{r['index']}:{r[split]['sha256']}\n".encode())
    return h.hexdigest()


def parse_json(text: str, where: str) -> dict:
    """A JSON object; anything else is a ValueError naming `where`."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: not valid JSON ({e}); the corpus is corrupt") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: a JSON {type(obj).__name__}, not an object; the corpus is corrupt")
    return obj


def read_manifest(loc: Location) -> dict:
    """The manifest of the corpus at `loc`, its structure checked (errors name the file)."""
    where = loc.url(MANIFEST_FILE)
    meta = parse_json(loc.read_text(MANIFEST_FILE), where)
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{where}: format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    try:
        np.dtype(meta["dtype"])
        int(meta["tokenizer"]["vocab_size"]), str(meta["tokenizer"]["spec"])
        for split in SPLITS:
            int(meta[split]["tokens"])
        for r in meta["shards"]:
            for split in SPLITS:
                str(r[split]["file"]), int(r[split]["tokens"]), str(r[split]["sha256"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: missing or invalid entry ({type(e).__name__}: {e}); "
                         "the corpus is corrupt, finalize or prepare it again") from e
    return meta


def open_streams(loc: Location, meta: dict) -> dict:
    """{split: TokenStream} after checking every shard file against the manifest (one listing
    call): a missing shard, one of the wrong size, or totals that do not add up are errors
    naming the shard or the manifest."""
    dtype = np.dtype(meta["dtype"])
    listing = loc.sizes(SHARDS_DIR)
    streams = {}
    for split in SPLITS:
        names, counts = [], []
        for r in meta["shards"]:
            name, tokens = r[split]["file"], int(r[split]["tokens"])
            if name not in listing:
                raise FileNotFoundError(
                    f"{loc.url(name)}: shard missing (the manifest lists it with {tokens:,} "
                    "tokens); prepare the corpus again or restore the shard")
            if listing[name] != tokens * dtype.itemsize:
                raise ValueError(
                    f"{loc.url(name)}: {listing[name]:,} bytes, but the manifest says {tokens:,} "
                    f"{dtype.name} tokens = {tokens * dtype.itemsize:,} bytes (corrupt or "
                    "truncated shard); prepare that shard again")
            names.append(name)
            counts.append(tokens)
        if sum(counts) != int(meta[split]["tokens"]):
            raise ValueError(
                f"{loc.url(MANIFEST_FILE)}: the {split} shards hold {sum(counts):,} tokens but the "
                f"manifest's {split} total is {int(meta[split]['tokens']):,}; the manifest does not "
                "match its shards (finalize again)")
        streams[split] = TokenStream(loc, names, counts, dtype)
    return streams


def verify(loc: Location, meta: dict) -> int:
    """Re-hash every shard file against the manifest (reads the whole corpus); the number of
    files checked. A mismatch is a ValueError naming the shard."""
    checked = 0
    for r in meta["shards"]:
        for split in SPLITS:
            name = r[split]["file"]
            h = hashlib.sha256()
            with loc.open_read(name) as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
            if h.hexdigest() != r[split]["sha256"]:
                raise ValueError(f"{loc.url(name)}: content hash {h.hexdigest()[:12]}... differs "
                                 f"from the manifest's {r[split]['sha256'][:12]}... (corrupt "
                                 "shard); prepare that shard again")
            checked += 1
    if content_hash(meta["shards"]) != meta.get("content_sha256"):
        raise ValueError(f"{loc.url(MANIFEST_FILE)}: content_sha256 does not match the shard "
                         "hashes it lists; finalize again")
    return checked
