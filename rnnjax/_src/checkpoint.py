"""Checkpoints: save, restore and resume training state with orbax-checkpoint.

orbax-checkpoint is the JAX ecosystem's checkpoint library (and a dependency of
Flax already). Each checkpoint is written to a temporary directory and renamed
into place only once complete, so a run killed mid-save leaves the previous
checkpoints intact; only the newest `keep` are kept, or, given a `best_metric`,
the `keep` best by it (orbax's `best_fn`: `fit` keeps its best evaluation so, in
`out_dir/best`). (The command line records
the run's configuration beside them in a JSON file, written atomically too, with
`rnnjax._src.files.write_json_atomic`.)

A checkpoint damaged afterwards (a file truncated, garbled or missing, junk in a
step directory) is never deleted or rewritten: restoring the newest skips it
with a warning, and renames it to `STEP.damaged` so that neither a later save
of the same step nor orbax's `keep` policy (which counts every step directory)
can remove it or the intact checkpoints. A checkpoint of another model is
refused with a `CheckpointError` that lists the arrays that differ.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import os
import pathlib
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from rnnjax._src.ranking import Ranking

_FN = "rnnjax.Checkpointer"
_SHOWN = 3  # differences named in a mismatch message


def _orbax() -> Any:
  """`orbax.checkpoint`, imported on first use: it adds about 0.5 s to `import rnnjax`."""
  import orbax.checkpoint as ocp

  return ocp


class CheckpointError(ValueError):
  """A checkpoint that cannot be used: damaged, or saved from another model.

  Attributes:
    path: the directory concerned (a step directory, or the checkpoint directory).
    kind: "damaged" (files missing, truncated or garbled), "mismatch" (intact, but
      its arrays differ from `like`'s in structure, shape or dtype), "unusable"
      (the checkpoint directory cannot be created) or "missing" (there is no
      checkpoint where one was asked for, as by `rnnjax.restore_best`).
    detail: what is wrong, in one line, without the path.
  """

  def __init__(self, message: str, *, path: pathlib.Path, kind: str, detail: str):
    super().__init__(message)
    self.path, self.kind, self.detail = path, kind, detail


class Checkpointer:
  """Saves and restores a pytree (such as a `TrainState`) by step number.

  Args:
    directory: where the checkpoints live (one sub-directory per step).
    keep: how many of the newest checkpoints to keep (with `best_metric`: of the best).
    best_metric: if given, `save` takes `metrics` (a dict of floats holding this key)
      and the `keep` checkpoints best by `metrics[best_metric]` are kept, whatever
      their steps (orbax's `best_fn`); `restore(like)` restores the best intact one.
      A sequence of keys ranks by the first, breaking ties by the next, and so on.
    best_mode: "min" (lower is better, the default) or "max", with `best_metric`;
      one per key for a sequence of keys.

  Examples:
    >>> import tempfile, jax.numpy as jnp, rnnjax
    >>> ckpt = rnnjax.Checkpointer(tempfile.mkdtemp(), keep=2)
    >>> ckpt.save(10, {"w": jnp.ones(3)})
    >>> ckpt.latest_step()
    10
    >>> ckpt.restore({"w": jnp.zeros(3)})["w"].tolist()
    [1.0, 1.0, 1.0]
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3,
               best_metric: str | Sequence[str] | None = None,
               best_mode: str | Sequence[str] = "min"):
    if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)):
      raise TypeError(f"{_FN}: `keep` must be an int, got {keep!r} of type {type(keep).__name__}.")
    if keep < 1:
      raise ValueError(f"{_FN}: `keep` must be >= 1, got keep={keep}.")
    self.ranking = None if best_metric is None else Ranking(_FN, best_metric, best_mode)
    if best_metric is None and best_mode not in ("min", "max"):
      raise ValueError(f"{_FN}: `best_mode` must be 'min' or 'max', got {best_mode!r}.")
    self.directory = pathlib.Path(directory).absolute()
    # orbax sorts by `best_fn`'s value: a tuple ranks lexicographically.
    best = ({} if self.ranking is None else
            {"best_fn": self.ranking.key, "best_mode": "min"})
    ocp = _orbax()
    try:
      if self.directory.exists() and not self.directory.is_dir():
        raise NotADirectoryError(f"{self.directory} is a file")
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(max_to_keep=int(keep), create=True,
                                               enable_async_checkpointing=False, **best),
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "meta": ocp.JsonCheckpointHandler()})
    except OSError as err:
      detail = f"it cannot be used as a directory ({_one_line(err)})"
      raise CheckpointError(f"{_FN}: the checkpoint directory {self.directory}: {detail}. Pass "
                            "a directory path that is not a file or under one.",
                            path=self.directory, kind="unusable", detail=detail) from None

  def save(self, step: int, tree: Any, meta: dict | None = None,
           metrics: dict | None = None) -> None:
    """Writes `tree` (and an optional JSON-able `meta` dict) as the checkpoint of `step`.

    Both go into the same step directory, which appears only once complete.
    Returns once the checkpoint is on disk. With `best_metric`, `metrics` (floats)
    must hold it; the checkpoint then stays only while among the `keep` best.
    """
    missing = [] if self.ranking is None else self.ranking.missing(metrics or {})
    if missing:
      raise ValueError(f"{_FN}: save(..., metrics=...) must hold best_metric="
                       f"{', '.join(map(repr, missing))}; got metrics={metrics!r}.")
    ocp = _orbax()
    items = {"state": ocp.args.StandardSave(tree),
             "meta": ocp.args.JsonSave(meta if meta is not None else {})}
    metrics = None if metrics is None else {str(k): float(v) for k, v in metrics.items()}
    self._manager.save(int(step), args=ocp.args.Composite(**items), metrics=metrics, force=True)
    self._manager.wait_until_finished()

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None if there is none."""
    self._manager.reload()
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The steps of the complete checkpoints, in increasing order."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def best_step(self) -> int | None:
    """With `best_metric`: the best checkpoint's step (None if there is none).

    Without it, the newest (as orbax's `best_step`).
    """
    self._manager.reload()
    return self._manager.best_step()

  def restore(self, like: Any, step: int | None = None) -> Any:
    """Restores the checkpoint of `step` (default: the newest intact one) like `like`.

    With `best_metric`, the default is the best intact one.

    Raises:
      FileNotFoundError: if there is no checkpoint (of `step`).
      CheckpointError: see `restore_with_meta`.
    """
    return self.restore_with_meta(like, step)[0]

  def restore_with_meta(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
    """`restore`, plus the `meta` dict saved with the checkpoint.

    Arrays come back with the shardings of `like`'s (a `jax.Array`'s or a
    `jax.ShapeDtypeStruct`'s), whatever devices the checkpoint was saved from: a
    state saved on one device restores replicated onto a mesh, and back.

    With `step=None`, a damaged newest checkpoint is skipped for the newest intact
    one, with a warning naming it and what is wrong; it is renamed to
    `STEP.damaged` beside the others (its files unchanged), out of reach of later
    saves and of the `keep` policy. Nothing is renamed when none is intact.

    Raises:
      FileNotFoundError: if there is no checkpoint (of `step`).
      CheckpointError: if the checkpoint holds arrays of other shapes, dtypes or
        structure than `like` (kind "mismatch"), or if it (with `step=None`: every
        checkpoint) is damaged (kind "damaged").
    """
    steps = self.all_steps()
    if step is not None:
      step = int(step)
      if step not in steps:
        raise FileNotFoundError(f"{_FN}: no checkpoint of step {step} in {self.directory}; "
                                f"it holds steps {steps}.")
      return self._load(step, like)
    if not steps:
      raise FileNotFoundError(f"{_FN}: no checkpoint in {self.directory}.")
    damaged = []
    for candidate in self._best_first(steps):
      try:
        restored = self._load(candidate, like)
      except CheckpointError as err:
        if err.kind != "damaged":
          raise
        damaged.append(err)
        continue
      for err in damaged:
        kept = self._set_aside(err.path)
        where = (f"its files are kept unchanged in {kept}" if kept is not None else
                 "it could not be renamed and is left in place")
        warnings.warn(f"{_FN}: skipped the damaged checkpoint {err.path} ({err.detail}) and "
                      f"restored step {candidate} instead; {where}.", stacklevel=3)
      return restored
    listed = "; ".join(f"{err.path.name}: {err.detail}" for err in damaged)
    raise CheckpointError(
        f"{_FN}: every checkpoint in {self.directory} is damaged ({listed}). Their files are "
        "left as they are; restore an intact copy of one, or start again in another directory.",
        path=self.directory, kind="damaged", detail=listed)

  def _best_first(self, steps: list[int]) -> list[int]:
    """`steps` newest first; with `best_metric`, best first (those without metrics last)."""
    if self.ranking is None:
      return steps[::-1]

    def rank(step: int) -> tuple[tuple[float, ...], int]:
      metrics, _ = _quietly(lambda: self._manager.metrics(step))
      return self.ranking.key(metrics or {}), -step
    return sorted(steps, key=rank)

  def _load(self, step: int, like: Any) -> tuple[Any, dict]:
    """Restores `step`, checking its arrays against `like`'s first."""
    path = self.directory / str(step)

    def damaged(reason: str) -> CheckpointError:
      detail = reason.replace(f"{path}/", "").replace(str(path), ".")
      return CheckpointError(
          f"{_FN}: the checkpoint {path} is damaged ({detail}). Restore the newest intact one "
          "(step=None), or restore an intact copy of it.", path=path, kind="damaged",
          detail=detail)

    missing = [name for name in ("state", "meta") if not (path / name).is_dir()]
    if missing:
      raise damaged(f"no {' or '.join(missing)} directory in it")
    for file in sorted((path / "state" / "array_metadatas").glob("*")):
      try:  # Orbax would fail on it only after starting to read the arrays.
        json.loads(file.read_bytes())
      except (OSError, ValueError) as err:
        raise damaged(f"{file.relative_to(path)} is not valid JSON ({_one_line(err)})") from None
    saved, failure = _quietly(lambda: self._manager.item_metadata(step)["state"])
    saved = getattr(saved, "tree", saved)
    if failure or saved is None:
      raise damaged(failure or "its state metadata is missing")
    diffs = _differences(_leaf_specs(saved), _leaf_specs(like))
    if diffs:
      more = f" and {len(diffs) - _SHOWN} more" if len(diffs) > _SHOWN else ""
      detail = "; ".join(diffs[:_SHOWN]) + more
      raise CheckpointError(
          f"{_FN}: the checkpoint {path} holds another model than `like`: {detail}. Restore "
          "it into a tree built as the saved one was (the same model sizes and optimizer).",
          path=path, kind="mismatch", detail=detail)
    abstract = jax.tree_util.tree_map(
        lambda x: (jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
                   if hasattr(x, "shape") else x), like)
    ocp = _orbax()
    restored, failure = _quietly(lambda: self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())))
    if failure:
      raise damaged(failure)
    return restored["state"], dict(restored["meta"] or {})

  def _set_aside(self, path: pathlib.Path) -> pathlib.Path | None:
    """Renames the step directory `path` to `STEP.damaged[-N]`; None if it cannot."""
    for n in itertools.count(1):
      target = path.with_name(f"{path.name}.damaged" + (f"-{n}" if n > 1 else ""))
      if not target.exists():
        break
    try:
      path.rename(target)
    except OSError:
      return None
    finally:
      self._manager.reload()
    return target

  def close(self) -> None:
    self._manager.close()


def _one_line(err: BaseException) -> str:
  """`err` as `Type: first line`, at most about 200 characters."""
  text = re.sub(r'Error opening "\w+" driver: ', "", str(err).split(" [tensorstore_spec=")[0])
  text = text.strip().splitlines()
  line = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
  return line if len(line) <= 200 else line[:197] + "..."


def _quietly(read: Callable[[], Any]) -> tuple[Any, str | None]:
  """`(read(), None)`, or `(None, why it failed)`: orbax reads a damaged checkpoint quietly.

  Orbax raises anything from JSON errors to tensorstore ones and logs errors of its
  own, which are held back here: the caller reports the damage in one line. A
  failed read also leaves coroutines, futures and tensorstore callbacks behind,
  which report "Exception ignored in ...", "Event loop is closed" or "Future
  exception was never retrieved" whenever they are collected, even much later. So
  after a failure, those reports (and only those) are dropped for the rest of the
  process; other unraisable exceptions and asyncio errors are reported as before.
  """
  absl = logging.getLogger("absl")
  level = absl.level
  absl.setLevel(logging.CRITICAL + 1)
  hook = sys.unraisablehook
  if not isinstance(hook, _DropLeftovers):
    sys.unraisablehook = _DropLeftovers(hook)
  try:
    try:
      result = read()
    except Exception as err:  # Anything orbax raises means: this checkpoint cannot be read.
      failure = _one_line(err)  # Kept as text: the exception would keep the leftovers alive.
    else:
      sys.unraisablehook = hook
      return result, None
    if _drop_leftover_logs not in logging.getLogger("asyncio").filters:
      logging.getLogger("asyncio").addFilter(_drop_leftover_logs)
    gc.collect()
    return None, failure
  finally:
    absl.setLevel(level)


class _DropLeftovers:
  """An unraisable-exception hook that drops the leftovers of a failed orbax read."""

  def __init__(self, inner: Callable[[Any], None]):
    self.inner = inner

  def __call__(self, unraisable: Any) -> None:
    exc = unraisable.exc_value
    if not ((isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed")
            or "_read_array_index_and_device_put" in repr(unraisable.object)):
      self.inner(unraisable)


def _drop_leftover_logs(record: logging.LogRecord) -> bool:
  """asyncio's report of a failed tensorstore read that orbax did not wait for."""
  message = record.getMessage()
  return not ("exception was never retrieved" in message and "tensorstore_spec" in message)


def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...] | None, str | None]]:
  """`{"params.core.w_h": (shape, dtype name)}` for the leaves of `tree`.

  Works on arrays, `ShapeDtypeStruct`s and orbax's array metadata alike; typed
  PRNG keys count as their key data (as saved). Leaves without a shape or dtype
  (Python scalars) give None there, which matches anything.
  """
  specs = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = ".".join(str(next((getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a)), k))
                    for k in path)
    shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      data = jax.eval_shape(jax.random.key_data, leaf)
      shape, dtype = data.shape, data.dtype
    specs[name or "(root)"] = (None if shape is None else tuple(shape),
                              None if dtype is None else np.dtype(dtype).name)
  return specs


def _differences(saved: dict, wanted: dict) -> list[str]:
  """The leaves of the checkpoint (`saved`) that differ from `like`'s (`wanted`)."""
  diffs = []
  for name in [*wanted, *(n for n in saved if n not in wanted)]:
    if name not in saved:
      diffs.append(f"`like` has {name}, the checkpoint does not")
    elif name not in wanted:
      diffs.append(f"the checkpoint has {name}, `like` does not")
    else:
      for what, there, here in zip(("shape", "dtype"), saved[name], wanted[name], strict=True):
        if there is not None and here is not None and there != here:
          diffs.append(f"{name} has {what} {there} in the checkpoint but {here} in `like`")
          break
  return diffs
