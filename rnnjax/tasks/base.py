"""The task interface: a batch iterator plus loss, metric and a baseline to beat.

A task is data and scoring only; it knows nothing of the model. The training
loop asks it for batches (a pure function of a PRNG key, so a resumed run sees
exactly the batches an uninterrupted one would) and for a held-out evaluation
of a prediction function.

Batches are dicts of arrays, time first:

  "xs":   [T, B, I] float32 features, or [T, B] int32 tokens when `vocab_size` is set
  "ys":   [T, B, O] float32 regression targets, or [T, B] int32 class targets
  "mask": [T, B] float32 weights of each step in the loss (0 for steps not scored)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Batch = dict[str, jax.Array]
Predict = Callable[[jax.Array], jax.Array]  # xs [T, B, ...] -> preds [T, B, O] (logits/values)


class Task(NamedTuple):
  """A learning problem.

  Attributes:
    name: the task's name on the command line.
    input_size: `I`, features per step (for token tasks: the vocabulary size).
    output_size: `O`, outputs per step (for token tasks: the vocabulary size).
    vocab_size: number of token ids for token inputs/targets, else None.
    train_batch: `train_batch(key, batch_size) -> Batch`, a pure function of `key`.
    loss: `loss(preds [T, B, O], batch) -> scalar`, the training loss (masked mean).
    evaluate: `evaluate(predict) -> (metrics, details)`: held-out metrics (a dict of
      floats holding at least `metric`) and arrays for plots (e.g. "truth", "forecast").
    metric: the name of the headline metric in `evaluate`'s dict; lower is better.
    baseline: the headline metric of the baseline on the same held-out data.
    baseline_name: what the baseline is (e.g. "seasonal naive").
    info: anything else worth recording in the run summary (sizes, source, vocab).
  """

  name: str
  input_size: int
  output_size: int
  vocab_size: int | None
  train_batch: Callable[[jax.Array, int], Batch]
  loss: Callable[[jax.Array, Batch], jax.Array]
  evaluate: Callable[[Predict], tuple[dict[str, float], dict[str, Any]]]
  metric: str
  baseline: float
  baseline_name: str
  info: dict[str, Any]


def masked_mse(preds: jax.Array, batch: Batch) -> jax.Array:
  """Mean squared error over the steps with `mask` > 0."""
  err = jnp.sum((preds - batch["ys"]) ** 2, axis=-1)
  return jnp.sum(err * batch["mask"]) / jnp.maximum(jnp.sum(batch["mask"]), 1.0)


def masked_cross_entropy(logits: jax.Array, batch: Batch) -> jax.Array:
  """Mean cross-entropy in nats over the steps with `mask` > 0."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, batch["ys"][..., None], axis=-1)[..., 0]
  return jnp.sum(nll * batch["mask"]) / jnp.maximum(jnp.sum(batch["mask"]), 1.0)
