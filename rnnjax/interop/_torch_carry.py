"""PyTorch's RNN states `h_0`/`h_n` (and `c_0`/`c_n`) to and from rnnjax carries.

PyTorch stacks the state of every layer and direction in one array,
`[num_layers * num_directions, *batch, size]`, row `layer * num_directions +
direction`; rnnjax keeps one cell state per layer and direction (`LSTMState` or
`HiddenState`, in a `BidirectionalState`, in a tuple with one per layer).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rnnjax._src.cells.common import HiddenState
from rnnjax._src.cells.lstm import LSTMState
from rnnjax._src.layers import BidirectionalState
from rnnjax.interop._torch_checks import to_jax
from rnnjax.interop._torch_layout import Spec, cell_sizes


def _named_states(fn: str, spec: Spec, sizes: dict[str, Any], hx: Any) -> list[tuple]:
  """`hx` as `[(name, array, last-axis size)]`: `h_0` (and `c_0` for an LSTM)."""
  if spec.kind == "LSTM":
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
      raise TypeError(
          f"{fn}: an LSTM's `hx` must be the tuple (h_0, c_0), as nn.LSTM takes it, got "
          f"{type(hx).__name__}" + (f" of length {len(hx)}" if isinstance(hx, (tuple, list))
                                    else "") + ".")
    return [("h_0", hx[0], sizes["out"]), ("c_0", hx[1], sizes["hidden"])]
  if isinstance(hx, (tuple, list)):
    raise TypeError(
        f"{fn}: `hx` must be the single array h_0 for a {spec.kind} (only an LSTM takes "
        f"(h_0, c_0)), got a {type(hx).__name__} of length {len(hx)}.")
  return [("h_0", hx, sizes["out"])]


def carry_from_rows(fn: str, spec: Spec, cells: list[list[Any]], hx: Any) -> Any:
  """The carry of the params `(spec, cells)` (from `describe`) holding the rows of `hx`."""
  directions = 2 if spec.bidirectional else 1
  rows = spec.num_layers * directions
  arrays = []
  for name, value, size in _named_states(fn, spec, cell_sizes(cells[0][0]), hx):
    arr = to_jax(fn, name, value)
    if arr.ndim < 2 or arr.shape[0] != rows or arr.shape[-1] != size:
      raise ValueError(
          f"{fn}: `{name}` must have shape [num_layers * num_directions, *batch, {size}] = "
          f"[{rows}, *batch, {size}] for these params ({spec.num_layers} layer(s), "
          f"{directions} direction(s)), got shape {tuple(arr.shape)}.")
    arrays.append(arr)
  if len(arrays) == 2 and arrays[0].shape[1:-1] != arrays[1].shape[1:-1]:
    raise ValueError(
        f"{fn}: `h_0` and `c_0` must have the same batch shape, got h_0.shape="
        f"{tuple(arrays[0].shape)} and c_0.shape={tuple(arrays[1].shape)}.")

  def state(k):
    if spec.kind == "LSTM":
      return LSTMState(h=arrays[0][k], c=arrays[1][k])
    return HiddenState(h=arrays[0][k])

  per_layer = [BidirectionalState(state(2 * layer), state(2 * layer + 1)) if spec.bidirectional
               else state(layer) for layer in range(spec.num_layers)]
  return tuple(per_layer) if spec.stacked else per_layer[0]


def rows_from_carry(fn: str, carry: Any) -> jax.Array | tuple[jax.Array, jax.Array]:
  """`h_n`, or `(h_n, c_n)` for `LSTMState`s: the cell states of `carry` stacked as rows."""
  layers = list(carry) if type(carry) in (tuple, list) else [carry]
  if not layers:
    raise TypeError(f"{fn}: `carry` must not be an empty {type(carry).__name__}.")
  states = []
  for i, layer in enumerate(layers):
    entries = [layer.forward, layer.backward] if isinstance(layer, BidirectionalState) else [layer]
    for entry in entries:
      if not isinstance(entry, (LSTMState, HiddenState)):
        raise TypeError(
            f"{fn}: `carry` must hold LSTMState or HiddenState carries (alone, in a "
            f"BidirectionalState, or in a tuple with one per layer); layer {i} holds a "
            f"{type(entry).__name__}.")
      states.append(entry)
  if len({type(s) for s in states}) > 1:
    raise TypeError(f"{fn}: `carry` mixes LSTMState and HiddenState; PyTorch modules do not.")
  h_n = jnp.stack([s.h for s in states])
  if isinstance(states[0], LSTMState):
    return h_n, jnp.stack([s.c for s in states])
  return h_n
