"""The sharded corpus format: K processes = 1 process = the flat format, window for window;
resume and idempotence; the tokenizer sample and file; errors that name the shard."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from scaling.data import cli, eval_batches, open_corpus, prepare, sharded, shards, sources, train_loader
from scaling.data.store import Location

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jsonl(path, n, seed=0, words=120):
    """n documents of random words (distinct lengths), one JSON object per line."""
    rng = np.random.default_rng(seed)
    vocab = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "caf\u00e9", "na\u00efve", "\u2014"]
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"doc{i} " + " ".join(rng.choice(vocab, words + i))}) + "\n")
    return str(path)


def stream(corpus, seq_len, steps, batch=8, **kw):
    loader, _ = train_loader(corpus, seq_len=seq_len, global_batch=batch, num_steps=steps, seed=7, **kw)
    return np.concatenate([b["inputs"] for b in loader])


def shard_bytes(path):
    return {p: open(os.path.join(path, p), "rb").read()
            for p in sorted(os.listdir(path)) if os.path.isfile(os.path.join(path, p))}


def test_two_processes_equal_one_and_the_flat_corpus(tmp_path):
    """bpe: --processes 2 writes the same bytes as --processes 1; the token streams, every
    training window (some cross shard boundaries) and the eval batches equal the flat format's."""
    src = write_jsonl(tmp_path / "d.jsonl", 40)
    kw = dict(tokenizer="bpe:300", eval_fraction=0.1, seed=2, shard_docs=6)
    one = sharded.prepare(src, tmp_path / "k1", processes=1, **kw)
    two = sharded.prepare(src, tmp_path / "k2", processes=2, **kw)
    flat = prepare(src, tmp_path / "flat", tokenizer="bpe:300", eval_fraction=0.1, seed=2)
    assert len(one.meta["shards"]) == 7
    assert shard_bytes(one.path) == shard_bytes(two.path)  # manifest, plan, tokenizer
    assert shard_bytes(one.path / "shards") == shard_bytes(two.path / "shards")
    for split in ("train_tokens", "eval_tokens"):
        np.testing.assert_array_equal(np.asarray(getattr(one, split)), np.asarray(getattr(flat, split)))
    assert one.meta["eval"]["document_indices"] == flat.meta["eval"]["document_indices"]
    assert one.meta["tokenizer"]["sha256"] == flat.meta["tokenizer"]["sha256"]
    assert one.bytes_per_token_eval == flat.bytes_per_token_eval
    # The trainer's input: the same windows in the same order, for a whole epoch (windows of 33
    # tokens cross the 6 train-shard boundaries), and the same eval batches.
    seq = 32
    epoch = (one.train_tokens.size - 1) // seq // 8
    bounds = one.train_tokens.offsets[1:-1]
    assert any((bounds % seq != 0))  # some boundary falls inside a window
    np.testing.assert_array_equal(stream(one, seq, epoch), stream(flat, seq, epoch))
    np.testing.assert_array_equal(stream(one, seq, 3, process_index=1, process_count=2),
                                  stream(flat, seq, 3, process_index=1, process_count=2))
    for a, b in zip(eval_batches(one, seq_len=seq, batch_size=4, n_tokens=seq * 10),
                    eval_batches(flat, seq_len=seq, batch_size=4, n_tokens=seq * 10)):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])


def test_one_shard_reads_as_the_flat_corpus(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", 12)
    one = sharded.prepare(src, tmp_path / "one", eval_fraction=0.2)
    flat = prepare(src, tmp_path / "flat", eval_fraction=0.2)
    assert len(one.meta["shards"]) == 1
    assert (one.path / one.meta["shards"][0]["train"]["file"]).read_bytes() == \
        (flat.path / "train.bin").read_bytes()
    np.testing.assert_array_equal(stream(one, 16, 20), stream(flat, 16, 20))


def test_rerun_is_a_no_op_and_other_arguments_are_refused(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", 12)
    c = sharded.prepare(src, tmp_path / "c", shard_docs=5)
    before = shard_bytes(c.path)
    seen = []
    again = sharded.prepare(src, tmp_path / "c", shard_docs=5, on_shard=seen.append)
    assert seen == [] and shard_bytes(again.path) == before
    with pytest.raises(ValueError, match=r"was planned with shard_docs=5, this command asks for 4"):
        sharded.prepare(src, tmp_path / "c", shard_docs=4)


def test_tokenizer_sample_and_tokenizer_file(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", 30)
    a = sharded.plan(src, tmp_path / "a", tokenizer="bpe:280", tokenizer_sample=8, shard_docs=10)
    b = sharded.plan(src, tmp_path / "b", tokenizer="bpe:280", tokenizer_sample=8, shard_docs=10)
    assert a["tokenizer"]["trained_on_documents"] == 8 and a["tokenizer"]["of_training_documents"] == 29
    assert a["tokenizer"]["sha256"] == b["tokenizer"]["sha256"]  # the sample is fixed by the seed
    full = sharded.plan(src, tmp_path / "full", tokenizer="bpe:280", shard_docs=10)
    assert full["tokenizer"]["sha256"] != a["tokenizer"]["sha256"]
    given = sharded.prepare(src, tmp_path / "given", tokenizer="bpe:280", shard_docs=10,
                            tokenizer_file=str(tmp_path / "a" / "tokenizer.json"))
    assert given.meta["tokenizer"]["sha256"] == a["tokenizer"]["sha256"]
    assert given.tokenizer().decode(np.asarray(given.eval_tokens)[:5]).startswith("doc")


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "glob", "files"])
def test_sources_read_a_document_range(tmp_path, monkeypatch, kind):
    """iter_range(a, b) == list(source)[a:b], through the JSONL seek marks and parquet row groups."""
    monkeypatch.setattr(sources.JsonlSource, "MARK", 3)
    texts = [f"text {i}" for i in range(17)]
    if kind == "jsonl":
        spec = str(tmp_path / "d.jsonl")
        (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": t}) + ("\n" if i % 4 else "")
                                                    for i, t in enumerate(texts)))  # blank lines too
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        spec = str(tmp_path / "d.parquet")
        pq.write_table(pa.table({"text": texts}), spec, row_group_size=4)
    elif kind == "files":  # a glob of JSONL files of 5, 0, 5, 7 documents
        for j, (a, b) in enumerate([(0, 5), (5, 5), (5, 10), (10, 17)]):
            (tmp_path / f"part{j}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                                             for t in texts[a:b]))
        spec = str(tmp_path / "part*.jsonl")
    else:
        for i, t in enumerate(texts):
            (tmp_path / f"{i:02d}.txt").write_text(t)
        spec = str(tmp_path / "*.txt")
    src = sources.open_source(spec)
    everything = list(src)
    assert [t for _, t in everything] == texts
    for a, b in [(0, 17), (5, 9), (3, 4), (12, 17), (16, 30)]:
        assert list(src.iter_range(a, b)) == everything[a:b]


@pytest.fixture
def corpus(tmp_path):
    return sharded.prepare(write_jsonl(tmp_path / "d.jsonl", 20), tmp_path / "c", shard_docs=4,
                           eval_fraction=0.2)


def test_damaged_shards_and_manifests_name_the_file(corpus):
    path = corpus.path
    name = corpus.meta["shards"][2]["train"]["file"]
    shard = path / name
    good = shard.read_bytes()
    shard.write_bytes(good[:-2])  # truncated by one uint16 token
    with pytest.raises(ValueError, match=rf"{name}: [\d,]+ bytes, but the manifest says .* \(corrupt or truncated shard\)"):
        open_corpus(path)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{name}: shard missing"):
        open_corpus(path)
    shard.write_bytes(good[:4] + bytes([good[4] ^ 1]) + good[5:])  # same size, one bit flipped
    open_corpus(path)  # sizes match: opening stays cheap (one listing); verify re-hashes
    with pytest.raises(ValueError, match=rf"{name}: content hash .* differs from the manifest"):
        shards.verify(Location(path), corpus.meta)
    shard.write_bytes(good)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["train"]["tokens"] += 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"manifest.json: the train shards hold [\d,]+ tokens but the "
                                         r"manifest's train total is [\d,]+; the manifest does not match"):
        open_corpus(path)
    (path / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match=r"manifest.json: not valid JSON"):
        open_corpus(path)


def test_cli_errors_are_one_line(corpus, tmp_path, capsys):
    (corpus.path / corpus.meta["shards"][1]["eval"]["file"]).unlink()
    missing = [(["info", str(corpus.path)], "eval-00001-of-00005.bin: shard missing"),
               (["info", "gs://no-such-bucket/corpus"], "gs://no-such-bucket/corpus: cannot open this location"),
               (["info", f"file://{tmp_path}/nothing"], f"{tmp_path}/nothing/manifest.json: not found"),
               (["finalize", str(tmp_path)], f"{tmp_path}: no plan.json; plan it first"),
               (["prepare", "--source", "x.jsonl", "--out", str(tmp_path / "new"), "--shards", "0:2"],
                "no plan.json; plan it first")]
    for argv, message in missing:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_killed_preparation_resumes_to_the_same_content_hash(tmp_path):
    """SIGKILL `scaling data prepare --processes 2` after its first shards; the rerun finishes the
    rest (the finished shards are not encoded again) with the uninterrupted run's content hash."""
    src = write_jsonl(tmp_path / "d.jsonl", 96, words=3000)  # ~2 MB, 96 shards
    args = ["--source", src, "--shard-docs", "1", "--processes", "2"]
    env = dict(os.environ, PYTHONPATH=REPO)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "scaling", "data", "prepare", *args, "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not len(list((out / "shards").glob("*.json"))) >= 2 and time.time() < deadline:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its worker processes
    proc.wait()
    done_before = {p.name for p in (out / "shards").glob("*.json")}
    assert not (out / "manifest.json").exists() and 2 <= len(done_before) < 96
    seen = []
    resumed = sharded.prepare(src, out, shard_docs=1, processes=1, on_shard=seen.append)
    assert len(seen) == 96 - len(done_before)  # only the missing shards were encoded
    whole = sharded.prepare(src, tmp_path / "whole", shard_docs=1)
    assert resumed.meta["content_sha256"] == whole.meta["content_sha256"]
    assert shards.verify(Location(out), resumed.meta) == 2 * 96
    assert not list(out.glob(".tmp-*"))  # a killed encoder's scratch files are gone


def test_the_cloud_sweep_states_the_corpus_it_needs():
    """The experiment's docstring states its largest run's D and the corpus size that implies."""
    import re

    from experiments import chinchilla_isoflop
    from launch import sweep

    cfg = sweep.load_sweep(os.path.join(REPO, "experiments", "chinchilla_isoflop.py"))
    d_max = max(r.tokens for r in sweep.expand(cfg))
    doc = " ".join(chinchilla_isoflop.__doc__.split())
    assert f"trains on {d_max / 1e9:.1f}G tokens" in doc
    need = float(re.search(r"needs >= ([\d.]+)G bpe:32768 tokens", doc).group(1))
    assert need == round(d_max / (1 - cfg.data.eval_fraction) / 1e9, 1)
