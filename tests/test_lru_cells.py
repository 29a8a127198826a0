"""Tests for the linear recurrent cells `lru` (Orvieto et al. 2023) and `rglru` (Griffin).

Every numeric check compares rnnjax, run under `jit` in float32, with the papers'
equations written below as plain NumPy loops in float64/complex128 (in the
papers' own orientation, `B u` and `C h`), which share no code with rnnjax; the
engine semantics (lengths, resets, reverse) come from `tests/reference.py`.
All tests share the sizes below (JAX compiles once per shape); they vary values, not shapes.
"""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rnnjax
from rnnjax._src import linear
from rnnjax._src.cells.common import HiddenState
from rnnjax._src.cells.lru import LRUParams, lru
from rnnjax._src.cells.rglru import RGLRUParams, rglru, sqrt_bounded_derivative
from tests import reference

T, B, I, N, H, O = 6, 3, 4, 5, 5, 3  # O: the dense-D LRU's output size
TOL = 1e-5  # float32 against the float64 reference
LENGTHS = (T, 4, 0)


# ---- The papers' equations, one step, in NumPy float64 / complex128. ----

def _np(a):
  return np.asarray(a, np.float64)


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def lru_step(p, state, u):
  """Orvieto et al. 2023 (Appendix A's code): `x_t = λ x_{t-1} + γ (B u_t)`,
  `y_t = Re(C x_t) + D u_t`. The state is `(Re h, Im h)` so that `reference` can carry it."""
  h = state[0] + 1j * state[1]
  lam = np.exp(-np.exp(_np(p.nu_log)) + 1j * np.exp(_np(p.theta_log)))
  gamma = np.exp(_np(p.gamma_log))
  b_mat = (_np(p.b_re) + 1j * _np(p.b_im)).T  # [N, I], the paper's B
  c_mat = (_np(p.c_re) + 1j * _np(p.c_im)).T  # [O, N], the paper's C
  d = _np(p.d)
  h = lam * h + gamma * (b_mat @ u)
  y = (c_mat @ h).real + (d * u if d.ndim == 1 else d.T @ u)
  return (h.real, h.imag), y


def rglru_step(p, state, x, c=8.0):
  """De et al. 2024 (the RG-LRU equations), with Griffin's input projection `x̃ = x W_in`."""
  (h,) = state
  xt = x @ _np(p.w_in)
  r = sigmoid(xt @ _np(p.w_a) + _np(p.b_a))
  i = sigmoid(xt @ _np(p.w_x) + _np(p.b_x))
  a = sigmoid(_np(p.a_param)) ** (c * r)
  h = a * h + np.sqrt(1.0 - a**2) * (i * xt)
  return (h,), h


# ---- The variants under test: cell, reference step, state layout. ----

# Each in `dtype` throughout (params and products; pure bfloat16 for bfloat16).
CELLS = {
    "lru": lambda dtype=jnp.float32: lru(N, dtype=dtype, param_dtype=dtype),
    "lru_dense_d": lambda dtype=jnp.float32: lru(N, output_size=O, r_min=0.5, dtype=dtype,
                                                 param_dtype=dtype),
    "rglru": lambda dtype=jnp.float32: rglru(H, dtype=dtype, param_dtype=dtype),
    "rglru_c3": lambda dtype=jnp.float32: rglru(H, c=3.0, dtype=dtype, param_dtype=dtype),
}
NAMES = list(CELLS)
STEPS = {
    "lru": lru_step,
    "lru_dense_d": lru_step,
    "rglru": rglru_step,
    "rglru_c3": functools.partial(rglru_step, c=3.0),
}


@functools.cache
def _cell(name, dtype=jnp.float32):
  return CELLS[name](dtype)


def _is_lru(name):
  return name.startswith("lru")


def _out_size(name):
  return {"lru": I, "lru_dense_d": O}.get(name, H)


@functools.partial(jax.jit, static_argnums=0)
def _unroll(cell, params, xs, carry, lengths, resets):
  return rnnjax.unroll(cell, params, xs, carry, lengths=lengths, resets=resets)


@functools.partial(jax.jit, static_argnums=0)
def _coefficients(cell, params, xs):
  return linear.recurrence_of(cell).coefficients(params, xs)


@functools.partial(jax.jit, static_argnums=0)
def _readout(cell, params, hs, xs):
  return linear.recurrence_of(cell).readout(params, hs, xs)


def _normal(rng, shape, dtype=jnp.float32, scale=1.0):
  return jnp.asarray(rng.normal(scale=scale, size=shape), dtype)


def _params(name, rng, seed=0, dtype=jnp.float32):
  """The cell's initial params plus noise: realistic scales, but no field at its init value."""
  params = _cell(name, dtype).init(jax.random.key(seed), I)
  return jax.tree_util.tree_map(lambda p: p + _normal(rng, p.shape, p.dtype, 0.3), params)


def _random_carry(name, rng, dtype=jnp.float32):
  """A random carry built from the documented layout: complex `h: [B, N]` for the LRU."""
  if _is_lru(name):
    h = rng.normal(scale=0.5, size=(B, N)) + 1j * rng.normal(scale=0.5, size=(B, N))
    cdt = jnp.complex128 if dtype == jnp.float64 else jnp.complex64
    return HiddenState(h=jnp.asarray(h, cdt))
  return HiddenState(h=_normal(rng, (B, H), dtype, 0.5))


def _state(name, carry):
  """rnnjax carry -> the reference state (`(Re h, Im h)` or `(h,)`)."""
  h = np.asarray(carry.h)
  return (h.real.astype(np.float64), h.imag.astype(np.float64)) if _is_lru(name) else (_np(h),)


def _zero_state(name):
  size = N if _is_lru(name) else H
  return (np.zeros((B, size)),) * (2 if _is_lru(name) else 1)


def _ref_step(name, params):
  return lambda state, x: STEPS[name](params, state, x)


def _assert_close(actual, expected, tol=TOL):
  np.testing.assert_allclose(_np(actual), _np(expected), rtol=tol, atol=tol)


def _assert_state_close(name, carry, ref_state, tol=TOL):
  for got, want in zip(_state(name, carry), ref_state, strict=True):
    _assert_close(got, want, tol)


# ---- 1. unroll against the papers' equations, with a random initial carry. ----

CASES = {
    "plain": (None, None),
    "lengths_resets": ((T, 2, 5), [[0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0],
                                   [1, 0, 0]]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", NAMES)
def test_unroll_matches_reference(name, case, rng):
  lengths, resets = CASES[case]
  params = _params(name, rng, seed=len(case))
  xs = _normal(rng, (T, B, I))
  carry = _random_carry(name, rng)
  ys, final = _unroll(_cell(name), params, xs, carry,
                      None if lengths is None else jnp.asarray(lengths, jnp.int32),
                      None if resets is None else jnp.asarray(resets, bool))
  ref_ys, ref_final = reference.run_batch(
      _ref_step(name, params), _state(name, carry), xs, lengths=lengths,
      resets=None if resets is None else np.asarray(resets, bool), zero_state=_zero_state(name))
  assert ys.shape == (T, B, _out_size(name)) and ys.dtype == jnp.float32
  assert final.h.dtype == (jnp.complex64 if _is_lru(name) else jnp.float32)
  _assert_close(ys, ref_ys)
  _assert_state_close(name, final, ref_final)


# ---- 2. The declared recurrence h_t = a_t h_{t-1} + b_t, then the readout. ----

@pytest.mark.parametrize("name", NAMES)
def test_recurrence_loop_matches_reference(name, rng):
  cell = _cell(name)
  params = _params(name, rng, seed=3)
  xs = _normal(rng, (T, B, I))
  carry = _random_carry(name, rng)
  recurrence = linear.recurrence_of(cell)
  assert recurrence is not None and recurrence.log_coefficients is None
  a, b = _coefficients(cell, params, xs)
  size = N if _is_lru(name) else H
  assert a.shape == b.shape == (T, B, size)
  assert a.dtype == b.dtype == (jnp.complex64 if _is_lru(name) else jnp.float32)
  a, b = np.asarray(a, np.complex128), np.asarray(b, np.complex128)
  h = np.asarray(carry.h, np.complex128)
  hs = []
  for t in range(T):
    h = a[t] * h + b[t]
    hs.append(h)
  hs = np.stack(hs)
  if _is_lru(name):
    ys = _readout(cell, params, jnp.asarray(hs, jnp.complex64), xs)
  else:
    assert recurrence.readout is None  # ys = hs
    ys = hs.real
  ref_ys, ref_final = reference.run_batch(_ref_step(name, params), _state(name, carry), xs)
  _assert_close(ys, ref_ys)
  _assert_state_close(name, HiddenState(h=h if _is_lru(name) else h.real), ref_final)


def test_lru_coefficient_a_is_lambda_broadcast(rng):
  params = _params("lru", rng, seed=4)
  a, _ = _coefficients(_cell("lru"), params, _normal(rng, (T, B, I)))
  lam = np.exp(-np.exp(_np(params.nu_log)) + 1j * np.exp(_np(params.theta_log)))
  np.testing.assert_allclose(np.asarray(a), np.broadcast_to(lam, (T, B, N)), rtol=TOL, atol=TOL)


# ---- 3. Layouts, carries, batch polymorphism. ----

def test_param_layouts_and_carries():
  p = _cell("lru").init(jax.random.key(0), I)
  assert isinstance(p, LRUParams)
  assert {f: v.shape for f, v in p._asdict().items()} == {
      "nu_log": (N,), "theta_log": (N,), "gamma_log": (N,), "b_re": (I, N), "b_im": (I, N),
      "c_re": (N, I), "c_im": (N, I), "d": (I,)}
  assert all(v.dtype == jnp.float32 for v in p)
  assert _cell("lru_dense_d").init(jax.random.key(0), I).d.shape == (I, O)
  # An explicit output_size equal to the input size keeps the paper's diagonal D.
  assert lru(N, output_size=I).init(jax.random.key(0), I).d.shape == (I,)
  carry = _cell("lru").initial_carry(p, (2, 3))
  assert isinstance(carry, HiddenState) and carry.h.shape == (2, 3, N)
  assert carry.h.dtype == jnp.complex64 and not np.asarray(carry.h).any()
  assert _cell("lru").input_size(p) == I

  q = _cell("rglru").init(jax.random.key(0), I)
  assert isinstance(q, RGLRUParams)
  assert {f: v.shape for f, v in q._asdict().items()} == {
      "w_in": (I, H), "w_a": (H, H), "b_a": (H,), "w_x": (H, H), "b_x": (H,), "a_param": (H,)}
  carry = _cell("rglru").initial_carry(q)
  assert carry.h.shape == (H,) and carry.h.dtype == jnp.float32 and not np.asarray(carry.h).any()
  assert _cell("rglru").input_size(q) == I


@pytest.mark.parametrize("name", ["lru", "rglru"])
def test_apply_is_batch_polymorphic(name, rng):
  cell = _cell(name)
  params = _params(name, rng, seed=5)
  carry = _random_carry(name, rng)  # [B, S]
  x = _normal(rng, (I,))
  # An unbatched input broadcasts against a batched carry.
  c1, y1 = cell.apply(params, carry, x)
  c2, y2 = cell.apply(params, carry, jnp.broadcast_to(x, (B, I)))
  _assert_close(np.asarray(c1.h).view(np.float32), np.asarray(c2.h).view(np.float32))
  _assert_close(y1, y2)
  # Unbatched step equals the batched step's rows.
  for b in range(B):
    c, y = cell.apply(params, HiddenState(h=carry.h[b]), x)
    _assert_close(np.asarray(c.h).view(np.float32), np.asarray(c1.h[b]).view(np.float32))
    _assert_close(y, y1[b])


@pytest.mark.parametrize("name", ["lru", "rglru"])
def test_bfloat16_params_give_bfloat16_outputs(name, rng):
  cell = _cell(name, jnp.bfloat16)
  params = cell.init(jax.random.key(0), I)
  assert all(p.dtype == jnp.bfloat16 for p in params)
  x = _normal(rng, (B, I), jnp.bfloat16)
  carry, y = cell.apply(params, cell.initial_carry(params, (B,)), x)
  assert y.dtype == jnp.bfloat16 and np.isfinite(np.asarray(y, np.float32)).all()
  assert carry.h.dtype == (jnp.complex64 if _is_lru(name) else jnp.bfloat16)


# ---- 4. Initialisation statistics. ----

def _ks_uniform(samples):
  """The Kolmogorov-Smirnov distance of `samples` (in [0, 1]) from U(0, 1)."""
  s = np.sort(samples)
  n = s.size
  return max(np.max(np.arange(1, n + 1) / n - s), np.max(s - np.arange(n) / n))


BIG_I, BIG_N = 64, 2048


def _jit_init(cell, seed, input_size):
  return jax.jit(cell.init, static_argnums=1)(jax.random.key(seed), input_size)


@pytest.mark.parametrize("r_min, r_max, max_phase", [
    (0.0, 1.0, 2 * math.pi), (0.9, 0.999, math.pi / 10), (0.5, 1.0, 1.0)])
def test_lru_init_is_uniform_on_the_ring(r_min, r_max, max_phase):
  p = lru(BIG_N, r_min=r_min, r_max=r_max, max_phase=max_phase).init(jax.random.key(1), BIG_I)
  assert all(np.isfinite(np.asarray(v)).all() for v in p)
  nu = np.exp(_np(p.nu_log))
  radius = np.exp(-nu)
  phase = np.exp(_np(p.theta_log))
  assert radius.min() >= r_min - 1e-6 and radius.max() <= r_max + 1e-6
  assert phase.min() >= 0.0 and phase.max() <= max_phase * (1 + 1e-6)
  # Uniform on the ring: |λ|² is uniform on [r_min², r_max²]; the phase on [0, max_phase].
  assert _ks_uniform((radius**2 - r_min**2) / (r_max**2 - r_min**2)) < 0.05
  assert _ks_uniform(phase / max_phase) < 0.05
  # γ = sqrt(1 - |λ|²), the normalisation, at init.
  np.testing.assert_allclose(np.exp(_np(p.gamma_log)), np.sqrt(-np.expm1(-2 * nu)), rtol=1e-5)
  # B ~ N(0, 1/(2I)), C ~ N(0, 1/N), D ~ N(0, 1).
  for field, std in (("b_re", 1 / math.sqrt(2 * BIG_I)), ("b_im", 1 / math.sqrt(2 * BIG_I)),
                     ("c_re", 1 / math.sqrt(BIG_N)), ("c_im", 1 / math.sqrt(BIG_N))):
    v = _np(getattr(p, field))
    assert abs(v.std() / std - 1) < 0.03 and abs(v.mean()) < 0.03 * std, field
  assert abs(_np(p.d).std() - 1) < 0.3


def test_lru_dense_d_init_scale():
  d = _np(_jit_init(lru(8, output_size=256), 2, BIG_I).d)
  assert d.shape == (BIG_I, 256)
  assert abs(d.std() * math.sqrt(BIG_I) - 1) < 0.03


def test_lru_init_near_the_unit_circle_is_finite():
  """|λ|² rounds to 1 in float32 for the top draws of a ring ending at 1; ν must stay > 0."""
  from rnnjax._src.cells.lru import _ring_nu
  u1 = jnp.asarray([1 - 2.0**-23, 1 - 2.0**-22, 2.0**-23], jnp.float32)
  nu = np.asarray(_ring_nu(u1, 0.5, 1.0), np.float64)
  assert (nu > 0).all() and np.isfinite(nu).all()
  np.testing.assert_allclose(nu, -0.5 * np.log(0.25 + np.asarray(u1, np.float64) * 0.75),
                             rtol=1e-5)


def test_lru_init_in_float64():
  with jax.enable_x64(True):
    cell = lru(N, r_min=0.9, r_max=0.999, dtype=jnp.float64)
    p = _jit_init(cell, 0, I)
    assert all(v.dtype == jnp.float64 for v in p)
    assert cell.initial_carry(p, (B,)).h.dtype == jnp.complex128
    radius = np.exp(-np.exp(np.asarray(p.nu_log)))
    assert radius.min() >= 0.9 and radius.max() <= 0.999
    np.testing.assert_allclose(np.exp(np.asarray(p.gamma_log)), np.sqrt(1 - radius**2),
                               rtol=1e-12)


@pytest.mark.parametrize("c, a_min, a_max", [(8.0, 0.9, 0.999), (2.0, 0.5, 0.9)])
def test_rglru_init(c, a_min, a_max):
  p = rglru(BIG_N, c=c, a_min=a_min, a_max=a_max).init(jax.random.key(3), BIG_I)
  a_c = sigmoid(_np(p.a_param)) ** c  # the decay at r_t = 1
  assert a_c.min() >= a_min - 1e-5 and a_c.max() <= a_max + 1e-5
  assert _ks_uniform((a_c - a_min) / (a_max - a_min)) < 0.05
  assert not np.asarray(p.b_a).any() and not np.asarray(p.b_x).any()
  for field, fan_in in (("w_in", BIG_I), ("w_a", BIG_N), ("w_x", BIG_N)):
    v = _np(getattr(p, field))
    assert abs(v.std() * math.sqrt(fan_in) - 1) < 0.03, field


# ---- 5. Inside stack and bidirectional. ----

@functools.cache
def _stack():
  return rnnjax.stack([lru(N), rglru(H)])


@functools.cache
def _bidirectional():
  return rnnjax.bidirectional(lru(N, output_size=O), rglru(H))


def test_stack_matches_reference(rng):
  cell = _stack()
  params = cell.init(jax.random.key(6), I)
  params = jax.tree_util.tree_map(lambda p: p + _normal(rng, p.shape, p.dtype, 0.3), params)
  xs = _normal(rng, (T, B, I))
  carry = (_random_carry("lru", rng), _random_carry("rglru", rng))
  ys, final = _unroll(cell, params, xs, carry, jnp.asarray(LENGTHS, jnp.int32), None)

  def step(state, x):
    s1, y = lru_step(params[0], state[:2], x)
    s2, y = rglru_step(params[1], state[2:], y)
    return (*s1, *s2), y

  state0 = (*_state("lru", carry[0]), *_state("rglru", carry[1]))
  ref_ys, ref_final = reference.run_batch(step, state0, xs, lengths=LENGTHS)
  assert ys.shape == (T, B, H)
  _assert_close(ys, ref_ys)
  _assert_state_close("lru", final[0], ref_final[:2])
  _assert_state_close("rglru", final[1], ref_final[2:])


def test_bidirectional_matches_reference(rng):
  layer = _bidirectional()
  params = layer.init(jax.random.key(7), I)
  params = jax.tree_util.tree_map(lambda p: p + _normal(rng, p.shape, p.dtype, 0.3), params)
  xs = _normal(rng, (T, B, I))
  lengths = (T, 2, 5)
  ys, final = jax.jit(layer.apply)(params, xs, lengths=jnp.asarray(lengths, jnp.int32))
  zero_lru, zero_rg = _zero_state("lru_dense_d"), _zero_state("rglru")
  ref_f, fin_f = reference.run_batch(_ref_step("lru_dense_d", params.forward), zero_lru, xs,
                                     lengths=lengths)
  ref_b, fin_b = reference.run_batch(_ref_step("rglru", params.backward), zero_rg, xs,
                                     lengths=lengths, reverse=True)
  assert ys.shape == (T, B, O + H)
  _assert_close(ys, np.concatenate([ref_f, ref_b], axis=-1))
  _assert_state_close("lru", final.forward, fin_f)
  _assert_state_close("rglru", final.backward, fin_b)


# ---- 6. Gradients. ----

@pytest.mark.parametrize("name", ["lru", "rglru"])
def test_gradients_match_finite_differences(name, rng):
  with jax.enable_x64(True):
    cell = _cell(name, jnp.float64)
    params = _params(name, rng, seed=8, dtype=jnp.float64)
    xs = _normal(rng, (3, 2, I), jnp.float64)
    h0 = (_normal(rng, (2, N), jnp.float64, 0.5), _normal(rng, (2, N), jnp.float64, 0.5))
    weights = _normal(rng, (3, 2, _out_size(name)), jnp.float64)
    lengths = jnp.asarray((3, 2), jnp.int32)

    @jax.jit
    def loss(params, xs, h0):
      carry = (HiddenState(h=jax.lax.complex(*h0)) if _is_lru(name)
               else HiddenState(h=h0[0][:, :H]))
      ys, final = rnnjax.unroll(cell, params, xs, carry, lengths=lengths)
      h = final.h
      return jnp.sum(ys * weights) + jnp.sum(jnp.real(h) ** 2) + jnp.sum(jnp.imag(h) ** 2)

    check_grads(loss, (params, xs, h0), order=1, modes=["rev"])


@pytest.mark.parametrize("name", ["lru", "lru_dense_d", "rglru"])
def test_float32_gradients_are_real_and_finite(name, rng):
  cell = _cell(name)
  params = cell.init(jax.random.key(9), I)  # r_max = 1 for "lru": |λ| up to 1 - 6e-8
  xs = _normal(rng, (T, B, I))
  grads = jax.jit(jax.grad(lambda p: jnp.sum(_unroll(cell, p, xs, None, None, None)[0] ** 2)))(
      params)
  for g, p in zip(grads, params, strict=True):
    assert g.dtype == p.dtype == jnp.float32
    assert np.isfinite(np.asarray(g)).all()
  assert any(np.asarray(g).any() for g in grads)


def test_rglru_gradient_is_finite_when_the_recurrence_gate_closes(rng):
  """r_t -> 0 gives a_t -> 1 and d sqrt(1 - a_t²) -> inf; the derivative is capped (Griffin)."""
  cell = _cell("rglru")
  params = cell.init(jax.random.key(10), I)._replace(b_a=jnp.full((H,), -200.0, jnp.float32))
  xs = _normal(rng, (T, B, I))
  grads = jax.grad(lambda p: jnp.sum(_unroll(cell, p, xs, None, None, None)[0] ** 2))(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  d = jax.grad(sqrt_bounded_derivative)
  assert float(d(1.0)) == pytest.approx(0.5) and float(d(0.0)) == pytest.approx(1000.0)
  assert float(sqrt_bounded_derivative(0.25)) == 0.5


# ---- 7. Errors. ----

@pytest.mark.parametrize("factory, kwargs, error, message", [
    (lru, dict(state_size=0), ValueError, "rnnjax.lru: `state_size` must be a positive integer"),
    (lru, dict(state_size="8"), TypeError, "rnnjax.lru: `state_size` must be an integer"),
    (lru, dict(state_size=8, output_size=0), ValueError, "`output_size` must be a positive"),
    (lru, dict(state_size=8, r_min=-0.1), ValueError,
     "0 <= r_min < r_max <= 1, got r_min=-0.1 and r_max=1.0"),
    (lru, dict(state_size=8, r_min=0.5, r_max=0.5), ValueError, "got r_min=0.5 and r_max=0.5"),
    (lru, dict(state_size=8, r_max=1.5), ValueError, "r_max=1.5"),
    (lru, dict(state_size=8, r_min=True), TypeError, "`r_min` must be a real number"),
    (lru, dict(state_size=8, max_phase=0.0), ValueError, "`max_phase` must be positive"),
    (lru, dict(state_size=8, max_phase=float("nan")), ValueError, "`max_phase` must be finite"),
    (lru, dict(state_size=8, dtype=jnp.int32), TypeError, "rnnjax.lru: `dtype` must be a floating"),
    (rglru, dict(hidden_size=0), ValueError, "rnnjax.rglru: `hidden_size` must be a positive"),
    (rglru, dict(hidden_size=8, c=0.0), ValueError,
     "rnnjax.rglru: `c` must be positive, got c=0.0"),
    (rglru, dict(hidden_size=8, c="8"), TypeError, "`c` must be a real number, got '8'"),
    (rglru, dict(hidden_size=8, a_min=0.0), ValueError,
     "0 < a_min < a_max < 1, got a_min=0.0 and a_max=0.999"),
    (rglru, dict(hidden_size=8, a_max=1.0), ValueError, "a_max=1.0"),
    (rglru, dict(hidden_size=8, a_min=0.99, a_max=0.9), ValueError, "a_min=0.99 and a_max=0.9"),
])
def test_bad_factory_arguments(factory, kwargs, error, message):
  with pytest.raises(error, match=re.escape(message)):
    factory(**kwargs)


@pytest.mark.parametrize("name, fn", [("lru", "rnnjax.lru"), ("rglru", "rnnjax.rglru")])
def test_bad_input_sizes(name, fn, rng):
  cell = _cell(name)
  with pytest.raises(ValueError, match=re.escape(f"{fn}.init: `input_size` must be a positive")):
    cell.init(jax.random.key(0), 0)
  params = cell.init(jax.random.key(0), I)
  carry = cell.initial_carry(params, (B,))
  with pytest.raises(ValueError, match=re.escape(
      f"{fn}.apply: x has feature size 3 but params were made for input_size={I}")):
    cell.apply(params, carry, _normal(rng, (B, 3)))
  with pytest.raises(ValueError, match=re.escape(
      f"rnnjax.unroll: xs has feature size 3 but params were made for input_size={I}")):
    rnnjax.unroll(cell, params, _normal(rng, (T, B, 3)))
  coefficients = linear.recurrence_of(cell).coefficients
  with pytest.raises(ValueError, match=re.escape(f"{fn} (coefficients): xs has feature size 3")):
    coefficients(params, _normal(rng, (T, B, 3)))
  with pytest.raises(ValueError, match=re.escape(f"{fn} (coefficients): `xs` must have rank >= 2")):
    coefficients(params, _normal(rng, (I,)))


@pytest.mark.parametrize("name", ["lstm", "gru", "elman", "mgu", "mingru", "minlstm", "lru",
                                  "rglru"])
def test_params_own_their_buffers(name):
  """Train steps donate params: two leaves sharing one buffer would fail there."""
  params = getattr(rnnjax, name)(4).init(jax.random.key(0), 3)
  pointers = [leaf.unsafe_buffer_pointer() for leaf in jax.tree_util.tree_leaves(params)]
  assert len(pointers) == len(set(pointers))
