"""Tests for the sLSTM cell of xLSTM (Beck et al. 2024, arXiv:2405.04517).

The expected values come from the paper's equations written below as plain NumPy loops in
float64, sharing no code with rnnjax: the unstabilised equations (exponential gates, `c`
and `n` as they are), and the stabilised ones with the official code's rule for the
stabiliser `m`. The block-diagonal recurrent matrix is assembled densely here from the
per-head blocks. The engine's lengths/resets/reverse semantics come from
`tests/reference.py`; gradients are checked against central finite differences in
float64. Everything runs under `jax.jit` with the fixed sizes below.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax._src.cells.slstm import SLSTMParams, SLSTMState, slstm
from tests import helpers, reference
from tests.test_diagonal_cells import central_differences

T, B, I, H = 6, 3, 3, 4
RTOL, ATOL = 2e-5, 2e-6  # float32 against the float64 reference
FORGET = ["sigmoid", "exp"]


def _f64(a):
  return np.asarray(a, np.float64)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


# ---- The paper's equations, float64. ----

def dense_recurrent(r):
  """The `[H, 4H]` block-diagonal matrix (gate-major columns) of the per-head blocks."""
  r = _f64(r)
  heads, d, _ = r.shape
  size = heads * d
  dense = np.zeros((size, 4 * size))
  for k in range(heads):
    for g in range(4):
      dense[k * d:(k + 1) * d, g * size + k * d:g * size + (k + 1) * d] = r[k][:, g * d:(g + 1) * d]
  return dense


def _gates(params, h, x, forget_gate):
  """`(ĩ, log f, tanh(z̃), σ(õ))` from `x @ w_i + b + h @ R`."""
  pre = x @ _f64(params.w_i) + h @ dense_recurrent(params.r)
  if params.b is not None:
    pre = pre + _f64(params.b)
  i_t, f_t, z_t, o_t = np.split(pre, 4, axis=-1)
  log_f = f_t if forget_gate == "exp" else -np.log1p(np.exp(-f_t))
  return i_t, log_f, np.tanh(z_t), _sigmoid(o_t)


def unstabilised_step(params, forget_gate, state, x):
  """The paper's sLSTM as written: `i = exp(ĩ)`, `c' = f c + i z`, `n' = f n + i`."""
  c, n, h = state
  i_t, log_f, z, o = _gates(params, h, x, forget_gate)
  with np.errstate(over="ignore", invalid="ignore"):
    i, f = np.exp(i_t), np.exp(log_f)
    c = f * c + i * z
    n = f * n + i
    h = o * c / n
  return (c, n, h), h


def stabilised_step(params, forget_gate, state, x):
  """The stabilised sLSTM with the official code's rule: `m' = ĩ` where `n == 0`."""
  c, n, m, h = state
  i_t, log_f, z, o = _gates(params, h, x, forget_gate)
  m_new = np.where(n == 0, i_t, np.maximum(log_f + m, i_t))
  i = np.exp(i_t - m_new)
  f = np.exp(np.minimum(log_f + m - m_new, 0.0))  # the kernel's min(1, exp(...))
  c = f * c + i * z
  n = f * n + i
  h = o * c / n
  return (c, n, m_new, h), h


# ---- Jitted entry points; the cell (and `reverse`) are static. ----

@functools.cache
def _cell(forget_gate="sigmoid", heads=2, dtype=jnp.float32):
  return slstm(H, heads=heads, forget_gate=forget_gate, dtype=dtype, param_dtype=dtype)


@functools.partial(jax.jit, static_argnums=(0, 6))
def _unroll(cell, params, xs, carry, lengths=None, resets=None, reverse=False):
  return rnnjax.unroll(cell, params, xs, carry, lengths=lengths, resets=resets, reverse=reverse)




def _carry(rng, dtype=jnp.float32):
  """A random carry with a positive normaliser (as every reachable carry has)."""
  draw = lambda low=None: (rng.normal(size=(B, H)) if low is None
                           else rng.uniform(low, 2.0, size=(B, H)))
  return SLSTMState(c=jnp.asarray(draw(), dtype), n=jnp.asarray(draw(0.5), dtype),
                    m=jnp.asarray(draw(), dtype), h=jnp.asarray(draw(), dtype))


def _xs(rng, dtype=jnp.float32):
  return jnp.asarray(rng.normal(size=(T, B, I)), dtype)


def _close(actual, expected, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(_f64(actual), _f64(expected), rtol=rtol, atol=atol)


def _resets():
  r = np.zeros((T, B), bool)
  r[2, 0] = r[4, 1] = r[0, 2] = True
  return r


def _stabilised(params, forget_gate):
  return functools.partial(stabilised_step, params, forget_gate)


def _unstabilised(params, forget_gate):
  return functools.partial(unstabilised_step, params, forget_gate)


# ---- 1. Against the equations. ----

@pytest.mark.parametrize(("forget_gate", "heads"), [("sigmoid", 2), ("exp", 2), ("sigmoid", 1)])
def test_unroll_matches_stabilised_reference(forget_gate, heads, rng):
  cell = _cell(forget_gate, heads)
  params = helpers.random_params(cell, rng, I)
  assert params.r.shape == (heads, H // heads, 4 * H // heads)
  xs, carry = _xs(rng), _carry(rng)
  ys, final = _unroll(cell, params, xs, carry)
  assert type(final) is SLSTMState and ys.shape == (T, B, H) and ys.dtype == jnp.float32
  ref_ys, ref_final = reference.run_batch(_stabilised(params, forget_gate), tuple(carry), xs)
  _close(ys, ref_ys)
  for got, want in zip(final, ref_final, strict=True):
    _close(got, want)


@pytest.mark.parametrize("forget_gate", FORGET)
def test_outputs_equal_the_unstabilised_equations(forget_gate, rng):
  """`c, n` are the paper's divided by `exp(m)`: outputs and `c / n` agree exactly."""
  cell = _cell(forget_gate)
  params = helpers.random_params(cell, rng, I)
  xs, carry = _xs(rng), _carry(rng)
  ys, final = _unroll(cell, params, xs, carry)
  scale = np.exp(_f64(carry.m))
  start = (_f64(carry.c) * scale, _f64(carry.n) * scale, _f64(carry.h))
  ref_ys, (c_u, n_u, h_u) = reference.run_batch(_unstabilised(params, forget_gate), start, xs)
  _close(ys, ref_ys)
  _close(final.h, h_u)
  scale = np.exp(_f64(final.m))
  _close(_f64(final.c) * scale, c_u)
  _close(_f64(final.n) * scale, n_u)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_lengths_resets_and_reverse(reverse, rng):
  """Resets restart from the zero carry, where the stabiliser starts at the input gate."""
  cell = _cell()
  params = helpers.random_params(cell, rng, I)
  xs = np.array(_xs(rng))
  lengths = np.array([T, 4, 0], np.int32)
  xs[4:, 1] = np.nan
  carry = _carry(rng)
  zero = tuple(np.zeros((B, H)) for _ in range(4))
  ys, final = _unroll(cell, params, jnp.asarray(xs), carry, jnp.asarray(lengths),
                      jnp.asarray(_resets()), reverse)
  ref_ys, ref_final = reference.run_batch(
      _stabilised(params, "sigmoid"), tuple(carry), np.nan_to_num(xs), lengths=lengths,
      resets=_resets(), reverse=reverse, zero_state=zero)
  _close(ys, ref_ys)
  for got, want in zip(final, ref_final, strict=True):
    _close(got, want)
  # From the zero carry, n' = 1 after the first step and never falls below it.
  _, final0 = _unroll(cell, params, jnp.asarray(np.nan_to_num(xs)),
                      cell.initial_carry(params, (B,)))
  assert np.all(_f64(final0.n) >= 1.0)


# ---- 2. The stabiliser: finite where the plain equations overflow. ----

def _large_gates(params, shift, forget_gate):
  """Input-gate (and exp forget-gate) biases raised by `shift`, so `exp(ĩ)` is huge."""
  b = _f64(params.b).copy()
  b[:H] += shift
  if forget_gate == "exp":
    b[H:2 * H] += shift / 4
  return params._replace(b=jnp.asarray(b, params.b.dtype))


@pytest.mark.parametrize("forget_gate", FORGET)
def test_large_gates_stay_finite(forget_gate, rng):
  cell = _cell(forget_gate)
  params = _large_gates(helpers.random_params(cell, rng, I), 200.0, forget_gate)
  xs, zero = _xs(rng), tuple(np.zeros((B, H)) for _ in range(3))
  # float32 overflows exp(200): the plain equations give inf / inf there.
  with np.errstate(over="ignore"):
    assert np.isinf(np.exp(np.float32(200.0)))
  ys, final = _unroll(cell, params, xs, cell.initial_carry(params, (B,)))
  assert all(np.all(np.isfinite(_f64(leaf))) for leaf in (ys, *final))
  # float64 does not overflow at 200: there the plain equations agree with the cell.
  ref_ys, _ = reference.run_batch(_unstabilised(params, forget_gate), zero, xs)
  assert np.all(np.isfinite(ref_ys))
  _close(ys, ref_ys, rtol=2e-4, atol=2e-5)  # float32 rounds pre-activations of 200 to ~1e-5
  # At 1000 even float64 overflows (NaN); the cell stays finite and equals the stabilised form.
  params = _large_gates(params, 800.0, forget_gate)
  ys, _ = _unroll(cell, params, xs, cell.initial_carry(params, (B,)))
  ref_ys, _ = reference.run_batch(_unstabilised(params, forget_gate), zero, xs)
  assert np.isnan(ref_ys).any()
  stab_ys, _ = reference.run_batch(_stabilised(params, forget_gate), zero + zero[:1], xs)
  _close(ys, stab_ys, rtol=2e-4, atol=2e-5)
  # A tiny input gate, exp(-200): float32 underflows it to 0, and a stabiliser started at
  # log f (not at ĩ) would give n' = 0 and c' / n' = NaN. The cell matches float64.
  params = _large_gates(params, -1200.0, forget_gate)
  ys, final = _unroll(cell, params, xs, cell.initial_carry(params, (B,)))
  assert np.all(_f64(final.n) >= 1.0)
  ref_ys, _ = reference.run_batch(_unstabilised(params, forget_gate), zero, xs)
  _close(ys, ref_ys, rtol=2e-4, atol=2e-5)


def test_first_step_from_zero_starts_the_stabiliser_at_the_input_gate(rng):
  """The official kernel's rule: where n == 0, m' = ĩ, so i' = 1, n' = 1, c' = tanh(z̃)."""
  cell = _cell()
  params = helpers.random_params(cell, rng, I)
  x = _xs(rng)[0]
  carry, y = jax.jit(cell.apply)(params, cell.initial_carry(params, (B,)), x)
  i_t, _, z, o = _gates(params, np.zeros((B, H)), _f64(x), "sigmoid")
  _close(carry.m, i_t)
  np.testing.assert_array_equal(_f64(carry.n), 1.0)
  _close(carry.c, z)
  _close(y, o * z)


# ---- 3. Head-wise recurrence. ----

@functools.partial(jax.jit, static_argnums=0)
def _h_jacobian(cell, params, carry, x):
  return jax.jacfwd(lambda h: cell.apply(params, carry._replace(h=h), x)[1])(carry.h)


def test_recurrence_is_block_diagonal_by_head(rng):
  cell = slstm(6, heads=3)
  params = cell.init(jax.random.key(0), I)
  assert params.r.shape == (3, 2, 8)
  carry = jax.tree_util.tree_map(lambda a: a[0], cell.initial_carry(params, (1,)))
  carry = carry._replace(h=jnp.asarray(rng.normal(size=6), jnp.float32),
                         n=jnp.ones(6, jnp.float32))
  jac = np.asarray(_h_jacobian(cell, params, carry, jnp.ones(I, jnp.float32)))
  mask = np.kron(np.eye(3), np.ones((2, 2))).astype(bool)
  np.testing.assert_array_equal(jac[~mask], 0.0)
  assert np.all(np.abs(jac[mask]) > 0)


# ---- 4. Gradients against central finite differences, float64. ----

def _loss(cell, params, xs, carry, lengths, resets, weights):
  ys, final = rnnjax.unroll(cell, params, xs, carry, lengths=lengths, resets=resets)
  return jnp.sum(ys * weights) + jnp.sum(jnp.sin(final.h)) + jnp.sum(final.c / final.n)


_loss_jit = jax.jit(_loss, static_argnums=0)
_grad_jit = jax.jit(jax.grad(_loss, argnums=(1, 2, 3)), static_argnums=0)


@pytest.mark.parametrize("forget_gate", FORGET)
def test_gradients_match_central_differences(forget_gate, rng):
  """Moderate gates, then `exp(±800)` gates (beyond float64): gradients finite and right."""
  with jax.enable_x64(True):
    cell = _cell(forget_gate, 2, jnp.float64)
    params = helpers.random_params(cell, rng, I)
    xs = _xs(rng, jnp.float64)
    carry = _carry(rng, jnp.float64)
    lengths, resets = jnp.asarray([T, 4, 2], jnp.int32), jnp.asarray(_resets())
    weights = jnp.asarray(rng.normal(size=(T, B, H)), jnp.float64)
    for shift in (0.0, 800.0, -800.0):
      moved = _large_gates(params, shift, forget_gate)
      loss = lambda args: _loss_jit(cell, *args, lengths, resets, weights)
      grads = _grad_jit(cell, moved, xs, carry, lengths, resets, weights)
      assert all(np.all(np.isfinite(_f64(g))) for g in jax.tree_util.tree_leaves(grads))
      central_differences(loss, (moved, xs, carry), grads, rng)


# ---- 5. Initialisation, mixed precision, identity, messages. ----

def test_init_layout_and_values():
  cell = slstm(8, heads=2, forget_bias=2.5)
  params = jax.jit(lambda key: cell.init(key, 5))(jax.random.key(0))
  assert type(params) is SLSTMParams and params._fields == ("w_i", "r", "b")
  assert params.w_i.shape == (5, 32) and params.r.shape == (2, 4, 16)
  b = _f64(params.b)
  np.testing.assert_array_equal(b[8:16], 2.5)
  np.testing.assert_array_equal(np.delete(b, np.s_[8:16]), 0.0)
  for k in range(2):
    for g in range(4):
      block = _f64(params.r[k][:, g * 4:(g + 1) * 4])
      np.testing.assert_allclose(block @ block.T, np.eye(4), atol=1e-5)
  assert not np.allclose(_f64(params.r[0]), _f64(params.r[1]))
  assert cell.input_size(params) == 5
  carry = cell.initial_carry(params, (2, 3))
  assert type(carry) is SLSTMState
  for leaf in carry:
    assert leaf.shape == (2, 3, 8) and leaf.dtype == jnp.float32
    np.testing.assert_array_equal(_f64(leaf), 0.0)
  assert slstm(8, use_bias=False).init(jax.random.key(0), 5).b is None
  zeros = slstm(8, recurrent_init=jax.nn.initializers.zeros).init(jax.random.key(0), 5)
  np.testing.assert_array_equal(_f64(zeros.r), 0.0)


def test_bfloat16_compute_keeps_a_float32_carry(rng):
  cell = slstm(H, heads=2, dtype=jnp.bfloat16)
  params = helpers.random_params(_cell(), rng, I)
  xs, carry = _xs(rng), _carry(rng)
  ys, final = _unroll(cell, params, xs, carry)
  assert ys.dtype == jnp.bfloat16
  assert all(leaf.dtype == jnp.float32 for leaf in final)
  want, _ = _unroll(_cell(), params, xs, carry)
  _close(ys, want, rtol=5e-2, atol=5e-2)


def test_cells_compare_by_their_call():
  assert slstm(8, heads=2) == slstm(hidden_size=8, heads=2, forget_gate="sigmoid")
  assert hash(slstm(8, heads=2)) == hash(slstm(8, heads=2))
  assert slstm(8, heads=2) != slstm(8, heads=4)
  assert slstm(8, forget_gate="exp") != slstm(8)
  assert repr(slstm(8, heads=2)) == "slstm(hidden_size=8, heads=2)"


def test_bad_arguments_say_what_to_do():
  with pytest.raises(ValueError, match=re.escape(
      "rnnjax.slstm: `hidden_size` (=6) must be divisible by `heads` (=4); each head holds "
      "hidden_size // heads units. Pass heads as one of [1, 2, 3, 6].")):
    slstm(6, heads=4)
  with pytest.raises(ValueError, match=re.escape(
      "rnnjax.slstm: `forget_gate` must be one of 'sigmoid', 'exp'; got forget_gate='tanh'.")):
    slstm(4, forget_gate="tanh")
  with pytest.raises(ValueError, match=re.escape(
      "rnnjax.slstm: `heads` must be a positive integer, got heads=0.")):
    slstm(4, heads=0)
  cell = slstm(4)
  params = cell.init(jax.random.key(0), 3)
  with pytest.raises(TypeError, match=re.escape(
      "rnnjax.slstm.apply: `params` must be SLSTMParams (made by `rnnjax.slstm(...).init`)")):
    cell.apply(tuple(params), cell.initial_carry(params), jnp.zeros(3))
