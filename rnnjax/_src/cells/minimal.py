r"""minGRU and minLSTM (Feng et al. 2024): gates that read only the input, so the state is linear.

Feng, Tung, Ahmed, Bengio and Hajimirsadeghi, "Were RNNs All We Needed?"
(arXiv:2410.01201). Dropping the previous state from the gates and the
candidate (and the `tanh` on the candidate) makes each step an elementwise
affine map of the carry::

  h_t = a_t ⊙ h_{t-1} + b_t,    (a_t, b_t) a function of x_t alone,

so a whole sequence can run as a parallel prefix scan. Both cells declare that
recurrence (`rnnjax._src.linear.LinearRecurrence`), and, in their log-space form,
its logarithm, which the paper's parallel mode scans in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks
from rnnjax._src import linear as linear_lib
from rnnjax._src.cells import common


class MinGRUParams(NamedTuple):
  """minGRU weights, fused in the order `(z, h)` along the last axis.

  The paper's PyTorch code: `linear_z.weight = w[:, :H].T`, `linear_h.weight = w[:, H:].T`,
  `linear_z.bias = b[:H]`, `linear_h.bias = b[H:]`.
  """

  w: jax.Array  # [I, 2H]
  b: jax.Array | None  # [2H]


class MinLSTMParams(NamedTuple):
  """minLSTM weights, fused in the order `(f, i, h)` along the last axis.

  The paper's PyTorch code: `linear_f.weight = w[:, :H].T`, `linear_i.weight = w[:, H:2H].T`,
  `linear_h.weight = w[:, 2H:].T`, and the biases likewise from `b`.
  """

  w: jax.Array  # [I, 3H]
  b: jax.Array | None  # [3H]


# ---- The pieces of the paper's equations, elementwise. ----

def _split_sides(v: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`(v >= 0, v where v >= 0 else 0, v where v < 0 else 0)`.

  The first half of the "double where": each branch of a `jnp.where` is fed only
  values from its own side, so the branch that is not selected can never make an
  inf or a NaN (whose gradient, times the zero cotangent, would still be NaN).
  """
  pos = v >= 0
  zero = jnp.zeros_like(v)
  return pos, jnp.where(pos, v, zero), jnp.where(pos, zero, v)


def _g(v: jax.Array) -> jax.Array:
  """`g(v) = v + 0.5` for `v >= 0`, `σ(v)` for `v < 0`: continuous and strictly positive."""
  pos, v_pos, v_neg = _split_sides(v)
  return jnp.where(pos, v_pos + 0.5, jax.nn.sigmoid(v_neg))


def _log_g(v: jax.Array) -> jax.Array:
  """`log g(v)`: `log(v + 0.5)` for `v >= 0`, `log σ(v) = -softplus(-v)` for `v < 0`."""
  pos, v_pos, v_neg = _split_sides(v)
  return jnp.where(pos, jnp.log(v_pos + 0.5), -jax.nn.softplus(-v_neg))


def _candidate(v: jax.Array, log_space: bool) -> jax.Array:
  return _g(v) if log_space else v


def _mingru_coefficients(pre: jax.Array, log_space: bool) -> tuple[jax.Array, jax.Array]:
  """`a = 1 - z = σ(-k)`, `b = z ⊙ h̃` from the pre-activations `[k, v]`."""
  k, v = jnp.split(pre, 2, axis=-1)
  return jax.nn.sigmoid(-k), jax.nn.sigmoid(k) * _candidate(v, log_space)


def _mingru_log_coefficients(pre: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`log a = log(1 - z) = -softplus(k)`, `log b = log z + log g(v) = -softplus(-k) + log g(v)`."""
  k, v = jnp.split(pre, 2, axis=-1)
  return -jax.nn.softplus(k), -jax.nn.softplus(-k) + _log_g(v)


def _minlstm_diff(k_f: jax.Array, k_i: jax.Array) -> jax.Array:
  """`log(i / f) = log σ(k_i) - log σ(k_f) = softplus(-k_f) - softplus(-k_i)`."""
  return jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)


def _minlstm_coefficients(pre: jax.Array, log_space: bool) -> tuple[jax.Array, jax.Array]:
  """`a = f' = f / (f + i) = σ(-d)`, `b = i' ⊙ h̃ = σ(d) ⊙ h̃` with `d = log(i / f)`."""
  k_f, k_i, v = jnp.split(pre, 3, axis=-1)
  diff = _minlstm_diff(k_f, k_i)
  return jax.nn.sigmoid(-diff), jax.nn.sigmoid(diff) * _candidate(v, log_space)


def _minlstm_log_coefficients(pre: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`log f' = -softplus(d)`, `log b = log i' + log g(v) = -softplus(-d) + log g(v)`."""
  k_f, k_i, v = jnp.split(pre, 3, axis=-1)
  diff = _minlstm_diff(k_f, k_i)
  return -jax.nn.softplus(diff), -jax.nn.softplus(-diff) + _log_g(v)


# ---- The cell, shared by both factories. ----

def _minimal_cell(fn: str, params_type: type, gates: int, hidden_size: Any, *, log_space: Any,
                  use_bias: bool, kernel_init: Any, dtype: Any, param_dtype: Any,
                  coefficients_of: Callable[[jax.Array, bool], tuple[jax.Array, jax.Array]],
                  log_coefficients_of: Callable[[jax.Array], tuple[jax.Array, jax.Array]]
                  ) -> cell_lib.Cell:
  hidden_size = common.factory_sizes(fn, hidden_size)
  log_space = checks.boolean(fn, "log_space", log_space)
  use_bias = checks.boolean(fn, "use_bias", use_bias)
  prec = common.precision(fn, dtype, param_dtype)
  k_init = checks.initializer(fn, "kernel_init", kernel_init) or cell_lib.default_kernel_init()

  def init(key: jax.Array, input_size: int) -> Any:
    checks.key(f"{fn}.init", "key", key)
    input_size = checks.positive_int(f"{fn}.init", "input_size", input_size)
    w = cell_lib.gate_blocks(k_init, key, input_size, hidden_size, gates, prec.param)
    b = jnp.zeros((gates * hidden_size,), prec.param) if use_bias else None
    return params_type(w=w, b=b)

  def input_size(params: Any) -> int:
    common.check_params(fn, params, params_type)
    return params.w.shape[0]

  def initial_carry(params: Any, batch_shape: tuple[int, ...] = ()) -> common.HiddenState:
    batch_shape = common.check_initial_carry(fn, params, params_type, batch_shape)
    size = params.w.shape[-1] // gates
    return common.HiddenState(h=cell_lib.zeros(tuple(batch_shape), size, params.w.dtype))

  def apply(params: Any, carry: common.HiddenState, x: jax.Array, *,
            key: jax.Array | None = None) -> tuple[common.HiddenState, jax.Array]:
    del key
    x = common.check_apply(fn, params, params_type, carry, x, input_size, initial_carry, prec)
    a, b = coefficients_of(prec.affine(x, params.w, params.b), log_space)
    h = a * prec.wide(carry.h) + b
    return common.HiddenState(h=h.astype(carry.h.dtype)), prec.output(h)

  # The sequence forms, in `prec.accum` like the step's arithmetic (inputs cast to compute).
  def coefficients(params: Any, xs: jax.Array) -> tuple[jax.Array, jax.Array]:
    checks.sequence_input(f"{fn}.coefficients", xs, input_size(params))
    xs = prec.input(f"{fn}.coefficients", "xs", xs)
    return coefficients_of(prec.affine(xs, params.w, params.b), log_space)

  def log_coefficients(params: Any, xs: jax.Array) -> tuple[jax.Array, jax.Array]:
    checks.sequence_input(f"{fn}.log_coefficients", xs, input_size(params))
    xs = prec.input(f"{fn}.log_coefficients", "xs", xs)
    return log_coefficients_of(prec.affine(xs, params.w, params.b))

  cell = cell_lib.Cell(init, initial_carry, apply, input_size=input_size)
  recurrence = linear_lib.LinearRecurrence(
      coefficients, readout=None, log_coefficients=log_coefficients if log_space else None)
  return linear_lib.with_recurrence(cell, recurrence)


@cell_lib.factory
def mingru(hidden_size: int, *, log_space: bool = False, use_bias: bool = True,
           kernel_init: Any = None, dtype: Any = jnp.float32,
           param_dtype: Any = None) -> cell_lib.Cell:
  r"""The minimal GRU of Feng et al. 2024 ("Were RNNs All We Needed?", arXiv:2410.01201).

  A GRU whose update gate and candidate read only the input, so that the state
  enters linearly (`σ` the logistic sigmoid, `⊙` elementwise)::

    k, v = split(x @ w + b, 2)          # order (z, h)
    z  = σ(k)
    h̃  = v                              # log_space=True: h̃ = g(v)
    h' = (1 - z) ⊙ h + z ⊙ h̃
    y  = h'

  that is `h' = a ⊙ h + b` with `a = 1 - z` and `b = z ⊙ h̃` (computed as
  `σ(-k)`, equal to `1 - σ(k)` but exact in relative terms when `z` is near 1).

  `log_space=True` is the paper's log-space version: the candidate is made
  strictly positive by `g(v) = v + 0.5` for `v >= 0` and `σ(v)` for `v < 0`,
  and the cell also declares the logarithms of its coefficients, computed
  without forming `a` or `b`::

    log a = log(1 - z) = -softplus(k)
    log b = log z + log g(v) = -softplus(-k) + log g(v)
    log g(v) = log(v + 0.5) if v >= 0 else -softplus(-v)

  so that a parallel scan can run in log space, as the paper does; that scan
  needs a carry `h >= 0`. Step by step (`apply`, `unroll`) any carry works.

  Initialisation: each gate's `[I, H]` block of `w` is drawn on its own from
  `kernel_init` (LeCun normal, variance `1/I`, by default) and `b` is zero. The
  paper's code uses PyTorch's `nn.Linear` (uniform `±1/√I` weights and biases);
  this follows the initialiser convention of rnnjax's other cells instead.

  Args:
    hidden_size: `H`, the size of the state and of the output.
    log_space: use the positive candidate `g` and declare the log-space
      coefficients (the paper's log-space version).
    use_bias: if False there is no bias `b`.
    kernel_init: initializer for each gate's `[I, H]` block of `w`.
    dtype: the compute dtype: inputs of any floating dtype are cast to it, the matrix
      products take their operands in it and accumulate in float32 (or wider), and
      the outputs `y` have it. `jnp.bfloat16` for mixed precision.
    param_dtype: the dtype of the params and of the carry. Default: float32, or
      float64 with `dtype=jnp.float64`.

  Returns:
    A `Cell` with `MinGRUParams` and carry `HiddenState(h=[..., H])`, with its
    linear recurrence attached: `coefficients(params, xs: [T, ..., I])` gives
    `(a, b)`, each `[T, ..., H]`; `log_coefficients` is set only with
    `log_space=True`.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> cell = rnnjax.mingru(4)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> carry, y = cell.apply(params, cell.initial_carry(params, (2,)), jnp.ones((2, 3)))
    >>> y.shape, params.w.shape
    ((2, 4), (3, 8))
  """
  return _minimal_cell(
      "rnnjax.mingru", MinGRUParams, 2, hidden_size, log_space=log_space, use_bias=use_bias,
      kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype,
      coefficients_of=_mingru_coefficients, log_coefficients_of=_mingru_log_coefficients)


@cell_lib.factory
def minlstm(hidden_size: int, *, log_space: bool = False, use_bias: bool = True,
            kernel_init: Any = None, dtype: Any = jnp.float32,
            param_dtype: Any = None) -> cell_lib.Cell:
  r"""The minimal LSTM of Feng et al. 2024 ("Were RNNs All We Needed?", arXiv:2410.01201).

  An LSTM without output gate or memory cell, whose forget and input gates read
  only the input and are normalised to sum to one (`σ` the logistic sigmoid,
  `⊙` elementwise)::

    k_f, k_i, v = split(x @ w + b, 3)   # order (f, i, h)
    f  = σ(k_f),  i = σ(k_i)
    f' = f / (f + i),  i' = i / (f + i)
    h̃  = v                              # log_space=True: h̃ = g(v)
    h' = f' ⊙ h + i' ⊙ h̃
    y  = h'

  that is `h' = a ⊙ h + b` with `a = f'` and `b = i' ⊙ h̃`. The normalised gates
  are computed as `f' = σ(-d)`, `i' = σ(d)` with `d = log(i / f) =
  softplus(-k_f) - softplus(-k_i)`: the same numbers, but defined even where
  both `f` and `i` underflow to zero.

  `log_space=True` is the paper's log-space version: the candidate is made
  strictly positive by `g(v) = v + 0.5` for `v >= 0` and `σ(v)` for `v < 0`,
  and the cell also declares the logarithms of its coefficients::

    d     = softplus(-k_f) - softplus(-k_i)
    log a = log f' = -softplus(d)
    log b = log i' + log g(v) = -softplus(-d) + log g(v)
    log g(v) = log(v + 0.5) if v >= 0 else -softplus(-v)

  so that a parallel scan can run in log space, as the paper does; that scan
  needs a carry `h >= 0`. Step by step (`apply`, `unroll`) any carry works.

  Initialisation: each gate's `[I, H]` block of `w` is drawn on its own from
  `kernel_init` (LeCun normal, variance `1/I`, by default) and `b` is zero. The
  paper's code uses PyTorch's `nn.Linear` (uniform `±1/√I` weights and biases);
  this follows the initialiser convention of rnnjax's other cells instead.

  Args:
    hidden_size: `H`, the size of the state and of the output.
    log_space: use the positive candidate `g` and declare the log-space
      coefficients (the paper's log-space version).
    use_bias: if False there is no bias `b`.
    kernel_init: initializer for each gate's `[I, H]` block of `w`.
    dtype: the compute dtype: inputs of any floating dtype are cast to it, the matrix
      products take their operands in it and accumulate in float32 (or wider), and
      the outputs `y` have it. `jnp.bfloat16` for mixed precision.
    param_dtype: the dtype of the params and of the carry. Default: float32, or
      float64 with `dtype=jnp.float64`.

  Returns:
    A `Cell` with `MinLSTMParams` and carry `HiddenState(h=[..., H])`, with its
    linear recurrence attached: `coefficients(params, xs: [T, ..., I])` gives
    `(a, b)`, each `[T, ..., H]`; `log_coefficients` is set only with
    `log_space=True`.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> cell = rnnjax.minlstm(4, log_space=True)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> ys, carry = rnnjax.unroll(cell, params, jnp.ones((5, 2, 3)))
    >>> ys.shape, params.w.shape
    ((5, 2, 4), (3, 12))
  """
  return _minimal_cell(
      "rnnjax.minlstm", MinLSTMParams, 3, hidden_size, log_space=log_space, use_bias=use_bias,
      kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype,
      coefficients_of=_minlstm_coefficients, log_coefficients_of=_minlstm_log_coefficients)
