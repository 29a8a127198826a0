"""The mixed-precision policy of the classic cells (`dtype`, `param_dtype`), against NumPy.

The reference is each cell's equations in float64 NumPy, with the one rounding that
mixed precision prescribes: the operands of every matrix product (inputs, weights,
the recurrent state) rounded to bfloat16; sums, gates and the carry stay wide. The
cells' float32 carry then matches the reference to float32 precision (measured: at
most 1.7e-7 over 5 seeds), where the float32 cell, without those roundings, is 2e-3
to 1.7e-2 away: the test tells the two apart.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import rnnjax
from tests import reference as ref

T, B, I, H = 8, 3, 4, 5
LENGTHS = np.array([T, 5, 0])
CARRY_TOL = 1e-5  # float32 arithmetic on the same rounded operands
# The outputs are the carry rounded to bfloat16 (8 bits of mantissa): within 2^-8 of it.
OUT_RTOL = 2.0 ** -8


def _bf16(a):
  """`a` rounded to bfloat16, as float64."""
  return np.asarray(np.asarray(a, np.float64).astype(ml_dtypes.bfloat16), np.float64)


def _mm(a, w):
  return _bf16(a) @ _bf16(w)


def _sig(v):
  return 1.0 / (1.0 + np.exp(-v))


def _split(a, n):
  return np.split(np.asarray(a, np.float64), n, axis=-1)


def _lstm(p, state, x):
  h, c = state
  z = _mm(x, p.w_i) + np.asarray(p.b_i, np.float64) + _mm(h, p.w_h) + np.asarray(p.b_h,
                                                                                 np.float64)
  i, f, g, o = _split(z, 4)
  c = _sig(f) * c + _sig(i) * np.tanh(g)
  h = _sig(o) * np.tanh(c)
  return (h, c), h


def _gru(p, state, x, reset_after):
  (h,) = state
  a_r, a_z, a_n = _split(_mm(x, p.w_i) + np.asarray(p.b_i, np.float64), 3)
  w_r, w_z, w_n = _split(p.w_h, 3)
  b_r, b_z, b_n = _split(p.b_h, 3)
  r = _sig(a_r + _mm(h, w_r) + b_r)
  z = _sig(a_z + _mm(h, w_z) + b_z)
  if reset_after:
    n = np.tanh(a_n + r * (_mm(h, w_n) + b_n))
  else:
    n = np.tanh(a_n + _mm(r * h, w_n) + b_n)
  h = (1 - z) * n + z * h
  return (h,), h


def _elman(p, state, x):
  (h,) = state
  h = np.tanh(_mm(x, p.w_i) + np.asarray(p.b_i, np.float64) + _mm(h, p.w_h)
              + np.asarray(p.b_h, np.float64))
  return (h,), h


def _mgu(p, state, x):
  (h,) = state
  a_f, a_n = _split(_mm(x, p.w_i) + np.asarray(p.b_i, np.float64), 2)
  w_f, w_n = _split(p.w_h, 2)
  b_f, b_n = _split(p.b_h, 2)
  f = _sig(a_f + _mm(h, w_f) + b_f)
  n = np.tanh(a_n + f * (_mm(h, w_n) + b_n))
  h = (1 - f) * n + f * h
  return (h,), h


CELLS = {
    "lstm": (lambda **kw: rnnjax.lstm(H, **kw), _lstm),
    "gru": (lambda **kw: rnnjax.gru(H, **kw), functools.partial(_gru, reset_after=True)),
    "gru_reset_before": (lambda **kw: rnnjax.gru(H, reset_after=False, **kw),
                         functools.partial(_gru, reset_after=False)),
    "elman": (lambda **kw: rnnjax.elman(H, **kw), _elman),
    "mgu": (lambda **kw: rnnjax.mgu(H, **kw), _mgu),
}


def _params(cell, seed):
  """Init plus noise (so biases and every gate matter), in the cell's param dtype."""
  params = cell.init(jax.random.key(seed), I)
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree_util.tree_unflatten(tree, [
      w + (0.3 * jax.random.normal(k, w.shape)).astype(w.dtype) for w, k in zip(leaves, keys,
                                                                               strict=True)])


@functools.partial(jax.jit, static_argnums=0)
def _run(cell, params, xs, lengths):
  return rnnjax.unroll(cell, params, xs, lengths=lengths)


# ---- The policy: which dtype holds what. ----

@pytest.mark.parametrize("name", CELLS)
def test_dtypes_of_params_carry_and_outputs(name):
  make = CELLS[name][0]
  cases = [  # (factory kwargs, params and carry, outputs)
      ({}, "float32", "float32"),
      (dict(dtype=jnp.bfloat16), "float32", "bfloat16"),
      (dict(dtype="bfloat16", param_dtype=jnp.bfloat16), "bfloat16", "bfloat16"),
      (dict(dtype=jnp.float16), "float32", "float16"),
      (dict(param_dtype=jnp.bfloat16), "bfloat16", "float32"),
  ]
  for kwargs, stored, out in cases:
    cell = make(**kwargs)
    params = jax.eval_shape(lambda k, c=cell: c.init(k, I), jax.random.key(0))
    carry = jax.eval_shape(lambda p, c=cell: c.initial_carry(p, (B,)), params)
    for xs_dtype in (jnp.float32, jnp.bfloat16):  # any floating input is cast
      ys, final = jax.eval_shape(lambda p, x, c=cell: rnnjax.unroll(c, p, x), params,
                                 jax.ShapeDtypeStruct((T, B, I), xs_dtype))
      assert {a.dtype.name for a in jax.tree_util.tree_leaves(params)} == {stored}, kwargs
      assert {a.dtype.name for a in jax.tree_util.tree_leaves(carry)} == {stored}, kwargs
      assert {a.dtype.name for a in jax.tree_util.tree_leaves(final)} == {stored}, kwargs
      assert ys.dtype.name == out, kwargs


def test_float64_keeps_float64_params():
  with jax.enable_x64(True):
    params = jax.eval_shape(lambda k: rnnjax.lstm(H, dtype=jnp.float64).init(k, I),
                            jax.random.key(0))
  assert {a.dtype.name for a in jax.tree_util.tree_leaves(params)} == {"float64"}


@pytest.mark.parametrize("bad", [jnp.int32, "nope"])
def test_param_dtype_must_be_floating(bad):
  with pytest.raises(TypeError, match=re.escape("rnnjax.gru: `param_dtype` must be a floating "
                                                "dtype, got")):
    rnnjax.gru(H, param_dtype=bad)


def test_param_dtype_is_part_of_the_identity():
  assert rnnjax.lstm(H, dtype=jnp.bfloat16) == rnnjax.lstm(H, dtype="bfloat16")
  assert rnnjax.lstm(H, dtype=jnp.bfloat16) != rnnjax.lstm(H, dtype=jnp.bfloat16,
                                                          param_dtype=jnp.bfloat16)
  assert repr(rnnjax.gru(H, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)) == (
      "gru(hidden_size=5, dtype='bfloat16', param_dtype='bfloat16')")


# ---- Values: the bfloat16 products against NumPy, and against float32. ----

@pytest.mark.parametrize("name", CELLS)
def test_mixed_precision_equals_the_rounded_equations(name):
  make, step = CELLS[name]
  cell = make(dtype=jnp.bfloat16)
  params = _params(cell, 3)
  xs = jax.random.normal(jax.random.key(4), (T, B, I))
  ys, final = _run(cell, params, xs, jnp.asarray(LENGTHS))
  zeros = tuple(np.zeros((B, a.shape[-1])) for a in jax.tree_util.tree_leaves(
      cell.initial_carry(params, (B,))))
  ref_ys, ref_final = ref.run_batch(functools.partial(step, params), zeros, xs, lengths=LENGTHS)
  assert ys.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(ys, np.float64), ref_ys, rtol=OUT_RTOL, atol=1e-6)
  for got, want in zip(jax.tree_util.tree_leaves(final), ref_final, strict=True):
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=CARRY_TOL)


# The documented tolerance of mixed precision against float32 (docs/cells.md). Measured
# (this test's inputs, 3 seeds, T=64): at most 6.6e-3 on outputs and carries of size up
# to ~1; the bound leaves a factor 3.
BF16_VS_F32 = 2e-2


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_mixed_precision_is_close_to_float32(name):
  make = CELLS[name][0]
  full, mixed = make(), make(dtype=jnp.bfloat16)
  params = _params(full, 5)  # float32: both cells take the same params
  xs = jax.random.normal(jax.random.key(6), (64, B, I))
  lengths = jnp.asarray([64, 40, 1])
  want, want_final = _run(full, params, xs, lengths)
  got, got_final = _run(mixed, params, xs, lengths)
  assert float(jnp.abs(got.astype(jnp.float32) - want).max()) <= BF16_VS_F32
  for a, b in zip(jax.tree_util.tree_leaves(got_final), jax.tree_util.tree_leaves(want_final),
                  strict=True):
    assert float(jnp.abs(a - b).max()) <= BF16_VS_F32


# ---- sequence_model carries the policy through. ----

def test_sequence_model_in_mixed_precision():
  core16 = rnnjax.gru(H, dtype=jnp.bfloat16)
  model16 = rnnjax.sequence_model(core16, input_size=1, output_size=3, vocab_size=7,
                                  embed_size=I, dtype=jnp.bfloat16)
  model32 = rnnjax.sequence_model(rnnjax.gru(H), input_size=1, output_size=3, vocab_size=7,
                                  embed_size=I)
  params = model16.init(jax.random.key(0))
  # The same float32 params as the float32 model's (the policy keeps params in float32).
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: a.dtype == b.dtype == jnp.float32 and bool((a == b).all()), params,
      model32.init(jax.random.key(0))))
  ids = jax.random.randint(jax.random.key(1), (T, B), 0, 7)

  @jax.jit
  def run(p):
    def loss(p, model):
      preds, _ = model.apply(p, ids, lengths=jnp.asarray(LENGTHS))
      return jnp.mean(preds ** 2), preds
    return [jax.value_and_grad(loss, has_aux=True)(p, m) for m in (model16, model32)]

  ((_, preds16), grads16), ((_, preds32), grads32) = run(params)
  assert preds16.dtype == jnp.float32  # losses stay in float32
  assert float(jnp.abs(preds16 - preds32).max()) <= BF16_VS_F32
  for g16, g32 in zip(jax.tree_util.tree_leaves(grads16), jax.tree_util.tree_leaves(grads32),
                      strict=True):
    assert g16.dtype == jnp.float32
    # Measured over 4 seeds: at most 8.8e-3 of each leaf's scale; the bound leaves 3x.
    scale = float(jnp.abs(g32).max()) + 1e-6
    assert float(jnp.abs(g16 - g32).max()) <= 3e-2 * scale


def test_a_float64_param_dtype_is_not_the_default():
  # np.dtype("float64") == None is True in NumPy: the identity must not rely on it.
  assert rnnjax.elman(H, param_dtype=jnp.float64) != rnnjax.elman(H)
  assert repr(rnnjax.elman(H, param_dtype=jnp.float64)) == (
      "elman(hidden_size=5, param_dtype='float64')")
