"""Readouts of `sequence_model`: how the core's outputs become predictions.

The core gives `hs: [T, ..., C]`, one output per step. The readout `"steps"` keeps
them all (`preds: [T, ..., O]`); the others reduce each sequence to one vector before
the linear read-out (`preds: [..., O]`), reading valid steps only (`t < lengths`):

    "last"     hs[lengths - 1]: the output at each sequence's last valid step
    "mean"     sum(hs[:lengths]) / lengths
    "flatten"  hs[:, b] with the steps past lengths zeroed, flattened to `[T * C]`

For a core whose top layer runs backwards (`rnn(cell, reverse=True)`, or the backward
half of `bidirectional(..., merge="concat")`), "last" reads those features at step 0,
where the backward direction ends: the final state of each direction, what PyTorch
users concatenate from `h_n`. A sequence of length 0 pools to zeros (its predictions
are the read-out's bias).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks, layers, precision

READOUTS = ("steps", "last", "mean", "flatten")

# A segment of the core's output features: (width, or None for all that remain; whether
# the direction that computes them ends at step 0).
Segment = tuple[int | None, bool]


def check(fn: str, readout: Any, num_steps: Any, core: cell_lib.Cell | layers.Layer) -> int | None:
  """Checks `sequence_model`'s `readout` and `num_steps`; returns `num_steps` (None unless
  `readout="flatten"`, which needs it)."""
  checks.choice(fn, "readout", readout, READOUTS)
  if readout == "flatten":
    if num_steps is None:
      raise ValueError(
          f"{fn}: readout='flatten' reads all T steps into one vector, so the read-out's "
          "weights depend on T: pass num_steps=T, the number of steps of every input (pad "
          "shorter sequences and pass their lengths).")
    return checks.positive_int(fn, "num_steps", num_steps)
  if num_steps is not None:
    raise ValueError(f"{fn}: `num_steps` (={num_steps!r}) is only used by readout='flatten', "
                     f"got readout={readout!r}. Drop num_steps.")
  if readout == "last":
    name, args = _identity(_top(core))
    if name == "bidirectional" and args["merge"] != "concat":
      raise ValueError(
          f"{fn}: readout='last' reads the forward direction at the last valid step and the "
          f"backward one at step 0, but the core's bidirectional layer merges them with "
          f"merge={args['merge']!r}, which cannot be split. Build it with merge='concat', or "
          "use readout='mean' or 'flatten'.")
  return None


def features(readout: str, core_out: int, num_steps: int | None) -> int:
  """The rows of `w_out`: the width of the pooled features for a core of `core_out` outputs."""
  return core_out * num_steps if readout == "flatten" else core_out


def check_steps(fn: str, readout: str, num_steps: int | None, got: int,
                xs_shape: tuple[int, ...]) -> None:
  """`readout="flatten"` takes inputs of exactly `num_steps` steps (`got`, of `xs_shape`)."""
  if readout == "flatten" and got != num_steps:
    raise ValueError(
        f"{fn}: the model was built with readout='flatten' for num_steps={num_steps}, got "
        f"T={got} steps (xs.shape={tuple(xs_shape)}). Pad the inputs to {num_steps} steps "
        f"(pass lengths for the valid ones), or build the model with num_steps={got}.")


def read(readout: str, core: cell_lib.Cell | layers.Layer, params: Any, input_size: int,
         hs: jax.Array, lengths: jax.Array | None) -> jax.Array:
  """The pooled features `[..., C']` of the core's outputs `hs: [T, ..., C]` (see `pool`).

  Args:
    readout: "last", "mean" or "flatten".
    core: the model's core.
    params: its params.
    input_size: the core's input feature size.
    hs: the core's outputs, time first.
    lengths: `[...]` valid steps per sequence, or None (all `T`).
  """
  segments = (final_segments(core, params, input_size) if readout == "last"
              else ((None, False),))
  return pool(readout, hs, lengths, segments)


def pool(readout: str, hs: jax.Array, lengths: jax.Array | None,
         segments: tuple[Segment, ...] = ((None, False),)) -> jax.Array:
  """`hs: [T, ..., C]` -> `[..., C']`, the features the read-out reads (see the module).

  Args:
    readout: "last", "mean" or "flatten".
    hs: the core's outputs, time first.
    lengths: `[...]` valid steps per sequence, or None (all `T`).
    segments: for "last", the feature segments and where each direction ends
      (`final_segments`).
  """
  num_steps, batch = hs.shape[0], hs.shape[1:-1]
  time = jnp.arange(num_steps, dtype=jnp.int32).reshape((num_steps,) + (1,) * (hs.ndim - 1))
  if lengths is None:
    lengths = jnp.full(batch, num_steps, jnp.int32)
  lengths = jnp.clip(jnp.asarray(lengths), 0, num_steps).astype(jnp.int32)
  lengths = lengths[None, ..., None]  # [1, ..., 1]
  zero = jnp.zeros((), hs.dtype)
  if readout == "mean":
    accum = precision.at_least_float32(hs.dtype)
    total = jnp.sum(jnp.where(time < lengths, hs, zero).astype(accum), axis=0)
    return (total / jnp.maximum(lengths[0], 1).astype(accum)).astype(hs.dtype)
  if readout == "flatten":
    kept = jnp.moveaxis(jnp.where(time < lengths, hs, zero), 0, -2)  # [..., T, C]
    return kept.reshape((*batch, num_steps * hs.shape[-1]))
  parts, start = [], 0
  for width, backward in segments:
    stop = hs.shape[-1] if width is None else start + width
    at = (time == 0) & (lengths > 0) if backward else time == lengths - 1
    # Exactly one step (none for an empty sequence) is selected: the sum adds zeros to it.
    parts.append(jnp.sum(jnp.where(at, hs[..., start:stop], zero), axis=0))
    start = stop
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def final_segments(core: cell_lib.Cell | layers.Layer, params: Any,
                   input_size: int) -> tuple[Segment, ...]:
  """Where each direction of the core's top layer ends: its output features as segments.

  `((None, False),)` for a forward core (every feature ends at the last valid step);
  `((None, True),)` for `rnn(cell, reverse=True)`; `((O_f, False), (None, True))` for
  `bidirectional(forward, backward)` with `merge="concat"` (its first `O_f` features,
  the forward cell's, end at the last valid step). A `stack` of layers is read at its
  top layer. Cores of other making (no factory call) count as forward.

  Args:
    core: the model's core.
    params: its params.
    input_size: the core's input feature size.
  """
  name, args = _identity(core)
  if name == "stack" and isinstance(core, layers.Layer):
    parts = [_value(layer) for layer in args["layers"]]
    for layer, p in zip(parts[:-1], params[:-1], strict=False):
      input_size = layers.output_size(layer, p, input_size)
    return final_segments(parts[-1], params[-1], input_size)
  if name == "rnn" and args["reverse"]:
    return ((None, True),)
  if name == "bidirectional" and args["merge"] == "concat":
    width = cell_lib.output_size(_value(args["forward"]), params.forward, input_size)
    return ((width, False), (None, True))
  return ((None, False),)


def _identity(module: Any) -> tuple[str | None, dict[str, Any]]:
  """The factory call that built `module` (`cell_lib.factory`): its name and arguments."""
  call = getattr(module, "_call", None)
  return (None, {}) if call is None else (call[0], dict(call[1]))


def _value(argument: Any) -> Any:
  """A factory argument as it was given (an unhashable one is kept wrapped by identity)."""
  return argument.value if isinstance(argument, cell_lib._Same) else argument


def _top(core: Any) -> Any:
  """The top layer of a core: the last layer of a stack of layers (recursively), else itself."""
  name, args = _identity(core)
  if name == "stack" and isinstance(core, layers.Layer):
    return _top(_value(args["layers"][-1]))
  return core
