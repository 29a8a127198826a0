"""Pieces shared by the classic cells: the one-tensor carry, fused gate weights, argument checks."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks


class HiddenState(NamedTuple):
  """The carry of Elman, GRU and MGU cells."""

  h: jax.Array  # [..., H]


def resolve_inits(kernel_init: Any, recurrent_init: Any) -> tuple[Any, Any]:
  return (kernel_init or cell_lib.default_kernel_init(),
          recurrent_init or cell_lib.default_recurrent_init())


def hidden_initial_carry(params_h: jax.Array, batch_shape: tuple[int, ...] = ()) -> HiddenState:
  """Zeros `[*batch_shape, H]` in the dtype of `params_h: [H, G*H]`."""
  return HiddenState(h=cell_lib.zeros(tuple(batch_shape), params_h.shape[0], params_h.dtype))


def factory_sizes(fn: str, hidden_size: Any) -> int:
  return checks.positive_int(fn, "hidden_size", hidden_size)


def check_dtype(fn: str, dtype: Any) -> Any:
  try:
    dt = jnp.dtype(dtype)
  except TypeError:
    raise TypeError(f"{fn}: `dtype` must be a floating dtype, got {dtype!r}.") from None
  if not jnp.issubdtype(dt, jnp.floating):
    raise TypeError(f"{fn}: `dtype` must be a floating dtype, got dtype={dt}.")
  return dt


def gated_weights(fn: str, key: jax.Array, input_size: Any, hidden_size: int, gates: int, *,
                  kernel_init: Any, recurrent_init: Any, dtype: Any, use_bias: bool,
                  fill: dict[int, float] | None = None, recurrent_rows: int | None = None
                  ) -> dict[str, jax.Array | None]:
  """The fused `w_i: [I, G*H]`, `w_h: [R, G*H]`, `b_i, b_h: [G*H]` of a cell with `G` gates.

  `R` is `recurrent_rows` (the LSTM's projection size) or `H`. Each gate's block is
  drawn on its own; `fill` sets gate slices of `b_i` (see `cell.gated_biases`).
  """
  input_size = checks.positive_int(f"{fn}.init", "input_size", input_size)
  k_i, k_h = jax.random.split(key)
  b_i, b_h = cell_lib.gated_biases(gates, hidden_size, dtype, use_bias=use_bias, fill=fill)
  rows = recurrent_rows or hidden_size
  return dict(
      w_i=cell_lib.gate_blocks(kernel_init, k_i, input_size, hidden_size, gates, dtype),
      w_h=cell_lib.gate_blocks(recurrent_init, k_h, rows, hidden_size, gates, dtype),
      b_i=b_i, b_h=b_h)


def input_size_of(params: Any) -> int:
  """The `I` of params with an input matrix `w_i: [I, ...]`."""
  return params.w_i.shape[0]
