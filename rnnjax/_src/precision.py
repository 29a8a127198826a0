"""The mixed-precision policy of the built-in cells: which dtype holds what.

A built-in cell has three dtypes (`Precision`):

- `param`: the params, and the carry. float32 by default, float64 when computing
  in float64. Keeping the carry in the params' dtype is Flax's rule
  (`initialize_carry` uses `param_dtype`), and what the LSTM's memory cell needs:
  a cell summed over thousands of steps in bfloat16 loses its small increments.
- `compute`: the operands of the matrix products, and the outputs `y`. Inputs
  of any floating dtype are cast to it.
- `accum` (derived): the dtype products accumulate in and the gate arithmetic
  runs in, `compute` promoted to at least float32 (`preferred_element_type`).

Computing in float32 or float64 with params of the same dtype is exactly the
single-precision arithmetic of before: every cast below is then the identity.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._src import checks


class Precision(NamedTuple):
  """The dtypes of a built-in cell: `param` (params and carry) and `compute` (products, outputs).

  Attributes:
    param: the dtype of the params and of the carry.
    compute: the dtype of the matrix products' operands, of the inputs once cast,
      and of the outputs.
  """

  param: np.dtype
  compute: np.dtype

  @property
  def accum(self) -> np.dtype:
    """The dtype of accumulation and of the gate arithmetic: `compute`, at least float32."""
    return at_least_float32(self.compute)

  def input(self, fn: str, name: str, x: jax.Array) -> jax.Array:
    """`x` cast to `compute`; a TypeError naming `fn` and `name` if it is not floating."""
    dtype = getattr(x, "dtype", None)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"{fn}: `{name}` must hold floating-point values (any float dtype; the cell computes "
          f"in {self.compute.name}), got dtype {np.dtype(dtype).name}. Integer token ids need "
          f"an embedding first (rnnjax.sequence_model(..., vocab_size=V) has one); otherwise "
          f"cast with {name}.astype(jnp.float32).")
    return jnp.asarray(x).astype(self.compute)

  def matmul(self, x: jax.Array, w: jax.Array) -> jax.Array:
    """`x @ w` with both operands in `compute`, accumulated and returned in `accum`."""
    return dot(x, w.astype(self.compute), self.accum)

  def affine(self, x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
    """`x @ w + b` in `accum` (`b` optional)."""
    y = self.matmul(x, w)
    return y if b is None else y + b.astype(self.accum)

  def wide(self, v: jax.Array) -> jax.Array:
    """`v` (a carry leaf) in `accum`, for the gate arithmetic."""
    return v.astype(self.accum)

  def output(self, v: jax.Array) -> jax.Array:
    """`v` in `compute`, the outputs' dtype."""
    return v.astype(self.compute)


def at_least_float32(dtype: Any) -> np.dtype:
  """A floating `dtype`, widened to float32 if it is narrower (bfloat16, float16)."""
  dtype = np.dtype(dtype)
  return dtype if dtype.itemsize >= 4 else np.dtype(np.float32)


def dot(x: jax.Array, w: jax.Array, accum: Any) -> jax.Array:
  """`x @ w`, `x` cast to `w`'s dtype, accumulated and returned in `accum`.

  The plain `x @ w` where no cast is needed, so full-precision cells run exactly the
  operations they always did.
  """
  if x.dtype == w.dtype == accum:
    return x @ w
  return jnp.matmul(x.astype(w.dtype), w, preferred_element_type=accum)


def like(new: Any, old: Any) -> Any:
  """The pytree `new` with each leaf cast to the dtype of `old`'s (a step's new carry)."""
  return jax.tree_util.tree_map(lambda n, o: n.astype(o.dtype), new, old)


def check_sequence_dtype(fn: str, name: str, apply: Any, params: Any, carry: Any,
                         xs: jax.Array) -> None:
  """Checks that `apply` takes steps of `xs: [T, ...]` and keeps the carry's dtypes.

  Inputs of the params' dtype always pass. Any other dtype passes if one step of
  `apply` (shapes only, `jax.eval_shape`) accepts it and returns the carry's dtypes:
  the built-in cells cast floating inputs to their compute dtype. Otherwise a
  TypeError says how to cast. No check for params of mixed or no floating dtype.
  """
  params_dtype = checks.params_dtype(params)
  if params_dtype is None or not hasattr(xs, "dtype"):
    return
  got = np.dtype(jax.dtypes.canonicalize_dtype(xs.dtype))
  want = np.dtype(params_dtype)
  if got == want:
    return
  step = jax.ShapeDtypeStruct(tuple(xs.shape[1:]), got)
  ok = jnp.issubdtype(got, jnp.floating)
  if ok:
    try:
      new, _ = jax.eval_shape(apply, params, carry, step)
    except (TypeError, ValueError):
      ok = False
    else:
      ok = (jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(carry) and all(
          n.dtype == c.dtype for n, c in zip(jax.tree_util.tree_leaves(new),
                                            jax.tree_util.tree_leaves(carry), strict=True)))
  if not ok:
    checks.input_dtype(fn, name, xs, want)  # raises: `got` is not `want`


def floating(fn: str, name: str, dtype: Any) -> np.dtype:
  """`dtype` as a NumPy dtype; a TypeError naming `fn` and `name` unless it is floating."""
  try:
    dt = np.dtype(jnp.dtype(dtype))
  except TypeError:
    raise TypeError(f"{fn}: `{name}` must be a floating dtype, got {dtype!r}.") from None
  if not jnp.issubdtype(dt, jnp.floating):
    raise TypeError(f"{fn}: `{name}` must be a floating dtype, got {name}={dt}.")
  return dt


def policy(fn: str, dtype: Any, param_dtype: Any = None) -> Precision:
  """The `Precision` of a factory's `dtype` (compute) and `param_dtype` arguments.

  `param_dtype=None` means float32, or `dtype` itself where it is wider
  (float64), so that `dtype=jnp.float64` alone still gives a float64 cell.

  Examples:
    >>> import jax.numpy as jnp
    >>> p = policy("rnnjax.lstm", jnp.bfloat16)
    >>> p.param.name, p.compute.name, p.accum.name
    ('float32', 'bfloat16', 'float32')
  """
  compute = floating(fn, "dtype", dtype)
  if param_dtype is None:
    param = at_least_float32(compute)
  else:
    param = floating(fn, "param_dtype", param_dtype)
  return Precision(param=param, compute=compute)
