"""The backward pass of the Newton engine: implicit differentiation at the converged trajectory.

The trajectory solves `h_t = F_t(h_{t-1})` (`newton_linear`'s masked step). For a loss
with cotangents `g_t = dL/dh_t` (direct), the total cotangent of each carry is the
adjoint `λ_t = g_t + A_{t+1}^T λ_{t+1}`, `A_t = dF_t/dh_{t-1}`: a linear recurrence
backwards in time, as in backpropagation through time but with nothing to
differentiate through the iterations. Then one vector-Jacobian product of the step
at every `(h_{t-1}, x_t)` at once gives the cotangents of the params, of `xs`, of
the initial carry (`A_1^T λ_1`) and of the reset carry (summed over reset steps).

`λ` comes from

- full Jacobians: one reverse associative scan with `A_t^T` (`newton_linear.reverse_scan`);
- diagonal ones: quasi-Newton iterations on the linear system, each a diagonal reverse
  scan preconditioning the residual computed with exact step VJPs (the operator is
  nilpotent, so this converges, in one iteration for a cell whose Jacobian really is
  diagonal); if they do not reach the tolerance in `max_iters`, a sequential
  reverse `lax.scan` of step VJPs;
- a forward pass that fell back to the sequential engine: that sequential reverse scan.

So the gradients are those of the sequential engine at the same trajectory.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rnnjax._src import newton_linear as lin


def _sequential(step1, params, h_in, xs, valid, keep, g):
  """`λ` by a reverse `lax.scan` of one step VJP per time step (exact, `T` steps deep)."""
  def body(mu, inputs):  # mu = A_{t+1}^T λ_{t+1}
    g_t, h_t, x_t, v, k = inputs
    lam = g_t + mu
    _, vjp = jax.vjp(lambda h: step1(params, h, x_t), h_t)
    (jt,) = vjp(lam)
    v, k = lin.expand(v, lam), lin.expand(k, lam)
    return jnp.where(k, jt, jnp.where(v, jnp.zeros_like(lam), lam)), lam

  _, lam = jax.lax.scan(body, jnp.zeros_like(g[0]), (g, h_in, xs, valid, keep), reverse=True)
  return lam


def _quasi_newton(step, params, h_in, xs, valid, keep, diag, g, tol, max_iters):
  """`λ` by diagonal-preconditioned iterations; returns `(λ, converged)`."""
  _, vjp = jax.vjp(lambda h: step(params, h, xs), h_in)
  d = lin.masked_jacobian(diag, valid, keep, full=False)
  v, k = lin.expand(valid, g), lin.expand(keep, g)

  def residual(lam):  # g + N^T λ - λ, with (N^T λ)_t = A_{t+1}^T λ_{t+1}
    (jt,) = vjp(lam)
    mu = jnp.where(k, jt, jnp.where(v, jnp.zeros_like(lam), lam))
    return g + jnp.concatenate([mu[1:], jnp.zeros_like(mu[:1])]) - lam

  def cond(state):
    i, lam, r = state
    scale = jnp.maximum(jnp.max(jnp.abs(g)), jnp.max(jnp.abs(lam)))
    return (i < max_iters) & (jnp.max(jnp.abs(r)) > tol * scale)

  def body(state):
    i, lam, r = state
    lam = lam + lin.reverse_scan(d, r, full=False)
    return i + 1, lam, residual(lam)

  lam = lin.reverse_scan(d, g, full=False)
  _, lam, r = jax.lax.while_loop(cond, body, (jnp.ones((), jnp.int32), lam, residual(lam)))
  scale = jnp.maximum(jnp.max(jnp.abs(g)), jnp.max(jnp.abs(lam)))
  return lam, jnp.max(jnp.abs(r)) <= tol * scale


def adjoint(step, step1, full: bool, tol: float, max_iters: int, residuals: Any,
            g: jax.Array) -> tuple[Any, ...]:
  """The cotangents `(params, xs, h0, h_reset, valid, keep)` of `newton.trajectory`.

  Args:
    step: `(params, h [T, *batch, S], xs [T, *batch, I]) -> new h [T, *batch, S]`.
    step1: the same for one time step (`[*batch, S]`, `[*batch, I]`).
    full: whether `residuals` hold full Jacobians (else diagonals).
    tol: the relative tolerance of the quasi-Newton iterations.
    max_iters: their iteration limit.
    residuals: `(params, xs, h0, h_reset, valid, keep, hs, jac, fell_back)` from the
      forward pass (`hs` the trajectory, `jac` the step Jacobians there).
    g: `[T, *batch, S]`, the cotangents of `hs`.
  """
  params, xs, h0, h_reset, valid, keep, hs, jac, fell_back = residuals
  h_prev = jnp.concatenate([h0[None], hs[:-1]])
  reset = valid & ~keep
  h_in = jnp.where(lin.expand(reset, hs), h_reset, h_prev)
  if full:
    lam = lin.reverse_scan(lin.masked_jacobian(jac, valid, keep, full=True), g, full=True)
    ok = ~fell_back
  else:
    lam, ok = jax.lax.cond(
        fell_back, lambda: (g, jnp.zeros((), bool)),
        lambda: _quasi_newton(step, params, h_in, xs, valid, keep, jac, g, tol, max_iters))
  lam = jax.lax.cond(ok, lambda: lam,
                     lambda: _sequential(step1, params, h_in, xs, valid, keep, g))

  v = lin.expand(valid, lam)
  _, vjp = jax.vjp(step, params, h_in, xs)
  p_bar, h_in_bar, x_bar = vjp(jnp.where(v, lam, jnp.zeros_like(lam)))
  h0_bar = jnp.where(lin.expand(keep[0], h0), h_in_bar[0],
                     jnp.where(lin.expand(valid[0], h0), jnp.zeros_like(h0), lam[0]))
  h_reset_bar = jnp.sum(jnp.where(lin.expand(reset, lam), h_in_bar, jnp.zeros_like(lam)), axis=0)
  return p_bar, x_bar, h0_bar, h_reset_bar, None, None
