"""The LSTM/GRU whole-sequence fast paths against plain autodiff through `lax.scan`.

The reference is `unroll(..., fused=False)`: the generic engine, `jax.grad` and
`jax.jvp` straight through `lax.scan` over `cell.apply` (itself checked against
NumPy loops and finite differences in test_cells/test_unroll). The fast path must
give the same outputs, final carries, reverse-mode gradients (params, xs and the
initial carry) and forward-mode tangents, to 1e-5 relative in float32, with lengths,
resets, reverse and a zero or random initial carry, alone and together (`VARIANTS`:
one compiled program per cell holds them all, and hypothesis varies only values).
"""

from __future__ import annotations

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import rnnjax
from tests import helpers
from tests import reference as ref

T, B, I, H = 6, 3, 4, 5
RTOL = 1e-5

CELLS = {
    "lstm": lambda dtype=jnp.float32: rnnjax.lstm(H, dtype=dtype),
    "lstm_no_bias": lambda dtype=jnp.float32: rnnjax.lstm(H, use_bias=False, dtype=dtype),
    "gru": lambda dtype=jnp.float32: rnnjax.gru(H, dtype=dtype),
    "gru_reset_before": lambda dtype=jnp.float32: rnnjax.gru(H, reset_after=False, dtype=dtype),
    "gru_no_bias": lambda dtype=jnp.float32: rnnjax.gru(H, use_bias=False, dtype=dtype),
    "stack": lambda dtype=jnp.float32: rnnjax.stack(
        [rnnjax.lstm(H, dtype=dtype), rnnjax.gru(H, dtype=dtype)], dropout=0.5),
    # Mixed precision: float32 params and carry, bfloat16 products accumulated in float32.
    "lstm_bf16": lambda: rnnjax.lstm(H, dtype=jnp.bfloat16),
    "gru_bf16": lambda: rnnjax.gru(H, dtype=jnp.bfloat16),
    "gru_reset_before_bf16": lambda: rnnjax.gru(H, reset_after=False, dtype=jnp.bfloat16),
    # All bfloat16 (params and carry too); the gates still run in float32.
    "lstm_all_bf16": lambda: rnnjax.lstm(H, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16),
}
# In bfloat16 the outputs and forward-mode tangents agree to 1e-6 or better (measured: the
# same roundings of the same values), but reverse mode sums a weight's gradient as one
# [T*B]-row product rounded once to bfloat16, where the generic path rounds each step's
# product (8 bits of mantissa: 2^-8 = 0.4% a rounding). Measured over 6 seeds and every
# variant: at most 9.4e-3 relative; the bound leaves a factor 2.
BF16_RTOL = 2e-2


def _rtol(name: str) -> float:
  return BF16_RTOL if name.endswith("bf16") else RTOL
_CELL_OBJECTS = {name: make() for name, make in CELLS.items()}




def _perturbed_params(cell, seed: int):
  """Default init plus noise, so biases and every gate are exercised away from zero."""
  params = cell.init(jax.random.key(seed), I)
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [w + 0.3 * jax.random.normal(k, w.shape, w.dtype) for w, k in zip(leaves, keys,
                                                                             strict=True)])


@functools.partial(jax.jit, static_argnums=0)
def _inputs(name, seed, zero_carry):
  """Params, xs, initial carry (zero or random), output weights and tangents of one example."""
  cell = _CELL_OBJECTS[name]
  params = _perturbed_params(cell, seed)
  k = jax.random.split(jax.random.key(seed + 7), 4)
  xs = jax.random.normal(k[0], (T, B, I))
  leaves, tree = jax.tree_util.tree_flatten(cell.initial_carry(params, (B,)))
  carry = jax.tree_util.tree_unflatten(tree, [
      jnp.where(zero_carry, 0.0, jax.random.normal(kk, a.shape)).astype(a.dtype) for a, kk in zip(
          leaves, jax.random.split(k[1], len(leaves)), strict=True)])
  weights = jax.random.normal(k[2], (T, B, H))
  tangents = jax.tree_util.tree_map(
      lambda a: jax.random.normal(k[3], a.shape, a.dtype), (params, xs, carry))
  return params, xs, carry, weights, tangents


# The options one compiled program covers: forwards, lengths alone and resets alone;
# backwards, resets with and without lengths (every pair of options meets). Hypothesis
# varies only values: lengths of T are no padding, resets all False are no reset, a zero
# carry is the cells' default initial carry. A stack passes the options on to each of
# its layers, which run every variant as cells of their own: for the stack, all options
# together in both directions.
VARIANTS = (  # (reverse, lengths, resets)
    (False, True, False), (False, False, True), (True, False, True), (True, True, True))
STACK_VARIANTS = ((False, True, True), (True, True, True))


def _variants(name: str) -> tuple[tuple[bool, bool, bool], ...]:
  return STACK_VARIANTS if name == "stack" else VARIANTS


@functools.partial(jax.jit, static_argnums=0)
def _everything(name, params, xs, carry, lengths, resets, weights, tangents):
  """For every variant, generic and fast path: outputs, final carry, gradients, a JVP.

  One compile per cell; returns `{(reverse, use_lengths, use_resets, fused): (out,
  (d params, d xs, d carry), tangent of out)}`.
  """
  cell = _CELL_OBJECTS[name]
  results = {}
  for reverse, use_lengths, use_resets in _variants(name):
    for fused in (False, True):
      def run(p, x, c, reverse=reverse, use_lengths=use_lengths, use_resets=use_resets,
              fused=fused):
        return rnnjax.unroll(cell, p, x, c, lengths=lengths if use_lengths else None,
                             resets=resets if use_resets else None, reverse=reverse,
                             fused=fused)

      def loss(p, x, c, run=run):
        # Weighted outputs and a nonlinear function of the final carry, so that every
        # output cotangent and both carry cotangents are non-trivial.
        out = run(p, x, c)
        ys, final = out
        value = jnp.sum(ys.astype(jnp.float32) * weights) + sum(
            jnp.sum(jnp.sin(leaf.astype(jnp.float32)))
            for leaf in jax.tree_util.tree_leaves(final))
        return value, out

      grads, out = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, carry)
      # Forward mode: the tangents of the outputs and the final carry, leaf by leaf
      # (a scalar loss's tangent can cancel to near zero and lose its relative scale).
      _, tangent = jax.jvp(run, (params, xs, carry), tangents)
      results[(reverse, use_lengths, use_resets, fused)] = (out, grads, tangent)
  return results


@pytest.mark.parametrize("name", sorted(CELLS))
@given(seed=st.integers(0, 2**16), zero_carry=st.booleans(),
       lengths=hnp.arrays(np.int32, (B,), elements=st.integers(0, T)),
       resets=hnp.arrays(np.bool_, (T, B)))
def test_fast_path_equals_plain_autodiff(name, seed, zero_carry, lengths, resets):
  params, xs, carry, weights, tangents = _inputs(name, seed, zero_carry)
  results = _everything(name, params, xs, carry, jnp.asarray(lengths), jnp.asarray(resets),
                        weights, tangents)
  rtol = _rtol(name)
  for variant in _variants(name):
    want, got = results[(*variant, False)], results[(*variant, True)]
    assert helpers.max_rel(want[0], got[0]) <= rtol, variant  # outputs and final carry
    for want_g, got_g in zip(want[1], got[1], strict=True):  # d params, d xs, d carry
      assert helpers.max_rel(want_g, got_g) <= rtol, variant
    # forward mode: d outputs, d final carry
    assert helpers.max_rel(want[2], got[2]) <= rtol, variant


def _uses_fast_path(cell, params, xs, **kwargs) -> bool:
  jaxpr = str(jax.make_jaxpr(lambda p, x: rnnjax.unroll(cell, p, x, **kwargs))(params, xs))
  return "custom_jvp_call" in jaxpr


@pytest.mark.parametrize("name", sorted(CELLS))
def test_fast_path_is_chosen_for_lstm_and_gru(name):
  cell = _CELL_OBJECTS[name]
  params = cell.init(jax.random.key(0), I)
  xs = jnp.ones((T, B, I))
  assert _uses_fast_path(cell, params, xs)
  assert _uses_fast_path(cell, params, xs, lengths=jnp.array([1, 2, 3]), reverse=True)
  assert not _uses_fast_path(cell, params, xs, fused=False)
  assert not _uses_fast_path(cell, params, xs, remat=True)
  assert not _uses_fast_path(cell, params, xs, remat=2)


@pytest.mark.parametrize("cell", [
    rnnjax.lstm(H, proj_size=2), rnnjax.lstm(H, proj_size=2, dtype=jnp.bfloat16),
    rnnjax.elman(H), rnnjax.mgu(H), rnnjax.stack([rnnjax.lstm(H), rnnjax.elman(H)]),
    rnnjax.stack([rnnjax.lstm(H), rnnjax.lstm(H, proj_size=2)])],
    ids=["lstm_proj", "lstm_proj_bf16", "elman", "mgu", "stack_with_elman", "stack_with_proj"])
def test_generic_path_where_no_fast_path_applies(cell):
  params = cell.init(jax.random.key(0), I)
  dtype = jax.tree_util.tree_leaves(params)[0].dtype
  assert not _uses_fast_path(cell, params, jnp.ones((T, B, I), dtype))


def test_stack_with_active_dropout_steps_all_layers_together():
  cell = _CELL_OBJECTS["stack"]  # dropout=0.5
  params = cell.init(jax.random.key(0), I)
  xs = jnp.ones((T, B, I))
  assert _uses_fast_path(cell, params, xs)  # no key: dropout is off
  assert not _uses_fast_path(cell, params, xs, key=jax.random.key(1))
  no_dropout = rnnjax.stack([rnnjax.lstm(H), rnnjax.gru(H)])
  assert _uses_fast_path(no_dropout, no_dropout.init(jax.random.key(0), I), xs,
                         key=jax.random.key(1))


def test_stack_with_dropout_and_a_key_equals_the_generic_path():
  """With a key the stack's dropout is on: `unroll` must give what the generic path gives
  with the same key, on a fixed input, and differ from the result without dropout."""
  cell = _CELL_OBJECTS["stack"]  # dropout=0.5 after the LSTM
  params = _perturbed_params(cell, 13)
  xs = jax.random.normal(jax.random.key(14), (T, B, I))
  lengths, resets = jnp.array([T, 4, 0]), jnp.zeros((T, B), bool).at[2, 0].set(True)

  @jax.jit
  def run(p, x, key):
    outs = []
    for opts in ({}, dict(lengths=lengths, resets=resets, reverse=True)):
      outs.append((rnnjax.unroll(cell, p, x, key=key, **opts),
                   rnnjax.unroll(cell, p, x, key=key, fused=False, **opts),
                   rnnjax.unroll(cell, p, x, **opts)))
    return outs

  for got, generic, no_dropout in run(params, xs, jax.random.key(15)):
    assert helpers.max_rel(generic, got) <= RTOL
    assert helpers.max_rel(no_dropout[0], got[0]) > 0.1  # the dropout was applied


def test_gru_reset_before_with_resets_equals_the_numpy_equations():
  """The fast path of `gru(reset_after=False)` with resets, with and without lengths, in both
  directions, on fixed inputs, against the float64 NumPy loop of tests/reference.py."""
  cell = _CELL_OBJECTS["gru_reset_before"]
  assert rnnjax.engine_plan(cell).kernel
  params = _perturbed_params(cell, 16)
  xs = jax.random.normal(jax.random.key(17), (T, B, I))
  h0 = rnnjax.HiddenState(jax.random.normal(jax.random.key(18), (B, H)))
  lengths = np.array([T, 4, 5])
  resets = np.zeros((T, B), bool)
  resets[[2, 4], 0] = True  # two segments inside the sequence
  resets[[0, 3, 5], 1] = True  # at the first step, inside, and in the padding
  resets[1, 2] = True
  options = [(reverse, use_lengths) for reverse in (False, True) for use_lengths in (False, True)]

  @jax.jit
  def run(p, x, c):
    return [rnnjax.unroll(cell, p, x, c, lengths=lengths if use_lengths else None,
                          resets=resets, reverse=reverse) for reverse, use_lengths in options]

  step = lambda state, x: ref.gru_step(params, state, x, reset_after=False)
  for (reverse, use_lengths), (ys, final) in zip(options, run(params, xs, h0), strict=True):
    want_ys, (want_h,) = ref.run_batch(
        step, (h0.h,), xs, lengths=lengths if use_lengths else None, resets=resets,
        reverse=reverse, zero_state=(np.zeros((B, H)),))
    tol = dict(rtol=1e-5, atol=1e-6, err_msg=f"reverse={reverse}, lengths={use_lengths}")
    np.testing.assert_allclose(ys, want_ys, **tol)
    np.testing.assert_allclose(final.h, want_h, **tol)


def test_wrapped_apply_loses_the_fast_path():
  """A cell whose `apply` is replaced runs the replacement, never the built-in kernel."""
  cell = rnnjax.lstm(H)
  params = cell.init(jax.random.key(0), I)
  calls = []

  def apply(p, c, x, *, key=None):
    calls.append(1)
    return cell.apply(p, c, x, key=key)

  wrapped = cell._replace(apply=apply)
  xs = jnp.ones((T, B, I))
  assert not _uses_fast_path(wrapped, params, xs)
  assert calls


@pytest.mark.parametrize("batch_shape", [(), (2, 3)])
def test_any_number_of_batch_axes(batch_shape):
  cell = _CELL_OBJECTS["lstm"]
  params = _perturbed_params(cell, 3)
  xs = jax.random.normal(jax.random.key(4), (T, *batch_shape, I))
  lengths = None if not batch_shape else jnp.array([[6, 1, 0], [3, 4, 5]])

  def loss(p, x, fused):
    ys, final = rnnjax.unroll(cell, p, x, lengths=lengths, fused=fused)
    return jnp.sum(ys ** 2) + jnp.sum(final.c)

  @jax.jit
  def both(p, x):  # (generic, fast): outputs and final carry, gradients w.r.t. params and xs
    return [(rnnjax.unroll(cell, p, x, lengths=lengths, fused=fused),
             jax.grad(loss, (0, 1))(p, x, fused)) for fused in (False, True)]

  (ref_out, ref_grads), (out, grads) = both(params, xs)
  assert helpers.max_rel(ref_out, out) <= RTOL
  assert helpers.max_rel(ref_grads, grads) <= RTOL


def test_vmap_over_the_fast_path_equals_a_loop():
  cell = _CELL_OBJECTS["gru"]
  params = _perturbed_params(cell, 5)
  xs = jax.random.normal(jax.random.key(6), (2, T, B, I))  # two independent sequences batches
  grad = jax.grad(lambda p, x: jnp.sum(rnnjax.unroll(cell, p, x)[0] ** 2))
  batched = jax.jit(jax.vmap(grad, in_axes=(None, 0)))(params, xs)
  generic = jax.jit(jax.grad(lambda p, x: jnp.sum(rnnjax.unroll(cell, p, x, fused=False)[0] ** 2)))
  looped = [generic(params, x) for x in xs]
  for i, one in enumerate(looped):
    assert helpers.max_rel(one, jax.tree_util.tree_map(lambda a, i=i: a[i], batched)) <= RTOL


@pytest.mark.parametrize("name", ["lstm", "gru_reset_before"])
def test_fast_path_gradients_match_finite_differences_both_modes(name):
  """Forward and reverse mode of the kernels against finite differences, float64."""
  with jax.enable_x64(True):
    cell = CELLS[name](jnp.float64)
    params = _perturbed_params(cell, 9)
    xs = jax.random.normal(jax.random.key(10), (4, 2, I), jnp.float64)
    lengths = jnp.array([4, 2], jnp.int32)
    resets = jnp.array([[0, 0], [0, 1], [1, 0], [0, 0]], bool)
    run = jax.jit(lambda p, x: rnnjax.unroll(cell, p, x, lengths=lengths, resets=resets))
    assert rnnjax.engine_plan(cell).kernel
    check_grads(run, (params, xs), order=1, modes=["fwd", "rev"])
