"""The LSTM/GRU whole-sequence fast paths against plain autodiff through `lax.scan`.

The reference is `unroll(..., fused=False)`: the generic engine, `jax.grad` and
`jax.jvp` straight through `lax.scan` over `cell.apply` (itself checked against
NumPy loops and finite differences in test_cells/test_unroll). The fast path must
give the same outputs, final carries, reverse-mode gradients (params, xs and the
initial carry) and forward-mode tangents, to 1e-5 relative in float32, for every
combination of lengths, resets, reverse and initial carry.
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
from rnnjax._src import fused as fused_lib

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
}
_CELL_OBJECTS = {name: make() for name, make in CELLS.items()}


def _max_rel(ref, got) -> float:
  """Largest `|ref - got| / max|ref|` over the leaves (the scale of each leaf)."""
  errs = []
  for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got), strict=True):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    errs.append(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12)))
  return max(errs)


def _perturbed_params(cell, seed: int):
  """Default init plus noise, so biases and every gate are exercised away from zero."""
  params = cell.init(jax.random.key(seed), I)
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [w + 0.3 * jax.random.normal(k, w.shape, w.dtype) for w, k in zip(leaves, keys,
                                                                             strict=True)])


def _loss(name, use_lengths, use_resets, reverse, fused, params, xs, carry, lengths, resets,
          weights):
  ys, final = rnnjax.unroll(_CELL_OBJECTS[name], params, xs, carry,
                            lengths=lengths if use_lengths else None,
                            resets=resets if use_resets else None, reverse=reverse, fused=fused)
  # Weighted outputs and a nonlinear function of the final carry, so that every
  # output cotangent and both carry cotangents are non-trivial.
  return jnp.sum(ys * weights) + sum(jnp.sum(jnp.sin(leaf))
                                     for leaf in jax.tree_util.tree_leaves(final))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _everything(name, use_lengths, use_resets, reverse, fused, params, xs, carry, lengths,
                resets, weights, tangents):
  """Outputs, final carry, gradients and a JVP of one configuration, in one compile."""
  cell = _CELL_OBJECTS[name]
  out = rnnjax.unroll(cell, params, xs, carry, lengths=lengths if use_lengths else None,
                      resets=resets if use_resets else None, reverse=reverse, fused=fused)
  loss = functools.partial(_loss, name, use_lengths, use_resets, reverse, fused)
  grads = jax.grad(loss, argnums=(0, 1, 2))(params, xs, carry, lengths, resets, weights)
  _, tangent = jax.jvp(lambda p, x, c: loss(p, x, c, lengths, resets, weights),
                       (params, xs, carry), tangents)
  return out, grads, tangent


@given(name=st.sampled_from(sorted(CELLS)), use_lengths=st.booleans(),
       use_resets=st.booleans(), reverse=st.booleans(), seed=st.integers(0, 2**16),
       lengths=hnp.arrays(np.int32, (B,), elements=st.integers(0, T)),
       resets=hnp.arrays(np.bool_, (T, B)))
def test_fast_path_equals_plain_autodiff(name, use_lengths, use_resets, reverse, seed, lengths,
                                         resets):
  cell = _CELL_OBJECTS[name]
  params = _perturbed_params(cell, seed)
  k = jax.random.split(jax.random.key(seed + 7), 4)
  xs = jax.random.normal(k[0], (T, B, I))
  leaves, tree = jax.tree_util.tree_flatten(cell.initial_carry(params, (B,)))
  carry = jax.tree_util.tree_unflatten(tree, [
      jax.random.normal(kk, a.shape) for a, kk in zip(
          leaves, jax.random.split(k[1], len(leaves)), strict=True)])
  weights = jax.random.normal(k[2], (T, B, H))
  tangents = jax.tree_util.tree_map(
      lambda a: jax.random.normal(k[3], a.shape, a.dtype), (params, xs, carry))
  args = (params, xs, carry, jnp.asarray(lengths), jnp.asarray(resets), weights, tangents)
  ref = _everything(name, use_lengths, use_resets, reverse, False, *args)
  got = _everything(name, use_lengths, use_resets, reverse, True, *args)
  assert _max_rel(ref[0], got[0]) <= RTOL  # outputs and final carry
  for ref_g, got_g in zip(ref[1], got[1], strict=True):  # d params, d xs, d carry
    assert _max_rel(ref_g, got_g) <= RTOL
  assert _max_rel(ref[2], got[2]) <= RTOL  # forward mode


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
    rnnjax.lstm(H, proj_size=2), rnnjax.lstm(H, dtype=jnp.bfloat16),
    rnnjax.gru(H, dtype=jnp.bfloat16),
    rnnjax.elman(H), rnnjax.mgu(H), rnnjax.stack([rnnjax.lstm(H), rnnjax.elman(H)]),
    rnnjax.stack([rnnjax.lstm(H), rnnjax.lstm(H, proj_size=2)])],
    ids=["lstm_proj", "lstm_bf16", "gru_bf16", "elman", "mgu", "stack_with_elman",
         "stack_with_proj"])
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

  assert _max_rel(rnnjax.unroll(cell, params, xs, lengths=lengths, fused=False),
                  rnnjax.unroll(cell, params, xs, lengths=lengths)) <= RTOL
  assert _max_rel(jax.grad(loss, (0, 1))(params, xs, False),
                  jax.grad(loss, (0, 1))(params, xs, True)) <= RTOL


def test_vmap_over_the_fast_path_equals_a_loop():
  cell = _CELL_OBJECTS["gru"]
  params = _perturbed_params(cell, 5)
  xs = jax.random.normal(jax.random.key(6), (2, T, B, I))  # two independent sequences batches
  grad = jax.grad(lambda p, x: jnp.sum(rnnjax.unroll(cell, p, x)[0] ** 2))
  batched = jax.vmap(grad, in_axes=(None, 0))(params, xs)
  looped = [jax.grad(lambda p, x: jnp.sum(rnnjax.unroll(cell, p, x, fused=False)[0] ** 2))(
      params, x) for x in xs]
  for i, one in enumerate(looped):
    assert _max_rel(one, jax.tree_util.tree_map(lambda a, i=i: a[i], batched)) <= RTOL


@pytest.mark.parametrize("name", ["lstm", "gru_reset_before"])
def test_fast_path_gradients_match_finite_differences_both_modes(name):
  """Forward and reverse mode of the kernels against finite differences, float64."""
  with jax.enable_x64(True):
    cell = CELLS[name](jnp.float64)
    params = _perturbed_params(cell, 9)
    xs = jax.random.normal(jax.random.key(10), (4, 2, I), jnp.float64)
    lengths = jnp.array([4, 2], jnp.int32)
    resets = jnp.array([[0, 0], [0, 1], [1, 0], [0, 0]], bool)
    run = lambda p, x: rnnjax.unroll(cell, p, x, lengths=lengths, resets=resets)
    assert fused_lib.kernel_of(cell.apply) is not None
    check_grads(run, (params, xs), order=1, modes=["fwd", "rev"])
