"""The Real-Gated Linear Recurrent Unit of Griffin (De et al. 2024)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks, linear, precision
from rnnjax._src.cells import common
from rnnjax._src.cells.lru import real_number

MAX_SQRT_GRADIENT = 1000.0  # The bound on d sqrt(z)/dz in the normaliser (Griffin's code).


class RGLRUParams(NamedTuple):
  """RG-LRU weights, all in the cell's `param_dtype`."""

  w_in: jax.Array  # [I, H], the input projection x̃ = x @ w_in
  w_a: jax.Array  # [H, H], recurrence gate
  b_a: jax.Array  # [H]
  w_x: jax.Array  # [H, H], input gate
  b_x: jax.Array  # [H]
  a_param: jax.Array  # [H], Λ with a = σ(Λ)


@jax.custom_jvp
def sqrt_bounded_derivative(z: jax.Array) -> jax.Array:
  """`sqrt(z)`, whose derivative `1 / (2 sqrt(z))` is capped at `MAX_SQRT_GRADIENT`."""
  return jnp.sqrt(z)


@sqrt_bounded_derivative.defjvp
def _sqrt_bounded_derivative_jvp(primals, tangents):
  (z,), (dz,) = primals, tangents
  y = jnp.sqrt(z)
  return y, dz / jnp.maximum(2.0 * y, 1.0 / MAX_SQRT_GRADIENT)


def _step_coefficients(params: RGLRUParams, x: jax.Array, c: float, prec: precision.Precision
                       ) -> tuple[jax.Array, jax.Array]:
  """`(a_t, sqrt(1 - a_t²) ⊙ i_t ⊙ x̃_t)` for inputs `x: [..., I]`, each `[..., H]`.

  `x` in `prec.compute`; the products accumulate, and the gates run, in `prec.accum`.
  """
  xt = prec.matmul(x, params.w_in)
  r = jax.nn.sigmoid(prec.affine(xt, params.w_a, params.b_a))
  i = jax.nn.sigmoid(prec.affine(xt, params.w_x, params.b_x))
  log_a = -c * r * jax.nn.softplus(-prec.wide(params.a_param))
  a = jnp.exp(log_a)
  norm = sqrt_bounded_derivative(-jnp.expm1(2.0 * log_a))
  return a, norm * (i * xt)


@cell_lib.factory
def rglru(hidden_size: int, *, c: float = 8.0, a_min: float = 0.9, a_max: float = 0.999,
          dtype: Any = jnp.float32, param_dtype: Any = None) -> cell_lib.Cell:
  r"""The Real-Gated Linear Recurrent Unit (De et al. 2024, "Griffin: Mixing Gated Linear
  Recurrences with Local Attention for Efficient Language Models", arXiv:2402.19427).

  A real diagonal linear recurrence whose decay and input gates depend on the input only::

    x̃_t = x_t @ W_in                            input projection, [I -> H]
    r_t = σ(x̃_t @ W_a + b_a)                    recurrence gate
    i_t = σ(x̃_t @ W_x + b_x)                    input gate
    log a_t = -c · r_t ⊙ softplus(-Λ)            i.e. a_t = σ(Λ)^(c r_t), in (0, 1)
    h_t = a_t ⊙ h_{t-1} + sqrt(1 - a_t²) ⊙ (i_t ⊙ x̃_t)
    y_t = h_t

  `sqrt(1 - a_t²)` is computed as `sqrt(-expm1(2 log a_t))`, accurate when `a_t`
  is near 1. As in Griffin's released code, the derivative of that square root
  is capped at `MAX_SQRT_GRADIENT` = 1000 (it is `1 / (2 sqrt(1 - a_t²))`, which
  grows without bound as `r_t -> 0`); values are exact, and gradients are exact
  wherever `1 - a_t² > 2.5e-7`. The step is linear in `h`, so the cell also
  declares its recurrence `h_t = a_t * h_{t-1} + b_t` for `rnnjax.parallel_unroll`.

  Initialisation: `Λ` such that `a^c = σ(Λ)^c` (the decay at `r_t = 1`) is
  uniform in `[a_min, a_max]` (the paper: 0.9 to 0.999); `W_in, W_a, W_x`
  LeCun normal (variance `1 / fan_in`); `b_a, b_x` zero.

  Differences from Griffin, which uses the RG-LRU inside its recurrent block:

  * `W_in` belongs to the cell here, so the cell maps `I -> H` on its own; in
    Griffin `x̃` is the output of the block's preceding linear layer (followed by
    a short temporal convolution, not included here). Drop-in equivalent: a
    Griffin branch `Linear -> RG-LRU` is this cell.
  * The gate matrices `W_a, W_x` are dense `[H, H]`; Griffin makes them
    block-diagonal (one block per head) to save parameters and compute.
  * Griffin's code, at a segment boundary, sets `h_t = i_t ⊙ x̃_t` (no
    normaliser); here a reset (`rnnjax.unroll(..., resets=...)`) zeroes the carry
    and the step is the usual one, `sqrt(1 - a_t²) ⊙ i_t ⊙ x̃_t`.
  * The paper's text (followed here) makes `a^c` uniform in `[0.9, 0.999]`;
    Griffin's released code draws `σ(Λ)` itself on a ring of radii `[0.9, 0.999]`.

  Args:
    hidden_size: `H`, the size of the state and of the output.
    c: the positive constant scaling the recurrence gate's exponent (8 in Griffin).
    a_min: the smallest initial `a^c`, in `(0, a_max)`.
    a_max: the largest initial `a^c`, in `(a_min, 1)`.
    dtype: the compute dtype: inputs of any floating dtype are cast to it, the matrix
      products take their operands in it and accumulate in float32 (or wider), and
      the outputs `y` have it. `jnp.bfloat16` for mixed precision.
    param_dtype: the dtype of the params and of the carry. Default: float32, or
      float64 with `dtype=jnp.float64`.

  Returns:
    A `Cell` with `RGLRUParams` and carry `HiddenState(h=[..., H])`.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> cell = rnnjax.rglru(8)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> carry, y = cell.apply(params, cell.initial_carry(params, (5,)), jnp.ones((5, 3)))
    >>> carry.h.shape, y.shape
    ((5, 8), (5, 8))
  """
  fn = "rnnjax.rglru"
  hidden_size = common.factory_sizes(fn, hidden_size)
  c = real_number(fn, "c", c)
  if c <= 0.0:
    raise ValueError(f"{fn}: `c` must be positive, got c={c!r}.")
  a_min = real_number(fn, "a_min", a_min)
  a_max = real_number(fn, "a_max", a_max)
  if not 0.0 < a_min < a_max < 1.0:
    raise ValueError(
        f"{fn}: the initial decays must satisfy 0 < a_min < a_max < 1, got a_min={a_min!r} "
        f"and a_max={a_max!r}.")
  prec = common.precision(fn, dtype, param_dtype)
  kernel_init = cell_lib.default_kernel_init()

  def init(key: jax.Array, input_size: int) -> RGLRUParams:
    checks.key(f"{fn}.init", "key", key)
    size = checks.positive_int(f"{fn}.init", "input_size", input_size)
    k_in, k_a, k_x, k_lambda = jax.random.split(key, 4)
    wide = precision.at_least_float32(prec.param)
    u = jax.random.uniform(k_lambda, (hidden_size,), wide)
    # a^c = a_min + u (a_max - a_min); Λ = logit(a) = log a - log(1 - a), log a = log(a^c) / c.
    log_a = jnp.log(a_min + u * (a_max - a_min)) / c
    a_param = log_a - jnp.log(-jnp.expm1(log_a))
    return RGLRUParams(
        w_in=cell_lib.draw(kernel_init, k_in, (size, hidden_size), prec.param),
        w_a=cell_lib.draw(kernel_init, k_a, (hidden_size, hidden_size), prec.param),
        b_a=jnp.zeros((hidden_size,), prec.param),
        w_x=cell_lib.draw(kernel_init, k_x, (hidden_size, hidden_size), prec.param),
        b_x=jnp.zeros((hidden_size,), prec.param),  # its own buffer: train steps donate params
        a_param=a_param.astype(prec.param))

  def initial_carry(params: RGLRUParams, batch_shape: tuple[int, ...] = ()
                    ) -> common.HiddenState:
    batch_shape = common.check_initial_carry(fn, params, RGLRUParams, batch_shape)
    return common.HiddenState(h=cell_lib.zeros(
        tuple(batch_shape), params.a_param.shape[0], params.a_param.dtype))

  def apply(params: RGLRUParams, carry: common.HiddenState, x: jax.Array, *,
            key: jax.Array | None = None) -> tuple[common.HiddenState, jax.Array]:
    del key
    x = common.check_apply(fn, params, RGLRUParams, carry, x, input_size, initial_carry, prec)
    a, b = _step_coefficients(params, x, c, prec)
    h = a * prec.wide(carry.h) + b
    return common.HiddenState(h=h.astype(carry.h.dtype)), prec.output(h)

  def coefficients(params: RGLRUParams, xs: jax.Array) -> tuple[jax.Array, jax.Array]:
    checks.sequence_input(f"{fn} (coefficients)", xs, params.w_in.shape[0])
    xs = prec.input(f"{fn} (coefficients)", "xs", xs)
    return _step_coefficients(params, xs, c, prec)  # In `prec.accum`, as the step.

  def input_size(params: RGLRUParams) -> int:
    common.check_params(fn, params, RGLRUParams)
    return params.w_in.shape[0]

  cell = cell_lib.Cell(init, initial_carry, apply, input_size=input_size)
  return linear.with_recurrence(cell, linear.LinearRecurrence(coefficients, None))

