"""The Newton engine: any cell over time by Newton's method on the whole trajectory.

DEER (Lim et al., ICLR 2024) solves `h_t = f(h_{t-1}, x_t)` for all `t` at once: guess
every carry, linearise each step around the guess,
`h_t ≈ J_t h_{t-1} + (f(ĥ_{t-1}, x_t) - J_t ĥ_{t-1})`, solve that linear recurrence
for all `t` with a parallel scan (`jax.lax.associative_scan`, depth `log T`), and
repeat. Each iteration makes at least one more step exact, so it converges in at most
`T` iterations, and for contractive cells in far fewer. quasi-DEER (Gonzalez et al.,
NeurIPS 2024) keeps only the diagonal of `J_t` (`O(S)` memory and scan work instead
of `O(S^2)` and `O(S^3)` per step), and ELK adds a trust region (`damping`) that keeps
the iterates from diverging. The linear algebra lives in `newton_linear.py`, the
backward pass (implicit differentiation, not backpropagation through the iterations)
in `newton_adjoint.py`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax._src import carry_vector as cv
from rnnjax._src import cell as cell_lib
from rnnjax._src import checks, engines, newton_adjoint
from rnnjax._src import newton_linear as lin
from rnnjax._src import unroll as unroll_lib

_FN = "rnnjax.newton_unroll"
JACOBIANS = ("auto", "full", "diagonal")
FALLBACKS = ("sequential", "none")
# jacobian="auto": full Jacobians while S <= AUTO_FULL_MAX_SIZE and they hold at most
# AUTO_FULL_MAX_NUMBERS numbers (`T * batch * S^2`: 512 MiB in float32; the iterations' peak
# is a few times that); diagonals otherwise. Measured on a 2-core CPU (GRU, T = 1000 and
# 10,000, batch 4): full Newton converges in 4-5 iterations at every S, the diagonal in
# 14-17; an iteration costs about the same for both up to S = 128 (the `S` Jacobian-vector
# products dominate, not the scan's `S^3`), so full is 1.5x-3x faster where it fits. Its
# cost is memory; DEER (Lim et al. 2024) reports its last speedup (1.2x-1.5x) at S = 64.
AUTO_FULL_MAX_SIZE = 64
AUTO_FULL_MAX_NUMBERS = 2**27
# The default `tol`, per the carry's (vector's) dtype. A converged trajectory's residual
# `max |h_t - f(h_{t-1}, x_t)|` stops falling at a few roundings of one step, `~4 eps`
# (measured: 2e-7 to 5e-7 in float32 for carries within [-1, 1], LSTMs, GRUs and Elman
# RNNs at T = 1000); these are 4x to 10x above that (float64's much more, where 1e-11 is
# already far below any useful accuracy).
_DEFAULT_TOL = {"float64": 1e-11, "float32": 2e-6, "float16": 4e-3, "bfloat16": 3e-2}
# The default `max_iters`: at most `T`, Newton's worst case (each iteration makes at least
# one more step exact), and no more than this: a contractive cell converges in far fewer
# (`O((log T)^2)`, Gonzalez et al. 2025), and beyond that the sequential scan is cheaper.
DEFAULT_MAX_ITERS = 64


def _checked(jacobian: Any, damping: Any, tol: Any, max_iters: Any,
             fallback: Any) -> tuple[str, float, float | None, int | None, str]:
  fn = "rnnjax.Newton"
  checks.choice(fn, "jacobian", jacobian, JACOBIANS)
  damping = checks.real_number(fn, "damping", damping)
  if damping < 0:
    raise ValueError(f"{fn}: `damping` must be >= 0 (0: plain Newton), got damping={damping}.")
  if tol is not None:
    tol = checks.real_number(fn, "tol", tol)
    if tol <= 0:
      raise ValueError(f"{fn}: `tol` must be > 0 (or None for the dtype's default), got "
                       f"tol={tol}.")
  if max_iters is not None:
    max_iters = checks.positive_int(fn, "max_iters", max_iters)
  checks.choice(fn, "fallback", fallback, FALLBACKS)
  return jacobian, damping, tol, max_iters, fallback


class _NewtonFields(NamedTuple):
  jacobian: str = "auto"
  damping: float = 0.0
  tol: float | None = None
  max_iters: int | None = None
  fallback: str = "sequential"


class Newton(_NewtonFields):
  """The options of the Newton engine (`newton_unroll`); hashable, checked when built.

  Attributes:
    jacobian: `"full"`: DEER, the `S x S` Jacobian of each step (`S` the carry's size):
      quadratic convergence, `T * batch * S^2` memory, `O(S^3)` scan work per step.
      `"diagonal"`: quasi-DEER, its diagonal only: `O(S)` memory and scan work, linear
      convergence (in one iteration for a cell whose Jacobian is diagonal). Both
      evaluate the Jacobian with `S` Jacobian-vector products of the step per
      iteration, all steps at once. `"auto"`: full while `S <= 64` and the Jacobians
      (`T * batch * S^2` numbers) stay under `2^27`, diagonal otherwise.
    damping: `>= 0`, ELK's trust region (Gonzalez et al. 2024): each iteration is the
      Levenberg-Marquardt step that also pays `damping * |h - h_previous|^2`, so
      iterates stay near the last one (each moves about `1 / (1 + damping)` of the way).
      0 is plain Newton (DEER). It keeps iterates finite where Newton's overflow (a
      chaotic cell), at the price of iterations: for a GRU at T = 1000, 1e-3 and 1e-2
      cost 1 to 3 more than Newton's 4, 0.1 four times as many, 1 fifteen times (the
      diagonal's 14 barely change up to 0.01). It changes the path, never the answer.
    tol: the max-abs residual `max_t |h_t - f(h_{t-1}, x_t)|` (over every step, batch
      element and carry feature) at which the trajectory has converged, relative to
      the largest carry value where that exceeds 1 (an LSTM's cell state can). None:
      2e-6 for float32 carries, 1e-11 for float64 (several times the residual that
      rounding leaves). Outputs are then within about `tol / (1 - ρ)` of the exact ones
      (`ρ` the cell's contraction per step).
    max_iters: the most iterations; None: `min(T, 64)`. Full Newton reaches the exact
      trajectory in at most `T`.
    fallback: on non-convergence (the tolerance not reached in `max_iters`, or a
      NaN/inf iterate): `"sequential"` runs the sequential engine instead (inside
      `jit`, by `lax.cond`), so the answer is `unroll`'s; `"none"` returns the last
      iterate, flagged in `NewtonInfo.converged`.
  """

  __slots__ = ()
  ENGINE = "newton"  # `engine=Newton(...)` runs this engine (`engines.check_name`).

  def __new__(cls, jacobian: str = "auto", damping: float = 0.0, tol: float | None = None,
              max_iters: int | None = None, fallback: str = "sequential") -> Newton:
    return super().__new__(cls, *_checked(jacobian, damping, tol, max_iters, fallback))


DEFAULT_OPTIONS = Newton()


class NewtonInfo(NamedTuple):
  """What one `newton_unroll` call did; arrays, valid under `jit`.

  Attributes:
    iterations: the Newton iterations run (linear solves), `int32 []`.
    residual: the final max-abs residual `max_t |h_t - f(h_{t-1}, x_t)|` of the
      Newton iterate (before any fallback), `[]` in the carry's dtype; NaN if the
      iterates blew up.
    converged: whether `residual <= tol * max(1, max |h|)`, `bool []`.
    fell_back: whether the sequential engine ran instead, `bool []`.
  """

  iterations: jax.Array  # shape=(), int32
  residual: jax.Array  # shape=(), the carry's dtype
  converged: jax.Array  # shape=(), bool
  fell_back: jax.Array  # shape=(), bool


class _Plan(NamedTuple):
  full: bool
  colors: tuple[int, ...] | None  # `newton_linear.colors_of`, for diagonal Jacobians
  damping: float
  tol: float
  max_iters: int
  fallback: str


def _plan(options: Any, layout: cv.CarryLayout, num_steps: int, batch_size: int,
          heads: int | None) -> _Plan:
  """`options` checked (also one made by `_replace`), with its defaults resolved.

  `layout` is the carry's, `batch_size` the number of sequences, `heads` the cell's
  `FastPaths.jacobian_heads`. "auto" takes the diagonal where it is the whole Jacobian
  (one leaf, unit by unit: ParaRNN's GRU), which is then exact Newton at one product.
  """
  size, dtype = sum(layout.sizes), layout.dtype
  colors = lin.colors_of(layout, heads)
  if not isinstance(options, Newton):
    raise TypeError(f"{_FN}: `options` must be an rnnjax.Newton (e.g. "
                    f"Newton(jacobian='diagonal')), got {type(options).__name__}.")
  jacobian, damping, tol, max_iters, fallback = _checked(*options)
  numbers = num_steps * batch_size * size * size
  diagonal = colors is not None and len(layout.sizes) == 1 and len(set(colors)) == 1
  full = jacobian == "full" or (jacobian == "auto" and size <= AUTO_FULL_MAX_SIZE
                                and numbers <= AUTO_FULL_MAX_NUMBERS and not diagonal)
  tol = _DEFAULT_TOL.get(jnp.dtype(dtype).name, 1e-5) if tol is None else tol
  max_iters = min(num_steps, DEFAULT_MAX_ITERS) if max_iters is None else max_iters
  return _Plan(full, colors, damping, tol, max_iters, fallback)


def _steps(cell: cell_lib.Cell, layout: cv.CarryLayout):
  """The cell's carry update on vectors: `(step1, step)`, one time step and all `T` at once."""
  def step1(params, h, x):
    new, _ = cell.apply(params, cv.from_vector(layout, h), x)
    return cv.to_vector(layout, new, h.shape[:-1])

  return step1, jax.vmap(step1, in_axes=(None, 0, 0))


def _sequential(step1, params, xs, h0, h_reset, valid, keep) -> jax.Array:
  """All carries by `lax.scan`: the sequential engine's trajectory (`unroll`'s step)."""
  def body(h, inputs):
    x, v, k = inputs
    h_in = jnp.where(lin.expand(v & ~k, h), h_reset, h)
    new = jnp.where(lin.expand(v, h), step1(params, h_in, x), h)
    return new, new

  return jax.lax.scan(body, h0, (xs, valid, keep))[1]


def _forward(step, step1, plan: _Plan, params, xs, h0, h_reset, valid, keep):
  """Newton's iterations from `h0` repeated; `(hs, jac, info)`, `jac` the Jacobians at `hs`."""
  reset = valid & ~keep

  def evaluate(hs):  # F_t(h_{t-1}) for every t, the Jacobians there, and the residual.
    h_prev = jnp.concatenate([h0[None], hs[:-1]])
    h_in = jnp.where(lin.expand(reset, hs), h_reset, h_prev)
    f, jac = lin.linearise(lambda h: step(params, h, xs), h_in, plan.full, plan.colors)
    target = jnp.where(lin.expand(valid, hs), f, h_prev)
    limit = plan.tol * jnp.maximum(jnp.max(jnp.abs(target)), 1)
    return target, jac, jnp.max(jnp.abs(hs - target)), limit

  def body(state):
    i, hs, target, jac, *_ = state
    a = lin.masked_jacobian(jac, valid, keep, plan.full)
    b = target - lin.matvec(a, jnp.concatenate([h0[None], hs[:-1]]), plan.full)
    # The first step starts from h0, known: its pair holds F_1(h0) exactly.
    a, b = a.at[0].set(0), b.at[0].set(target[0])
    if plan.damping:
      hs = lin.kalman_scan(a, b, hs, plan.damping, plan.full)
    else:
      hs = lin.deer_scan(a, b, plan.full)
    return i + 1, hs, *evaluate(hs)

  def cond(state):
    i, *_, res, limit = state  # An inf or NaN iterate stops the iterations, unconverged.
    return (i < plan.max_iters) & (res > limit) & jnp.isfinite(res) & jnp.isfinite(limit)

  hs = jnp.broadcast_to(h0, xs.shape[:1] + h0.shape)
  i, hs, _, jac, res, limit = jax.lax.while_loop(
      cond, body, (jnp.zeros((), jnp.int32), hs, *evaluate(hs)))
  converged = (res <= limit) & jnp.isfinite(limit)
  fell_back = jnp.zeros((), bool)
  if plan.fallback == "sequential":
    hs = jax.lax.cond(converged, lambda: hs,
                      lambda: _sequential(step1, params, xs, h0, h_reset, valid, keep))
    fell_back = ~converged
  return hs, jac, NewtonInfo(i, res, converged, fell_back)


def _trajectory(cell: cell_lib.Cell, layout: cv.CarryLayout, plan: _Plan):
  """`(params, xs, h0, h_reset, valid, keep) -> (hs, info)`, differentiated implicitly."""
  step1, step = _steps(cell, layout)

  @jax.custom_vjp
  def trajectory(params, xs, h0, h_reset, valid, keep):
    hs, _, info = _forward(step, step1, plan, params, xs, h0, h_reset, valid, keep)
    return hs, info

  def fwd(params, xs, h0, h_reset, valid, keep):
    hs, jac, info = _forward(step, step1, plan, params, xs, h0, h_reset, valid, keep)
    return (hs, info), (params, xs, h0, h_reset, valid, keep, hs, jac, info.fell_back)

  def bwd(residuals, cotangents):
    return newton_adjoint.adjoint(step, step1, plan.full, plan.tol, plan.max_iters, residuals,
                                  cotangents[0])

  trajectory.defvjp(fwd, bwd)
  return trajectory


def newton_unroll(cell: cell_lib.Cell, params: Any, xs: jax.Array, carry: Any = None, *,
                  lengths: jax.Array | None = None, resets: jax.Array | None = None,
                  reverse: bool = False, time_major: bool = True, options: Newton = DEFAULT_OPTIONS,
                  return_info: bool = False) -> tuple[Any, ...]:
  """`unroll` by Newton's method on the whole trajectory (DEER, quasi-DEER, ELK); same answers.

  Type signature, as `rnnjax.unroll`::

    newton_unroll :: Cell -> params -> [T, ..., I] -> c -> ([T, ..., O], c)

  Any cell works: the built-in ones, a `stack`, or your own whose carry is a pytree
  of float (or complex) arrays, seen as one vector of `S` numbers per sequence. It
  is equivalent to this loop, with the trajectory `h` found by iterations::

    h = [carry repeated T times]
    for i in range(max_iters):
      if max_t |h_t - f(h_{t-1}, x_t)| <= tol: break
      J_t = d f(h_{t-1}, x_t) / d h_{t-1}                # all t at once
      h = solve h_t = J_t h_{t-1} + f(h_{t-1}, x_t) - J_t h_{t-1}   # associative scan
    else:
      h = unroll's trajectory                            # options.fallback="sequential"
    ys = [cell.apply(params, h_{t-1}, x_t)[1] for all t at once]

  Each iteration makes at least one more step exact (the first `k` are exact after
  `k` iterations), and for a contractive cell (largest Lyapunov exponent < 0, see
  `rnnjax.diagnostics.jacobian_spectrum`) it converges in a few; for a chaotic one
  it does not, and the fallback runs. On a CPU it is slower than `unroll` (it does
  more work, `S` Jacobian-vector products per step and iteration); it pays on an
  accelerator, for long sequences and small states.

  Gradients (reverse mode only) are implicit: at the converged trajectory the
  adjoint is itself a linear recurrence, solved by one reverse scan with the
  Jacobians kept from the forward pass (diagonal Jacobians: scans of the diagonal
  corrected by exact step VJPs, or a sequential scan of them); they equal the
  sequential engine's, also after a fallback, and never backpropagate through the
  iterations. A `stack`'s dropout is not applied (there is no `key`), as in
  `unroll` without one.

  Args:
    cell: a `Cell` (a built-in cell, a `stack`, or your own).
    params: the cell's params, from `cell.init`.
    xs: `[T, ..., I]`, time first, as in `rnnjax.unroll` (`[..., T, I]` with
      `time_major=False`).
    carry: the initial carry, or None for `cell.initial_carry`.
    lengths: `int [...]` valid steps per sequence, or None (as in `rnnjax.unroll`:
      padded steps keep the carry, output zeros and never reach the cell).
    resets: `bool [T, ...]` (`[..., T]` with `time_major=False`), or None (as in
      `rnnjax.unroll`).
    reverse: run each sequence backwards over its valid steps (as in `rnnjax.unroll`).
    time_major: the layout of `xs`, `resets` and `ys`, as in `rnnjax.unroll`.
    options: a `Newton`: the Jacobian kind, damping, tolerance, iteration limit
      and fallback.
    return_info: also return a `NewtonInfo` (iterations, final residual, whether it
      converged and whether it fell back).

  Returns:
    `(ys, final_carry)`, as `unroll`, or `(ys, final_carry, info)` with `return_info`.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> cell = rnnjax.gru(8)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> xs = jax.random.normal(jax.random.key(1), (100, 2, 3))
    >>> ys, carry, info = rnnjax.newton_unroll(cell, params, xs,
    ...                                        options=rnnjax.Newton(jacobian="full"),
    ...                                        return_info=True)
    >>> ys_seq, carry_seq = rnnjax.unroll(cell, params, xs)
    >>> bool(jnp.allclose(ys, ys_seq, atol=1e-5)), bool(info.converged), bool(info.fell_back)
    (True, True, False)
  """
  return_info = checks.boolean(_FN, "return_info", return_info)
  if not checks.boolean(_FN, "time_major", time_major):
    # Checked as given (so messages quote the caller's shapes), then run time-major.
    xs_t, _, _, carry, lengths, resets = unroll_lib.check_sequence(
        _FN, cell, params, xs, carry, lengths, resets, time_major=False)
    out = newton_unroll(cell, params, xs_t, carry, lengths=lengths, resets=resets,
                        reverse=reverse, options=options, return_info=return_info)
    return (unroll_lib.from_time_major(out[0], len(xs.shape) - 2), *out[1:])
  xs, num_steps, batch_shape, carry, lengths, resets = unroll_lib.check_sequence(
      _FN, cell, params, xs, carry, lengths, resets)
  reverse = checks.boolean(_FN, "reverse", reverse)
  layout = cv.layout_of(carry, len(batch_shape))
  plan = _plan(options, layout, num_steps, math.prod(batch_shape),
               getattr(engines.paths_of(cell), "jacobian_heads", None))
  h0 = cv.to_vector(layout, carry, batch_shape)
  h_reset = jnp.zeros_like(h0)
  if resets is not None:
    h_reset = cv.to_vector(layout, cell.initial_carry(params, batch_shape), batch_shape)

  xs, valid, resets, idx = unroll_lib.time_masks(xs, num_steps, batch_shape, lengths, resets,
                                                 reverse)
  xs, resets = unroll_lib.in_processing_order((xs, resets), idx, reverse)
  all_valid = jnp.ones((num_steps, *batch_shape), bool) if valid is None else valid
  keep = all_valid if resets is None else all_valid & ~resets

  hs, info = _trajectory(cell, layout, plan)(params, xs, h0, h_reset, all_valid, keep)
  h_prev = jnp.concatenate([h0[None], hs[:-1]])
  h_in = jnp.where(lin.expand(all_valid & ~keep, hs), h_reset, h_prev)
  _, ys = jax.vmap(lambda h, x: cell.apply(params, cv.from_vector(layout, h), x))(h_in, xs)
  if valid is not None:
    ys = jax.tree_util.tree_map(
        lambda y: jnp.where(lin.expand(valid, y), y, jnp.zeros_like(y)), ys)
  ys = unroll_lib.in_processing_order(ys, idx, reverse)
  final = cv.from_vector(layout, hs[-1])
  return (ys, final, info) if return_info else (ys, final)
