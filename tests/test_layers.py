"""Tests for `rnnjax.stack`, `rnnjax.bidirectional` and `rnnjax.rnn` against NumPy references.

Every expected value comes from `tests/reference.py` (float64 cell equations and the
engine's semantics as plain loops) composed here layer by layer, or from a construction
written in the test (an identity cell that lets us read a layer's input). Everything runs
under `jax.jit` with fixed shapes; jitted functions are cached per module and reused.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rnnjax
from tests import reference

T, B, I = 7, 3, 4
ATOL = RTOL = 1e-5
OPTIONS = ("plain", "lengths", "resets", "lengths+resets")


# ---- Cells paired with their reference step and the number of leaves in their carry. ----

class Ref(NamedTuple):
  cell: rnnjax.Cell
  step: object  # reference step: (params, state_tuple, x) -> (state_tuple, y)
  num_leaves: int  # leaves of the cell's carry (LSTM: h, c; others: h)


def _lstm(h, **kw):
  return Ref(rnnjax.lstm(h, **kw), reference.lstm_step, 2)


def _gru(h):
  return Ref(rnnjax.gru(h), reference.gru_step, 1)


def _mgu(h):
  return Ref(rnnjax.mgu(h), reference.mgu_step, 1)


def _elman(h):
  return Ref(rnnjax.elman(h), reference.elman_step, 1)


class IdentityParams(NamedTuple):
  marker: jax.Array  # [I], unused; gives the params a dtype and an input size


def identity(dtype=jnp.float32) -> rnnjax.Cell:
  """A cell whose output is its input `x` unchanged (its carry is a dummy `[..., 1]`)."""

  def init(key, input_size):
    del key
    return IdentityParams(jnp.zeros((input_size,), dtype))

  def initial_carry(params, batch_shape=()):
    return jnp.zeros((*batch_shape, 1), params.marker.dtype)

  def apply(params, carry, x, *, key=None):
    del params, key
    return carry, x

  return rnnjax.Cell(init, initial_carry, apply, input_size=lambda p: p.marker.shape[0])


STACKS = {
    "mgu-lstmproj": (_mgu(6), _lstm(5, proj_size=2)),
    "lstm-gru-elman": (_lstm(5), _gru(6), _elman(3)),
}
STACK_CELLS = {name: rnnjax.stack([r.cell for r in refs]) for name, refs in STACKS.items()}


# ---- Jitted entry points, cached so that each is traced once per option pattern. ----

@functools.cache
def jit_unroll(cell, reverse=False):
  def run(params, xs, carry=None, lengths=None, resets=None, key=None):
    return rnnjax.unroll(cell, params, xs, carry, lengths=lengths, resets=resets,
                         reverse=reverse, key=key)
  return jax.jit(run)


@functools.cache
def jit_apply(layer):
  return jax.jit(layer.apply)


# ---- Helpers. ----

def params_shape(module, input_size=I):
  """The params `module.init` makes, as shapes (traced, not run: initialisers compile slowly)."""
  return jax.eval_shape(lambda k: module.init(k, input_size), jax.random.key(0))


def init(module, rng, input_size=I, scale=0.4):
  """Random params with the structure and shapes `module.init` makes: Gaussian noise
  everywhere, so that biases are non-zero and no weight has its default value."""
  return random_like(params_shape(module, input_size), rng, scale)


def random_like(tree, rng, scale=0.5):
  return jax.tree_util.tree_map(
      lambda z: jnp.asarray(scale * rng.standard_normal(z.shape), z.dtype), tree)


def make_xs(rng, shape=(T, B, I)):
  return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def make_options(rng, option):
  """`(lengths, resets)` for an option. Only "plain" passes None; the others differ in values
  only (full lengths, no resets), so that they share one compiled function."""
  if option == "plain":
    return None, None
  lengths = np.array([T, 4, 0], np.int32) if "lengths" in option else np.full(B, T, np.int32)
  r = np.zeros((T, B), bool)
  if "resets" in option:
    r = rng.random((T, B)) < 0.3
    r[0, 0] = True   # a reset at t = 0 (restores the zero carry before the first step)
    r[3, :] = True   # a reset inside every sequence (and at a padded step for lengths=0)
    r[5, 1] = True   # a reset at a padded step when the length is 4
  return jnp.asarray(lengths), jnp.asarray(r)


def leaves64(tree):
  return tuple(np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree))


def ref_stack_step(refs, params):
  """Composes the reference steps; the state is the flat tuple of every layer's leaves."""
  def step(state, x):
    new, i = [], 0
    for r, p in zip(refs, params, strict=True):
      s, x = r.step(p, state[i:i + r.num_leaves], x)
      new.extend(s)
      i += r.num_leaves
    return tuple(new), x
  return step


def ref_run(refs, params, state0, xs, lengths, resets, reverse=False):
  """Reference unroll of the stack of `refs` (one entry for a single cell)."""
  zero = tuple(np.zeros_like(s) for s in state0)
  return reference.run_batch(
      ref_stack_step(refs, params), state0, xs,
      lengths=None if lengths is None else np.asarray(lengths),
      resets=None if resets is None else np.asarray(resets),
      reverse=reverse, zero_state=zero)


def ref_bidirectional(fwd, bwd, params, state0, xs, lengths, resets, merge="concat"):
  n = fwd.num_leaves
  ys_f, s_f = ref_run((fwd,), (params.forward,), state0[:n], xs, lengths, resets)
  ys_b, s_b = ref_run((bwd,), (params.backward,), state0[n:], xs, lengths, resets,
                      reverse=True)
  ys = np.concatenate([ys_f, ys_b], axis=-1) if merge == "concat" else ys_f + ys_b
  return ys, s_f + s_b


def assert_close(actual, expected, atol=ATOL, rtol=RTOL):
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, atol=atol, rtol=rtol)


def assert_tree_close(actual, expected_leaves):
  got = leaves64(actual)
  assert len(got) == len(expected_leaves)
  for g, e in zip(got, expected_leaves, strict=True):
    assert_close(g, e)


def assert_padding_zero(ys, lengths):
  if lengths is not None:
    for b, n in enumerate(np.asarray(lengths)):
      np.testing.assert_array_equal(np.asarray(ys)[int(n):, b], 0.0)


# ---- 1. A stack of cells is a Cell. ----

@pytest.mark.parametrize("name", sorted(STACKS))
def test_stack_of_cells_is_a_cell_with_per_layer_params_and_carry(name, rng):
  refs, cell = STACKS[name], STACK_CELLS[name]
  assert isinstance(cell, rnnjax.Cell)
  params = init(cell, rng)
  assert isinstance(params, tuple) and len(params) == len(refs)
  assert cell.input_size(params) == I
  in_size = I
  for r, p in zip(refs, params, strict=True):
    assert type(p) is type(params_shape(r.cell, in_size))
    assert p.w_i.shape[0] == in_size   # each layer is made for the previous layer's outputs
    out = p.w_h.shape[0]               # H, or P for a projected LSTM
    in_size = out
  carry = cell.initial_carry(params, (B,))
  assert isinstance(carry, tuple) and len(carry) == len(refs)
  for r, p, c in zip(refs, params, carry, strict=True):
    want = r.cell.initial_carry(p, (B,))
    assert type(c) is type(want)
    assert jax.tree_util.tree_map(jnp.shape, c) == jax.tree_util.tree_map(jnp.shape, want)
    for leaf in jax.tree_util.tree_leaves(c):
      np.testing.assert_array_equal(leaf, 0.0)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("name", sorted(STACKS))
def test_stack_of_cells_matches_reference(name, option, reverse, rng):
  refs, cell = STACKS[name], STACK_CELLS[name]
  params = init(cell, rng)
  xs = make_xs(rng)
  carry = random_like(cell.initial_carry(params, (B,)), rng)
  lengths, resets = make_options(rng, option)
  ys, final = jit_unroll(cell, reverse)(params, xs, carry, lengths, resets)
  ys_ref, final_ref = ref_run(refs, params, leaves64(carry), xs, lengths, resets,
                              reverse=reverse)
  assert ys.shape == (T, B, ys_ref.shape[-1])
  assert_close(ys, ys_ref)
  assert_padding_zero(ys, lengths)
  assert jax.tree_util.tree_structure(final) == jax.tree_util.tree_structure(carry)
  assert_tree_close(final, final_ref)


def test_stack_of_one_cell_equals_the_cell(rng):
  ref = _gru(5)
  cell = rnnjax.stack([ref.cell])
  params = init(cell, rng)
  xs = make_xs(rng)
  lengths, resets = make_options(rng, "lengths+resets")
  ys, (final,) = jit_unroll(cell)(params, xs, None, lengths, resets)
  ys_ref, final_ref = ref_run((ref,), params, (np.zeros((B, 5)),), xs, lengths, resets)
  assert_close(ys, ys_ref)
  assert isinstance(final, rnnjax.HiddenState)
  assert_tree_close(final, final_ref)


def test_nested_stack_matches_flat_reference(rng):
  inner = rnnjax.stack([STACKS["lstm-gru-elman"][0].cell, STACKS["lstm-gru-elman"][1].cell])
  last = STACKS["lstm-gru-elman"][2]
  cell = rnnjax.stack([inner, last.cell])
  params = init(cell, rng)
  xs = make_xs(rng)
  lengths, resets = make_options(rng, "lengths+resets")
  ys, final = jit_unroll(cell)(params, xs, None, lengths, resets)
  flat_params = (*params[0], params[1])
  state0 = tuple(np.zeros(s.shape) for s in jax.tree_util.tree_leaves(
      cell.initial_carry(params, (B,))))
  ys_ref, final_ref = ref_run(STACKS["lstm-gru-elman"], flat_params, state0, xs, lengths,
                              resets)
  assert_close(ys, ys_ref)
  assert_tree_close(final, final_ref)


# ---- 2. Dropout between layers. ----

DROP_REFS = STACKS["lstm-gru-elman"]
DROP_CELL = rnnjax.stack([r.cell for r in DROP_REFS], dropout=0.5)
DROP_CELL_ZERO = rnnjax.stack([r.cell for r in DROP_REFS], dropout=0.0)


def drop_reference(params, xs, lengths, resets):
  state0 = tuple(np.zeros(s.shape) for s in jax.tree_util.tree_leaves(
      DROP_CELL.initial_carry(params, (B,))))
  return ref_run(DROP_REFS, params, state0, xs, lengths, resets)


def test_dropout_without_key_is_deterministic_and_equals_no_dropout_reference(rng):
  params = init(DROP_CELL, rng)
  xs = make_xs(rng)
  lengths, resets = make_options(rng, "lengths+resets")
  ys, final = jit_unroll(DROP_CELL)(params, xs, None, lengths, resets)
  ys2, _ = jit_unroll(DROP_CELL)(params, xs, None, lengths, resets)
  np.testing.assert_array_equal(ys, ys2)
  ys_ref, final_ref = drop_reference(params, xs, lengths, resets)
  assert_close(ys, ys_ref)
  assert_tree_close(final, final_ref)


def test_dropout_zero_with_key_equals_no_key(rng):
  params = init(DROP_CELL_ZERO, rng)
  xs = make_xs(rng)
  lengths, resets = make_options(rng, "lengths+resets")
  key = jax.random.key(3)
  ys_key, final_key = jit_unroll(DROP_CELL_ZERO)(params, xs, None, lengths, resets, key)
  ys_ref, final_ref = drop_reference(params, xs, lengths, resets)
  assert_close(ys_key, ys_ref)
  assert_tree_close(final_key, final_ref)
  # The same layers with dropout=0.5 but no key: also no dropout.
  ys_nokey, _ = jit_unroll(DROP_CELL)(params, xs, None, lengths, resets)
  np.testing.assert_allclose(ys_key, ys_nokey, atol=1e-6, rtol=1e-6)


def test_dropout_same_key_reproduces_different_keys_differ_last_layer_kept(rng):
  params = init(DROP_CELL, rng)
  xs = make_xs(rng)
  lengths, resets = make_options(rng, "lengths+resets")
  run = jit_unroll(DROP_CELL)
  ys1, c1 = run(params, xs, None, lengths, resets, jax.random.key(1))
  ys1b, c1b = run(params, xs, None, lengths, resets, jax.random.key(1))
  ys2, c2 = run(params, xs, None, lengths, resets, jax.random.key(2))
  ys_nokey, _ = run(params, xs, None, lengths, resets)
  np.testing.assert_array_equal(ys1, ys1b)
  for a, b in zip(jax.tree_util.tree_leaves(c1), jax.tree_util.tree_leaves(c1b), strict=True):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(ys1, ys2)
  assert not np.allclose(ys1, ys_nokey)
  assert_padding_zero(ys1, lengths)
  # The last layer is an Elman cell, whose output is its new state: if its outputs were
  # dropped they would disagree with the state it carries (and hold zeros).
  for ys, final in ((ys1, c1), (ys2, c2)):
    for b, n in enumerate(np.asarray(lengths)):
      if n > 0:
        np.testing.assert_array_equal(ys[n - 1, b], final[-1].h[b])
        assert np.all(np.asarray(ys)[:n, b] != 0.0)


def test_dropout_one_layer_stack_drops_nothing(rng):
  one = rnnjax.stack([identity()], dropout=0.5)
  xs = make_xs(rng)
  ys, _ = jit_unroll(one)(init(one, rng), xs, key=jax.random.key(7))
  np.testing.assert_array_equal(ys, xs)


DROP_SHAPE = (16, 8, 64)  # large enough for the statistics below; only identity cells use it


@pytest.mark.parametrize("num_layers", [2, 3])
def test_dropout_fraction_and_scale_between_identity_layers(num_layers, rng):
  p = 0.3
  cell = rnnjax.stack([identity() for _ in range(num_layers)], dropout=p)
  params = init(cell, rng, DROP_SHAPE[-1])
  xs = jnp.asarray(rng.uniform(0.5, 1.5, DROP_SHAPE), jnp.float32)
  ys, _ = jit_unroll(cell)(params, xs, key=jax.random.key(11))
  ys, xs = np.asarray(ys), np.asarray(xs)
  kept = ys != 0.0
  # Each of the num_layers - 1 dropouts keeps a unit with probability 1 - p, independently
  # (a fresh mask per layer); the last layer's outputs are not dropped.
  keep = (1 - p) ** (num_layers - 1)
  n = kept.size
  assert abs(kept.mean() - keep) < 5 * np.sqrt(keep * (1 - keep) / n)
  np.testing.assert_allclose(ys[kept], xs[kept] / keep, rtol=1e-6)
  # A fresh mask at every step and for every batch element.
  assert not np.array_equal(kept[0], kept[1])
  assert not np.array_equal(kept[:, 0], kept[:, 1])


def test_dropout_scales_kept_inputs_of_the_next_layer(rng):
  p = 0.4
  first = _lstm(5)
  cell = rnnjax.stack([first.cell, identity()], dropout=p)
  params = init(cell, rng)
  xs = make_xs(rng)
  lengths, resets = make_options(rng, "lengths+resets")
  ys, _ = jit_unroll(cell)(params, xs, None, lengths, resets, jax.random.key(5))
  h_ref, _ = ref_run((first,), params[:1], (np.zeros((B, 5)),) * 2, xs, lengths, resets)
  ys = np.asarray(ys)
  kept = ys != 0.0
  assert 0 < kept.sum() < np.count_nonzero(h_ref)
  assert_close(ys[kept], h_ref[kept] / (1 - p))
  assert_padding_zero(ys, lengths)


def test_dropout_in_a_layer_stack(rng):
  p = 0.5
  layer = rnnjax.stack([rnnjax.rnn(identity()), rnnjax.rnn(identity())], dropout=p)
  assert isinstance(layer, rnnjax.Layer)
  params = init(layer, rng, DROP_SHAPE[-1])
  xs = jnp.asarray(rng.uniform(0.5, 1.5, DROP_SHAPE), jnp.float32)
  lengths = jnp.asarray(rng.integers(0, DROP_SHAPE[0] + 1, DROP_SHAPE[1]), jnp.int32)
  run = jit_apply(layer)
  ys, _ = run(params, xs, lengths=lengths, key=jax.random.key(2))
  ys_again, _ = run(params, xs, lengths=lengths, key=jax.random.key(2))
  ys_other, _ = run(params, xs, lengths=lengths, key=jax.random.key(3))
  ys_nokey, _ = run(params, xs, lengths=lengths)
  ys, xs_np = np.asarray(ys), np.asarray(xs)
  np.testing.assert_array_equal(ys, ys_again)
  assert not np.array_equal(ys, ys_other)
  valid = np.arange(DROP_SHAPE[0])[:, None] < np.asarray(lengths)[None, :]
  np.testing.assert_array_equal(ys_nokey, np.where(valid[..., None], xs_np, 0.0))
  assert_padding_zero(ys, lengths)
  kept = ys != 0.0
  n = valid.sum() * DROP_SHAPE[-1]
  frac = kept.sum() / n
  assert abs(frac - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
  # Kept values are scaled once: the last layer is not dropped.
  np.testing.assert_allclose(ys[kept], xs_np[kept] / (1 - p), rtol=1e-6)


# ---- 3. Bidirectional layers. ----

BIDIRECTIONAL = {
    "concat": (_lstm(5), _gru(4)),
    "sum": (_gru(5), _lstm(6, proj_size=5)),
}
BIDIRECTIONAL_LAYERS = {
    merge: rnnjax.bidirectional(f.cell, b.cell, merge=merge)
    for merge, (f, b) in BIDIRECTIONAL.items()
}


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_bidirectional_matches_reference(merge, option, rng):
  fwd, bwd = BIDIRECTIONAL[merge]
  layer = BIDIRECTIONAL_LAYERS[merge]
  params = init(layer, rng)
  assert isinstance(params, rnnjax.BidirectionalParams)
  assert layer.input_size(params) == I
  xs = make_xs(rng)
  carry = random_like(layer.initial_carry(params, (B,)), rng)
  lengths, resets = make_options(rng, option)
  ys, final = jit_apply(layer)(params, xs, carry, lengths=lengths, resets=resets)
  ys_ref, final_ref = ref_bidirectional(fwd, bwd, params, leaves64(carry), xs, lengths,
                                        resets, merge)
  out = 9 if merge == "concat" else 5
  assert ys.shape == (T, B, out)
  assert_close(ys, ys_ref)
  assert_padding_zero(ys, lengths)
  assert isinstance(final, rnnjax.BidirectionalState)
  assert type(final.forward) is type(carry.forward)
  assert type(final.backward) is type(carry.backward)
  assert_tree_close(final, final_ref)


def test_bidirectional_default_carry_is_zero(rng):
  fwd, bwd = BIDIRECTIONAL["concat"]
  layer = BIDIRECTIONAL_LAYERS["concat"]
  params = init(layer, rng)
  xs = make_xs(rng)
  lengths, resets = make_options(rng, "lengths+resets")
  ys, final = jit_apply(layer)(params, xs, lengths=lengths, resets=resets)
  zero = leaves64(layer.initial_carry(params, (B,)))
  ys_ref, final_ref = ref_bidirectional(fwd, bwd, params, zero, xs, lengths, resets)
  assert_close(ys, ys_ref)
  assert_tree_close(final, final_ref)


def test_bidirectional_sum_with_different_output_sizes_raises_at_init():
  zeros = jax.nn.initializers.zeros  # cheap to run; the sizes are what matters
  layer = rnnjax.bidirectional(rnnjax.gru(5, kernel_init=zeros, recurrent_init=zeros),
                               rnnjax.gru(4, kernel_init=zeros, recurrent_init=zeros),
                               merge="sum")
  with pytest.raises(ValueError, match=r"rnnjax\.bidirectional: merge='sum'.*forward=5.*"
                                       r"backward=4"):
    layer.init(jax.random.key(0), I)


# ---- 4. Stacks of layers (PyTorch's num_layers=2, bidirectional=True). ----

LAYER_STACKS = {
    # name: layer specs; a spec is ("bi", fwd, bwd, merge) or ("cell", ref)
    "bi-bi": (("bi", _lstm(4), _lstm(4), "concat"), ("bi", _gru(3), _gru(3), "concat")),
    "bi-sum-cell": (("bi", _gru(3), _mgu(3), "sum"), ("cell", _elman(5))),
    "cell-bi": (("cell", _lstm(5, proj_size=3)), ("bi", _mgu(2), _elman(4), "concat")),
}


def build_layer(spec):
  if spec[0] == "bi":
    return rnnjax.bidirectional(spec[1].cell, spec[2].cell, merge=spec[3])
  return spec[1].cell


LAYER_STACK_LAYERS = {
    name: rnnjax.stack([build_layer(s) for s in specs]) for name, specs in LAYER_STACKS.items()
}


def ref_layer_stack(specs, params, carry, xs, lengths, resets):
  finals = []
  for spec, p, c in zip(specs, params, carry, strict=True):
    if spec[0] == "bi":
      xs, f = ref_bidirectional(spec[1], spec[2], p, leaves64(c), xs, lengths, resets, spec[3])
    else:
      xs, f = ref_run((spec[1],), (p,), leaves64(c), xs, lengths, resets)
    finals.extend(f)
  return xs, tuple(finals)


@pytest.mark.parametrize("option", ["plain", "lengths+resets"])
@pytest.mark.parametrize("name", sorted(LAYER_STACKS))
def test_layer_stack_matches_layer_by_layer_reference(name, option, rng):
  specs, layer = LAYER_STACKS[name], LAYER_STACK_LAYERS[name]
  assert isinstance(layer, rnnjax.Layer)
  params = init(layer, rng)
  assert isinstance(params, tuple) and len(params) == len(specs)
  assert layer.input_size(params) == I
  carry = random_like(layer.initial_carry(params, (B,)), rng)
  assert isinstance(carry, tuple) and len(carry) == len(specs)
  for spec, c in zip(specs, carry, strict=True):
    assert isinstance(c, rnnjax.BidirectionalState) == (spec[0] == "bi")
  xs = make_xs(rng)
  lengths, resets = make_options(rng, option)
  ys, final = jit_apply(layer)(params, xs, carry, lengths=lengths, resets=resets)
  ys_ref, final_ref = ref_layer_stack(specs, params, carry, xs, lengths, resets)
  assert_close(ys, ys_ref)
  assert_padding_zero(ys, lengths)
  assert jax.tree_util.tree_structure(final) == jax.tree_util.tree_structure(carry)
  assert_tree_close(final, final_ref)


def test_layer_stack_input_sizes_follow_the_previous_layer(rng):
  params = init(LAYER_STACK_LAYERS["bi-bi"], rng)
  assert params[0].forward.w_i.shape[0] == I
  assert params[0].backward.w_i.shape[0] == I
  assert params[1].forward.w_i.shape[0] == 8   # concat of two LSTM(4)
  assert params[1].backward.w_i.shape[0] == 8
  params = init(LAYER_STACK_LAYERS["bi-sum-cell"], rng)
  assert params[1].w_i.shape[0] == 3           # sum of GRU(3) and MGU(3)
  params = init(LAYER_STACK_LAYERS["cell-bi"], rng)
  assert params[0].w_i.shape[0] == I
  assert params[1].forward.w_i.shape[0] == 3   # projected LSTM


def test_layer_stack_default_carry(rng):
  specs, layer = LAYER_STACKS["bi-bi"], LAYER_STACK_LAYERS["bi-bi"]
  params = init(layer, rng)
  xs = make_xs(rng)
  lengths, _ = make_options(rng, "lengths")
  ys, final = jit_apply(layer)(params, xs, lengths=lengths)
  zero = layer.initial_carry(params, (B,))
  ys_ref, final_ref = ref_layer_stack(specs, params, zero, xs, lengths, None)
  assert_close(ys, ys_ref)
  assert_tree_close(final, final_ref)


# ---- 5. rnn(cell), forwards and reversed. ----

RNN_CELLS = {"gru": _gru(5), "elman": _elman(4)}


@functools.cache
def _rnn_layer(cell, reverse):
  return rnnjax.rnn(cell, reverse=reverse)


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", sorted(RNN_CELLS))
def test_rnn_matches_reference(name, reverse, option, rng):
  ref = RNN_CELLS[name]
  layer = _rnn_layer(ref.cell, reverse)
  assert isinstance(layer, rnnjax.Layer)
  params = init(layer, rng)
  assert layer.input_size(params) == I
  carry = random_like(layer.initial_carry(params, (B,)), rng)
  xs = make_xs(rng)
  lengths, resets = make_options(rng, option)
  ys, final = jit_apply(layer)(params, xs, carry, lengths=lengths, resets=resets)
  ys_ref, final_ref = ref_run((ref,), (params,), leaves64(carry), xs, lengths, resets,
                              reverse=reverse)
  assert_close(ys, ys_ref)
  assert_padding_zero(ys, lengths)
  assert type(final) is type(carry)
  assert_tree_close(final, final_ref)


def test_rnn_of_a_stack_reversed_matches_reference(rng):
  refs = STACKS["mgu-lstmproj"]
  layer = _rnn_layer(STACK_CELLS["mgu-lstmproj"], True)
  params = init(layer, rng)
  xs = make_xs(rng)
  lengths, resets = make_options(rng, "lengths+resets")
  ys, final = jit_apply(layer)(params, xs, lengths=lengths, resets=resets)
  zero = leaves64(layer.initial_carry(params, (B,)))
  ys_ref, final_ref = ref_run(refs, params, zero, xs, lengths, resets, reverse=True)
  assert_close(ys, ys_ref)
  assert_tree_close(final, final_ref)


# ---- 6. Gradients, checked against finite differences in float64. ----

def _grad_module():
  f64 = {"dtype": jnp.float64}
  # A stack of cells with dropout between them, as the forward cell of a bidirectional layer.
  inner = rnnjax.stack([rnnjax.lstm(3, **f64), rnnjax.gru(2, **f64)], dropout=0.5)
  return rnnjax.bidirectional(inner, rnnjax.elman(2, **f64))


GRAD_MODULE = _grad_module()


@jax.jit
def _grad_loss(params, xs, carry, weights, lengths, resets, key):
  ys, final = GRAD_MODULE.apply(params, xs, carry, lengths=lengths, resets=resets, key=key)
  leaves = jax.tree_util.tree_leaves(final)
  return jnp.sum(ys * weights) + sum(jnp.sum(jnp.sin(c)) for c in leaves)


def test_gradients_through_stack_and_bidirectional_match_finite_differences(rng):
  with jax.enable_x64(True):
    params = init(GRAD_MODULE, rng)
    carry = random_like(GRAD_MODULE.initial_carry(params, (B,)), rng)
    xs = jnp.asarray(rng.standard_normal((T, B, I)), jnp.float64)
    lengths = jnp.array([T, 4, 1], jnp.int64)  # int64: see test_checks for int32 under x64
    resets = jnp.asarray(rng.random((T, B)) < 0.3)
    weights = jnp.asarray(rng.standard_normal((T, B, 4)), jnp.float64)
    key = jax.random.key(4)  # dropout on, with a fixed key: the same masks at every call
    check_grads(lambda p, x, c: _grad_loss(p, x, c, weights, lengths, resets, key),
                (params, xs, carry), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
