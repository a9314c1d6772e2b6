"""Where a sharded corpus lives: a local directory or an object-store prefix (gs://, s3://, ...).

A `Location` is the corpus root. Local paths use the OS directly (memory maps for reading);
any URL with a scheme goes through fsspec (gcsfs for gs://, s3fs for s3://; file:// is the local
file system through the same code path, which the tests use as a stand-in bucket). Reading many
byte ranges is ONE `cat_ranges` call, which the object-store filesystems serve with concurrent
requests: a batch of token windows costs one round trip, not one per window.

Objects are written whole (a shard is encoded into a local temporary file, then moved or
uploaded), so a reader never sees half a shard under its final name.
"""
import os
import pathlib
import shutil
import tempfile

# What to install for each object-store scheme (fsspec names the package in its ImportError too).
_FS_PACKAGES = {"gs": "'scaling[gcs]'", "gcs": "'scaling[gcs]'", "s3": "'scaling[s3]'"}


def is_url(path) -> bool:
    """True for 'scheme://...' paths (read through fsspec), False for plain local paths."""
    return "://" in os.fspath(path)


class LocationError(OSError):
    """A corpus location that cannot be reached or read; the message names the path."""


class Location:
    """A corpus root: names inside it are '/'-separated relative paths ('shards/train-00000.bin')."""

    def __init__(self, root):
        self.root = os.fspath(root).rstrip("/")
        self.fs = None
        if is_url(self.root):
            import fsspec

            try:
                self.fs, self._path = fsspec.core.url_to_fs(self.root)
            except (ImportError, ValueError) as e:
                scheme = self.root.split("://", 1)[0]
                pkg = _FS_PACKAGES.get(scheme)
                hint = f" (pip install {pkg})" if pkg else ""
                raise LocationError(f"{self.root}: cannot open this location: {e}{hint}") from e
        else:
            self._path = self.root

    def __str__(self) -> str:
        return self.root

    def url(self, name: str) -> str:
        """The full path or URL of `name`, for messages."""
        return f"{self.root}/{name}"

    def _full(self, name: str) -> str:
        return f"{self._path}/{name}"

    def local_path(self, name: str) -> pathlib.Path | None:
        """The local file of `name` (for memory-mapping), or None for a remote location."""
        return None if self.fs else pathlib.Path(self._path) / name

    def _call(self, what: str, fn, *args, **kwargs):
        """Run a filesystem call; a failure is a LocationError naming the location and the call."""
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as e:  # object-store clients raise many types (auth, network, ...)
            raise LocationError(f"{self.url(what)}: cannot read it ({type(e).__name__}: {e})") from e

    def exists(self, name: str) -> bool:
        if self.fs is None:
            return os.path.exists(self._full(name))
        return self._call(name, self.fs.exists, self._full(name))

    def read_text(self, name: str) -> str:
        """The text of `name`; FileNotFoundError names the full path when it is absent."""
        if self.fs is None:
            return pathlib.Path(self._full(name)).read_text(encoding="utf-8")
        try:
            return self._call(name, self.fs.cat_file, self._full(name)).decode("utf-8")
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{self.url(name)}: not found") from e

    def open_read(self, name: str):
        """A binary file object reading `name` from the start."""
        if self.fs is None:
            return open(self._full(name), "rb")
        return self._call(name, self.fs.open, self._full(name), "rb")

    def sizes(self, folder: str) -> dict:
        """{name: bytes} of the files directly in `folder` (one listing call; {} if absent)."""
        if self.fs is None:
            d = pathlib.Path(self._full(folder))
            return {f"{folder}/{p.name}": p.stat().st_size for p in d.iterdir()
                    if p.is_file()} if d.is_dir() else {}
        try:
            entries = self._call(folder, self.fs.ls, self._full(folder), detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for e in entries:  # names come back without the scheme; the file name is what we need
            if e.get("type") == "file":
                out[f"{folder}/{e['name'].rstrip('/').rsplit('/', 1)[-1]}"] = int(e["size"])
        return out

    def put(self, local_file, name: str) -> None:
        """Move (local) or upload (remote) a finished local file to `name`, whole."""
        if self.fs is None:
            dst = pathlib.Path(self._full(name))
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(local_file, dst)  # atomic within one file system
            return
        self._call(name, self.fs.makedirs, self._full(name).rsplit("/", 1)[0], exist_ok=True)
        self._call(name, self.fs.put_file, os.fspath(local_file), self._full(name))
        os.remove(local_file)

    def write_text(self, name: str, text: str) -> None:
        """Write `name` whole: a temporary file, flushed, then moved or uploaded."""
        with self.scratch() as tmp:
            f = tmp / "x"
            with open(f, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            self.put(f, name)

    def scratch(self):
        """A temporary local directory for files on their way to this location (next to a local
        root, so the final move is a rename; the system temp dir for a remote one)."""
        if self.fs is None:
            pathlib.Path(self._path).mkdir(parents=True, exist_ok=True)
            return _TempDir(tempfile.mkdtemp(prefix=".tmp-", dir=self._path))
        return _TempDir(tempfile.mkdtemp(prefix="scaling-shard-"))

    def read_ranges(self, names: list, starts: list, ends: list) -> list:
        """Bytes [start, end) of each named object, in ONE fsspec cat_ranges call (remote only)."""
        if not names:
            return []
        full = [self._full(n) for n in names]
        got = self._call(names[0], self.fs.cat_ranges, full, list(starts), list(ends))
        for n, g in zip(names, got):
            if isinstance(g, Exception):
                raise LocationError(f"{self.url(n)}: cannot read it ({type(g).__name__}: {g})")
        return got


class _TempDir:
    """A context manager yielding a temporary directory as a Path, removed on exit."""

    def __init__(self, path: str):
        self.path = pathlib.Path(path)

    def __enter__(self) -> pathlib.Path:
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
