"""The LSTM's fast path: a custom JVP around four whole-sequence loops (`loop_call.Loop`).

With `b` the sum of the biases, the forward loop computes, per step::

  z = x_t @ w_i + b + h @ w_h ;  (i, f, g, o) = (σ, σ, tanh, σ)(z)
  c' = f c + i g ;  h' = o tanh(c')

and saves the activated gates and the cells. The tangent moves every weight term out
of the loop::

  dz_t = (dx_t @ w_i + x_t @ dw_i + h_{t-1} @ dw_h + db)    # hoisted: [T*B, ...] products
         + dh_{t-1} @ w_h                                    # the only product in the loop

so the loops are: `forward` (outputs), `forward_save` (outputs and residuals), `tangent`
(forward mode: `dz`, `dh0`, `dc0` to `dys`, `dh_T`, `dc_T`, linear) and `adjoint`, its
transpose, written by hand: reverse mode runs it, carrying only `dh, dc`, and the weight
gradients are each one product over all `T*B` rows. Each loop has a pure-JAX reference
(`lax.scan`) and, on GPU, a Pallas kernel (`pallas_rnn.py`) where the weights fit.

Dtypes: `w_i`, `w_h`, `xs` in the compute dtype, `b` and every saved value in `accum`
(the compute dtype, at least float32), the carries in their own dtype. A saved cell
`cs_t` is the cell after step `t` in `accum` (so that `cs_t` cast to the carry's dtype
is the carry); the outputs are stacked in `accum` and cast once, after the loop.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnjax._src import fused_ops as ops
from rnnjax._src import loop_call
from rnnjax._src.cells import gates as gates_lib


class Config(NamedTuple):
  """The static settings of one set of loops (hashable: part of the primitive's params)."""
  accum: str           # dtype name
  reverse: bool
  unroll: int | bool
  valid: bool          # whether a `valid` mask is among the arguments
  keep: bool           # whether a `keep` (reset) mask is among the arguments


def _forward(config: Config, save: bool, w_i, w_h, b, xs, h0, c0, *ms):
  """`(ys, h_T, c_T)` and, with `save`, `(gates, cs)` and (with a `valid` mask) `hs`."""
  accum = jnp.dtype(config.accum)
  valid, keep = ops.unpack_masks(config, ms)
  exact = h0.dtype == c0.dtype == accum  # the carry needs no cast to be saved

  def step(carry, inputs):
    h, c = carry
    x, v, k = inputs
    hp, cp = ops.keep(k, h), ops.keep(k, c)
    gates, c1, h1 = gates_lib.lstm_gates(
        ops.affine(x, w_i, b, accum) + ops.affine(hp, w_h, None, accum), cp.astype(accum))
    y = h1 if v is None else jnp.where(v, h1, jnp.zeros_like(h1))
    new = (ops.select(v, h1.astype(h.dtype), h), ops.select(v, c1.astype(c.dtype), c))
    if not save:
      return new, y
    cs = new[1] if exact else ops.select(v, c1, c.astype(accum))
    hs = () if v is None else (new[0] if exact else ops.select(v, h1, h.astype(accum)),)
    return new, (y, jnp.concatenate(gates, axis=-1), cs, *hs)

  (h, c), out = jax.lax.scan(step, (h0, c0), (xs, valid, keep), reverse=config.reverse,
                             unroll=config.unroll)
  return ((out, h, c) if not save else (out[0], h, c, *out[1:]))


def _tangent(config: Config, w_h, gates, cs, c0, *args):
  """Forward mode: `(dz, dh0, dc0) -> (dys, dh_T, dc_T)`, linear."""
  accum = jnp.dtype(config.accum)
  *ms, dz_in, dh0, dc0 = args
  valid, keep = ops.unpack_masks(config, ms)
  before = ops.carries_before(config, cs, c0)

  def step(carry, inputs):
    dh, dc = carry
    dz, g, c1, cb, v, k = inputs
    dhp, dcp = ops.keep(k, dh), ops.keep(k, dc)
    dz = dz + ops.affine(dhp, w_h, None, accum)
    dc1, dh1 = gates_lib.lstm_gates_jvp(tuple(jnp.split(g, 4, axis=-1)), c1,
                                        ops.keep(k, cb), dz, dcp.astype(accum))
    dy = dh1 if v is None else jnp.where(v, dh1, jnp.zeros_like(dh1))
    return (ops.select(v, dh1.astype(dh.dtype), dh), ops.select(v, dc1.astype(dc.dtype), dc)), dy

  (dh, dc), dys = jax.lax.scan(step, (dh0, dc0), (dz_in, gates, cs, before, valid, keep),
                               reverse=config.reverse, unroll=config.unroll)
  return dys, dh, dc


def _adjoint(config: Config, w_h, gates, cs, c0, *args):
  """Reverse mode, the transpose of `_tangent`: `(dys, dh_T, dc_T) -> (dz, dh0, dc0)`."""
  accum = jnp.dtype(config.accum)
  *ms, dys, dh_last, dc_last = args
  valid, keep = ops.unpack_masks(config, ms)
  before = ops.carries_before(config, cs, c0)
  w_t = ops.transposed(w_h)
  size = w_h.shape[0]
  is_g = (jnp.arange(4 * size) >= 2 * size) & (jnp.arange(4 * size) < 3 * size)

  def step(carry, inputs):
    dh, dc = carry
    dy, g, c1, cb, v, k = inputs
    dh1 = ops.select(v, dh.astype(accum) + dy, jnp.zeros_like(dy))
    dc1 = ops.select(v, dc.astype(accum), jnp.zeros_like(dy))
    i, f, gg, o = jnp.split(g, 4, axis=-1)
    tc = jnp.tanh(c1)
    dc1 = dc1 + dh1 * o * (1 - tc * tc)
    # The gates' cotangents, then each gate's derivative from its saved value, in one
    # pass over [B, 4H] (`is_g`: the tanh block), not four products and a concatenate.
    dgates = jnp.concatenate([dc1 * gg, dc1 * ops.keep(k, cb), dc1 * i, dh1 * tc], axis=-1)
    dz = dgates * jnp.where(is_g, 1 - g * g, g * (1 - g))
    dcp = dc1 * f
    if v is not None:  # Padded steps saved whatever they computed (NaN, for NaN padding).
      dz, dcp = jnp.where(v, dz, jnp.zeros_like(dz)), jnp.where(v, dcp, jnp.zeros_like(dcp))
    dhp = ops.affine(dz, w_t, None, accum)
    dh = ops.pass_through(v, dh) + ops.keep(k, dhp).astype(dh.dtype)
    dc = ops.pass_through(v, dc) + ops.keep(k, dcp).astype(dc.dtype)
    return (dh, dc), dz

  (dh, dc), dz = jax.lax.scan(step, (dh_last, dc_last), (dys, gates, cs, before, valid, keep),
                              reverse=not config.reverse, unroll=config.unroll)
  return dz, dh, dc


@functools.cache
def loops(config: Config) -> ops.Loops:
  """The four loops of `config` (cached: equal settings share loops, and compiled code)."""
  return ops.register_loops("lstm", config, _forward, _tangent, _adjoint, tangent_linear=3,
                            adjoint_linear=3)


def _jvp(accum, reverse, unroll, primals, tangents):
  w_i, w_h, b, xs, h0, c0, valid, keep = primals
  dw_i, dw_h, db, dxs, dh0, dc0 = tangents[:6]
  config = Config(jnp.dtype(accum).name, reverse, unroll, valid is not None, keep is not None)
  lp, ms = loops(config), ops.masks(valid, keep)
  ys, h, c, gates, cs, *hs = loop_call.call(lp.forward_save, w_i, w_h, b, xs, h0, c0, *ms)
  # Every tangent term that does not depend on the recurrent state, as big matmuls.
  dz = None
  if not ops.zero(dxs):
    dz = ops.add(dz, ops.matmul_rows(dxs, w_i, accum))
  if not ops.zero(dw_i):
    dz = ops.add(dz, ops.matmul_rows(xs, dw_i, accum))
  if not ops.zero(dw_h):
    hp = ops.keep(keep, ops.previous((hs[0] if hs else ys).astype(h0.dtype), h0, reverse))
    dz = ops.add(dz, ops.matmul_rows(hp, dw_h, accum))
  if not ops.zero(db):
    dz = ops.add(dz, jnp.broadcast_to(db, gates.shape))
  dz = jnp.zeros(gates.shape, accum) if dz is None else dz
  dh0 = jnp.zeros_like(h0) if ops.zero(dh0) else dh0
  dc0 = jnp.zeros_like(c0) if ops.zero(dc0) else dc0
  dys, dh, dc = loop_call.call(lp.tangent, w_h, gates, cs, c0, *ms, dz, dh0, dc0)
  return (ys.astype(xs.dtype), (h, c)), (dys.astype(xs.dtype), (dh, dc))


def _primal(w_i, w_h, b, xs, h0, c0, valid, keep, accum, reverse, unroll):
  config = Config(jnp.dtype(accum).name, reverse, unroll, valid is not None, keep is not None)
  ys, h, c = loop_call.call(loops(config).forward, w_i, w_h, b, xs, h0, c0,
                            *ops.masks(valid, keep))
  return ys.astype(xs.dtype), (h, c)


core = jax.custom_jvp(_primal, nondiff_argnums=(8, 9, 10))
core.defjvp(_jvp, symbolic_zeros=True)
core.__doc__ = """`(ys, (h_T, c_T))` of the LSTM over `xs: [T, rows, I]`, differentiable.

Args: `w_i, w_h` (compute dtype), `b` (the biases' sum, in `accum`), `xs`, the carry
`h0, c0: [rows, H]`, the masks `valid, keep: [T, rows, 1]` or None, then `accum` (a
dtype), `reverse` and `unroll` (static).
"""
