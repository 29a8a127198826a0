"""Tests for `rnnjax.interop.equinox`: the `eqx.Module` equals the functional rnnjax and a loop."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

eqx = pytest.importorskip("equinox")  # In the `test` extra: CI installs it.

import rnnjax  # noqa: E402
from rnnjax.interop.equinox import RNN  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
B, T, I, H = 3, 6, 2, 4
LENGTHS = jnp.array([6, 3, 0], jnp.int32)
RESETS = jnp.zeros((T, B), bool).at[2, 0].set(True).at[4, 1].set(True)  # time-major
LSTM, GRU = rnnjax.lstm(H), rnnjax.gru(H)
MODULES = {
    "lstm": LSTM,
    "stack": rnnjax.stack([GRU, LSTM]),
    "bidirectional": rnnjax.bidirectional(LSTM, GRU),
}
BIDIRECTIONAL_CELLS = (LSTM, GRU)  # forward, backward: for the loop reference


def _xs(seed=0, shape=(T, B, I)):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _assert_trees_close(a, b, tol=1e-6):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  jax.tree_util.tree_map(
      lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol),
      a, b)


_STEPS = {}  # cell -> its jitted `apply` (compiled once per cell and shape)


def _loop(cell, params, xs, carry):
  """A plain Python loop of `cell.apply` over one unbatched sequence `[t, I]`."""
  step = _STEPS.setdefault(id(cell), jax.jit(cell.apply))
  ys = []
  for x in xs:
    carry, y = step(params, carry, x)
    ys.append(y)
  return ys, carry


def _loop_reference(module, params, xs, lengths):
  """`(ys [T, B, O], carry)` by Python loops, one example and its valid steps at a time."""
  outs, carries = [], []
  for b in range(xs.shape[1]):
    seq = xs[:int(lengths[b]), b]
    if isinstance(module, rnnjax.Cell):
      ys, carry = _loop(module, params, seq, module.initial_carry(params))
    else:  # The bidirectional layer: its two cells, the backward one over the reversed steps.
      fwd, bwd = BIDIRECTIONAL_CELLS
      ys_f, c_f = _loop(fwd, params.forward, seq, fwd.initial_carry(params.forward))
      ys_b, c_b = _loop(bwd, params.backward, seq[::-1], bwd.initial_carry(params.backward))
      ys = [jnp.concatenate([f, b_], -1) for f, b_ in zip(ys_f, ys_b[::-1], strict=True)]
      carry = rnnjax.BidirectionalState(c_f, c_b)
    out_size = 2 * H if not isinstance(module, rnnjax.Cell) else H
    pad = [jnp.zeros((out_size,), jnp.float32)] * (xs.shape[0] - len(ys))
    outs.append(jnp.stack(ys + pad))
    carries.append(carry)
  stacked = jax.tree_util.tree_map(lambda *c: jnp.stack(c), *carries)
  return jnp.stack(outs, axis=1), stacked


@jax.jit(static_argnums=0)
def _functional(module, params, xs, lengths=None, resets=None):
  """The plain rnnjax call, `rnnjax.unroll` for a cell or `layer.apply`."""
  if isinstance(module, rnnjax.Cell):
    return rnnjax.unroll(module, params, xs, lengths=lengths, resets=resets)
  return module.apply(params, xs, lengths=lengths, resets=resets)


@eqx.filter_jit
def _call(model, xs, lengths=None, resets=None):
  return model(xs, lengths=lengths, resets=resets)


@pytest.mark.parametrize("name", ["lstm", "stack", "bidirectional"])
def test_outputs_equal_unroll_and_a_python_loop(name):
  module = MODULES[name]
  model = RNN(module, I, key=jax.random.key(1))
  xs = _xs()
  ys, carry = _call(model, xs, LENGTHS)
  ys_loop, carry_loop = _loop_reference(module, model.params, xs, LENGTHS)
  _assert_trees_close(ys, ys_loop, 1e-5)
  _assert_trees_close(carry, carry_loop, 1e-5)
  # The functional call, computed separately, with resets as well.
  ys, carry = _call(model, xs, LENGTHS, RESETS)
  ys_ref, carry_ref = _functional(module, model.params, xs, lengths=LENGTHS, resets=RESETS)
  _assert_trees_close(ys, ys_ref)
  _assert_trees_close(carry, carry_ref)
  # The Equinox habit: one sequence [T, I] per call, the batch by jax.vmap (batch-major).
  ys_v, carry_v = eqx.filter_jit(eqx.filter_vmap(lambda m, x, n: m(x, lengths=n),
                                                 in_axes=(None, 1, 0)))(model, xs, LENGTHS)
  _assert_trees_close(jnp.swapaxes(ys_v, 0, 1), ys_loop, 1e-5)
  _assert_trees_close(carry_v, carry_loop, 1e-5)


def test_a_given_carry_and_initial_carry():
  model = RNN(LSTM, I, key=jax.random.key(2))
  xs = _xs(3)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda c: c.shape == (B, H) and not c.any(), model.initial_carry((B,))))
  carry0 = jax.tree_util.tree_map(lambda c: c + 0.5, model.initial_carry((B,)))
  ys, carry = model(xs, carry0)
  xs_list = [xs[t] for t in range(T)]
  ys_loop, carry_loop = _loop(LSTM, model.params, xs_list, carry0)
  _assert_trees_close(ys, jnp.stack(ys_loop), 1e-5)
  _assert_trees_close(carry, carry_loop, 1e-5)


@pytest.mark.parametrize("name", ["lstm", "bidirectional"])
def test_filter_grad_equals_jax_grad_of_the_functional_form(name):
  module = MODULES[name]
  model = RNN(module, I, key=jax.random.key(4))
  xs = _xs(5)

  def loss(model):
    ys, _ = model(xs, lengths=LENGTHS)
    return jnp.sum(ys ** 2)

  @jax.jit
  def functional(params):
    def functional_loss(params):
      ys, _ = rnnjax.unroll(module, params, xs, lengths=LENGTHS) if name == "lstm" else (
          module.apply(params, xs, lengths=LENGTHS))
      return jnp.sum(ys ** 2)
    return jax.value_and_grad(functional_loss)(params)

  @eqx.filter_jit
  def equinox(model):
    return eqx.filter_value_and_grad(loss)(model), eqx.filter_grad(loss)(model)

  (value, grads), grads2 = equinox(model)
  assert isinstance(grads, RNN) and isinstance(grads2, RNN)
  expected_value, expected = functional(model.params)
  _assert_trees_close(grads.params, expected, 1e-5)
  _assert_trees_close(grads2.params, expected, 1e-5)
  np.testing.assert_allclose(value, expected_value, rtol=1e-6)


def test_params_are_the_leaves_and_the_module_is_static():
  module = MODULES["stack"]
  model = RNN(module, I, key=jax.random.key(6))
  params = module.init(jax.random.key(6), I)
  _assert_trees_close(model.params, params, 0.0)  # init(key, input_size), nothing else
  arrays, static = eqx.partition(model, eqx.is_array)
  assert len(jax.tree.leaves(arrays)) == len(jax.tree.leaves(params)) == 8
  assert jax.tree.leaves(static) == []
  assert eqx.combine(arrays, static).module is module
  # Same cell object, other params: one trace (the cell is part of the static structure).
  traces = []

  @eqx.filter_jit
  def run(m, x):
    traces.append(None)
    return m(x)[0]

  other = RNN(module, I, key=jax.random.key(7))
  run(model, _xs()), run(other, _xs())
  assert len(traces) == 1


def test_serialise_round_trip_restores_params_exactly(tmp_path):
  module = rnnjax.bidirectional(rnnjax.lstm(H, use_bias=False), GRU)  # None leaves too
  model = RNN(module, I, key=jax.random.key(8))
  like = RNN(module, I, key=jax.random.key(9))
  assert not np.array_equal(model.params.forward.w_i, like.params.forward.w_i)
  eqx.tree_serialise_leaves(tmp_path / "model.eqx", model)
  restored = eqx.tree_deserialise_leaves(tmp_path / "model.eqx", like)
  assert restored.params.forward.b_i is None
  assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(model)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(model), strict=True):
    assert a.dtype == b.dtype and np.array_equal(a, b)


def _eqx_params(cell):
  """rnnjax params from an `eqx.nn.LSTMCell` / `GRUCell` (the mapping in docs/interop.md)."""
  if isinstance(cell, eqx.nn.LSTMCell):
    return rnnjax.LSTMParams(cell.weight_ih.T, cell.weight_hh.T, cell.bias,
                             jnp.zeros_like(cell.bias), None)
  b_h = jnp.concatenate([jnp.zeros((2 * H,), jnp.float32), cell.bias_n])
  return rnnjax.GRUParams(cell.weight_ih.T, cell.weight_hh.T, cell.bias, b_h)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_equals_equinox_own_cells_with_the_documented_mapping(kind):
  key = jax.random.key(10)
  if kind == "lstm":
    cell, rnn_cell = eqx.nn.LSTMCell(I, H, key=key), LSTM
    state = (jnp.zeros(H), jnp.zeros(H))
  else:
    cell, rnn_cell = eqx.nn.GRUCell(I, H, key=key), GRU
    state = jnp.zeros(H)
  xs = _xs(11, (T, I))
  final, hs = jax.lax.scan(lambda s, x: (cell(x, s), cell(x, s)), state, xs)
  model = eqx.tree_at(lambda m: m.params, RNN(rnn_cell, I, key=key), _eqx_params(cell))
  ys, carry = model(xs)
  np.testing.assert_allclose(ys, hs[0] if kind == "lstm" else hs, rtol=1e-5, atol=1e-5)
  _assert_trees_close(tuple(carry) if kind == "lstm" else carry.h, final, 1e-5)


def test_dropout_needs_a_key():
  cell = rnnjax.stack([LSTM, LSTM], dropout=0.5)
  model = RNN(cell, I, key=jax.random.key(12))
  xs = _xs(13)
  ys, _ = model(xs)
  ys_ref, _ = rnnjax.unroll(cell, model.params, xs)
  _assert_trees_close(ys, ys_ref)
  ys_key, _ = model(xs, key=jax.random.key(14))
  ys_key_ref, _ = rnnjax.unroll(cell, model.params, xs, key=jax.random.key(14))
  _assert_trees_close(ys_key, ys_key_ref)
  assert not np.allclose(ys_key, ys)


def test_bad_arguments_have_clear_messages():
  fn = "rnnjax.interop.equinox.RNN"
  with pytest.raises(TypeError, match=f"{fn}: `module` must be an rnnjax.Cell or rnnjax.Layer"):
    RNN(eqx.nn.LSTMCell(I, H, key=jax.random.key(0)), I, key=jax.random.key(0))
  with pytest.raises(TypeError, match=rf"{fn}: `key` must be a PRNG key.*jax.random.key\(0\)"):
    RNN(LSTM, I, key=0)
  with pytest.raises(ValueError, match=f"{fn}: `input_size`"):
    RNN(LSTM, 0, key=jax.random.key(0))
  model = RNN(LSTM, I, key=jax.random.key(0))
  with pytest.raises(ValueError, match=rf"{fn}: xs has feature size 5 .* input_size=2 "
                                       r"\(xs.shape=\(6, 3, 5\)\)"):
    model(jnp.ones((T, B, 5)))
  with pytest.raises(ValueError, match=rf"{fn}: `xs` must have rank >= 2 .* xs.shape=\(2,\)"):
    model(jnp.ones((I,)))
  with pytest.raises(TypeError, match=f"{fn}.initial_carry: `batch_shape` must be a tuple"):
    model.initial_carry(3)


def test_the_example_trains_with_optax(capsys):
  spec = importlib.util.spec_from_file_location("equinox_model",
                                                ROOT / "examples" / "equinox_model.py")
  example = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(example)
  with jax.numpy_dtype_promotion("standard"):  # optax.adam's bias correction needs it.
    example.main(num_steps=40)  # SystemExit unless the loss halves and the model restores.
  out = capsys.readouterr().out
  assert "held-out MSE" in out and "same loss" in out
