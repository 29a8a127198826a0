"""Checkpoints: save, restore and resume training state with orbax-checkpoint.

orbax-checkpoint is the JAX ecosystem's checkpoint library (and a dependency of
Flax already). Each checkpoint is written to a temporary directory and renamed
into place only once complete, so a run killed mid-save leaves the previous
checkpoints intact; only the newest `keep` are kept. A small JSON file beside
them (written atomically too) records the run's configuration.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

import jax
import orbax.checkpoint as ocp


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  """Writes `obj` as JSON to `path` via a temporary file and an atomic rename."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


class Checkpointer:
  """Saves and restores a pytree (such as a `TrainState`) by step number.

  Args:
    directory: where the checkpoints live (one sub-directory per step).
    keep: how many of the newest checkpoints to keep.

  Example:
    >>> import tempfile, jax.numpy as jnp, rnnjax
    >>> ckpt = rnnjax.Checkpointer(tempfile.mkdtemp(), keep=2)
    >>> ckpt.save(10, {"w": jnp.ones(3)})
    >>> ckpt.latest_step()
    10
    >>> ckpt.restore({"w": jnp.zeros(3)})["w"].tolist()
    [1.0, 1.0, 1.0]
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3):
    if int(keep) < 1:
      raise ValueError(f"rnnjax.Checkpointer: `keep` must be >= 1, got keep={keep}.")
    self.directory = pathlib.Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=int(keep), create=True,
                                             enable_async_checkpointing=False))

  def save(self, step: int, tree: Any, meta: dict | None = None) -> None:
    """Writes `tree` (and an optional JSON-able `meta` dict) as the checkpoint of `step`.

    Both go into the same step directory, which appears only once complete.
    Returns once the checkpoint is on disk.
    """
    items = {"state": ocp.args.StandardSave(tree),
             "meta": ocp.args.JsonSave(meta if meta is not None else {})}
    self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)
    self._manager.wait_until_finished()

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None if there is none."""
    self._manager.reload()
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def restore(self, like: Any, step: int | None = None) -> Any:
    """Restores the checkpoint of `step` (default: the newest) with the structure of `like`.

    Raises:
      FileNotFoundError: if there is no checkpoint.
    """
    return self.restore_with_meta(like, step)[0]

  def restore_with_meta(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
    """`restore`, plus the `meta` dict saved with the checkpoint.

    Arrays come back with the shardings of `like`'s (a `jax.Array`'s or a
    `jax.ShapeDtypeStruct`'s), whatever devices the checkpoint was saved from: a
    state saved on one device restores replicated onto a mesh, and back.
    """
    step = self.latest_step() if step is None else int(step)
    if step is None:
      raise FileNotFoundError(f"rnnjax.Checkpointer: no checkpoint in {self.directory}.")
    abstract = jax.tree_util.tree_map(
        lambda x: (jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
                   if hasattr(x, "shape") else x), like)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["meta"] or {})

  def close(self) -> None:
    self._manager.close()
