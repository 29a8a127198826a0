"""Whole-sequence fast paths for the LSTM and GRU, chosen by `unroll` automatically.

Plain autodiff through `lax.scan` differentiates the weights inside the loop:
the backward pass does `T` small `[B, H]^T @ [B, 4H]` products and accumulates
the weight gradients step by step. Here each sequence is a `jax.custom_jvp`
whose tangent rule moves every weight term out of the loop::

  dz_t = (dx_t @ w_i + x_t @ dw_i + h_{t-1} @ dw_h + db)   # hoisted: [T*B, ...] matmuls
         + dh_{t-1} @ w_h                                   # the only matmul in the loop

JAX transposes this linear map for reverse mode, so the backward pass is a
reverse scan that only carries `dh, dc`, and the weight gradients and `dxs`
are each one large matrix product over all `T*B` rows. Forward mode (`jvp`,
`jacfwd`) and `vmap` keep working, because the rule is a JVP, not a VJP.

The kernels reproduce the cells' `apply` under `unroll`'s semantics (lengths as a
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
from jax.custom_derivatives import SymbolicZero

from rnnjax._src import precision as precision_lib
from rnnjax._src.cells import gates as gates_lib


def supported_dtype(xs: jax.Array, *arrays: Any) -> bool:
  """`xs` is floating and the params and carry share one floating dtype (else: generic path)."""
  dtypes = {jnp.dtype(a.dtype) for a in arrays if a is not None}
  return (jnp.issubdtype(xs.dtype, jnp.floating) and len(dtypes) == 1
          and jnp.issubdtype(dtypes.pop(), jnp.floating))


def _zero(t: Any) -> bool:
  return t is None or isinstance(t, SymbolicZero)


def _add(acc: jax.Array | None, term: jax.Array | None) -> jax.Array | None:
  if term is None:
    return acc
  return term if acc is None else acc + term


def _keep(mask: jax.Array | None, v: jax.Array) -> jax.Array:
  """`v` where `mask` (True: keep the carry), zero where a reset happens."""
  return v if mask is None else jnp.where(mask, v, jnp.zeros_like(v))


def _select(mask: jax.Array | None, a: jax.Array, b: jax.Array) -> jax.Array:
  return a if mask is None else jnp.where(mask, a, b)


def _flat(a: jax.Array) -> jax.Array:
  return a.reshape(-1, a.shape[-1])


def _matmul_rows(a: jax.Array, w: jax.Array, accum: Any) -> jax.Array:
  """`a: [T, B, K] @ w: [K, N]` as one `[T*B, K] @ [K, N]` product (`precision.dot`)."""
  return precision_lib.dot(_flat(a), w, accum).reshape(*a.shape[:-1], w.shape[-1])


def _affine(x: jax.Array, w: jax.Array, b: jax.Array | None, accum: Any) -> jax.Array:
  """`x @ w + b` in `accum`, `x` cast to `w`'s (compute) dtype; `b` is already `accum`."""
  y = precision_lib.dot(x, w, accum)
  return y if b is None else y + b


def _transposed(w: jax.Array) -> jax.Array:
  """`w.T` as its own array, for the tangent loops' `_matmul_t`."""
  return jnp.transpose(w)


def _matmul_t(a: jax.Array, w_t: jax.Array, accum: Any) -> jax.Array:
  """`a @ w_t.T`, written so that its transpose (reverse mode) is `ct @ w_t`.

  Reverse mode runs the transpose of the tangent loop, where `dh @ w_h` becomes
  `ct @ w_h.T`: a product whose right operand XLA's CPU backend reads against its
  layout at every step. Keeping `w_h.T` as its own array makes that product a plain
  row-major `[B, 4H] @ [4H, H]`. `a` is cast to `w_t`'s (compute) dtype, and the
  product accumulates in `accum`.
  """
  dims = (((a.ndim - 1,), (1,)), ((), ()))
  if a.dtype == w_t.dtype == accum:
    return jax.lax.dot_general(a, w_t, dims)
  return jax.lax.dot_general(a.astype(w_t.dtype), w_t, dims, preferred_element_type=accum)


# ----------------------------------------------------------------------------- LSTM
# Dtypes inside the cores: `w_i`, `w_h` and `xs` in the compute dtype, the biases in
# `accum` (the compute dtype, at least float32), the carries in their own dtype. Each step
# computes its gates in `accum` and casts the new carry to the carry's dtype, as the
# cells' `apply` does; the outputs are stacked in `accum` and cast to the compute dtype
# once, after the loop (XLA's CPU backend would otherwise convert the whole bfloat16
# output buffer at every step: O(T^2)). The tangent loops cast alike, so that they are
# the derivative of exactly this arithmetic.


def _plain(accum: Any, valid: Any, *carries: jax.Array) -> bool:
  """The stacked outputs are the carries after each step (no mask, no cast)."""
  return valid is None and all(c.dtype == accum for c in carries)


def _lstm_scan(w_i, w_h, b_i, b_h, xs, h0, c0, valid, keep, *, accum, reverse, unroll, save):
  plain = _plain(accum, valid, h0, c0)

  def step(carry, inputs):
    h, c = carry
    x, v, k = inputs
    hp, cp = _keep(k, h), _keep(k, c)
    gates, c1, h1 = gates_lib.lstm_gates(
        _affine(x, w_i, b_i, accum) + _affine(hp, w_h, b_h, accum), cp.astype(accum))
    y = h1 if v is None else jnp.where(v, h1, jnp.zeros_like(h1))
    new = (_select(v, h1.astype(h.dtype), h), _select(v, c1.astype(c.dtype), c))
    if not save:
      return new, (y, ())
    # As few stacked residuals as possible: each is one more write per step.
    gates = jnp.concatenate(gates, axis=-1)
    return new, (y, (gates, c1) + (() if plain else new))

  (h, c), (ys, res) = jax.lax.scan(step, (h0, c0), (xs, valid, keep), reverse=reverse,
                                   unroll=unroll)
  if not save:
    return (ys.astype(xs.dtype), (h, c)), ()
  gates, c1s = res[:2]
  hs, cs = (ys, c1s) if plain else res[2:]  # The carries after each step.
  hp, cp = _keep(keep, _previous(hs, h0, reverse)), _keep(keep, _previous(cs, c0, reverse))
  return (ys.astype(xs.dtype), (h, c)), (gates, c1s, hp, cp)


def _previous(after: jax.Array, first: jax.Array, reverse: bool) -> jax.Array:
  """The carry before each step, from the carries after each step `[T, ...]`."""
  if reverse:
    return jnp.concatenate([after[1:], first[None]])
  return jnp.concatenate([first[None], after[:-1]])


def _lstm_jvp(accum, reverse, unroll, primals, tangents):
  w_i, w_h, b_i, b_h, xs, h0, c0, valid, keep = primals
  dw_i, dw_h, db_i, db_h, dxs, dh0, dc0 = tangents[:7]
  out, (gates, c1s, hp, cp) = _lstm_scan(w_i, w_h, b_i, b_h, xs, h0, c0, valid, keep,
                                         accum=accum, reverse=reverse, unroll=unroll,
                                         save=True)
  # Every tangent term that does not depend on the recurrent state, as big matmuls.
  dpre = None
  if not _zero(dxs):
    dpre = _add(dpre, _matmul_rows(dxs, w_i, accum))
  if not _zero(dw_i):
    dpre = _add(dpre, _matmul_rows(xs, dw_i, accum))
  if not _zero(dw_h):
    dpre = _add(dpre, _matmul_rows(hp, dw_h, accum))
  for db in (db_i, db_h):
    if not _zero(db):
      dpre = _add(dpre, jnp.broadcast_to(db, gates.shape[:-1] + db.shape))
  dh0 = jnp.zeros_like(h0) if _zero(dh0) else dh0
  dc0 = jnp.zeros_like(c0) if _zero(dc0) else dc0
  w_h_t = _transposed(w_h)

  # Checkpointed, so that reverse mode saves only the gates and cells of the forward
  # pass and recomputes the activations' derivatives inside its loop.
  @jax.checkpoint
  def step(carry, inputs):
    dh, dc = carry
    dp, gates_, c1_, cp_, v, k = inputs
    dhp, dcp = _keep(k, dh), _keep(k, dc)
    dz = _matmul_t(dhp, w_h_t, accum)
    if dp is not None:
      dz = dz + dp
    dc1, dh1 = gates_lib.lstm_gates_jvp(tuple(jnp.split(gates_, 4, axis=-1)), c1_,
                                        cp_.astype(accum), dz, dcp.astype(accum))
    dy = dh1 if v is None else jnp.where(v, dh1, jnp.zeros_like(dh1))
    return (_select(v, dh1.astype(dh.dtype), dh), _select(v, dc1.astype(dc.dtype), dc)), dy

  (dh, dc), dys = jax.lax.scan(step, (dh0, dc0), (dpre, gates, c1s, cp, valid, keep),
                               reverse=reverse, unroll=unroll)
  return out, (dys.astype(xs.dtype), (dh, dc))


_lstm_core = jax.custom_jvp(
    lambda w_i, w_h, b_i, b_h, xs, h0, c0, valid, keep, accum, reverse, unroll: _lstm_scan(
        w_i, w_h, b_i, b_h, xs, h0, c0, valid, keep, accum=accum, reverse=reverse,
        unroll=unroll, save=False)[0],
    nondiff_argnums=(9, 10, 11))
_lstm_core.defjvp(lambda accum, reverse, unroll, primals, tangents: _lstm_jvp(
    accum, reverse, unroll, primals, tangents), symbolic_zeros=True)


# ----------------------------------------------------------------------------- GRU


def _gru_scan(w_i, w_h, b_i, b_h, xs, h0, valid, keep, *, reset_after, accum, reverse, unroll,
              save):
  plain = _plain(accum, valid, h0)
  affine = functools.partial(_affine, accum=accum)

  def step(h, inputs):
    x, v, k = inputs
    hp = _keep(k, h)
    gates, h1, aux = gates_lib.gru_gates(affine(x, w_i, b_i), hp.astype(accum), w_h, b_h,
                                         reset_after=reset_after, affine=affine)
    y = h1 if v is None else jnp.where(v, h1, jnp.zeros_like(h1))
    new = _select(v, h1.astype(h.dtype), h)
    if not save:
      return new, (y, ())
    gates = jnp.concatenate(gates, axis=-1)
    return new, (y, (gates,) + ((aux,) if reset_after else ()) + (() if plain else (new,)))

  h, (ys, res) = jax.lax.scan(step, h0, (xs, valid, keep), reverse=reverse, unroll=unroll)
  if not save:
    return (ys.astype(xs.dtype), h), ()
  gates, res = res[0], res[1:]
  hh_n = None
  if reset_after:
    hh_n, res = res[0], res[1:]
  hp = _keep(keep, _previous(ys if plain else res[0], h0, reverse))
  return (ys.astype(xs.dtype), h), (gates, hh_n, hp)


def _gru_input_tangents(w_i, w_h, xs, gates, hp, tangents, *, reset_after, accum):
  """The GRU tangent's terms that do not depend on the recurrent state, as big matmuls:
  `da` (input side) and `dhh` (the recurrent side's weight and bias terms), `[T, B, 3H]`."""
  dw_i, dw_h, db_i, db_h, dxs = tangents
  size, rows = w_h.shape[0], gates.shape[:-1]
  da = None
  if not _zero(dxs):
    da = _add(da, _matmul_rows(dxs, w_i, accum))
  if not _zero(dw_i):
    da = _add(da, _matmul_rows(xs, dw_i, accum))
  if not _zero(db_i):
    da = _add(da, jnp.broadcast_to(db_i, rows + db_i.shape))
  dhh = None
  if not _zero(dw_h):
    if reset_after:
      dhh = _add(dhh, _matmul_rows(hp, dw_h, accum))
    else:
      rh = gates[..., :size] * hp.astype(accum)
      dhh = _add(dhh, jnp.concatenate([_matmul_rows(hp, dw_h[:, :2 * size], accum),
                                       _matmul_rows(rh, dw_h[:, 2 * size:], accum)], -1))
  if not _zero(db_h):
    dhh = _add(dhh, jnp.broadcast_to(db_h, rows + db_h.shape))
  return da, dhh


def _gru_jvp(reset_after, accum, reverse, unroll, primals, tangents):
  w_i, w_h, b_i, b_h, xs, h0, valid, keep = primals
  size = w_h.shape[0]
  out, (gates, hh_n, hp) = _gru_scan(w_i, w_h, b_i, b_h, xs, h0, valid, keep,
                                     reset_after=reset_after, accum=accum, reverse=reverse,
                                     unroll=unroll, save=True)
  da, dhh = _gru_input_tangents(w_i, w_h, xs, gates, hp, tangents[:5], reset_after=reset_after,
                                accum=accum)
  dh0 = jnp.zeros_like(h0) if _zero(tangents[5]) else tangents[5]
  w_h_t = _transposed(w_h[:, :2 * size] if not reset_after else w_h)
  w_hn_t = None if reset_after else _transposed(w_h[:, 2 * size:])

  # Checkpointed, as the LSTM's: reverse mode saves only the gates (and `hh_n`).
  @jax.checkpoint
  def step(dh, inputs):
    da_, dhh_, gates_, hh_n_, hp_, v, k = inputs
    r_, z_, n_ = jnp.split(gates_, 3, axis=-1)
    dhp, hp_ = _keep(k, dh).astype(accum), hp_.astype(accum)
    dg = _matmul_t(dhp, w_h_t, accum)
    if reset_after:
      if dhh_ is not None:
        dg = dg + dhh_
      dg_r, dg_z, dg_n = jnp.split(dg, 3, axis=-1)
    else:
      dhh_rz, dhh_n = (None, None) if dhh_ is None else (dhh_[..., :2 * size],
                                                          dhh_[..., 2 * size:])
      if dhh_rz is not None:
        dg = dg + dhh_rz
      dg_r, dg_z = jnp.split(dg, 2, axis=-1)
    if da_ is not None:
      da_r, da_z, da_n = jnp.split(da_, 3, axis=-1)
      dg_r, dg_z = dg_r + da_r, dg_z + da_z
    dr = dg_r * (r_ * (1 - r_))
    dz = dg_z * (z_ * (1 - z_))
    if reset_after:
      dn_pre = dr * hh_n_ + r_ * dg_n
    else:
      dn_pre = _matmul_t(dr * hp_ + r_ * dhp, w_hn_t, accum)
      if dhh_n is not None:
        dn_pre = dn_pre + dhh_n
    if da_ is not None:
      dn_pre = dn_pre + da_n
    dh1 = (1.0 - z_) * (dn_pre * (1 - n_ * n_)) + dz * (hp_ - n_) + z_ * dhp
    dy = dh1 if v is None else jnp.where(v, dh1, jnp.zeros_like(dh1))
    return _select(v, dh1.astype(dh.dtype), dh), dy

  dh, dys = jax.lax.scan(step, dh0, (da, dhh, gates, hh_n, hp, valid, keep), reverse=reverse,
                         unroll=unroll)
  return out, (dys.astype(xs.dtype), dh)


_gru_core = jax.custom_jvp(
    lambda w_i, w_h, b_i, b_h, xs, h0, valid, keep, reset_after, accum, reverse, unroll:
    _gru_scan(w_i, w_h, b_i, b_h, xs, h0, valid, keep, reset_after=reset_after, accum=accum,
              reverse=reverse, unroll=unroll, save=False)[0],
    nondiff_argnums=(8, 9, 10, 11))
_gru_core.defjvp(lambda reset_after, accum, reverse, unroll, primals, tangents: _gru_jvp(
    reset_after, accum, reverse, unroll, primals, tangents), symbolic_zeros=True)


# ----------------------------------------------------------------------------- kernels


def _masks(valid, keep, num_steps, rows):
  """`[T, *batch]` bool masks to `[T, rows, 1]`, so they broadcast over features."""
  shape = (num_steps, rows, 1)
  return (None if valid is None else valid.reshape(shape),
          None if keep is None else keep.reshape(shape))


def _operands(prec: precision_lib.Precision, params: Any, xs: jax.Array):
  """The cores' operands: weights and `xs: [T, rows, I]` in compute, biases in accum."""
  num_steps, *batch, size = xs.shape
  accum = prec.accum
  bias = [None if b is None else b.astype(accum) for b in (params.b_i, params.b_h)]
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
    ys, (h, c) = _lstm_core(*_operands(prec, params, xs), _rows(carry.h, batch),
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
    ys, h = _gru_core(*_operands(prec, params, xs), _rows(carry.h, batch), v, k, reset_after,
                      prec.accum, reverse, unroll)
    return ys.reshape(num_steps, *batch, -1), type(carry)(h=h.reshape(*batch, -1))
  return kernel
