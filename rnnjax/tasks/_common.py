"""Helpers shared by the tasks: argument checks, window sampling and prediction checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._src import checks
from rnnjax.tasks.base import SPLITS


def int_at_least(fn: str, name: str, value: Any, minimum: int = 1) -> int:
  """`value` as a Python int >= `minimum` (TypeError for non-integers, ValueError if too small)."""
  if minimum == 0 and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    if value < 0:
      raise ValueError(f"{fn}: `{name}` must be a non-negative integer, got {name}={value}.")
    return int(value)
  value = checks.positive_int(fn, name, value)
  if value < minimum:
    raise ValueError(f"{fn}: `{name}` must be at least {minimum}, got {name}={value}.")
  return value


def fraction(fn: str, name: str, value: Any, high: float) -> float:
  """`value` as a float in (0, high]."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise TypeError(
        f"{fn}: `{name}` must be a float in (0, {high}], got {value!r} of type "
        f"{type(value).__name__}.")
  if not 0.0 < float(value) <= high:
    raise ValueError(f"{fn}: `{name}` must be in (0, {high}], got {name}={value!r}.")
  return float(value)


def split(fn: str, value: Any) -> str:
  """`value` checked to be one of `SPLITS` ("val" or "test")."""
  if not isinstance(value, str) or value not in SPLITS:
    raise ValueError(
        f"{fn}: `split` must be 'val' (validation) or 'test', got split={value!r}. Score "
        "the validation split while training and choosing a model, the test split once, at "
        "the end.")
  return value


def random_windows(key: jax.Array, data: jax.Array, batch_size: int, length: int) -> jax.Array:
  """`batch_size` random windows of `length` consecutive entries of `data`, time first.

  Args:
    key: a PRNG key; the windows are a pure function of it.
    data: `[N, ...]` array with `N >= length`.
    batch_size: `B`, a Python int.
    length: `L`, a Python int.

  Returns:
    `[L, B, ...]`: `out[t, b] = data[s_b + t]` with `s_b` uniform in `[0, N - L]`.
  """
  starts = jax.random.randint(key, (batch_size,), 0, data.shape[0] - length + 1)
  idx = starts[None, :] + jnp.arange(length, dtype=starts.dtype)[:, None]
  return data[idx]


def next_char_batches(fn: str, train_ids: jax.Array, window: int) -> Callable:
  """`train_batch(key, batch_size)` of a character task: random windows of `train_ids`.

  Each batch holds `batch_size` windows of `window + 1` consecutive ids: `xs` the first
  `window` (`[T, B]`), `ys` the next id at each step, every step scored (`mask` ones).
  """
  def train_batch(key: jax.Array, batch_size: int) -> dict[str, jax.Array]:
    batch_size = int_at_least(fn, "batch_size", batch_size)
    seg = random_windows(key, train_ids, batch_size, window + 1)  # [T + 1, B]
    return {"xs": seg[:-1], "ys": seg[1:], "mask": jnp.ones((window, batch_size), jnp.float32)}

  return train_batch


def predictions(fn: str, preds: Any, shape: Sequence[int]) -> np.ndarray:
  """`predict`'s output as a float64 NumPy array, checked to have `shape`."""
  got = tuple(getattr(preds, "shape", ()))
  if got != tuple(shape):
    raise ValueError(
        f"{fn}: `predict` returned an array of shape {got}, expected {tuple(shape)} "
        "([T, B, O]: one prediction per input step). Check the model's output size and that "
        "it keeps the time axis first.")
  return np.asarray(jnp.asarray(preds, jnp.float32), np.float64)


def log_softmax(logits: np.ndarray) -> np.ndarray:
  """Log-probabilities along the last axis, in float64."""
  shifted = logits - np.max(logits, axis=-1, keepdims=True)
  return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
