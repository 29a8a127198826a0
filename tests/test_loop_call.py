"""`loop_call`: a loop primitive whose transpose is a hand-written loop.

The toy loop is `y_t = a_t * y_{t-1} + x_t` (linear in `x`); its transpose, written by
hand, is the reverse recurrence `g_t = ct_t + a_{t+1} g_{t+1}`. Every derivative is
compared with plain JAX differentiating the reference scan. To prove that reverse
mode runs the hand-written transpose (and not JAX's transpose of the reference), a
second pair of loops registers a transpose that is deliberately twice the true one:
its gradients must come out doubled.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax._src import loop_call


def _forward(a, x):
  return (jax.lax.scan(lambda c, ax: (ax[0] * c + ax[1],) * 2, jnp.zeros_like(x[0]), (a, x))[1],)


def _adjoint(a, ct, scale=1.0):
  a_next = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])])
  g = jax.lax.scan(lambda g, ac: ((ac[0] * g + ac[1]),) * 2, jnp.zeros_like(ct[0]),
                   (a_next, ct), reverse=True)[1]
  return (scale * g,)


FWD = loop_call.register(loop_call.Loop("test/toy/forward", "test.toy", _forward, linear=1,
                                        transpose="test/toy/adjoint"))
loop_call.register(loop_call.Loop("test/toy/adjoint", "test.toy_adjoint", _adjoint, linear=1,
                                  transpose="test/toy/forward"))
DOUBLED = loop_call.register(loop_call.Loop("test/doubled/forward", "test.doubled", _forward,
                                            linear=1, transpose="test/doubled/adjoint"))
loop_call.register(loop_call.Loop("test/doubled/adjoint", "test.doubled_adjoint",
                                  lambda a, ct: _adjoint(a, ct, 2.0), linear=1,
                                  transpose="test/doubled/forward"))


def _model(loop):
  """`sum(sin(y))` through a custom JVP whose tangent is `loop` (as the fast paths are)."""
  @jax.custom_jvp
  def run(a, x):
    return _forward(a, x)[0]

  @run.defjvp
  def run_jvp(primals, tangents):
    a, x = primals
    da, dx = tangents
    y = _forward(a, x)[0]
    before = jnp.concatenate([jnp.zeros_like(y[:1]), y[:-1]])
    return y, loop_call.call(loop, a, dx + da * before)[0]
  return lambda a, x: jnp.sum(jnp.sin(run(a, x)))


def _reference(a, x):
  return jnp.sum(jnp.sin(_forward(a, x)[0]))


@pytest.fixture(scope="module")
def data():
  a = jax.random.uniform(jax.random.key(0), (6, 3), minval=-0.9, maxval=0.9)
  x = jax.random.normal(jax.random.key(1), (6, 3))
  return a, x


def _close(got, want):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_reverse_mode_runs_the_registered_transpose(data):
  a, x = data
  want = jax.grad(_reference, argnums=(0, 1))(a, x)
  _close(jax.jit(jax.grad(_model(FWD), argnums=(0, 1)))(a, x), want)
  doubled = jax.jit(jax.grad(_model(DOUBLED), argnums=(0, 1)))(a, x)
  _close(doubled, jax.tree.map(lambda w: 2 * w, want))


def test_forward_mode_vmap_and_second_derivatives(data):
  a, x = data
  model = _model(FWD)
  _close(jax.jvp(model, (a, x), (x, a))[1], jax.jvp(_reference, (a, x), (x, a))[1])
  _close(jax.jacfwd(model, 1)(a, x), jax.jacfwd(_reference, 1)(a, x))
  xs = jnp.stack([x, -x])
  _close(jax.vmap(jax.grad(model, 1), (None, 0))(a, xs),
         jax.vmap(jax.grad(_reference, 1), (None, 0))(a, xs))
  _close(jax.grad(lambda xs: jax.vmap(model, (None, 0))(a, xs).sum())(xs),
         jax.grad(lambda xs: jax.vmap(_reference, (None, 0))(a, xs).sum())(xs))
  _close(jax.hessian(model, 1)(a, x), jax.hessian(_reference, 1)(a, x))
  grad_of_grad = lambda f: jax.grad(lambda a: jnp.sum(jax.grad(f, 1)(a, x) ** 2))(a)
  _close(grad_of_grad(model), grad_of_grad(_reference))
  _close(jax.grad(jax.checkpoint(model), argnums=(0, 1))(a, x),
         jax.grad(_reference, argnums=(0, 1))(a, x))


def test_kernels_run_per_platform_and_may_decline(data):
  a, x = data
  calls = []

  def kernel(config, a, x):
    calls.append(x.shape)
    return None if x.shape[0] < 6 else (2 * _forward(a, x)[0],)

  with loop_call.kernels_on("cpu", {"test.toy": kernel}):
    doubled = jax.jit(lambda a, x: loop_call.call(FWD, a, x)[0])(a, x)
    declined = jax.jit(lambda a, x: loop_call.call(FWD, a, x)[0])(a[:5], x[:5])
  np.testing.assert_allclose(doubled, 2 * _forward(a, x)[0], rtol=1e-6)
  np.testing.assert_allclose(declined, _forward(a[:5], x[:5])[0], rtol=1e-6)
  assert calls == [(6, 3), (5, 3)]
  with loop_call.reference_only():  # a trace-time switch: holds wherever it compiles
    traced = jax.jit(lambda a, x: loop_call.call(FWD, a, x)[0]).trace(a, x)
  with loop_call.kernels_on("cpu", {"test.toy": kernel}):
    plain = traced.lower().compile()(a, x)
  np.testing.assert_allclose(plain, _forward(a, x)[0], rtol=1e-6)
  assert calls == [(6, 3), (5, 3)]
  # Outside the block the reference runs again.
  np.testing.assert_allclose(jax.jit(lambda a, x: loop_call.call(FWD, a, x)[0])(a, x),
                             _forward(a, x)[0], rtol=1e-6)


def test_exported_programs_run_the_references(data):
  """`jax.export` needs stable custom calls: an exported program never runs a kernel."""
  from jax import export
  a, x = data
  calls = []

  def kernel(config, a, x):
    calls.append(x.shape)
    return (2 * _forward(a, x)[0],)

  with loop_call.kernels_on("cpu", {"test.toy": kernel}):
    exported = export.export(jax.jit(lambda a, x: loop_call.call(FWD, a, x)[0]))(a, x)
  assert calls == []
  np.testing.assert_allclose(exported.call(a, x), _forward(a, x)[0], rtol=1e-6)


def test_registration_errors():
  with pytest.raises(ValueError, match="linear but names no transpose"):
    loop_call.register(loop_call.Loop("test/bad", "test.bad", _forward, linear=1))
  with pytest.raises(ValueError, match="not registered"):
    loop_call.call(loop_call.Loop("test/unknown", "test.unknown", _forward), 1.0, 2.0)
