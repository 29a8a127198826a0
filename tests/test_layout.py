"""`time_major=False`: batch-major inputs `[..., T, I]` wherever a sequence goes in.

Outputs and final carries of the batch-major form are checked against the NumPy loops of
`tests/reference.py` (float64) run on the inputs transposed by hand; gradients (params,
inputs, initial carry) against the time-major call on inputs transposed by hand. Then the
messages: `lengths` or `resets` shaped for the other layout say which layout the input
looks like and how to fix it, and every message quotes the shape the caller passed (the
Flax wrappers quoted an internal transpose before).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax._src import cell as cell_lib
from rnnjax._src.cells import common
from tests import reference, test_parallel

B, T, I, H = 3, 6, 2, 4
TOL = dict(atol=1e-5, rtol=1e-5)
LENGTHS = np.array([T, 3, 0], np.int32)


def _resets_tm(batch=B) -> np.ndarray:
  r = np.zeros((T, batch), bool)
  r[0, 0] = r[4, 1 % batch] = True
  r[3, :] = True
  return r


def _bm(a):  # time-major [T, ...] -> batch-major [..., T] (features, if any, stay last)
  a = np.asarray(a)
  return np.moveaxis(a, 0, -2 if a.ndim >= 3 else -1)


def _random(module, rng, input_size=I, scale=0.5):
  """Random params shaped as `module.init` makes them (non-zero biases everywhere)."""
  shapes = jax.eval_shape(lambda k: module.init(k, input_size), jax.random.key(0))
  return jax.tree_util.tree_map(
      lambda z: jnp.asarray(scale * rng.standard_normal(z.shape), z.dtype), shapes)


def _ref(step, params, xs_tm, lengths=None, resets_tm=None, reverse=False, state0=None):
  """The reference run on time-major inputs: `(ys [T, B, O], final state tuple)`."""
  batch = np.asarray(xs_tm).shape[1]
  if state0 is None:
    state0 = (np.zeros((batch, H)),) * (2 if step is reference.lstm_step else 1)
  zero = tuple(np.zeros_like(s) for s in state0)
  return reference.run_batch(functools.partial(step, params), state0, xs_tm, lengths=lengths,
                             resets=resets_tm, reverse=reverse, zero_state=zero)


def _close(actual, expected):
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, **TOL)


def _close_tree(actual, expected):
  a, e = jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)
  assert len(a) == len(e)
  for x, y in zip(a, e, strict=True):
    _close(x, np.asarray(y, np.float64))


CELLS = {"lstm": (rnnjax.lstm(H), reference.lstm_step),
         "gru": (rnnjax.gru(H), reference.gru_step),
         "elman": (rnnjax.elman(H), reference.elman_step)}


@functools.cache
def _jit_unroll(name, fused, reverse, time_major):
  cell = CELLS[name][0]
  return jax.jit(lambda p, xs, lengths, resets: rnnjax.unroll(
      cell, p, xs, lengths=lengths, resets=resets, reverse=reverse, fused=fused,
      time_major=time_major))


# ---- unroll (generic and fused LSTM/GRU) ----

@pytest.mark.parametrize("name,fused,reverse", [
    ("lstm", True, False), ("lstm", True, True), ("lstm", False, True), ("gru", True, True),
    ("gru", False, False), ("elman", False, False)])
def test_unroll_batch_major_matches_reference(name, fused, reverse, rng):
  cell, step = CELLS[name]
  params = _random(cell, rng)
  xs_tm = rng.standard_normal((T, B, I)).astype(np.float32)
  resets_tm = _resets_tm()
  ys, carry = _jit_unroll(name, fused, reverse, False)(
      params, jnp.asarray(_bm(xs_tm)), jnp.asarray(LENGTHS), jnp.asarray(_bm(resets_tm)))
  ys_ref, final_ref = _ref(step, params, xs_tm, LENGTHS, resets_tm, reverse)
  assert ys.shape == (B, T, H)
  _close(ys, _bm(ys_ref))
  _close_tree(carry, final_ref)


@pytest.mark.parametrize("fused", [True, False])
def test_unroll_batch_major_gradients_equal_transposing_by_hand(fused, rng):
  cell = CELLS["lstm"][0]
  params = _random(cell, rng)
  xs = jnp.asarray(rng.standard_normal((B, T, I)), jnp.float32)
  carry0 = jax.tree_util.tree_map(
      lambda z: jnp.asarray(rng.standard_normal(z.shape), jnp.float32),
      jax.eval_shape(lambda: cell.initial_carry(params, (B,))))
  w = jnp.asarray(rng.standard_normal((B, T, H)), jnp.float32)
  lengths, resets = jnp.asarray(LENGTHS), jnp.asarray(_bm(_resets_tm()))

  def loss(p, x, c, by_hand):  # x: [B, T, I]
    if by_hand:  # to time-major, call, and back
      ys, final = rnnjax.unroll(cell, p, jnp.moveaxis(x, 1, 0), c, lengths=lengths,
                                resets=jnp.moveaxis(resets, 1, 0), reverse=True, fused=fused)
      ys = jnp.moveaxis(ys, 0, 1)
    else:
      ys, final = rnnjax.unroll(cell, p, x, c, lengths=lengths, resets=resets, reverse=True,
                                fused=fused, time_major=False)
    return jnp.sum(ys * w) + sum(jnp.sum(v ** 2) for v in jax.tree_util.tree_leaves(final))

  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
  _close_tree(grad(params, xs, carry0, False), grad(params, xs, carry0, True))


def test_unroll_two_batch_axes_and_truncated_unroll(rng):
  cell, step = CELLS["gru"]
  params = _random(cell, rng)
  xs_tm = rng.standard_normal((T, 2 * B, I)).astype(np.float32)
  lengths = np.concatenate([LENGTHS, LENGTHS[::-1]])
  resets_tm = np.concatenate([_resets_tm(), _resets_tm()[::-1]], axis=1)
  ys_ref, final_ref = _ref(step, params, xs_tm, lengths, resets_tm)
  # [2, B, T, I]: two batch axes before time.
  xs = jnp.asarray(_bm(xs_tm).reshape(2, B, T, I))
  ys, carry = rnnjax.unroll(cell, params, xs, lengths=lengths.reshape(2, B),
                            resets=_bm(resets_tm).reshape(2, B, T), time_major=False)
  _close(ys, _bm(ys_ref).reshape(2, B, T, H))
  _close(carry.h, final_ref[0].reshape(2, B, H))
  ys, carry = rnnjax.truncated_unroll(cell, params, jnp.asarray(_bm(xs_tm)), chunk=4,
                                      lengths=lengths, resets=_bm(resets_tm), time_major=False)
  _close(ys, _bm(ys_ref))
  _close_tree(carry, final_ref)


# ---- parallel_unroll (a linear cell) ----

def _diagonal_cell() -> cell_lib.Cell:
  """test_parallel's user-written linear cell `h_t = σ(x W_a) h_{t-1} + x W_b`, H wide."""
  return test_parallel.diagonal_cell(H)


def _diagonal_step(params, state, x):
  w_a, w_b = np.asarray(params.w_a, np.float64), np.asarray(params.w_b, np.float64)
  h = reference.sigmoid(x @ w_a) * state[0] + x @ w_b
  return (h,), h


def test_parallel_unroll_batch_major(rng):
  cell = _diagonal_cell()
  params = _random(cell, rng)
  xs_tm = rng.standard_normal((T, B, I)).astype(np.float32)
  resets_tm = _resets_tm()
  run = jax.jit(lambda p, x, c, time_major: rnnjax.parallel_unroll(
      cell, p, x, c, lengths=jnp.asarray(LENGTHS),
      resets=jnp.asarray(resets_tm if time_major else _bm(resets_tm)), reverse=True,
      engine="parallel", time_major=time_major), static_argnums=3)
  carry0 = common.HiddenState(jnp.asarray(rng.standard_normal((B, H)), jnp.float32))
  ys, carry = run(params, jnp.asarray(_bm(xs_tm)), carry0, False)
  ys_ref, final_ref = _ref(_diagonal_step, params, xs_tm, LENGTHS, resets_tm, reverse=True,
                           state0=(np.asarray(carry0.h, np.float64),))
  _close(ys, _bm(ys_ref))
  _close_tree(carry, final_ref)

  def loss(p, x, c, time_major):
    ys, final = run(p, x if time_major else jnp.moveaxis(x, 0, 1), c, time_major)
    return jnp.sum(jnp.tanh(ys if time_major else jnp.moveaxis(ys, 1, 0))) + jnp.sum(final.h)

  grad = jax.grad(loss, argnums=(0, 1, 2))
  xs = jnp.asarray(xs_tm)
  _close_tree(grad(params, xs, carry0, False), grad(params, xs, carry0, True))


# ---- Layers: a stack, bidirectional ----

def _bidi_ref(params, xs_tm, lengths, resets_tm):
  ys_f, s_f = _ref(reference.lstm_step, params.forward, xs_tm, lengths, resets_tm)
  ys_b, s_b = _ref(reference.gru_step, params.backward, xs_tm, lengths, resets_tm,
                   reverse=True)
  return np.concatenate([ys_f, ys_b], axis=-1), s_f + s_b


def test_bidirectional_and_stack_of_layers_batch_major(rng):
  bidi = rnnjax.bidirectional(rnnjax.lstm(H), rnnjax.gru(H))
  layer = rnnjax.stack([bidi, rnnjax.gru(H)])
  params = _random(layer, rng)
  xs_tm = rng.standard_normal((T, B, I)).astype(np.float32)
  resets_tm = _resets_tm()
  apply = jax.jit(functools.partial(layer.apply, time_major=False))
  ys, carry = apply(params, jnp.asarray(_bm(xs_tm)), lengths=jnp.asarray(LENGTHS),
                    resets=jnp.asarray(_bm(resets_tm)))
  mid_ref, bidi_final = _bidi_ref(params[0], xs_tm, LENGTHS, resets_tm)
  ys_ref, gru_final = _ref(reference.gru_step, params[1], mid_ref, LENGTHS, resets_tm)
  _close(ys, _bm(ys_ref))
  _close_tree(carry, bidi_final + gru_final)

  # The bidirectional layer alone (the stack above runs its layers time-major).
  def loss(p, x, time_major):  # x: [T, B, I]
    x = x if time_major else jnp.moveaxis(x, 0, 1)
    r = jnp.asarray(resets_tm if time_major else _bm(resets_tm))
    ys, carry = bidi.apply(p, x, lengths=jnp.asarray(LENGTHS), resets=r, time_major=time_major)
    ys = ys if time_major else jnp.moveaxis(ys, 1, 0)
    return jnp.sum(jnp.sin(ys)), (ys, carry)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
  xs = jnp.asarray(xs_tm)
  grads, (ys, carry) = grad(params[0], xs, False)
  _close(ys, mid_ref)
  _close_tree(carry, bidi_final)
  _close_tree(grads, grad(params[0], xs, True)[0])


# ---- sequence_model ----

def test_sequence_model_batch_major_floats_and_tokens(rng):
  model = rnnjax.sequence_model(rnnjax.lstm(H), input_size=I, output_size=2)
  params = jax.tree_util.tree_map(
      lambda z: jnp.asarray(0.5 * rng.standard_normal(z.shape), z.dtype),
      jax.eval_shape(model.init, jax.random.key(0)))
  xs_tm = rng.standard_normal((T, B, I)).astype(np.float32)
  preds, carry = jax.jit(functools.partial(model.apply, time_major=False))(
      params, jnp.asarray(_bm(xs_tm)), lengths=jnp.asarray(LENGTHS))
  hs_ref, final_ref = _ref(reference.lstm_step, params.core, xs_tm, LENGTHS)
  w, b = np.asarray(params.w_out, np.float64), np.asarray(params.b_out, np.float64)
  _close(preds, _bm(hs_ref @ w + b))
  _close_tree(carry, final_ref)

  tokens = rnnjax.sequence_model(rnnjax.gru(H), input_size=1, output_size=2, vocab_size=5,
                                 embed_size=3)
  params = jax.tree_util.tree_map(
      lambda z: jnp.asarray(0.5 * rng.standard_normal(z.shape), z.dtype),
      jax.eval_shape(tokens.init, jax.random.key(0)))
  ids_tm = rng.integers(0, 5, (T, B)).astype(np.int32)
  ids_tm[4:, 2] = -1  # padding past the length is never read
  preds, _ = tokens.apply(params, jnp.asarray(ids_tm.T), lengths=np.array([T, 3, 4]),
                          time_major=False)
  emb = np.asarray(params.embed, np.float64)[np.clip(ids_tm, 0, 4)]
  hs_ref, _ = _ref(reference.gru_step, params.core, emb, np.array([T, 3, 4]))
  w, b = np.asarray(params.w_out, np.float64), np.asarray(params.b_out, np.float64)
  _close(preds, _bm(hs_ref @ w + b))  # padded steps: zero core outputs, then the bias


def test_sequence_model_parallel_engine_batch_major(rng):
  model = rnnjax.sequence_model(_diagonal_cell(), input_size=I, output_size=2,
                                engine="parallel")
  params = model.init(jax.random.key(0))
  xs = jnp.asarray(rng.standard_normal((B, T, I)), jnp.float32)
  preds, carry = model.apply(params, xs, lengths=LENGTHS, time_major=False)
  hs_ref, final_ref = _ref(_diagonal_step, params.core, np.moveaxis(np.asarray(xs), 1, 0),
                           LENGTHS)
  w, b = np.asarray(params.w_out, np.float64), np.asarray(params.b_out, np.float64)
  _close(preds, _bm(hs_ref @ w + b))
  _close_tree(carry, final_ref)


# ---- Messages ----

CELL = rnnjax.gru(H)
PARAMS = CELL.init(jax.random.key(0), I)
XS_BM = jnp.zeros((B, T, I))
XS_TM = jnp.zeros((T, B, I))


def _raises(match, fn, *args, **kwargs):
  with pytest.raises(ValueError, match=match):
    fn(*args, **kwargs)


@pytest.mark.parametrize("run", [
    lambda xs, **kw: rnnjax.unroll(CELL, PARAMS, xs, **kw),
    lambda xs, **kw: rnnjax.truncated_unroll(CELL, PARAMS, xs, chunk=2, **kw),
    lambda xs, **kw: rnnjax.parallel_unroll(_diagonal_cell(), PARAMS_DIAG, xs, **kw),
    lambda xs, **kw: rnnjax.rnn(CELL).apply(PARAMS, xs, **kw),
    lambda xs, **kw: rnnjax.stack([rnnjax.bidirectional(CELL, CELL)]).apply(
        (rnnjax.BidirectionalParams(PARAMS, PARAMS),), xs, **kw),
], ids=["unroll", "truncated_unroll", "parallel_unroll", "rnn", "stack_of_layers"])
def test_lengths_and_resets_for_the_other_layout_say_so(run):
  batch_major = re.escape("xs looks batch-major") + ".*" + re.escape(
      f"xs.shape={(B, T, I)}). Pass time_major=False, or transpose xs with "
      "jnp.moveaxis(xs, -2, 0)")
  _raises(batch_major, run, XS_BM, lengths=np.full(B, T, np.int32))
  time_major = re.escape("xs looks time-major") + ".*" + re.escape(
      f"xs.shape={(T, B, I)}). Pass time_major=True")
  _raises(time_major, run, XS_TM, lengths=np.full(B, T, np.int32), time_major=False)
  _raises(r"`resets` must have shape \[T, \.\.\.batch\].*resets looks batch-major.*"
          r"jnp\.moveaxis\(resets, -1, 0\)", run, XS_TM, resets=np.zeros((B, T), bool))
  _raises(r"`resets` must have shape \[\.\.\.batch, T\].*resets looks time-major.*"
          r"jnp\.moveaxis\(resets, 0, -1\)", run, XS_BM, resets=np.zeros((T, B), bool),
          time_major=False)
  _raises(re.escape(f"xs has feature size 5 but params were made for input_size={I} "
                    f"(xs.shape={(B, T, 5)})"), run, jnp.zeros((B, T, 5)), time_major=False)


PARAMS_DIAG = _diagonal_cell().init(jax.random.key(0), I)


def test_sequence_model_tokens_message_and_bad_flag():
  model = rnnjax.sequence_model(CELL, input_size=1, output_size=2, vocab_size=5)
  params = model.init(jax.random.key(0))
  ids = jnp.zeros((B, T), jnp.int32)
  _raises(re.escape("xs looks batch-major") + ".*" + re.escape(
      f"xs.shape={(B, T)}). Pass time_major=False, or transpose xs with "
      "jnp.moveaxis(xs, -1, 0)"), model.apply, params, ids, lengths=np.full(B, T, np.int32))
  with pytest.raises(TypeError, match=r"rnnjax\.unroll: `time_major` must be a bool"):
    rnnjax.unroll(CELL, PARAMS, XS_TM, time_major=0)


def test_flax_wrappers_quote_the_callers_shape():
  from flax import nnx

  from rnnjax.interop.flax import NNXRNN, RNN

  nnx_model = NNXRNN(CELL, I, rngs=nnx.Rngs(0), deterministic=True)
  shape = re.escape(f"inputs.shape={(B, T, 5)}")
  _raises(r"NNXRNN: inputs has feature size 5.*" + shape, nnx_model, jnp.zeros((B, T, 5)))
  _raises(r"NNXRNN: `seq_lengths` must have the batch shape of inputs, \(6,\).*"
          r"inputs looks time-major.*" + re.escape(f"inputs.shape={(T, B, I)})"),
          nnx_model, XS_TM, seq_lengths=np.full(B, T, np.int32))
  linen = RNN(CELL)
  variables = {"params": {"cell": PARAMS}}
  _raises(r"RNN: `seq_lengths` must have the batch shape of inputs.*" +
          re.escape(f"inputs.shape={(B, T, I)}"), linen.apply, variables, XS_BM,
          seq_lengths=np.full(T, 2, np.int32))
  _raises(r"`resets` must have the shape .* \[\*batch, T\].*resets looks time-major",
          linen.apply, variables, XS_BM, resets=np.zeros((T, B), bool))
