"""The mixed-precision policy of the linear cells (`mingru`, `minlstm`, `lru`, `rglru`).

`dtype=jnp.bfloat16` with the default `param_dtype` (float32): params and carry in
float32, matrix products on bfloat16 operands accumulated in float32, outputs in
bfloat16, and the same in `parallel_unroll` (its scan runs in float32). Checked
against the float64 NumPy loops of the cells' own tests (`ref_step`, `lru_step`,
`rglru_step`, sharing no code with rnnjax) run on the same params with the inputs
and the matrices (the products' operands) rounded to bfloat16, and against the
float32 cells for gradients. One jitted function per cell and shape.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax._src import linear
from tests import reference
from tests.test_lru_cells import lru_step, rglru_step
from tests.test_minimal_cells import ref_step

T, B, I, H = 12, 3, 4, 5
LENGTHS = np.array([T, 7, 1])
BF16 = jnp.bfloat16
# bfloat16 has 8 significant bits: rounding to it changes a value by at most 2^-8 of it.
# The reference rounds the inputs and the matrices as the cells do, so
# - the carry, float32 arithmetic on those exact operands (float32 products and sums), is
#   within float32 rounding of it (CARRY_TOL), except in `rglru`, which rounds its float32
#   `x̃` to bfloat16 again before the gate products (one more 2^-8, through the gates: TOL);
# - the outputs are rounded to bfloat16 once more (2^-8), and in the LRU's readout `Re h`,
#   `Im h` are rounded before `C h` (2^-8 of each term): TOL = 2 * 2^-8, relative to
#   values of order 1. A bfloat16 carry (the old behaviour) misses CARRY_TOL by 100x.
TOL = 2 * 2.0**-8
CARRY_TOL = 1e-5
# Gradients run the products backwards on bfloat16 operands too (cotangents rounded as
# well), so each of a dozen steps adds a few 2^-8 errors: 8 * 2^-8 of the gradient's
# largest entry (measured: up to 0.016 for the LRU, ~0.005 for the others).
GRAD_TOL = 8 * 2.0**-8

CELLS = {
    "mingru": lambda **kw: rnnjax.mingru(H, **kw),
    "minlstm_log": lambda **kw: rnnjax.minlstm(H, log_space=True, **kw),
    "lru": lambda **kw: rnnjax.lru(H, r_min=0.5, r_max=0.95, **kw),
    "rglru": lambda **kw: rnnjax.rglru(H, **kw),
}
NAMES = list(CELLS)


@functools.cache
def _cell(name: str, mixed: bool) -> rnnjax.Cell:
  return CELLS[name](dtype=BF16) if mixed else CELLS[name]()


def _params(name: str):
  """The cell's float32 params, perturbed so that biases are non-zero (same for both cells)."""
  params = _cell(name, False).init(jax.random.key(0), I)
  keys = iter(jax.random.split(jax.random.key(1), len(params)))
  return jax.tree_util.tree_map(
      lambda p: p + 0.3 * jax.random.normal(next(keys), p.shape, p.dtype), params)


def _carry(name: str):
  """A random float32 (complex64 for the LRU) initial carry; `h >= 0` for the log-space cell."""
  rng = np.random.default_rng(2)
  h = rng.uniform(0.1, 1.0, (B, H)) if name == "minlstm_log" else rng.normal(0, 0.5, (B, H))
  if name == "lru":
    return rnnjax.HiddenState(h=jnp.asarray(h + 1j * rng.normal(0, 0.5, (B, H)), jnp.complex64))
  return rnnjax.HiddenState(h=jnp.asarray(h, jnp.float32))


def _xs():
  return jax.random.normal(jax.random.key(3), (T, B, I), jnp.float32)


def _bf16(a):
  """`a` rounded to bfloat16, as float64."""
  return np.asarray(jnp.asarray(a).astype(BF16), np.float64)


def _reference(name, params, xs, carry):
  """The float64 loop on params whose matrices (rank 2: the products' operands) and on inputs
  rounded to bfloat16; vectors (biases, decays) are used in float32, as the cells do."""
  rounded = type(params)(*(None if p is None else _bf16(p) if p.ndim == 2
                           else np.asarray(p, np.float64) for p in params))
  xs = _bf16(xs)
  if name == "lru":
    step = lambda s, x: lru_step(rounded, s, x)
    h = np.asarray(carry.h)
    state, zero = (h.real, h.imag), (np.zeros((B, H)),) * 2
  else:
    step = ((lambda s, x: rglru_step(rounded, s, x)) if name == "rglru"
            else (lambda s, x: ref_step(name, rounded, s, x)))
    state, zero = (np.asarray(carry.h),), (np.zeros((B, H)),)
  ys, final = reference.run_batch(step, state, xs, lengths=LENGTHS, zero_state=zero)
  return ys, (final[0] + 1j * final[1] if name == "lru" else final[0])


@functools.partial(jax.jit, static_argnums=0)
def _run(cell, params, xs, carry, lengths):
  """`unroll` on float32 and on bfloat16 xs, `parallel_unroll` (parallel, chunked) on float32."""
  run = lambda f, x, **kw: f(cell, params, x, carry, lengths=lengths, **kw)
  return {"unroll": run(rnnjax.unroll, xs),
          "unroll_bf16_xs": run(rnnjax.unroll, xs.astype(BF16)),
          "parallel": run(rnnjax.parallel_unroll, xs, engine="parallel"),
          "chunked": run(rnnjax.parallel_unroll, xs, engine="chunked", chunk=5)}


@functools.partial(jax.jit, static_argnums=0)
def _grads(cell, params, xs, carry, lengths, cotangent):
  """Gradients of `<ys, cotangent>` through `unroll` and the parallel engine, in float32."""
  def loss(p, f, **kw):
    ys, _ = f(cell, p, xs, carry, lengths=lengths, **kw)
    return jnp.sum(ys.astype(jnp.float32) * cotangent)
  return (jax.grad(loss)(params, rnnjax.unroll),
          jax.grad(loss)(params, rnnjax.parallel_unroll, engine="parallel"))


def _close(got, want, tol):
  got = np.asarray(got.astype(jnp.complex64) if jnp.iscomplexobj(got) else
                   got.astype(jnp.float32))
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_precision_against_the_reference(name):
  cell, params, carry, xs = _cell(name, True), _params(name), _carry(name), _xs()
  p_mixed = cell.init(jax.random.key(0), I)
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(p_mixed)} == {jnp.dtype(jnp.float32)}
  assert cell.initial_carry(p_mixed, (B,)).h.dtype == carry.h.dtype  # float32 / complex64
  out = _run(cell, params, xs, carry, jnp.asarray(LENGTHS))
  ref_ys, ref_h = _reference(name, params, xs, carry)
  ys, final = out["unroll"]
  assert ys.dtype == BF16 and final.h.dtype == carry.h.dtype
  _close(ys, ref_ys, TOL)
  _close(final.h, ref_h, TOL if name == "rglru" else CARRY_TOL)
  for engine in ("parallel", "chunked"):
    ys_p, final_p = out[engine]
    assert ys_p.dtype == BF16 and final_p.h.dtype == carry.h.dtype, engine
    _close(ys_p, np.asarray(ys.astype(jnp.float32)), TOL)
    _close(final_p.h, np.asarray(final.h), TOL)
  # Inputs are cast to bfloat16 first: float32 and bfloat16 xs give the same bits.
  ys16, final16 = out["unroll_bf16_xs"]
  np.testing.assert_array_equal(np.asarray(ys16, np.float32), np.asarray(ys, np.float32))
  np.testing.assert_array_equal(np.asarray(final16.h), np.asarray(final.h))


@pytest.mark.parametrize("name", NAMES)
def test_mixed_precision_gradients(name):
  params, carry, xs = _params(name), _carry(name), _xs()
  out = I if name == "lru" else H  # The LRU's output size is its input size by default.
  cot = jax.random.normal(jax.random.key(4), (T, B, out), jnp.float32)
  lengths = jnp.asarray(LENGTHS)
  want, _ = _grads(_cell(name, False), params, xs, carry, lengths, cot)
  for got in _grads(_cell(name, True), params, xs, carry, lengths, cot):
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
      assert g.dtype == w.dtype == jnp.float32
      g, w = np.asarray(g), np.asarray(w)
      assert np.isfinite(g).all()
      np.testing.assert_allclose(g, w, rtol=0, atol=GRAD_TOL * np.abs(w).max())


@pytest.mark.parametrize("name", NAMES)
def test_integer_inputs_are_refused(name):
  cell = _cell(name, True)
  params = jax.eval_shape(lambda k: cell.init(k, I), jax.random.key(0))
  carry = jax.eval_shape(lambda p: cell.initial_carry(p, (B,)), params)
  family = name.split("_")[0]
  with pytest.raises(TypeError, match=re.escape(
      f"rnnjax.{family}.apply: `x` must hold floating-point values (any float dtype; the cell "
      "computes in bfloat16), got dtype int32.")):
    jax.eval_shape(cell.apply, params, carry, jax.ShapeDtypeStruct((B, I), jnp.int32))
  ints = jax.ShapeDtypeStruct((T, B, I), jnp.int32)
  with pytest.raises(TypeError, match=r"`xs` must hold floating-point values .* got dtype int32"):
    jax.eval_shape(linear.recurrence_of(cell).coefficients, params, ints)
  for fn in (rnnjax.unroll, rnnjax.parallel_unroll):
    with pytest.raises(TypeError, match=r"xs has dtype int32"):
      jax.eval_shape(lambda p, x, fn=fn: fn(cell, p, x), params, ints)
