"""Whole-sequence fast paths for the LSTM and GRU, chosen by `unroll` automatically.

Plain autodiff through `lax.scan` differentiates the weights inside the loop:
the backward pass does `T` small `[B, H]^T @ [B, 4H]` products and accumulates
the weight gradients step by step. Here each sequence is a `jax.custom_jvp`
whose tangent rule moves every weight term out of the loop::

  dz_t = (dx_t @ w_i + x_t @ dw_i + h_{t-1} @ dw_h + db)   # hoisted: [T*B, ...] matmuls
         + dh_{t-1} @ w_h                                   # the only matmul in the loop

so the weight gradients and `dxs` are each one large matrix product over all `T*B`
rows. The loops themselves (`fused_lstm.py`, `fused_gru.py`) are `loop_call` primitives:
the tangent loop transposes to a reverse loop written by hand (reverse mode carries
only `dh, dc`), and each loop runs a kernel where the platform has one
(`fused_kernels.py`: C++ on CPU, Pallas on GPU) and its `lax.scan` elsewhere. Forward
mode (`jvp`, `jacfwd`), `vmap` and second derivatives keep working, because the rule
is a JVP.

The kernels here reproduce the cells' `apply` under `unroll`'s semantics (lengths as a
`valid` mask, resets to the zero initial carry, `reverse`), and are attached to
the built-in cells as their `FastPaths.sequence` (`engines.py`), bound to their
`apply`: a cell whose `apply` is replaced or wrapped runs through the generic engine.
The gate arithmetic itself (and the LSTM gates' tangent) is `cells/gates.py`'s, shared
with the cells.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax._src import (
  fused_gru,
  fused_kernels,  # noqa: F401  (registers the kernels)
  fused_lstm,
)
from rnnjax._src import precision as precision_lib


def supported_dtype(xs: jax.Array, *arrays: Any) -> bool:
  """`xs` is floating and the params and carry share one floating dtype (else: generic path)."""
  dtypes = {jnp.dtype(a.dtype) for a in arrays if a is not None}
  return (jnp.issubdtype(xs.dtype, jnp.floating) and len(dtypes) == 1
          and jnp.issubdtype(dtypes.pop(), jnp.floating))


# ----------------------------------------------------------------------------- kernels


def _masks(valid, keep, num_steps, rows):
  """`[T, *batch]` bool masks to `[T, rows, 1]`, so they broadcast over features."""
  shape = (num_steps, rows, 1)
  return (None if valid is None else valid.reshape(shape),
          None if keep is None else keep.reshape(shape))


def _operands(prec: precision_lib.Precision, params: Any, xs: jax.Array):
  """The cores' operands: weights and `xs: [T, rows, I]` in compute, biases in accum
  (zeros where the cell has none)."""
  num_steps, *batch, size = xs.shape
  accum, width = prec.accum, params.w_h.shape[-1]
  bias = [jnp.zeros((width,), accum) if b is None else b.astype(accum)
          for b in (params.b_i, params.b_h)]
  x = xs.reshape(num_steps, math.prod(batch), size).astype(prec.compute)
  return (params.w_i.astype(prec.compute), params.w_h.astype(prec.compute), *bias, x)


def _rows(carry_leaf: jax.Array, batch: list[int]) -> jax.Array:
  return jnp.broadcast_to(carry_leaf, (*batch, carry_leaf.shape[-1])).reshape(
      math.prod(batch), -1)


@functools.cache
def lstm_kernel(prec: precision_lib.Precision) -> Callable:
  """The fast path of the built-in LSTM (without projection) of precision `prec`.

  One kernel per precision (cached), so that equal cells carry the same fast path.
  """
  def kernel(params: Any, xs: jax.Array, carry: Any, *, valid: jax.Array | None,
             keep: jax.Array | None, reverse: bool, unroll: int | bool, key: Any = None):
    """`unroll` of the built-in LSTM (without projection); None where it does not apply.

    A kernel takes `unroll`'s inputs after its checks: `xs: [T, *batch, I]`, the
    carry, `valid` (`[T, *batch]`, False at padded steps), `keep` (`[T, *batch]`,
    False where the carry resets to zeros before the step), `reverse`, `unroll` and
    the step key (ignored: the built-in cells are deterministic). It returns
    `(ys, final_carry)`, or None, before computing anything, to ask for the
    generic path.
    """
    if params.w_proj is not None or not supported_dtype(
        xs, params.w_i, params.w_h, params.b_i, params.b_h, carry.h, carry.c):
      return None
    num_steps, *batch, _ = xs.shape
    v, k = _masks(valid, keep, num_steps, math.prod(batch))
    w_i, w_h, b_i, b_h, x = _operands(prec, params, xs)
    ys, (h, c) = fused_lstm.core(w_i, w_h, b_i + b_h, x, _rows(carry.h, batch),
                                 _rows(carry.c, batch), v, k, prec.accum, reverse, unroll)
    return ys.reshape(num_steps, *batch, -1), type(carry)(h=h.reshape(*batch, -1),
                                                           c=c.reshape(*batch, -1))
  return kernel


@functools.cache
def gru_kernel(reset_after: bool, prec: precision_lib.Precision) -> Callable:
  """The fast path of the built-in GRU of precision `prec` (see `lstm_kernel`)."""
  def kernel(params: Any, xs: jax.Array, carry: Any, *, valid: jax.Array | None,
             keep: jax.Array | None, reverse: bool, unroll: int | bool, key: Any = None):
    """`unroll` of the built-in GRU; None where it does not apply."""
    if not supported_dtype(xs, params.w_i, params.w_h, params.b_i, params.b_h, carry.h):
      return None
    num_steps, *batch, _ = xs.shape
    v, k = _masks(valid, keep, num_steps, math.prod(batch))
    ys, h = fused_gru.core(*_operands(prec, params, xs), _rows(carry.h, batch), v, k,
                           reset_after, prec.accum, reverse, unroll)
    return ys.reshape(num_steps, *batch, -1), type(carry)(h=h.reshape(*batch, -1))
  return kernel
