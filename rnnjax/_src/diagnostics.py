"""Research diagnostics: gradient flow over time and step-Jacobian spectra.

- `gradient_norms`: `||dL/dh_t||` for every step `t` in one backward pass. A zero
  perturbation `ε_t` is added to the carry after each step; `dL/dε_t = dL/dh_t`.
  The perturbations enter as extra input features of a wrapped cell, so every
  engine option (lengths, resets, reverse, the parallel engines) works unchanged.
- `jacobian_spectrum`: the singular values of each step Jacobian `dh_t/dh_{t-1}`
  along a trajectory (`jax.jacfwd` of one step), and the Lyapunov exponents: the
  average log growth rates, from the QR (Benettin) iteration over the product
  of the step Jacobians.
- `summary`: a few numbers that describe a gradient-norm curve.

Both tools see a carry as one real vector per batch entry (`carry_vector.py`). The
third tool of `rnnjax.diagnostics`, `record` (per-step records of any
intermediate, read from the step's jaxpr), lives in `recording.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._src import carry_vector as cv
from rnnjax._src import cell as cell_lib
from rnnjax._src import checks, engines
from rnnjax._src import linear as linear_lib

# ----------------------------------------------------------------------------- carries as vectors


# ----------------------------------------------------------------------------- gradient norms


class GradientNorms(NamedTuple):
  """The result of `gradient_norms`.

  Attributes:
    norms: `[T, *batch]`, `||dL/dh_t||` over the whole carry (every leaf; for
      complex leaves, real and imaginary parts), `h_t` the carry after step `t`.
    leaf_norms: the same per carry leaf, a tuple in `jax.tree_util` leaf order (for
      a `stack`: layer by layer, e.g. `(h_1, c_1, h_2, c_2)` for two LSTMs).
    loss: the loss value.
  """

  norms: jax.Array
  leaf_norms: tuple[jax.Array, ...]
  loss: jax.Array


def _perturbed_cell(cell: cell_lib.Cell, layout: cv.CarryLayout, in_size: int) -> cell_lib.Cell:
  """`cell` whose input carries `S` extra features `ε`, added to the carry after the step."""
  def split(x):
    return x[..., :in_size], x[..., in_size:]

  def apply(params, carry, x_eps, *, key=None):
    x, eps = split(x_eps)
    new, y = cell.apply(params, carry, x, key=key)
    delta = cv.from_vector(layout, eps.astype(layout.dtype))
    new = jax.tree_util.tree_map(lambda c, d: c + d.astype(c.dtype), new, delta)
    return new, y

  wrapped = cell_lib.Cell(cell.init, cell.initial_carry, apply,
                          input_size=lambda p: in_size + sum(layout.sizes))
  return wrapped


def _perturbed_linear(cell: cell_lib.Cell, layout: cv.CarryLayout, in_size: int) -> cell_lib.Cell:
  """`_perturbed_cell` of a linear cell, with its recurrence (in plain form, not log space).

  `ε_t` enters as `b_t + ε_t`, after the step, as in `_perturbed_cell`: resets and padding
  then treat it as part of the carry. Step `t`'s output reads the carry before `ε_t` is
  added (`hs - ε`), as `_perturbed_cell`'s does.
  """
  recurrence = linear_lib.recurrence_of(cell)
  if recurrence is None:
    raise TypeError("rnnjax.diagnostics.gradient_norms: the parallel engines need a linear "
                    "cell (one with a LinearRecurrence); use engine='sequential' for others.")

  def split(params, x_eps):
    delta = cv.from_vector(layout, x_eps[..., in_size:].astype(layout.dtype)).h
    return x_eps[..., :in_size], delta

  def coefficients(params, xs_eps):
    xs, delta = split(params, xs_eps)
    a, b = recurrence.coefficients(params, xs)
    return a, b + delta.astype(b.dtype)

  def readout(params, hs, xs_eps):
    xs, delta = split(params, xs_eps)
    hs = hs - delta.astype(hs.dtype)
    return hs if recurrence.readout is None else recurrence.readout(params, hs, xs)

  return linear_lib.with_recurrence(_perturbed_cell(cell, layout, in_size),
                                    linear_lib.LinearRecurrence(coefficients, readout))




def gradient_norms(cell: cell_lib.Cell, params: Any, xs: jax.Array,
                   loss_fn: Callable[[Any], jax.Array], carry: Any = None, *,
                   lengths: jax.Array | None = None, resets: jax.Array | None = None,
                   reverse: bool = False, engine: str = "sequential") -> GradientNorms:
  """`||dL/dh_t||` for every step `t`, in one backward pass.

  `L = loss_fn(ys)` with `ys, _ = unroll(cell, params, xs, carry, ...)`, and `h_t`
  the carry that step `t` passes on to step `t + 1`: the norm measures how much
  the loss depends on what the recurrence carries forward from step `t`, through
  every later step (not through step `t`'s own output). Vanishing gradients show
  as norms that fall quickly towards early steps.

  Args:
    cell: any `Cell` (built-in, a `stack` of cells, your own), or a linear cell
      for the parallel engines.
    params: the cell's params.
    xs: `[T, *batch, I]`, time first, as in `rnnjax.unroll`.
    loss_fn: `ys -> scalar`.
    carry: the initial carry, or None for `cell.initial_carry`.
    lengths: `int [*batch]` valid steps per sequence, or None (as in `rnnjax.unroll`).
    resets: `bool [T, *batch]`, or None (as in `rnnjax.unroll`).
    reverse: run each sequence backwards over its valid steps (as in `rnnjax.unroll`).
    engine: `"sequential"` (`rnnjax.unroll`), or `"parallel"`/`"chunked"` for linear
      cells (`rnnjax.parallel_unroll`).

  Returns:
    A `GradientNorms` with `norms: [T, *batch]`. Padded steps get 0 (the carry
    does not change there), and so does a step followed by a reset.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> cell = rnnjax.elman(16)
    >>> params = cell.init(jax.random.key(0), input_size=2)
    >>> xs = jax.random.normal(jax.random.key(1), (30, 4, 2))
    >>> g = rnnjax.diagnostics.gradient_norms(cell, params, xs, lambda ys: jnp.mean(ys[-1] ** 2))
    >>> g.norms.shape
    (30, 4)
  """
  fn = "rnnjax.diagnostics.gradient_norms"
  if engine == "auto" or not isinstance(engine, str) or engine not in engines.ENGINES:
    raise ValueError(f"{fn}: `engine` must be one of {engines.ENGINES[1:]}, got {engine!r}.")
  checks.function(fn, "loss_fn", loss_fn)
  in_size = cell.input_size(params) if cell.input_size is not None else None
  num_steps, batch_shape = checks.sequence_input(fn, xs, in_size)
  in_size = xs.shape[-1]
  if carry is None:
    carry = cell.initial_carry(params, batch_shape)
  layout = cv.layout_of(jax.eval_shape(lambda p: cell.initial_carry(p, batch_shape), params),
                   len(batch_shape))
  eps = jnp.zeros((num_steps, *batch_shape, sum(layout.sizes)), xs.dtype)
  opts = dict(lengths=lengths, resets=resets, reverse=reverse)
  if engines.linear_only(engine):
    wrapped = _perturbed_linear(cell, layout, in_size)
  else:
    wrapped = _perturbed_cell(cell, layout, in_size)
  run = engines.runner(engine)

  def loss(eps):
    ys, _ = run(wrapped, params, jnp.concatenate([xs, eps.astype(xs.dtype)], axis=-1), carry,
                **opts)
    return loss_fn(ys)

  value, grad = jax.value_and_grad(loss)(eps)
  leaf_norms, start = [], 0
  for size in layout.sizes:
    leaf_norms.append(jnp.sqrt(jnp.sum(grad[..., start:start + size] ** 2, axis=-1)))
    start += size
  return GradientNorms(jnp.sqrt(jnp.sum(grad ** 2, axis=-1)), tuple(leaf_norms), value)


# ----------------------------------------------------------------------------- Jacobians


class JacobianSpectrum(NamedTuple):
  """The result of `jacobian_spectrum`.

  Attributes:
    singular_values: `[T, *batch, S]`, descending, of each step Jacobian
      `dh_t/dh_{t-1}` (the carry as one real vector of `S` features).
    lyapunov: `[*batch, S]`, descending: the average log growth rates
      `(1/T) Σ_t log |R_t[i, i]|` of the QR iteration `Q_t R_t = J_t Q_{t-1}`.
      The largest is the rate at which perturbations (and gradients) grow
      (> 0) or vanish (< 0) per step.
    jacobians: `[T, *batch, S, S]` if `return_jacobians`, else None.
  """

  singular_values: jax.Array
  lyapunov: jax.Array
  jacobians: jax.Array | None


def jacobian_spectrum(cell: cell_lib.Cell, params: Any, xs: jax.Array, carry: Any = None, *,
                      return_jacobians: bool = False) -> JacobianSpectrum:
  """Singular values of the step Jacobians `dh_t/dh_{t-1}`, and the Lyapunov exponents.

  The trajectory is `unroll(cell, params, xs, carry)`; each step's Jacobian with
  respect to the carry before it is `jax.jacfwd` of `cell.apply`. A carry with
  several leaves (an LSTM's `(h, c)`, a stack's layers) is one vector, leaf by
  leaf; complex leaves contribute their real and imaginary parts.

  Args:
    cell: any `Cell`.
    params: the cell's params.
    xs: `[T, *batch, I]`, time first, as in `rnnjax.unroll` (no padding: run each
      sequence's valid steps).
    carry: the initial carry, or None for `cell.initial_carry`.
    return_jacobians: also return the Jacobians themselves.

  Returns:
    A `JacobianSpectrum`.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> cell = rnnjax.lstm(8)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> xs = jax.random.normal(jax.random.key(1), (20, 3))
    >>> spec = rnnjax.diagnostics.jacobian_spectrum(cell, params, xs)
    >>> spec.singular_values.shape, spec.lyapunov.shape   # S = 16: h and c
    ((20, 16), (16,))
  """
  fn = "rnnjax.diagnostics.jacobian_spectrum"
  in_size = cell.input_size(params) if cell.input_size is not None else None
  num_steps, batch_shape = checks.sequence_input(fn, xs, in_size)
  if carry is None:
    carry = cell.initial_carry(params, batch_shape)
  layout = cv.layout_of(jax.eval_shape(lambda p: cell.initial_carry(p, batch_shape), params),
                   len(batch_shape))
  size = sum(layout.sizes)
  h0 = cv.to_vector(layout, carry, batch_shape).reshape(-1, size)
  x_flat = xs.reshape(num_steps, -1, xs.shape[-1])
  single = cv.layout_of(jax.eval_shape(lambda p: cell.initial_carry(p, ()), params), 0)

  def step_vec(h, x):
    new, _ = cell.apply(params, cv.from_vector(single, h), x)
    return cv.to_vector(single, new, ())

  def one_sequence(h0, xs1):
    def body(state, x):
      h, q, log_r = state
      jac = jax.jacfwd(step_vec)(h, x)
      q, r = jnp.linalg.qr(jac @ q)
      # Keep R's diagonal positive so that Q is continuous from step to step.
      signs = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(r.dtype)
      q = q * signs
      log_r = log_r + jnp.log(jnp.abs(jnp.diagonal(r)))
      sv = jnp.linalg.svd(jac, compute_uv=False)
      return (step_vec(h, x), q, log_r), (sv, jac if return_jacobians else None)

    eye = jnp.eye(size, dtype=h0.dtype)
    (_, _, log_r), (sv, jacs) = jax.lax.scan(body, (h0, eye, jnp.zeros(size, h0.dtype)), xs1)
    return sv, -jnp.sort(-log_r / num_steps), jacs

  sv, lyap, jacs = jax.vmap(one_sequence, in_axes=(0, 1), out_axes=(1, 0, 1))(h0, x_flat)
  sv = sv.reshape(num_steps, *batch_shape, size)
  lyap = lyap.reshape(*batch_shape, size)
  if jacs is not None:
    jacs = jacs.reshape(num_steps, *batch_shape, size, size)
  return JacobianSpectrum(sv, lyap, jacs)


# ----------------------------------------------------------------------------- summary


def summary(norms: jax.Array) -> dict[str, float]:
  """A few numbers that describe a gradient-norm curve `[T, ...]` (mean over batch axes).

  `last` is the latest step with a non-zero norm (with a loss on the final
  outputs, the final step passes nothing on, so its norm is 0);
  `log10_first_over_last` is how many decades the gradient loses from there back
  to the first step (very negative: vanishing; positive: exploding).

  Args:
    norms: `[T, ...]`, e.g. `GradientNorms.norms`.

  Returns:
    `{"first": ..., "last": ..., "log10_first_over_last": ...}`, Python floats.
  """
  curve = np.asarray(jnp.mean(norms.reshape(norms.shape[0], -1), axis=1), np.float64)
  nonzero = np.flatnonzero(curve > 0)
  last = float(curve[nonzero[-1]]) if nonzero.size else 0.0
  return {"first": float(curve[0]), "last": last,
          "log10_first_over_last": float(np.log10(max(curve[0], 1e-300) / max(last, 1e-300)))}
