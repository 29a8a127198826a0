"""Tests for `heads=` on the classic cells (`rnnjax.elman`, `lstm`, `gru`): head-wise recurrence.

With `heads = k > 1` the recurrent matrix is block-diagonal with `k` blocks, stored per head
as `w_h: [k, D, G*D]`. The reference is the cells' float64 NumPy equations in
`tests/reference.py`, given the dense `[H, G*H]` block-diagonal matrix that this file
assembles from the per-head blocks (gate `g` of head `j` at rows `j*D:(j+1)*D`, columns
`g*H + j*D : g*H + (j+1)*D`), so a wrong layout shows. Gradients are checked against the
dense (heads=1) cell given that matrix. Everything numeric runs under `jax.jit`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax.interop import pytorch
from tests import helpers, reference

T, B, I, H = 6, 3, 3, 8
TOL = 1e-5  # float32 against the float64 reference
HEADS = (2, 4)
LENGTHS = np.array([T, 4, 0], np.int32)


class Variant(NamedTuple):
  factory: Any
  options: dict[str, Any]
  gates: int
  step: Any  # reference.<cell>_step(params, state, x, **step_options)
  step_options: dict[str, Any]
  carry_fields: tuple[str, ...]


VARIANTS = {
    "elman": Variant(rnnjax.elman, {}, 1, reference.elman_step, {}, ("h",)),
    "elman_relu_nobias": Variant(rnnjax.elman, {"nonlinearity": "relu", "use_bias": False}, 1,
                                 reference.elman_step, {"nonlinearity": "relu"}, ("h",)),
    "lstm": Variant(rnnjax.lstm, {}, 4, reference.lstm_step, {}, ("h", "c")),
    "gru": Variant(rnnjax.gru, {}, 3, reference.gru_step, {}, ("h",)),
    "gru_before_nobias": Variant(rnnjax.gru, {"reset_after": False, "use_bias": False}, 3,
                                 reference.gru_step, {"reset_after": False}, ("h",)),
}


@functools.cache
def _cell(name: str, heads: int = 1, dtype: Any = jnp.float32) -> rnnjax.Cell:
  v = VARIANTS[name]
  return v.factory(H, heads=heads, dtype=dtype, **v.options)


def _f64(a):
  return np.asarray(a, np.float64)


def dense_w_h(w_h, gates: int) -> np.ndarray:
  """The `[H, G*H]` block-diagonal matrix (gate-major columns) of the per-head `[k, D, G*D]`."""
  w_h = _f64(w_h)
  heads, d, _ = w_h.shape
  size = heads * d
  dense = np.zeros((size, gates * size))
  for j in range(heads):
    for g in range(gates):
      dense[j * d:(j + 1) * d, g * size + j * d:g * size + (j + 1) * d] = \
          w_h[j][:, g * d:(g + 1) * d]
  return dense




def _carry(name, cell, params, rng):
  zero = cell.initial_carry(params, (B,))
  return type(zero)(*(jnp.asarray(rng.normal(size=leaf.shape), leaf.dtype) for leaf in zero))


def _step(name, params, gates):
  v = VARIANTS[name]
  dense = params._replace(w_h=dense_w_h(params.w_h, gates))
  return functools.partial(v.step, dense, **v.step_options)


@functools.partial(jax.jit, static_argnums=(0, 6))
def _unroll(cell, params, xs, carry, lengths, resets, reverse):
  return rnnjax.unroll(cell, params, xs, carry, lengths=lengths, resets=resets, reverse=reverse)


def _resets():
  r = np.zeros((T, B), bool)
  r[2, 0] = r[4, 1] = r[0, 2] = True
  return r


def _close(actual, expected, tol=TOL):
  np.testing.assert_allclose(_f64(actual), _f64(expected), rtol=tol, atol=tol)


# ---- 1. Against the equations with the dense block-diagonal matrix. ----

@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_unroll_matches_the_dense_block_diagonal_reference(name, heads, reverse, rng):
  v = VARIANTS[name]
  cell = _cell(name, heads)
  params = helpers.random_params(cell, rng, I)
  d = H // heads
  assert params.w_h.shape == (heads, d, v.gates * d)
  xs = np.array(rng.normal(size=(T, B, I)), np.float32)
  xs[4:, 1] = np.nan  # padding past the length never reaches the cell
  xs[:, 2] = np.nan
  carry = _carry(name, cell, params, rng)
  ys, final = _unroll(cell, params, jnp.asarray(xs), carry, jnp.asarray(LENGTHS),
                      jnp.asarray(_resets()), reverse)
  assert ys.shape == (T, B, H) and ys.dtype == jnp.float32
  zero = tuple(np.zeros((B, H)) for _ in v.carry_fields)
  ref_ys, ref_final = reference.run_batch(
      _step(name, params, v.gates), tuple(carry), np.nan_to_num(xs), lengths=LENGTHS,
      resets=_resets(), reverse=reverse, zero_state=zero)
  _close(ys, ref_ys)
  for field, want in zip(v.carry_fields, ref_final, strict=True):
    _close(getattr(final, field), want)


@pytest.mark.parametrize("name", ["lstm", "gru_before_nobias"])
def test_float64_matches_the_reference_closely(name, rng):
  v = VARIANTS[name]
  with jax.enable_x64(True):
    cell = _cell(name, 2, jnp.float64)
    params = helpers.random_params(cell, rng, I)
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(params))
    xs = jnp.asarray(rng.normal(size=(T, B, I)))
    carry = _carry(name, cell, params, rng)
    ys, final = jax.jit(rnnjax.unroll, static_argnums=0)(cell, params, xs, carry)
    ref_ys, ref_final = reference.run_batch(_step(name, params, v.gates), tuple(carry), xs)
    _close(ys, ref_ys, 1e-12)
    for field, want in zip(v.carry_fields, ref_final, strict=True):
      _close(getattr(final, field), want, 1e-12)


@pytest.mark.parametrize("name", ["elman", "lstm", "gru", "gru_before_nobias"])
def test_gradients_equal_the_dense_cells_on_the_blocks(name, rng):
  """d loss / d w_h of the head-wise cell is the dense cell's gradient read on the blocks."""
  v = VARIANTS[name]
  cell, dense_cell = _cell(name, 2), _cell(name, 1)
  params = helpers.random_params(cell, rng, I)
  dense = params._replace(w_h=jnp.asarray(dense_w_h(params.w_h, v.gates), jnp.float32))
  xs = jnp.asarray(rng.normal(size=(T, B, I)), jnp.float32)

  @functools.partial(jax.jit, static_argnums=0)
  def grads(c, p):
    return jax.grad(lambda p, xs: jnp.sum(jnp.sin(rnnjax.unroll(c, p, xs)[0])),
                    argnums=(0, 1))(p, xs)

  (g, gx), (g_dense, gx_dense) = grads(cell, params), grads(dense_cell, dense)
  _close(gx, gx_dense)
  on_blocks = dense_w_h(np.ones(g.w_h.shape), v.gates) == 1.0  # off the blocks: no weight
  _close(dense_w_h(g.w_h, v.gates)[on_blocks], _f64(g_dense.w_h)[on_blocks])
  for field in ("w_i", "b_i", "b_h"):
    if getattr(g, field) is not None:
      _close(getattr(g, field), getattr(g_dense, field))


# ---- 2. heads=1 is the dense cell, unchanged. ----

@pytest.mark.parametrize("init", ["default", "pytorch"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_heads_1_is_the_default_cell(name, init, rng):
  v = VARIANTS[name]
  one, default = v.factory(H, heads=1, init=init, **v.options), v.factory(H, init=init,
                                                                        **v.options)
  assert one == default and hash(one) == hash(default) and repr(one) == repr(default)
  key = jax.random.key(3)
  p_one, p_default = one.init(key, I), default.init(key, I)
  for a, b in zip(jax.tree_util.tree_leaves(p_one), jax.tree_util.tree_leaves(p_default),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  assert p_one.w_h.shape == (H, v.gates * H)
  carry = _carry(name, default, p_default, rng)
  x = jnp.asarray(rng.normal(size=(B, I)), jnp.float32)
  (c_one, y_one), (c_default, y_default) = (one.apply(p_one, carry, x),
                                            default.apply(p_default, carry, x))
  np.testing.assert_array_equal(y_one, y_default)
  for a, b in zip(c_one, c_default, strict=True):
    np.testing.assert_array_equal(a, b)
  assert rnnjax.engine_plan(one).kernel == rnnjax.engine_plan(default).kernel


# ---- 3. The step Jacobian is block-diagonal by head. ----

def _block_mask(heads):
  return np.kron(np.eye(heads, dtype=bool), np.ones((H // heads, H // heads), bool))


@pytest.mark.parametrize("heads", [1, *HEADS])
@pytest.mark.parametrize("name", ["elman", "gru", "gru_before_nobias"])
def test_step_jacobian_is_block_diagonal(name, heads, rng):
  cell = _cell(name, heads)
  params = helpers.random_params(cell, rng, I)
  x = jnp.asarray(rng.normal(size=(I,)), jnp.float32)
  h = jnp.asarray(rng.normal(size=(H,)), jnp.float32)
  jac = np.asarray(jax.jit(jax.jacfwd(
      lambda h: cell.apply(params, rnnjax.HiddenState(h), x)[0].h))(h))
  mask = _block_mask(heads)
  if heads == 1:
    assert mask.all()
    return
  assert np.all(jac[~mask] == 0.0)  # exactly: no head reads another head's units
  for j in range(heads):
    block = slice(j * (H // heads), (j + 1) * (H // heads))
    assert np.abs(jac[block, block]).max() > 1e-3


@pytest.mark.parametrize("heads", HEADS)
def test_lstm_jacobian_of_h_and_c_is_block_diagonal(heads, rng):
  cell = _cell("lstm", heads)
  params = helpers.random_params(cell, rng, I)
  x = jnp.asarray(rng.normal(size=(I,)), jnp.float32)
  h, c = (jnp.asarray(rng.normal(size=(H,)), jnp.float32) for _ in range(2))

  def step(h, c):
    new, _ = cell.apply(params, rnnjax.LSTMState(h=h, c=c), x)
    return new.h, new.c

  jac = jax.jit(jax.jacfwd(step, argnums=(0, 1)))(h, c)
  mask = _block_mask(heads)
  for out in jac:  # (dh'/dh, dh'/dc), (dc'/dh, dc'/dc)
    for block in out:
      block = np.asarray(block)
      assert block.shape == (H, H) and np.all(block[~mask] == 0.0)
      assert np.abs(block[mask]).max() > 1e-3


def test_dense_cell_jacobian_is_not_block_diagonal(rng):
  """The check above is not vacuous: the dense cell mixes the heads' units."""
  cell = _cell("gru", 1)
  params = helpers.random_params(cell, rng, I)
  x = jnp.asarray(rng.normal(size=(I,)), jnp.float32)
  h = jnp.asarray(rng.normal(size=(H,)), jnp.float32)
  jac = np.asarray(jax.jacfwd(lambda h: cell.apply(params, rnnjax.HiddenState(h), x)[0].h)(h))
  assert np.abs(jac[~_block_mask(2)]).max() > 1e-3


# ---- 4. Initialisation, precision, engines. ----

@pytest.mark.parametrize("name", ["elman", "lstm", "gru"])
def test_init_is_orthogonal_per_head_and_gate(name):
  v = VARIANTS[name]
  key = jax.random.key(0)
  params, dense = _cell(name, 2).init(key, I), _cell(name, 1).init(key, I)
  d = H // 2
  for j in range(2):
    for g in range(v.gates):
      block = _f64(params.w_h[j][:, g * d:(g + 1) * d])
      np.testing.assert_allclose(block @ block.T, np.eye(d), atol=1e-5)
  # w_i and the biases are drawn as the dense cell's, from the same key.
  for field in ("w_i", "b_i", "b_h"):
    np.testing.assert_array_equal(getattr(params, field), getattr(dense, field))
  pt = v.factory(H, heads=2, init="pytorch", **v.options).init(key, I)
  assert pt.w_h.shape == params.w_h.shape and np.abs(_f64(pt.w_h)).max() <= 1 / np.sqrt(H)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_mixed_precision(name, rng):
  cell, full = _cell(name, 2, jnp.bfloat16), _cell(name, 2)
  params = helpers.random_params(full, rng, I)
  assert cell.init(jax.random.key(0), I).w_h.dtype == jnp.float32
  xs = jnp.asarray(rng.normal(size=(T, B, I)), jnp.float32)
  run = jax.jit(rnnjax.unroll, static_argnums=0)
  (ys, carry), (ys_full, _) = run(cell, params, xs), run(full, params, xs)
  assert ys.dtype == jnp.bfloat16 and all(leaf.dtype == jnp.float32 for leaf in carry)
  _close(ys, ys_full, 5e-2)


@pytest.mark.parametrize("name", ["lstm", "gru", "gru_before_nobias"])
def test_no_fused_kernel_with_heads(name):
  assert rnnjax.engine_plan(_cell(name, 1)).kernel
  for heads in HEADS:
    plan = rnnjax.engine_plan(_cell(name, heads))
    assert plan.engine == "sequential" and not plan.kernel


# ---- 5. Errors. ----

@pytest.mark.parametrize("factory", [rnnjax.elman, rnnjax.lstm, rnnjax.gru])
def test_bad_heads(factory):
  name = factory.__name__
  with pytest.raises(ValueError, match=rf"rnnjax\.{name}: `hidden_size` \(=8\) must be divisible "
                     r"by `heads` \(=3\).*one of \[1, 2, 4, 8\]"):
    factory(8, heads=3)
  with pytest.raises(ValueError, match=r"`heads` must be a positive integer, got heads=0"):
    factory(8, heads=0)
  for bad in (2.0, True, "2", None):
    with pytest.raises(TypeError, match=r"`heads` must be an integer"):
      factory(8, heads=bad)


def test_lstm_heads_with_projection_is_refused():
  with pytest.raises(ValueError, match=r"rnnjax\.lstm: `heads` > 1 and `proj_size` cannot be "
                     r"combined.*heads=2, proj_size=4"):
    rnnjax.lstm(8, heads=2, proj_size=4)
  assert rnnjax.lstm(8, heads=1, proj_size=4).init(jax.random.key(0), I).w_h.shape == (4, 32)


@pytest.mark.parametrize("name", ["elman", "lstm", "gru"])
def test_params_of_other_heads_are_refused(name):
  two, one = _cell(name, 2), _cell(name, 1)
  p_two, p_one = two.init(jax.random.key(0), I), one.init(jax.random.key(0), I)
  x = jnp.ones((I,))
  fn = f"rnnjax.{VARIANTS[name].factory.__name__}"
  with pytest.raises(ValueError, match=rf"{fn}\.apply: `params.w_h` has shape \(8, \d+\), but "
                     r"this cell was built with heads=2"):
    two.apply(p_one, two.initial_carry(p_two), x)
  with pytest.raises(ValueError, match=rf"{fn}\.initial_carry: .*built with heads=1"):
    one.initial_carry(p_two)
  with pytest.raises(ValueError, match=r"built with heads=1"):
    jax.jit(rnnjax.unroll, static_argnums=0)(one, p_two, jnp.ones((T, I)),
                                             one.initial_carry(p_one))


def test_pytorch_export_refuses_heads():
  params = rnnjax.gru(H, heads=2).init(jax.random.key(0), I)
  for fn in (pytorch.to_torch, pytorch.torch_kwargs):
    with pytest.raises(ValueError, match=r"head-wise recurrent weight.*heads=2.*heads=1"):
      fn(params)
  with pytest.raises(ValueError, match=r"carry_from_torch: layer 0 has a head-wise"):
    pytorch.carry_from_torch(params, np.zeros((1, B, H), np.float32))
  dense = rnnjax.gru(H).init(jax.random.key(0), I)
  assert pytorch.torch_kwargs(dense)["hidden_size"] == H
