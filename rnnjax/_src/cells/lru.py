"""The linear recurrent unit (Orvieto et al. 2023): a complex diagonal linear recurrence."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks, linear, precision
from rnnjax._src.cells import common


class LRUParams(NamedTuple):
  """LRU weights, all real arrays in the cell's `param_dtype`.

  The matrices are stored for right multiplication, `u @ b_re` (rnnjax's
  `[in, out]` layout); the paper's code stores `B: [N, I]`, `C: [O, N]` and
  computes `B @ u`, so `b_re = B_re.T`, `c_re = C_re.T`, and so on.
  """

  nu_log: jax.Array  # [N], log ν with |λ| = exp(-ν)
  theta_log: jax.Array  # [N], log θ with arg λ = θ
  gamma_log: jax.Array  # [N], log γ, the input normalisation
  b_re: jax.Array  # [I, N]
  b_im: jax.Array  # [I, N]
  c_re: jax.Array  # [N, O]
  c_im: jax.Array  # [N, O]
  d: jax.Array  # [I] when O == I (the paper's D ⊙ u); [I, O] otherwise (u @ d)


real_number = checks.real_number  # Kept under its old name for rglru.


def _wide(dtype: Any) -> Any:
  """A real dtype widened to float32 (float64 stays): the LRU's init and arithmetic."""
  return precision.at_least_float32(dtype)


def _complex(dtype: Any) -> Any:
  """The complex dtype of a real one: complex128 for float64, else complex64.

  The state is `_complex(param dtype)`; the arithmetic runs in `_complex(prec.accum)`.
  """
  return jnp.complex128 if jnp.dtype(dtype) == jnp.float64 else jnp.complex64


def diagonal(params: LRUParams, dtype: Any = None) -> jax.Array:
  """`λ = exp(-exp(ν_log) + i·exp(θ_log))`, complex `[N]`, computed in the real `dtype`.

  `dtype` defaults to the params' dtype widened to float32 (complex64, or complex128 in
  float64).
  """
  rdt = _wide(params.nu_log.dtype if dtype is None else dtype)
  magnitude = jnp.exp(-jnp.exp(params.nu_log.astype(rdt)))
  phase = jnp.exp(params.theta_log.astype(rdt))
  return jax.lax.complex(magnitude * jnp.cos(phase), magnitude * jnp.sin(phase))


def _drive(params: LRUParams, x: jax.Array, prec: precision.Precision) -> jax.Array:
  """`γ ⊙ (B u)`, complex `[..., N]` in `_complex(prec.accum)`, from `x` in `prec.compute`."""
  gamma = jnp.exp(params.gamma_log.astype(prec.accum))
  return jax.lax.complex(prec.matmul(x, params.b_re) * gamma, prec.matmul(x, params.b_im) * gamma)


def _readout(params: LRUParams, h: jax.Array, x: jax.Array,
             prec: precision.Precision) -> jax.Array:
  """`Re(C h) + D u`, real `[..., O]` in `prec.compute`, from `x` in `prec.compute`."""
  h = h.astype(_complex(prec.accum))
  y = prec.matmul(jnp.real(h), params.c_re) - prec.matmul(jnp.imag(h), params.c_im)
  d = params.d
  y = y + (x.astype(prec.accum) * d.astype(prec.accum) if d.ndim == 1 else prec.matmul(x, d))
  return prec.output(y)


def _ring_nu(u1: jax.Array, r_min: float, r_max: float) -> jax.Array:
  """`ν = -½ log(u1 (r_max² - r_min²) + r_min²)`, so that `|λ| = exp(-ν)` is uniform on the ring.

  `r² = r_min² + u1 Δ` with `Δ = r_max² - r_min²`. Near `r = 1` the logarithm is
  taken as `log1p(-s)` of `s = 1 - r² = (1 - r_max²) + (1 - u1) Δ`, a sum of
  non-negative terms, so that float32 rounding of `r²` to 1 cannot give `ν = 0`
  (and `ν_log = -inf`, `γ = 0`).
  """
  span = r_max**2 - r_min**2
  r2 = r_min**2 + u1 * span
  s = (1.0 - r_max**2) + (1.0 - u1) * span
  return jnp.where(r2 < 0.5, -0.5 * jnp.log(r2), -0.5 * jnp.log1p(-s))


@cell_lib.factory
def lru(state_size: int, *, output_size: int | None = None, r_min: float = 0.0,
        r_max: float = 1.0, max_phase: float = 2 * math.pi,
        dtype: Any = jnp.float32, param_dtype: Any = None) -> cell_lib.Cell:
  r"""The linear recurrent unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks
  for Long Sequences", arXiv:2303.06349).

  A complex diagonal linear recurrence with a real linear readout::

    λ   = exp(-exp(ν_log) + i·exp(θ_log))          (exponential parameterisation)
    γ   = exp(γ_log)                                (normalisation; sqrt(1 - |λ|²) at init)
    h_t = λ ⊙ h_{t-1} + γ ⊙ (B u_t)                 B = B_re + i·B_im: [I -> N], complex
    y_t = Re(C h_t) + D ⊙ u_t                       C = C_re + i·C_im: [N -> O]

  `h` is complex (`N = state_size`); `y` is real. The step is linear in `h`, so
  the cell also declares its recurrence `h_t = a_t * h_{t-1} + b_t` with
  `a_t = λ` and `b_t = γ ⊙ (B u_t)`, which lets `rnnjax.parallel_unroll` run it
  as a parallel scan; in `rnnjax.unroll` it runs step by step like any cell.

  Initialisation, as in the paper and its code (Appendix A):

  * `λ` uniform on the ring `r_min <= |λ| <= r_max` with phase in `[0, max_phase]`:
    with `u1, u2 ~ U(0, 1)`, `ν = -½ log(u1 (r_max² - r_min²) + r_min²)`,
    `θ = max_phase · u2`, stored as `ν_log = log ν`, `θ_log = log θ`.
  * `γ_log = log sqrt(1 - |λ|²)`, computed as `½ log(-expm1(-2ν))` (the same
    value, accurate when `|λ|` is near 1). `γ` is then learned on its own, as in
    the paper's code, so after training it need not equal `sqrt(1 - |λ|²)`.
  * `B_re, B_im ~ N(0, 1/(2I))` entrywise (so `B u` has unit variance for unit `u`),
    `C_re, C_im ~ N(0, 1/N)`, `D ~ N(0, 1)`.

  The paper's `D ⊙ u` needs `O == I`, which is the default (`output_size=None`).
  With any other `output_size`, `D` is instead a dense `[I, O]` skip matrix
  (`y_t = Re(C h_t) + u_t @ D`), drawn `N(0, 1/I)` so that each output has the
  same variance as with the diagonal `D`; this is an rnnjax extension.

  Numerical details: the uniforms are drawn from `[eps, 1)` rather than `[0, 1)`
  (`eps` the machine epsilon of the draw), so `ν_log` and `θ_log` are finite;
  `ν` is computed without cancellation near `|λ| = 1` (float32 rounding of
  `|λ|²` to 1 would give `ν_log = -inf` and `γ = 0`).

  Precision (`cells.md#mixed-precision`): the params are real arrays in
  `param_dtype`; the complex carry follows them (complex64, complex128 for
  float64 params). The matrix products `B u`, `C h` and `u @ D` take their
  operands in `dtype` and accumulate in float32 (or wider); `λ`, `γ` and the
  state update run in complex64 (complex128 when computing in float64); the
  output has `dtype`.
  The paper's LRU layer is used inside a block (normalisation, a GLU/MLP and a
  residual connection); this cell is the recurrence alone, as its `Cell`.

  Args:
    state_size: `N`, the number of complex state dimensions.
    output_size: `O`; `None` (the default, the paper) means `O = I`, the input size.
    r_min: smallest initial `|λ|`, in `[0, r_max)`.
    r_max: largest initial `|λ|`, in `(r_min, 1]`.
    max_phase: largest initial phase `arg λ`, positive (`2π`: the whole circle;
      the paper finds small phases, such as `π/10`, help on its long-range tasks).
    dtype: the compute dtype: inputs of any floating dtype are cast to it, the matrix
      products take their operands in it and accumulate in float32 (or wider), and
      the outputs `y` have it. `jnp.bfloat16` for mixed precision.
    param_dtype: the dtype of the (real) params, float32 by default (float64 with
      `dtype=jnp.float64`); the complex carry is complex128 for float64 params,
      complex64 otherwise.

  Returns:
    A `Cell` with `LRUParams` and carry `HiddenState(h=[..., N])`, `h` complex.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> cell = rnnjax.lru(8, r_min=0.9, r_max=0.999)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> carry, y = cell.apply(params, cell.initial_carry(params, (5,)), jnp.ones((5, 3)))
    >>> carry.h.shape, carry.h.dtype, y.shape, y.dtype
    ((5, 8), dtype('complex64'), (5, 3), dtype('float32'))
  """
  fn = "rnnjax.lru"
  state_size = checks.positive_int(fn, "state_size", state_size)
  if output_size is not None:
    output_size = checks.positive_int(fn, "output_size", output_size)
  r_min = real_number(fn, "r_min", r_min)
  r_max = real_number(fn, "r_max", r_max)
  if not 0.0 <= r_min < r_max <= 1.0:
    raise ValueError(
        f"{fn}: the initial ring must satisfy 0 <= r_min < r_max <= 1, got r_min={r_min!r} "
        f"and r_max={r_max!r}.")
  max_phase = real_number(fn, "max_phase", max_phase)
  if max_phase <= 0.0:
    raise ValueError(f"{fn}: `max_phase` must be positive, got max_phase={max_phase!r}.")
  prec = common.precision(fn, dtype, param_dtype)

  def init(key: jax.Array, input_size: int) -> LRUParams:
    checks.key(f"{fn}.init", "key", key)
    size = checks.positive_int(f"{fn}.init", "input_size", input_size)
    out = size if output_size is None else output_size
    rdt = _wide(prec.param)
    eps = float(jnp.finfo(rdt).eps)
    k_nu, k_theta, k_bre, k_bim, k_cre, k_cim, k_d = jax.random.split(key, 7)
    u1 = jax.random.uniform(k_nu, (state_size,), rdt, minval=eps)
    u2 = jax.random.uniform(k_theta, (state_size,), rdt, minval=eps)
    nu = _ring_nu(u1, r_min, r_max)
    normal = lambda k, shape, std: jax.random.normal(k, shape, rdt) * std
    b_std, c_std = 1.0 / math.sqrt(2 * size), 1.0 / math.sqrt(state_size)
    d = (normal(k_d, (size,), 1.0) if out == size
         else normal(k_d, (size, out), 1.0 / math.sqrt(size)))
    params = LRUParams(
        nu_log=jnp.log(nu),
        theta_log=math.log(max_phase) + jnp.log(u2),
        gamma_log=0.5 * jnp.log(-jnp.expm1(-2.0 * nu)),
        b_re=normal(k_bre, (size, state_size), b_std),
        b_im=normal(k_bim, (size, state_size), b_std),
        c_re=normal(k_cre, (state_size, out), c_std),
        c_im=normal(k_cim, (state_size, out), c_std),
        d=d)
    return LRUParams(*(p.astype(prec.param) for p in params))

  def initial_carry(params: LRUParams, batch_shape: tuple[int, ...] = ()) -> common.HiddenState:
    batch_shape = common.check_initial_carry(fn, params, LRUParams, batch_shape)
    return common.HiddenState(h=cell_lib.zeros(
        tuple(batch_shape), params.nu_log.shape[0], _complex(params.nu_log.dtype)))

  def apply(params: LRUParams, carry: common.HiddenState, x: jax.Array, *,
            key: jax.Array | None = None) -> tuple[common.HiddenState, jax.Array]:
    del key
    x = common.check_apply(fn, params, LRUParams, carry, x, input_size, initial_carry, prec)
    h = carry.h.astype(_complex(prec.accum))
    h = diagonal(params, prec.accum) * h + _drive(params, x, prec)
    return common.HiddenState(h=h.astype(carry.h.dtype)), _readout(params, h, x, prec)

  # The sequence forms, in `_complex(prec.accum)` like the step (inputs cast to compute).
  def coefficients(params: LRUParams, xs: jax.Array) -> tuple[jax.Array, jax.Array]:
    checks.sequence_input(f"{fn} (coefficients)", xs, params.b_re.shape[0])
    b = _drive(params, prec.input(f"{fn} (coefficients)", "xs", xs), prec)
    return jnp.broadcast_to(diagonal(params, prec.accum), b.shape), b

  def readout(params: LRUParams, hs: jax.Array, xs: jax.Array) -> jax.Array:
    return _readout(params, hs, prec.input(f"{fn} (readout)", "xs", xs), prec)

  def input_size(params: LRUParams) -> int:
    common.check_params(fn, params, LRUParams)
    return params.b_re.shape[0]

  cell = cell_lib.Cell(init, initial_carry, apply, input_size=input_size)
  return linear.with_recurrence(cell, linear.LinearRecurrence(coefficients, readout))
