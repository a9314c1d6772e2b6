"""A split's token ids as one logical array over one or more token files (shards).

`TokenStream` is what `Corpus.train_tokens` / `eval_tokens` are: the concatenation of the split's
token files in shard order (a flat corpus is one file). Windows are read with `read(starts,
length)`: local files through memory maps (only the touched pages are read), remote ones (a
bucket) with one batched range request per call, adjacent or overlapping ranges merged first.
A window that crosses a shard boundary is stitched from both shards, so the token stream, and
therefore every training window, is the same however the corpus is cut into shards.
"""
import pathlib

import numpy as np

from scaling.data.store import Location


def memmap(path: pathlib.Path, dtype: np.dtype) -> np.ndarray:
    """A read-only memmap of a token file; a missing or ragged file is an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: token file missing (corrupt corpus); prepare it again")
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise ValueError(f"{path}: {size} bytes is not a whole number of {dtype.name} tokens "
                         "(corrupt or truncated corpus); prepare it again")
    if size == 0:  # np.memmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class TokenStream:
    """The tokens of one split: files `names` (relative to `location`) holding `counts` tokens."""

    def __init__(self, location: Location, names: list, counts: list, dtype):
        self.location, self.names = location, list(names)
        self.dtype = np.dtype(dtype)
        self.counts = np.asarray(counts, dtype=np.int64)
        # offsets[s] = index of shard s's first token in the split; offsets[-1] = total tokens
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self._maps = {}

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return self.size

    def __getstate__(self):  # memmaps are reopened in the receiving process
        return {k: v for k, v in self.__dict__.items() if k != "_maps"} | {"_maps": {}}

    def _local(self, s: int) -> np.ndarray:
        if s not in self._maps:
            self._maps[s] = memmap(self.location.local_path(self.names[s]), self.dtype)
        return self._maps[s]

    def __array__(self, dtype=None, copy=None):
        whole = self[0:self.size]
        return whole if dtype is None else whole.astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        """A contiguous slice of the stream (step 1), as an array."""
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a TokenStream takes contiguous slices; use read() for windows")
        start, stop, _ = key.indices(self.size)
        return self.read([start], max(stop - start, 0))[0]

    def read(self, starts, length: int) -> np.ndarray:
        """tokens[start : start + length] for each start, as an array [len(starts), length]."""
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        out = np.empty((starts.size, int(length)), dtype=self.dtype)
        if starts.size == 0 or length == 0:
            return out
        ends = starts + length
        if starts.min() < 0 or ends.max() > self.size:
            raise IndexError(f"token range beyond the split's {self.size:,} tokens")
        first = np.searchsorted(self.offsets, starts, side="right") - 1
        last = np.searchsorted(self.offsets, ends - 1, side="right") - 1
        if self.location.fs is None and np.array_equal(first, last):
            # Every window inside one local shard: one vectorised gather per shard touched.
            for s in np.unique(first):
                sel = first == s
                rel = starts[sel] - self.offsets[s]
                out[sel] = self._local(int(s))[rel[:, None] + np.arange(length)]
            return out
        # Pieces: (row, column, shard, lo, hi) with lo/hi shard-local token offsets; a window
        # inside one shard is one piece, one that crosses a boundary is several.
        pieces = []
        for r in range(starts.size):
            for s in range(int(first[r]), int(last[r]) + 1):
                lo = max(int(starts[r]), int(self.offsets[s]))
                hi = min(int(ends[r]), int(self.offsets[s + 1]))
                pieces.append((r, lo - int(starts[r]), s, lo - int(self.offsets[s]),
                               hi - int(self.offsets[s])))
        chunks = self._fetch([(s, lo, hi) for _, _, s, lo, hi in pieces])
        for (r, c, _, lo, hi), chunk in zip(pieces, chunks):
            out[r, c:c + hi - lo] = chunk
        return out

    def _fetch(self, ranges: list) -> list:
        """The tokens of each (shard, lo, hi): memmap slices, or one batched remote request."""
        if self.location.fs is None:
            return [self._local(s)[lo:hi] for s, lo, hi in ranges]
        # Merge overlapping or touching ranges of the same shard, then fetch all in one call.
        order = sorted(range(len(ranges)), key=lambda i: ranges[i])
        merged = []  # [shard, lo, hi]
        where = [0] * len(ranges)  # index into merged for each range
        for i in order:
            s, lo, hi = ranges[i]
            if merged and merged[-1][0] == s and lo <= merged[-1][2]:
                merged[-1][2] = max(merged[-1][2], hi)
            else:
                merged.append([s, lo, hi])
            where[i] = len(merged) - 1
        k = self.dtype.itemsize
        blobs = self.location.read_ranges([self.names[s] for s, _, _ in merged],
                                          [lo * k for _, lo, _ in merged],
                                          [hi * k for _, _, hi in merged])
        arrays = []
        for m, blob in zip(merged, blobs):
            if len(blob) != (m[2] - m[1]) * k:
                raise ValueError(f"{self.location.url(self.names[m[0]])}: short read "
                                 f"({len(blob)} of {(m[2] - m[1]) * k} bytes; truncated shard?)")
            arrays.append(np.frombuffer(blob, dtype=self.dtype))
        return [arrays[where[i]][lo - merged[where[i]][1]:hi - merged[where[i]][1]]
                for i, (_, lo, hi) in enumerate(ranges)]
