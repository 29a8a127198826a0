"""Pieces shared by the classic cells: the one-tensor carry, fused gate weights, argument checks.

Also the head-wise recurrence (`heads=`): a block-diagonal recurrent matrix stored as
one block per head, `w_h: [heads, D, G*D]` with `D = H / heads`, and its product.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks
from rnnjax._src import precision as precision_lib


class HiddenState(NamedTuple):
  """The carry of Elman, GRU and MGU cells."""

  h: jax.Array  # [..., H]


INIT_SCHEMES = ("default", "pytorch")


def resolve_inits(fn: str, kernel_init: Any, recurrent_init: Any) -> tuple[Any, Any]:
  kernel_init = checks.initializer(fn, "kernel_init", kernel_init)
  recurrent_init = checks.initializer(fn, "recurrent_init", recurrent_init)
  return (kernel_init or cell_lib.default_kernel_init(),
          recurrent_init or cell_lib.default_recurrent_init())


def init_scheme(fn: str, init: Any, kernel_init: Any, recurrent_init: Any,
                forget_bias: float = 1.0) -> bool:
  """Checks a classic cell's `init` (`"default"` or `"pytorch"`); True for `"pytorch"`.

  `"pytorch"` draws every weight and bias itself, so it takes no initializer and
  no forget-gate bias: giving one as well is an error rather than a silent choice.
  """
  checks.choice(fn, "init", init, INIT_SCHEMES)
  if init != "pytorch":
    return False
  for name, value in (("kernel_init", kernel_init), ("recurrent_init", recurrent_init)):
    if value is not None:
      raise ValueError(
          f"{fn}: init='pytorch' draws every weight uniformly in ±1/sqrt(hidden_size), so it "
          f"takes no `{name}`; got {name}={value!r}. Drop `{name}`, or pass init='default' "
          f"to use your own initializers.")
  if forget_bias != 1.0:
    raise ValueError(
        f"{fn}: init='pytorch' draws the biases uniformly too and fills no forget-gate bias; "
        f"got forget_bias={forget_bias!r}. Drop `forget_bias`, or pass init='default'.")
  return True


def pytorch_uniform(hidden_size: int) -> cell_lib.Initializer:
  """PyTorch's initializer for every RNN weight and bias: uniform in `±1/sqrt(hidden_size)`."""
  bound = 1.0 / math.sqrt(hidden_size)

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def pytorch_weights(fn: str, key: jax.Array, input_size: Any, hidden_size: int, gates: int, *,
                    dtype: Any, use_bias: bool, recurrent_rows: int | None = None,
                    heads: int = 1) -> dict[str, jax.Array | None]:
  """`gated_weights` drawn as PyTorch does: every weight and bias uniform in `±1/sqrt(H)`."""
  input_size = checks.positive_int(f"{fn}.init", "input_size", input_size)
  uniform = pytorch_uniform(hidden_size)
  k_i, k_h, k_bi, k_bh = jax.random.split(key, 4)
  size = gates * hidden_size
  d = hidden_size // heads
  w_h_shape = (recurrent_rows or hidden_size, size) if heads == 1 else (heads, d, gates * d)
  return dict(
      w_i=cell_lib.draw(uniform, k_i, (input_size, size), dtype),
      w_h=cell_lib.draw(uniform, k_h, w_h_shape, dtype),
      b_i=cell_lib.draw(uniform, k_bi, (size,), dtype) if use_bias else None,
      b_h=cell_lib.draw(uniform, k_bh, (size,), dtype) if use_bias else None)


def hidden_initial_carry(params_h: jax.Array, batch_shape: tuple[int, ...] = ()) -> HiddenState:
  """Zeros `[*batch_shape, H]` in the dtype of `params_h: [H, G*H]` (or `[heads, D, G*D]`)."""
  rows, _ = recurrent_sizes(params_h, 1)
  return HiddenState(h=cell_lib.zeros(tuple(batch_shape), rows, params_h.dtype))


def check_params(fn: str, params: Any, params_type: type) -> None:
  """`params` must be the `params_type` that the factory `fn` (e.g. `"rnnjax.lstm"`) makes."""
  checks.params(fn, params, params_type, made_by=fn)


def check_initial_carry(fn: str, params: Any, params_type: type,
                        batch_shape: Any) -> tuple[int, ...]:
  """The checks of `initial_carry(params, batch_shape)`; returns `batch_shape` as a tuple."""
  checks.params(f"{fn}.initial_carry", params, params_type, made_by=fn)
  return checks.batch_shape(f"{fn}.initial_carry", batch_shape)


def check_apply(fn: str, params: Any, params_type: type, carry: Any, x: Any,
                input_size: Any, initial_carry: Any,
                precision: precision_lib.Precision) -> jax.Array:
  """The checks of `apply(params, carry, x)`, all at trace time; returns `x` cast to compute.

  `params` must be `params_type` (`input_size(params)` is its `I`); `x: [..., I]`
  may have any floating dtype, and comes back in the cell's compute dtype; `carry`
  must have the structure and dtypes of `initial_carry(params)` (the params'
  dtype), and the state size on its trailing axes. The step casts its new carry
  to the dtypes of the carry given, so a `lax.scan` over `apply` keeps its type.
  """
  checks.params(f"{fn}.apply", params, params_type, made_by=fn)
  checks.step_input(f"{fn}.apply", x, input_size(params))
  x = precision.input(f"{fn}.apply", "x", x)
  checks.step_carry(f"{fn}.apply", carry,
                    jax.eval_shape(lambda p: initial_carry(p, ()), params))
  return x


def factory_sizes(fn: str, hidden_size: Any) -> int:
  return checks.positive_int(fn, "hidden_size", hidden_size)


def precision(fn: str, dtype: Any, param_dtype: Any) -> precision_lib.Precision:
  """The checked `Precision` of a factory's `dtype` and `param_dtype` (see `precision.policy`)."""
  return precision_lib.policy(fn, dtype, param_dtype)


def gated_weights(fn: str, key: jax.Array, input_size: Any, hidden_size: int, gates: int, *,
                  kernel_init: Any, recurrent_init: Any, dtype: Any, use_bias: bool,
                  fill: dict[int, float] | None = None, recurrent_rows: int | None = None,
                  pytorch: bool = False, heads: int = 1) -> dict[str, jax.Array | None]:
  """The fused `w_i: [I, G*H]`, `w_h: [R, G*H]`, `b_i, b_h: [G*H]` of a cell with `G` gates.

  `R` is `recurrent_rows` (the LSTM's projection size) or `H`. Each gate's block is
  drawn on its own; `fill` sets gate slices of `b_i` (see `cell.gated_biases`).
  With `heads > 1`, `w_h` is head-wise, `[heads, D, G*D]`: each head's `[D, D]` block
  of each gate drawn on its own (see `headwise`); `w_i` and the biases are unchanged.
  With `pytorch` (`init="pytorch"`), they are `pytorch_weights` instead: the
  initializers and `fill` do not apply (`init_scheme` refuses them alongside).
  """
  if pytorch:
    return pytorch_weights(fn, key, input_size, hidden_size, gates, dtype=dtype,
                           use_bias=use_bias, recurrent_rows=recurrent_rows, heads=heads)
  input_size = checks.positive_int(f"{fn}.init", "input_size", input_size)
  k_i, k_h = jax.random.split(key)
  b_i, b_h = cell_lib.gated_biases(gates, hidden_size, dtype, use_bias=use_bias, fill=fill)
  if heads == 1:
    rows = recurrent_rows or hidden_size
    w_h = cell_lib.gate_blocks(recurrent_init, k_h, rows, hidden_size, gates, dtype)
  else:
    d = hidden_size // heads
    w_h = jnp.stack([cell_lib.gate_blocks(recurrent_init, k, d, d, gates, dtype)
                     for k in jax.random.split(k_h, heads)])
  return dict(
      w_i=cell_lib.gate_blocks(kernel_init, k_i, input_size, hidden_size, gates, dtype),
      w_h=w_h, b_i=b_i, b_h=b_h)


def input_size_of(fn: str, params_type: type) -> Any:
  """`input_size(params)`: the `I` of params with an input matrix `w_i: [I, ...]`."""
  def input_size(params: Any) -> int:
    check_params(fn, params, params_type)
    return params.w_i.shape[0]
  return input_size


# ------------------------------------------------------------------- head-wise recurrence


def check_heads(fn: str, hidden_size: int, heads: Any) -> int:
  """`heads` as an int that divides `hidden_size`; a ValueError naming `heads` otherwise."""
  heads = checks.positive_int(fn, "heads", heads)
  if hidden_size % heads:
    fits = [k for k in range(1, hidden_size + 1) if hidden_size % k == 0]
    raise ValueError(
        f"{fn}: `hidden_size` (={hidden_size}) must be divisible by `heads` (={heads}); "
        f"each head holds hidden_size // heads units. Pass heads as one of {fits}.")
  return heads


def check_recurrent(fn: str, params: Any, params_type: type, heads: int) -> None:
  """`params.w_h` must be as a cell with `heads` makes it: `[R, G*H]`, or `[heads, D, G*D]`.

  Params of another type pass: the cell's own checks (`check_apply`) say what is wrong.
  """
  if not isinstance(params, params_type):
    return
  shape = tuple(getattr(params.w_h, "shape", ()))
  if (len(shape) == 2) if heads == 1 else (len(shape) == 3 and shape[0] == heads):
    return
  want = "[H, G*H] (a dense matrix)" if heads == 1 else f"[{heads}, D, G*D] (one block per head)"
  raise ValueError(
      f"{fn}: `params.w_h` has shape {shape}, but this cell was built with heads={heads}, "
      f"whose `init` makes w_h of shape {want}. Pass the params that this cell's `init` made, "
      "or build the cell with the `heads` the params were made for.")


def recurrent_sizes(w_h: jax.Array, gates: int) -> tuple[int, int]:
  """`(R, H)` of `w_h: [R, G*H]`, or of the head-wise `[heads, D, G*D]` (`R = H = heads*D`)."""
  if w_h.ndim == 2:
    return w_h.shape[0], w_h.shape[1] // gates
  heads, d, _ = w_h.shape
  return heads * d, heads * d


def headwise(h: jax.Array, r: jax.Array, matmul: Any = jnp.matmul) -> jax.Array:
  """The block-diagonal product `h @ blockdiag(r)`, gate-major: `[..., G*H]`.

  The dense layout's order: gate `g` of every head lands in units `g*H` to
  `(g+1)*H`, so biases and gate code read it as they read `h @ w_h`.

  Args:
    h: `[..., H]`, the hidden state.
    r: `[heads, D, G*D]` with `H = heads * D`: head `k`'s block, its `G` gates side by
      side (`r[k][:, g*D:(g+1)*D]` feeds gate `g`).
    matmul: `matmul(x, w)`, a batched matrix product (a mixed-precision cell passes its
      own, which casts the operands).

  Returns:
    `[..., G*H]`: gate `g`, head `k` holds `h[k*D:(k+1)*D] @ r[k][:, g*D:(g+1)*D]` at
    `[..., g*H + k*D : g*H + (k+1)*D]`.
  """
  heads, d, gd = r.shape
  batch = h.shape[:-1]
  out = matmul(h.reshape(*batch, heads, 1, d), r)  # [..., heads, 1, G*D]
  out = jnp.swapaxes(out.reshape(*batch, heads, gd // d, d), -3, -2)
  return out.reshape(*batch, heads * gd)


def recurrent(h: jax.Array, w_h: jax.Array, b_h: jax.Array | None,
              prec: precision_lib.Precision) -> jax.Array:
  """`h @ w_h + b_h` in `prec.accum`, for a dense `w_h: [R, G*H]` or a head-wise one."""
  if w_h.ndim == 2:
    return prec.affine(h, w_h, b_h)
  y = headwise(h, w_h, prec.matmul)
  return y if b_h is None else y + b_h.astype(prec.accum)
