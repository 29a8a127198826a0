"""Tests for `rnnjax.unroll`, the scan engine.

Every option is checked against `tests/reference.py` (float64 NumPy cell equations
and a per-sequence, segment-by-segment loop) or against an independent
construction written here (running pieces separately, flipping by hand, a Python
loop over time). Everything runs under `jit`, with ONE fixed shape
`[T, B, I] = [8, 4, 3]` and `H = 5`; the jitted functions are cached and examples
differ in values only.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import rnnjax
from tests import reference

T, B, I, H = 8, 4, 3, 5
TOL = {"rtol": 1e-5, "atol": 1e-5}
BF16_TOL = {"rtol": 5e-2, "atol": 5e-2}

FACTORIES = {"lstm": rnnjax.lstm, "gru": rnnjax.gru, "elman": rnnjax.elman, "mgu": rnnjax.mgu}
REF_STEPS = {"lstm": reference.lstm_step, "gru": reference.gru_step,
             "elman": reference.elman_step, "mgu": reference.mgu_step}
CELL_NAMES = tuple(FACTORIES)


class Opt(NamedTuple):
  """One combination of `unroll` options; `lengths` / `resets` say whether they are passed."""

  lengths: bool = False
  resets: bool = False
  reverse: bool = False
  unroll: int | bool = 1
  remat: int | bool = False


# Cached by NAME, never by `Opt` value: `Opt(remat=True) == Opt(remat=1)` as tuples.
OPTIONS = {
    "plain": Opt(),
    "lengths": Opt(lengths=True),
    "resets": Opt(resets=True),
    "lengths+resets": Opt(lengths=True, resets=True),
    "reverse": Opt(reverse=True),
    "reverse+resets": Opt(resets=True, reverse=True),
    "reverse+lengths": Opt(lengths=True, reverse=True),
    "reverse+lengths+resets": Opt(lengths=True, resets=True, reverse=True),
    "unroll=3": Opt(unroll=3),
    "remat=True": Opt(remat=True),
    "remat=3": Opt(remat=3),
    "remat=3+reverse+resets": Opt(resets=True, reverse=True, remat=3),
    "remat=3+reverse+lengths+resets": Opt(lengths=True, resets=True, reverse=True, remat=3),
}
EXTRA_OPTIONS = {
    "remat=True+lengths+resets": Opt(lengths=True, resets=True, remat=True),
    "remat=1+reverse+resets": Opt(resets=True, reverse=True, remat=1),
    "remat=8+reverse+resets": Opt(resets=True, reverse=True, remat=8),
    "remat=20+lengths+resets": Opt(lengths=True, resets=True, remat=20),
    "unroll=True+reverse+lengths+resets": Opt(lengths=True, resets=True, reverse=True,
                                              unroll=True),
}
ALL_OPTIONS = {**OPTIONS, **EXTRA_OPTIONS}


def _kwargs(opt: Opt, lengths: Any, resets: Any) -> dict[str, Any]:
  return {"lengths": lengths if opt.lengths else None,
          "resets": resets if opt.resets else None,
          "reverse": opt.reverse, "unroll": opt.unroll, "remat": opt.remat}


# ---- Cells, params and data. ----

@functools.cache
def make_cell(name: str, dtype: Any = jnp.float32) -> rnnjax.Cell:
  return FACTORIES[name](H, dtype=dtype)


@functools.cache
def make_params(name: str, seed: int = 0, dtype: Any = jnp.float32) -> Any:
  """`cell.init` plus noise, so that the biases are non-zero and gates are not symmetric."""
  params = make_cell(name, dtype).init(jax.random.key(seed), I)
  rng = np.random.default_rng(seed + 1000)

  def perturb(a):
    noisy = np.asarray(a, np.float32) + 0.3 * rng.standard_normal(a.shape, np.float32)
    return jnp.asarray(noisy, dtype)
  return jax.tree_util.tree_map(perturb, params)


def random_carry(name: str, rng: np.random.Generator, batch_shape=(B,),
                 dtype: Any = jnp.float32) -> Any:
  template = jax.eval_shape(
      lambda p: make_cell(name, dtype).initial_carry(p, batch_shape), make_params(name, 0, dtype))
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape, np.float32), dtype), template)


def random_xs(rng: np.random.Generator, shape=(T, B, I), dtype: Any = jnp.float32) -> jax.Array:
  return jnp.asarray(rng.standard_normal(shape, np.float32), dtype)


# Lengths cover a full, a partial, an empty and a short sequence; resets include step 0,
# steps inside the valid prefix and padded steps.
LENGTHS = np.array([T, 5, 0, 3], np.int32)
RESETS = np.zeros((T, B), bool)
RESETS[[0, 3, 6], 0] = True
RESETS[[2, 4, 5, 6], 1] = True   # 5 = L and 6 are padding for element 1
RESETS[[1, 5], 2] = True         # all padding for element 2
RESETS[[0, 1, 2, 3, 7], 3] = True  # 3 = L and 7 are padding for element 3


def ref_run(name: str, params: Any, xs: Any, carry: Any, *, lengths=None, resets=None,
            reverse=False, step=None) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
  """`reference.run_batch` for a built-in cell (or any NumPy `step(state, x)`)."""
  if step is None:
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    step = functools.partial(REF_STEPS[name], p)
  state0 = tuple(np.asarray(c, np.float64) for c in jax.tree_util.tree_leaves(carry))
  zero = tuple(np.zeros_like(s) for s in state0)
  return reference.run_batch(step, state0, np.asarray(xs, np.float64), lengths=lengths,
                             resets=resets, reverse=reverse, zero_state=zero)


def assert_tree_close(actual: Any, expected: Any, tol=TOL) -> None:
  a_leaves = jax.tree_util.tree_leaves(actual)
  e_leaves = jax.tree_util.tree_leaves(expected)
  assert len(a_leaves) == len(e_leaves)
  for a, e in zip(a_leaves, e_leaves, strict=True):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), **tol)


def take_batch(tree: Any, b: int, axis: int = 0) -> Any:
  return jax.tree_util.tree_map(lambda a: np.asarray(a)[(slice(None),) * axis + (b,)], tree)


# ---- Jitted functions, built once and reused. ----
#
# Compiling dominates the run time, so the forward passes of all options for one cell are
# ONE jitted program (`all_options_fn`); every test picks the option it needs from its
# output. Running the extra options costs microseconds at this size.

def options_for(name: str) -> dict[str, Opt]:
  return ALL_OPTIONS if name == "lstm" else OPTIONS


@functools.cache
def all_options_fn(name: str):
  cell = make_cell(name)

  @jax.jit
  def run(params, xs, carry, lengths, resets):
    return {opt_name: rnnjax.unroll(cell, params, xs, carry, **_kwargs(opt, lengths, resets))
            for opt_name, opt in options_for(name).items()}
  return run


def call(name: str, opt_name: str, params, xs, carry, lengths=LENGTHS, resets=RESETS):
  """`unroll(cell, params, xs, carry, **options)` under jit, from the cached program."""
  out = all_options_fn(name)(params, jnp.asarray(xs), carry, jnp.asarray(lengths, jnp.int32),
                             jnp.asarray(resets, bool))
  return out[opt_name]


def _loss(ys, carry, w_y, w_c):
  terms = [jnp.sum(ys * w_y)]
  terms += [jnp.sum(c * w) for c, w in zip(jax.tree_util.tree_leaves(carry),
                                           jax.tree_util.tree_leaves(w_c), strict=True)]
  return sum(terms)


@functools.cache
def grad_fn(name: str, opt_name: str):
  cell, opt = make_cell(name), ALL_OPTIONS[opt_name]

  def loss(params, xs, carry, lengths, resets, w_y, w_c):
    ys, final = rnnjax.unroll(cell, params, xs, carry, **_kwargs(opt, lengths, resets))
    return _loss(ys, final, w_y, w_c)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


# ---- 1. Every cell × every option against the float64 reference. ----

@functools.cache
def reference_case(name: str):
  """Fixed inputs with a random non-zero carry, and rnnjax's outputs for every option."""
  rng = np.random.default_rng(1)
  params = make_params(name)
  xs, carry = random_xs(rng), random_carry(name, rng)
  return params, xs, carry, jax.device_get(all_options_fn(name)(
      params, xs, carry, jnp.asarray(LENGTHS), jnp.asarray(RESETS)))


CASES = [(name, opt_name) for name in CELL_NAMES for opt_name in options_for(name)]


@pytest.mark.parametrize(("name", "opt_name"), CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_matches_reference(name, opt_name):
  opt = ALL_OPTIONS[opt_name]
  params, xs, carry, results = reference_case(name)
  ys, final = results[opt_name]
  ys_ref, final_ref = ref_run(name, params, xs, carry,
                              lengths=LENGTHS if opt.lengths else None,
                              resets=RESETS if opt.resets else None, reverse=opt.reverse)
  assert ys.shape == (T, B, H) and ys.dtype == np.float32
  assert jax.tree_util.tree_structure(final) == jax.tree_util.tree_structure(carry)
  np.testing.assert_allclose(ys, ys_ref, **TOL)
  assert_tree_close(final, final_ref)
  if opt.lengths:  # Padding gives exact zeros.
    for b, length in enumerate(LENGTHS):
      assert np.all(ys[length:, b] == 0)


@pytest.mark.parametrize("opt_name", ["lengths+resets", "reverse+lengths+resets"])
def test_lengths_outside_range_act_clipped_under_jit(opt_name):
  rng = np.random.default_rng(3)
  params = make_params("gru")
  xs, carry = random_xs(rng), random_carry("gru", rng)
  lengths = np.array([-3, T + 4, 5, T], np.int32)
  ys, final = call("gru", opt_name, params, xs, carry, lengths=lengths)
  ys_ref, final_ref = ref_run("gru", params, xs, carry, lengths=np.clip(lengths, 0, T),
                              resets=RESETS, reverse=OPTIONS[opt_name].reverse)
  np.testing.assert_allclose(ys, ys_ref, **TOL)
  assert_tree_close(final, final_ref)


def test_concrete_lengths_outside_range_raise():
  cell, params = make_cell("gru"), make_params("gru")
  xs = jnp.zeros((T, B, I), jnp.float32)
  with pytest.raises(ValueError, match="lengths"):
    rnnjax.unroll(cell, params, xs, lengths=np.array([T + 1, 0, 0, 0]))
  with pytest.raises(ValueError, match="lengths"):
    rnnjax.unroll(cell, params, xs, lengths=np.array([-1, 0, 0, 0]))


@functools.cache
def _lengths_dtype_fn():
  cell = make_cell("elman")

  @jax.jit
  def run(params, xs, carry, lengths, resets):
    return rnnjax.unroll(cell, params, xs, carry, lengths=lengths, resets=resets, reverse=True)
  return run


@pytest.mark.parametrize("dtype", [np.int32, np.int16, np.uint8])
def test_lengths_of_any_integer_dtype(dtype):
  """`lengths` is documented (and checked) as "integer"; narrower integer dtypes such as
  int16 or uint8 (common for stored lengths) must work under strict dtype promotion too."""
  rng = np.random.default_rng(4)
  params = make_params("elman")
  xs, carry = random_xs(rng), random_carry("elman", rng)
  ys, final = _lengths_dtype_fn()(params, xs, carry, jnp.asarray(LENGTHS.astype(dtype)),
                                  jnp.asarray(RESETS))
  ys_ref, final_ref = ref_run("elman", params, xs, carry, lengths=LENGTHS, resets=RESETS,
                              reverse=True)
  np.testing.assert_allclose(ys, ys_ref, **TOL)
  assert_tree_close(final, final_ref)


@functools.cache
def _numpy_int_options_fn():
  cell = make_cell("gru")

  @jax.jit
  def run(params, xs, carry, resets):
    return rnnjax.unroll(cell, params, xs, carry, resets=resets, reverse=True,
                         unroll=np.int64(3), remat=np.int64(3))
  return run


def test_numpy_integer_unroll_and_remat():
  """`unroll` and `remat` are integers; NumPy integers (e.g. from `np.sqrt(T).astype(int)`,
  the docstring's advice for `k`) are accepted for both, as `positive_int` does."""
  rng = np.random.default_rng(13)
  params = make_params("gru")
  xs, carry = random_xs(rng), random_carry("gru", rng)
  ys, final = _numpy_int_options_fn()(params, xs, carry, jnp.asarray(RESETS))
  ys_ref, final_ref = ref_run("gru", params, xs, carry, resets=RESETS, reverse=True)
  np.testing.assert_allclose(ys, ys_ref, **TOL)
  assert_tree_close(final, final_ref)


# ---- 2. Gradients. ----

GRAD_PAIRS = [  # (cell, option, the same option without remat / unroll)
    ("lstm", "remat=True+lengths+resets", "lengths+resets"),
    ("lstm", "remat=3+reverse+lengths+resets", "reverse+lengths+resets"),
    ("lstm", "unroll=3", "plain"),
    ("gru", "remat=3", "plain"),
    ("gru", "remat=3+reverse+resets", "reverse+resets"),
]


def _grad_inputs(name: str, seed: int):
  rng = np.random.default_rng(seed)
  params = make_params(name)
  xs, carry = random_xs(rng), random_carry(name, rng)
  w_y = jnp.asarray(rng.standard_normal((T, B, H), np.float32))
  w_c = random_carry(name, rng)
  return params, xs, carry, w_y, w_c


@pytest.mark.parametrize(("name", "opt_name", "plain_name"), GRAD_PAIRS,
                         ids=[f"{n}-{o}" for n, o, _ in GRAD_PAIRS])
def test_remat_and_unroll_gradients_equal_plain_path(name, opt_name, plain_name):
  params, xs, carry, w_y, w_c = _grad_inputs(name, 5)
  args = (params, xs, carry, jnp.asarray(LENGTHS), jnp.asarray(RESETS), w_y, w_c)
  got = grad_fn(name, opt_name)(*args)
  want = grad_fn(name, plain_name)(*args)
  assert_tree_close(got, want)
  # Gradients reach every bias and the initial carry (nothing is accidentally constant).
  assert float(jnp.abs(got[0].b_h).sum()) > 0
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree_util.tree_leaves(got[2]))


def hand_loop(cell, params, xs, carry, lengths, resets, reverse):
  """`unroll` as a Python loop over steps, the masking done by hand from CONCRETE (NumPy)
  lengths and resets: each element's segments are cut in Python into a processing order
  `order[s, b]` (the time step element `b` handles at loop step `s`), with `restart[s, b]`
  (start from zeros) and `valid[s, b]`."""
  num_steps, batch = xs.shape[:2]
  order = np.tile(np.arange(num_steps)[:, None], (1, batch))
  restart = np.zeros((num_steps, batch), bool)
  valid = np.zeros((num_steps, batch), bool)
  for b in range(batch):
    length = int(lengths[b])
    starts = [0] + [t for t in range(1, length) if resets[t, b]]
    segments = list(zip(starts, [*starts[1:], length], strict=True)) if length else []
    s = 0
    for i, (lo, hi) in enumerate(segments[::-1] if reverse else segments):
      restart[s, b] = i > 0 or (not reverse and bool(resets[0, b]))
      for t in (range(hi - 1, lo - 1, -1) if reverse else range(lo, hi)):
        order[s, b], valid[s, b] = t, True
        s += 1

  def where(mask, a, b):
    return jax.tree_util.tree_map(lambda u, v: jnp.where(mask[:, None], u, v), a, b)

  zero = cell.initial_carry(params, (batch,))
  cols = np.arange(batch)
  ys = jnp.zeros((num_steps, batch, H), xs.dtype)
  c = carry
  for s in range(num_steps):
    new_c, y = cell.apply(params, where(restart[s], zero, c), xs[order[s], cols])
    c = where(valid[s], new_c, c)
    ys = ys.at[order[s], cols].add(jnp.where(valid[s][:, None], y, 0))
  return ys, c


@functools.cache
def hand_loop_grad_fn(name: str):
  """Gradients of the hand-written loop, forwards and backwards, in one program."""
  cell = make_cell(name)

  def loss(params, xs, carry, w_y, w_c, reverse):
    ys, final = hand_loop(cell, params, xs, carry, LENGTHS, RESETS, reverse)
    return _loss(ys, final, w_y, w_c)
  grad = jax.grad(loss, argnums=(0, 1, 2))
  return jax.jit(lambda *args: {False: grad(*args, False), True: grad(*args, True)})


@pytest.mark.parametrize("opt_name", ["lengths+resets", "remat=3+reverse+lengths+resets"])
def test_gradient_matches_hand_written_loop(opt_name):
  name = "lstm"
  params, xs, carry, w_y, w_c = _grad_inputs(name, 5)
  got = grad_fn(name, opt_name)(params, xs, carry, jnp.asarray(LENGTHS), jnp.asarray(RESETS),
                                w_y, w_c)
  want = hand_loop_grad_fn(name)(params, xs, carry, w_y, w_c)[ALL_OPTIONS[opt_name].reverse]
  assert_tree_close(got, want)
  # Padded inputs get no gradient.
  g_xs = np.asarray(got[1])
  for b, length in enumerate(LENGTHS):
    assert np.all(g_xs[length:, b] == 0)


# ---- 3. Property tests (fixed shapes, random values). ----

seeds = st.integers(0, 2**32 - 1)
lengths_st = hnp.arrays(np.int32, (B,), elements=st.integers(0, T))
resets_st = hnp.arrays(np.bool_, (T, B))


@pytest.mark.parametrize("name", CELL_NAMES)
@given(seed=seeds, lengths=lengths_st, resets=resets_st)
def test_padding_is_ignored(name, seed, lengths, resets):
  """Changing xs and resets after each sequence's length changes no valid output and not the
  final carry; outputs at padded steps stay zero."""
  rng = np.random.default_rng(seed)
  params = make_params(name)
  xs, carry = np.asarray(random_xs(rng)), random_carry(name, rng)
  xs2, resets2 = xs.copy(), resets.copy()
  for b, length in enumerate(lengths):
    xs2[length:, b] = 10 * rng.standard_normal((T - length, I))
    resets2[length:, b] = rng.random(T - length) < 0.5
  for opt_name in ["lengths", "lengths+resets", "reverse+lengths+resets",
                   "remat=3+reverse+lengths+resets"]:
    ys, final = call(name, opt_name, params, xs, carry, lengths, resets)
    ys2, final2 = call(name, opt_name, params, xs2, carry, lengths, resets2)
    ys, ys2 = np.asarray(ys), np.asarray(ys2)
    for b, length in enumerate(lengths):
      np.testing.assert_allclose(ys2[:length, b], ys[:length, b], **TOL, err_msg=opt_name)
      assert np.all(ys[length:, b] == 0) and np.all(ys2[length:, b] == 0), opt_name
    assert_tree_close(final2, final)


@pytest.mark.parametrize("name", CELL_NAMES)
@given(seed=seeds, lengths=lengths_st)
def test_reverse_equals_flipping_valid_prefix(name, seed, lengths):
  rng = np.random.default_rng(seed)
  params = make_params(name)
  xs, carry = np.asarray(random_xs(rng)), random_carry(name, rng)
  flipped = xs.copy()
  for b, length in enumerate(lengths):
    flipped[:length, b] = np.flip(xs[:length, b], axis=0)
  ys_fwd, final_fwd = call(name, "lengths", params, flipped, carry, lengths)
  expected = np.asarray(ys_fwd).copy()
  for b, length in enumerate(lengths):
    expected[:length, b] = np.flip(expected[:length, b], axis=0)
  ys, final = call(name, "reverse+lengths", params, xs, carry, lengths)
  np.testing.assert_allclose(ys, expected, **TOL)
  assert_tree_close(final, final_fwd)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name", CELL_NAMES)
@given(seed=seeds, lengths=lengths_st, resets=resets_st)
def test_resets_equal_running_pieces_separately(name, reverse, seed, lengths, resets):
  """Each sequence is cut at its resets into pieces, and each piece is run on its own with
  `lengths` only (the first processed piece from the given carry, the others from zeros).
  Round `k` runs the k-th processed piece of every batch element side by side."""
  rng = np.random.default_rng(seed)
  params = make_params(name)
  xs, carry = np.asarray(random_xs(rng)), random_carry(name, rng)
  carry_np = jax.tree_util.tree_map(np.asarray, carry)
  pieces = []  # per element, in processing order
  for b, length in enumerate(lengths):
    starts = [0] + [t for t in range(1, length) if resets[t, b]]
    bounds = list(zip(starts, [*starts[1:], length], strict=True)) if length else []
    pieces.append(bounds[::-1] if reverse else bounds)

  expected_ys = np.zeros((T, B, H), np.float32)
  expected_final = jax.tree_util.tree_map(np.copy, carry_np)
  piece_opt = "reverse+lengths" if reverse else "lengths"
  for k in range(max(len(p) for p in pieces)):
    xs_k = np.zeros_like(xs)
    lengths_k = np.zeros(B, np.int32)
    carry_k = jax.tree_util.tree_map(np.zeros_like, carry_np)
    for b, bounds in enumerate(pieces):
      if k >= len(bounds):
        continue
      lo, hi = bounds[k]
      xs_k[:hi - lo, b] = xs[lo:hi, b]
      lengths_k[b] = hi - lo
      if k == 0 and (reverse or not resets[0, b]):
        for dst, src in zip(jax.tree_util.tree_leaves(carry_k),
                            jax.tree_util.tree_leaves(carry_np), strict=True):
          dst[b] = src[b]
    ys_k, final_k = call(name, piece_opt, params, xs_k, carry_k, lengths_k)
    for b, bounds in enumerate(pieces):
      if k >= len(bounds):
        continue
      lo, hi = bounds[k]
      expected_ys[lo:hi, b] = np.asarray(ys_k)[:hi - lo, b]
      if k == len(bounds) - 1:
        for dst, src in zip(jax.tree_util.tree_leaves(expected_final),
                            jax.tree_util.tree_leaves(final_k), strict=True):
          dst[b] = np.asarray(src)[b]

  opt_name = "reverse+lengths+resets" if reverse else "lengths+resets"
  ys, final = call(name, opt_name, params, xs, carry, lengths, resets)
  np.testing.assert_allclose(ys, expected_ys, **TOL)
  assert_tree_close(final, expected_final)


N = 2  # the extra leading batch axis of the vmap test
VMAP_NAME, VMAP_OPT = "lstm", "remat=3+reverse+lengths+resets"


@functools.cache
def vmap_fns():
  cell, opt = make_cell(VMAP_NAME), ALL_OPTIONS[VMAP_OPT]

  def run(params, xs, carry, lengths, resets):
    return rnnjax.unroll(cell, params, xs, carry, **_kwargs(opt, lengths, resets))
  return jax.jit(jax.vmap(run, in_axes=(None, 0, 0, 0, 0))), jax.jit(run)


@given(seed=seeds, lengths=hnp.arrays(np.int32, (N, B), elements=st.integers(0, T)),
       resets=hnp.arrays(np.bool_, (N, T, B)))
def test_vmap_equals_loop_and_extra_batch_axis(seed, lengths, resets):
  name = VMAP_NAME
  rng = np.random.default_rng(seed)
  params = make_params(name)
  xs = random_xs(rng, (N, T, B, I))
  carry = random_carry(name, rng, (N, B))
  vmapped, plain = vmap_fns()
  ys_v, final_v = vmapped(params, xs, carry, jnp.asarray(lengths), jnp.asarray(resets))
  for n in range(N):
    ys_n, final_n = call(name, VMAP_OPT, params, xs[n], take_batch(carry, n), lengths[n],
                         resets[n])
    np.testing.assert_allclose(ys_v[n], ys_n, **TOL)
    assert_tree_close(take_batch(final_v, n), final_n)
  # The extra axis as a second batch axis: xs [T, N, B, I], resets [T, N, B].
  ys_b, final_b = plain(params, jnp.swapaxes(xs, 0, 1), carry, jnp.asarray(lengths),
                        jnp.asarray(np.swapaxes(resets, 0, 1)))
  np.testing.assert_allclose(jnp.swapaxes(ys_b, 0, 1), ys_v, **TOL)
  assert_tree_close(final_b, final_v)


@functools.cache
def step_fn(name: str):
  """One jitted `cell.apply` on a single sequence step `x: [I]`."""
  return jax.jit(make_cell(name).apply)


@pytest.mark.parametrize("name", ["lstm", "gru"])
@given(seed=seeds, lengths=lengths_st)
def test_lengths_equal_running_only_the_prefix(name, seed, lengths):
  """With lengths, the final carry and the outputs equal those of stepping through only
  `xs[:L]` of each element (forwards), or `xs[:L]` from `L - 1` down to 0 (reverse)."""
  rng = np.random.default_rng(seed)
  params = make_params(name)
  xs, carry = np.asarray(random_xs(rng)), random_carry(name, rng)
  step = step_fn(name)
  for reverse in (False, True):
    ys, final = call(name, "reverse+lengths" if reverse else "lengths", params, xs, carry,
                     lengths)
    for b, length in enumerate(lengths):
      c = take_batch(carry, b)
      prefix = xs[:length, b]
      outs = []
      for x in (prefix[::-1] if reverse else prefix):
        c, y = step(params, c, x)
        outs.append(np.asarray(y))
      assert_tree_close(take_batch(final, b), c)
      if length:
        expected = np.stack(outs[::-1] if reverse else outs)
        np.testing.assert_allclose(np.asarray(ys)[:length, b], expected, **TOL)


# ---- 4. Keys. ----

KEY_OPTIONS = ["plain", "remat=3", "remat=3+reverse+lengths+resets"]


@functools.cache
def keyed_fn(cell: rnnjax.Cell):
  """`unroll(..., key=key)` for every option of `KEY_OPTIONS`, in one program."""
  @jax.jit
  def run(params, xs, carry, lengths, resets, key):
    return {opt_name: rnnjax.unroll(cell, params, xs, carry, key=key,
                                    **_kwargs(ALL_OPTIONS[opt_name], lengths, resets))
            for opt_name in KEY_OPTIONS}
  return run


def test_key_is_ignored_by_deterministic_cell():
  rng = np.random.default_rng(7)
  params = make_params("lstm")
  xs, carry = random_xs(rng), random_carry("lstm", rng)
  with_key = keyed_fn(make_cell("lstm"))(params, xs, carry, jnp.asarray(LENGTHS),
                                         jnp.asarray(RESETS), jax.random.key(3))
  for opt_name in KEY_OPTIONS:
    assert_tree_close(with_key[opt_name], call("lstm", opt_name, params, xs, carry),
                      {"rtol": 1e-6, "atol": 1e-6})


def _noise_cell() -> rnnjax.Cell:
  """`h' = h + x @ w + ε` and `y = ε`, with `ε ~ N(0, 1)` drawn from the step's key (zero
  without a key). No `input_size`."""
  def init(key, input_size):
    return {"w": jax.random.normal(key, (input_size, H))}

  def initial_carry(params, batch_shape=()):
    return {"h": jnp.zeros((*batch_shape, H), params["w"].dtype)}

  def apply(params, carry, x, *, key=None):
    shape = (*x.shape[:-1], H)
    eps = jnp.zeros(shape, x.dtype) if key is None else jax.random.normal(key, shape, x.dtype)
    return {"h": carry["h"] + x @ params["w"] + eps}, eps

  return rnnjax.Cell(init, initial_carry, apply)


NOISE_CELL = _noise_cell()


@functools.cache
def _noise_results():
  rng = np.random.default_rng(8)
  params = NOISE_CELL.init(jax.random.key(0), I)
  xs = random_xs(rng)
  carry = {"h": jnp.asarray(rng.standard_normal((B, H), np.float32))}
  run = functools.partial(keyed_fn(NOISE_CELL), params, xs, carry, jnp.asarray(LENGTHS),
                          jnp.asarray(RESETS))
  draws = [jax.device_get(run(jax.random.key(k))) for k in (11, 11, 12)]
  return params, xs, carry, draws


@pytest.mark.parametrize("opt_name", KEY_OPTIONS)
def test_key_is_split_per_step(opt_name):
  opt = ALL_OPTIONS[opt_name]
  params, xs, carry, draws = _noise_results()
  (ys, final), (ys_again, final_again), (ys_other, _) = (d[opt_name] for d in draws)
  # Reproducible with the same key.
  np.testing.assert_array_equal(ys_again, ys)
  assert_tree_close(final_again, final, {"rtol": 0, "atol": 0})
  valid = [(t, b) for b in range(B) for t in range(LENGTHS[b] if opt.lengths else T)]
  for t, b in valid:
    # Noise is drawn (non-zero) and differs with another key.
    assert np.abs(ys[t, b]).max() > 1e-3
    assert not np.allclose(ys[t, b], ys_other[t, b])
  # Each step of a sequence got its own key: no two steps draw the same noise.
  for b in range(B):
    steps = [t for t, bb in valid if bb == b]
    for i, t in enumerate(steps):
      for s in steps[i + 1:]:
        assert not np.allclose(ys[t, b], ys[s, b]), (t, s, b)
  # The noise is what entered the carry (no resets here): h_T = h_0 + Σ (x @ w + ε).
  if not opt.resets:
    w = np.asarray(params["w"], np.float64)
    expected = np.asarray(carry["h"], np.float64) + np.einsum("tbi,ih->bh", np.asarray(xs), w)
    np.testing.assert_allclose(final["h"], expected + ys.sum(0), **TOL)


def test_remat_draws_the_same_noise_as_plain_scan():
  """Checkpointing changes memory, not randomness: same key, same draws."""
  *_, draws = _noise_results()
  assert_tree_close(draws[0]["remat=3"], draws[0]["plain"])


@functools.cache
def _noise_no_key_fn():
  return jax.jit(lambda p, xs: rnnjax.unroll(NOISE_CELL, p, xs, remat=3, reverse=True))


def test_no_key_means_no_noise():
  rng = np.random.default_rng(10)
  params = NOISE_CELL.init(jax.random.key(0), I)
  ys, _ = _noise_no_key_fn()(params, random_xs(rng))
  assert np.all(np.asarray(ys) == 0)


# ---- 5. A user-defined cell. ----

def _counting_cell() -> rnnjax.Cell:
  """A dict carry: `n` counts the steps since the last (re)start, `s` decays and sums.
  `s' = 0.5 s + tanh(x @ w + b)`, `n' = n + 1`, `y = [s', n']`. No `input_size`."""
  def init(key, input_size):
    k1, k2 = jax.random.split(key)
    return {"w": jax.random.normal(k1, (input_size, H)), "b": jax.random.normal(k2, (H,))}

  def initial_carry(params, batch_shape=()):
    return {"s": jnp.zeros((*batch_shape, H), params["w"].dtype),
            "n": jnp.zeros((*batch_shape, 1), params["w"].dtype)}

  def apply(params, carry, x, *, key=None):
    del key
    s = 0.5 * carry["s"] + jnp.tanh(x @ params["w"] + params["b"])
    n = carry["n"] + 1.0
    return {"s": s, "n": n}, jnp.concatenate([s, n], axis=-1)

  return rnnjax.Cell(init, initial_carry, apply)


COUNTING_CELL = _counting_cell()


def _counting_ref_step(params, state, x):
  n, s = state  # the carry's leaves in key order: n, s
  s = 0.5 * s + np.tanh(x @ np.asarray(params["w"], np.float64) + np.asarray(params["b"]))
  return (n + 1.0, s), np.concatenate([s, n + 1.0])


USER_OPTIONS = ["lengths+resets", "reverse+lengths+resets", "remat=3+reverse+resets",
                "unroll=True+reverse+lengths+resets"]


@functools.cache
def user_fn():
  """Every option of `USER_OPTIONS`, with the given carry and with the default (None)."""
  @jax.jit
  def run(params, xs, carry, lengths, resets):
    return {(opt_name, given): rnnjax.unroll(
                COUNTING_CELL, params, xs, carry if given else None,
                **_kwargs(ALL_OPTIONS[opt_name], lengths, resets))
            for opt_name in USER_OPTIONS for given in (True, False)}
  return run


@functools.cache
def _user_results():
  rng = np.random.default_rng(11)
  params = COUNTING_CELL.init(jax.random.key(1), I)
  xs = random_xs(rng)
  carry = {"s": jnp.asarray(rng.standard_normal((B, H), np.float32)),
           "n": jnp.asarray(rng.integers(0, 5, (B, 1)).astype(np.float32))}
  out = user_fn()(params, xs, carry, jnp.asarray(LENGTHS), jnp.asarray(RESETS))
  return params, xs, carry, jax.device_get(out)


@pytest.mark.parametrize("given_carry", [True, False], ids=["carry", "default_carry"])
@pytest.mark.parametrize("opt_name", USER_OPTIONS)
def test_user_defined_cell(opt_name, given_carry):
  opt = ALL_OPTIONS[opt_name]
  params, xs, carry, results = _user_results()
  ys, final = results[opt_name, given_carry]
  assert ys.shape == (T, B, H + 1)
  start = carry if given_carry else jax.tree_util.tree_map(jnp.zeros_like, carry)
  ys_ref, final_ref = ref_run("user", params, xs, start,
                              lengths=LENGTHS if opt.lengths else None,
                              resets=RESETS if opt.resets else None, reverse=opt.reverse,
                              step=functools.partial(_counting_ref_step, params))
  np.testing.assert_allclose(ys, ys_ref, **TOL)
  assert_tree_close(final, {"n": final_ref[0], "s": final_ref[1]})


# ---- 6. bfloat16. ----

def bf16_options(name: str) -> list[str]:
  """Every option for the LSTM; the other cells share the options out between them."""
  if name == "lstm":
    return list(OPTIONS)
  k = CELL_NAMES.index(name) - 1
  return [o for i, o in enumerate(OPTIONS) if i % 3 == k]


@functools.cache
def bf16_fn(name: str):
  cell = make_cell(name, jnp.bfloat16)

  @jax.jit
  def run(params, xs, carry, lengths, resets):
    return {opt_name: rnnjax.unroll(cell, params, xs, carry,
                                    **_kwargs(OPTIONS[opt_name], lengths, resets))
            for opt_name in bf16_options(name)}
  return run


@pytest.mark.parametrize("name", CELL_NAMES)
def test_bfloat16_options(name):
  rng = np.random.default_rng(12)
  params = make_params(name, 0, jnp.bfloat16)
  xs = random_xs(rng, dtype=jnp.bfloat16)
  carry = random_carry(name, rng, dtype=jnp.bfloat16)
  results = bf16_fn(name)(params, xs, carry, jnp.asarray(LENGTHS), jnp.asarray(RESETS))
  assert set(results) == set(bf16_options(name))
  for opt_name, (ys, final) in results.items():
    opt = OPTIONS[opt_name]
    assert ys.dtype == jnp.bfloat16, opt_name
    assert all(c.dtype == jnp.bfloat16 for c in jax.tree_util.tree_leaves(final)), opt_name
    ys_ref, final_ref = ref_run(name, params, xs, carry,
                                lengths=LENGTHS if opt.lengths else None,
                                resets=RESETS if opt.resets else None, reverse=opt.reverse)
    np.testing.assert_allclose(np.asarray(ys, np.float64), ys_ref, **BF16_TOL,
                               err_msg=opt_name)
    assert_tree_close(final, final_ref, BF16_TOL)


def test_bfloat16_options_cover_every_option():
  assert set().union(*(bf16_options(n) for n in CELL_NAMES[1:])) == set(OPTIONS)
