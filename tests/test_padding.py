"""Padded steps never reach a cell's arithmetic, on any engine (issue 12, defect 2).

Data pipelines pad with NaN, inf or huge numbers. Whatever the padding (the steps
at or past `lengths`) holds must leave the outputs, the final carries and the
gradients (params, initial carry, `xs` at valid steps) exactly as they are with
zeros in the padding, and the gradient for the padded inputs must be exactly 0.
The reference is the same compiled program with zeros in the padding. Every
engine and fast path is covered: the generic `lax.scan`, the fused LSTM/GRU
kernels and a fused stack, remat, reverse (the gather by each sequence's valid
prefix), resets (also at padded steps), the parallel and chunked scans of the
linear cells (log space too), `truncated_unroll` and `bidirectional`.

Each configuration compiles one program of fixed shape `(T, B, I) = (6, 3, 4)`;
hypothesis varies only values: the padding, the lengths and the resets.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnjax

T, B, I, H = 6, 3, 4, 5
JUNK = (np.nan, np.inf, -np.inf, 1e30, -1e30)


class Config(NamedTuple):
  make: Callable[[], Any]  # () -> a Cell or a Layer
  run: Callable[..., tuple[Any, Any]]  # (module, params, xs, carry, lengths, resets) -> (ys, carry)
  positive_carry: bool = False  # log-space cells scan a carry h >= 0


def _unroll(**opts):
  return lambda m, p, x, c, lengths, resets: rnnjax.unroll(
      m, p, x, c, lengths=lengths, resets=resets, **opts)


def _parallel(engine, **opts):
  return lambda m, p, x, c, lengths, resets: rnnjax.parallel_unroll(
      m, p, x, c, lengths=lengths, resets=resets, engine=engine, chunk=4, **opts)


def _truncated(m, p, x, c, lengths, resets):
  return rnnjax.truncated_unroll(m, p, x, c, chunk=4, lengths=lengths, resets=resets)


def _layer(m, p, x, c, lengths, resets):
  return m.apply(p, x, c, lengths=lengths, resets=resets)


# Each configuration is one compiled program, so options are combined: each fused stack
# layer is a fused kernel of its own, and `parallel_unroll` runs a stack layer by layer.
CONFIGS = {
    "generic_lstm": Config(lambda: rnnjax.lstm(H), _unroll(fused=False)),
    "remat_gru_reverse": Config(lambda: rnnjax.gru(H), _unroll(remat=4, reverse=True)),
    "fused_stack_lstm_gru_gru_v1": Config(
        lambda: rnnjax.stack([rnnjax.lstm(H), rnnjax.gru(H), rnnjax.gru(H, reset_after=False)]),
        _unroll()),
    "parallel_mingru_log_lru_reverse": Config(
        lambda: rnnjax.stack([rnnjax.mingru(H, log_space=True),
                              rnnjax.lru(H, r_min=0.5, r_max=0.99)]),
        _parallel("parallel", reverse=True), True),
    "chunked_mingru_rglru": Config(lambda: rnnjax.stack([rnnjax.mingru(H), rnnjax.rglru(H)]),
                                   _parallel("chunked")),
    "truncated_gru": Config(lambda: rnnjax.gru(H), _truncated),
    # The backward direction is the fused LSTM in reverse (the gather by valid prefix).
    "bidirectional_gru_lstm": Config(
        lambda: rnnjax.bidirectional(rnnjax.gru(H, reset_after=False), rnnjax.lstm(H)), _layer),
}
NAMES = sorted(CONFIGS)


def _random_like(key, tree, positive):
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  out = []
  for leaf, k in zip(leaves, jax.random.split(key, len(leaves)), strict=True):
    real = jnp.real(leaf).dtype
    v = jax.random.normal(k, leaf.shape, real)
    v = jnp.abs(v) if positive else v
    out.append(v.astype(leaf.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def _real_sum(tree) -> jax.Array:
  return sum(jnp.sum(jnp.real(leaf) * 0.7 + jnp.imag(leaf) * 0.3 if jnp.iscomplexobj(leaf)
                     else jnp.sin(leaf)) for leaf in jax.tree_util.tree_leaves(tree))


@functools.cache
def _setup(name):
  """`(program, params, xs, carry, weights)` of a configuration; one compiled program each.

  `program(params, xs, carry, lengths, resets, weights) -> (ys, final_carry, grads)`, with
  `grads` for `(params, xs, carry)` of `sum(ys * weights) + sum(sin(final_carry))`.
  """
  config = CONFIGS[name]
  module = config.make()
  k = jax.random.split(jax.random.key(0), 4)
  params = module.init(k[0], I)
  xs = jax.random.normal(k[1], (T, B, I))
  carry = _random_like(k[2], module.initial_carry(params, (B,)), config.positive_carry)

  def loss(params, xs, carry, lengths, resets, weights):
    ys, final = config.run(module, params, xs, carry, lengths, resets)
    return jnp.sum(ys * weights) + _real_sum(final), (ys, final)

  @jax.jit
  def program(params, xs, carry, lengths, resets, weights):
    grads, (ys, final) = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(
        params, xs, carry, lengths, resets, weights)
    return ys, final, grads

  ys_shape = jax.eval_shape(
      lambda p, x, c: config.run(module, p, x, c, jnp.full((B,), T), jnp.zeros((T, B), bool)),
      params, xs, carry)[0].shape
  weights = jax.random.normal(k[3], ys_shape)
  return program, params, np.asarray(xs), carry, weights


def _assert_padding_is_never_read(name, junk, lengths, resets):
  program, params, xs, carry, weights = _setup(name)
  lengths = np.asarray(lengths, np.int32)
  pad = np.arange(T)[:, None] >= lengths[None, :]  # [T, B]
  clean = np.where(pad[..., None], np.float32(0), xs)
  dirty = np.where(pad[..., None], np.asarray(junk, np.float32), xs)
  resets = jnp.asarray(resets)
  ref_ys, ref_final, (ref_gp, ref_gx, ref_gc) = program(params, clean, carry, lengths, resets,
                                                        weights)
  ys, final, (gp, gx, gc) = program(params, dirty, carry, lengths, resets, weights)
  for what, ref, got in (("ys", ref_ys, ys), ("final carry", ref_final, final),
                         ("d params", ref_gp, gp), ("d carry", ref_gc, gc)):
    for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got), strict=True):
      assert np.all(np.isfinite(np.asarray(b))), f"{name}: {what} is not finite"
      np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=f"{name}: {what}")
  gx, ref_gx = np.asarray(gx), np.asarray(ref_gx)
  assert np.all(np.isfinite(gx)), f"{name}: d xs is not finite"
  np.testing.assert_array_equal(gx[~pad], ref_gx[~pad], err_msg=f"{name}: d xs at valid steps")
  assert np.all(gx[pad] == 0), f"{name}: d xs at padded steps must be exactly 0"


@pytest.mark.parametrize("name", NAMES)
def test_nan_and_inf_padding_change_nothing(name):
  """NaN, ±inf and ±1e30 in the padding; a full, a partial and an empty sequence; resets
  at valid and at padded steps."""
  junk = np.resize(np.asarray(JUNK, np.float32), T * B * I).reshape(T, B, I)
  resets = np.zeros((T, B), bool)
  resets[2, 0] = resets[1, 1] = resets[4, 1] = resets[0, 2] = resets[3, 2] = True
  _assert_padding_is_never_read(name, junk, [T, 3, 0], resets)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=10)
@given(junk=hnp.arrays(np.float32, (T, B, I), elements=st.one_of(
           st.sampled_from(JUNK), st.floats(-1e3, 1e3, width=32))),
       lengths=hnp.arrays(np.int32, (B,), elements=st.integers(0, T)),
       resets=hnp.arrays(np.bool_, (T, B)))
def test_any_padding_changes_nothing(name, junk, lengths, resets):
  _assert_padding_is_never_read(name, junk, lengths, resets)
