"""Tests for rnnjax's argument checks: one test per error message.

Each message must name the function and the argument and say what was expected and what
was received; the patterns below check all of these. Shape and dtype errors must also be
raised under `jax.jit` (at trace time). Out-of-range `lengths` under `jit` cannot be checked,
and are documented to act as if clipped into `[0, T]`: that is tested against the NumPy
reference run with clipped lengths.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from tests import reference

T, B, I, H = 7, 3, 8, 5
CELL = rnnjax.gru(H)
LSTM = rnnjax.lstm(H)
FACTORIES = {"elman": rnnjax.elman, "gru": rnnjax.gru, "lstm": rnnjax.lstm, "mgu": rnnjax.mgu}


def random_params(module, rng, input_size=I):
  """Random params of the structure and shapes `module.init` makes (non-zero biases)."""
  shapes = jax.eval_shape(lambda k: module.init(k, input_size), jax.random.key(0))
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(0.4 * rng.standard_normal(s.shape), s.dtype), shapes)


@pytest.fixture
def params(rng):
  return random_params(CELL, rng)


def unroll(jit, cell, params, xs, carry=None, **kw):
  """`rnnjax.unroll` called directly or under `jax.jit` (array options traced)."""
  if not jit:
    return rnnjax.unroll(cell, params, xs, carry, **kw)
  arrays = {k: v for k, v in kw.items() if k in ("lengths", "resets")}
  static = {k: v for k, v in kw.items() if k not in arrays}
  fn = jax.jit(lambda p, x, c, a: rnnjax.unroll(cell, p, x, c, **a, **static))
  return fn(params, xs, carry, arrays)


def xs_of(shape=(T, B, I)):
  return jnp.zeros(shape, jnp.float32)


JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])


# ---- unroll: xs ----

@JIT
def test_unroll_xs_feature_size(jit, params):
  with pytest.raises(ValueError, match=re.escape(
      "rnnjax.unroll: xs has feature size 7 but params were made for input_size=8 "
      "(xs.shape=(7, 3, 7))")):
    unroll(jit, CELL, params, xs_of((T, B, 7)))


@JIT
@pytest.mark.parametrize("shape", [(I,), ()])
def test_unroll_xs_rank(jit, shape, params):
  with pytest.raises(ValueError, match=r"rnnjax\.unroll: `xs` must have rank >= 2 with shape "
                     r"\[T, \.\.\., I\].*"
                     rf"got rank {len(shape)} \(xs\.shape={re.escape(str(shape))}\)"):
    unroll(jit, CELL, params, xs_of(shape))


def test_unroll_xs_not_an_array(params):
  with pytest.raises(TypeError, match=r"rnnjax\.unroll: `xs` must be an array of shape "
                     r"\[T, \.\.\., I\], got list"):
    rnnjax.unroll(CELL, params, [[0.0] * I] * T)


@JIT
def test_unroll_xs_without_time_steps(jit, params):
  with pytest.raises(ValueError, match=r"rnnjax\.unroll: `xs` must have at least one time step, "
                     r"got xs\.shape=\(0, 3, 8\)"):
    unroll(jit, CELL, params, xs_of((0, B, I)))


# ---- unroll: lengths ----

@JIT
@pytest.mark.parametrize("shape", [(2,), (B, 1), ()])
def test_unroll_lengths_shape(jit, shape, params):
  with pytest.raises(ValueError, match=r"rnnjax\.unroll: `lengths` must have the batch shape of "
                     rf"xs, \(3,\).*got lengths\.shape={re.escape(str(shape))}"):
    unroll(jit, CELL, params, xs_of(), lengths=jnp.ones(shape, jnp.int32))


@JIT
def test_unroll_lengths_float_dtype(jit, params):
  with pytest.raises(TypeError, match=r"rnnjax\.unroll: `lengths` must have an integer dtype, "
                     r"got dtype=float32"):
    unroll(jit, CELL, params, xs_of(), lengths=jnp.array([1.0, 2.0, 3.0], jnp.float32))


@pytest.mark.parametrize("values, lo, hi", [([-1, 2, 3], -1, 3), ([1, T + 1, 3], 1, T + 1)])
@pytest.mark.parametrize("kind", ["jax", "numpy", "list"])
def test_unroll_lengths_out_of_range_concrete(values, lo, hi, kind, params):
  lengths = {"jax": jnp.array(values, jnp.int32), "numpy": np.array(values), "list": values}[kind]
  with pytest.raises(ValueError, match=re.escape(
      f"rnnjax.unroll: `lengths` must lie in [0, T] = [0, {T}], got values from {lo} to {hi}")):
    rnnjax.unroll(CELL, params, xs_of(), lengths=lengths)


# ---- unroll: resets ----

@JIT
@pytest.mark.parametrize("shape", [(T - 1, B), (T,), (T, B, 1)])
def test_unroll_resets_shape(jit, shape, params):
  with pytest.raises(ValueError, match=r"rnnjax\.unroll: `resets` must have shape "
                     r"\[T, \.\.\.batch\] = \(7, 3\), got "
                     rf"resets\.shape={re.escape(str(shape))}"):
    unroll(jit, CELL, params, xs_of(), resets=jnp.zeros(shape, bool))


@JIT
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.float32])
def test_unroll_resets_dtype(jit, dtype, params):
  with pytest.raises(TypeError, match=r"rnnjax\.unroll: `resets` must have dtype bool, "
                     rf"got dtype={jnp.dtype(dtype).name}"):
    unroll(jit, CELL, params, xs_of(), resets=jnp.zeros((T, B), dtype))


# ---- unroll: carry ----

@JIT
def test_unroll_carry_of_another_cell(jit, params):
  carry = rnnjax.LSTMState(h=jnp.zeros((B, H)), c=jnp.zeros((B, H)))
  with pytest.raises(TypeError, match=r"rnnjax\.unroll: `carry` does not match the cell's carry "
                     r"structure: expected .*HiddenState.*, got .*LSTMState"):
    unroll(jit, CELL, params, xs_of(), carry)


@JIT
def test_unroll_carry_bare_array(jit, params):
  with pytest.raises(TypeError, match=r"rnnjax\.unroll: `carry` does not match the cell's carry "
                     r"structure: expected .*HiddenState.*, got PyTreeDef\(\*\)"):
    unroll(jit, CELL, params, xs_of(), jnp.zeros((B, H)))


@JIT
@pytest.mark.parametrize("field, h_shape, c_shape, got, want", [
    (".h", (B, H + 1), (B, H), (B, H + 1), (B, H)),
    (".c", (B, H), (B, H - 1), (B, H - 1), (B, H)),
    (".h", (B + 1, H), (B + 1, H), (B + 1, H), (B, H)),  # batch shape of xs differs
])
def test_unroll_carry_shape_names_the_field(jit, field, h_shape, c_shape, got, want, rng):
  params = random_params(LSTM, rng)
  carry = rnnjax.LSTMState(h=jnp.zeros(h_shape), c=jnp.zeros(c_shape))
  with pytest.raises(ValueError, match=re.escape(
      f"rnnjax.unroll: `carry{field}` has shape {got}, expected {want}")):
    unroll(jit, LSTM, params, xs_of(), carry)


@JIT
def test_unroll_carry_shape_in_a_stack_names_the_layer(jit, rng):
  cell = rnnjax.stack([LSTM, CELL])
  params = random_params(cell, rng)
  carry = (rnnjax.LSTMState(jnp.zeros((B, H)), jnp.zeros((B, H))),
           rnnjax.HiddenState(jnp.zeros((B, H - 1))))
  with pytest.raises(ValueError, match=re.escape(
      f"rnnjax.unroll: `carry[1].h` has shape {(B, H - 1)}, expected {(B, H)}")):
    unroll(jit, cell, params, xs_of(), carry)


# ---- unroll: unroll and remat ----

@pytest.mark.parametrize("value", [0, -2])
def test_unroll_unroll_not_positive(value, params):
  with pytest.raises(ValueError, match=re.escape(
      f"rnnjax.unroll: `unroll` must be a positive integer, got unroll={value}")):
    rnnjax.unroll(CELL, params, xs_of(), unroll=value)


@pytest.mark.parametrize("value", [1.5, "2", None])
def test_unroll_unroll_not_an_integer(value, params):
  with pytest.raises(TypeError, match=re.escape(
      f"rnnjax.unroll: `unroll` must be an integer, got {value!r}")):
    rnnjax.unroll(CELL, params, xs_of(), unroll=value)


@pytest.mark.parametrize("value", ["x", 1.5, None])
def test_unroll_remat_wrong_type(value, params):
  with pytest.raises(TypeError, match=r"rnnjax\.unroll: `remat` must be a bool or a positive "
                     rf"integer.*got {re.escape(repr(value))}"):
    rnnjax.unroll(CELL, params, xs_of(), remat=value)


@pytest.mark.parametrize("value", [0, -1])
def test_unroll_remat_not_positive_is_a_value_error(value, params):
  # A bad value of the right type is a ValueError (house rule 5), as for `unroll=0`.
  with pytest.raises(ValueError, match=r"rnnjax\.unroll: `remat` must be .*positive integer.*"
                     rf"got (remat=)?{value}"):
    rnnjax.unroll(CELL, params, xs_of(), remat=value)


# ---- stack ----

def test_stack_empty():
  with pytest.raises(ValueError, match=r"rnnjax\.stack: `layers` must hold at least one cell or "
                     r"layer, got an empty sequence"):
    rnnjax.stack([])


@pytest.mark.parametrize("bad, name", [("lstm", "str"), (rnnjax.gru, "function"),
                                       (None, "NoneType")])
def test_stack_entry_not_a_cell(bad, name):
  with pytest.raises(TypeError, match=r"rnnjax\.stack: `layers\[1\]` must be an rnnjax\.Cell or "
                     rf"rnnjax\.Layer, got {name}"):
    rnnjax.stack([CELL, bad])


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_stack_dropout_out_of_range(value):
  with pytest.raises(ValueError, match=re.escape(
      f"rnnjax.stack: `dropout` must be in [0, 1), got dropout={value!r}")):
    rnnjax.stack([CELL, CELL], dropout=value)


@pytest.mark.parametrize("value", [None, "0.5"])
def test_stack_dropout_not_a_float(value):
  with pytest.raises(TypeError, match=re.escape(
      f"rnnjax.stack: `dropout` must be a float in [0, 1), got {value!r}")):
    rnnjax.stack([CELL, CELL], dropout=value)


@pytest.mark.parametrize("layers", ["cells", "layers"])
def test_stack_init_input_size(layers):
  second = CELL if layers == "cells" else rnnjax.rnn(CELL)
  with pytest.raises(ValueError, match=re.escape(
      "rnnjax.stack.init: `input_size` must be a positive integer, got input_size=0")):
    rnnjax.stack([CELL, second]).init(jax.random.key(0), 0)


@pytest.mark.parametrize("which", ["short", "long"])
def test_layer_stack_carry_with_wrong_number_of_layers(which, rng):
  layer = rnnjax.stack([rnnjax.bidirectional(CELL, CELL), CELL])
  params = random_params(layer, rng)
  carry = layer.initial_carry(params, (B,))
  carry = carry[:1] if which == "short" else (*carry, carry[-1])
  with pytest.raises(TypeError, match=r"rnnjax\.stack.*`carry`.*2"):
    layer.apply(params, xs_of(), carry)


# ---- bidirectional and rnn ----

def test_bidirectional_merge_choice():
  with pytest.raises(ValueError, match=re.escape(
      "rnnjax.bidirectional: `merge` must be one of 'concat', 'sum'; got merge='max'")):
    rnnjax.bidirectional(CELL, CELL, merge="max")


@pytest.mark.parametrize("arg", ["forward", "backward"])
@pytest.mark.parametrize("bad, name", [("gru", "str"), (rnnjax.rnn(CELL), "Layer")])
def test_bidirectional_argument_not_a_cell(arg, bad, name):
  args = {"forward": CELL, "backward": CELL, arg: bad}
  with pytest.raises(TypeError, match=rf"rnnjax\.bidirectional: `{arg}` must be an rnnjax\.Cell, "
                     rf"got {name}"):
    rnnjax.bidirectional(**args)


def test_bidirectional_init_input_size():
  with pytest.raises(ValueError, match=re.escape(
      "rnnjax.bidirectional.init: `input_size` must be a positive integer, got input_size=0")):
    rnnjax.bidirectional(CELL, CELL).init(jax.random.key(0), 0)


@pytest.mark.parametrize("which", ["tuple", "forward_only"])
def test_bidirectional_carry_not_a_bidirectional_state(which, rng):
  layer = rnnjax.bidirectional(CELL, CELL)
  params = random_params(layer, rng)
  carry = layer.initial_carry(params, (B,))
  carry = tuple(carry) if which == "tuple" else carry.forward
  with pytest.raises(TypeError, match=r"rnnjax\.bidirectional.*`carry`.*BidirectionalState"):
    layer.apply(params, xs_of(), carry)


@pytest.mark.parametrize("bad, name", [("gru", "str"), (rnnjax.rnn(CELL), "Layer")])
def test_rnn_argument_not_a_cell(bad, name):
  with pytest.raises(TypeError, match=rf"rnnjax\.rnn: `cell` must be an rnnjax\.Cell, got {name}"):
    rnnjax.rnn(bad)


# ---- cell factories ----

@pytest.mark.parametrize("value, type_name", [(4.5, "float"), ("8", "str"), (True, "bool"),
                                              (None, "NoneType")])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_factory_hidden_size_not_an_integer(name, value, type_name):
  with pytest.raises(TypeError, match=re.escape(
      f"rnnjax.{name}: `hidden_size` must be an integer, got {value!r} of type {type_name}")):
    FACTORIES[name](value)


@pytest.mark.parametrize("value", [0, -3])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_factory_hidden_size_not_positive(name, value):
  with pytest.raises(ValueError, match=re.escape(
      f"rnnjax.{name}: `hidden_size` must be a positive integer, got hidden_size={value}")):
    FACTORIES[name](value)


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_factory_init_input_size_not_positive(name, value):
  with pytest.raises(ValueError, match=re.escape(
      f"rnnjax.{name}.init: `input_size` must be a positive integer, got input_size={value}")):
    FACTORIES[name](H).init(jax.random.key(0), value)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_factory_init_input_size_not_an_integer(name):
  with pytest.raises(TypeError, match=re.escape(
      f"rnnjax.{name}.init: `input_size` must be an integer, got 2.5 of type float")):
    FACTORIES[name](H).init(jax.random.key(0), 2.5)


@JIT
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_cell_apply_input_feature_size(jit, name, rng):
  cell = FACTORIES[name](H)
  params = random_params(cell, rng)
  carry = cell.initial_carry(params, (B,))
  apply = jax.jit(cell.apply) if jit else cell.apply
  with pytest.raises(ValueError, match=re.escape(
      f"rnnjax.{name}.apply: x has feature size 7 but params were made for input_size=8 "
      "(x.shape=(3, 7))")):
    apply(params, carry, jnp.zeros((B, 7)))


# ---- lengths under jit: out-of-range values act as if clipped; any integer dtype works ----

@functools.cache
def jit_unroll(reverse):
  return jax.jit(lambda p, xs, lengths, resets: rnnjax.unroll(
      CELL, p, xs, lengths=lengths, resets=resets, reverse=reverse))


def reference_run(params, xs, lengths, resets, reverse):
  zero = (np.zeros((B, H)),)
  return reference.run_batch(
      lambda s, x: reference.gru_step(params, s, x), zero, xs, lengths=lengths,
      resets=None if resets is None else np.asarray(resets), reverse=reverse, zero_state=zero)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [[-2, T + 3, 3], [T + 1, -1, 0], [100, 5, -100]])
def test_unroll_lengths_out_of_range_under_jit_act_as_clipped(lengths, reverse, params, rng):
  xs = jnp.asarray(rng.standard_normal((T, B, I)), jnp.float32)
  resets = rng.random((T, B)) < 0.3
  resets[3] = True
  ys, final = jit_unroll(reverse)(params, xs, jnp.array(lengths, jnp.int32), jnp.asarray(resets))
  clipped = np.clip(lengths, 0, T)
  ys_ref, (h_ref,) = reference_run(params, xs, clipped, resets, reverse)
  np.testing.assert_allclose(ys, ys_ref, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(final.h, h_ref, atol=1e-5, rtol=1e-5)
  for b, n in enumerate(clipped):
    np.testing.assert_array_equal(np.asarray(ys)[n:, b], 0.0)


@pytest.mark.parametrize("dtype", ["int8", "int16", "uint8", "uint32", "int32-x64"])
def test_unroll_lengths_any_integer_dtype(dtype, rng):
  # The message for float lengths suggests `lengths.astype(jnp.int32)`; every integer dtype
  # must be accepted, also with strict dtype promotion and under x64.
  x64 = dtype.endswith("x64")
  with jax.enable_x64(x64):
    f = jnp.float64 if x64 else jnp.float32
    cell = rnnjax.gru(H, dtype=f)
    params = random_params(cell, rng)
    xs = jnp.asarray(rng.standard_normal((T, B, I)), f)
    lengths = np.array([T, 4, 1])
    run = jax.jit(lambda p, x, n: rnnjax.unroll(cell, p, x, lengths=n, reverse=True))
    ys, final = run(params, xs, jnp.asarray(lengths, dtype.split("-")[0]))
    zero = (np.zeros((B, H)),)
    ys_ref, (h_ref,) = reference.run_batch(
        lambda s, x: reference.gru_step(params, s, x), zero, xs, lengths=lengths, reverse=True)
    np.testing.assert_allclose(ys, ys_ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(final.h, h_ref, atol=1e-5, rtol=1e-5)


# ---- sequence_model: token ids ----

V = 7
TOKENS = rnnjax.sequence_model(CELL, input_size=1, output_size=2, vocab_size=V, embed_size=I)


@functools.cache
def token_params():
  params = jax.eval_shape(TOKENS.init, jax.random.key(0))
  rng = np.random.default_rng(3)
  return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype),
                                params)


@jax.jit
def token_loss_and_grads(params, ids, lengths):
  def loss(p):
    preds, carry = TOKENS.apply(p, ids, lengths=lengths)
    return jnp.sum(jnp.tanh(preds)) + jnp.sum(carry.h), (preds, carry)
  return jax.value_and_grad(loss, has_aux=True)(params)


def token_ids(rng):
  return rng.integers(0, V, size=(T, B)).astype(np.int32)


@pytest.mark.parametrize("bad", [V, V + 5, -1])
def test_sequence_model_token_ids_out_of_range_concrete(bad, rng):
  # Before: ids >= V gave NaN outputs and negative ids silently wrapped around.
  ids = token_ids(rng)
  ids[2, 1] = bad
  with pytest.raises(ValueError, match=re.escape(
      f"rnnjax.sequence_model.apply: token ids in `xs` must lie in [0, vocab_size) = [0, {V}), "
      f"got {bad} at xs[2, 1]")):
    TOKENS.apply(token_params(), jnp.asarray(ids))


@pytest.mark.parametrize("dtype", [jnp.float32, bool], ids=["float32", "bool"])
def test_sequence_model_token_ids_not_integers(dtype):
  with pytest.raises(TypeError, match=r"rnnjax\.sequence_model\.apply: `xs` must hold integer "
                     rf"token ids \(the model has vocab_size={V}\), got dtype "):
    TOKENS.apply(token_params(), jnp.zeros((T, B), dtype))


@pytest.mark.parametrize("pad", [-1, V, 10**6])
def test_sequence_model_padded_token_ids_are_never_read(pad, rng):
  # Pipelines pad with -1 or V: such ids at or past `lengths` must not be checked, and must
  # leave outputs and gradients exactly as with a valid padding id (a clean run).
  ids = token_ids(rng)
  lengths = np.array([T, 3, 0], np.int32)
  padded = ids.copy()
  clean = ids.copy()
  for b, n in enumerate(lengths):
    padded[n:, b] = pad
    clean[n:, b] = 0
  # No error (and any integer dtype of lengths, as for `unroll`).
  TOKENS.apply(token_params(), jnp.asarray(padded), lengths=jnp.asarray(lengths, jnp.uint8))
  (loss, (preds, carry)), grads = token_loss_and_grads(token_params(), padded, lengths)
  (_, (preds0, carry0)), grads0 = token_loss_and_grads(token_params(), clean, lengths)
  assert np.isfinite(loss) and all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
  np.testing.assert_array_equal(preds, preds0)
  np.testing.assert_array_equal(carry.h, carry0.h)
  jax.tree_util.tree_map(np.testing.assert_array_equal, grads, grads0)


@pytest.mark.parametrize("bad", [V, -1])
def test_sequence_model_token_ids_out_of_range_under_jit_give_nan(bad, rng):
  # Documented: under jit an out-of-range id at a valid step embeds to NaN (negative ids do
  # not wrap around), so that sequence's predictions are NaN from that step on; the other
  # sequences are untouched.
  ids = token_ids(rng)
  lengths = np.full((B,), T, np.int32)
  (_, (preds0, _)), _ = token_loss_and_grads(token_params(), ids, lengths)
  ids[2, 1] = bad
  (_, (preds, _)), _ = token_loss_and_grads(token_params(), ids, lengths)
  preds, preds0 = np.asarray(preds), np.asarray(preds0)
  assert np.isnan(preds[2:, 1]).all()
  np.testing.assert_array_equal(preds[:2, 1], preds0[:2, 1])
  np.testing.assert_array_equal(preds[:, [0, 2]], preds0[:, [0, 2]])
