"""The cell contract and small helpers shared by every cell.

A cell says what one time step computes. It is a `NamedTuple` of pure
functions, like `optax.GradientTransformation`; a factory such as
`rnnjax.lstm(hidden_size=...)` closes over the hyper-parameters, so the params
and carries it makes are pytrees of arrays only::

  init          :: (key, input_size) -> params
  initial_carry :: (params, batch_shape=()) -> carry
  apply         :: (params, carry, x[..., I], *, key=None) -> (carry, y[..., O])

`apply` takes the carry first, so `functools.partial(cell.apply, params)` is a
`jax.lax.scan` body as it stands. Cells are batch-polymorphic: any leading
dimensions of `x` broadcast against the carry as `jnp` operations do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Params = Any
Carry = Any
InitFn = Callable[[jax.Array, int], Params]
InitialCarryFn = Callable[..., Carry]
ApplyFn = Callable[..., tuple[Carry, jax.Array]]
Initializer = Callable[..., jax.Array]


class Cell(NamedTuple):
  """One recurrent step as pure functions.

  Attributes:
    init: `init(key, input_size) -> params`, a pytree of arrays.
    initial_carry: `initial_carry(params, batch_shape=()) -> carry`, the state
      before the first step (all zeros for the built-in cells); its leaves have
      shape `[*batch_shape, ...]` and the dtype of the params.
    apply: `apply(params, carry, x, *, key=None) -> (carry, y)` with
      `x: [..., I]`. `key` is only used by cells with randomness (a `stack` with
      dropout); the built-in cells accept and ignore it. The built-in cells
      compute in the dtype of their params: `x` must have that dtype and the
      carry the dtypes of `initial_carry` (a TypeError says which and how to
      cast), so the new carry has the dtype of the carry given and a
      `lax.scan` over `apply` keeps its carry type.
    input_size: optional `input_size(params) -> int`, the feature size `I` the
      params were made for. Engines use it to check inputs with a clear message;
      a user-written cell may leave it `None`.
  """

  init: InitFn
  initial_carry: InitialCarryFn
  apply: ApplyFn
  input_size: Callable[[Params], int] | None = None


def output_size(cell: Cell, params: Params, input_size: int) -> int:
  """The feature size of `cell.apply`'s output for inputs of `input_size` (by shape evaluation)."""
  carry = jax.eval_shape(lambda p: cell.initial_carry(p, ()), params)
  dtype = jax.tree_util.tree_leaves(params)[0].dtype
  x = jax.ShapeDtypeStruct((input_size,), dtype)
  _, y = jax.eval_shape(cell.apply, params, carry, x)
  return int(y.shape[-1])


def zeros(batch_shape: tuple[int, ...], size: int, dtype: Any) -> jax.Array:
  """A zero carry leaf of shape `[*batch_shape, size]`."""
  return jnp.zeros((*tuple(batch_shape), size), dtype)


def gate_blocks(init: Initializer, key: jax.Array, rows: int, cols: int, gates: int,
                dtype: Any) -> jax.Array:
  """`[rows, gates * cols]`: `gates` independent `[rows, cols]` draws of `init`, side by side.

  Used so that each gate's block is orthogonal (or has its own fan-in scaling),
  rather than the fused matrix as a whole.
  """
  keys = jax.random.split(key, gates)
  return jnp.concatenate([draw(init, k, (rows, cols), dtype) for k in keys], axis=-1)


def draw(init: Initializer, key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
  """`init(key, shape)` drawn in at least float32, then cast to `dtype`.

  Low-precision dtypes (bfloat16) are cast after drawing: some initializers
  (orthogonal, via QR) have no bfloat16 kernel on CPU.
  """
  wide = jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32
  return init(key, shape, wide).astype(dtype)


def gated_biases(gates: int, hidden_size: int, dtype: Any, *,
                 use_bias: bool, fill: dict[int, float] | None = None
                 ) -> tuple[jax.Array | None, jax.Array | None]:
  """Input and recurrent biases `b_i, b_h: [gates * H]` (None when `use_bias=False`).

  `fill` maps a gate index to a constant for that gate's slice of `b_i` (for
  example the LSTM forget gate at 1.0); `b_h` starts at zero.
  """
  if not use_bias:
    return None, None
  b_i = jnp.zeros((gates * hidden_size,), dtype)
  for gate, value in (fill or {}).items():
    b_i = b_i.at[gate * hidden_size:(gate + 1) * hidden_size].set(value)
  return b_i, jnp.zeros((gates * hidden_size,), dtype)


def affine(x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
  """`x @ w + b`, with `b` optional."""
  y = x @ w
  return y if b is None else y + b


def default_kernel_init() -> Initializer:
  """Input weights: LeCun normal, variance `1 / I` (Flax's default for kernels)."""
  return jax.nn.initializers.lecun_normal()


def default_recurrent_init() -> Initializer:
  """Recurrent weights: orthogonal, one orthogonal block per gate."""
  return jax.nn.initializers.orthogonal()
