"""Sharded corpus preparation: plan once, encode shards anywhere in parallel, finalize once.

    plan      open the source, fix the eval split exactly as the flat format does
              (preparation.choose_eval_documents over all documents), cut the documents into
              shards of `shard_docs`, make the tokenizer once (BPE: trained on a seeded sample of
              the training documents, or taken from a file), write tokenizer.json then plan.json
    encode    shards by index, in K local processes (and on any number of machines: each takes a
              range): a shard's token files are written whole, then its record; a shard whose
              record and files exist is skipped, so a killed preparation continues where it stopped
    finalize  once every shard's record exists: check them against the plan and the files, write
              manifest.json (no timings in it: the same source and arguments give the same bytes)

The output is the sharded format of shards.py, at a local directory or a bucket URL. Rerunning a
step with the same arguments is a no-op for what is done; other arguments are refused, naming
the one that differs.
"""
import concurrent.futures
import concurrent.futures.process
import errno
import hashlib
import json
import multiprocessing
import os
import pathlib
import shutil

import numpy as np

from scaling.data import preparation, shards, sources, tokenizers
from scaling.data.corpus import token_dtype
from scaling.data.store import Location, is_url

DEFAULT_SHARD_DOCS = 65_536  # documents per shard (~100 MB of tokens at FineWeb-like lengths)
DEFAULT_TOKENIZER_SAMPLE = 100_000  # training documents a BPE is trained on (all if fewer)


def _request(source, tokenizer, eval_fraction, seed, text_field, shard_docs, tokenizer_sample,
             tokenizer_file) -> dict:
    """The arguments that determine the corpus (a rerun must repeat them)."""
    return {"source": source, "tokenizer": tokenizer, "eval_fraction": float(eval_fraction),
            "seed": int(seed), "text_field": text_field, "shard_docs": int(shard_docs),
            "tokenizer_sample": int(tokenizer_sample),
            "tokenizer_file_sha256": (hashlib.sha256(pathlib.Path(tokenizer_file).read_bytes())
                                      .hexdigest() if tokenizer_file else None)}


def _check_same_request(loc: Location, plan_: dict, request: dict) -> None:
    for key, want in request.items():
        if plan_["request"].get(key) != want:
            raise ValueError(f"{loc} was planned with {key}={plan_['request'].get(key)!r}, this "
                             f"command asks for {want!r}; repeat the original arguments or choose "
                             "another --out")


def planned(source: str, out, *, tokenizer="bytes", eval_fraction=0.02, seed=0, text_field="text",
            shard_docs=DEFAULT_SHARD_DOCS, tokenizer_sample=DEFAULT_TOKENIZER_SAMPLE,
            tokenizer_file=None) -> dict:
    """The existing plan at `out`, checked to be the one these arguments make (a machine that
    encodes a shard range must not plan: the plan is made once, with --plan-only)."""
    loc = Location(out)
    p = read_plan(loc)
    _check_same_request(loc, p, _request(source, tokenizer, eval_fraction, seed, text_field,
                                         shard_docs, tokenizer_sample, tokenizer_file))
    return p


def read_plan(loc: Location) -> dict:
    try:
        text = loc.read_text(shards.PLAN_FILE)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{loc}: no {shards.PLAN_FILE}; plan it first (`scaling data prepare ... --plan-only`, "
            "once), then encode shard ranges") from e
    return shards.parse_json(text, loc.url(shards.PLAN_FILE))


def _training_sample(src, is_eval: np.ndarray, size: int, seed: int):
    """Texts of the BPE's training documents: every training document when there are at most
    `size`, else `size` of them drawn by `seed` (read in source order)."""
    train_idx = np.flatnonzero(~is_eval)
    if len(train_idx) > size:
        rng = np.random.default_rng([int(seed), 0x70C5])
        train_idx = np.sort(rng.choice(train_idx, size=size, replace=False))
    keep = np.zeros(len(is_eval), dtype=bool)
    keep[train_idx] = True
    return (text for i, (_, text) in enumerate(src) if keep[i])


def _make_tokenizer(spec, src, is_eval, sample, seed, tokenizer_file, tmp: pathlib.Path):
    """(tokenizer, how it was made): trained on the sample, or loaded from `tokenizer_file`."""
    if tokenizer_file:
        if tokenizers.parse_spec(spec)[0] != "bpe":
            raise ValueError(f"--tokenizer-file is for a BPE tokenizer, not {spec!r}")
        shutil.copyfile(tokenizer_file, tmp / tokenizers.TOKENIZER_FILE)
        tok = tokenizers.load(spec, tmp)
        return tok, {"from_file": os.fspath(tokenizer_file)}
    n_train = int((~is_eval).sum())
    tok = tokenizers.build(spec, _training_sample(src, is_eval, sample, seed), tmp)
    return tok, {"trained_on_documents": min(sample, n_train), "of_training_documents": n_train,
                 "sample_seed": int(seed)}


def plan(source: str, out, *, tokenizer="bytes", eval_fraction=0.02, seed=0, text_field="text",
         shard_docs=DEFAULT_SHARD_DOCS, tokenizer_sample=DEFAULT_TOKENIZER_SAMPLE,
         tokenizer_file=None) -> dict:
    """Write (or check, when it exists) the plan of a sharded corpus at `out`; returns it."""
    loc = Location(out)
    tokenizers.parse_spec(tokenizer)  # fail on a bad spec before reading any text
    preparation.check_split_args(eval_fraction, seed)
    if int(shard_docs) < 1 or int(tokenizer_sample) < 1:
        raise ValueError(f"shard_docs={shard_docs!r} and tokenizer_sample={tokenizer_sample!r} "
                         "must be >= 1")
    request = _request(source, tokenizer, eval_fraction, seed, text_field, shard_docs,
                       tokenizer_sample, tokenizer_file)
    if loc.exists(shards.PLAN_FILE):
        existing = read_plan(loc)
        _check_same_request(loc, existing, request)
        return existing
    if not is_url(out):
        _check_new_dir(pathlib.Path(out))
    created = not is_url(out) and not pathlib.Path(out).exists()
    try:
        return _write_plan(loc, request, source, text_field, tokenizer, eval_fraction, seed,
                           shard_docs, tokenizer_sample, tokenizer_file)
    except BaseException:
        if created:  # a failed plan leaves no directory behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _write_plan(loc, request, source, text_field, tokenizer, eval_fraction, seed, shard_docs,
                tokenizer_sample, tokenizer_file) -> dict:
    """Read the source's size, choose the eval split and shards, make the tokenizer, write both."""
    src = sources.open_source(source, text_field)
    try:
        eval_idx = preparation.choose_eval_documents(len(src), eval_fraction, seed)
    except ValueError as e:
        raise ValueError(f"source {source!r}: {e}") from e
    is_eval = np.zeros(len(src), dtype=bool)
    is_eval[eval_idx] = True
    with loc.scratch() as tmp:
        tok, made = _make_tokenizer(tokenizer, src, is_eval, int(tokenizer_sample), seed,
                                    tokenizer_file, tmp)
        n = len(src)
        the_plan = {
            "format": shards.FORMAT_VERSION,
            "request": request,
            "source": {"spec": source, **src.describe(), "documents": n},
            "tokenizer": {"spec": tokenizer, "kind": tok.kind, "vocab_size": tok.vocab_size,
                          "eot_id": tok.eot_id, "file": tok.file, "sha256": tok.sha256, **made},
            "dtype": token_dtype(tok.vocab_size).name,
            "seed": int(seed),
            "eval_fraction": float(eval_fraction),
            "eval_document_indices": eval_idx.tolist(),
            "shards": [[a, min(a + int(shard_docs), n)] for a in range(0, n, int(shard_docs))],
        }
        if tok.file:  # the tokenizer before the plan: a plan always has its tokenizer
            loc.put(tmp / tok.file, tok.file)
        loc.write_text(shards.PLAN_FILE, json.dumps(the_plan, indent=1) + "\n")
    return the_plan


def _check_new_dir(out: pathlib.Path) -> None:
    """A new sharded corpus needs a path that is not a file and not a non-empty directory."""
    preparation.check_not_under_a_file(out)
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not an (unfinished) sharded corpus; choose "
                              "another --out")


def _is_done(loc: Location, plan_: dict, i: int, listing: dict) -> bool:
    """Shard i has its record and token files of the recorded sizes."""
    n = len(plan_["shards"])
    if shards.record_file(i, n) not in listing:
        return False
    rec = shards.parse_json(loc.read_text(shards.record_file(i, n)), loc.url(shards.record_file(i, n)))
    k = np.dtype(plan_["dtype"]).itemsize
    return all(listing.get(rec[s]["file"]) == rec[s]["tokens"] * k for s in shards.SPLITS)


_WORKER = {}  # per process: root -> (plan, source, tokenizer, is_eval)


def _worker_state(root: str):
    if root not in _WORKER:
        loc = Location(root)
        p = read_plan(loc)
        src = sources.open_source(p["request"]["source"], p["request"]["text_field"])
        if len(src) != p["source"]["documents"]:
            raise ValueError(f"source {p['request']['source']!r} has {len(src)} documents, the plan "
                             f"of {root} was made for {p['source']['documents']}; it changed")
        is_eval = np.zeros(len(src), dtype=bool)
        is_eval[p["eval_document_indices"]] = True
        _WORKER[root] = (p, src, tokenizers.load_at(p["tokenizer"]["spec"], loc), is_eval)
    return _WORKER[root]


def encode_shard(root: str, i: int) -> dict:
    """Encode shard i of the corpus planned at `root` and store its token files, then its record."""
    loc = Location(root)
    p, src, tok, is_eval = _worker_state(root)
    n = len(p["shards"])
    a, b = p["shards"][i]
    dtype = np.dtype(p["dtype"])
    try:
        with loc.scratch() as tmp:
            paths = {s: tmp / f"{s}.bin" for s in shards.SPLITS}
            docs = ((j, name, text) for j, (name, text) in enumerate(src.iter_range(a, b), a))
            w = preparation.write_splits(docs, tok, is_eval, paths, dtype)
            got = sum(st["documents"] for st in w.stats.values())
            if got != b - a:
                raise ValueError(f"source {p['request']['source']!r}: shard {i} should hold "
                                 f"documents [{a}, {b}) but {got} were read; the source changed")
            rec = {"index": i, "documents": [a, b], "source_sha256": w.source_sha256,
                   "eval_document_names": w.eval_names, "empty_document_names": w.empty_names}
            for s in shards.SPLITS:
                rec[s] = {"file": shards.shard_file(s, i, n), **w.stats[s], "sha256": w.token_sha256[s]}
                loc.put(paths[s], rec[s]["file"])
            with open(tmp / "record.json", "w") as f:  # last: its presence marks the shard done
                f.write(json.dumps(rec) + "\n")
            loc.put(tmp / "record.json", shards.record_file(i, n))
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, f"disk full while writing shard {i} of {loc}; the finished "
                                   "shards are kept: free some space and rerun to continue") from e
        raise
    return rec


def parse_range(text: str, n_shards: int) -> range:
    """'A:B' (either side may be empty) -> range(A, B) within [0, n_shards)."""
    a, sep, b = str(text).partition(":")
    try:
        lo, hi = int(a or 0), int(b) if b else n_shards
    except ValueError:
        lo = hi = None
    if not sep or lo is None or not 0 <= lo < hi <= n_shards:
        raise ValueError(f"--shards {text!r}: give A:B with 0 <= A < B <= {n_shards} (the plan "
                         f"has {n_shards} shards)")
    return range(lo, hi)


def _one_thread_each() -> None:
    """In a worker: the BPE library encodes single-threaded (the processes are the parallelism;
    one process alone uses the library's threads)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def encode(out, indices, processes: int = 1, on_shard=None) -> int:
    """Encode the shards `indices` not yet done, in `processes` processes; the number encoded.
    `on_shard(record)` is called in this process as each finishes."""
    if processes < 1:
        raise ValueError(f"--processes {processes!r} must be >= 1")
    loc = Location(out)
    p = read_plan(loc)
    listing = loc.sizes(shards.SHARDS_DIR)
    todo = [i for i in indices if not _is_done(loc, p, i, listing)]
    root = os.fspath(out)
    if processes == 1 or len(todo) <= 1:
        for i in todo:
            rec = encode_shard(root, i)
            on_shard and on_shard(rec)
        return len(todo)
    ctx = multiprocessing.get_context("spawn")  # not fork: the caller may hold threads (JAX)
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=ctx,
                                                initializer=_one_thread_each) as pool:
        futures = [pool.submit(encode_shard, root, i) for i in todo]
        try:
            for f in concurrent.futures.as_completed(futures):
                rec = f.result()
                on_shard and on_shard(rec)
        except concurrent.futures.process.BrokenProcessPool as e:
            raise ChildProcessError(f"a worker process encoding {loc} died (killed, or out of "
                                    "memory?); the finished shards are kept: rerun to continue") from e
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return len(todo)


def finalize(out) -> dict:
    """Check every shard against the plan and write manifest.json; returns the manifest."""
    loc = Location(out)
    p = read_plan(loc)
    n = len(p["shards"])
    listing = loc.sizes(shards.SHARDS_DIR)
    missing = [i for i in range(n) if shards.record_file(i, n) not in listing]
    if missing:
        some = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        raise FileNotFoundError(f"{loc}: {len(missing)} of {n} shards are not prepared yet "
                                f"(shard {some}); encode them (`scaling data prepare ... --shards "
                                "A:B`), then finalize")
    records = []
    for i in range(n):
        name = shards.record_file(i, n)
        rec = shards.parse_json(loc.read_text(name), loc.url(name))
        if rec.get("documents") != p["shards"][i]:
            raise ValueError(f"{loc.url(name)}: documents {rec.get('documents')}, the plan says "
                             f"{p['shards'][i]}; prepare that shard again")
        records.append(rec)
    return _write_manifest(loc, p, records)


def _write_manifest(loc: Location, p: dict, records: list) -> dict:
    totals = {s: {k: sum(r[s][k] for r in records)
                  for k in ("documents", "empty_documents", "bytes", "tokens")} for s in shards.SPLITS}
    empty = {s: [x for r in records for x in r["empty_document_names"][s]][:3] for s in shards.SPLITS}
    preparation.check_has_text(p["request"]["source"],
                               preparation.Written(totals, [], empty, ""))
    for st in totals.values():
        st["bytes_per_token"] = st["bytes"] / st["tokens"] if st["tokens"] else None
    n_eval, n_docs = len(p["eval_document_indices"]), p["source"]["documents"]
    slim = [{k: v for k, v in r.items() if k not in ("eval_document_names", "empty_document_names")}
            for r in records]
    manifest = {
        "format": shards.FORMAT_VERSION,
        "source": p["source"], "tokenizer": p["tokenizer"], "dtype": p["dtype"],
        "seed": p["seed"], "eval_fraction": p["eval_fraction"], "request": p["request"],
        "train": totals["train"],
        "eval": {**totals["eval"],
                 "description": (f"{n_eval} whole documents of {n_docs} held out, drawn without "
                                 f"replacement with seed {p['seed']} (eval_fraction "
                                 f"{p['eval_fraction']}); never in a train shard"),
                 "document_indices": p["eval_document_indices"],
                 "document_names": [x for r in records for x in r["eval_document_names"]]},
        "shards": slim,
        "content_sha256": shards.content_hash(slim),
    }
    shards.open_streams(loc, manifest)  # every shard file present, of its recorded size
    loc.write_text(shards.MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")
    if loc.local_path(".") is not None:  # every shard is done: leftovers of killed encoders go
        for stale in loc.local_path(".").glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    return manifest


def prepare(source: str, out, *, processes: int = 1, on_shard=None, **plan_args):
    """Plan, encode every shard in `processes` processes, finalize; the opened Corpus. Resumes a
    preparation that stopped. A new local --out is removed again when the input is bad (a
    ValueError: its shards are of no use) or nothing was kept yet; a crash, a full disk or
    Ctrl-C keep the finished shards for the rerun."""
    from scaling.data.corpus import open_corpus

    created = not is_url(out) and not pathlib.Path(out).exists()
    try:
        p = plan(source, out, **plan_args)
        encode(out, range(len(p["shards"])), processes, on_shard)
        finalize(out)
    except BaseException as e:
        kept = any((pathlib.Path(out) / shards.SHARDS_DIR).glob("*.json"))
        if created and (isinstance(e, ValueError) or not kept):
            shutil.rmtree(out, ignore_errors=True)
        raise
    return open_corpus(out)
