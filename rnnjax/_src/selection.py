"""Model selection for `fit`: validation, the best evaluation and its checkpoint, early stopping.

`Selection` runs `eval_fn` on the validation data, records each evaluation under
`val/` names, follows the best one by a chosen metric (saving its state as the
checkpoint of `out_dir/best`, where orbax's `best_fn` keeps the best) and counts
the evaluations since it, for `patience`. `restore_best` reads that checkpoint
back.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from rnnjax._src import checks, ranking
from rnnjax._src.checkpoint import Checkpointer, CheckpointError


class Selection:
  """The evaluations of a run and the best of them.

  Args:
    fn: the calling function's name, for messages.
    eval_fn: `eval_fn(params) -> dict of floats` on the validation data, or None.
    best_metric: the key of `eval_fn`'s dict to select by (with or without `val/`), or
      a sequence of keys (the next breaks the ties of the one before: `ranking.Ranking`).
    best_mode: "min" or "max" (one per key for a sequence).
    patience: evaluations without improvement before the run stops, or None.
  """

  def __init__(self, fn: str, eval_fn: Callable[[Any], dict] | None,
               best_metric: str | Sequence[str] | None, best_mode: str | Sequence[str],
               patience: int | None):
    if eval_fn is not None:
      checks.function(fn, "eval_fn", eval_fn)
    if best_metric is None and best_mode not in ("min", "max"):
      raise ValueError(f"{fn}: `best_mode` must be 'min' or 'max', got {best_mode!r}.")
    if best_metric is not None and eval_fn is None:
      raise ValueError(
          f"{fn}: `best_metric` ({best_metric!r}) must name a metric of `eval_fn`'s dict (or "
          "several, as a sequence), but no eval_fn was given. Pass eval_fn=... (the validation "
          "evaluation) too.")
    self.ranking = (None if best_metric is None else
                    ranking.Ranking(fn, best_metric, best_mode, prefix="val/"))
    if patience is not None:
      patience = checks.positive_int(fn, "patience", patience)
      if best_metric is None:
        raise ValueError(f"{fn}: `patience` ({patience}) counts evaluations without improvement "
                         "of `best_metric`; pass best_metric=... (and an eval_fn) too.")
    self.fn, self.eval_fn, self.patience = fn, eval_fn, patience
    self.metric = None if self.ranking is None else self.ranking.first  # the deciding one
    self.best: dict | None = None  # {"step": ..., "val/...": ...} of the best evaluation
    self.since_best = 0  # evaluations since the best
    self.evals: list[dict] = []
    self.ckpt: Checkpointer | None = None

  def evaluate(self, state: Any) -> dict:
    """Evaluates `state.params`: the `val/` scalars (also kept, and weighed against the best)."""
    step = int(state.step)
    scalars = {f"val/{k}": float(v) for k, v in self.eval_fn(state.params).items()}
    self.evals.append({"step": step, **scalars})
    if self.metric is None:
      return scalars
    missing = self.ranking.missing(scalars)
    if missing:
      raise ValueError(
          f"{self.fn}: best_metric={missing[0].removeprefix('val/')!r} is not a metric of "
          f"eval_fn, which returned {sorted(k.removeprefix('val/') for k in scalars)}. Pass "
          "one of those as best_metric.")
    if self.ranking.better(scalars, self.best):
      self.best, self.since_best = {"step": step, **scalars}, 0
      # A resumed run reaching a best step its predecessor saved already saves it again,
      # identically: the step is kept as it is.
      if self.ckpt is not None and step not in self.ckpt.all_steps():
        self.ckpt.save(step, state, meta={"metrics": scalars}, metrics=scalars)
    else:
      self.since_best += 1
    return scalars

  @property
  def exhausted(self) -> bool:
    """Whether `patience` evaluations in a row brought no improvement."""
    return self.patience is not None and self.since_best >= self.patience

  def why_stopped(self, step: int) -> str:
    best = self.best
    since = (f"its best, {best[self.metric]:.5g}, at step {best['step']}" if best else
             "the start (no finite value yet)")
    ranked = ", ties broken by ".join(self.ranking.names)
    return (f"stopped early at step {step}: {ranked} has not improved for "
            f"{self.since_best} evaluations since {since}")

  def best_step(self) -> int | None:
    return None if self.best is None else self.best["step"]

  def best_metrics(self) -> dict | None:
    return None if self.best is None else {k: v for k, v in self.best.items() if k != "step"}

  def meta(self) -> dict:
    """What a checkpoint saves of the selection, so that a resumed run goes on exactly."""
    return {"best": self.best, "evals_since_best": self.since_best}

  def resume(self, meta: dict) -> None:
    self.best = meta.get("best")
    self.since_best = int(meta.get("evals_since_best", 0))


def restore_best(out_dir: str | os.PathLike, like: Any) -> Any:
  """The state of the best checkpoint that `fit` kept in `out_dir/best`.

  `fit(..., out_dir=d, eval_fn=..., best_metric=...)` saves the state of each
  evaluation that improves `best_metric` there, and keeps only the best (orbax's
  `best_fn`). Its arrays come back like `like`'s (shapes, dtypes and shardings), as
  with `Checkpointer.restore`; its step is `state.step`.

  Args:
    out_dir: the `out_dir` of the run.
    like: a tree like the saved state: the `TrainState` `fit` started from (or its
      `jax.ShapeDtypeStruct`s).

  Returns:
    The best `TrainState`.

  Raises:
    CheckpointError: if there is no best checkpoint (kind "missing"), it is damaged
      ("damaged") or of another model ("mismatch").

  Examples:
    >>> import tempfile, jax, jax.numpy as jnp, optax, rnnjax
    >>> loss = lambda p, batch, key: jnp.mean((p["w"] - batch) ** 2)
    >>> opt = optax.sgd(0.5)
    >>> state = rnnjax.train_state({"w": jnp.zeros(2)}, opt, jax.random.key(0))
    >>> target = lambda step: jnp.full(2, 1.0)
    >>> val = lambda p: {"error": float(jnp.abs(p["w"] - 0.75).max())}  # best at w = 0.75
    >>> out = tempfile.mkdtemp()
    >>> result = rnnjax.fit(state, rnnjax.make_train_step(loss, opt), target, num_steps=4,
    ...                     eval_fn=val, eval_every=1, best_metric="error", out_dir=out,
    ...                     progress=False)
    >>> result.best_step, rnnjax.restore_best(out, state).params["w"].tolist()
    (2, [0.75, 0.75])
  """
  directory = pathlib.Path(out_dir) / "best"
  if not directory.is_dir() or not any(p.name.isdigit() for p in directory.iterdir()):
    detail = "no best checkpoint there"
    raise CheckpointError(
        f"rnnjax.restore_best: no best checkpoint in {directory}. fit keeps one only with an "
        "out_dir, an eval_fn and a best_metric, from the first evaluation on.",
        path=directory, kind="missing", detail=detail)
  ckpt = Checkpointer(directory, keep=1)
  try:
    return ckpt.restore(like)
  finally:
    ckpt.close()
