"""The fast paths' loops on each backend: pure JAX, the C++ kernel, the Pallas kernels.

For each backend the LSTM and GRU fast paths must equal plain autodiff through
`lax.scan` over the cell's `apply` (`fused=False`): outputs, final carries and gradients
with respect to params, inputs and the initial carry, with lengths, resets, reverse and
NaN padding. The backends:

- `jax`: the pure-JAX loops (`loop_call.reference_only()`);
- `cpu`: the optional C++ kernel (`cpu_kernels.py`), which the CPU runs by default when
  it is built (skipped where it is not, unless CI requires it: `test_cpu_kernels.py`);
- `pallas`: the GPU kernels (`pallas_rnn.py`), run on CPU in Pallas's interpret mode
  with `loop_call.kernels_on("cpu", ...)`, exactly as a GPU runs them.

A counter proves that the kernels really ran, and a size that a backend refuses
(`fits`) must run the pure-JAX loops instead.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax._src import fused_kernels, loop_call

T, B, I, H = 5, 3, 4, 16
BACKENDS = ["jax", "cpu", "pallas"]
# The platform programs compile for: on a GPU the Pallas kernels compile (no interpreter).
PLATFORM = {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())


def _cpu_kernel_built():
  try:
    from rnnjax._src import cpu_kernels
  except ImportError:
    return False
  return cpu_kernels.available()


def _on(backend, calls):
  """A context in which CPU programs run `backend`'s loops, counting kernel calls."""
  if backend == "jax":
    return loop_call.reference_only()
  if backend == "cpu" and (PLATFORM != "cpu" or not _cpu_kernel_built()):
    pytest.skip("the C++ kernel is for CPUs, and built at install (test_cpu_kernels.py)")
  options = dict(interpret=PLATFORM == "cpu") if backend == "pallas" else {}

  def count(kind, kernel):
    def run(*args):
      out = kernel(*args)
      calls.append((kind, out is not None))
      return out
    return run
  kernels = fused_kernels.kernels(backend, **options)
  return loop_call.kernels_on(PLATFORM, {kind: count(kind, k) for kind, k in kernels.items()})


def _data(seed, hidden=H):
  keys = jax.random.split(jax.random.key(seed), 5)
  lengths = jax.random.randint(keys[0], (B,), 1, T + 1)
  resets = jax.random.bernoulli(keys[1], 0.3, (T, B))
  xs = jax.random.normal(keys[2], (T, B, I))
  pad = jnp.arange(T)[:, None] >= lengths[None, :]
  xs = jnp.where(pad[..., None], jnp.nan, xs)  # NaN padding must change nothing
  return xs, lengths, resets, keys[3], keys[4]


def _loss_and_grads(cell, fused, opts):
  def loss(p, x, c):
    ys, final = rnnjax.unroll(cell, p, x, c, fused=fused, **opts)
    return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(f ** 2) for f in jax.tree.leaves(final))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


CELLS = {"lstm": lambda h: rnnjax.lstm(h), "gru": lambda h: rnnjax.gru(h),
         "gru_reset_before": lambda h: rnnjax.gru(h, reset_after=False)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("reverse", [False, True])
def test_backends_equal_plain_autodiff(backend, name, reverse):
  cell = CELLS[name](H)
  xs, lengths, resets, kp, kc = _data(3 + reverse)
  params = cell.init(kp, I)
  carry = jax.tree.map(lambda c: jax.random.normal(kc, c.shape), cell.initial_carry(params, (B,)))
  calls = []
  for opts in (dict(lengths=lengths, resets=resets, reverse=reverse), dict(reverse=reverse)):
    x = xs if "lengths" in opts else jnp.nan_to_num(xs)
    with _on(backend, calls):
      got = _loss_and_grads(cell, True, opts)(params, x, carry)
    want = _loss_and_grads(cell, False, opts)(params, x, carry)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5, err_msg=str(opts))
  family = name.split("_")[0]
  ran = (f"{family}.forward_save", True) in calls and (f"{family}.adjoint", True) in calls
  assert ran == (backend != "jax")


@pytest.mark.parametrize("backend", ["cpu", "pallas"])
def test_forward_only_runs_the_forward_kernel(backend):
  cell = rnnjax.lstm(H)
  xs, lengths, _, kp, _ = _data(7)
  params = cell.init(kp, I)
  calls = []
  with _on(backend, calls):
    got = jax.jit(lambda p, x: rnnjax.unroll(cell, p, x, lengths=lengths)[0])(params, xs)
  want = rnnjax.unroll(cell, params, xs, lengths=lengths, fused=False)[0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert calls == [("lstm.forward", True)]


def test_sizes_that_do_not_fit_run_the_reference_loops():
  cell = rnnjax.gru(24)  # not a power of two: `pallas_rnn.fits` says no
  xs, lengths, _, kp, _ = _data(8)
  params = cell.init(kp, I)
  calls = []
  with _on("pallas", calls):
    got = _loss_and_grads(cell, True, dict(lengths=lengths))(params, xs, None)
  want = _loss_and_grads(cell, False, dict(lengths=lengths))(params, xs, None)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5)
  assert calls and not any(ran for _, ran in calls)
