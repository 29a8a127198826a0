"""The minimal gated unit: a GRU whose single gate acts as both update and reset gate."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks
from rnnjax._src.cells import common


class MGUParams(NamedTuple):
  """MGU weights, fused in the order `(f, n)` along the last axis."""

  w_i: jax.Array  # [I, 2H]
  w_h: jax.Array  # [H, 2H]
  b_i: jax.Array | None  # [2H]
  b_h: jax.Array | None  # [2H]


@cell_lib.factory
def mgu(hidden_size: int, *, reset_after: bool = True, use_bias: bool = True,
        forget_bias: float = 1.0, kernel_init: Any = None, recurrent_init: Any = None,
        init: str = "default", dtype: Any = jnp.float32,
        param_dtype: Any = None) -> cell_lib.Cell:
  r"""The minimal gated unit (Zhou et al. 2016, arXiv:1603.09420; Flax's `MGUCell`).

  One gate `f` plays the parts of GRU's update and reset gates. With
  `reset_after=True` (the default; Flax's form)::

    f = σ(x @ w_if + b_if + h @ w_hf + b_hf)
    n = tanh(x @ w_in + b_in + f ⊙ (h @ w_hn + b_hn))
    h' = (1 - f) ⊙ n + f ⊙ h
    y  = h'

  With `reset_after=False` (the paper's form) the candidate is
  `n = tanh(x @ w_in + b_in + (f ⊙ h) @ w_hn + b_hn)`. Note that `f` near 1
  keeps the old state, as GRU's `z` does (the paper writes the same cell with `1 - f`).

  Defaults: `w_i` LeCun normal per gate, `w_h` orthogonal per gate, biases zero
  except the gate's slice of `b_i`, which starts at `forget_bias` = 1.0 (as Flax).

  Args:
    hidden_size: `H`, the size of the state and of the output.
    reset_after: apply the gate after the recurrent matrix product (True) or before (False).
    use_bias: if False there are no biases.
    forget_bias: initial value of the gate's input bias.
    kernel_init: initializer for each gate's `[I, H]` block of `w_i`.
    recurrent_init: initializer for each gate's `[H, H]` block of `w_h`.
    init: `"default"` (the initializers above) or `"pytorch"`: every weight and bias
      uniform in `±1/sqrt(H)`, as PyTorch's `nn.GRU` draws them, so that a port starts
      from PyTorch's distribution (PyTorch has no MGU; this is its GRU's rule). There
      is no gate-bias fill, so `forget_bias` must stay at its default; takes no
      `kernel_init` or `recurrent_init`.
    dtype: the compute dtype: inputs of any floating dtype are cast to it, the matrix
      products take their operands in it and accumulate in float32 (or wider), and
      the outputs `y` have it. `jnp.bfloat16` for mixed precision.
    param_dtype: the dtype of the params and of the carry. Default: float32, or
      float64 with `dtype=jnp.float64`.

  Returns:
    A `Cell` with `MGUParams` and carry `HiddenState(h=[..., H])`.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> cell = rnnjax.mgu(4)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> carry, y = cell.apply(params, cell.initial_carry(params, (5,)), jnp.ones((5, 3)))
    >>> y.shape
    (5, 4)
  """
  fn = "rnnjax.mgu"
  hidden_size = common.factory_sizes(fn, hidden_size)
  prec = common.precision(fn, dtype, param_dtype)
  reset_after = checks.boolean(fn, "reset_after", reset_after)
  forget_bias = checks.real_number(fn, "forget_bias", forget_bias)
  pytorch = common.init_scheme(fn, init, kernel_init, recurrent_init, forget_bias)
  k_init, r_init = common.resolve_inits(fn, kernel_init, recurrent_init)
  use_bias = checks.boolean(fn, "use_bias", use_bias)

  def init_params(key: jax.Array, input_size: int) -> MGUParams:
    checks.key(f"{fn}.init", "key", key)
    return MGUParams(**common.gated_weights(
        fn, key, input_size, hidden_size, 2, kernel_init=k_init, recurrent_init=r_init,
        dtype=prec.param, use_bias=use_bias, fill={0: forget_bias}, pytorch=pytorch))

  def initial_carry(params: MGUParams, batch_shape: tuple[int, ...] = ()) -> common.HiddenState:
    batch_shape = common.check_initial_carry(fn, params, MGUParams, batch_shape)
    return common.hidden_initial_carry(params.w_h, batch_shape)

  def apply(params: MGUParams, carry: common.HiddenState, x: jax.Array, *,
            key: jax.Array | None = None) -> tuple[common.HiddenState, jax.Array]:
    del key
    x = common.check_apply(fn, params, MGUParams, carry, x, input_size, initial_carry, prec)
    h = prec.wide(carry.h)
    size = params.w_h.shape[0]
    xi_f, xi_n = jnp.split(prec.affine(x, params.w_i, params.b_i), 2, axis=-1)
    b_h = params.b_h
    if reset_after:
      hh_f, hh_n = jnp.split(prec.affine(h, params.w_h, b_h), 2, axis=-1)
      f = jax.nn.sigmoid(xi_f + hh_f)
      n = jnp.tanh(xi_n + f * hh_n)
    else:
      b_f = None if b_h is None else b_h[:size]
      f = jax.nn.sigmoid(xi_f + prec.affine(h, params.w_h[:, :size], b_f))
      b_n = None if b_h is None else b_h[size:]
      n = jnp.tanh(xi_n + prec.affine(f * h, params.w_h[:, size:], b_n))
    h = (1.0 - f) * n + f * h
    return common.HiddenState(h=h.astype(carry.h.dtype)), prec.output(h)

  input_size = common.input_size_of(fn, MGUParams)
  return cell_lib.Cell(init_params, initial_carry, apply, input_size=input_size)
