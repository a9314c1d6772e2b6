"""The Grain pipeline: nested-D prefix, host sharding, exact resume, repetition, eval batches."""
import math

import numpy as np
import pytest

from scaling.data import bits_per_byte, eval_batches, prepare, train_loader
from scaling.data.pipeline import eval_windows, window_order

SEQ = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~60 KB synthetic corpus of 40 text files: distinct random words per document."""
    root = tmp_path_factory.mktemp("pipe")
    rng = np.random.default_rng(1)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]
    for i in range(40):
        text = f"doc{i:03d} " + " ".join(rng.choice(words, size=250)) + f" end{i:03d}\n"
        (root / f"d{i:03d}.txt").write_text(text)
    return prepare(str(root / "*.txt"), root / "corpus", tokenizer="bytes", eval_fraction=0.1,
                   seed=3)


def take(loader, n):
    return [next(loader) for _ in range(n)]


def rows(batches, key="inputs"):
    return np.concatenate([b[key] for b in batches])


def test_batches_are_shifted_windows_of_train_tokens(corpus):
    loader, info = train_loader(corpus, seq_len=SEQ, global_batch=4, num_steps=3, seed=0)
    toks = np.asarray(corpus.train_tokens)
    assert info["windows_per_epoch"] == (toks.size - 1) // SEQ
    w = window_order(np.arange(12), windows_per_epoch=info["windows_per_epoch"], seed=0)
    got = take(loader, 3)
    for b in got:
        assert b["inputs"].shape == (4, SEQ) and b["inputs"].dtype == np.int32
    x, y = rows(got, "inputs"), rows(got, "targets")
    for r, win in enumerate(w):  # independent re-slicing of the memmap
        np.testing.assert_array_equal(x[r], toks[win * SEQ: win * SEQ + SEQ])
        np.testing.assert_array_equal(y[r], toks[win * SEQ + 1: win * SEQ + SEQ + 1])
    with pytest.raises(StopIteration):
        next(loader)


def test_nested_prefix_across_D_and_batch_size(corpus):
    """A shorter run (smaller D, other batch size) sees exactly a prefix of a longer run."""
    short, _ = train_loader(corpus, seq_len=SEQ, global_batch=4, num_steps=5, seed=7)
    long, _ = train_loader(corpus, seq_len=SEQ, global_batch=8, num_steps=12, seed=7)
    a, b = rows(take(short, 5)), rows(take(long, 12))
    np.testing.assert_array_equal(a, b[: len(a)])
    other, _ = train_loader(corpus, seq_len=SEQ, global_batch=4, num_steps=5, seed=8)
    assert not np.array_equal(rows(take(other, 5)), a)  # the seed does change the order


@pytest.mark.parametrize("procs", [2, 4])
def test_process_shards_partition_the_global_batch(corpus, procs):
    single, _ = train_loader(corpus, seq_len=SEQ, global_batch=8, num_steps=4, seed=0)
    shards = [train_loader(corpus, seq_len=SEQ, global_batch=8, num_steps=4, seed=0,
                           process_index=p, process_count=procs)[0] for p in range(procs)]
    for _ in range(4):
        full = next(single)
        parts = [next(s) for s in shards]
        assert all(p["inputs"].shape == (8 // procs, SEQ) for p in parts)
        for key in ("inputs", "targets"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), full[key])
    # disjoint: the global positions behind the shards never overlap, and the windows at
    # distinct positions within one epoch are distinct (a permutation)
    w = window_order(np.arange(32), windows_per_epoch=(corpus.train_tokens.size - 1) // SEQ,
                     seed=0)
    assert len(set(w.tolist())) == 32


def test_bad_sharding_is_rejected(corpus):
    with pytest.raises(ValueError, match="not divisible by process_count 3"):
        train_loader(corpus, seq_len=SEQ, global_batch=8, num_steps=1, seed=0, process_count=3)


def test_resume_from_orbax_checkpoint_is_exact(corpus, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    ref, _ = train_loader(corpus, seq_len=SEQ, global_batch=4, num_steps=10, seed=0)
    expected = take(ref, 10)

    it, _ = train_loader(corpus, seq_len=SEQ, global_batch=4, num_steps=10, seed=0)
    first = take(it, 4)
    mngr = ocp.CheckpointManager(tmp_path / "ckpt")
    mngr.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    take(it, 2)  # move on, so the restore has something to undo

    fresh, _ = train_loader(corpus, seq_len=SEQ, global_batch=4, num_steps=10, seed=0)
    mngr.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    rest = take(fresh, 6)
    for got, want in zip(first + rest, expected):
        np.testing.assert_array_equal(got["inputs"], want["inputs"])
        np.testing.assert_array_equal(got["targets"], want["targets"])
    mngr.close()


def test_D_larger_than_corpus_is_a_clear_error(corpus):
    w = (corpus.train_tokens.size - 1) // SEQ
    steps = w // 4 + 1
    with pytest.raises(ValueError) as e:
        train_loader(corpus, seq_len=SEQ, global_batch=4, num_steps=steps, seed=0)
    msg = str(e.value)
    assert f"{steps * 4 * SEQ:,}" in msg and f"{w * SEQ:,}" in msg
    assert "data.allow_repeat=True" in msg


def test_allow_repeat_counts_epochs_and_reshuffles(corpus):
    w = (corpus.train_tokens.size - 1) // SEQ
    steps = math.ceil(2.5 * w / 2)
    loader, info = train_loader(corpus, seq_len=SEQ, global_batch=2, num_steps=steps, seed=0,
                                allow_repeat=True)
    assert info["epochs"] == pytest.approx(steps * 2 / w)
    order = window_order(np.arange(steps * 2), windows_per_epoch=w, seed=0)
    # each epoch uses every window exactly once, in a new order
    assert sorted(order[:w]) == list(range(w)) and sorted(order[w:2 * w]) == list(range(w))
    assert not np.array_equal(order[:w], order[w:2 * w])
    x = rows([next(loader) for _ in range(steps)])
    toks = np.asarray(corpus.train_tokens)
    for r in (0, w - 1, w, 2 * w + 3):
        np.testing.assert_array_equal(x[r], toks[order[r] * SEQ: order[r] * SEQ + SEQ])


def test_training_never_sees_eval_documents(corpus):
    """Every window of a full epoch comes from train.bin, and no eval document's text is in it."""
    w = (corpus.train_tokens.size - 1) // SEQ
    loader, _ = train_loader(corpus, seq_len=SEQ, global_batch=1, num_steps=w, seed=0)
    seen = bytes(rows([next(loader) for _ in range(w)]).astype(np.uint8).ravel())
    eval_text = bytes(np.asarray(corpus.eval_tokens).astype(np.uint8))
    names = corpus.meta["eval"]["document_names"]
    assert len(names) == 4  # 10% of 40 documents
    for name in names:
        i = int(name[-7:-4])
        marker = f"doc{i:03d} ".encode()
        assert marker in eval_text and marker not in seen
    # the train split holds every train document and none of the eval ones
    train_text = bytes(np.asarray(corpus.train_tokens).astype(np.uint8))
    for i in range(40):
        assert (f"doc{i:03d} ".encode() in train_text) == (f"d{i:03d}.txt" not in str(names))


def test_eval_set_is_fixed_spread_and_independent_of_batch(corpus):
    toks = np.asarray(corpus.eval_tokens)
    available = (toks.size - 1) // SEQ
    w = eval_windows(corpus, seq_len=SEQ, n_tokens=10 * SEQ + 5)
    assert len(w) == 10 and len(set(w.tolist())) == 10
    assert w[0] == 0 and w[-1] == available - 1  # spread over the whole split, first to last
    a = eval_batches(corpus, seq_len=SEQ, batch_size=4, n_tokens=10 * SEQ + 5)
    b = eval_batches(corpus, seq_len=SEQ, batch_size=3, n_tokens=10 * SEQ + 5)
    assert len(a) == 3 and len(b) == 4  # 10 windows: 4+4+2(+2 pad), 3+3+3+1(+2 pad)

    def real(batches, key):  # the weighted rows, in order
        return np.concatenate([x[key][x["weights"][:, 0] > 0] for x in batches])

    expect_in = np.stack([toks[i * SEQ:(i + 1) * SEQ] for i in w])
    expect_out = np.stack([toks[i * SEQ + 1:(i + 1) * SEQ + 1] for i in w])
    for batches in (a, b):
        np.testing.assert_array_equal(real(batches, "inputs"), expect_in)
        np.testing.assert_array_equal(real(batches, "targets"), expect_out)
        assert sum(x["weights"].sum() for x in batches) == 10 * SEQ
    halves = [eval_batches(corpus, seq_len=SEQ, batch_size=4, n_tokens=10 * SEQ,
                           process_index=p, process_count=2)[0]["inputs"] for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), a[0]["inputs"])
    with pytest.raises(ValueError, match="eval split .* has"):
        eval_batches(corpus, seq_len=SEQ, batch_size=4, n_tokens=toks.size * 2)
    with pytest.raises(ValueError, match="eval batch size 0 must be >= 1"):
        eval_batches(corpus, seq_len=SEQ, batch_size=0, n_tokens=10 * SEQ)


def test_bits_per_byte():
    # 1 nat/token at 4 bytes/token = 1/ln2/4 bits per byte
    assert bits_per_byte(1.0, 4.0) == pytest.approx(1 / math.log(2) / 4, rel=1e-12)
    with pytest.raises(ValueError, match="bytes_per_token"):
        bits_per_byte(1.0, 0.0)


@pytest.mark.slow
def test_worker_processes_give_the_same_stream(corpus):
    """Batches are pure functions of their index, so Grain worker processes change nothing."""
    import absl.flags

    absl.flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    ref, _ = train_loader(corpus, seq_len=SEQ, global_batch=4, num_steps=6, seed=0)
    mp, _ = train_loader(corpus, seq_len=SEQ, global_batch=4, num_steps=6, seed=0, num_workers=2)
    got = list(mp)
    assert len(got) == 6
    for a, b in zip(take(ref, 6), got):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
