"""The Newton engine reads a cell's declared Jacobian structure (`FastPaths.jacobian_heads`):
one Jacobian-vector product per colour instead of one per carry feature.

Reference: the diagonal from one-hot tangents (one product per feature, no structure used),
and `rnnjax.unroll` for the answers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax._src import carry_vector as cv
from rnnjax._src import engines
from rnnjax._src import newton_linear as lin

T, B, I, H = 12, 2, 3, 4
XS = jax.random.normal(jax.random.key(0), (T, B, I))

CELLS = {
    "diagonal_gru": (rnnjax.diagonal_gru(H), 1),  # (cell, colours)
    "diagonal_lstm": (rnnjax.diagonal_lstm(H), 2),
    "slstm_2_heads": (rnnjax.slstm(H, heads=2), 4 * 2),
    "gru_2_heads": (rnnjax.gru(H, heads=2), 2),
    "lstm_4_heads": (rnnjax.lstm(H, heads=4), 2 * 1),
}


@pytest.mark.parametrize("name", sorted(CELLS))
def test_the_coloured_diagonal_equals_the_one_hot_diagonal(name):
  cell, n_colors = CELLS[name]
  params = cell.init(jax.random.key(1), input_size=I)
  carry = jax.tree_util.tree_map(
      lambda c: c + 0.3 * jax.random.normal(jax.random.key(2), c.shape),
      cell.initial_carry(params, (T, B)))
  if name.startswith("slstm"):  # n > 0 and m finite, as after a first step
    carry = carry._replace(n=1.0 + jnp.abs(carry.n))
  layout = cv.layout_of(carry, 2)
  colors = lin.colors_of(layout, engines.paths_of(cell).jacobian_heads)
  assert colors is not None and len(set(colors)) == n_colors < sum(layout.sizes)
  h = cv.to_vector(layout, carry, (T, B))

  def step(v):
    new, _ = cell.apply(params, cv.from_vector(layout, v), XS)
    return cv.to_vector(layout, new, (T, B))

  _, want = lin.linearise(step, h, full=False)
  _, got = lin.linearise(step, h, full=False, colors=colors)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_dense_cells_declare_nothing():
  for cell in (rnnjax.gru(H), rnnjax.lstm(H), rnnjax.elman(H)):
    assert getattr(engines.paths_of(cell), "jacobian_heads", None) is None


@pytest.mark.parametrize("name", sorted(CELLS))
def test_newton_with_the_structure_gives_unrolls_answers(name):
  cell, _ = CELLS[name]
  params = cell.init(jax.random.key(3), input_size=I)
  lengths = jnp.array([T, 7])
  ys, carry, info = rnnjax.newton_unroll(cell, params, XS, lengths=lengths,
                                         options=rnnjax.Newton(jacobian="diagonal"),
                                         return_info=True)
  want, want_carry = rnnjax.unroll(cell, params, XS, lengths=lengths)
  assert bool(info.converged) and not bool(info.fell_back)
  np.testing.assert_allclose(ys, want, rtol=1e-4, atol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                         carry, want_carry)
  if name == "diagonal_gru":  # The diagonal is its whole Jacobian: exact Newton.
    assert int(info.iterations) <= 4
    _, _, auto = rnnjax.newton_unroll(cell, params, XS, return_info=True)
    assert int(auto.iterations) == int(info.iterations)  # "auto" takes the diagonal
