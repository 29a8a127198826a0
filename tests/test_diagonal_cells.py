"""Tests for ParaRNN's diagonal GRU and LSTM (Danieli et al. 2025, arXiv:2510.21450).

The expected values come from ParaRNN's equations written below as plain NumPy loops in
float64 (sharing no code with rnnjax; the engine's lengths/resets/reverse semantics come
from `tests/reference.py`), and gradients from central finite differences in float64.
Everything runs under `jax.jit` with the fixed sizes below; the jitted functions are cached
and reused, and the tests vary values, not shapes.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax._src.cells.diagonal import (
    DiagonalGRUParams,
    DiagonalLSTMParams,
    diagonal_gru,
    diagonal_lstm,
)
from rnnjax._src.cells.lstm import LSTMState
from tests import helpers, reference

T, B, I, H = 6, 3, 4, 5
RTOL, ATOL = 2e-5, 2e-6  # float32 against the float64 reference
FACTORIES = {"gru": diagonal_gru, "lstm": diagonal_lstm}
NAMES = list(FACTORIES)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _f64(a):
  return np.asarray(a, np.float64)


# ---- ParaRNN's equations, float64, one step at a time. ----

def _split(params, n):
  """The per-gate input blocks `W_k: [I, H]`, biases `b_k` and diagonals `a_k` (n gates)."""
  w = _f64(params.w_i)
  size = w.shape[1] // n
  b = np.zeros(n * size) if params.b is None else _f64(params.b)
  a = _f64(params.a)
  cut = lambda v: [v[..., k * size:(k + 1) * size] for k in range(n)]
  return cut(w), cut(b), cut(a)


def gru_step(params, state, x):
  """ParaGRU: z, r gates; candidate with the reset on the state; z weighs the candidate."""
  (w_z, w_r, w_c), (b_z, b_r, b_c), (a_z, a_r, a_c) = _split(params, 3)
  (h,) = state
  z = _sigmoid(a_z * h + x @ w_z + b_z)
  r = _sigmoid(a_r * h + x @ w_r + b_r)
  cand = np.tanh(a_c * (h * r) + x @ w_c + b_c)
  h = z * cand + (1 - z) * h
  return (h,), h


def lstm_step(params, state, x):
  """ParaLSTM: CIFG with peepholes; the output gate peeks at the new cell."""
  (w_f, w_o, w_c), (b_f, b_o, b_c), (a_f, a_o, a_c) = _split(params, 3)
  p = _f64(params.p)
  p_f, p_o = p[:p.size // 2], p[p.size // 2:]
  h, c = state
  f = _sigmoid(a_f * h + x @ w_f + b_f + p_f * c)
  cand = np.tanh(a_c * h + x @ w_c + b_c)
  c = f * c + (1 - f) * cand
  o = _sigmoid(a_o * h + x @ w_o + b_o + p_o * c)
  h = o * np.tanh(c)
  return (h, c), h


STEPS = {"gru": gru_step, "lstm": lstm_step}


def _ref(name, params):
  return functools.partial(STEPS[name], params)


# ---- Jitted entry points; the cell (and `reverse`) are static. ----

@functools.cache
def _cell(name, dtype=jnp.float32):
  return FACTORIES[name](H, dtype=dtype, param_dtype=dtype)


@functools.partial(jax.jit, static_argnums=(0, 6))
def _unroll(cell, params, xs, carry, lengths=None, resets=None, reverse=False):
  return rnnjax.unroll(cell, params, xs, carry, lengths=lengths, resets=resets, reverse=reverse)




def _carry(cell, params, rng, dtype=jnp.float32):
  shapes = jax.eval_shape(lambda p: cell.initial_carry(p, (B,)), params)
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(size=s.shape), dtype), shapes)


def _close(actual, expected, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(_f64(actual), _f64(expected), rtol=rtol, atol=atol)


def _resets():
  r = np.zeros((T, B), bool)
  r[2, 0] = r[4, 1] = r[0, 2] = True
  return r


# ---- 1. The step, run by `unroll`, against ParaRNN's equations. ----

@pytest.mark.parametrize("name", NAMES)
def test_unroll_matches_reference(name, rng):
  cell = _cell(name)
  params = helpers.random_params(cell, rng, I)
  xs = jnp.asarray(rng.normal(size=(T, B, I)), jnp.float32)
  carry = _carry(cell, params, rng)
  ys, final = _unroll(cell, params, xs, carry)
  assert ys.shape == (T, B, H) and ys.dtype == jnp.float32
  assert type(final) is type(carry)
  ref_ys, ref_final = reference.run_batch(_ref(name, params), tuple(carry), xs)
  _close(ys, ref_ys)
  for got, want in zip(final, ref_final, strict=True):
    _close(got, want)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name", NAMES)
def test_lengths_resets_and_reverse(name, reverse, rng):
  """Padded steps keep the carry; a reset restarts from zeros; reverse runs valid steps."""
  cell = _cell(name)
  params = helpers.random_params(cell, rng, I)
  xs = np.asarray(rng.normal(size=(T, B, I)), np.float32)
  lengths = np.array([T, 4, 0], np.int32)
  xs[4:, 1] = np.nan  # padding never reaches the arithmetic
  carry = _carry(cell, params, rng)
  zero = tuple(np.zeros((B, H)) for _ in carry)
  ys, final = _unroll(cell, params, jnp.asarray(xs), carry, jnp.asarray(lengths),
                      jnp.asarray(_resets()), reverse)
  ref_ys, ref_final = reference.run_batch(
      _ref(name, params), tuple(carry), np.nan_to_num(xs), lengths=lengths, resets=_resets(),
      reverse=reverse, zero_state=zero)
  _close(ys, ref_ys)
  for got, want in zip(final, ref_final, strict=True):
    _close(got, want)


# ---- 2. The Jacobian structure that the cells exist for. ----

@functools.partial(jax.jit, static_argnums=0)
def _carry_jacobian(cell, params, carry, x):
  """`∂carry'/∂carry` as a `[S, S]` matrix over the flattened carry (leaves in order)."""
  flat, unravel = jax.flatten_util.ravel_pytree(carry)
  step = lambda v: jax.flatten_util.ravel_pytree(cell.apply(params, unravel(v), x)[0])[0]
  return jax.jacfwd(step)(flat)


@pytest.mark.parametrize("name", NAMES)
def test_carry_jacobian_is_diagonal_per_state(name, rng):
  """GRU: a diagonal `[H, H]`; LSTM: `[[∂h'/∂h, ∂h'/∂c], [∂c'/∂h, ∂c'/∂c]]`, each diagonal."""
  cell = _cell(name)
  params = helpers.random_params(cell, rng, I)
  carry = jax.tree_util.tree_map(lambda a: a[0], _carry(cell, params, rng))
  x = jnp.asarray(rng.normal(size=(I,)), jnp.float32)
  jac = np.asarray(_carry_jacobian(cell, params, carry, x))
  blocks = len(carry)
  assert jac.shape == (blocks * H, blocks * H)
  for i in range(blocks):
    for j in range(blocks):
      block = jac[i * H:(i + 1) * H, j * H:(j + 1) * H]
      np.testing.assert_array_equal(block - np.diag(np.diag(block)), 0.0)
      assert np.all(np.diag(block) != 0.0)


# ---- 3. Gradients against central finite differences, float64. ----

def _loss(cell, params, xs, carry, lengths, resets, weights):
  ys, final = rnnjax.unroll(cell, params, xs, carry, lengths=lengths, resets=resets)
  return jnp.sum(ys * weights) + sum(jnp.sum(jnp.sin(leaf)) for leaf in final)


_loss_jit = jax.jit(_loss, static_argnums=0)
_grad_jit = jax.jit(jax.grad(_loss, argnums=(1, 2, 3)), static_argnums=0)


def central_differences(loss, args, grads, rng, picks=2, eps=1e-6):
  """Checks `grads` (a pytree like `args`) at `picks` random entries of every leaf."""
  leaves, treedef = jax.tree_util.tree_flatten(args)
  for k, (leaf, grad) in enumerate(zip(leaves, jax.tree_util.tree_leaves(grads), strict=True)):
    for index in rng.choice(leaf.size, size=min(picks, leaf.size), replace=False):
      def at(delta, k=k, index=index, leaf=leaf):
        moved = list(leaves)
        moved[k] = leaf.reshape(-1).at[index].add(delta).reshape(leaf.shape)
        return float(loss(jax.tree_util.tree_unflatten(treedef, moved)))
      numeric = (at(eps) - at(-eps)) / (2 * eps)
      np.testing.assert_allclose(float(grad.reshape(-1)[index]), numeric, rtol=1e-6, atol=1e-8,
                                 err_msg=f"leaf {k}, entry {index}")


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_central_differences(name, rng):
  with jax.enable_x64(True):
    cell = _cell(name, jnp.float64)
    params = helpers.random_params(cell, rng, I)
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(params))
    xs = jnp.asarray(rng.normal(size=(T, B, I)), jnp.float64)
    carry = _carry(cell, params, rng, jnp.float64)
    lengths, resets = jnp.asarray([T, 4, 2], jnp.int32), jnp.asarray(_resets())
    weights = jnp.asarray(rng.normal(size=(T, B, H)), jnp.float64)
    loss = lambda args: _loss_jit(cell, *args, lengths, resets, weights)
    grads = _grad_jit(cell, params, xs, carry, lengths, resets, weights)
    central_differences(loss, (params, xs, carry), grads, rng)


# ---- 4. Initialisation, the initial carry, mixed precision. ----

@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("name", NAMES)
def test_init_layout(name, use_bias):
  cell = FACTORIES[name](H, use_bias=use_bias, param_dtype=jnp.bfloat16)
  params = jax.eval_shape(lambda key: cell.init(key, I), jax.random.key(0))
  if name == "gru":
    assert type(params) is DiagonalGRUParams and params._fields == ("w_i", "a", "b")
  else:
    assert type(params) is DiagonalLSTMParams and params._fields == ("w_i", "a", "p", "b")
    assert params.p.shape == (2 * H,)
  assert params.w_i.shape == (I, 3 * H) and params.a.shape == (3 * H,)
  assert (params.b is None) == (not use_bias)
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree_util.tree_leaves(params))
  assert cell.input_size(params) == I
  carry = jax.eval_shape(lambda p: cell.initial_carry(p, (2, 7)), params)
  assert type(carry) is (rnnjax.HiddenState if name == "gru" else LSTMState)
  assert all(leaf.shape == (2, 7, H) and leaf.dtype == jnp.bfloat16
             for leaf in jax.tree_util.tree_leaves(carry))


@jax.jit
def _init_both(key):
  k_gru, k_lstm = jax.random.split(key)
  return diagonal_gru(64).init(k_gru, 256), diagonal_lstm(64).init(k_lstm, 256)


@pytest.mark.parametrize("which", [0, 1], ids=NAMES)
def test_init_values(which):
  """Zero biases; diagonals truncated normal (std 1/sqrt(H), within ±0.9); w_i variance 1/I."""
  params = _init_both(jax.random.key(0))[which]
  np.testing.assert_array_equal(_f64(params.b), 0.0)
  diagonals = [_f64(params.a)] + ([_f64(params.p)] if which else [])
  for d in diagonals:
    assert np.all(np.abs(d) <= 0.9) and np.std(d) == pytest.approx(1 / 8, rel=0.15)
    blocks = d.reshape(-1, 64)
    assert not np.allclose(blocks[0], blocks[1])
  np.testing.assert_allclose(np.var(_f64(params.w_i)), 1 / 256, rtol=0.1)
  again = _init_both(jax.random.key(0))[which]
  np.testing.assert_array_equal(_f64(again.a), _f64(params.a))
  assert not np.allclose(_f64(_init_both(jax.random.key(1))[which].a), _f64(params.a))
  carry = jax.jit(lambda p: diagonal_gru(64).initial_carry(p, (2,)))(_init_both(
      jax.random.key(0))[0])
  np.testing.assert_array_equal(_f64(carry.h), np.zeros((2, 64)))


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_compute_keeps_a_float32_carry(name, rng):
  cell = FACTORIES[name](H, dtype=jnp.bfloat16)
  params = helpers.random_params(_cell(name), rng, I)
  xs = jnp.asarray(rng.normal(size=(T, B, I)), jnp.float32)
  carry = _carry(cell, params, rng)
  ys, final = _unroll(cell, params, xs, carry)
  assert ys.dtype == jnp.bfloat16
  assert all(leaf.dtype == jnp.float32 for leaf in final)
  want, _ = _unroll(_cell(name), params, xs, carry)
  _close(ys, want, rtol=5e-2, atol=5e-2)


# ---- 5. Identity and messages. ----

def test_cells_compare_by_their_call():
  assert diagonal_gru(4) == diagonal_gru(hidden_size=4, dtype="float32")
  assert hash(diagonal_gru(4)) == hash(diagonal_gru(4))
  assert diagonal_gru(4) != diagonal_gru(5) and diagonal_gru(4) != diagonal_lstm(4)
  assert repr(diagonal_lstm(4, use_bias=False)) == "diagonal_lstm(hidden_size=4, use_bias=False)"


def test_bad_arguments_say_what_to_do():
  with pytest.raises(ValueError, match=re.escape(
      "rnnjax.diagonal_gru: `hidden_size` must be a positive integer, got hidden_size=0.")):
    diagonal_gru(0)
  with pytest.raises(TypeError, match=re.escape("rnnjax.diagonal_lstm: `recurrent_init` must")):
    diagonal_lstm(4, recurrent_init=0.5)
  lstm_params = diagonal_lstm(4).init(jax.random.key(0), 3)
  gru = diagonal_gru(4)
  with pytest.raises(TypeError, match=re.escape(
      "rnnjax.diagonal_gru.apply: `params` must be DiagonalGRUParams (made by "
      "`rnnjax.diagonal_gru(...).init`), got DiagonalLSTMParams")):
    gru.apply(lstm_params, rnnjax.HiddenState(jnp.zeros(4)), jnp.zeros(3))
  params = gru.init(jax.random.key(0), 3)
  with pytest.raises(ValueError, match=re.escape(
      "rnnjax.diagonal_gru.apply: x has feature size 5 but params were made for input_size=3")):
    gru.apply(params, gru.initial_carry(params), jnp.zeros(5))
