"""Argument checks that build rnnjax's error messages.

Every check runs at trace time (shapes and dtypes are static under `jit`), so
it costs nothing in the compiled program. Each message names the function and
the argument, says what was expected and what was received, and where it can,
how to fix it.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def positive_int(fn: str, name: str, value: Any) -> int:
  """`value` as a Python int > 0; TypeError if not an integer, ValueError if <= 0."""
  if isinstance(value, bool) or not hasattr(type(value), "__index__"):
    raise TypeError(
        f"{fn}: `{name}` must be an integer, got {value!r} of type "
        f"{type(value).__name__}. Pass e.g. {name}=128."
    )
  value = operator.index(value)
  if value <= 0:
    raise ValueError(f"{fn}: `{name}` must be a positive integer, got {name}={value}.")
  return value


def probability(fn: str, name: str, value: Any) -> float:
  """`value` as a float in [0, 1)."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise TypeError(
        f"{fn}: `{name}` must be a float in [0, 1), got {value!r} of type "
        f"{type(value).__name__}.")
  p = float(value)
  if not 0.0 <= p < 1.0:
    raise ValueError(f"{fn}: `{name}` must be in [0, 1), got {name}={value!r}.")
  return p


def choice(fn: str, name: str, value: Any, choices: Sequence[Any]) -> Any:
  """`value` if it is one of `choices`, else a ValueError listing them."""
  if value not in choices:
    listed = ", ".join(repr(c) for c in choices)
    raise ValueError(f"{fn}: `{name}` must be one of {listed}; got {name}={value!r}.")
  return value


def sequence_input(fn: str, xs: Any, input_size: int | None) -> tuple[int, tuple[int, ...]]:
  """Checks `xs: [T, ..., I]`; returns `(T, batch_shape)`."""
  shape = getattr(xs, "shape", None)
  if shape is None:
    raise TypeError(f"{fn}: `xs` must be an array of shape [T, ..., I], got {type(xs).__name__}.")
  if len(shape) < 2:
    raise ValueError(
        f"{fn}: `xs` must have rank >= 2 with shape [T, ..., I] (time first, features "
        f"last), got rank {len(shape)} (xs.shape={tuple(shape)}). For a single sequence "
        "without batch use shape [T, I]; for one step call `cell.apply` directly."
    )
  if input_size is not None and shape[-1] != input_size:
    raise ValueError(
        f"{fn}: xs has feature size {shape[-1]} but params were made for "
        f"input_size={input_size} (xs.shape={tuple(shape)}). Check that the last axis "
        "of xs holds the features, or re-run `cell.init` with the right input_size."
    )
  if shape[0] == 0:
    raise ValueError(f"{fn}: `xs` must have at least one time step, got xs.shape={tuple(shape)}.")
  return int(shape[0]), tuple(int(d) for d in shape[1:-1])


def step_input(fn: str, x: Any, input_size: int | None) -> None:
  """Checks one step's input `x: [..., I]`."""
  shape = getattr(x, "shape", None)
  if shape is None or len(shape) < 1:
    raise ValueError(
        f"{fn}: `x` must be an array of shape [..., I] with rank >= 1, got "
        f"{getattr(x, 'shape', type(x).__name__)}."
    )
  if input_size is not None and shape[-1] != input_size:
    raise ValueError(
        f"{fn}: x has feature size {shape[-1]} but params were made for "
        f"input_size={input_size} (x.shape={tuple(shape)})."
    )


def lengths(fn: str, lengths: Any, num_steps: int, batch_shape: tuple[int, ...]) -> jax.Array:
  """Checks `lengths: [...]` integers in [0, T]; the value check runs only on concrete arrays."""
  arr = lengths if isinstance(lengths, jax.Array) else np.asarray(lengths)
  if tuple(arr.shape) != batch_shape:
    raise ValueError(
        f"{fn}: `lengths` must have the batch shape of xs, {batch_shape} (xs is "
        f"[T, ...batch, I]), got lengths.shape={tuple(arr.shape)}."
    )
  if not jnp.issubdtype(arr.dtype, jnp.integer):
    raise TypeError(
        f"{fn}: `lengths` must have an integer dtype, got dtype={arr.dtype}. "
        "Convert with lengths.astype(jnp.int32)."
    )
  if _is_concrete(arr) and arr.size:
    lo, hi = int(np.min(np.asarray(arr))), int(np.max(np.asarray(arr)))
    if lo < 0 or hi > num_steps:
      raise ValueError(
          f"{fn}: `lengths` must lie in [0, T] = [0, {num_steps}], got values from "
          f"{lo} to {hi}."
      )
  return jnp.asarray(arr)


def resets(fn: str, resets: Any, num_steps: int, batch_shape: tuple[int, ...]) -> jax.Array:
  """Checks `resets: [T, ...]` booleans."""
  arr = resets if isinstance(resets, jax.Array) else np.asarray(resets)
  expected = (num_steps, *batch_shape)
  if tuple(arr.shape) != expected:
    raise ValueError(
        f"{fn}: `resets` must have shape [T, ...batch] = {expected}, got "
        f"resets.shape={tuple(arr.shape)}."
    )
  if arr.dtype != jnp.bool_:
    raise TypeError(
        f"{fn}: `resets` must have dtype bool, got dtype={arr.dtype}. "
        "Convert with resets.astype(bool)."
    )
  return jnp.asarray(arr)


def carry(fn: str, carry: Any, expected: Any) -> None:
  """Checks that `carry` has the pytree structure and leaf shapes of `expected`."""
  got_def = jax.tree_util.tree_structure(carry)
  want_def = jax.tree_util.tree_structure(expected)
  if got_def != want_def:
    raise TypeError(
        f"{fn}: `carry` does not match the cell's carry structure: expected {want_def}, "
        f"got {got_def}. Build it with `cell.initial_carry(params, batch_shape)`."
    )
  got = jax.tree_util.tree_leaves_with_path(carry)
  want = jax.tree_util.tree_leaves(expected)
  for (path, leaf), ref in zip(got, want, strict=True):
    shape = tuple(getattr(leaf, "shape", ()))
    if shape != tuple(ref.shape):
      raise ValueError(
          f"{fn}: `carry{jax.tree_util.keystr(path)}` has shape {shape}, expected "
          f"{tuple(ref.shape)} (batch shape of xs + the cell's state size). Build it with "
          "`cell.initial_carry(params, batch_shape)`."
      )
