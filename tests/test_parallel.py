"""The parallel and chunked engines against the sequential one (`rnnjax.unroll`).

The reference is `unroll` over `cell.apply`: a `lax.scan`, itself checked against
NumPy loops of every option in test_unroll, and each linear cell's `apply`
against a loop of its paper's equations in its own test file. Here every linear
cell must give the same outputs, final carries and gradients (params, xs and
initial carry) through `parallel_unroll(engine="parallel" | "chunked")`, to 1e-5
relative in float32, over random lengths, resets and carries (zero ones too) in both
directions (one compiled program per cell holds every option; hypothesis varies values).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rnnjax
from rnnjax._src import cell as cell_lib
from rnnjax._src import linear
from rnnjax._src.cells import common
from tests import helpers

T, B, I, H = 7, 3, 4, 5
RTOL = 1e-5


class _DiagParams(NamedTuple):
  w_a: jax.Array
  w_b: jax.Array


def diagonal_cell(hidden: int = H) -> cell_lib.Cell:
  """A user-written linear cell: `h_t = σ(x W_a) h_{t-1} + x W_b`, built on the public contract."""
  def init(key, input_size):
    k1, k2 = jax.random.split(key)
    return _DiagParams(jax.random.normal(k1, (input_size, hidden)),
                       jax.random.normal(k2, (input_size, hidden)))

  def initial_carry(params, batch_shape=()):
    return common.HiddenState(jnp.zeros((*batch_shape, hidden), params.w_a.dtype))

  def apply(params, carry, x, *, key=None):
    h = jax.nn.sigmoid(x @ params.w_a) * carry.h + x @ params.w_b
    return common.HiddenState(h), h

  def coefficients(params, xs):
    return jax.nn.sigmoid(xs @ params.w_a), xs @ params.w_b

  cell = cell_lib.Cell(init, initial_carry, apply, input_size=lambda p: p.w_a.shape[0])
  return rnnjax.with_recurrence(cell, rnnjax.LinearRecurrence(coefficients))


def _cells() -> dict[str, cell_lib.Cell]:
  cells = {"diagonal": diagonal_cell()}
  for name in ("mingru", "minlstm"):
    if hasattr(rnnjax, name):
      make = getattr(rnnjax, name)
      cells[name] = make(H)
      cells[f"{name}_log"] = make(H, log_space=True)
  if hasattr(rnnjax, "lru"):
    cells["lru"] = rnnjax.lru(H, r_min=0.5, r_max=0.99)
  if hasattr(rnnjax, "rglru"):
    cells["rglru"] = rnnjax.rglru(H)
  # A stack of linear cells runs layer after layer, each a scan (the stack steps all layers
  # together in `unroll`); dropout is inactive without a key, in both.
  cells["stack"] = rnnjax.stack([rnnjax.mingru(H), rnnjax.lru(4, r_min=0.5, output_size=H),
                                 rnnjax.rglru(H)], dropout=0.3)
  return cells


CELLS = _cells()




def _random_like(key, tree, positive: bool):
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(key, len(leaves))
  out = []
  for leaf, k in zip(leaves, keys, strict=True):
    if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
      k1, k2 = jax.random.split(k)
      real = jnp.real(leaf).dtype
      v = jax.lax.complex(jax.random.normal(k1, leaf.shape, real),
                          jax.random.normal(k2, leaf.shape, real)).astype(leaf.dtype)
    else:
      v = jax.random.normal(k, leaf.shape, leaf.dtype)
      v = jnp.abs(v) if positive else v
    out.append(v)
  return jax.tree_util.tree_unflatten(treedef, out)


def _real_sum(tree) -> jax.Array:
  return sum(jnp.sum(jnp.real(leaf) * 0.7 + jnp.imag(leaf) * 0.3 if jnp.iscomplexobj(leaf)
                     else jnp.sin(leaf)) for leaf in jax.tree_util.tree_leaves(tree))


def _run(name, engine, use_lengths, use_resets, reverse, params, xs, carry, lengths, resets,
         weights):
  cell = CELLS[name]
  opts = dict(lengths=lengths if use_lengths else None, resets=resets if use_resets else None,
              reverse=reverse)

  def go(p, x, c):
    if engine == "sequential":
      return rnnjax.unroll(cell, p, x, c, **opts)
    return rnnjax.parallel_unroll(cell, p, x, c, engine=engine, chunk=3, **opts)

  def loss(p, x, c):
    ys, final = go(p, x, c)
    return jnp.sum(ys * weights) + _real_sum(final)

  return go(params, xs, carry), jax.grad(loss, argnums=(0, 1, 2))(params, xs, carry)


# The options one compiled program covers: forwards, lengths alone and resets alone;
# backwards, resets with and without lengths (every pair of options meets). Hypothesis
# varies only values: lengths of T are no padding, resets all False are no reset, a zero
# carry is the cells' default initial carry. A stack passes the options on to each of
# its layers, which run every variant as cells of their own: for the stack, all options
# together in both directions.
VARIANTS = (  # (reverse, lengths, resets)
    (False, True, False), (False, False, True), (True, False, True), (True, True, True))
STACK_VARIANTS = ((False, True, True), (True, True, True))


def _variants(name: str) -> tuple[tuple[bool, bool, bool], ...]:
  return STACK_VARIANTS if name == "stack" else VARIANTS


ENGINES = ("sequential", "parallel", "chunked")


@functools.partial(jax.jit, static_argnums=0)
def _run_all(name, params, xs, carry, lengths, resets, weights):
  """`{(engine, *variant): (outputs and final carry, gradients)}`: one compile per cell."""
  return {(engine, *variant): _run(name, engine, *variant[1:], variant[0], params, xs, carry,
                                   lengths, resets, weights)
          for engine in ENGINES for variant in _variants(name)}


@functools.partial(jax.jit, static_argnums=0)
def _inputs(name, seed, zero_carry):
  """Params, xs, initial carry (zero or random) and output weights of one example."""
  cell = CELLS[name]
  k = jax.random.split(jax.random.key(seed), 4)
  params = cell.init(k[0], I)
  xs = jax.random.normal(k[1], (T, B, I))
  carry = _random_like(k[2], cell.initial_carry(params, (B,)), positive=name.endswith("_log"))
  # A zero carry is the default one (for the log-space cells, the edge of their domain).
  carry = jax.tree_util.tree_map(lambda c: jnp.where(zero_carry, jnp.zeros_like(c), c), carry)
  out_size = cell_lib.output_size(cell, params, I)
  return params, xs, carry, jax.random.normal(k[3], (T, B, out_size))


@pytest.mark.parametrize("name", sorted(CELLS))
@given(seed=st.integers(0, 2**16), zero_carry=st.booleans(),
       lengths=hnp.arrays(np.int32, (B,), elements=st.integers(0, T)),
       resets=hnp.arrays(np.bool_, (T, B)))
def test_parallel_and_chunked_equal_sequential(name, seed, zero_carry, lengths, resets):
  params, xs, carry, weights = _inputs(name, seed, zero_carry)
  results = _run_all(name, params, xs, carry, jnp.asarray(lengths), jnp.asarray(resets),
                     weights)
  _assert_engines_equal_sequential(name, results)


def _assert_engines_equal_sequential(name, results):
  for variant in _variants(name):
    ref_out, ref_grads = results[("sequential", *variant)]
    for engine in ENGINES[1:]:
      out, grads = results[(engine, *variant)]
      assert helpers.max_rel(ref_out, out) <= RTOL, (engine, variant)
      for ref_g, g in zip(ref_grads, grads, strict=True):
        assert helpers.max_rel(ref_g, g) <= RTOL, (engine, variant)


def test_a_stack_of_linear_cells_with_every_option():
  """Fixed lengths, resets and carry (no draw), through the property test's program."""
  name = "stack"
  cell = CELLS[name]
  k = jax.random.split(jax.random.key(7), 4)
  params = cell.init(k[0], I)
  carry = _random_like(k[2], cell.initial_carry(params, (B,)), positive=False)
  weights = jax.random.normal(k[3], (T, B, H))
  lengths = jnp.array([T, 4, 0])
  resets = jnp.zeros((T, B), bool).at[2, 0].set(True).at[5, 1].set(True)
  args = (params, jax.random.normal(k[1], (T, B, I)), carry, lengths, resets, weights)
  _assert_engines_equal_sequential(name, _run_all(name, *args))


@pytest.mark.parametrize("name", ["diagonal", "mingru_log", "lru", "stack"])
def test_reverse_without_lengths_equals_a_python_loop(name):
  """`reverse=True` without `lengths` on fixed inputs (no draw): the parallel and chunked
  engines against `cell.apply` stepped by a Python loop over `t = T-1, ..., 0`, without and
  with resets (each segment runs backwards on its own, from the cell's initial carry)."""
  cell = CELLS[name]
  k = jax.random.split(jax.random.key(21), 3)
  params = cell.init(k[0], I)
  xs = jax.random.normal(k[1], (T, B, I))
  carry = _random_like(k[2], cell.initial_carry(params, (B,)), positive=name.endswith("_log"))
  resets = jnp.zeros((T, B), bool).at[3, 0].set(True).at[1, 1].set(True).at[5, 1].set(True)

  @jax.jit
  def run(p, x, c):
    return {(engine, with_resets): rnnjax.parallel_unroll(
        cell, p, x, c, resets=resets if with_resets else None, reverse=True, engine=engine,
        chunk=3) for engine in ENGINES[1:] for with_resets in (False, True)}

  got = run(params, xs, carry)
  zero = cell.initial_carry(params, (B,))
  for with_resets in (False, True):
    c, ys = carry, [None] * T
    for t in reversed(range(T)):
      if with_resets and t + 1 < T:  # A segment began at t + 1: the one ending at t restarts.
        c = jax.tree_util.tree_map(lambda z, h, t=t: jnp.where(resets[t + 1][:, None], z, h),
                                   zero, c)
      c, ys[t] = cell.apply(params, c, xs[t])
    want = (jnp.stack(ys), c)
    for engine in ENGINES[1:]:
      assert helpers.max_rel(want, got[(engine, with_resets)]) <= RTOL, (engine, with_resets)


@pytest.mark.parametrize("chunk", [1, 2, 7, 50])
def test_chunk_sizes_that_do_not_divide_t(chunk):
  cell = CELLS["diagonal"]
  params = cell.init(jax.random.key(0), I)
  xs = jax.random.normal(jax.random.key(1), (T, B, I))
  ref = rnnjax.unroll(cell, params, xs)
  got = rnnjax.parallel_unroll(cell, params, xs, engine="chunked", chunk=chunk)
  assert helpers.max_rel(ref, got) <= RTOL


def test_no_batch_axes_and_auto_engine():
  cell = CELLS["diagonal"]
  params = cell.init(jax.random.key(0), I)
  xs = jax.random.normal(jax.random.key(1), (T, I))
  ref = rnnjax.unroll(cell, params, xs)
  for engine in ("auto", "sequential", "parallel", "chunked"):
    assert helpers.max_rel(ref, rnnjax.parallel_unroll(cell, params, xs, engine=engine)) <= RTOL
  # The measured choices (benchmarks/RESULTS.md): lax.scan on CPU, the parallel scan on GPU.
  assert rnnjax.auto_engine(65536, "cpu") == "sequential"
  assert rnnjax.auto_engine(256, "gpu") == "parallel"


def test_errors_name_the_argument():
  cell = CELLS["diagonal"]
  params = cell.init(jax.random.key(0), I)
  xs = jnp.ones((T, B, I))
  with pytest.raises(ValueError, match=r"parallel_unroll: `engine` must be one of"):
    rnnjax.parallel_unroll(cell, params, xs, engine="fast")
  with pytest.raises(ValueError, match=r"`chunk`"):
    rnnjax.parallel_unroll(cell, params, xs, engine="chunked", chunk=0)
  lstm = rnnjax.lstm(H)
  with pytest.raises(TypeError, match=r"`cell` must be a linear cell"):
    rnnjax.parallel_unroll(lstm, lstm.init(jax.random.key(0), I), xs)
  mixed = rnnjax.stack([rnnjax.mingru(H), lstm])
  assert not rnnjax.is_linear(mixed) and rnnjax.is_linear(rnnjax.stack([cell, cell]))
  with pytest.raises(TypeError, match=r"`cell` must be a linear cell .* or a stack of them"):
    rnnjax.parallel_unroll(mixed, mixed.init(jax.random.key(0), I), xs)
  with pytest.raises(ValueError, match=r"feature size 3"):
    rnnjax.parallel_unroll(cell, params, jnp.ones((T, B, 3)), engine="parallel")
  with pytest.raises(ValueError, match=r"lengths"):
    rnnjax.parallel_unroll(cell, params, xs, lengths=jnp.array([1, 2, 99]), engine="parallel")


def test_wrapping_apply_drops_the_recurrence():
  cell = CELLS["diagonal"]
  assert linear.recurrence_of(cell) is not None
  assert linear.recurrence_of(cell._replace(apply=lambda *a, **k: cell.apply(*a, **k))) is None


@pytest.mark.parametrize("make", [rnnjax.mingru, rnnjax.minlstm], ids=["mingru", "minlstm"])
def test_log_space_gradient_for_a_zero_initial_carry(make):
  """Issue 12, defect 11: the log-space scan took `log h0`, whose gradient is 0 at `h0 = 0`
  (the default carry). Rows: a zero carry, mixed zero and positive features, a positive one.
  References: the sequential engine, and float64 one-sided finite differences (second order,
  so that zero carries stay zero or positive) of each engine's own loss."""
  steps, batch, inputs, hidden = 6, 3, 4, 5
  with jax.enable_x64(True):
    cell = make(hidden, log_space=True, dtype=jnp.float64)
    k = jax.random.split(jax.random.key(11), 4)
    params = cell.init(k[0], inputs)
    xs = jax.random.normal(k[1], (steps, batch, inputs), jnp.float64)
    weights = jax.random.normal(k[2], (steps, batch, hidden), jnp.float64)
    h0 = jnp.abs(jax.random.normal(k[3], (batch, hidden), jnp.float64)) + 0.1
    h0 = h0.at[0].set(0.0).at[1, ::2].set(0.0)
    lengths = jnp.array([steps, 4, steps])

    def loss_of(engine):
      def loss(h):
        ys, final = rnnjax.parallel_unroll(cell, params, xs, common.HiddenState(h),
                                           lengths=lengths, engine=engine, chunk=4)
        return jnp.sum(ys * weights) + jnp.sum(jnp.sin(final.h))
      return jax.jit(jax.value_and_grad(loss))

    _, ref = loss_of("sequential")(h0)
    eps = 1e-5
    for engine in ("parallel", "chunked"):
      run = loss_of(engine)
      value, grad = run(h0)
      assert float(jnp.min(jnp.abs(grad[0]))) > 0  # The zero carry's gradient is not lost.
      np.testing.assert_allclose(grad, ref, rtol=1e-9, atol=1e-12)
      fd = np.zeros((batch, hidden))
      for b in range(batch):
        for i in range(hidden):
          one = jnp.zeros_like(h0).at[b, i].set(eps)
          fd[b, i] = (4 * run(h0 + one)[0] - run(h0 + 2 * one)[0] - 3 * value) / (2 * eps)
      np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    # A concrete carry closed over under `jit` (its `h >= 0` check must not trace).
    ys = jax.jit(lambda x: rnnjax.parallel_unroll(cell, params, x, common.HiddenState(h0),
                                                  engine="parallel")[0])(xs)
    ys_ref, _ = rnnjax.unroll(cell, params, xs, common.HiddenState(h0))
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-9, atol=1e-12)
