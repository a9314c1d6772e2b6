"""The Grain input pipeline: nested, host-sharded, checkpointable batches of token windows.

Windows. Window w of the train split is tokens[w*T : w*T + T + 1] (T = seq_len): inputs are
its first T tokens, targets its last T. Consecutive windows overlap by one token, so every
token after the first is a target exactly once per epoch. windows_per_epoch W = (n - 1) // T.

Global order. Global position g (0, 1, 2, ...) reads window perm_e[g mod W] with epoch
e = g // W and perm_e a permutation of range(W) seeded by (seed, e). The order depends on the
corpus, seq_len and seed only, never on the batch size or the number of steps, so a run
that consumes the first k windows sees a prefix of what a longer run sees (nested D). Beyond
one epoch (only with allow_repeat) each epoch is a fresh permutation.

Batches. Global batch b holds positions [b*B, (b+1)*B); process p of P yields rows
[p*B/P, (p+1)*B/P) of it, so the global batch is the same whatever the process count.

Each batch is a pure function of its index (one batched read of its windows: a vectorised
gather from local memory maps, or one multi-range request to a bucket; tokens.py), so the
Grain iterator's state is just the next batch index: checkpoints restore exactly, and the
stream does not depend on the number of worker processes.
"""
import functools
import math

import numpy as np


@functools.lru_cache(maxsize=4)
def _epoch_permutation(windows: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([int(seed), int(epoch)]).permutation(windows)


def window_order(positions, *, windows_per_epoch: int, seed: int) -> np.ndarray:
    """Window indices at the given global positions (see the module docstring)."""
    positions = np.asarray(positions, dtype=np.int64)
    epochs = positions // windows_per_epoch
    within = positions % windows_per_epoch
    out = np.empty_like(positions)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = _epoch_permutation(windows_per_epoch, seed, int(e))[within[sel]]
    return out


def gather_windows(tokens, windows, seq_len: int) -> dict:
    """{'inputs', 'targets'}: int32[len(windows), seq_len] cut from (seq_len+1)-token windows
    that start at window * seq_len, read from a TokenStream in one batched read."""
    starts = np.asarray(windows, dtype=np.int64) * seq_len
    data = tokens.read(starts, seq_len + 1).astype(np.int32)
    return {"inputs": data[:, :-1], "targets": data[:, 1:]}


class _TrainBatch:
    """Batch index -> this process's rows of that global batch. Holds the corpus path, not
    its memmap, so it pickles cheaply into Grain worker processes and reopens there."""

    def __init__(self, corpus, *, seq_len, global_batch, local_batch, row0, windows, seed):
        self._path = corpus.path
        self._tokens = corpus.train_tokens
        self.seq_len, self.global_batch, self.local_batch = seq_len, global_batch, local_batch
        self.row0, self.windows, self.seed = row0, windows, seed

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_tokens"}

    def __setstate__(self, state):
        from scaling.data.corpus import open_corpus

        self.__dict__.update(state)
        self._tokens = open_corpus(self._path).train_tokens

    def __call__(self, step) -> dict:
        first = int(step) * self.global_batch + self.row0
        positions = np.arange(first, first + self.local_batch)
        windows = window_order(positions, windows_per_epoch=self.windows, seed=self.seed)
        return gather_windows(self._tokens, windows, self.seq_len)


def train_loader(corpus, *, seq_len: int, global_batch: int, num_steps: int, seed: int,
                 process_index: int = 0, process_count: int = 1, allow_repeat: bool = False,
                 num_workers: int = 0):
    """A Grain iterator over `num_steps` batches for this process, and info about coverage.

    Returns (iterator, info). The iterator yields {'inputs', 'targets'}: int32[B_local,
    seq_len] with B_local = global_batch // process_count; checkpoint it with
    grain.checkpoint.CheckpointSave(iterator) / CheckpointRestore(iterator) in an Orbax
    Composite. info: windows_per_epoch, epochs (windows consumed / windows per epoch, float),
    tokens_available (train tokens that can be targets: W * seq_len), tokens_requested.
    """
    for name, v in (("seq_len", seq_len), ("global_batch", global_batch),
                    ("process_count", process_count)):
        if int(v) < 1:
            raise ValueError(f"{name}={v!r} must be >= 1")
    if num_steps < 0:
        raise ValueError(f"num_steps={num_steps!r} must be >= 0")
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by process_count "
                         f"{process_count}: each process must get the same number of rows")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
    if num_workers < 0:
        raise ValueError(f"data.num_workers={num_workers!r} must be >= 0")
    n = int(corpus.train_tokens.size)
    windows = (n - 1) // seq_len
    if windows < 1:
        raise ValueError(f"the train split has {n} tokens, fewer than one window of "
                         f"seq_len+1 = {seq_len + 1}; lower data.seq_len")
    needed = int(num_steps) * int(global_batch)
    available = windows * seq_len
    if needed > windows and not allow_repeat:
        raise ValueError(
            f"D is larger than the corpus: the run asks for {needed * seq_len:,} training tokens "
            f"({num_steps} steps x {global_batch} sequences x {seq_len} tokens) but the train "
            f"split of {corpus.path} has only {available:,} ({windows:,} windows of {seq_len} "
            f"targets; {n:,} tokens). Set data.allow_repeat=True to repeat the data "
            f"({needed / windows:.2f} epochs), or lower train.tokens to <= {available:,}.")
    import grain  # here, not at module top: grain imports jax (seconds), prepare needs neither

    local = global_batch // process_count
    fn = _TrainBatch(corpus, seq_len=seq_len, global_batch=global_batch, local_batch=local,
                     row0=process_index * local, windows=windows, seed=seed)
    ds = grain.MapDataset.range(int(num_steps)).map(fn)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
    if num_workers > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    info = {
        "windows_per_epoch": windows,
        "epochs": needed / windows,
        "tokens_available": available,
        "tokens_requested": needed * seq_len,
    }
    return iter(it_ds), info


def eval_windows(corpus, *, seq_len: int, n_tokens: int) -> np.ndarray:
    """The eval set: n_tokens // seq_len non-overlapping windows spread evenly over the whole
    held-out split (every held-out document is sampled, not just the first). Depends on the
    corpus, seq_len and n_tokens only — never on the batch size or the mesh — so every run of a
    sweep is scored on exactly the same tokens."""
    n = int(corpus.eval_tokens.size)
    available = (n - 1) // seq_len
    want = int(n_tokens) // seq_len
    if want < 1:
        raise ValueError(f"train.eval_tokens={n_tokens} is less than one window of data.seq_len={seq_len}")
    if want > available:
        raise ValueError(
            f"the eval split of {corpus.path} has {n:,} tokens = {available:,} windows of {seq_len}; "
            f"train.eval_tokens={n_tokens:,} asks for {want:,}. Lower train.eval_tokens to <= "
            f"{available * seq_len:,} or raise data.eval_fraction (held-out documents).")
    return np.linspace(0, available - 1, want).round().astype(np.int64)  # spacing >= 1: distinct


def eval_batches(corpus, *, seq_len: int, batch_size: int, n_tokens: int,
                 process_index: int = 0, process_count: int = 1) -> list[dict]:
    """The eval windows (see `eval_windows`) in batches of `batch_size` rows: dicts with "inputs",
    "targets" (int32 [B_local, T]) and "weights" (float32 [B_local, T]: 1 for real windows, 0 for
    the rows that pad the last batch). The weighted mean NLL is the same whatever the batch size.
    With several processes each gets its rows of each batch, as in train_loader.
    """
    if batch_size < 1:
        raise ValueError(f"eval batch size {batch_size!r} must be >= 1")
    if batch_size % process_count:
        raise ValueError(f"eval batch {batch_size} is not divisible by process_count {process_count}")
    windows = eval_windows(corpus, seq_len=seq_len, n_tokens=n_tokens)
    n_batches = -(-len(windows) // batch_size)
    padded = np.zeros(n_batches * batch_size, np.int64)
    padded[:len(windows)] = windows
    weight = (np.arange(n_batches * batch_size) < len(windows)).astype(np.float32)
    local = batch_size // process_count
    out = []
    for b in range(n_batches):
        rows = slice(b * batch_size + process_index * local, b * batch_size + (process_index + 1) * local)
        batch = gather_windows(corpus.eval_tokens, padded[rows], seq_len)
        batch["weights"] = np.repeat(weight[rows, None], seq_len, axis=1)
        out.append(batch)
    return out
