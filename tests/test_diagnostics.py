"""Diagnostics against independent computations.

- `gradient_norms`: against `jax.grad` through a plain Python loop over
  `cell.apply` with explicit per-step perturbations, and against central finite
  differences in float64.
- `jacobian_spectrum`: against `jax.jacfwd` of one step applied along a Python
  loop, NumPy's SVD, a NumPy QR (Benettin) iteration, and minGRU's closed form
  `dh_t/dh_{t-1} = diag(1 - z_t)`.
- `record`: an LSTM's gates against the NumPy float64 equations in
  tests/reference.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax import diagnostics
from tests import reference as ref

T, B, I, H = 6, 2, 3, 4


def _loop_grad_norms(cell, params, xs, loss_fn, lengths=None):
  """`(L, ||dL/dh_t||, per-leaf norms)` by a Python loop with one perturbation per step."""
  batch = xs.shape[1:-1]
  carry0 = cell.initial_carry(params, batch)

  def loss(eps):
    carry, ys = carry0, []
    for t in range(xs.shape[0]):
      new, y = cell.apply(params, carry, xs[t])
      new = jax.tree_util.tree_map(lambda a, e: a + e, new, eps[t])
      if lengths is not None:
        valid = (t < lengths).reshape((*batch, 1))
        new = jax.tree_util.tree_map(lambda n, c, v=valid: jnp.where(v, n, c), new, carry)
        y = jnp.where(valid, y, jnp.zeros_like(y))
      carry = new
      ys.append(y)
    return loss_fn(jnp.stack(ys))

  eps = [jax.tree_util.tree_map(jnp.zeros_like, carry0) for _ in range(xs.shape[0])]
  value, grads = jax.value_and_grad(loss)(eps)
  squares = [[jnp.sum(jnp.abs(g) ** 2, axis=-1) for g in jax.tree_util.tree_leaves(gt)]
             for gt in grads]  # [t][leaf]
  norms = jnp.stack([jnp.sqrt(sum(sq)) for sq in squares])
  leaf_norms = tuple(jnp.sqrt(jnp.stack(leaf)) for leaf in zip(*squares, strict=True))
  return value, norms, leaf_norms


def _last_loss(ys):
  return jnp.mean(jnp.real(ys[-1]) ** 2) + 0.1 * jnp.mean(jnp.real(ys))


@pytest.mark.parametrize("name", ["elman", "lstm", "gru", "stack", "mingru", "lru"])
def test_gradient_norms_equal_a_python_loop(name):
  cells = {"elman": rnnjax.elman(H), "lstm": rnnjax.lstm(H), "gru": rnnjax.gru(H),
           "stack": rnnjax.stack([rnnjax.lstm(H), rnnjax.gru(H)]), "mingru": rnnjax.mingru(H),
           "lru": rnnjax.lru(H, output_size=H, r_min=0.5, r_max=0.95)}
  cell = cells[name]
  params = cell.init(jax.random.key(0), I)
  xs = jax.random.normal(jax.random.key(1), (T, B, I))
  lengths = jnp.array([T, 3])
  got = diagnostics.gradient_norms(cell, params, xs, _last_loss, lengths=lengths)
  want_loss, want, want_leaves = _loop_grad_norms(cell, params, xs, _last_loss,
                                                  lengths=lengths)
  np.testing.assert_allclose(got.norms, want, rtol=1e-5, atol=1e-7)
  assert float(got.norms[4, 1]) == 0.0  # a padded step: the carry does not change there
  np.testing.assert_allclose(got.loss, want_loss, rtol=1e-6)  # the loop's, not `unroll`'s
  assert len(got.leaf_norms) == len(want_leaves)  # each leaf, in tree order (a stack: h, c, h)
  for got_leaf, want_leaf in zip(got.leaf_norms, want_leaves, strict=True):
    np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("engine", ["parallel", "chunked"])
@pytest.mark.parametrize("name", ["mingru", "lru"])
def test_gradient_norms_through_the_parallel_engines(name, engine):
  cell = rnnjax.mingru(H) if name == "mingru" else rnnjax.lru(H, r_min=0.5, r_max=0.95)
  params = cell.init(jax.random.key(2), I)
  xs = jax.random.normal(jax.random.key(3), (T, B, I))
  resets = jnp.zeros((T, B), bool).at[3, 0].set(True)
  seq = diagnostics.gradient_norms(cell, params, xs, _last_loss, resets=resets)
  par = diagnostics.gradient_norms(cell, params, xs, _last_loss, resets=resets, engine=engine)
  np.testing.assert_allclose(par.norms, seq.norms, rtol=1e-5, atol=1e-7)
  assert float(seq.norms[2, 0]) == 0.0  # the reset at step 3 cuts the carry after step 2 off


def test_gradient_norms_match_finite_differences():
  with jax.enable_x64(True):
    cell = rnnjax.elman(3, dtype=jnp.float64)
    params = cell.init(jax.random.key(4), 2)
    xs = jax.random.normal(jax.random.key(5), (5, 2), jnp.float64)
    loss_fn = lambda ys: jnp.sum(ys[-1] ** 2)
    got = diagnostics.gradient_norms(cell, params, xs, loss_fn).norms

    def loss_with(t, delta):  # The loss with `delta` added to the carry after step t.
      carry, ys = cell.initial_carry(params), []
      for s in range(xs.shape[0]):
        carry, y = cell.apply(params, carry, xs[s])
        if s == t:  # The carry passed on, not this step's own output.
          carry = rnnjax.HiddenState(carry.h + delta)
        ys.append(y)
      return float(loss_fn(jnp.stack(ys)))

    step = 1e-6
    for t in range(xs.shape[0]):
      fd = np.array([(loss_with(t, step * e) - loss_with(t, -step * e)) / (2 * step)
                     for e in np.eye(3)])
      np.testing.assert_allclose(float(got[t]), np.linalg.norm(fd), rtol=1e-6, atol=1e-9)
    assert float(got[-1]) == 0.0 and float(got[0]) > 0.0  # Nothing comes after the last step.


def test_vanishing_gradients_show_in_the_norms():
  """A contracting Elman RNN's norms fall geometrically towards early steps; an LSTM's less."""
  xs = jax.random.normal(jax.random.key(6), (40, 8, 1))
  loss_fn = lambda ys: jnp.mean(ys[-1] ** 2)
  elman = rnnjax.elman(16, recurrent_init=jax.nn.initializers.orthogonal(0.5))
  e = diagnostics.gradient_norms(elman, elman.init(jax.random.key(0), 1), xs, loss_fn)
  assert diagnostics.summary(e.norms)["log10_first_over_last"] < -8


def _loop_jacobians(cell, params, xs):
  carry, jacs = cell.initial_carry(params), []
  leaves, tree = jax.tree_util.tree_flatten(carry)
  sizes = [leaf.shape[-1] for leaf in leaves]

  def to_vec(c):
    return jnp.concatenate(jax.tree_util.tree_leaves(c))

  def from_vec(v):
    return jax.tree_util.tree_unflatten(tree, jnp.split(v, np.cumsum(sizes)[:-1]))

  for x in xs:
    jacs.append(jax.jacfwd(lambda v, x=x: to_vec(cell.apply(params, from_vec(v), x)[0]))(
        to_vec(carry)))
    carry = cell.apply(params, carry, x)[0]
  return np.stack([np.asarray(j, np.float64) for j in jacs])


def _numpy_lyapunov(jacs):
  q = np.eye(jacs.shape[-1])
  total = np.zeros(jacs.shape[-1])
  for j in jacs:
    q, r = np.linalg.qr(j @ q)
    total += np.log(np.abs(np.diag(r)))
  return np.sort(total / len(jacs))[::-1]


@pytest.mark.parametrize("name", ["lstm", "gru", "stack"])
def test_jacobian_spectrum_equals_jacfwd_svd_and_qr(name):
  cells = {"lstm": rnnjax.lstm(H), "gru": rnnjax.gru(H),
           "stack": rnnjax.stack([rnnjax.elman(3), rnnjax.lstm(2)])}
  cell = cells[name]
  params = cell.init(jax.random.key(7), I)
  xs = jax.random.normal(jax.random.key(8), (T, B, I))
  spec = diagnostics.jacobian_spectrum(cell, params, xs, return_jacobians=True)
  for b in range(B):
    jacs = _loop_jacobians(cell, params, xs[:, b])
    np.testing.assert_allclose(spec.jacobians[:, b], jacs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(spec.singular_values[:, b],
                               np.linalg.svd(jacs, compute_uv=False), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(spec.lyapunov[b], _numpy_lyapunov(jacs), rtol=1e-4, atol=1e-5)


def test_mingru_spectrum_has_its_closed_form():
  """minGRU: h' = (1 - z) h + z h̃ with z from x only, so dh'/dh = diag(1 - z)."""
  cell = rnnjax.mingru(H)
  params = cell.init(jax.random.key(9), I)
  xs = jax.random.normal(jax.random.key(10), (T, I))
  spec = diagnostics.jacobian_spectrum(cell, params, xs)
  z = jax.nn.sigmoid(xs @ params.w[:, :H] + params.b[:H])
  np.testing.assert_allclose(spec.singular_values, -np.sort(-(1 - np.asarray(z)), axis=-1),
                             rtol=1e-5)
  np.testing.assert_allclose(spec.lyapunov, -np.sort(-np.mean(np.log(1 - np.asarray(z)), 0)),
                             rtol=1e-5)


def test_record_gives_the_lstm_gates():
  cell = rnnjax.lstm(H)
  params = cell.init(jax.random.key(11), I)
  xs = jax.random.normal(jax.random.key(12), (T, B, I))
  lengths = jnp.array([T, 2])
  ys, final, recs = diagnostics.record(cell, params, xs, lengths=lengths)
  # `record` steps the cell's `apply` (the generic path), so it must equal that path.
  ys_ref, final_ref = rnnjax.unroll(cell, params, xs, lengths=lengths, fused=False)
  np.testing.assert_allclose(ys, ys_ref, rtol=1e-6)
  np.testing.assert_allclose(final.c, final_ref.c, rtol=1e-6)
  assert [r.name for r in recs] == ["logistic#0", "logistic#1", "tanh#0", "logistic#2", "tanh#1"]
  # The gates are written once, in rnnjax/_src/cells/gates.py, one a line.
  assert all(r.source.startswith("gates.py:") for r in recs)
  assert len({r.source for r in recs}) == 5
  # The reference's gates, step by step, for the first sequence.
  state = (np.zeros(H), np.zeros(H))
  for t in range(T):
    x = np.asarray(xs[t, 0], np.float64)
    z = (x @ ref._np(params.w_i) + ref._np(params.b_i) + state[0] @ ref._np(params.w_h)
         + ref._np(params.b_h))
    i, f, g, o = np.split(z, 4)
    # Program order of rnnjax/_src/cells/gates.py: σ(i), σ(f), tanh(g), σ(o), then tanh(c').
    want = [ref.sigmoid(i), ref.sigmoid(f), np.tanh(g), ref.sigmoid(o)]
    for rec, w in zip(recs[:4], want, strict=True):
      np.testing.assert_allclose(rec.values[t, 0], w, rtol=1e-5, atol=1e-6)
    state = ref.lstm_step(params, state, x)[0]
  assert float(jnp.abs(recs[0].values[2:, 1]).max()) == 0.0  # padded steps record zeros


def test_record_with_a_custom_selection():
  cell = rnnjax.gru(H)
  params = cell.init(jax.random.key(13), I)
  xs = jnp.ones((T, B, I))
  _, _, recs = diagnostics.record(cell, params, xs,
                                  select=lambda eqn: eqn.primitive.name == "dot_general")
  assert len(recs) == 2 and all(r.values.shape == (T, B, 3 * H) for r in recs)


def test_errors():
  cell = rnnjax.lstm(H)
  params = cell.init(jax.random.key(0), I)
  with pytest.raises(ValueError, match=r"gradient_norms: `engine`"):
    diagnostics.gradient_norms(cell, params, jnp.ones((T, B, I)), jnp.sum, engine="fast")
  with pytest.raises(ValueError, match=r"feature size 2"):
    diagnostics.jacobian_spectrum(cell, params, jnp.ones((T, 2)))
