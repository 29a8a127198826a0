"""The Newton engine (`newton_unroll`) against the sequential one (`rnnjax.unroll`).

The reference is `unroll` (a `lax.scan` over `cell.apply`, itself checked against NumPy
loops in test_unroll). For contractive cells the Newton engine must converge (no
fallback) and give the same outputs, final carries and gradients (params, xs, initial
carry) to 1e-4 relative in float32 and 1e-9 in float64, with full and diagonal Jacobians,
with and without damping, over random lengths, resets (NaN in the padding) and carries
in both directions: one compiled program per cell holds every option, hypothesis varies
values only. A chaotic cell falls back (and says so); the largest Lyapunov exponent of
`diagnostics.jacobian_spectrum` predicts which of the two happens.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnjax
from rnnjax._src import carry_vector
from rnnjax._src import cell as cell_lib
from rnnjax._src import newton as newton_lib
from rnnjax._src.newton import Newton, NewtonInfo, newton_unroll
from tests import helpers

T, B, I, H = 10, 3, 3, 4
RTOL = {jnp.float32: 1e-4, jnp.float64: 1e-9}


class _TupleParams(NamedTuple):
  w_x: jax.Array  # [I, H]
  w_h: jax.Array  # [H, H]
  w_m: jax.Array  # [2, H]
  h0: jax.Array  # [H], the learned initial (and reset) state


def tuple_cell(hidden: int = H, dtype=jnp.float32) -> cell_lib.Cell:
  """A user-written cell with a tuple carry `(h, m)` and a learned initial carry."""
  def init(key, input_size):
    k = jax.random.split(key, 4)
    return _TupleParams(jax.random.normal(k[0], (input_size, hidden), dtype) * 0.5,
                        jax.random.normal(k[1], (hidden, hidden), dtype) * 0.3,
                        jax.random.normal(k[2], (2, hidden), dtype) * 0.3,
                        jax.random.normal(k[3], (hidden,), dtype) * 0.5)

  def initial_carry(params, batch_shape=()):
    h = jnp.broadcast_to(params.h0, (*batch_shape, hidden))
    return h, jnp.zeros((*batch_shape, 2), params.h0.dtype)

  def apply(params, carry, x, *, key=None):
    h, m = carry
    h = jnp.tanh(x @ params.w_x + h @ params.w_h + m @ params.w_m)
    return (h, 0.5 * m + 0.3 * jnp.tanh(h[..., :2])), h

  return cell_lib.Cell(init, initial_carry, apply, input_size=lambda p: p.w_x.shape[0])


def _cell(name: str, dtype=jnp.float32) -> cell_lib.Cell:
  return {"elman": lambda: rnnjax.elman(H, dtype=dtype),
          "gru": lambda: rnnjax.gru(H, dtype=dtype),
          "lstm": lambda: rnnjax.lstm(H, dtype=dtype),
          "stack": lambda: rnnjax.stack([rnnjax.gru(3, dtype=dtype), rnnjax.lstm(H, dtype=dtype)]),
          "tuple": lambda: tuple_cell(dtype=dtype)}[name]()


NAMES = ("elman", "gru", "lstm", "stack", "tuple")
# Damped runs converge more slowly than Newton's at most T iterations: give them room.
OPTIONS = {"full": Newton("full"), "diagonal": Newton("diagonal"),
           "full_damped": Newton("full", damping=0.05, max_iters=40),
           "diagonal_damped": Newton("diagonal", damping=0.05, max_iters=40)}
# The (options, reverse) runs of each cell's program, against the sequential engine in the
# same direction; lengths and resets are always on (hypothesis may draw none). Every option
# meets both directions and several kinds of carry (one leaf, two, a stack's tuple, a user's
# tuple with a learned reset carry).
CELL_RUNS = {"elman": (("full", False), ("diagonal", True)),
             "gru": (("diagonal", False), ("full_damped", True)),
             "lstm": (("full", True), ("diagonal_damped", False)),
             "stack": (("diagonal", True), ("full", False)),
             "tuple": (("full", False), ("diagonal_damped", True))}




def _run(cell, options, reverse, params, xs, carry, lengths, resets, weights):
  """`((ys, final), grads, info)`; `options=None` is the sequential engine."""
  opts = dict(lengths=lengths, resets=resets, reverse=reverse)

  def go(p, x, c):
    if options is None:
      ys, final = rnnjax.unroll(cell, p, x, c, **opts)
      return ys, final, None
    return newton_unroll(cell, p, x, c, options=options, return_info=True, **opts)

  def loss(p, x, c):
    ys, final, info = go(p, x, c)
    value = jnp.sum(ys * weights) + sum(jnp.sum(jnp.sin(f))
                                        for f in jax.tree_util.tree_leaves(final))
    return value, (ys, final, info)

  grads, (ys, final, info) = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, carry)
  return (ys, final), grads, info


def _inputs(cell, seed, zero_carry, lengths, dtype):
  """Params (Elman's recurrent weights halved: contractive), xs with NaN padding, carry."""
  k = jax.random.split(jax.random.key(seed), 4)
  params = cell.init(k[0], I)
  if isinstance(params, rnnjax.ElmanParams):
    params = params._replace(w_h=params.w_h * 0.5)
  xs = jax.random.normal(k[1], (T, B, I), dtype)
  xs = jnp.where((jnp.arange(T, dtype=lengths.dtype)[:, None] < lengths)[..., None], xs, jnp.nan)
  carry = cell.initial_carry(params, (B,))
  leaves, treedef = jax.tree_util.tree_flatten(carry)
  keys = jax.random.split(k[2], len(leaves))
  leaves = [jnp.where(zero_carry, jnp.zeros_like(c), 0.5 * jax.random.normal(kk, c.shape, c.dtype))
            for c, kk in zip(leaves, keys, strict=True)]
  weights = jax.random.normal(k[3], (T, B, cell_lib.output_size(cell, params, I)), dtype)
  return params, xs, jax.tree_util.tree_unflatten(treedef, leaves), weights


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _run_all(name, dtype, runs, seed, zero_carry, lengths, resets):
  """`{(options, reverse): results}` for `runs` and the sequential engine: one compile per cell."""
  cell = _cell(name, dtype)
  params, xs, carry, weights = _inputs(cell, seed, zero_carry, lengths, dtype)
  runs = (*runs, ("sequential", False), ("sequential", True))
  return {(opt, rev): _run(cell, OPTIONS.get(opt), rev, params, xs, carry, lengths, resets,
                           weights) for opt, rev in runs}


def _assert_equal_sequential(results, runs, rtol):
  for opt, rev in runs:
    ref_out, ref_grads, _ = results[("sequential", rev)]
    out, grads, info = results[(opt, rev)]
    assert bool(info.converged) and not bool(info.fell_back), (opt, rev, info)
    assert helpers.max_rel(ref_out, out) <= rtol, (opt, rev)
    for ref_g, g in zip(ref_grads, grads, strict=True):
      assert helpers.max_rel(ref_g, g) <= rtol, (opt, rev)


_EXAMPLES = settings(max_examples=3, derandomize=True, database=None, deadline=None)


@pytest.mark.parametrize("name", NAMES)
@_EXAMPLES
@given(seed=st.integers(0, 2**16), zero_carry=st.booleans(),
       lengths=hnp.arrays(np.int32, (B,), elements=st.integers(0, T)),
       resets=hnp.arrays(np.bool_, (T, B)))
def test_newton_equals_sequential(name, seed, zero_carry, lengths, resets):
  runs = CELL_RUNS[name]
  results = _run_all(name, jnp.float32, runs, seed, zero_carry, jnp.asarray(lengths),
                     jnp.asarray(resets))
  _assert_equal_sequential(results, runs, RTOL[jnp.float32])


def test_newton_equals_sequential_in_float64():
  """The user-written cell (two carry leaves, a learned reset carry), full and diagonal."""
  runs = (("full", False), ("diagonal", True))
  with jax.enable_x64(True):
    lengths = jnp.asarray([T, 4, 0], jnp.int32)
    resets = jnp.zeros((T, B), bool).at[2, 0].set(True).at[3, 1].set(True)
    results = _run_all("tuple", jnp.float64, runs, 3, False, lengths, resets)
    assert results[("sequential", False)][0][0].dtype == jnp.float64
    _assert_equal_sequential(results, runs, RTOL[jnp.float64])


def test_time_major_false_and_complex_carry():
  """Batch-major layout as `unroll`'s; a linear cell (LRU, complex carry) in one iteration."""
  cell = rnnjax.lru(3, r_min=0.5, r_max=0.9, output_size=H)
  params = cell.init(jax.random.key(0), I)
  xs = jax.random.normal(jax.random.key(1), (B, T, I))
  opts = dict(lengths=jnp.array([T, 5, 1]), resets=jnp.zeros((B, T), bool).at[0, 3].set(True),
              reverse=True, time_major=False)
  ys, final, info = jax.jit(functools.partial(newton_unroll, cell, return_info=True, **opts))(
      params, xs)
  ref = rnnjax.unroll(cell, params, xs, **opts)
  assert int(info.iterations) == 1 and bool(info.converged)
  assert helpers.max_rel(ref, (ys, final)) <= 1e-5


# ---- Chaos: the fallback, and the Lyapunov exponent that predicts it. ----

TC, HC = 128, 8
GAINS = (0.5, 0.9, 3.0, 5.0)  # Elman recurrent weights: orthogonal times the gain


def _elman(gain):
  cell = rnnjax.elman(HC)
  params = cell.init(jax.random.key(0), 2)
  return cell, params._replace(w_h=gain * params.w_h)


@functools.partial(jax.jit, static_argnums=0)
def _chaos_run(options, params, xs):
  cell, _ = _elman(1.0)
  args = (params, xs, cell.initial_carry(params, (2,)), None, None, jnp.ones((TC, 2, HC)))
  return _run(cell, options, False, *args), _run(cell, None, False, *args)


@jax.jit
def _largest_lyapunov(params, xs):
  cell, _ = _elman(1.0)
  return jnp.max(rnnjax.diagnostics.jacobian_spectrum(cell, params, xs).lyapunov)


@pytest.mark.parametrize("gain", GAINS)
def test_lyapunov_exponent_predicts_convergence(gain):
  """Negative exponent: converges in a few iterations. Positive: falls back, to unroll's answer."""
  _, params = _elman(gain)
  xs = jax.random.normal(jax.random.key(1), (TC, 2, 2))
  lyapunov = float(_largest_lyapunov(params, xs))
  (out, grads, info), (ref_out, ref_grads, _) = _chaos_run(Newton(), params, xs)
  assert abs(lyapunov) > 0.02, lyapunov  # clearly one side or the other
  if lyapunov < 0:
    assert bool(info.converged) and not bool(info.fell_back)
    assert int(info.iterations) <= 8, int(info.iterations)
  else:
    assert bool(info.fell_back) and not bool(info.converged)
    assert int(info.iterations) <= 64
  # Chaotic gradients are huge (1e7 at gain 5) and amplify rounding: the two sequential
  # backward passes (ours sums the step VJPs in another order) agree to 1e-3 there.
  rtol = 1e-4 if lyapunov < 0 else 1e-3
  assert helpers.max_rel(ref_out, out) <= 1e-4
  for ref_g, g in zip(ref_grads, grads, strict=True):
    assert helpers.max_rel(ref_g, g) <= rtol


def test_chaotic_cell_without_fallback_reports_non_convergence():
  _, params = _elman(5.0)
  xs = jax.random.normal(jax.random.key(1), (TC, 2, 2))
  (_, _, info), _ = _chaos_run(Newton(max_iters=10, fallback="none"), params, xs)
  assert not bool(info.converged) and not bool(info.fell_back)
  assert int(info.iterations) <= 10
  assert isinstance(info, NewtonInfo)


# ---- Options. ----


def test_options_are_hashable_values():
  assert Newton() == Newton(jacobian="auto", damping=0.0, fallback="sequential")
  assert hash(Newton(damping=1)) == hash(Newton(damping=1.0))
  assert Newton(tol=1e-3).tol == 1e-3


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(jacobian="dense"), ValueError, r"rnnjax\.Newton: `jacobian` must be one of 'auto', "),
    (dict(damping=-1.0), ValueError, r"rnnjax\.Newton: `damping` must be >= 0"),
    (dict(damping="big"), TypeError, r"rnnjax\.Newton: `damping` must be a real number"),
    (dict(tol=0.0), ValueError, r"rnnjax\.Newton: `tol` must be > 0"),
    (dict(max_iters=0), ValueError, r"rnnjax\.Newton: `max_iters` must be a positive integer"),
    (dict(max_iters=2.5), TypeError, r"rnnjax\.Newton: `max_iters` must be an integer"),
    (dict(fallback="never"), ValueError, r"rnnjax\.Newton: `fallback` must be one of"),
])
def test_bad_options(kwargs, error, match):
  with pytest.raises(error, match=match):
    Newton(**kwargs)


def test_bad_options_reach_newton_unroll():
  cell = rnnjax.gru(H)
  params = cell.init(jax.random.key(0), I)
  xs = jnp.zeros((T, B, I))
  with pytest.raises(TypeError, match=r"rnnjax\.newton_unroll: `options` must be an "
                                      r"rnnjax\.Newton"):
    newton_unroll(cell, params, xs, options={"jacobian": "full"})
  with pytest.raises(ValueError, match=r"rnnjax\.Newton: `damping` must be >= 0"):
    newton_unroll(cell, params, xs, options=Newton()._replace(damping=-2.0))
  with pytest.raises(TypeError, match=r"rnnjax\.newton_unroll: `return_info` must be a bool"):
    newton_unroll(cell, params, xs, return_info="yes")


def _layout(size, dtype=jnp.float32, leaves=1):
  """The layout of a carry of `leaves` leaves of `size` features each."""
  carry = tuple(jax.ShapeDtypeStruct((size,), jnp.float32) for _ in range(leaves))
  return carry_vector.layout_of(carry, 0)._replace(dtype=np.dtype(dtype))


def test_auto_picks_full_jacobians_while_they_are_small():
  def plan(options, size, num_steps, batch, dtype=jnp.float32, heads=None, leaves=1):
    return newton_lib._plan(options, _layout(size, dtype, leaves), num_steps, batch, heads)
  assert plan(Newton(), 64, 100, 4).full
  assert not plan(Newton(), 65, 100, 4).full
  assert not plan(Newton(), 64, 2**20, 16).full  # T * batch * S^2 > 2^27
  assert plan(Newton("full"), 65, 2**20, 16).full
  assert not plan(Newton("diagonal"), 2, 100, 4).full
  assert plan(Newton(), 8, 100, 4, jnp.float64).tol == 1e-11
  assert plan(Newton(), 8, 100, 4).max_iters == 64
  assert plan(Newton(), 8, 10, 4).max_iters == 10
  # A declared unit-by-unit Jacobian of one leaf is its diagonal: "auto" takes it.
  assert not plan(Newton(), 8, 100, 4, heads=8).full
  assert plan(Newton(), 8, 100, 4, heads=8, leaves=2).full  # two leaves: cross terms
  assert plan(Newton(), 8, 100, 4, heads=2).full
