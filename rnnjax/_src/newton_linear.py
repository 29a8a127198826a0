"""The linear algebra of the Newton engine: carries as vectors, linearised steps, linear scans.

The Newton engine (`newton.py`) sees a cell's carry as one real vector of `S`
features per batch element (`CarryLayout`), and one step of the sequence as a
map `F_t: h_{t-1} -> h_t` that already holds `unroll`'s options:

- a valid step computes `f(h_{t-1}, x_t)` (the cell's new carry);
- a reset step computes `f(h̄, x_t)` from the reset carry `h̄`, whatever came before;
- a padded step keeps the carry, `F_t(h) = h`.

Linearised around a guess, `F_t(h) ≈ A_t h + b_t` with `A_t` the Jacobian of a valid
step, `0` at a reset and `I` at a padded step, and `b_t = F_t(h̄_{t-1}) - A_t h̄_{t-1}`.
All `h_t` of the linear recurrence come out of one `jax.lax.associative_scan`
(`deer_scan`), or of the parallel Kalman filter of ELK (`kalman_scan`), which adds
a trust region around the guess. Jacobians are `[T, *batch, S, S]` ("full") or their
diagonals `[T, *batch, S]` ("diagonal"); every function here takes both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._src.carry_vector import CarryLayout

# A diagonal Jacobian pushes `k` one-hot tangents through the step at once, `[k, T, *batch, S]`
# numbers (and the step's intermediates for each): at most 16, and at most this many numbers.
_DIAGONAL_CHUNK = 16
_DIAGONAL_NUMBERS = 2**27


def expand(mask: jax.Array, like: jax.Array) -> jax.Array:
  """`mask: [T, *batch]` with trailing axes to broadcast against `like`."""
  return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


# ----------------------------------------------------------------------------- Jacobians


def colors_of(layout: CarryLayout, heads: int | None) -> tuple[int, ...] | None:
  """A colouring of the carry vector's features for a cell with `FastPaths.jacobian_heads`.

  Features of one colour never feed each other in the step's Jacobian, so one
  Jacobian-vector product with every feature of a colour set to 1 gives the diagonal
  entries of all of them. With `heads` heads of `D` units, feature `(leaf l, unit u)`
  takes colour `l * D + u mod D`: `leaves * D` colours instead of `S` one-hot tangents.
  None where the structure does not apply (no declaration, complex or non-`[H]` leaves).
  """
  if heads is None or any(jnp.issubdtype(d, jnp.complexfloating) for d in layout.dtypes):
    return None
  widths = {shape for shape in layout.shapes}
  if len(widths) != 1 or len(next(iter(widths))) != 1:
    return None
  (width,) = next(iter(widths))
  if width % heads:
    return None
  per_head = width // heads
  return tuple(leaf * per_head + unit % per_head
               for leaf in range(len(layout.shapes)) for unit in range(width))


def linearise(fn, h: jax.Array, full: bool,
              colors: tuple[int, ...] | None = None) -> tuple[jax.Array, jax.Array]:
  """`(fn(h), J)` for `fn: [T, *batch, S] -> [T, *batch, S]`, acting on each `(t, b)` alone.

  `J` is `[T, *batch, S, S]` (`J[..., i, j] = d out_i / d h_j`) if `full`, else its
  diagonal `[T, *batch, S]`. Both cost `S` Jacobian-vector products of the step,
  all `(t, b)` at once (a one-hot tangent per state feature); the diagonal pushes
  them through a few at a time (`_DIAGONAL_CHUNK`, fewer for long sequences) and
  keeps one entry of each, so it never holds more than that many columns.
  """
  out, jvp = jax.linearize(fn, h)
  size = h.shape[-1]
  if colors is not None and not full:  # One product per colour (see `colors_of`).
    masks = jnp.asarray(np.equal.outer(np.arange(max(colors) + 1), np.asarray(colors)),
                        h.dtype)  # [colours, S]

    def add(c, diag):
      return diag + jvp(jnp.broadcast_to(masks[c], h.shape)) * masks[c]
    return out, jax.lax.fori_loop(0, masks.shape[0], add, jnp.zeros_like(h))
  eye = jnp.eye(size, dtype=h.dtype)
  if full:
    cols = jax.vmap(lambda e: jvp(jnp.broadcast_to(e, h.shape)))(eye)  # [S_in, ..., S_out]
    return out, jnp.moveaxis(cols, 0, -1)

  def entry(s):
    return jnp.take(jvp(jnp.broadcast_to(eye[s], h.shape)), s, axis=-1)

  chunk = max(1, min(size, _DIAGONAL_CHUNK, _DIAGONAL_NUMBERS // h.size))
  diag = jax.lax.map(entry, jnp.arange(size), batch_size=chunk)
  return out, jnp.moveaxis(diag, 0, -1)


def masked_jacobian(jac: jax.Array, valid: jax.Array, keep: jax.Array, full: bool) -> jax.Array:
  """`A_t = dF_t/dh_{t-1}`: the step's Jacobian where it runs on, 0 at a reset, I when padded."""
  one = jnp.eye(jac.shape[-1], dtype=jac.dtype) if full else jnp.ones((), jac.dtype)
  rest = jnp.where(expand(valid, jac), jnp.zeros((), jac.dtype), one)
  return jnp.where(expand(keep, jac), jac, rest)


def matvec(a: jax.Array, v: jax.Array, full: bool) -> jax.Array:
  return jnp.einsum("...ij,...j->...i", a, v) if full else a * v


def transpose(a: jax.Array, full: bool) -> jax.Array:
  return jnp.swapaxes(a, -1, -2) if full else a


# ----------------------------------------------------------------------------- linear scans


def deer_scan(a: jax.Array, b: jax.Array, full: bool) -> jax.Array:
  """All `h_t = a_t h_{t-1} + b_t`, `[T, *batch, S]`, with `a_0 = 0` (the first step holds `h_0`).

  Pairs compose as `(a1, b1) • (a2, b2) = (a2 a1, a2 b1 + b2)`: depth `log T`,
  `O(S^3)` work per combination with full matrices, `O(S)` with diagonals.
  """
  def combine(left, right):
    a1, b1 = left
    a2, b2 = right
    return (a2 @ a1 if full else a2 * a1), matvec(a2, b1, full) + b2

  return jax.lax.associative_scan(combine, (a, b), axis=0)[1]


def kalman_scan(a: jax.Array, b: jax.Array, guess: jax.Array, damping: float,
                full: bool) -> jax.Array:
  """ELK's damped step: the filtered means of `h_t = a_t h_{t-1} + b_t + q_t`, seen as `guess_t`.

  The observations are `guess_t = h_t + r_t` (`q_t`, `r_t` Gaussian noises).

  Gonzalez et al. (2024) take the Levenberg-Marquardt step of the whole trajectory,
  `min Σ_t |h_t - a_t h_{t-1} - b_t|^2 + damping Σ_t |h_t - guess_t|^2`: a linear
  Gaussian model with unit dynamics noise `q_t` whose observations are the current
  guess with variance `1/damping`. `damping = 0` is `deer_scan`; a large one keeps
  each iterate near the last. At the true trajectory (a fixed point of Newton's
  method) both terms vanish, so the damping never moves the answer, only the path.

  As in ELK's code, the step takes the filtered means (the last one is also the
  smoothed one). The filter runs as the parallel Kalman filter of Särkkä & García-Fernández
  (2021): elements `(A, b, C, J, η)` per step, with gain `κ = damping / (1 + damping)`,
  composed associatively (`C` and `J` are covariances and information matrices;
  with diagonal Jacobians every matrix is diagonal and each feature a scalar filter).
  """
  kappa = damping / (1.0 + damping)
  cov = (1 - kappa) * (jnp.eye(a.shape[-1], dtype=a.dtype) if full else jnp.ones((), a.dtype))
  a_t = transpose(a, full)
  elems = ((1 - kappa) * a, (1 - kappa) * b + kappa * guess, jnp.broadcast_to(cov, a.shape),
           kappa * (a_t @ a if full else a * a), kappa * matvec(a_t, guess - b, full))

  def combine(left, right):
    a1, b1, c1, j1, e1 = left
    a2, b2, c2, j2, e2 = right
    if full:
      eye = jnp.eye(a1.shape[-1], dtype=a1.dtype)
      # One solve with `I + C1 J2` for every term; `(I + J2 C1)^-1 = ((I + C1 J2)^-1)^T`
      # since C and J are symmetric.
      rhs = jnp.concatenate([a1, (b1 + matvec(c1, e2, True))[..., None],
                             c1 @ transpose(a2, True)], axis=-1)
      sol = jnp.linalg.solve(eye + c1 @ j2, rhs)
      p, q, r = sol[..., :a1.shape[-1]], sol[..., a1.shape[-1]], sol[..., a1.shape[-1] + 1:]
      p_t = transpose(p, True)
      return (a2 @ p, matvec(a2, q, True) + b2, a2 @ r + c2,
              p_t @ j2 @ a1 + j1, matvec(p_t, e2 - matvec(j2, b1, True), True) + e1)
    inv = 1 / (1 + c1 * j2)
    p = inv * a1
    return (a2 * p, a2 * inv * (b1 + c1 * e2) + b2, a2 * inv * c1 * a2 + c2,
            p * j2 * a1 + j1, p * (e2 - j2 * b1) + e1)

  return jax.lax.associative_scan(combine, elems, axis=0)[1]


def reverse_scan(a: jax.Array, g: jax.Array, full: bool) -> jax.Array:
  """All `λ_t = a_{t+1}^T λ_{t+1} + g_t` (`λ_{T-1} = g_{T-1}`), the adjoint of `deer_scan`'s `a`."""
  m = transpose(jnp.concatenate([a[1:], jnp.zeros_like(a[:1])]), full)
  return deer_scan(m[::-1], g[::-1], full)[::-1]
