"""Orbax checkpoints of a training run: model/optimizer state, the Grain iterator, metadata.

One checkpoint step directory holds three items:
    state   any pytree of jax arrays (params, optimizer state, step, RNG key ...): StandardSave
    data    the Grain iterator's position (one small JSON file per process)
    meta    a JSON dict (config hash, tokens seen, ...)

Saves are asynchronous (the device->host copy happens in `save`, the file writes in a
background thread), so training continues while the previous checkpoint is written; the
arrays passed to `save` may be donated or deleted as soon as it returns. A step directory is
only complete once Orbax has renamed it from `<step>.orbax-checkpoint-tmp*` and written
`commit_success.txt`; a process killed mid-save leaves a tmp directory that `latest_step()`
ignores and the next Checkpointer deletes (cleanup_tmp_directories, in the background;
its first save waits for it).

Restore goes straight into the target shardings: pass an abstract state whose leaves are
`jax.ShapeDtypeStruct(shape, dtype, sharding=...)` (see `abstract_of`), built for whatever
mesh the restoring run uses — it need not match the mesh that saved.
"""
from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

STATE, DATA, META = "state", "data", "meta"


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
                 async_save: bool = True):
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 1:
            raise ValueError(f"checkpoint.every_steps={every_steps!r}: must be a positive int")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"checkpoint.keep={keep!r}: must be a positive int "
                             f"(the number of newest checkpoints kept)")
        path = epath.Path(directory)  # local paths and object stores (gs://...) alike
        self.directory = path if "://" in os.fspath(directory) else path.resolve()
        self.every_steps, self.keep = every_steps, keep
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=bool(async_save),
            cleanup_tmp_directories=True,  # partial saves of a killed process
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._started: set[int] = set()  # steps saved by this object (maybe still in flight)

    # ------------------------------------------------------------------ save

    def should_save(self, step: int, force: bool = False) -> bool:
        """True when `save(step, ..., force)` would write a checkpoint."""
        if step in self._started or step in self._manager.all_steps():
            return False  # e.g. the final forced save right after a periodic one
        return force or step % self.every_steps == 0

    def save(self, step: int, state: Any, data_iter: Any = None, meta: dict | None = None,
             force: bool = False) -> bool:
        """Start saving checkpoint `step` if step % every_steps == 0 or force; returns whether
        it did. Asynchronous: returns once the arrays are copied off the devices; `wait()`
        blocks until the files are committed. The Grain iterator's position is recorded as of
        this call. Every process must call it (multi-host saves are collective)."""
        if not self.should_save(step, force):
            return False
        items = {STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(dict(meta or {}))}
        if data_iter is not None:
            items[DATA] = grain.checkpoint.CheckpointSave(data_iter)
        saved = bool(self._manager.save(step, args=ocp.args.Composite(**items), force=True))
        if saved:
            self._started.add(step)
        return saved

    # ------------------------------------------------------------------ restore

    def all_steps(self) -> list[int]:
        """Steps of complete checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest COMPLETE checkpoint's step (partial tmp directories are ignored)."""
        return self._manager.latest_step()

    def restore(self, step: int | None, abstract_state: Any, data_iter: Any = None
                ) -> tuple[Any, dict]:
        """(state, meta) of checkpoint `step` (None: the latest), placed with the shardings
        of `abstract_state` (ShapeDtypeStruct leaves). If data_iter is given, its position is
        set to the saved one (in place)."""
        steps = self.all_steps()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        if step not in steps:
            raise FileNotFoundError(
                f"checkpoint step {step} not found in {self.directory}; complete steps: {steps}")
        saved = set(self._item_names(step))
        items = {STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore()}
        if data_iter is not None:
            if DATA not in saved:
                raise ValueError(f"checkpoint {step} in {self.directory} holds no data iterator "
                                 f"state (saved without data_iter); restore with data_iter=None")
            items[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self._manager.restore(step, args=ocp.args.Composite(**items))
        return out[STATE], dict(out[META] or {})

    def _item_names(self, step: int) -> list[str]:
        return [p.name for p in (self.directory / str(step)).iterdir() if p.is_dir()]

    # ------------------------------------------------------------------ lifecycle

    def wait(self) -> None:
        """Block until every started save is committed (raises if a background save failed)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves, then release the manager's threads."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
