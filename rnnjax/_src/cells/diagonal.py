r"""The diagonal-recurrence GRU and LSTM that ParaRNN trains (Danieli et al. 2025).

Danieli, Rodríguez, Sarabia, Suau and Zappella, "ParaRNN: Unlocking Parallel Training of
Nonlinear RNNs for Large Language Models" (arXiv:2510.21450), and its code
(github.com/apple/ml-pararnn: `pararnn/rnn_cell/gru_diag_mh.py`, `lstm_cifg_diag_mh.py`;
read in the public fork xaviergonzalez/ml-pararnn, commit dc2647b).
Every recurrent matrix of the classic cells becomes a vector applied elementwise, so the
step's Jacobian `∂h_t/∂h_{t-1}` is diagonal (for the LSTM, the carry `(h, c)` gives a 2x2
block of diagonals): a Newton solve over the whole sequence then needs only elementwise
products inside its parallel scan, which is what lets ParaRNN train these cells in parallel
over time. The cells stay nonlinear in their carry; step by step (`unroll`) they run like
any other cell.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks, engines
from rnnjax._src import precision as precision_lib
from rnnjax._src.cells import common
from rnnjax._src.cells.lstm import LSTMState


class DiagonalGRUParams(NamedTuple):
  """Diagonal GRU weights, gates fused in ParaRNN's order `(z, r, c)` along the last axis.

  ParaRNN's `GRUDiagMH` with one input head: `a = A.reshape(-1)`, `b = b.reshape(-1)`, and
  `w_i[:, k*H:(k+1)*H] = B[0, :, k, :]` for gate `k`.
  """

  w_i: jax.Array  # [I, 3H], the input weights
  a: jax.Array  # [3H], the diagonal recurrent weights
  b: jax.Array | None  # [3H]


class DiagonalLSTMParams(NamedTuple):
  """Diagonal LSTM weights, gates fused in ParaRNN's order `(f, o, c)` along the last axis.

  ParaRNN's `LSTMCIFGDiagMH` with one input head: `a = A.reshape(-1)`, `p = C.reshape(-1)`,
  `b = b.reshape(-1)`, and `w_i[:, k*H:(k+1)*H] = B[0, :, k, :]` for gate `k`.
  """

  w_i: jax.Array  # [I, 3H], the input weights
  a: jax.Array  # [3H], the diagonal recurrent weights (on h)
  p: jax.Array  # [2H], the diagonal peephole weights (on c), order (f, o)
  b: jax.Array | None  # [3H]


def diagonal_init(hidden_size: int) -> cell_lib.Initializer:
  """ParaRNN's initializer of the diagonals: normal, std `1/sqrt(H)`, truncated to `±0.9`.

  The `xavier_gaussian` of ParaRNN's training configurations (`init_A`): a normal of
  standard deviation `1/sqrt(H)` conditioned on `[-0.9, 0.9]`, so that no diagonal starts
  at a gain of 1 or more.

  Args:
    hidden_size: `H`, the size of the state.

  Returns:
    An initializer `(key, shape, dtype) -> array`.
  """
  std = 1.0 / math.sqrt(hidden_size)

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return std * jax.random.truncated_normal(key, -0.9 / std, 0.9 / std, shape, dtype)

  return init


def _diagonals(init: cell_lib.Initializer, key: jax.Array, hidden_size: int, count: int,
               dtype: Any) -> jax.Array:
  """`[count * H]`: `count` independent `[H]` draws of `init`, side by side."""
  return jnp.concatenate([cell_lib.draw(init, k, (hidden_size,), dtype)
                          for k in jax.random.split(key, count)])


def _draw(key: jax.Array, input_size: Any, hidden_size: int, *, kernel_init: Any,
          recurrent_init: Any, dtype: Any, use_bias: bool, fn: str
          ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """`(w_i [I, 3H], a [3H], b [3H] or None)`, one draw per gate."""
  input_size = checks.positive_int(f"{fn}.init", "input_size", input_size)
  k_i, k_a = jax.random.split(key)
  w_i = cell_lib.gate_blocks(kernel_init, k_i, input_size, hidden_size, 3, dtype)
  a = _diagonals(recurrent_init, k_a, hidden_size, 3, dtype)
  return w_i, a, jnp.zeros((3 * hidden_size,), dtype) if use_bias else None


def _setup(fn: str, hidden_size: Any, use_bias: Any, kernel_init: Any, recurrent_init: Any,
           dtype: Any, param_dtype: Any) -> tuple[int, bool, Any, Any, Any]:
  """The checked `(hidden_size, use_bias, kernel_init, recurrent_init, precision)`."""
  hidden_size = common.factory_sizes(fn, hidden_size)
  use_bias = checks.boolean(fn, "use_bias", use_bias)
  k_init = checks.initializer(fn, "kernel_init", kernel_init) or cell_lib.default_kernel_init()
  r_init = checks.initializer(fn, "recurrent_init", recurrent_init) or diagonal_init(hidden_size)
  return hidden_size, use_bias, k_init, r_init, common.precision(fn, dtype, param_dtype)


def _gru_step(pre: jax.Array, a: jax.Array, h: jax.Array) -> jax.Array:
  """One diagonal GRU step from `pre = x @ w_i + b` (`[..., 3H]`), `a` (`[3H]`) and `h`."""
  u_z, u_r, u_c = jnp.split(pre, 3, axis=-1)
  a_z, a_r, a_c = jnp.split(a, 3, axis=-1)
  z = jax.nn.sigmoid(a_z * h + u_z)
  r = jax.nn.sigmoid(a_r * h + u_r)
  c = jnp.tanh(a_c * (r * h) + u_c)
  return (1.0 - z) * h + z * c


def _lstm_step(pre: jax.Array, a: jax.Array, p: jax.Array, h: jax.Array,
               c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One diagonal LSTM step: `(h', c')` from `pre = x @ w_i + b` (`[..., 3H]`), `a`, `p`."""
  u_f, u_o, u_c = jnp.split(pre, 3, axis=-1)
  a_f, a_o, a_c = jnp.split(a, 3, axis=-1)
  p_f, p_o = jnp.split(p, 2, axis=-1)
  f = jax.nn.sigmoid(a_f * h + u_f + p_f * c)
  c_tilde = jnp.tanh(a_c * h + u_c)
  c_new = f * c + (1.0 - f) * c_tilde
  o = jax.nn.sigmoid(a_o * h + u_o + p_o * c_new)
  return o * jnp.tanh(c_new), c_new


@cell_lib.factory
def diagonal_gru(hidden_size: int, *, use_bias: bool = True, kernel_init: Any = None,
                 recurrent_init: Any = None, dtype: Any = jnp.float32,
                 param_dtype: Any = None) -> cell_lib.Cell:
  r"""ParaRNN's diagonal GRU ("ParaGRU"; Danieli et al. 2025, arXiv:2510.21450).

  A GRU whose recurrent matrices are diagonals `a_z, a_r, a_c` (`σ` the logistic
  sigmoid, `⊙` elementwise), as in ParaRNN's `pararnn/rnn_cell/gru_diag_mh.py`::

    u_z, u_r, u_c = split(x @ w_i + b, 3)     # order (z, r, c); a likewise
    z  = σ(a_z ⊙ h + u_z)
    r  = σ(a_r ⊙ h + u_r)
    c  = tanh(a_c ⊙ (r ⊙ h) + u_c)
    h' = (1 - z) ⊙ h + z ⊙ c
    y  = h'

  Note that ParaRNN's `z` weighs the candidate (PyTorch's `nn.GRU` weighs the old state
  with its `z`), and that with a diagonal the reset gate acts alike before or after
  the recurrent product. `∂h'/∂h` is diagonal.

  ParaRNN splits `x` into input heads with a block-diagonal `w_i`; here `w_i` is dense
  (ParaRNN's cell with one head). Initialisation follows ParaRNN's training
  configurations in kind: each diagonal from `diagonal_init` (normal, std `1/sqrt(H)`,
  truncated to `±0.9`), `b` zero; `w_i` LeCun normal per gate (variance `1/I`; ParaRNN
  draws it uniform with the same variance).

  Args:
    hidden_size: `H`, the size of the state and of the output.
    use_bias: if False there is no bias `b`.
    kernel_init: initializer for each gate's `[I, H]` block of `w_i`.
    recurrent_init: initializer for each `[H]` diagonal (default `diagonal_init(H)`).
    dtype: the compute dtype: inputs of any floating dtype are cast to it, the input
      product takes its operands in it and accumulates in float32 (or wider), the gate
      arithmetic runs in that accumulation dtype, and the outputs `y` have `dtype`.
      `jnp.bfloat16` for mixed precision.
    param_dtype: the dtype of the params and of the carry. Default: float32, or
      float64 with `dtype=jnp.float64`.

  Returns:
    A `Cell` with `DiagonalGRUParams` and carry `HiddenState(h=[..., H])`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from rnnjax import diagonal_gru
    >>> cell = diagonal_gru(4)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> carry, y = cell.apply(params, cell.initial_carry(params, (2,)), jnp.ones((2, 3)))
    >>> y.shape, params.w_i.shape, params.a.shape
    ((2, 4), (3, 12), (12,))
  """
  fn = "rnnjax.diagonal_gru"
  hidden_size, use_bias, k_init, r_init, prec = _setup(
      fn, hidden_size, use_bias, kernel_init, recurrent_init, dtype, param_dtype)

  def init(key: jax.Array, input_size: int) -> DiagonalGRUParams:
    checks.key(f"{fn}.init", "key", key)
    w_i, a, b = _draw(key, input_size, hidden_size, kernel_init=k_init, recurrent_init=r_init,
                      dtype=prec.param, use_bias=use_bias, fn=fn)
    return DiagonalGRUParams(w_i=w_i, a=a, b=b)

  def initial_carry(params: DiagonalGRUParams,
                    batch_shape: tuple[int, ...] = ()) -> common.HiddenState:
    batch_shape = common.check_initial_carry(fn, params, DiagonalGRUParams, batch_shape)
    return common.HiddenState(
        h=cell_lib.zeros(batch_shape, params.a.shape[-1] // 3, params.a.dtype))

  def apply(params: DiagonalGRUParams, carry: common.HiddenState, x: jax.Array, *,
            key: jax.Array | None = None) -> tuple[common.HiddenState, jax.Array]:
    del key
    x = common.check_apply(fn, params, DiagonalGRUParams, carry, x, input_size, initial_carry,
                           prec)
    pre = prec.affine(x, params.w_i, params.b)
    h = _gru_step(pre, prec.wide(params.a), prec.wide(carry.h))
    return common.HiddenState(h=h.astype(carry.h.dtype)), prec.output(h)

  input_size = common.input_size_of(fn, DiagonalGRUParams)
  return cell_lib.Cell(init, initial_carry, apply, input_size=input_size,
                       paths=engines.FastPaths(apply, jacobian_heads=hidden_size))


@cell_lib.factory
def diagonal_lstm(hidden_size: int, *, use_bias: bool = True, kernel_init: Any = None,
                  recurrent_init: Any = None, dtype: Any = jnp.float32,
                  param_dtype: Any = None) -> cell_lib.Cell:
  r"""ParaRNN's diagonal LSTM ("ParaLSTM"; Danieli et al. 2025, arXiv:2510.21450).

  An LSTM with coupled input and forget gates (CIFG, Greff et al. 2017) and peepholes,
  whose recurrent and peephole matrices are diagonals (`σ` the logistic sigmoid, `⊙`
  elementwise), as in ParaRNN's `pararnn/rnn_cell/lstm_cifg_diag_mh.py`::

    u_f, u_o, u_c = split(x @ w_i + b, 3)     # order (f, o, c); a likewise
    p_f, p_o = split(p, 2)                    # the peepholes
    f  = σ(a_f ⊙ h + u_f + p_f ⊙ c)
    c̃  = tanh(a_c ⊙ h + u_c)
    c' = f ⊙ c + (1 - f) ⊙ c̃
    o  = σ(a_o ⊙ h + u_o + p_o ⊙ c')          # the output gate peeks at the new cell
    h' = o ⊙ tanh(c')
    y  = h'

  Each of `∂c'/∂c`, `∂c'/∂h`, `∂h'/∂c`, `∂h'/∂h` is diagonal: the carry's Jacobian is
  a 2x2 block of diagonals.

  ParaRNN splits `x` into input heads with a block-diagonal `w_i`; here `w_i` is dense
  (ParaRNN's cell with one head). Initialisation follows ParaRNN's training
  configurations in kind: each diagonal of `a` and `p` from `diagonal_init` (normal, std
  `1/sqrt(H)`, truncated to `±0.9`), `b` zero; `w_i` LeCun normal per gate (variance
  `1/I`; ParaRNN draws it uniform with the same variance).

  Args:
    hidden_size: `H`, the size of the state and of the output.
    use_bias: if False there is no bias `b`.
    kernel_init: initializer for each gate's `[I, H]` block of `w_i`.
    recurrent_init: initializer for each `[H]` diagonal (default `diagonal_init(H)`).
    dtype: the compute dtype: inputs of any floating dtype are cast to it, the input
      product takes its operands in it and accumulates in float32 (or wider), the gate
      arithmetic runs in that accumulation dtype, and the outputs `y` have `dtype`.
      `jnp.bfloat16` for mixed precision.
    param_dtype: the dtype of the params and of the carry. Default: float32, or
      float64 with `dtype=jnp.float64`.

  Returns:
    A `Cell` with `DiagonalLSTMParams` and carry `LSTMState(h=[..., H], c=[..., H])`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from rnnjax import diagonal_lstm
    >>> cell = diagonal_lstm(4)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> carry, y = cell.apply(params, cell.initial_carry(params, (2,)), jnp.ones((2, 3)))
    >>> y.shape, carry.c.shape, params.p.shape
    ((2, 4), (2, 4), (8,))
  """
  fn = "rnnjax.diagonal_lstm"
  hidden_size, use_bias, k_init, r_init, prec = _setup(
      fn, hidden_size, use_bias, kernel_init, recurrent_init, dtype, param_dtype)

  def init(key: jax.Array, input_size: int) -> DiagonalLSTMParams:
    checks.key(f"{fn}.init", "key", key)
    k_gates, k_p = jax.random.split(key)
    w_i, a, b = _draw(k_gates, input_size, hidden_size, kernel_init=k_init,
                      recurrent_init=r_init, dtype=prec.param, use_bias=use_bias, fn=fn)
    p = _diagonals(r_init, k_p, hidden_size, 2, prec.param)
    return DiagonalLSTMParams(w_i=w_i, a=a, p=p, b=b)

  def initial_carry(params: DiagonalLSTMParams, batch_shape: tuple[int, ...] = ()) -> LSTMState:
    batch_shape = common.check_initial_carry(fn, params, DiagonalLSTMParams, batch_shape)
    size, dtype = params.a.shape[-1] // 3, params.a.dtype
    return LSTMState(h=cell_lib.zeros(batch_shape, size, dtype),
                     c=cell_lib.zeros(batch_shape, size, dtype))

  def apply(params: DiagonalLSTMParams, carry: LSTMState, x: jax.Array, *,
            key: jax.Array | None = None) -> tuple[LSTMState, jax.Array]:
    del key
    x = common.check_apply(fn, params, DiagonalLSTMParams, carry, x, input_size,
                           initial_carry, prec)
    pre = prec.affine(x, params.w_i, params.b)
    h, c = _lstm_step(pre, prec.wide(params.a), prec.wide(params.p), prec.wide(carry.h),
                      prec.wide(carry.c))
    return precision_lib.like(LSTMState(h=h, c=c), carry), prec.output(h)

  input_size = common.input_size_of(fn, DiagonalLSTMParams)
  return cell_lib.Cell(init, initial_carry, apply, input_size=input_size,
                       paths=engines.FastPaths(apply, jacobian_heads=hidden_size))
