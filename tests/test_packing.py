"""`rnnjax.pad`, `pack`, `unpack` and `unpad` (issue 15, point 6).

The reference for the engines is each sequence run on its own in a plain Python loop over its
steps (`cell.apply`, one step at a time, from `initial_carry`): packing several sequences
into a row and unrolling with `resets`, or padding them and unrolling with `lengths`, must
give each sequence exactly those outputs (and, with lengths, those final carries). The
round-trip properties (hypothesis) check the layouts against facts computed independently
from the lengths: resets at the first step of each run of one id, padding only at the end of
each row, and exact round trips of the inputs for every dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rnnjax

I, H = 3, 4
LENGTHS = (5, 2, 7, 3, 1, 4)
NUM_STEPS = 8
# First fit in order into rows of 8: row 0 takes 0 (5), 1 (2), 4 (1); row 1 takes 2 (7);
# row 2 takes 3 (3), 5 (4). Written out by hand from the rule.
PACKED_IDS = np.array([
    [0, 0, 0, 0, 0, 1, 1, 4],
    [2, 2, 2, 2, 2, 2, 2, -1],
    [3, 3, 3, 5, 5, 5, 5, -1],
]).T

CELLS = {"lstm": rnnjax.lstm(H), "gru": rnnjax.gru(H)}
_unroll = jax.jit(rnnjax.unroll, static_argnums=0)


def _sequences(lengths, seed=0, dtype=np.float32, trailing=(I,)):
  rng = np.random.default_rng(seed)
  return [(rng.standard_normal((n, *trailing)) * 3).astype(dtype) for n in lengths]


def _reference(name, params, seq):
  """One sequence on its own: a Python loop over its steps, from the initial carry."""
  cell = CELLS[name]
  step = jax.jit(cell.apply)
  carry = cell.initial_carry(params, ())
  ys = []
  for x in seq:
    carry, y = step(params, carry, jnp.asarray(x))
    ys.append(np.asarray(y))
  return np.stack(ys), carry


@pytest.fixture(scope="module", params=sorted(CELLS))
def case(request):
  """(name, params, sequences, per-sequence reference outputs and carries)."""
  name = request.param
  params = CELLS[name].init(jax.random.key(0), input_size=I)
  seqs = _sequences(LENGTHS)
  return name, params, seqs, [_reference(name, params, s) for s in seqs]


def test_pack_then_unroll_with_resets_equals_each_sequence_on_its_own(case):
  name, params, seqs, refs = case
  xs, resets, segment_ids = rnnjax.pack(seqs, NUM_STEPS)
  np.testing.assert_array_equal(segment_ids, PACKED_IDS)
  assert xs.shape == (NUM_STEPS, 3, I) and xs.dtype == jnp.float32
  ys, _ = _unroll(CELLS[name], params, xs, resets=resets)
  outs = rnnjax.unpack(ys, segment_ids)
  assert len(outs) == len(seqs)
  for out, (ref, _) in zip(outs, refs, strict=True):
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  # With lengths that skip each row's trailing padding, a row's final carry is its last
  # sequence's (rows end with sequences 4, 2 and 5).
  lengths = jnp.sum(segment_ids >= 0, axis=0)
  ys2, carry = _unroll(CELLS[name], params, xs, resets=resets, lengths=lengths)
  np.testing.assert_allclose(ys2, jnp.where((segment_ids >= 0)[..., None], ys, 0), atol=1e-6)
  for row, last in enumerate((4, 2, 5)):
    for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(refs[last][1]), strict=True):
      np.testing.assert_allclose(got[row], want, rtol=1e-5, atol=1e-5)


def test_pad_then_unroll_with_lengths_equals_each_sequence_on_its_own(case):
  name, params, seqs, refs = case
  xs, lengths = rnnjax.pad(seqs, num_steps=NUM_STEPS)
  assert xs.shape == (NUM_STEPS, len(seqs), I) and lengths.dtype == jnp.int32
  np.testing.assert_array_equal(lengths, LENGTHS)
  ys, carry = _unroll(CELLS[name], params, xs, lengths=lengths)
  for b, (out, (ref_ys, ref_carry)) in enumerate(zip(rnnjax.unpad(ys, lengths), refs,
                                                      strict=True)):
    np.testing.assert_allclose(out, ref_ys, rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(ref_carry), strict=True):
      np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-5)


@given(lengths=st.lists(st.integers(0, 6), min_size=1, max_size=7),
       extra=st.integers(0, 3), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([np.float32, np.int32, np.bool_]))
def test_pack_unpack_and_pad_unpad_round_trip_exactly(lengths, extra, seed, dtype):
  seqs = _sequences(lengths, seed, dtype, trailing=(2,))
  num_steps = max(max(lengths), 1) + extra
  xs, resets, segment_ids = rnnjax.pack(seqs, num_steps)
  ids, rst = np.asarray(segment_ids), np.asarray(resets)
  assert xs.dtype == dtype and rst.dtype == np.bool_ and ids.dtype == np.int32
  assert xs.shape == (num_steps, ids.shape[1], 2) and rst.shape == ids.shape
  assert [int((ids == i).sum()) for i in range(len(lengths))] == list(lengths)
  used = ids >= 0
  assert not (used[1:] & ~used[:-1]).any()  # padding only at the end of a row
  assert not np.asarray(xs)[~used].any()  # zeros there
  first = used & np.concatenate([np.ones_like(ids[:1], bool), ids[1:] != ids[:-1]])
  np.testing.assert_array_equal(rst, first)
  outs = rnnjax.unpack(xs, segment_ids, num_sequences=len(lengths))
  padded, lens = rnnjax.pad(seqs, num_steps=num_steps)
  np.testing.assert_array_equal(lens, lengths)
  for out, back, seq in zip(outs, rnnjax.unpad(padded, lens), seqs, strict=True):
    for got in (out, back):
      assert got.dtype == seq.dtype
      np.testing.assert_array_equal(got, seq)


def test_unpack_is_differentiable_and_works_under_jit():
  xs, _, segment_ids = rnnjax.pack(_sequences((2, 3, 1)), num_steps=4)

  def total(ys):
    return sum(jnp.sum(o) for o in rnnjax.unpack(ys, segment_ids))

  grad = jax.jit(jax.grad(total))(xs)
  np.testing.assert_array_equal(grad, np.broadcast_to((segment_ids >= 0)[..., None], xs.shape))
  assert rnnjax.pad([np.ones((2, 1))], pad_value=-1.0)[0][:, 0, 0].tolist() == [1.0, 1.0]
  assert rnnjax.pad([np.ones((1, 1))], num_steps=3, pad_value=-1.0)[0][:, 0, 0].tolist() == [
      1.0, -1.0, -1.0]


ONE = np.ones((2, 3), np.float32)


@pytest.mark.parametrize("call, error, match", [
    (lambda: rnnjax.pad([]), ValueError, r"rnnjax\.pad: `sequences` is empty"),
    (lambda: rnnjax.pack([], 4), ValueError, r"rnnjax\.pack: `sequences` is empty"),
    (lambda: rnnjax.pad(np.ones((3, 4))), TypeError,
     r"rnnjax\.pad: `sequences` must be a list of arrays .*got an array of shape \(3, 4\)"),
    (lambda: rnnjax.pad([np.float32(1.0)]), ValueError,
     r"rnnjax\.pad: sequences\[0\] must be an array \[T_i, \.\.\.\] with a time axis"),
    (lambda: rnnjax.pad([ONE, np.ones((5, 4), np.float32)]), ValueError,
     r"rnnjax\.pad: .*same trailing shape.*sequences\[1\]\.shape=\(5, 4\).*\(3,\)"),
    (lambda: rnnjax.pack([ONE, ONE.astype(np.int32)], 4), TypeError,
     r"rnnjax\.pack: .*same dtype.*sequences\[1\] has dtype int32.*float32"),
    (lambda: rnnjax.pack([ONE, np.ones((9, 3), np.float32)], 8), ValueError,
     r"rnnjax\.pack: sequences\[1\] has 9 steps but num_steps=8.*split the sequence"),
    (lambda: rnnjax.pad([ONE, np.ones((9, 3), np.float32)], num_steps=8), ValueError,
     r"rnnjax\.pad: sequences\[1\] has 9 steps but num_steps=8"),
    (lambda: rnnjax.pack([ONE], 0), ValueError, r"rnnjax\.pack: `num_steps` must be a positive"),
    (lambda: rnnjax.unpack(np.ones((4, 2, 3)), np.zeros((4, 3), np.int32)), ValueError,
     r"rnnjax\.unpack: .*ys\.shape=\(4, 2, 3\) and segment_ids\.shape=\(4, 3\)"),
    (lambda: rnnjax.unpack(np.ones((4, 2, 3)), np.zeros((4, 2))), TypeError,
     r"rnnjax\.unpack: `segment_ids` must have an integer dtype"),
    (lambda: rnnjax.unpack(np.ones((4, 2, 3)), np.full((4, 2), 2), num_sequences=2), ValueError,
     r"rnnjax\.unpack: `num_sequences`=2 but segment_ids go up to 2"),
    (lambda: rnnjax.unpad(np.ones((4, 2, 3)), np.array([1, 5])), ValueError,
     r"rnnjax\.unpad: `lengths` must lie in \[0, T\] = \[0, 4\], got values from 1 to 5"),
    (lambda: rnnjax.unpad(np.ones((4, 2, 3)), np.array([1, 2, 3])), ValueError,
     r"rnnjax\.unpad: `lengths` must have shape \[B\] = \(2,\).*lengths\.shape=\(3,\)"),
])
def test_bad_inputs_name_the_function_argument_and_fix(call, error, match):
  with pytest.raises(error, match=match):
    call()
