"""The Elman (vanilla) RNN cell."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks, engines
from rnnjax._src.cells import common


class ElmanParams(NamedTuple):
  """Elman cell weights. PyTorch `nn.RNN`: `weight_ih_l0 = w_i.T`, `weight_hh_l0 = w_h.T`,
  `bias_ih_l0 = b_i`, `bias_hh_l0 = b_h`.

  With `heads > 1`, `w_h` is block-diagonal, stored as one `[D, D]` block per head
  (`D = H / heads`): head `k` maps units `k*D` to `(k+1)*D` of `h` onto the same units.
  """

  w_i: jax.Array  # [I, H]
  w_h: jax.Array  # [H, H], or [heads, D, D] with heads > 1
  b_i: jax.Array | None  # [H]
  b_h: jax.Array | None  # [H]


_NONLINEARITIES = {"tanh": jnp.tanh, "relu": jax.nn.relu}


@cell_lib.factory
def elman(hidden_size: int, *, nonlinearity: str = "tanh", heads: int = 1, use_bias: bool = True,
          kernel_init: Any = None, recurrent_init: Any = None, init: str = "default",
          dtype: Any = jnp.float32, param_dtype: Any = None) -> cell_lib.Cell:
  r"""The Elman RNN cell (PyTorch's `nn.RNN`, Flax's `SimpleCell`).

  Equations, with `φ` = tanh or relu::

    h' = φ(x @ w_i + b_i + h @ w_h + b_h)
    y  = h'

  With `heads = k > 1`, `w_h` is block-diagonal with `k` blocks of `D = H / k` units
  (head-wise recurrence, as in sLSTM and FlashRNN): head `j`'s units of `h'` read only
  head `j`'s units of `h`, so the step Jacobian `dh'/dh` is block-diagonal too.

  Defaults: `w_i` LeCun normal (variance `1/I`), `w_h` orthogonal (each head's block
  with `heads`), biases zero.

  Args:
    hidden_size: `H`, the size of the state and of the output.
    nonlinearity: `"tanh"` or `"relu"`.
    heads: the number of diagonal blocks of `w_h`, which must divide `hidden_size`;
      with `heads > 1`, `w_h` is stored per head as `[heads, D, D]`. 1 (the default) is
      the dense cell.
    use_bias: if False there are no biases (`b_i = b_h = None`, PyTorch's `bias=False`).
    kernel_init: initializer for `w_i: [I, H]` (a `jax.nn.initializers` function).
    recurrent_init: initializer for `w_h: [H, H]` (for each head's `[D, D]` block with `heads`).
    init: `"default"` (the initializers above) or `"pytorch"`: every weight and bias
      uniform in `±1/sqrt(H)`, as PyTorch's `nn.RNN` draws them, so that a port starts
      from PyTorch's distribution. Takes no `kernel_init` or `recurrent_init`.
    dtype: the compute dtype: inputs of any floating dtype are cast to it, the matrix
      products take their operands in it and accumulate in float32 (or wider), and
      the outputs `y` have it. `jnp.bfloat16` for mixed precision.
    param_dtype: the dtype of the params and of the carry. Default: float32, or
      float64 with `dtype=jnp.float64`.

  Returns:
    A `Cell` whose params are `ElmanParams` and whose carry is `HiddenState(h=[..., H])`.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> cell = rnnjax.elman(4)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> carry = cell.initial_carry(params, batch_shape=(2,))
    >>> carry, y = cell.apply(params, carry, jnp.ones((2, 3)))
    >>> y.shape
    (2, 4)
  """
  fn = "rnnjax.elman"
  hidden_size = common.factory_sizes(fn, hidden_size)
  checks.choice(fn, "nonlinearity", nonlinearity, tuple(_NONLINEARITIES))
  heads = common.check_heads(fn, hidden_size, heads)
  prec = common.precision(fn, dtype, param_dtype)
  act = _NONLINEARITIES[nonlinearity]
  pytorch = common.init_scheme(fn, init, kernel_init, recurrent_init)
  k_init, r_init = common.resolve_inits(fn, kernel_init, recurrent_init)
  use_bias = checks.boolean(fn, "use_bias", use_bias)

  def init_params(key: jax.Array, input_size: int) -> ElmanParams:
    checks.key(f"{fn}.init", "key", key)
    return ElmanParams(**common.gated_weights(
        fn, key, input_size, hidden_size, 1, kernel_init=k_init, recurrent_init=r_init,
        dtype=prec.param, use_bias=use_bias, pytorch=pytorch, heads=heads))

  def initial_carry(params: ElmanParams, batch_shape: tuple[int, ...] = ()) -> common.HiddenState:
    common.check_recurrent(f"{fn}.initial_carry", params, ElmanParams, heads)
    batch_shape = common.check_initial_carry(fn, params, ElmanParams, batch_shape)
    return common.hidden_initial_carry(params.w_h, batch_shape)

  def apply(params: ElmanParams, carry: common.HiddenState, x: jax.Array, *,
            key: jax.Array | None = None) -> tuple[common.HiddenState, jax.Array]:
    del key
    common.check_recurrent(f"{fn}.apply", params, ElmanParams, heads)
    x = common.check_apply(fn, params, ElmanParams, carry, x, input_size, initial_carry, prec)
    h = act(prec.affine(x, params.w_i, params.b_i)
            + common.recurrent(carry.h, params.w_h, params.b_h, prec))
    return common.HiddenState(h=h.astype(carry.h.dtype)), prec.output(h)

  input_size = common.input_size_of(fn, ElmanParams)
  paths = engines.FastPaths(apply, jacobian_heads=heads) if heads > 1 else None
  return cell_lib.Cell(init_params, initial_carry, apply, input_size=input_size, paths=paths)
