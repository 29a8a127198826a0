"""Pieces shared by the classic cells: the one-tensor carry and factory argument checks."""

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
