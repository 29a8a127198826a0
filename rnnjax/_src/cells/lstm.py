"""The LSTM cell, with PyTorch's optional output projection."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks, engines, fused
from rnnjax._src import precision as precision_lib
from rnnjax._src.cells import common, gates


class LSTMParams(NamedTuple):
  """LSTM weights, gates fused in PyTorch's order `(i, f, g, o)` along the last axis.

  PyTorch `nn.LSTM`: `weight_ih_l0 = w_i.T`, `weight_hh_l0 = w_h.T`,
  `bias_ih_l0 = b_i`, `bias_hh_l0 = b_h`, `weight_hr_l0 = w_proj.T`.
  `P` is `proj_size`, or `H` without a projection. With `heads > 1`, `w_h` is
  block-diagonal, stored per head as `[heads, D, 4D]` (`D = H / heads`):
  `w_h[k][:, g*D:(g+1)*D]` maps head `k`'s units of `h` to gate `g`'s units `k*D` to
  `(k+1)*D`.
  """

  w_i: jax.Array  # [I, 4H]
  w_h: jax.Array  # [P, 4H], or [heads, D, 4D] with heads > 1
  b_i: jax.Array | None  # [4H]
  b_h: jax.Array | None  # [4H]
  w_proj: jax.Array | None  # [H, P], None without a projection


class LSTMState(NamedTuple):
  """The LSTM carry: the output state first, then the memory cell."""

  h: jax.Array  # [..., P]
  c: jax.Array  # [..., H]


@cell_lib.factory
def lstm(hidden_size: int, *, proj_size: int | None = None, heads: int = 1,
         use_bias: bool = True, forget_bias: float = 1.0, kernel_init: Any = None,
         recurrent_init: Any = None, init: str = "default", dtype: Any = jnp.float32,
         param_dtype: Any = None) -> cell_lib.Cell:
  r"""The long short-term memory cell (Hochreiter & Schmidhuber 1997; PyTorch's `nn.LSTM`).

  Equations (`σ` the logistic sigmoid, `⊙` elementwise)::

    i, f, g, o = split(x @ w_i + b_i + h @ w_h + b_h, 4)
    c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g)
    h' = σ(o) ⊙ tanh(c')              # then h' = h' @ w_proj with a projection
    y  = h'

  With `heads = k > 1`, `w_h` is block-diagonal with `k` blocks of `D = H / k` units
  (head-wise recurrence, as in sLSTM and FlashRNN): head `j`'s units of every gate read
  only head `j`'s units of `h`, so the step Jacobian of `(h, c)` is block-diagonal by head.

  Defaults: `w_i` LeCun normal (variance `1/I`) per gate, `w_h` orthogonal per
  gate (per head and gate with `heads`), biases zero except the forget gate's slice of
  `b_i`, which starts at `forget_bias` = 1.0 (Jozefowicz et al. 2015); `w_proj` LeCun
  normal.

  Args:
    hidden_size: `H`, the size of the memory cell `c`.
    proj_size: `P`; if given, `h` and `y` are projected to `P` features (PyTorch's
      `proj_size`). Must be smaller than `hidden_size`, as in PyTorch.
    heads: the number of diagonal blocks of `w_h`, which must divide `hidden_size`;
      with `heads > 1`, `w_h` is stored per head as `[heads, D, 4D]`, and there is no
      `proj_size` and no whole-sequence kernel (the cell steps its `apply`). 1 (the
      default) is the dense cell.
    use_bias: if False there are no biases (PyTorch's `bias=False`).
    forget_bias: initial value of the forget gate's input bias.
    kernel_init: initializer for each gate's `[I, H]` block of `w_i`.
    recurrent_init: initializer for each gate's `[P, H]` block of `w_h` (each head's
      `[D, D]` block of each gate with `heads`).
    init: `"default"` (the initializers above) or `"pytorch"`: every weight and bias
      uniform in `±1/sqrt(H)`, as PyTorch's `nn.LSTM` draws them, so that a port starts
      from PyTorch's distribution (`w_proj` too). There is no forget-gate fill, so
      `forget_bias` must stay at its default; takes no `kernel_init` or `recurrent_init`.
    dtype: the compute dtype: inputs of any floating dtype are cast to it, the matrix
      products take their operands in it and accumulate in float32 (or wider), and
      the outputs `y` have it. `jnp.bfloat16` for mixed precision.
    param_dtype: the dtype of the params and of the carry. Default: float32, or
      float64 with `dtype=jnp.float64`.

  Returns:
    A `Cell` with `LSTMParams` and carry `LSTMState(h=[..., P], c=[..., H])`.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> cell = rnnjax.lstm(8, proj_size=4)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> carry = cell.initial_carry(params, batch_shape=(2,))
    >>> carry, y = cell.apply(params, carry, jnp.ones((2, 3)))
    >>> y.shape, carry.c.shape
    ((2, 4), (2, 8))
  """
  fn = "rnnjax.lstm"
  hidden_size = common.factory_sizes(fn, hidden_size)
  if proj_size is not None:
    proj_size = checks.positive_int(fn, "proj_size", proj_size)
    if proj_size >= hidden_size:
      raise ValueError(
          f"{fn}: `proj_size` must be smaller than `hidden_size` (as in PyTorch), got "
          f"proj_size={proj_size}, hidden_size={hidden_size}.")
  heads = common.check_heads(fn, hidden_size, heads)
  if heads > 1 and proj_size is not None:
    raise ValueError(
        f"{fn}: `heads` > 1 and `proj_size` cannot be combined: the projection mixes the "
        f"heads' units, got heads={heads}, proj_size={proj_size}. Drop `proj_size`, or pass "
        "heads=1.")
  prec = common.precision(fn, dtype, param_dtype)
  forget_bias = checks.real_number(fn, "forget_bias", forget_bias)
  pytorch = common.init_scheme(fn, init, kernel_init, recurrent_init, forget_bias)
  k_init, r_init = common.resolve_inits(fn, kernel_init, recurrent_init)
  use_bias = checks.boolean(fn, "use_bias", use_bias)
  out_size = proj_size or hidden_size

  def init_params(key: jax.Array, input_size: int) -> LSTMParams:
    checks.key(f"{fn}.init", "key", key)
    k_gates, k_p = jax.random.split(key)
    w_proj = None
    if proj_size is not None:
      w_init = common.pytorch_uniform(hidden_size) if pytorch else cell_lib.default_kernel_init()
      w_proj = cell_lib.draw(w_init, k_p, (hidden_size, proj_size), prec.param)
    return LSTMParams(
        **common.gated_weights(fn, k_gates, input_size, hidden_size, 4, kernel_init=k_init,
                               recurrent_init=r_init, dtype=prec.param, use_bias=use_bias,
                               fill={1: forget_bias}, recurrent_rows=out_size,
                               pytorch=pytorch, heads=heads),
        w_proj=w_proj)

  def initial_carry(params: LSTMParams, batch_shape: tuple[int, ...] = ()) -> LSTMState:
    common.check_recurrent(f"{fn}.initial_carry", params, LSTMParams, heads)
    batch_shape = common.check_initial_carry(fn, params, LSTMParams, batch_shape)
    h_size, c_size = common.recurrent_sizes(params.w_h, 4)
    return LSTMState(h=cell_lib.zeros(tuple(batch_shape), h_size, params.w_h.dtype),
                     c=cell_lib.zeros(tuple(batch_shape), c_size, params.w_h.dtype))

  def apply(params: LSTMParams, carry: LSTMState, x: jax.Array, *,
            key: jax.Array | None = None) -> tuple[LSTMState, jax.Array]:
    del key
    common.check_recurrent(f"{fn}.apply", params, LSTMParams, heads)
    x = common.check_apply(fn, params, LSTMParams, carry, x, input_size, initial_carry, prec)
    z = prec.affine(x, params.w_i, params.b_i) + common.recurrent(
        carry.h, params.w_h, params.b_h, prec)
    _, c, h = gates.lstm_gates(z, prec.wide(carry.c))
    if params.w_proj is not None:
      h = prec.matmul(h, params.w_proj)
    return precision_lib.like(LSTMState(h=h, c=c), carry), prec.output(h)

  input_size = common.input_size_of(fn, LSTMParams)
  # The fused kernel multiplies by a dense w_h: a head-wise cell steps its apply.
  kernel = fused.lstm_kernel(prec) if heads == 1 else None
  return cell_lib.Cell(init_params, initial_carry, apply, input_size=input_size,
                       paths=engines.FastPaths(
                           apply, sequence=kernel,
                           jacobian_heads=heads if heads > 1 else None))
