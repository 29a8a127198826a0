"""Tests for the built-in cells (`rnnjax.elman`, `lstm`, `gru`, `mgu`).

Every numeric check compares rnnjax, run under `jit`, with an independent
reference: the float64 NumPy equations in `tests/reference.py`, Flax's own
linen cells given the same weights, or finite differences. All tests share the
sizes below (JAX compiles once per shape); they vary values, not shapes.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import rnnjax
from tests import reference

T, B, I, H, P = 7, 3, 4, 5, 3
TOL = 1e-5  # float32 against the float64 reference
BF16_TOL = 5e-2
LENGTHS = (T, 4, 0)


class Variant(NamedTuple):
  """One cell configuration, its reference step and its documented layout."""

  factory: Callable[..., rnnjax.Cell]
  options: dict[str, Any]
  step: Callable[..., Any]  # reference.<cell>_step(params, state, x, **step_options)
  step_options: dict[str, Any]
  params_type: type
  shapes: dict[str, tuple[int, ...] | None]  # params field -> shape; None: the field is None
  carry_type: type
  carry_shapes: dict[str, tuple[int, ...]]  # carry field -> trailing (state) shape
  b_i: tuple[float, ...] | None  # documented initial b_i, one value per gate; None: no bias


def _layout(gates: int, *, rows: int = H, bias: bool = True) -> dict[str, Any]:
  b = (gates * H,) if bias else None
  return {"w_i": (I, gates * H), "w_h": (rows, gates * H), "b_i": b, "b_h": b}


_HIDDEN = {"h": (H,)}
VARIANTS = {
    "elman_tanh": Variant(
        rnnjax.elman, {}, reference.elman_step, {"nonlinearity": "tanh"},
        rnnjax.ElmanParams, _layout(1), rnnjax.HiddenState, _HIDDEN, (0.0,)),
    "elman_relu": Variant(
        rnnjax.elman, {"nonlinearity": "relu"}, reference.elman_step, {"nonlinearity": "relu"},
        rnnjax.ElmanParams, _layout(1), rnnjax.HiddenState, _HIDDEN, (0.0,)),
    "elman_no_bias": Variant(
        rnnjax.elman, {"use_bias": False}, reference.elman_step, {},
        rnnjax.ElmanParams, _layout(1, bias=False), rnnjax.HiddenState, _HIDDEN, None),
    "lstm": Variant(
        rnnjax.lstm, {}, reference.lstm_step, {},
        rnnjax.LSTMParams, {**_layout(4), "w_proj": None}, rnnjax.LSTMState,
        {"h": (H,), "c": (H,)}, (0.0, 1.0, 0.0, 0.0)),
    "lstm_proj": Variant(
        rnnjax.lstm, {"proj_size": P}, reference.lstm_step, {},
        rnnjax.LSTMParams, {**_layout(4, rows=P), "w_proj": (H, P)}, rnnjax.LSTMState,
        {"h": (P,), "c": (H,)}, (0.0, 1.0, 0.0, 0.0)),
    "lstm_no_bias": Variant(
        rnnjax.lstm, {"use_bias": False}, reference.lstm_step, {},
        rnnjax.LSTMParams, {**_layout(4, bias=False), "w_proj": None}, rnnjax.LSTMState,
        {"h": (H,), "c": (H,)}, None),
    "gru_reset_after": Variant(
        rnnjax.gru, {"reset_after": True}, reference.gru_step, {"reset_after": True},
        rnnjax.GRUParams, _layout(3), rnnjax.HiddenState, _HIDDEN, (0.0, 0.0, 0.0)),
    "gru_reset_before": Variant(
        rnnjax.gru, {"reset_after": False}, reference.gru_step, {"reset_after": False},
        rnnjax.GRUParams, _layout(3), rnnjax.HiddenState, _HIDDEN, (0.0, 0.0, 0.0)),
    "gru_no_bias": Variant(
        rnnjax.gru, {"use_bias": False}, reference.gru_step, {"reset_after": True},
        rnnjax.GRUParams, _layout(3, bias=False), rnnjax.HiddenState, _HIDDEN, None),
    "mgu_reset_after": Variant(
        rnnjax.mgu, {"reset_after": True}, reference.mgu_step, {"reset_after": True},
        rnnjax.MGUParams, _layout(2), rnnjax.HiddenState, _HIDDEN, (1.0, 0.0)),
    "mgu_reset_before": Variant(
        rnnjax.mgu, {"reset_after": False}, reference.mgu_step, {"reset_after": False},
        rnnjax.MGUParams, _layout(2), rnnjax.HiddenState, _HIDDEN, (1.0, 0.0)),
    "mgu_no_bias": Variant(
        rnnjax.mgu, {"use_bias": False}, reference.mgu_step, {"reset_after": True},
        rnnjax.MGUParams, _layout(2, bias=False), rnnjax.HiddenState, _HIDDEN, None),
}
NAMES = list(VARIANTS)
FACTORIES = {"elman": rnnjax.elman, "lstm": rnnjax.lstm, "gru": rnnjax.gru, "mgu": rnnjax.mgu}
# The cells whose factories take `hidden_size` and `dtype` alike: their argument errors are
# tested together in section 7 (the minimal cells' other tests are in test_minimal_cells).
ARG_FACTORIES = {**FACTORIES, "mingru": rnnjax.mingru, "minlstm": rnnjax.minlstm}


# ---- Jitted entry points. The cell is static; cells are cached so each compiles once. ----

@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(cell, key, input_size):
  return cell.init(key, input_size)


@functools.partial(jax.jit, static_argnums=0)
def _apply(cell, params, carry, x):
  return cell.apply(params, carry, x)


@functools.partial(jax.jit, static_argnums=0)
def _apply_with_key(cell, params, carry, x, key):
  return cell.apply(params, carry, x, key=key)


@functools.partial(jax.jit, static_argnums=0)
def _unroll(cell, params, xs, carry, lengths):
  return rnnjax.unroll(cell, params, xs, carry, lengths=lengths)


@functools.cache
def _cell(name: str, dtype: Any = jnp.float32) -> rnnjax.Cell:
  """The variant with params, carry and computation all in `dtype`."""
  v = VARIANTS[name]
  return v.factory(H, dtype=dtype, param_dtype=dtype, **v.options)


# ---- Helpers. ----

def _normal(rng, shape, dtype=jnp.float32, scale=1.0):
  return jnp.asarray(rng.normal(scale=scale, size=shape), dtype)


def _params(cell, rng):
  """Random params (so biases are non-zero) in the layout, shapes and dtype of `cell.init`."""
  shapes = jax.eval_shape(lambda key: cell.init(key, I), jax.random.key(0))
  return jax.tree_util.tree_map(lambda s: _normal(rng, s.shape, s.dtype, 0.5), shapes)


# The variants whose `init` runs for real, all in one jitted program: the initialisers (QR for
# the orthogonal blocks) are slow to compile. The variants left out differ from one of these only
# in options that `init` does not read (nonlinearity, reset_after), in use_bias, or (lstm) in
# proj_size, which only changes the shapes; `test_init_layout` checks the layouts from the trace.
INIT_CASES = {
    "elman": ("elman_tanh", jnp.float32),
    "lstm_proj": ("lstm_proj", jnp.float32),
    "gru": ("gru_reset_after", jnp.float32),
    "mgu": ("mgu_reset_after", jnp.float32),
    "mgu_bfloat16": ("mgu_reset_after", jnp.bfloat16),  # drawn in float32 and cast
}


@jax.jit
def _init_all(key):
  keys = jax.random.split(key, len(INIT_CASES))
  return {case: _cell(name, dtype).init(k, I)
          for (case, (name, dtype)), k in zip(INIT_CASES.items(), keys, strict=True)}


@functools.cache
def _initialised(seed: int) -> dict[str, Any]:
  return _init_all(jax.random.key(seed))


def _random_carry(name, batch_shape, rng, dtype=jnp.float32):
  """A random carry built from the documented field names and shapes (not from rnnjax)."""
  v = VARIANTS[name]
  return v.carry_type(**{f: _normal(rng, (*batch_shape, *s), dtype, 0.5)
                         for f, s in v.carry_shapes.items()})


def _state(name, carry):
  """rnnjax carry -> the reference's tuple of float64 arrays (`(h,)` or `(h, c)`)."""
  return tuple(np.asarray(getattr(carry, f), np.float64) for f in VARIANTS[name].carry_shapes)


def _ref_step(name, params):
  v = VARIANTS[name]
  return lambda state, x: v.step(params, state, x, **v.step_options)


def _f64(a):
  return np.asarray(a, np.float64)


def _assert_close(actual, expected, tol=TOL):
  np.testing.assert_allclose(_f64(actual), _f64(expected), rtol=tol, atol=tol)


def _assert_carry_close(name, carry, ref_state, tol=TOL):
  assert type(carry) is VARIANTS[name].carry_type
  for field, ref in zip(VARIANTS[name].carry_shapes, ref_state, strict=True):
    _assert_close(getattr(carry, field), ref, tol)


# ---- 1. Every variant: one step and a batch unroll against the reference equations. ----

@pytest.mark.parametrize("name", NAMES)
def test_apply_matches_reference(name, rng):
  cell = _cell(name)
  params = _params(cell, rng)
  carry = _random_carry(name, (B,), rng)
  x = _normal(rng, (B, I))
  new_carry, y = _apply(cell, params, carry, x)
  ref_state, ref_y = _ref_step(name, params)(_state(name, carry), _f64(x))
  assert y.shape == (B, *VARIANTS[name].carry_shapes["h"])
  assert y.dtype == jnp.float32
  _assert_close(y, ref_y)
  _assert_carry_close(name, new_carry, ref_state)


@pytest.mark.parametrize("name", NAMES)
def test_unroll_matches_reference(name, rng):
  cell = _cell(name)
  params = _params(cell, rng)
  step = _ref_step(name, params)
  xs = _normal(rng, (T, B, I))
  carry = _random_carry(name, (B,), rng)
  ys, final = _unroll(cell, params, xs, carry, None)
  ref_ys, ref_final = reference.run_batch(step, _state(name, carry), xs)
  _assert_close(ys, ref_ys)
  _assert_carry_close(name, final, ref_final)

  # Default (zero) carry and variable lengths.
  zeros = tuple(np.zeros((B, *s)) for s in VARIANTS[name].carry_shapes.values())
  ys, final = _unroll(cell, params, xs, None, jnp.asarray(LENGTHS, jnp.int32))
  ref_ys, ref_final = reference.run_batch(step, zeros, xs, lengths=LENGTHS)
  _assert_close(ys, ref_ys)
  _assert_carry_close(name, final, ref_final)


@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(0.05, 3.0))
@pytest.mark.parametrize("name", ["elman_relu", "lstm_proj", "gru_reset_before",
                                  "mgu_reset_after"])
def test_apply_matches_reference_for_any_values(name, seed, scale):
  """Small to large weights (saturated gates included); reuses the compiled step above."""
  rng = np.random.default_rng(seed)
  cell = _cell(name)
  params = jax.tree_util.tree_map(lambda a: a * scale, _params(cell, rng))
  carry = _random_carry(name, (B,), rng)
  x = _normal(rng, (B, I), scale=scale)
  new_carry, y = _apply(cell, params, carry, x)
  ref_state, ref_y = _ref_step(name, params)(_state(name, carry), _f64(x))
  _assert_close(y, ref_y)
  _assert_carry_close(name, new_carry, ref_state)


@pytest.mark.parametrize("name", ["elman_tanh", "lstm_proj", "gru_reset_after",
                                  "mgu_reset_after"])
def test_apply_accepts_and_ignores_key(name, rng):
  cell = _cell(name)
  params = _params(cell, rng)
  carry = _random_carry(name, (B,), rng)
  x = _normal(rng, (B, I))
  new_carry, y = _apply_with_key(cell, params, carry, x, jax.random.key(3))
  ref_state, ref_y = _ref_step(name, params)(_state(name, carry), _f64(x))
  _assert_close(y, ref_y)
  _assert_carry_close(name, new_carry, ref_state)


# ---- 2. Batch polymorphism: no batch axes, two batch axes, a broadcast carry. ----

# Every code path that handles shapes: use_bias and relu only add or drop elementwise terms.
POLY_NAMES = ["elman_tanh", "lstm", "lstm_proj", "gru_reset_after", "gru_reset_before",
              "mgu_reset_after", "mgu_reset_before"]


@pytest.mark.parametrize("name", POLY_NAMES)
def test_batch_polymorphism(name, rng):
  cell = _cell(name)
  params = _params(cell, rng)
  step = _ref_step(name, params)

  # No batch axes: x [I], xs [T, I].
  carry = _random_carry(name, (), rng)
  x = _normal(rng, (I,))
  new_carry, y = _apply(cell, params, carry, x)
  ref_state, ref_y = step(_state(name, carry), _f64(x))
  _assert_close(y, ref_y)
  _assert_carry_close(name, new_carry, ref_state)
  xs = _normal(rng, (T, I))
  ys, final = _unroll(cell, params, xs, carry, None)
  ref_ys, ref_final = reference.run_sequence(step, _state(name, carry), xs)
  _assert_close(ys, ref_ys)
  _assert_carry_close(name, final, ref_final)

  # Two batch axes: x [2, 3, I], xs [T, 2, 3, I].
  carry = _random_carry(name, (2, 3), rng)
  x = _normal(rng, (2, 3, I))
  new_carry, y = _apply(cell, params, carry, x)
  ref_state, ref_y = step(_state(name, carry), _f64(x))
  assert y.shape == ref_y.shape
  _assert_close(y, ref_y)
  _assert_carry_close(name, new_carry, ref_state)
  xs = _normal(rng, (T, 2, 3, I))
  ys, final = _unroll(cell, params, xs, carry, None)
  flat_state = tuple(s.reshape((6, -1)) for s in _state(name, carry))
  ref_ys, ref_final = reference.run_batch(step, flat_state, _f64(xs).reshape((T, 6, I)))
  assert ys.shape == (T, 2, 3, ref_ys.shape[-1])
  _assert_close(ys, ref_ys.reshape(ys.shape))
  _assert_carry_close(name, final, tuple(s.reshape((2, 3, -1)) for s in ref_final))

  # An unbatched carry broadcasts against batched inputs x [B, I].
  carry = _random_carry(name, (), rng)
  x = _normal(rng, (B, I))
  new_carry, y = _apply(cell, params, carry, x)
  ref_state, ref_y = step(_state(name, carry), _f64(x))
  assert y.shape == ref_y.shape == (B, ref_y.shape[-1])
  _assert_close(y, ref_y)
  _assert_carry_close(name, new_carry, ref_state)


# ---- 3. Parity with Flax's linen cells given the same weights. ----

def _cat(p, names, field):
  return jnp.concatenate([p[n][field] for n in names], axis=-1)


def _zeros(n):
  return jnp.zeros((n,), jnp.float32)


def _check_flax_names(p, with_bias, without_bias):
  assert set(p) == set(with_bias) | set(without_bias)
  for n in with_bias:
    assert set(p[n]) == {"kernel", "bias"}, n
  for n in without_bias:
    assert set(p[n]) == {"kernel"}, n


def _from_flax_lstm(p):
  """`LSTMCell` and `OptimizedLSTMCell`: input kernels ii, if, ig, io without biases; hidden
  kernels hi, hf, hg, ho with biases."""
  gi, gh = ["ii", "if", "ig", "io"], ["hi", "hf", "hg", "ho"]
  _check_flax_names(p, gh, gi)
  return rnnjax.LSTMParams(w_i=_cat(p, gi, "kernel"), w_h=_cat(p, gh, "kernel"),
                           b_i=_zeros(4 * H), b_h=_cat(p, gh, "bias"), w_proj=None)


def _from_flax_gru(p):
  """`GRUCell`: ir, iz, in with biases; hr, hz without; hn with a bias."""
  _check_flax_names(p, ["ir", "iz", "in", "hn"], ["hr", "hz"])
  return rnnjax.GRUParams(
      w_i=_cat(p, ["ir", "iz", "in"], "kernel"), w_h=_cat(p, ["hr", "hz", "hn"], "kernel"),
      b_i=_cat(p, ["ir", "iz", "in"], "bias"),
      b_h=jnp.concatenate([_zeros(2 * H), p["hn"]["bias"]]))


def _from_flax_simple(p):
  """`SimpleCell`: i with a bias, h without."""
  _check_flax_names(p, ["i"], ["h"])
  return rnnjax.ElmanParams(w_i=p["i"]["kernel"], w_h=p["h"]["kernel"], b_i=p["i"]["bias"],
                            b_h=_zeros(H))


def _from_flax_mgu(p):
  """`MGUCell`: if, in with biases; hf without; hn with a bias (reset_gate=True)."""
  _check_flax_names(p, ["if", "in", "hn"], ["hf"])
  return rnnjax.MGUParams(
      w_i=_cat(p, ["if", "in"], "kernel"), w_h=_cat(p, ["hf", "hn"], "kernel"),
      b_i=_cat(p, ["if", "in"], "bias"), b_h=jnp.concatenate([_zeros(H), p["hn"]["bias"]]))


FLAX_CASES = {  # Flax module, rnnjax variant, params mapping
    "LSTMCell": (nn.LSTMCell(features=H), "lstm", _from_flax_lstm),
    "OptimizedLSTMCell": (nn.OptimizedLSTMCell(features=H), "lstm", _from_flax_lstm),
    "GRUCell": (nn.GRUCell(features=H), "gru_reset_after", _from_flax_gru),
    "SimpleCell": (nn.SimpleCell(features=H), "elman_tanh", _from_flax_simple),
    "MGUCell": (nn.MGUCell(features=H), "mgu_reset_after", _from_flax_mgu),
}


def _to_flax_carry(carry):
  """Flax's LSTM carry is `(c, h)`; the other cells carry `h` itself."""
  return (carry.c, carry.h) if isinstance(carry, rnnjax.LSTMState) else carry.h


@pytest.mark.parametrize("case", FLAX_CASES)
def test_flax_parity(case, rng):
  module, name, from_flax = FLAX_CASES[case]
  cell = _cell(name)
  xs = _normal(rng, (T, B, I))
  carry = _random_carry(name, (B,), rng)
  flax_carry = _to_flax_carry(carry)
  # Flax's own param tree (names and shapes), filled with random values: non-zero biases.
  variables = jax.eval_shape(module.init, jax.random.key(0), flax_carry, xs[0])
  variables = {"params": jax.tree_util.tree_map(lambda s: _normal(rng, s.shape, s.dtype, 0.5),
                                                variables["params"])}

  @jax.jit
  def flax_run(variables, c, xs):
    ys = []
    for x in xs:
      c, y = module.apply(variables, c, x)
      ys.append(y)
    return jnp.stack(ys), c

  flax_ys, flax_final = flax_run(variables, flax_carry, xs)
  ys, final = _unroll(cell, from_flax(variables["params"]), xs, carry, None)
  _assert_close(ys, flax_ys)
  jax.tree_util.tree_map(_assert_close, _to_flax_carry(final), flax_final)


# ---- 4. Gradients against finite differences, in float64. ----

# Every cell and code path; the use_bias=False variants only drop terms whose gradients the
# others check (and each gradient check costs two compilations).
GRAD_NAMES = [n for n in NAMES if not n.endswith("no_bias")]


@pytest.mark.parametrize("name", GRAD_NAMES)
def test_gradients_match_finite_differences(name, rng):
  with jax.enable_x64(True):
    cell = _cell(name, jnp.float64)
    params = _params(cell, rng)
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(params))
    xs = _normal(rng, (T, B, I), jnp.float64)
    carry = _random_carry(name, (B,), rng, jnp.float64)
    lengths = jnp.asarray((T, 4, 1), jnp.int64)
    run = lambda params, xs, carry: _unroll(cell, params, xs, carry, lengths)
    check_grads(run, (params, xs, carry), order=1, modes=["rev"])


def test_float64_unroll_with_int32_lengths(rng):
  """int32 lengths (the usual dtype) must work with 64-bit types enabled and strict promotion."""
  name = "gru_reset_after"
  with jax.enable_x64(True):
    cell = _cell(name, jnp.float64)
    params = _params(cell, rng)
    xs = _normal(rng, (T, B, I), jnp.float64)
    ys, final = _unroll(cell, params, xs, None, jnp.asarray(LENGTHS, jnp.int32))
    zeros = (np.zeros((B, H)),)
    ref_ys, ref_final = reference.run_batch(_ref_step(name, params), zeros, xs, lengths=LENGTHS)
    _assert_close(ys, ref_ys, 1e-12)
    _assert_carry_close(name, final, ref_final, 1e-12)


# ---- 5. bfloat16. ----

@pytest.mark.parametrize("name", NAMES)
def test_bfloat16(name, rng):
  cell = _cell(name, jnp.bfloat16)
  params = _params(cell, rng)
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree_util.tree_leaves(params))
  step = _ref_step(name, params)  # The reference reads the bfloat16 weights exactly, in float64.
  xs = _normal(rng, (T, B, I), jnp.bfloat16)
  carry = _random_carry(name, (B,), rng, jnp.bfloat16)

  ys, final = _unroll(cell, params, xs, carry, None)
  assert ys.dtype == jnp.bfloat16
  assert all(leaf.dtype == jnp.bfloat16 for leaf in final)
  ref_ys, ref_final = reference.run_batch(step, _state(name, carry), xs)
  _assert_close(ys, ref_ys, BF16_TOL)
  _assert_carry_close(name, final, ref_final, BF16_TOL)


# ---- 6. Initialisers, shapes and the initial carry, as documented. ----

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", NAMES)
def test_init_layout(name, dtype):
  """Types, field names, shapes and dtypes of the params, as in the NamedTuple comments."""
  v = VARIANTS[name]
  cell = _cell(name, dtype)
  params = jax.eval_shape(lambda key: cell.init(key, I), jax.random.key(0))
  assert type(params) is v.params_type
  assert params._fields == tuple(v.shapes)
  for field, shape in v.shapes.items():
    leaf = getattr(params, field)
    if shape is None:
      assert leaf is None, field
    else:
      assert leaf.shape == shape, field
      assert leaf.dtype == dtype, field
  assert cell.input_size(params) == I


@pytest.mark.parametrize("case", INIT_CASES)
def test_init_values(case):
  """Biases as documented, one orthogonal block per gate in w_h, deterministic in the key."""
  name, dtype = INIT_CASES[case]
  v = VARIANTS[name]
  params = _initialised(0)[case]
  assert all(leaf.dtype == dtype for leaf in jax.tree_util.tree_leaves(params))
  for field, shape in v.shapes.items():
    assert (getattr(params, field) is None) == (shape is None), field
    assert shape is None or getattr(params, field).shape == shape, field
  np.testing.assert_array_equal(_f64(params.b_i), np.repeat(v.b_i, H))
  np.testing.assert_array_equal(_f64(params.b_h), np.zeros(len(v.b_i) * H))

  tol = TOL if dtype == jnp.float32 else 2e-2
  w_h = _f64(params.w_h)
  rows = w_h.shape[0]
  blocks = [w_h[:, k * H:(k + 1) * H] for k in range(len(v.b_i))]
  for blk in blocks:
    if rows == H:  # square: W^T W = I
      np.testing.assert_allclose(blk.T @ blk, np.eye(H), atol=tol)
    else:  # [P, H] with P < H: orthonormal rows
      np.testing.assert_allclose(blk @ blk.T, np.eye(rows), atol=tol)
  for a, b in itertools.pairwise(blocks):  # independent draws per gate
    assert not np.allclose(a, b)
  assert np.all(np.isfinite(_f64(params.w_i))) and np.any(_f64(params.w_i))

  again = _init_all(jax.random.key(0))[case]
  other = _initialised(1)[case]
  for field in ("w_i", "w_h", "w_proj"):
    if getattr(params, field, None) is not None:
      np.testing.assert_array_equal(_f64(getattr(again, field)), _f64(getattr(params, field)))
      assert not np.allclose(_f64(getattr(other, field)), _f64(getattr(params, field)))


@pytest.mark.parametrize(("factory", "gate", "gates"), [(rnnjax.lstm, 1, 4), (rnnjax.mgu, 0, 2)],
                         ids=["lstm", "mgu"])
def test_forget_bias_argument(factory, gate, gates):
  zeros = jax.nn.initializers.zeros  # cheap to compile; the weights do not matter here
  cell = factory(H, forget_bias=-2.5, kernel_init=zeros, recurrent_init=zeros)
  params = _init(cell, jax.random.key(0), I)
  expected = np.zeros(gates * H, np.float32)
  expected[gate * H:(gate + 1) * H] = -2.5
  np.testing.assert_array_equal(params.b_i, expected)
  np.testing.assert_array_equal(params.b_h, np.zeros(gates * H, np.float32))


@pytest.mark.parametrize("family", FACTORIES)
def test_custom_initialisers_draw_one_block_per_gate(family):
  gates = {"elman": 1, "lstm": 4, "gru": 3, "mgu": 2}[family]
  calls = []

  def constant(value):
    def init(key, shape, dtype=jnp.float32):
      del key
      calls.append((value, tuple(shape)))
      return jnp.full(shape, value, dtype)
    return init

  cell = FACTORIES[family](H, kernel_init=constant(0.5), recurrent_init=constant(-0.25))
  params = _init(cell, jax.random.key(0), I)
  assert sorted(calls) == sorted([(0.5, (I, H))] * gates + [(-0.25, (H, H))] * gates)
  np.testing.assert_array_equal(params.w_i, np.full((I, gates * H), 0.5, np.float32))
  np.testing.assert_array_equal(params.w_h, np.full((H, gates * H), -0.25, np.float32))


CARRY_DTYPES = (jnp.float32, jnp.bfloat16)
BATCH_SHAPES = ((), (B,), (2, 3))


@functools.cache
def _initial_carries():
  """`initial_carry` of every variant and dtype, default and for each batch shape, in one jit."""
  rng = np.random.default_rng(0)
  cells = {(n, jnp.dtype(d).name): _cell(n, d) for n in NAMES for d in CARRY_DTYPES}
  params = {k: _params(cell, rng) for k, cell in cells.items()}

  @jax.jit
  def carries(params):
    return {k: [cell.initial_carry(params[k]), *(cell.initial_carry(params[k], s)
                                                 for s in BATCH_SHAPES)]
            for k, cell in cells.items()}

  return carries(params)


@pytest.mark.parametrize("dtype", CARRY_DTYPES, ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", NAMES)
def test_initial_carry_is_zeros(name, dtype):
  v = VARIANTS[name]
  carries = _initial_carries()[name, jnp.dtype(dtype).name]  # [default, *BATCH_SHAPES]
  for batch_shape, carry in zip([(), *BATCH_SHAPES], carries, strict=True):
    assert type(carry) is v.carry_type
    assert carry._fields == tuple(v.carry_shapes)
    for field, shape in v.carry_shapes.items():
      leaf = getattr(carry, field)
      assert leaf.shape == (*batch_shape, *shape), field
      assert leaf.dtype == dtype, field
      assert not np.any(_f64(leaf)), field


# ---- 7. Factory argument errors. ----

@pytest.mark.parametrize("bad", [4.5, "8", 8.0, None, True])
@pytest.mark.parametrize("family", ARG_FACTORIES)
def test_non_integer_hidden_size(family, bad):
  with pytest.raises(TypeError, match=re.escape(f"rnnjax.{family}: `hidden_size` must be an "
                                                f"integer, got {bad!r}")):
    ARG_FACTORIES[family](bad)


@pytest.mark.parametrize("bad", [0, -3])
@pytest.mark.parametrize("family", ARG_FACTORIES)
def test_non_positive_hidden_size(family, bad):
  with pytest.raises(ValueError, match=re.escape(
      f"rnnjax.{family}: `hidden_size` must be a positive integer, got hidden_size={bad}")):
    ARG_FACTORIES[family](bad)


@pytest.mark.parametrize("family", FACTORIES)
def test_numpy_integer_hidden_size_is_accepted(family):
  cell = FACTORIES[family](np.int64(H))
  params = jax.eval_shape(lambda key: cell.init(key, np.int64(I)), jax.random.key(0))
  assert params.w_i.shape[0] == I
  assert params.w_h.shape[0] == H


@pytest.mark.parametrize("proj", [H, H + 1])
def test_proj_size_not_smaller_than_hidden_size(proj):
  with pytest.raises(ValueError, match=re.escape(
      f"`proj_size` must be smaller than `hidden_size` (as in PyTorch), got proj_size={proj}, "
      f"hidden_size={H}")):
    rnnjax.lstm(H, proj_size=proj)


def test_bad_proj_size():
  with pytest.raises(ValueError, match="`proj_size` must be a positive integer"):
    rnnjax.lstm(H, proj_size=0)
  with pytest.raises(TypeError, match=r"`proj_size` must be an integer, got 2\.5"):
    rnnjax.lstm(H, proj_size=2.5)


def test_unknown_nonlinearity():
  with pytest.raises(ValueError, match=re.escape(
      "`nonlinearity` must be one of 'tanh', 'relu'; got nonlinearity='sigmoid'")):
    rnnjax.elman(H, nonlinearity="sigmoid")


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.complex64, "not-a-dtype"],
                         ids=["int32", "bool", "complex64", "string"])
@pytest.mark.parametrize("family", ARG_FACTORIES)
def test_non_float_dtype(family, dtype):
  with pytest.raises(TypeError, match=rf"rnnjax\.{family}: `dtype` must be a floating dtype"):
    ARG_FACTORIES[family](H, dtype=dtype)


@pytest.mark.parametrize("bad", [0, 2.5])
@pytest.mark.parametrize("family", ARG_FACTORIES)
def test_bad_input_size_in_init(family, bad):
  error = ValueError if bad == 0 else TypeError
  with pytest.raises(error, match=rf"rnnjax\.{family}\.init: `input_size`"):
    ARG_FACTORIES[family](H).init(jax.random.key(0), bad)


@pytest.mark.parametrize("name", ["elman_tanh", "lstm_proj", "gru_reset_after", "mgu_reset_after"])
def test_wrong_feature_size(name, rng):
  cell = _cell(name)
  family = name.split("_")[0]
  params = _params(cell, rng)
  carry = _random_carry(name, (B,), rng)
  with pytest.raises(ValueError, match=re.escape(
      f"rnnjax.{family}.apply: x has feature size {I + 1} but params were made for "
      f"input_size={I} (x.shape=({B}, {I + 1}))")):
    _apply(cell, params, carry, jnp.zeros((B, I + 1), jnp.float32))
  with pytest.raises(ValueError, match=re.escape(f"input_size={I}")):
    _unroll(cell, params, jnp.zeros((T, B, I + 1), jnp.float32), carry, None)


# ---- 8. Dtypes: a step returns the carry dtype it was given; mismatches are named. ----
# Shapes and dtypes only (`jax.eval_shape`): every check here runs at trace time, so nothing
# is compiled. Every built-in cell, a stack, and the LSTM with a projection.

# Built with params and computation in one dtype `d` (`param_dtype=d`).
DTYPE_CELLS = {
    "elman": lambda d: rnnjax.elman(H, dtype=d, param_dtype=d),
    "lstm": lambda d: rnnjax.lstm(H, dtype=d, param_dtype=d),
    "lstm_proj": lambda d: rnnjax.lstm(H, proj_size=P, dtype=d, param_dtype=d),
    "gru": lambda d: rnnjax.gru(H, dtype=d, param_dtype=d),
    "mgu": lambda d: rnnjax.mgu(H, dtype=d, param_dtype=d),
    "mingru": lambda d: rnnjax.mingru(H, dtype=d, param_dtype=d),
    "minlstm": lambda d: rnnjax.minlstm(H, log_space=True, dtype=d, param_dtype=d),
    "lru": lambda d: rnnjax.lru(H, dtype=d, param_dtype=d),
    "rglru": lambda d: rnnjax.rglru(H, dtype=d, param_dtype=d),
    "stack": lambda d: rnnjax.stack([rnnjax.lstm(H, dtype=d, param_dtype=d),
                                     rnnjax.mingru(H, dtype=d, param_dtype=d)]),
}
# The documented carry dtype: the params' dtype; the LRU's complex h is complex64 (complex128
# for float64 params).
_COMPLEX = {"float32": "complex64", "bfloat16": "complex64", "float64": "complex128"}


def _shapes(name, dtype):
  cell = DTYPE_CELLS[name](jnp.dtype(dtype))
  params = jax.eval_shape(lambda k: cell.init(k, I), jax.random.key(0))
  carry = jax.eval_shape(lambda p: cell.initial_carry(p, (B,)), params)
  return cell, params, carry


def _family(name):
  return "stack" if name == "stack" else name.split("_")[0]


@pytest.mark.parametrize("promotion", ["strict", "standard"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("name", DTYPE_CELLS)
def test_apply_returns_the_carry_dtype_it_was_given(name, dtype, promotion):
  with jax.enable_x64(dtype == "float64"), jax.numpy_dtype_promotion(promotion):
    cell, params, carry = _shapes(name, dtype)
    want = _COMPLEX[dtype] if name == "lru" else dtype
    assert {leaf.dtype.name for leaf in jax.tree_util.tree_leaves(carry)} == {want}
    new, y = jax.eval_shape(cell.apply, params, carry, jax.ShapeDtypeStruct((B, I), dtype))
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(carry)
    for got, given in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(carry),
                          strict=True):
      assert (got.shape, got.dtype) == (given.shape, given.dtype)
    assert y.dtype == dtype


@pytest.mark.parametrize("promotion", ["strict", "standard"])
@pytest.mark.parametrize("name", DTYPE_CELLS)
def test_apply_casts_a_floating_input_and_refuses_integers(name, promotion):
  # A float32 input to a bfloat16 cell is cast (the mixed-precision policy: inputs of any
  # floating dtype are cast to the compute dtype), so the carry keeps its dtype; an integer
  # input is refused by name. Before the policy: a TypePromotionError from inside the step
  # (strict), or (standard) a float32 carry out of a bfloat16 cell.
  cell, params, carry = _shapes(name, "bfloat16")
  with jax.numpy_dtype_promotion(promotion):
    new, y = jax.eval_shape(cell.apply, params, carry, jax.ShapeDtypeStruct((B, I), jnp.float32))
  assert [a.dtype for a in jax.tree_util.tree_leaves(new)] == [
      a.dtype for a in jax.tree_util.tree_leaves(carry)]
  assert y.dtype == jnp.bfloat16
  first = "lstm" if name == "stack" else _family(name)  # The stack's first layer reads x.
  with jax.numpy_dtype_promotion(promotion), pytest.raises(TypeError, match=re.escape(
      f"rnnjax.{first}.apply: `x` must hold floating-point values (any float dtype; the cell "
      "computes in bfloat16), got dtype int32.")):
    jax.eval_shape(cell.apply, params, carry, jax.ShapeDtypeStruct((B, I), jnp.int32))


@pytest.mark.parametrize("bad", ["int32", "float32"])
@pytest.mark.parametrize("name", DTYPE_CELLS)
def test_apply_refuses_a_carry_of_another_dtype(name, bad):
  cell, params, carry = _shapes(name, "bfloat16")
  if name == "lru" and bad == "float32":
    bad = "complex128"
  wrong = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, bad), carry)
  path = "[0].h" if name == "stack" else ".h"
  want = "complex64" if name == "lru" else "bfloat16"
  with jax.enable_x64(bad == "complex128"), pytest.raises(TypeError, match=re.escape(
      f"rnnjax.{_family(name)}.apply: `carry{path}` has dtype {bad}, expected {want} (the "
      "dtype of cell.initial_carry)")):
    jax.eval_shape(cell.apply, params, wrong, jax.ShapeDtypeStruct((B, I), jnp.bfloat16))


@pytest.mark.parametrize("promotion", ["strict", "standard"])
@pytest.mark.parametrize("name", DTYPE_CELLS)
def test_unroll_names_mismatched_xs_and_carry_dtypes(name, promotion):
  # Before: JAX's carry-type error from inside `lax.scan` (standard promotion), or a
  # TypePromotionError from inside the step (strict).
  with jax.numpy_dtype_promotion(promotion):
    _check_unroll_dtype_errors(name)


def _check_unroll_dtype_errors(name):
  cell, params, carry = _shapes(name, "bfloat16")
  xs = jax.ShapeDtypeStruct((T, B, I), jnp.int32)
  with pytest.raises(TypeError, match=re.escape(
      "rnnjax.unroll: xs has dtype int32 but the cell's params are bfloat16; cast xs with "
      "xs.astype(jnp.bfloat16).")):
    jax.eval_shape(lambda p, x: rnnjax.unroll(cell, p, x), params, xs)
  # A floating xs of another dtype is cast by the cell: the carry keeps its dtype.
  ys, final = jax.eval_shape(lambda p, x: rnnjax.unroll(cell, p, x), params,
                             jax.ShapeDtypeStruct((T, B, I), jnp.float32))
  assert ys.dtype == jnp.bfloat16
  assert [a.dtype for a in jax.tree_util.tree_leaves(final)] == [
      a.dtype for a in jax.tree_util.tree_leaves(carry)]
  xs = jax.ShapeDtypeStruct((T, B, I), jnp.bfloat16)
  wrong = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.int32), carry)
  path = "[0].h" if name == "stack" else ".h"
  want = "complex64" if name == "lru" else "bfloat16"
  with pytest.raises(TypeError, match=re.escape(
      f"rnnjax.unroll: `carry{path}` has dtype int32, expected {want} (the dtype of "
      "cell.initial_carry)")):
    jax.eval_shape(lambda p, x, c: rnnjax.unroll(cell, p, x, c), params, xs, wrong)
  if rnnjax.is_linear(cell):
    with pytest.raises(TypeError, match=re.escape(
        "rnnjax.parallel_unroll: `carry" + path + "` has dtype int32")):
      jax.eval_shape(lambda p, x, c: rnnjax.parallel_unroll(cell, p, x, c, engine="parallel"),
                     params, xs, wrong)


# ---- 8. init="pytorch": every weight and bias uniform in ±1/sqrt(H), as PyTorch draws them. ----

PYTORCH_DRAWS = 400  # keys; with the sizes above every leaf has >= 2000 values


@jax.jit
def _pytorch_draws(key):
  cells = {"elman": rnnjax.elman(H, init="pytorch"), "lstm": rnnjax.lstm(H, init="pytorch"),
           "lstm_proj": rnnjax.lstm(H, proj_size=P, init="pytorch"),
           "gru": rnnjax.gru(H, init="pytorch"), "mgu": rnnjax.mgu(H, init="pytorch")}
  keys = jax.random.split(key, PYTORCH_DRAWS)
  return {name: jax.vmap(lambda k, c=cell: c.init(k, I))(keys) for name, cell in cells.items()}


def _check_uniform(values, bound, what):
  """`values` look like i.i.d. draws of U(-bound, bound): range, moments and KS distance."""
  v = np.sort(np.asarray(values, np.float64).ravel())
  n = v.size
  assert np.all(np.abs(v) <= bound), what
  assert v[0] < -0.95 * bound and v[-1] > 0.95 * bound, what
  sd = bound / np.sqrt(3.0)  # the uniform's standard deviation
  assert abs(v.mean()) < 5 * sd / np.sqrt(n), what
  assert abs(v.var() / sd**2 - 1.0) < 0.1, what
  cdf = (v + bound) / (2 * bound)
  ks = np.max(np.maximum(np.arange(1, n + 1) / n - cdf, cdf - np.arange(n) / n))
  assert ks < 2.3 / np.sqrt(n), (what, ks)  # the KS test rejects at about p = 1e-4


def test_pytorch_init_draws_every_weight_and_bias_uniformly():
  bound = 1.0 / np.sqrt(H)
  draws = _pytorch_draws(jax.random.key(3))
  for name, params in draws.items():
    fields = {k: v for k, v in params._asdict().items() if v is not None}
    assert set(fields) >= {"w_i", "w_h", "b_i", "b_h"}, name
    for field, values in fields.items():
      _check_uniform(values, bound, f"{name}.{field}")
  # No forget-gate fill: the LSTM's forget slice of b_i (gate 1) and the MGU's gate (0).
  _check_uniform(draws["lstm"].b_i[:, H:2 * H], bound, "lstm forget bias")
  _check_uniform(draws["mgu"].b_i[:, :H], bound, "mgu gate bias")
  assert draws["lstm_proj"].w_proj.shape == (PYTORCH_DRAWS, H, P)
  assert draws["lstm_proj"].w_h.shape == (PYTORCH_DRAWS, P, 4 * H)


def test_pytorch_init_keeps_use_bias_and_dtype():
  params = rnnjax.gru(H, init="pytorch", use_bias=False, param_dtype=jnp.bfloat16).init(
      jax.random.key(0), I)
  assert params.b_i is None and params.b_h is None
  assert params.w_i.dtype == params.w_h.dtype == jnp.bfloat16
  assert float(jnp.max(jnp.abs(params.w_h.astype(jnp.float32)))) <= 1.0 / np.sqrt(H)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_default_init_is_unchanged(name):
  cell = FACTORIES[name](H, init="default")
  params, before = cell.init(jax.random.key(1), I), FACTORIES[name](H).init(jax.random.key(1), I)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, before)
  # LeCun normal and orthogonal, not PyTorch's uniform: the orthogonal w_h has unit rows.
  np.testing.assert_allclose(np.linalg.norm(params.w_h[:, :H], axis=0), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_pytorch_init_refuses_initializers_and_a_forget_bias(name):
  factory = FACTORIES[name]
  zeros = jax.nn.initializers.zeros
  for arg in ("kernel_init", "recurrent_init"):
    with pytest.raises(ValueError, match=re.escape(
        f"rnnjax.{name}: init='pytorch' draws every weight uniformly in ±1/sqrt(hidden_size), "
        f"so it takes no `{arg}`; got {arg}={zeros!r}. Drop `{arg}`, or pass init='default' "
        "to use your own initializers.")):
      factory(H, init="pytorch", **{arg: zeros})
  if name in ("lstm", "mgu"):
    with pytest.raises(ValueError, match=re.escape(
        f"rnnjax.{name}: init='pytorch' draws the biases uniformly too and fills no "
        "forget-gate bias; got forget_bias=2.0. Drop `forget_bias`, or pass init='default'.")):
      factory(H, init="pytorch", forget_bias=2.0)
  with pytest.raises(ValueError, match=re.escape(
      f"rnnjax.{name}: `init` must be one of 'default', 'pytorch'; got init='torch'.")):
    factory(H, init="torch")
