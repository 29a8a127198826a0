"""The gated recurrent unit, in PyTorch's "reset after" form or Cho et al.'s original."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks, engines, fused
from rnnjax._src.cells import common, gates


class GRUParams(NamedTuple):
  """GRU weights, gates fused in PyTorch's order `(r, z, n)` along the last axis.

  PyTorch `nn.GRU`: `weight_ih_l0 = w_i.T`, `weight_hh_l0 = w_h.T`,
  `bias_ih_l0 = b_i`, `bias_hh_l0 = b_h`. With `heads > 1`, `w_h` is block-diagonal,
  stored per head as `[heads, D, 3D]` (`D = H / heads`): `w_h[k][:, g*D:(g+1)*D]` maps
  head `k`'s units of `h` to gate `g`'s units `k*D` to `(k+1)*D`.
  """

  w_i: jax.Array  # [I, 3H]
  w_h: jax.Array  # [H, 3H], or [heads, D, 3D] with heads > 1
  b_i: jax.Array | None  # [3H]
  b_h: jax.Array | None  # [3H]


def _by_head(v: jax.Array, heads: int, gates: int) -> jax.Array:
  """`[..., G*H]`, gate-major (the dense layout), as `[..., heads, G*D]`: each head's gates."""
  *batch, size = v.shape
  v = v.reshape(*batch, gates, heads, size // (gates * heads))
  return jnp.swapaxes(v, -3, -2).reshape(*batch, heads, size // heads)


def _headwise_step(a: jax.Array, h: jax.Array, params: GRUParams, *, reset_after: bool,
                   affine: Any) -> jax.Array:
  """The new state `[..., H]` of a head-wise GRU: each head a GRU of `D` units on its own.

  `gates.gru_gates` with each head's `w_h[k]: [D, 3D]`, mapped over the heads.
  """
  heads = params.w_h.shape[0]
  b_h = None if params.b_h is None else _by_head(params.b_h, heads, 3)
  step = functools.partial(gates.gru_gates, reset_after=reset_after, affine=affine)
  _, h_new, _ = jax.vmap(step, in_axes=(-2, -2, 0, 0), out_axes=-2)(
      _by_head(a, heads, 3), h.reshape(*h.shape[:-1], heads, -1), params.w_h, b_h)
  return h_new.reshape(*h_new.shape[:-2], -1)


@cell_lib.factory
def gru(hidden_size: int, *, reset_after: bool = True, heads: int = 1, use_bias: bool = True,
        kernel_init: Any = None, recurrent_init: Any = None, init: str = "default",
        dtype: Any = jnp.float32, param_dtype: Any = None) -> cell_lib.Cell:
  r"""The gated recurrent unit (Cho et al. 2014; PyTorch's `nn.GRU`, Flax's `GRUCell`).

  With `reset_after=True` (the default; PyTorch, cuDNN and Flax)::

    r = σ(x @ w_ir + b_ir + h @ w_hr + b_hr)
    z = σ(x @ w_iz + b_iz + h @ w_hz + b_hz)
    n = tanh(x @ w_in + b_in + r ⊙ (h @ w_hn + b_hn))
    h' = (1 - z) ⊙ n + z ⊙ h
    y  = h'

  With `reset_after=False` (the original "reset before" form) the candidate is
  `n = tanh(x @ w_in + b_in + (r ⊙ h) @ w_hn + b_hn)`. Here `w_ir` is the first
  `H` columns of `w_i`, and so on, in the order `(r, z, n)`.

  With `heads = k > 1`, `w_h` is block-diagonal with `k` blocks of `D = H / k` units
  (head-wise recurrence, as in sLSTM and FlashRNN): each head is a GRU of `D` units
  whose gates read only its own units of `h` (and all of `x`), so the step Jacobian
  `dh'/dh` is block-diagonal.

  Defaults: `w_i` LeCun normal per gate, `w_h` orthogonal per gate (per head and gate
  with `heads`), biases zero.

  Args:
    hidden_size: `H`, the size of the state and of the output.
    reset_after: apply the reset gate after the recurrent matrix product (True)
      or before it (False).
    heads: the number of diagonal blocks of `w_h`, which must divide `hidden_size`;
      with `heads > 1`, `w_h` is stored per head as `[heads, D, 3D]` and there is no
      whole-sequence kernel (the cell steps its `apply`). 1 (the default) is the dense
      cell.
    use_bias: if False there are no biases (PyTorch's `bias=False`).
    kernel_init: initializer for each gate's `[I, H]` block of `w_i`.
    recurrent_init: initializer for each gate's `[H, H]` block of `w_h` (each head's
      `[D, D]` block of each gate with `heads`).
    init: `"default"` (the initializers above) or `"pytorch"`: every weight and bias
      uniform in `±1/sqrt(H)`, as PyTorch's `nn.GRU` draws them, so that a port starts
      from PyTorch's distribution. Takes no `kernel_init` or `recurrent_init`.
    dtype: the compute dtype: inputs of any floating dtype are cast to it, the matrix
      products take their operands in it and accumulate in float32 (or wider), and
      the outputs `y` have it. `jnp.bfloat16` for mixed precision.
    param_dtype: the dtype of the params and of the carry. Default: float32, or
      float64 with `dtype=jnp.float64`.

  Returns:
    A `Cell` with `GRUParams` and carry `HiddenState(h=[..., H])`.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> cell = rnnjax.gru(4)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> carry, y = cell.apply(params, cell.initial_carry(params), jnp.ones(3))
    >>> y.shape
    (4,)
  """
  fn = "rnnjax.gru"
  hidden_size = common.factory_sizes(fn, hidden_size)
  prec = common.precision(fn, dtype, param_dtype)
  reset_after = checks.boolean(fn, "reset_after", reset_after)
  heads = common.check_heads(fn, hidden_size, heads)
  pytorch = common.init_scheme(fn, init, kernel_init, recurrent_init)
  k_init, r_init = common.resolve_inits(fn, kernel_init, recurrent_init)
  use_bias = checks.boolean(fn, "use_bias", use_bias)

  def init_params(key: jax.Array, input_size: int) -> GRUParams:
    checks.key(f"{fn}.init", "key", key)
    return GRUParams(**common.gated_weights(
        fn, key, input_size, hidden_size, 3, kernel_init=k_init, recurrent_init=r_init,
        dtype=prec.param, use_bias=use_bias, pytorch=pytorch, heads=heads))

  def initial_carry(params: GRUParams, batch_shape: tuple[int, ...] = ()) -> common.HiddenState:
    common.check_recurrent(f"{fn}.initial_carry", params, GRUParams, heads)
    batch_shape = common.check_initial_carry(fn, params, GRUParams, batch_shape)
    return common.hidden_initial_carry(params.w_h, batch_shape)

  def apply(params: GRUParams, carry: common.HiddenState, x: jax.Array, *,
            key: jax.Array | None = None) -> tuple[common.HiddenState, jax.Array]:
    del key
    common.check_recurrent(f"{fn}.apply", params, GRUParams, heads)
    x = common.check_apply(fn, params, GRUParams, carry, x, input_size, initial_carry, prec)
    a = prec.affine(x, params.w_i, params.b_i)
    if heads > 1:
      h = _headwise_step(a, prec.wide(carry.h), params, reset_after=reset_after,
                         affine=prec.affine)
    else:
      _, h, _ = gates.gru_gates(a, prec.wide(carry.h), params.w_h, params.b_h,
                                reset_after=reset_after, affine=prec.affine)
    return common.HiddenState(h=h.astype(carry.h.dtype)), prec.output(h)

  input_size = common.input_size_of(fn, GRUParams)
  # The fused kernel multiplies by a dense w_h: a head-wise cell steps its apply.
  kernel = fused.gru_kernel(reset_after, prec) if heads == 1 else None
  return cell_lib.Cell(init_params, initial_carry, apply, input_size=input_size,
                       paths=engines.FastPaths(
                           apply, sequence=kernel,
                           jacobian_heads=heads if heads > 1 else None))
