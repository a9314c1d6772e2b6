"""The trainer cannot tell the corpus formats apart: the same source prepared flat (one train.bin /
eval.bin, what `train` writes into its cache) and sharded (--processes 2, several shards) gives the
same losses, row for row, and the same final eval loss (exact equality: the same token windows in
the same order make the same computation)."""
import json
import random

from scaling import rundir
from scaling.data import preparation, sharded
from scaling.train import train

TIMING = ("time_s", "tokens_per_s", "mfu")  # wall-clock fields of a metrics row: they differ run to run


def _source(path, n_docs=60):
    """A small JSONL source of seeded random word sequences (documents of different lengths)."""
    rng = random.Random(0)
    words = "the of and a to in is was he for it with as his on be at by".split()
    with open(path, "w") as f:
        for i in range(n_docs):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(40 + i))}) + "\n")
    return str(path)


def _rows(run_dir):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rundir.read_metrics(run_dir)]


def test_flat_and_sharded_corpora_train_identically(tiny_config, tmp_path):
    src = _source(tmp_path / "docs.jsonl")
    flat = preparation.prepare(src, tmp_path / "flat", eval_fraction=0.1)
    shard = sharded.prepare(src, tmp_path / "sharded", processes=2, shard_docs=8, eval_fraction=0.1)
    assert "shards" not in flat.meta and len(shard.meta["shards"]) == 8  # really the two formats
    results, rows = {}, {}
    for name in ("flat", "sharded"):
        c = tiny_config.copy_and_resolve_references()
        c.data.corpus = str(tmp_path / name)
        c.train.update(tokens=8 * 32 * 10, log_every=1, eval_every=5, eval_tokens=8 * 32 * 2)
        results[name] = train(c, tmp_path / f"run_{name}", verbose=False)
        rows[name] = _rows(tmp_path / f"run_{name}")
    assert results["flat"]["status"] == results["sharded"]["status"] == "ok"
    assert [r["step"] for r in rows["flat"] if r["split"] == "train"] == list(range(1, 11))
    assert rows["flat"] == rows["sharded"]  # every train and eval row: loss, grad norm, lr, tokens, FLOPs
    assert results["flat"]["final_eval_loss"] == results["sharded"]["final_eval_loss"]
