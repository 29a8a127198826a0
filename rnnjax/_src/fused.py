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
the built-in `apply` functions (`attach`). A cell whose `apply` is replaced or
wrapped loses its kernel and runs through the generic engine. The gate arithmetic
itself (and the LSTM gates' tangent) is `cells/gates.py`'s, shared with the cells.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from rnnjax._src import cell as cell_lib
from rnnjax._src.cells import gates as gates_lib

KERNEL_ATTR = "_rnnjax_sequence_kernel"
# The fast paths only run in these dtypes; bfloat16 and float16 keep the generic path,
# whose rounding (per-step accumulation) users may rely on.
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64))


def attach(apply: Callable, kernel: Callable) -> Callable:
  """Marks `apply` as having the whole-sequence `kernel`; returns `apply`."""
  setattr(apply, KERNEL_ATTR, kernel)
  return apply


def kernel_of(apply: Callable) -> Callable | None:
  return getattr(apply, KERNEL_ATTR, None)


def supported_dtype(*arrays: Any) -> bool:
  """All arrays share one dtype, float32 or float64 (mixed dtypes keep the generic path)."""
  dtypes = {jnp.dtype(a.dtype) for a in arrays if a is not None}
  return len(dtypes) == 1 and dtypes.pop() in _DTYPES


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


def _matmul_rows(a: jax.Array, w: jax.Array) -> jax.Array:
  """`a: [T, B, K] @ w: [K, N]` as one `[T*B, K] @ [K, N]` product."""
  return (_flat(a) @ w).reshape(*a.shape[:-1], w.shape[-1])


def _transposed(w: jax.Array) -> jax.Array:
  """`w.T` as its own array, for the tangent loops' `_matmul_t`."""
  return jnp.transpose(w)


def _matmul_t(a: jax.Array, w_t: jax.Array) -> jax.Array:
  """`a @ w_t.T`, written so that its transpose (reverse mode) is `ct @ w_t`.

  Reverse mode runs the transpose of the tangent loop, where `dh @ w_h` becomes
  `ct @ w_h.T`: a product whose right operand XLA's CPU backend reads against its
  layout at every step. Keeping `w_h.T` as its own array makes that product a plain
  row-major `[B, 4H] @ [4H, H]`.
  """
  return jax.lax.dot_general(a, w_t, (((a.ndim - 1,), (1,)), ((), ())))


# ----------------------------------------------------------------------------- LSTM


def _lstm_scan(w_i, w_h, b_i, b_h, xs, h0, c0, valid, keep, *, reverse, unroll, save):
  def step(carry, inputs):
    h, c = carry
    x, v, k = inputs
    hp, cp = _keep(k, h), _keep(k, c)
    gates, c1, h1 = gates_lib.lstm_gates(
        cell_lib.affine(x, w_i, b_i) + cell_lib.affine(hp, w_h, b_h), cp)
    y = h1 if v is None else jnp.where(v, h1, jnp.zeros_like(h1))
    new = (_select(v, h1, h), _select(v, c1, c))
    if not save:
      return new, (y, ())
    # As few stacked residuals as possible: each is one more write per step.
    gates = jnp.concatenate(gates, axis=-1)
    return new, (y, (gates, c1) + (new if v is not None else ()))

  (h, c), (ys, res) = jax.lax.scan(step, (h0, c0), (xs, valid, keep), reverse=reverse,
                                   unroll=unroll)
  if not save:
    return (ys, (h, c)), ()
  gates, c1s = res[:2]
  hs, cs = res[2:] if valid is not None else (ys, c1s)  # The carries after each step.
  hp, cp = _keep(keep, _previous(hs, h0, reverse)), _keep(keep, _previous(cs, c0, reverse))
  return (ys, (h, c)), (gates, c1s, hp, cp)


def _previous(after: jax.Array, first: jax.Array, reverse: bool) -> jax.Array:
  """The carry before each step, from the carries after each step `[T, ...]`."""
  if reverse:
    return jnp.concatenate([after[1:], first[None]])
  return jnp.concatenate([first[None], after[:-1]])


def _lstm_jvp(reverse, unroll, primals, tangents):
  w_i, w_h, b_i, b_h, xs, h0, c0, valid, keep = primals
  dw_i, dw_h, db_i, db_h, dxs, dh0, dc0 = tangents[:7]
  out, (gates, c1s, hp, cp) = _lstm_scan(w_i, w_h, b_i, b_h, xs, h0, c0, valid, keep,
                                         reverse=reverse, unroll=unroll, save=True)
  # Every tangent term that does not depend on the recurrent state, as big matmuls.
  dpre = None
  if not _zero(dxs):
    dpre = _add(dpre, _matmul_rows(dxs, w_i))
  if not _zero(dw_i):
    dpre = _add(dpre, _matmul_rows(xs, dw_i))
  if not _zero(dw_h):
    dpre = _add(dpre, _matmul_rows(hp, dw_h))
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
    dz = _matmul_t(dhp, w_h_t)
    if dp is not None:
      dz = dz + dp
    dc1, dh1 = gates_lib.lstm_gates_jvp(tuple(jnp.split(gates_, 4, axis=-1)), c1_, cp_, dz, dcp)
    dy = dh1 if v is None else jnp.where(v, dh1, jnp.zeros_like(dh1))
    return (_select(v, dh1, dh), _select(v, dc1, dc)), dy

  (dh, dc), dys = jax.lax.scan(step, (dh0, dc0), (dpre, gates, c1s, cp, valid, keep),
                               reverse=reverse, unroll=unroll)
  return out, (dys, (dh, dc))


_lstm_core = jax.custom_jvp(
    lambda w_i, w_h, b_i, b_h, xs, h0, c0, valid, keep, reverse, unroll: _lstm_scan(
        w_i, w_h, b_i, b_h, xs, h0, c0, valid, keep, reverse=reverse, unroll=unroll,
        save=False)[0],
    nondiff_argnums=(9, 10))
_lstm_core.defjvp(lambda reverse, unroll, primals, tangents: _lstm_jvp(
    reverse, unroll, primals, tangents), symbolic_zeros=True)


# ----------------------------------------------------------------------------- GRU


def _gru_scan(w_i, w_h, b_i, b_h, xs, h0, valid, keep, *, reset_after, reverse, unroll, save):
  def step(h, inputs):
    x, v, k = inputs
    hp = _keep(k, h)
    gates, h1, aux = gates_lib.gru_gates(cell_lib.affine(x, w_i, b_i), hp, w_h, b_h,
                                         reset_after=reset_after)
    y = h1 if v is None else jnp.where(v, h1, jnp.zeros_like(h1))
    new = _select(v, h1, h)
    if not save:
      return new, (y, ())
    gates = jnp.concatenate(gates, axis=-1)
    return new, (y, (gates,) + ((aux,) if reset_after else ()) + ((new,) if v is not None else ()))

  h, (ys, res) = jax.lax.scan(step, h0, (xs, valid, keep), reverse=reverse, unroll=unroll)
  if not save:
    return (ys, h), ()
  gates, res = res[0], res[1:]
  hh_n = None
  if reset_after:
    hh_n, res = res[0], res[1:]
  hp = _keep(keep, _previous(res[0] if valid is not None else ys, h0, reverse))
  return (ys, h), (gates, hh_n, hp)


def _gru_jvp(reset_after, reverse, unroll, primals, tangents):
  w_i, w_h, b_i, b_h, xs, h0, valid, keep = primals
  dw_i, dw_h, db_i, db_h, dxs, dh0 = tangents[:6]
  size = w_h.shape[0]
  out, (gates, hh_n, hp) = _gru_scan(w_i, w_h, b_i, b_h, xs, h0, valid, keep,
                                     reset_after=reset_after, reverse=reverse,
                                     unroll=unroll, save=True)
  rows = gates.shape[:-1]
  da = None  # The input-side tangent, [T, B, 3H].
  if not _zero(dxs):
    da = _add(da, _matmul_rows(dxs, w_i))
  if not _zero(dw_i):
    da = _add(da, _matmul_rows(xs, dw_i))
  if not _zero(db_i):
    da = _add(da, jnp.broadcast_to(db_i, rows + db_i.shape))
  dhh = None  # The recurrent side's weight tangent, [T, B, 3H].
  if not _zero(dw_h):
    if reset_after:
      dhh = _add(dhh, _matmul_rows(hp, dw_h))
    else:
      rh = gates[..., :size] * hp
      dhh = _add(dhh, jnp.concatenate([_matmul_rows(hp, dw_h[:, :2 * size]),
                                       _matmul_rows(rh, dw_h[:, 2 * size:])], -1))
  if not _zero(db_h):
    dhh = _add(dhh, jnp.broadcast_to(db_h, rows + db_h.shape))
  dh0 = jnp.zeros_like(h0) if _zero(dh0) else dh0
  w_h_t = _transposed(w_h[:, :2 * size] if not reset_after else w_h)
  w_hn_t = None if reset_after else _transposed(w_h[:, 2 * size:])

  # Checkpointed, as the LSTM's: reverse mode saves only the gates (and `hh_n`).
  @jax.checkpoint
  def step(dh, inputs):
    da_, dhh_, gates_, hh_n_, hp_, v, k = inputs
    r_, z_, n_ = jnp.split(gates_, 3, axis=-1)
    dhp = _keep(k, dh)
    dg = _matmul_t(dhp, w_h_t)
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
      dn_pre = _matmul_t(dr * hp_ + r_ * dhp, w_hn_t)
      if dhh_n is not None:
        dn_pre = dn_pre + dhh_n
    if da_ is not None:
      dn_pre = dn_pre + da_n
    dh1 = (1.0 - z_) * (dn_pre * (1 - n_ * n_)) + dz * (hp_ - n_) + z_ * dhp
    dy = dh1 if v is None else jnp.where(v, dh1, jnp.zeros_like(dh1))
    return _select(v, dh1, dh), dy

  dh, dys = jax.lax.scan(step, dh0, (da, dhh, gates, hh_n, hp, valid, keep), reverse=reverse,
                         unroll=unroll)
  return out, (dys, dh)


_gru_core = jax.custom_jvp(
    lambda w_i, w_h, b_i, b_h, xs, h0, valid, keep, reset_after, reverse, unroll: _gru_scan(
        w_i, w_h, b_i, b_h, xs, h0, valid, keep, reset_after=reset_after, reverse=reverse,
        unroll=unroll, save=False)[0],
    nondiff_argnums=(8, 9, 10))
_gru_core.defjvp(lambda reset_after, reverse, unroll, primals, tangents: _gru_jvp(
    reset_after, reverse, unroll, primals, tangents), symbolic_zeros=True)


# ----------------------------------------------------------------------------- kernels


def _masks(valid, keep, num_steps, rows):
  """`[T, *batch]` bool masks to `[T, rows, 1]`, so they broadcast over features."""
  shape = (num_steps, rows, 1)
  return (None if valid is None else valid.reshape(shape),
          None if keep is None else keep.reshape(shape))


def lstm_kernel(params: Any, xs: jax.Array, carry: Any, *, valid: jax.Array | None,
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
      params.w_i, params.w_h, params.b_i, params.b_h, xs, carry.h, carry.c):
    return None
  num_steps, *batch, size = xs.shape
  rows = math.prod(batch)
  x = xs.reshape(num_steps, rows, size)
  h0 = jnp.broadcast_to(carry.h, (*batch, carry.h.shape[-1])).reshape(rows, -1)
  c0 = jnp.broadcast_to(carry.c, (*batch, carry.c.shape[-1])).reshape(rows, -1)
  v, k = _masks(valid, keep, num_steps, rows)
  ys, (h, c) = _lstm_core(params.w_i, params.w_h, params.b_i, params.b_h, x, h0, c0, v, k,
                          reverse, unroll)
  return ys.reshape(num_steps, *batch, -1), type(carry)(h=h.reshape(*batch, -1),
                                                         c=c.reshape(*batch, -1))


def gru_kernel(reset_after: bool) -> Callable:
  def kernel(params: Any, xs: jax.Array, carry: Any, *, valid: jax.Array | None,
             keep: jax.Array | None, reverse: bool, unroll: int | bool, key: Any = None):
    """`unroll` of the built-in GRU; None where it does not apply."""
    if not supported_dtype(params.w_i, params.w_h, params.b_i, params.b_h, xs, carry.h):
      return None
    num_steps, *batch, size = xs.shape
    rows = math.prod(batch)
    x = xs.reshape(num_steps, rows, size)
    h0 = jnp.broadcast_to(carry.h, (*batch, carry.h.shape[-1])).reshape(rows, -1)
    v, k = _masks(valid, keep, num_steps, rows)
    ys, h = _gru_core(params.w_i, params.w_h, params.b_i, params.b_h, x, h0, v, k,
                      reset_after, reverse, unroll)
    return ys.reshape(num_steps, *batch, -1), type(carry)(h=h.reshape(*batch, -1))
  return kernel
