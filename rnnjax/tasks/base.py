"""The task interface: a batch iterator plus loss, metric and a baseline to beat.

A task is data and scoring only; it knows nothing of the model. The training
loop asks it for batches (a pure function of a PRNG key, so a resumed run sees
exactly the batches an uninterrupted one would) and for an evaluation of a
prediction function on one of two fixed held-out splits: "val" (validation, to
watch a run and pick its checkpoint) and "test" (to report the chosen model once).
Training batches never read either split.

Batches are dicts of arrays, time first:

  "xs":   [T, B, I] float32 features, or [T, B] int32 tokens when `vocab_size` is set
  "ys":   [T, B, O] float32 regression targets, or [T, B] int32 class targets
  "mask": [T, B] float32 weights of each step in the loss (0 for steps not scored)

A classification task (`readout` other than "steps") has one label per sequence:

  "xs":      [T, B, I] float32 features, zeros past each length (T fixed per task)
  "lengths": [B] int32 valid steps of each sequence
  "ys":      [B] int32 class ids

and its `evaluate` calls `predict(xs, lengths)`, which returns logits `[B, C]`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Batch = dict[str, jax.Array]
Predict = Callable[[jax.Array], jax.Array]  # xs [T, B, ...] -> preds [T, B, O] (logits/values)

SPLITS = ("val", "test")
"""The held-out splits every task scores: validation first, then test."""


class Task(NamedTuple):
  """A learning problem.

  Attributes:
    name: the task's name on the command line.
    input_size: `I`, features per step (for token tasks: the vocabulary size).
    output_size: `O`, outputs per step (for token tasks: the vocabulary size).
    vocab_size: number of token ids for token inputs/targets, else None.
    train_batch: `train_batch(key, batch_size) -> Batch`, a pure function of `key` that
      reads the training data only.
    loss: `loss(preds [T, B, O], batch) -> scalar`, the training loss (masked mean);
      `loss(logits [B, C], batch)` for a classification task.
    evaluate: `evaluate(predict, split) -> (metrics, details)` with `split` "val" or
      "test" (positional or keyword; anything else is a ValueError): the metrics on that
      split (a dict of floats holding at least `metric`, keys without a split prefix)
      and arrays for plots (e.g. "truth", "forecast"). `predict(xs)` returns the model's
      outputs on `xs`; a classification task calls `predict(xs, lengths)`.
    metric: the name of the headline metric in `evaluate`'s dict, e.g. "rmse"; lower is
      better unless `maximize`.
    baselines: `{"val": ..., "test": ...}`, the headline metric of the baseline on each
      split.
    baseline_name: what the baseline is (e.g. "seasonal naive").
    units: the unit of the headline metric (e.g. "ppm", "bits per character"; "" if it
      has none).
    loss_units: the unit of the training loss (e.g. "squared normalised units", "nats").
    info: anything else worth recording in the run summary (split sizes and ranges,
      source, vocab). Two keys are read by `rnnjax train`: `"defaults"` (the defaults of
      its flags for this task: hidden, steps, batch_size, lr, eval_every) and
      `"published"` (reference results to print beside the metric: a list of dicts with
      the model's name, `"model"` or `"method"`, its value of `metric`, `"value"` or
      under the metric's name, and `"source"`).
    readout: the `sequence_model` readout the task's model needs: "steps" (one
      prediction per step) or, for a classification task, "last", "mean" or "flatten".
    maximize: True if `metric` is higher-is-better (accuracy).
    tiebreak: another metric of `evaluate`'s dict, lower is better, that breaks ties
      in `metric` when `rnnjax train` selects by validation (None: none). Accuracy on
      a small validation split ties often; a classification task breaks its ties by
      cross-entropy.
  """

  name: str
  input_size: int
  output_size: int
  vocab_size: int | None
  train_batch: Callable[[jax.Array, int], Batch]
  loss: Callable[[jax.Array, Batch], jax.Array]
  evaluate: Callable[[Predict, str], tuple[dict[str, float], dict[str, Any]]]
  metric: str
  baselines: dict[str, float]
  baseline_name: str
  units: str
  loss_units: str
  info: dict[str, Any]
  readout: str = "steps"
  maximize: bool = False
  tiebreak: str | None = None

  @property
  def baseline(self) -> float:
    """The baseline's headline metric on the test split, `baselines["test"]`."""
    return self.baselines["test"]


def masked_mse(preds: jax.Array, batch: Batch) -> jax.Array:
  """Mean squared error over the steps with `mask` > 0."""
  err = jnp.sum((preds - batch["ys"]) ** 2, axis=-1)
  return jnp.sum(err * batch["mask"]) / jnp.maximum(jnp.sum(batch["mask"]), 1.0)


def masked_cross_entropy(logits: jax.Array, batch: Batch) -> jax.Array:
  """Mean cross-entropy in nats over the steps with `mask` > 0."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, batch["ys"][..., None], axis=-1)[..., 0]
  return jnp.sum(nll * batch["mask"]) / jnp.maximum(jnp.sum(batch["mask"]), 1.0)


def classification_cross_entropy(logits: jax.Array, batch: Batch) -> jax.Array:
  """Mean cross-entropy in nats of one label per sequence: `logits [B, C]`, `batch["ys"] [B]`.

  Args:
    logits: `[B, C]` unnormalised class scores (`sequence_model(..., readout="last")`).
    batch: holds `ys: [B]` integer class ids in `[0, C)`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from rnnjax.tasks import classification_cross_entropy
    >>> logits = jnp.log(jnp.array([[0.5, 0.5], [0.25, 0.75]]))
    >>> round(float(classification_cross_entropy(logits, {"ys": jnp.array([0, 1])})), 4)
    0.4904
  """
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, batch["ys"][..., None], axis=-1)[..., 0])
