"""Orbax checkpoints of a training run: model/optimizer state, the Grain iterator, metadata.

One checkpoint step directory holds three items:
    state   any pytree of jax arrays (params, optimizer state, step, RNG key ...): StandardSave
    data    the Grain iterator's position (one small JSON file per process)
    meta    a JSON dict (config hash, tokens seen, ...)

Saves are asynchronous (the device->host copy happens in `save`, the file writes in a
background thread), so training continues while the previous checkpoint is written; the
arrays passed to `save` may be donated or deleted as soon as it returns.

What makes a step whole. Orbax writes a step under `<step>.orbax-checkpoint-tmp*`, puts
`commit_success.txt` in each item and in the step, records the saved items in the step's
`_CHECKPOINT_METADATA`, then renames the directory to `<step>` (on local disks; an object store
has no rename, and there the step's commit_success.txt alone marks it). A process killed mid-save
leaves a tmp directory that Orbax never lists and the next Checkpointer deletes
(cleanup_tmp_directories, in the background; its first save waits for it). Orbax's own deletion
of an old step (keep-N) is NOT atomic: it unlinks the files in place, so a kill mid-delete leaves
a `<step>` directory missing some of them, which Orbax still lists as a checkpoint. Hence:
  - keep-N here only renames the old step into `<dir>/deleting/` (Orbax's todelete_subdir: one
    atomic rename), and the next save (after the previous one is finished) or `close` removes it;
  - a Checkpointer opening a directory skips every `<step>` that lacks a commit marker, the step
    metadata or an item's directory, saying so in one line, and (unless read-only) moves it into
    `deleting/` and removes it there, so it is never restored from, listed or counted by keep-N.

Restore goes straight into the target shardings: pass an abstract state whose leaves are
`jax.ShapeDtypeStruct(shape, dtype, sharding=...)` (see `abstract_of`), built for whatever
mesh the restoring run uses — it need not match the mesh that saved.

A complete checkpoint can still be damaged on disk (a truncated array file, corrupt JSON).
`restore_latest` then falls back to the newest one that restores, moving each damaged newer
one aside to `<step>.corrupt` (kept for inspection; later resumes and saves never see it).
A checkpoint that holds another state than the run's (other shapes: another config) is not
damaged: that is an error, and nothing is moved.
"""
from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

STATE, DATA, META = "state", "data", "meta"
META_FILE = "metadata"  # the file Orbax's JSON handler writes inside the meta item
CORRUPT_SUFFIX = ".corrupt"
DELETING = "deleting"  # subdirectory that steps are renamed into before they are removed
COMMIT_FILE = ocp.path.atomicity.COMMIT_SUCCESS_FILE  # Orbax's last file in a step and in each item
STEP_METADATA_FILE = "_CHECKPOINT_METADATA"  # Orbax's step metadata (not exported by Orbax): the items saved


class CheckpointError(ValueError):
    """A checkpoint this run cannot resume from (another run's state, or no data iterator)."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose files are damaged: it holds this run's arrays but does not restore."""


def _one_line(e: BaseException, limit: int = 240) -> str:
    """The root cause of `e` (Orbax wraps TensorStore's precise error) as one short line."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:limit]}{' ...' if len(text) > limit else ''}"


def _array_signature(tree: Any) -> list[tuple[tuple[int, ...], str]]:
    """Sorted (shape, dtype) of every array leaf; a typed PRNG key as its uint32 key data
    (the form Orbax saves it in). Independent of the tree's container types and order."""
    def one(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.eval_shape(jax.random.key_data, x)
        return tuple(int(d) for d in x.shape), str(x.dtype)
    return sorted(one(x) for x in jax.tree.leaves(tree))


def _check_not_a_file(directory: epath.Path) -> None:
    """Refuse a checkpoint directory that is, or lies under, an existing file."""
    for path in (directory, *directory.parents):
        if path.exists():
            if not path.is_dir():
                raise FileExistsError(f"checkpoint directory {directory}: {path} is an existing "
                                      "file, not a directory")
            return


def _incomplete_reason(step_dir: epath.Path) -> str | None:
    """What `step_dir` lacks of a whole checkpoint step (its commit marker, its step metadata, or an
    item with its own commit marker: state, meta, and every item the metadata names); None if nothing.
    Unreadable step metadata is not reported here: that step is damaged, and restore says so."""
    missing = [name for name in (COMMIT_FILE, STEP_METADATA_FILE) if not (step_dir / name).is_file()]
    items = {STATE, META}
    if STEP_METADATA_FILE not in missing:
        try:
            items |= set(ocp.metadata.get_step_metadata(step_dir).item_handlers or {})
        except (ValueError, OSError):
            pass  # damaged, not interrupted: left to restore, which moves it aside as corrupt
    for item in sorted(items):
        if not (step_dir / item).is_dir():
            missing.append(f"the {item} item")
        elif not (step_dir / item / COMMIT_FILE).is_file():
            missing.append(f"{item}/{COMMIT_FILE}")
    return f"missing {', '.join(missing)}" if missing else None


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def abstract_of(tree: Any, shardings: Any = None) -> Any:
    """ShapeDtypeStruct tree (with shardings) to restore into.

    `tree` may hold arrays or ShapeDtypeStructs; `shardings` (a matching tree of Sharding)
    overrides each leaf's own sharding, e.g. to restore onto another mesh.
    """
    if shardings is None:
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


class Checkpointer:
    """Keep-N, asynchronous Orbax checkpoints of (state, data iterator, meta) every k steps."""

    def __init__(self, directory: str | os.PathLike, *, every_steps: int, keep: int,
                 async_save: bool = True, keep_steps: tuple[int, ...] = (), read_only: bool = False,
                 log: Callable[[str], None] = _stderr):
        """keep_steps: steps always saved and never deleted by keep-N (a WSD trunk's branch points).
        read_only: only restore (another run's checkpoints: nothing is created, cleaned up or deleted).
        log: where the one-line notice of each incomplete step directory skipped goes."""
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 1:
            raise ValueError(f"checkpoint.every_steps={every_steps!r}: must be a positive int")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"checkpoint.keep={keep!r}: must be a positive int "
                             f"(the number of newest checkpoints kept)")
        path = epath.Path(directory)  # local paths and object stores (gs://...) alike
        self.directory = path if "://" in os.fspath(directory) else path.resolve()
        _check_not_a_file(self.directory)
        self.every_steps, self.keep, self.keep_steps = every_steps, keep, frozenset(keep_steps)
        self.read_only = read_only
        # before the manager lists the steps: an incomplete one must not count as a checkpoint
        self._incomplete = self._drop_incomplete(log)  # {step: what it lacks}
        self._purge_deleting()  # what a process killed mid-removal left
        preserve = {"max_to_keep": keep} if not keep_steps else {"preservation_policy": pp.AnyPreservationPolicy(
            [pp.LatestN(keep), pp.CustomSteps(sorted(self.keep_steps))])}
        if read_only:
            preserve = {}  # nothing is saved, so nothing is deleted
        options = ocp.CheckpointManagerOptions(
            **preserve,
            enable_async_checkpointing=bool(async_save),
            cleanup_tmp_directories=not read_only,  # partial saves of a killed process
            create=not read_only,
            # keep-N renames a step away in one step (Orbax deletes in place, file by file)
            todelete_subdir=None if read_only else DELETING,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._started: set[int] = set()  # steps saved by this object (maybe still in flight)

    # ------------------------------------------------------------------ save

    def should_save(self, step: int, force: bool = False) -> bool:
        """True when `save(step, ..., force)` would write a checkpoint."""
        if step in self._started or step in self._manager.all_steps():
            return False  # e.g. the final forced save right after a periodic one
        return force or step % self.every_steps == 0 or step in self.keep_steps

    def save(self, step: int, state: Any, data_iter: Any = None, meta: dict | None = None,
             force: bool = False) -> bool:
        """Start saving checkpoint `step` if step % every_steps == 0 or force; returns whether
        it did. Asynchronous: returns once the arrays are copied off the devices; `wait()`
        blocks until the files are committed. The Grain iterator's position is recorded as of
        this call. Every process must call it (multi-host saves are collective)."""
        if not self.should_save(step, force):
            return False
        self._manager.wait_until_finished()  # as Orbax's save does first; then nothing renames
        self._purge_deleting()  # the step(s) the previous save's keep-N renamed away
        items = {STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(dict(meta or {}))}
        if data_iter is not None:
            items[DATA] = grain.checkpoint.CheckpointSave(data_iter)
        saved = bool(self._manager.save(step, args=ocp.args.Composite(**items), force=True))
        if saved:
            self._started.add(step)
            self._incomplete.pop(step, None)  # skipped at open on a host whose process 0 removed it: now whole
        return saved

    # ------------------------------------------------------------------ restore

    def all_steps(self) -> list[int]:
        """Steps of complete checkpoints, ascending (tmp and incomplete step directories are not)."""
        return sorted(s for s in self._manager.all_steps() if s not in self._incomplete)

    def latest_step(self) -> int | None:
        """The newest COMPLETE checkpoint's step (tmp and incomplete step directories are ignored)."""
        return max(self.all_steps(), default=None)

    def restore(self, step: int | None, abstract_state: Any, data_iter: Any = None
                ) -> tuple[Any, dict]:
        """(state, meta) of checkpoint `step` (None: the latest), placed with the shardings
        of `abstract_state` (ShapeDtypeStruct leaves). If data_iter is given, its position is
        set to the saved one (in place). A checkpoint that does not restore raises a one-line
        CorruptCheckpointError when it holds this run's arrays (its files are damaged), else
        CheckpointError (it holds another state)."""
        steps = self.all_steps()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        if step in self._incomplete:
            raise FileNotFoundError(f"checkpoint step {step} in {self.directory} is incomplete "
                                    f"({self._incomplete[step]}); complete steps: {steps}")
        if step not in steps:
            raise FileNotFoundError(
                f"checkpoint step {step} not found in {self.directory}; complete steps: {steps}")
        saved = set(self._item_names(step))
        items = {STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore()}
        if data_iter is not None:
            if DATA not in saved:
                raise CheckpointError(
                    f"checkpoint {step} in {self.directory} holds no data iterator state (saved "
                    f"without data_iter); restore with data_iter=None")
            items[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
        self._check_meta_file(step)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # Orbax and TensorStore raise many types, plain Exception too
            self._check_fits(step, abstract_state)
            raise CorruptCheckpointError(
                f"checkpoint {step} in {self.directory} does not restore ({_one_line(e)})") from e
        return out[STATE], dict(out[META] or {})

    def restore_latest(self, abstract_state: Any, data_iter: Any = None, *,
                       log: Callable[[str], None] = _stderr) -> tuple[int, Any, dict] | None:
        """(step, state, meta) of the newest checkpoint that restores; None when there is none.

        Each newer checkpoint that is damaged is moved aside to `<step>.corrupt` and reported
        to `log` in one line (its step, why, where it went). Raises CheckpointError when a
        checkpoint holds another state than `abstract_state` (nothing is moved), or when
        checkpoints existed but every one was damaged (all moved aside: a rerun starts anew).
        """
        skipped = []
        for step in reversed(self.all_steps()):
            try:
                state, meta = self.restore(step, abstract_state, data_iter)
            except CorruptCheckpointError as e:
                moved = self._move_aside(step)
                log(f"{e}; moved it aside to {moved.name}, trying an older one")
                skipped.append(step)
                continue
            return step, state, meta
        if skipped:
            raise CheckpointError(
                f"no checkpoint in {self.directory} restores: steps {skipped} are damaged and "
                f"were moved aside to <step>{CORRUPT_SUFFIX}; run again to start from step 0")
        return None

    def _item_names(self, step: int) -> list[str]:
        return [p.name for p in (self.directory / str(step)).iterdir() if p.is_dir()]

    def _check_meta_file(self, step: int) -> None:
        """Raise CorruptCheckpointError naming the file if the meta item is not a JSON object."""
        path = self.directory / str(step) / META / META_FILE
        if not path.exists():
            return  # not the layout this Orbax version writes: leave the check to Orbax
        try:
            meta = json.loads(path.read_text())
        except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError too
            raise CorruptCheckpointError(
                f"checkpoint {step}: {path} is not valid JSON ({_one_line(e)})") from e
        if not isinstance(meta, dict):
            raise CorruptCheckpointError(f"checkpoint {step}: {path} holds a JSON "
                                         f"{type(meta).__name__}, not an object")

    def _check_fits(self, step: int, abstract_state: Any) -> None:
        """Raise CheckpointError if checkpoint `step` readably holds other arrays than
        `abstract_state` (another model or optimizer: not a damaged checkpoint)."""
        try:
            tree = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / STATE).tree
            saved = _array_signature(tree)
        except Exception:  # unreadable array metadata: the checkpoint itself is damaged
            return
        want = _array_signature(abstract_state)
        if saved != want:
            diff = next(((a, b) for a, b in zip(saved, want) if a != b), None)
            where = f"; first difference: saved {diff[0]}, run {diff[1]}" if diff else ""
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} holds another state than this run's "
                f"({len(saved)} arrays saved, {len(want)} in the run{where}): resume a run only "
                "with the config that made it, or use a new run directory")

    def _drop_incomplete(self, log: Callable[[str], None]) -> dict[int, str]:
        """{step: what it lacks} of the incomplete `<step>` directories (a save or a keep-N deletion
        killed midway, or a partial copy), each reported to `log` in one line; unless read-only,
        process 0 renames each into DELETING, whence it is removed."""
        if not self.directory.is_dir():
            return {}
        out = {}
        for path in sorted(self.directory.iterdir(), key=lambda p: (len(p.name), p.name)):
            if not (path.name.isdigit() and path.is_dir()):
                continue  # tmp saves are Orbax's to skip and clean; `.corrupt` ones are kept aside
            reason = _incomplete_reason(path)
            if reason is None:
                continue
            out[int(path.name)] = reason
            fate = "left in place (read-only)" if self.read_only else "removed"
            log(f"checkpoint {path.name} in {self.directory} is incomplete ({reason}: a save or "
                f"deletion was interrupted); skipped, {fate}")
            if not self.read_only and jax.process_index() == 0:
                dst = self.directory / DELETING / f"{path.name}.incomplete"
                dst.parent.mkdir(exist_ok=True)
                if dst.exists():
                    dst.rmtree()
                path.rename(dst)  # atomic: a kill from here on leaves no step-named remains
        return out

    def _purge_deleting(self) -> None:
        """Remove the DELETING subdirectory and what was renamed into it (process 0, not read-only).
        Called only while no save is in flight, so Orbax's keep-N is not renaming into it."""
        trash = self.directory / DELETING
        if self.read_only or jax.process_index() != 0 or not trash.exists():
            return
        trash.rmtree(missing_ok=True)

    def _move_aside(self, step: int) -> epath.Path:
        """Rename damaged step directory `step` to `<step>.corrupt[-k]` (process 0 does it)."""
        src = self.directory / str(step)
        for k in itertools.count():
            dst = self.directory / f"{step}{CORRUPT_SUFFIX}{'' if k == 0 else f'-{k}'}"
            if not dst.exists():
                break
        if jax.process_index() == 0:
            src.rename(dst)
        self._manager.reload()
        return dst

    # ------------------------------------------------------------------ lifecycle

    def wait(self) -> None:
        """Block until every started save is committed (raises if a background save failed)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves, remove the steps keep-N renamed away, release the manager's threads."""
        self._manager.wait_until_finished()
        self._purge_deleting()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
