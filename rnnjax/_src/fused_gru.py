"""The GRU's fast path: a custom JVP around four whole-sequence loops, as the LSTM's.

One step (`cells/gates.py`, `gru_gates`), with `a = x @ w_i + b_i`::

  r = σ(a_r + h @ w_hr + b_hr) ;  z = σ(a_z + h @ w_hz + b_hz)
  n = tanh(a_n + r (h @ w_hn + b_hn))     # reset_after (PyTorch, cuDNN)
  n = tanh(a_n + (r h) @ w_hn + b_hn)     # reset_after=False (Keras's v1 form)
  h' = (1 - z) n + z h

The tangent's state-independent terms are hoisted: `da` (the input side:
`dx @ w_i + x @ dw_i + db_i`) and `dhh` (the recurrent side's weight and bias terms:
`h @ dw_h + db_h`, or `(r h) @ dw_hn + db_hn` for the n-part without `reset_after`),
each `[T, B, 3H]`. The loops are `forward`, `forward_save` (the activated gates, with
`reset_after` also `hn = h @ w_hn + b_hn`, and with a `valid` mask the carries),
`tangent` (`da, dhh, dh0 -> dys, dh_T`) and its hand-written transpose `adjoint`.
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
  """The static settings of one set of GRU loops."""
  accum: str
  reverse: bool
  unroll: int | bool
  valid: bool
  keep: bool
  reset_after: bool


def _forward(config: Config, save: bool, w_i, w_h, b_i, b_h, xs, h0, *ms):
  """`(ys, h_T)` and, with `save`, `gates`, (`reset_after`) `hn` and (`valid`) `hs`."""
  accum = jnp.dtype(config.accum)
  valid, keep = ops.unpack_masks(config, ms)
  affine = functools.partial(ops.affine, accum=accum)
  exact = h0.dtype == accum

  def step(h, inputs):
    x, v, k = inputs
    hp = ops.keep(k, h)
    gates, h1, aux = gates_lib.gru_gates(affine(x, w_i, b_i), hp.astype(accum), w_h, b_h,
                                         reset_after=config.reset_after, affine=affine)
    y = h1 if v is None else jnp.where(v, h1, jnp.zeros_like(h1))
    new = ops.select(v, h1.astype(h.dtype), h)
    if not save:
      return new, y
    hn = (aux,) if config.reset_after else ()
    hs = () if v is None else (new if exact else ops.select(v, h1, h.astype(accum)),)
    return new, (y, jnp.concatenate(gates, axis=-1), *hn, *hs)

  h, out = jax.lax.scan(step, h0, (xs, valid, keep), reverse=config.reverse,
                        unroll=config.unroll)
  return (out, h) if not save else (out[0], h, *out[1:])


def _split_residuals(config: Config, args):
  """`(gates, hn or None, hseq, h0, rest)` from a tangent/adjoint loop's arguments."""
  gates, *args = args
  hn = args.pop(0) if config.reset_after else None
  hseq, h0, *rest = args
  return gates, hn, hseq, h0, rest


def _tangent(config: Config, w_h, *args):
  """Forward mode: `(da, dhh, dh0) -> (dys, dh_T)`, linear."""
  accum, size = jnp.dtype(config.accum), w_h.shape[0]
  gates, hn, hseq, h0, (*ms, da, dhh, dh0) = _split_residuals(config, args)
  valid, keep = ops.unpack_masks(config, ms)
  hb = ops.carries_before(config, hseq, h0)
  w_rz, w_n = w_h[:, :2 * size], w_h[:, 2 * size:]

  def step(dh, inputs):
    da_, dhh_, g, hn_, hb_, v, k = inputs
    r, z, n = jnp.split(g, 3, axis=-1)
    dhp, hp = ops.keep(k, dh).astype(accum), ops.keep(k, hb_)
    if config.reset_after:
      dg = ops.affine(dhp, w_h, None, accum) + dhh_
      dr, dzg, dhn = jnp.split(dg, 3, axis=-1)
    else:
      dr, dzg = jnp.split(ops.affine(dhp, w_rz, None, accum) + dhh_[..., :2 * size], 2, axis=-1)
    a_r, a_z, a_n = jnp.split(da_, 3, axis=-1)
    dr = (dr + a_r) * r * (1 - r)
    dzg = (dzg + a_z) * z * (1 - z)
    if config.reset_after:
      dnp = a_n + dr * hn_ + r * dhn
    else:
      dnp = a_n + ops.affine(dr * hp + r * dhp, w_n, None, accum) + dhh_[..., 2 * size:]
    dh1 = (1.0 - z) * (dnp * (1 - n * n)) + dzg * (hp - n) + z * dhp
    dy = dh1 if v is None else jnp.where(v, dh1, jnp.zeros_like(dh1))
    return ops.select(v, dh1.astype(dh.dtype), dh), dy

  hn = gates[..., :size] if hn is None else hn  # Unused without `reset_after`.
  dh, dys = jax.lax.scan(step, dh0, (da, dhh, gates, hn, hb, valid, keep),
                         reverse=config.reverse, unroll=config.unroll)
  return dys, dh


def _adjoint(config: Config, w_h, *args):
  """Reverse mode, the transpose of `_tangent`: `(dys, dh_T) -> (da, dhh, dh0)`."""
  accum, size = jnp.dtype(config.accum), w_h.shape[0]
  gates, hn, hseq, h0, (*ms, dys, dh_last) = _split_residuals(config, args)
  valid, keep = ops.unpack_masks(config, ms)
  hb = ops.carries_before(config, hseq, h0)
  if config.reset_after:
    w_t = ops.transposed(w_h)
  else:
    w_t, w_n_t = ops.transposed(w_h[:, :2 * size]), ops.transposed(w_h[:, 2 * size:])

  def step(dh, inputs):
    dy, g, hn_, hb_, v, k = inputs
    if v is not None:  # Padded steps saved whatever they computed (NaN, for NaN padding).
      g, hn_ = jnp.where(v, g, jnp.zeros_like(g)), jnp.where(v, hn_, jnp.zeros_like(hn_))
    dh1 = ops.select(v, dh.astype(accum) + dy, jnp.zeros_like(dy))
    r, z, n = jnp.split(g, 3, axis=-1)
    hp = ops.keep(k, hb_)
    dnp = dh1 * (1 - z) * (1 - n * n)
    dhp = dh1 * z
    if config.reset_after:
      dr, dhn = dnp * hn_, dnp * r
    else:
      drh = ops.affine(dnp, w_n_t, None, accum)
      dr, dhn = drh * hp, dnp
      dhp = dhp + drh * r
    dpr, dpz = dr * r * (1 - r), dh1 * (hp - n) * z * (1 - z)
    dhh = jnp.concatenate([dpr, dpz, dhn], axis=-1)
    dhp = dhp + ops.affine(dhh if config.reset_after else dhh[..., :2 * size], w_t, None, accum)
    dh = ops.pass_through(v, dh) + ops.keep(k, dhp).astype(dh.dtype)
    return dh, (jnp.concatenate([dpr, dpz, dnp], axis=-1), dhh)

  hn = gates[..., :size] if hn is None else hn
  dh, (da, dhh) = jax.lax.scan(step, dh_last, (dys, gates, hn, hb, valid, keep),
                               reverse=not config.reverse, unroll=config.unroll)
  return da, dhh, dh


@functools.cache
def loops(config: Config) -> ops.Loops:
  """The four loops of `config` (cached)."""
  return ops.register_loops("gru", config, _forward, _tangent, _adjoint, tangent_linear=3,
                            adjoint_linear=2)


def _input_tangents(xs, w_i, w_h, gates, hp, tangents, *, reset_after, accum):
  """The tangent's terms that do not depend on the recurrent state: `da`, `dhh`."""
  dw_i, dw_h, db_i, db_h, dxs = tangents
  size, rows = w_h.shape[0], gates.shape[:-1]
  da = None
  if not ops.zero(dxs):
    da = ops.add(da, ops.matmul_rows(dxs, w_i, accum))
  if not ops.zero(dw_i):
    da = ops.add(da, ops.matmul_rows(xs, dw_i, accum))
  if not ops.zero(db_i):
    da = ops.add(da, jnp.broadcast_to(db_i, rows + db_i.shape))
  dhh = None
  if not ops.zero(dw_h):
    if reset_after:
      dhh = ops.add(dhh, ops.matmul_rows(hp, dw_h, accum))
    else:
      rh = gates[..., :size] * hp.astype(accum)
      dhh = ops.add(dhh, jnp.concatenate([ops.matmul_rows(hp, dw_h[:, :2 * size], accum),
                                          ops.matmul_rows(rh, dw_h[:, 2 * size:], accum)], -1))
  if not ops.zero(db_h):
    dhh = ops.add(dhh, jnp.broadcast_to(db_h, rows + db_h.shape))
  zeros = functools.partial(jnp.zeros, gates.shape, accum)
  return (zeros() if da is None else da), (zeros() if dhh is None else dhh)


def _config(valid, keep, reset_after, accum, reverse, unroll) -> Config:
  return Config(jnp.dtype(accum).name, reverse, unroll, valid is not None, keep is not None,
                reset_after)


def _jvp(reset_after, accum, reverse, unroll, primals, tangents):
  w_i, w_h, b_i, b_h, xs, h0, valid, keep = primals
  config = _config(valid, keep, reset_after, accum, reverse, unroll)
  lp, ms = loops(config), ops.masks(valid, keep)
  ys, h, gates, *rest = loop_call.call(lp.forward_save, w_i, w_h, b_i, b_h, xs, h0, *ms)
  hn = (rest.pop(0),) if reset_after else ()
  hseq = rest[0] if rest else ys
  hp = ops.keep(keep, ops.previous(hseq.astype(h0.dtype), h0, reverse))
  da, dhh = _input_tangents(xs, w_i, w_h, gates, hp, tangents[:5], reset_after=reset_after,
                            accum=accum)
  dh0 = jnp.zeros_like(h0) if ops.zero(tangents[5]) else tangents[5]
  dys, dh = loop_call.call(lp.tangent, w_h, gates, *hn, hseq, h0, *ms, da, dhh, dh0)
  return (ys.astype(xs.dtype), h), (dys.astype(xs.dtype), dh)


def _primal(w_i, w_h, b_i, b_h, xs, h0, valid, keep, reset_after, accum, reverse, unroll):
  config = _config(valid, keep, reset_after, accum, reverse, unroll)
  ys, h = loop_call.call(loops(config).forward, w_i, w_h, b_i, b_h, xs, h0,
                         *ops.masks(valid, keep))
  return ys.astype(xs.dtype), h


core = jax.custom_jvp(_primal, nondiff_argnums=(8, 9, 10, 11))
core.defjvp(_jvp, symbolic_zeros=True)
core.__doc__ = """`(ys, h_T)` of the GRU over `xs: [T, rows, I]`, differentiable.

Args: `w_i, w_h` (compute dtype), `b_i, b_h` (in `accum`, zeros where the cell has
none), `xs`, `h0: [rows, H]`, the masks `valid, keep: [T, rows, 1]` or None, then
`reset_after`, `accum`, `reverse` and `unroll` (static).
"""
