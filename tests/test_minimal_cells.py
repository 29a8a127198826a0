"""Tests for minGRU and minLSTM (Feng et al. 2024) and their linear recurrences.

The expected values come from the paper's equations written below as plain NumPy loops in
float64 (sharing no code with rnnjax; the engine's lengths/resets semantics come from
`tests/reference.py`), from running layers by hand, or from finite differences. Everything
runs under `jax.jit` with the fixed sizes below; jitted functions are cached and reused,
and the tests vary values, not shapes.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import rnnjax
from rnnjax._src import linear
from rnnjax._src.cells.minimal import MinGRUParams, MinLSTMParams, mingru, minlstm
from tests import reference

T, B, I, H = 6, 3, 4, 5
RTOL, ATOL = 1e-5, 1e-6  # float32 against the float64 reference
BF16_TOL = 5e-2

# name -> (factory, log_space, params type, gates)
VARIANTS = {
    "mingru": (mingru, False, MinGRUParams, 2),
    "mingru_log": (mingru, True, MinGRUParams, 2),
    "minlstm": (minlstm, False, MinLSTMParams, 3),
    "minlstm_log": (minlstm, True, MinLSTMParams, 3),
}
NAMES = list(VARIANTS)
LOG_NAMES = [n for n in NAMES if VARIANTS[n][1]]
FACTORIES = {"mingru": mingru, "minlstm": minlstm}


@functools.cache
def _cell(name: str, dtype: Any = jnp.float32, size: int = H) -> rnnjax.Cell:
  """The cell in `dtype` throughout (params, carry, products): pure bfloat16 for bfloat16."""
  factory, log_space, _, _ = VARIANTS[name]
  return factory(size, log_space=log_space, dtype=dtype, param_dtype=dtype)


# ---- The paper's equations, float64, one step and one sequence at a time. ----

def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _g(v):
  """The paper's g: v + 0.5 for v >= 0, σ(v) for v < 0."""
  return np.where(v >= 0, v + 0.5, _sigmoid(np.minimum(v, 0.0)))


def _blocks(name, params):
  """Splits the fused `w [I, G*H]`, `b [G*H]` into the paper's per-gate linear layers."""
  gates = VARIANTS[name][3]
  w = np.asarray(params.w, np.float64)
  size = w.shape[1] // gates
  b = np.zeros(gates * size) if params.b is None else np.asarray(params.b, np.float64)
  return [(w[:, k * size:(k + 1) * size], b[k * size:(k + 1) * size]) for k in range(gates)]


def ref_step(name, params, state, x):
  """One step of the paper's minGRU / minLSTM: `(state,) -> ((h,), h)`."""
  log_space = VARIANTS[name][1]
  (h,) = state
  x = np.asarray(x, np.float64)
  if name.startswith("mingru"):
    (w_z, b_z), (w_h, b_h) = _blocks(name, params)
    z = _sigmoid(x @ w_z + b_z)
    h_tilde = x @ w_h + b_h
    if log_space:
      h_tilde = _g(h_tilde)
    h = (1.0 - z) * h + z * h_tilde
  else:
    (w_f, b_f), (w_i, b_i), (w_h, b_h) = _blocks(name, params)
    f = _sigmoid(x @ w_f + b_f)
    i = _sigmoid(x @ w_i + b_i)
    h_tilde = x @ w_h + b_h
    if log_space:
      h_tilde = _g(h_tilde)
    f_prime, i_prime = f / (f + i), i / (f + i)
    h = f_prime * h + i_prime * h_tilde
  return (h,), h


def ref_coefficients(name, params, xs):
  """The paper's `(a, b)` of `h_t = a_t h_{t-1} + b_t`: `(1 - z, z h̃)` or `(f', i' h̃)`."""
  xs = np.asarray(xs, np.float64)
  if name.startswith("mingru"):
    (w_z, b_z), (w_h, b_h) = _blocks(name, params)
    k = xs @ w_z + b_z
    h_tilde = xs @ w_h + b_h
    # 1 - z, evaluated as σ(-k) so that float64 keeps its relative precision where z ≈ 1.
    gate_a, gate_b = _sigmoid(-k), _sigmoid(k)
  else:
    (w_f, b_f), (w_i, b_i), (w_h, b_h) = _blocks(name, params)
    f, i = _sigmoid(xs @ w_f + b_f), _sigmoid(xs @ w_i + b_i)
    h_tilde = xs @ w_h + b_h
    gate_a, gate_b = f / (f + i), i / (f + i)
  if VARIANTS[name][1]:
    h_tilde = _g(h_tilde)
  return gate_a, gate_b * h_tilde


def _ref(name, params):
  return lambda state, x: ref_step(name, params, state, x)


# ---- Jitted entry points; the cell (and `reverse`) are static. ----

@functools.partial(jax.jit, static_argnums=(0, 6))
def _unroll(cell, params, xs, carry, lengths=None, resets=None, reverse=False):
  return rnnjax.unroll(cell, params, xs, carry, lengths=lengths, resets=resets, reverse=reverse)


@functools.partial(jax.jit, static_argnums=0)
def _apply(cell, params, carry, x):
  return cell.apply(params, carry, x)


@functools.partial(jax.jit, static_argnums=0)
def _coefficients(cell, params, xs):
  return linear.recurrence_of(cell).coefficients(params, xs)


@functools.partial(jax.jit, static_argnums=0)
def _log_coefficients(cell, params, xs):
  return linear.recurrence_of(cell).log_coefficients(params, xs)


@functools.partial(jax.jit, static_argnums=0)
def _layer_apply(layer, params, xs, carry, lengths):
  return layer.apply(params, xs, carry, lengths=lengths)


# ---- Helpers. ----

def _normal(rng, shape, dtype=jnp.float32, scale=1.0):
  return jnp.asarray(rng.normal(scale=scale, size=shape), dtype)


def _params(cell, rng, scale=0.5, input_size=I):
  """Random params (non-zero biases) with the structure, shapes and dtype of `cell.init`."""
  shapes = jax.eval_shape(lambda key: cell.init(key, input_size), jax.random.key(0))
  return jax.tree_util.tree_map(lambda s: _normal(rng, s.shape, s.dtype, scale), shapes)


def _carry(name, rng, batch_shape=(B,), dtype=jnp.float32, size=H):
  """A random carry; positive for the log-space cells (whose parallel form needs h >= 0)."""
  shape = (*batch_shape, size)
  if VARIANTS[name][1]:
    return rnnjax.HiddenState(jnp.asarray(rng.uniform(0.1, 1.0, shape), dtype))
  return rnnjax.HiddenState(_normal(rng, shape, dtype))


def _f64(a):
  return np.asarray(a, np.float64)


def _close(actual, expected, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(_f64(actual), _f64(expected), rtol=rtol, atol=atol)


def _finite(tree):
  return all(bool(np.all(np.isfinite(_f64(leaf)))) for leaf in jax.tree_util.tree_leaves(tree))


# ---- 1. The step, run by `unroll`, against the paper's equations. ----

@pytest.mark.parametrize("name", NAMES)
def test_unroll_matches_reference(name, rng):
  cell = _cell(name)
  params = _params(cell, rng)
  xs = _normal(rng, (T, B, I))
  carry = _carry(name, rng)
  ys, final = _unroll(cell, params, xs, carry)
  assert ys.shape == (T, B, H) and ys.dtype == jnp.float32
  assert type(final) is rnnjax.HiddenState and final.h.shape == (B, H)
  ref_ys, (ref_h,) = reference.run_batch(_ref(name, params), (_f64(carry.h),), xs)
  _close(ys, ref_ys)
  _close(final.h, ref_h)


@pytest.mark.parametrize("name", NAMES)
def test_unroll_with_lengths_and_resets(name, rng):
  """Two cases of one compiled program: lengths only, then lengths with resets."""
  cell = _cell(name)
  params = _params(cell, rng)
  zero = (np.zeros((B, H)),)
  no_resets = np.zeros((T, B), bool)
  some_resets = no_resets.copy()
  some_resets[0, 1] = some_resets[2, 0] = some_resets[4, 1] = True
  some_resets[3, 2] = True  # at a padded step (length 2): no effect
  for lengths, resets in [((T, 4, 0), no_resets), ((T, 5, 2), some_resets)]:
    xs = _normal(rng, (T, B, I))
    carry = _carry(name, rng)
    ys, final = _unroll(cell, params, xs, carry, jnp.asarray(lengths, jnp.int32),
                        jnp.asarray(resets))
    ref_ys, (ref_h,) = reference.run_batch(_ref(name, params), (_f64(carry.h),), xs,
                                           lengths=lengths, resets=resets, zero_state=zero)
    _close(ys, ref_ys)
    _close(final.h, ref_h)


@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(0.05, 3.0))
@pytest.mark.parametrize("name", NAMES)
def test_apply_matches_reference_for_any_values(name, seed, scale):
  """Small to large weights (saturated gates included); reuses one compiled step."""
  rng = np.random.default_rng(seed)
  cell = _cell(name)
  params = _params(cell, rng, 0.5 * scale)
  carry = _carry(name, rng)
  x = _normal(rng, (B, I), scale=scale)
  new_carry, y = _apply(cell, params, carry, x)
  (ref_h,), ref_y = ref_step(name, params, (_f64(carry.h),), x)
  _close(y, ref_y)
  _close(new_carry.h, ref_h)


@pytest.mark.parametrize("name", NAMES)
def test_apply_is_batch_polymorphic(name, rng):
  cell = _cell(name)
  params = _params(cell, rng)
  cases = [((), (I,)), ((2, 3), (2, 3, I)), ((), (B, I))]  # the last broadcasts the carry
  for batch_shape, x_shape in cases:
    carry = _carry(name, rng, batch_shape)
    x = _normal(rng, x_shape)
    new_carry, y = _apply(cell, params, carry, x)
    (ref_h,), ref_y = ref_step(name, params, (_f64(carry.h),), x)
    assert y.shape == (*x_shape[:-1], H)
    _close(y, ref_y)
    _close(new_carry.h, ref_h)


@pytest.mark.parametrize("name", ["mingru", "minlstm_log"])
def test_bfloat16(name, rng):
  cell = _cell(name, jnp.bfloat16)
  params = _params(cell, rng)
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree_util.tree_leaves(params))
  xs = _normal(rng, (T, B, I), jnp.bfloat16)
  carry = _carry(name, rng, dtype=jnp.bfloat16)
  ys, final = _unroll(cell, params, xs, carry)
  assert ys.dtype == final.h.dtype == jnp.bfloat16
  ref_ys, (ref_h,) = reference.run_batch(_ref(name, params), (_f64(carry.h),), xs)
  _close(ys, ref_ys, BF16_TOL, BF16_TOL)
  _close(final.h, ref_h, BF16_TOL, BF16_TOL)


# ---- 2. The linear recurrence. ----

@pytest.mark.parametrize("name", NAMES)
def test_recurrence_is_attached(name):
  rec = linear.recurrence_of(_cell(name))
  assert isinstance(rec, linear.LinearRecurrence)
  assert rec.readout is None
  assert (rec.log_coefficients is not None) == VARIANTS[name][1]


@pytest.mark.parametrize("name", NAMES)
def test_coefficients_reproduce_the_reference(name, rng):
  cell = _cell(name)
  params = _params(cell, rng)
  xs = _normal(rng, (T, B, I))
  carry = _carry(name, rng)
  a, b = _coefficients(cell, params, xs)
  assert a.shape == b.shape == (T, B, H)
  assert a.dtype == b.dtype == jnp.float32
  ref_a, ref_b = ref_coefficients(name, params, xs)
  _close(a, ref_a)
  _close(b, ref_b)
  # The recurrence h_t = a_t h_{t-1} + b_t, as a plain loop, is the cell.
  h = _f64(carry.h)
  hs = []
  for t in range(T):
    h = _f64(a[t]) * h + _f64(b[t])
    hs.append(h)
  ref_ys, _ = reference.run_batch(_ref(name, params), (_f64(carry.h),), xs)
  _close(np.stack(hs), ref_ys)


@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(0.05, 3.0))
@pytest.mark.parametrize("name", LOG_NAMES)
def test_exp_of_log_coefficients_is_coefficients(name, seed, scale):
  rng = np.random.default_rng(seed)
  cell = _cell(name)
  params = _params(cell, rng, 0.5 * scale)
  xs = _normal(rng, (T, B, I), scale=scale)
  a, b = _coefficients(cell, params, xs)
  log_a, log_b = _log_coefficients(cell, params, xs)
  assert log_a.shape == log_b.shape == (T, B, H)
  np.testing.assert_allclose(np.exp(_f64(log_a)), _f64(a), rtol=RTOL)
  np.testing.assert_allclose(np.exp(_f64(log_b)), _f64(b), rtol=RTOL)


@pytest.mark.parametrize("name", LOG_NAMES)
def test_log_coefficients_are_accurate_where_coefficients_underflow(name, rng):
  """Pre-activations up to about ±100: σ(-100) ≈ 4e-44 underflows in float32, its log does not."""
  cell = _cell(name)
  params = _params(cell, rng)
  xs = _normal(rng, (T, B, I), scale=40.0)
  log_a, log_b = _log_coefficients(cell, params, xs)
  ref_a, ref_b = ref_coefficients(name, params, xs)
  assert np.min(np.log(ref_a)) < -60  # the test does reach the underflow range
  _close(log_a, np.log(ref_a), RTOL, 1e-4)
  _close(log_b, np.log(ref_b), RTOL, 1e-4)


@pytest.mark.parametrize("name", LOG_NAMES)
def test_coefficients_with_one_batch_axis_and_none(name, rng):
  cell = _cell(name)
  params = _params(cell, rng)
  xs = _normal(rng, (T, I))
  a, b = _coefficients(cell, params, xs)
  log_a, log_b = _log_coefficients(cell, params, xs)
  assert a.shape == b.shape == log_a.shape == log_b.shape == (T, H)
  ref_a, ref_b = ref_coefficients(name, params, xs)
  _close(a, ref_a)
  _close(log_b, np.log(ref_b))


@functools.partial(jax.jit, static_argnums=0)
def _log_space_grads(cell, params, xs, carry):
  def loss(params, xs, carry):
    log_a, log_b = linear.recurrence_of(cell).log_coefficients(params, xs)
    a, b = linear.recurrence_of(cell).coefficients(params, xs)
    ys, final = rnnjax.unroll(cell, params, xs, carry)
    return (jnp.sum(log_a) + jnp.sum(log_b) + jnp.sum(jnp.tanh(a) + jnp.tanh(b))
            + jnp.sum(jnp.tanh(ys)) + jnp.sum(jnp.tanh(final.h)))
  return jax.grad(loss, argnums=(0, 1, 2))(params, xs, carry)


@pytest.mark.parametrize("name", LOG_NAMES)
def test_log_space_gradients_are_finite_at_extreme_pre_activations(name, rng):
  cell = _cell(name)
  params = _params(cell, rng)
  carry = _carry(name, rng)
  for scale in (1.0, 1e2, 1e4, 1e30):
    xs = _normal(rng, (T, B, I), scale=scale)
    grads = _log_space_grads(cell, params, xs, carry)
    assert _finite(grads), scale
  # Candidate pre-activations exactly 0 (the boundary of g's two branches) and -0.5 (where a
  # naive log(v + 0.5) in the unselected branch is -inf); the gate pre-activations are 0.
  b = np.zeros(params.b.shape, np.float32)
  b[-H:] = np.where(np.arange(H) % 2 == 0, 0.0, -0.5)
  grads = _log_space_grads(cell, params._replace(b=jnp.asarray(b)),
                           jnp.zeros((T, B, I), jnp.float32), carry)
  assert _finite(grads)
  assert np.all(_f64(grads[0].b) != 0)


# ---- 3. In stacks, bidirectional layers, and under `jax.grad`. ----

def test_stack_equals_layers_run_by_hand(rng):
  first, second = _cell("mingru"), _cell("minlstm_log", size=3)
  cell = rnnjax.stack([first, second])
  params = _params(cell, rng)
  assert type(params[0]) is MinGRUParams and type(params[1]) is MinLSTMParams
  assert params[0].w.shape == (I, 2 * H) and params[1].w.shape == (H, 3 * 3)
  assert cell.input_size(params) == I
  xs = _normal(rng, (T, B, I))
  carry = (_carry("mingru", rng), _carry("minlstm_log", rng, size=3))
  lengths = jnp.asarray((T, 4, 0), jnp.int32)
  ys, final = _unroll(cell, params, xs, carry, lengths)
  assert ys.shape == (T, B, 3)
  ys_1, final_1 = _unroll(first, params[0], xs, carry[0], lengths)
  ys_2, final_2 = _unroll(second, params[1], ys_1, carry[1], lengths)
  _close(ys, ys_2)
  _close(final[0].h, final_1.h)
  _close(final[1].h, final_2.h)


def test_bidirectional_equals_directions_run_by_hand(rng):
  fwd, bwd = _cell("mingru_log"), _cell("minlstm")
  layer = rnnjax.bidirectional(fwd, bwd)
  params = _params(layer, rng)
  assert layer.input_size(params) == I
  xs = _normal(rng, (T, B, I))
  carry = rnnjax.BidirectionalState(_carry("mingru_log", rng), _carry("minlstm", rng))
  lengths = jnp.asarray((T, 4, 2), jnp.int32)
  ys, final = _layer_apply(layer, params, xs, carry, lengths)
  assert ys.shape == (T, B, 2 * H)
  ys_f, final_f = _unroll(fwd, params.forward, xs, carry.forward, lengths)
  ys_b, final_b = _unroll(bwd, params.backward, xs, carry.backward, lengths, None, True)
  _close(ys, np.concatenate([_f64(ys_f), _f64(ys_b)], axis=-1))
  _close(final.forward.h, final_f.h)
  _close(final.backward.h, final_b.h)
  # The backward direction starts at each sequence's last valid step.
  ref_ys, _ = reference.run_batch(_ref("minlstm", params.backward), (_f64(carry.backward.h),),
                                  xs, lengths=(T, 4, 2), reverse=True)
  _close(ys[..., H:], ref_ys)


@functools.partial(jax.jit, static_argnums=0)
def _grad_target(cell, params, xs, carry, lengths):
  ys, final = rnnjax.unroll(cell, params, xs, carry, lengths=lengths)
  rec = linear.recurrence_of(cell)
  extra = () if rec.log_coefficients is None else rec.log_coefficients(params, xs)
  return ys, final, rec.coefficients(params, xs), extra


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_finite_differences(name, rng):
  with jax.enable_x64(True):
    cell = _cell(name, jnp.float64)
    params = _params(cell, rng)
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(params))
    xs = _normal(rng, (T, B, I), jnp.float64)
    carry = _carry(name, rng, dtype=jnp.float64)
    lengths = jnp.asarray((T, 4, 1), jnp.int32)
    run = lambda params, xs, carry: _grad_target(cell, params, xs, carry, lengths)
    check_grads(run, (params, xs, carry), order=1, modes=["rev"])


# ---- 4. Initialisation and the initial carry. ----

@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", NAMES)
def test_init_layout(name, dtype, use_bias):
  factory, log_space, params_type, gates = VARIANTS[name]
  cell = factory(H, log_space=log_space, use_bias=use_bias, dtype=dtype, param_dtype=dtype)
  params = jax.eval_shape(lambda key: cell.init(key, I), jax.random.key(0))
  assert type(params) is params_type
  assert params._fields == ("w", "b")
  assert params.w.shape == (I, gates * H) and params.w.dtype == dtype
  if use_bias:
    assert params.b.shape == (gates * H,) and params.b.dtype == dtype
  else:
    assert params.b is None
  assert cell.input_size(params) == I


@jax.jit
def _init_both(key):
  k_gru, k_lstm = jax.random.split(key)
  return (mingru(64).init(k_gru, 256), minlstm(64, log_space=True).init(k_lstm, 256))


@pytest.mark.parametrize("which", [0, 1], ids=["mingru", "minlstm"])
def test_init_values(which):
  """Zero biases; one LeCun normal block (variance 1/I) per gate; deterministic in the key."""
  params = _init_both(jax.random.key(0))[which]
  gates = (2, 3)[which]
  np.testing.assert_array_equal(_f64(params.b), np.zeros(gates * 64))
  w = _f64(params.w)
  blocks = [w[:, k * 64:(k + 1) * 64] for k in range(gates)]
  for blk in blocks:
    assert abs(np.mean(blk)) < 0.01
    np.testing.assert_allclose(np.var(blk), 1 / 256, rtol=0.1)
  for k in range(1, gates):
    assert not np.allclose(blocks[0], blocks[k])
  np.testing.assert_array_equal(_f64(_init_both(jax.random.key(0))[which].w), w)
  assert not np.allclose(_f64(_init_both(jax.random.key(1))[which].w), w)


@pytest.mark.parametrize("family", FACTORIES)
def test_custom_kernel_init_draws_one_block_per_gate(family):
  calls = []

  def constant(key, shape, dtype=jnp.float32):
    del key
    calls.append(tuple(shape))
    return jnp.full(shape, 0.25, dtype)

  gates = {"mingru": 2, "minlstm": 3}[family]
  params = FACTORIES[family](H, kernel_init=constant).init(jax.random.key(0), I)
  assert calls == [(I, H)] * gates
  np.testing.assert_array_equal(params.w, np.full((I, gates * H), 0.25, np.float32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["mingru", "minlstm_log"])
def test_initial_carry_is_zeros(name, dtype, rng):
  cell = _cell(name, dtype)
  params = _params(cell, rng)
  for batch_shape in [(), (B,), (2, 3)]:
    carry = cell.initial_carry(params, batch_shape)
    assert type(carry) is rnnjax.HiddenState
    assert carry.h.shape == (*batch_shape, H) and carry.h.dtype == dtype
    assert not np.any(_f64(carry.h))
  assert cell.initial_carry(params).h.shape == (H,)


# ---- 5. Error messages. ----
# `hidden_size`, `dtype` and `input_size` errors: with the other cells', test_cells section 7.

@pytest.mark.parametrize("bad", ["yes", 1, None])
@pytest.mark.parametrize("family", FACTORIES)
def test_non_bool_log_space(family, bad):
  with pytest.raises(TypeError, match=re.escape(
      f"rnnjax.{family}: `log_space` must be a bool, got {bad!r}")):
    FACTORIES[family](H, log_space=bad)


@pytest.mark.parametrize("name", ["mingru", "minlstm_log"])
def test_wrong_feature_size(name, rng):
  cell = _cell(name)
  family = name.split("_")[0]
  params = _params(cell, rng)
  carry = _carry(name, rng)
  with pytest.raises(ValueError, match=re.escape(
      f"rnnjax.{family}.apply: x has feature size {I + 1} but params were made for "
      f"input_size={I} (x.shape=({B}, {I + 1}))")):
    _apply(cell, params, carry, jnp.zeros((B, I + 1), jnp.float32))
  with pytest.raises(ValueError, match=re.escape(
      f"rnnjax.unroll: xs has feature size {I + 1} but params were made for input_size={I}")):
    _unroll(cell, params, jnp.zeros((T, B, I + 1), jnp.float32), carry)
  rec = linear.recurrence_of(cell)
  for fn in ("coefficients", "log_coefficients"):
    method = getattr(rec, fn)
    if method is None:
      continue
    with pytest.raises(ValueError, match=re.escape(
        f"rnnjax.{family}.{fn}: xs has feature size {I + 1} but params were made for "
        f"input_size={I}")):
      method(params, jnp.zeros((T, B, I + 1), jnp.float32))
    with pytest.raises(ValueError, match=re.escape(
        f"rnnjax.{family}.{fn}: `xs` must have rank >= 2 with shape [T, ..., I]")):
      method(params, jnp.zeros((I,), jnp.float32))
