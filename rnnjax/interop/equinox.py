"""rnnjax cells and layers as Equinox modules: `RNN`, an `eqx.Module` over whole sequences.

`RNN` holds any rnnjax `Cell` (a built-in cell or a `stack` of cells) or `Layer`
(`rnnjax.rnn`, `bidirectional`, a `stack` holding layers) with its params, in
Equinox's conventions: the params pytree is an ordinary field (its arrays are
leaves that `eqx.filter`, `eqx.partition`, `eqx.filter_grad` and
`eqx.tree_serialise_leaves` see), the cell or layer is a static field, the
constructor takes a keyword `key`, and randomness (dropout in a stack) comes from a
`key` passed to the call.

Unlike `eqx.nn.LSTMCell` / `eqx.nn.GRUCell`, which compute one step of one
unbatched example (`cell(x, hidden) -> hidden`) and leave the `lax.scan` to you,
`RNN` runs the whole sequence: `model(xs, carry) -> (ys, carry)` with time-major
`xs: [T, I]` or `[T, B, I]`, the semantics of `rnnjax.unroll` (padding with
`lengths`, `resets`), and it also works under `jax.vmap` / `eqx.filter_vmap` over
single sequences `[T, I]`, as Equinox models usually are. See the Equinox section
of the interop guide for the weight layouts and the other differences.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax

from rnnjax._src import checks
from rnnjax._src import unroll as unroll_lib
from rnnjax._src.cell import Cell
from rnnjax._src.layers import Layer

__all__ = ("RNN",)

_FN = "rnnjax.interop.equinox.RNN"


def _check_module(module: Any) -> Cell | Layer:
  if isinstance(module, (Cell, Layer)):
    return module
  raise TypeError(
      f"{_FN}: `module` must be an rnnjax.Cell or rnnjax.Layer (e.g. rnnjax.lstm(64), "
      f"rnnjax.stack([...]) or rnnjax.bidirectional(...)), got {type(module).__name__}.")


def _check_xs(xs: Any, input_size: int) -> None:
  """`xs: [T, *batch, I]` with `I = input_size`; the message quotes the shape as given."""
  shape = getattr(xs, "shape", None)
  if shape is None:
    raise TypeError(f"{_FN}: `xs` must be an array of shape [T, I] or [T, B, I] (time first), "
                    f"got {type(xs).__name__}.")
  if len(shape) < 2:
    raise ValueError(
        f"{_FN}: `xs` must have rank >= 2 with shape [T, I] or [T, B, I] (time first, "
        f"features last), got xs.shape={tuple(shape)}. A single step of a single example is "
        "a sequence of length 1: pass xs[None].")
  if shape[-1] != input_size:
    raise ValueError(
        f"{_FN}: xs has feature size {shape[-1]} but the module was made for "
        f"input_size={input_size} (xs.shape={tuple(shape)}). Check that the last axis of xs "
        "holds the features, or build the module with the right input_size.")


class RNN(eqx.Module):
  """An rnnjax `Cell` or `Layer` with its params, as an `eqx.Module`.

  The field `params` is the rnnjax params pytree, exactly what
  `module.init(key, input_size)` returns (an `LSTMParams`, a tuple for a stack, a
  `BidirectionalParams`, ...); its arrays are the module's leaves, so
  `eqx.filter(model, eqx.is_array)`, `eqx.partition`, `eqx.filter_grad` and
  `eqx.tree_serialise_leaves` see every weight. `module` and `input_size` are
  static fields. The model computes exactly what
  `rnnjax.unroll(module, model.params, xs, ...)` (a `Cell`) or
  `module.apply(model.params, xs, ...)` (a `Layer`) computes.

  To put existing params in, use `eqx.tree_at(lambda m: m.params, model, params)`.
  For `reverse`, `unroll` or `remat`, wrap the cell in `rnnjax.rnn(cell, ...)`.

  Attributes:
    params: the rnnjax params pytree (arrays).
    module: the rnnjax `Cell` (run with `rnnjax.unroll`) or `Layer` (run with its
      `apply`); static.
    input_size: the feature size `I` of the inputs; static.

  Examples:
    >>> import equinox as eqx, jax, jax.numpy as jnp, rnnjax
    >>> from rnnjax.interop.equinox import RNN
    >>> model = RNN(rnnjax.lstm(8), input_size=3, key=jax.random.key(0))
    >>> ys, carry = model(jnp.ones((12, 4, 3)), lengths=jnp.array([12, 7, 1, 12]))
    >>> ys.shape, carry.h.shape                                  # [T, B, H], [B, H]
    ((12, 4, 8), (4, 8))
    >>> ys, carry = jax.vmap(model)(jnp.ones((4, 12, 3)))        # vmapped [T, I] examples
    >>> ys.shape
    (4, 12, 8)
    >>> len(jax.tree.leaves(eqx.filter(model, eqx.is_array)))    # w_i, w_h, b_i, b_h
    4
  """

  params: Any
  module: Cell | Layer = eqx.field(static=True)
  input_size: int = eqx.field(static=True)

  def __init__(self, module: Cell | Layer, input_size: int, *, key: jax.Array):
    """Builds the module and draws its params with `module.init(key, input_size)`.

    Args:
      module: an rnnjax `Cell` (a built-in cell or a `stack` of cells) or `Layer`
        (`rnnjax.rnn`, `rnnjax.bidirectional`, a `stack` holding layers).
      input_size: `I`, the feature size of the inputs.
      key: a PRNG key (`jax.random.key(seed)`) for the params (keyword only).
    """
    self.module = _check_module(module)
    self.input_size = checks.positive_int(_FN, "input_size", input_size)
    self.params = module.init(checks.key(_FN, "key", key), self.input_size)

  def __call__(self, xs: jax.Array, carry: Any = None, *, lengths: jax.Array | None = None,
               resets: jax.Array | None = None,
               key: jax.Array | None = None) -> tuple[jax.Array, Any]:
    """Runs the module over the time axis of `xs` (time-major, as `rnnjax.unroll`).

    Args:
      xs: `[T, I]` (one sequence, as an Equinox model under `jax.vmap` sees it) or
        `[T, B, I]` (any batch axes between time and features), time first.
      carry: the carry before the first step, leaves `[*batch, ...]` (see
        `initial_carry`); None means the initial carry (zeros for the built-in cells).
      lengths: optional integer `[*batch]` (a scalar for `[T, I]`), the valid steps of
        each sequence. Padded steps give zero outputs and leave the carry unchanged.
      resets: optional bool `[T, *batch]`: True where a new segment starts.
      key: a PRNG key for the module's randomness (dropout between the layers of a
        `stack`; keyword only). None, the default, runs it deterministically, as
        for evaluation; the built-in cells ignore it.

    Returns:
      `(ys, final_carry)`: `ys: [T, *batch, O]` and the carry after each sequence's
      last valid step.
    """
    _check_xs(xs, self.input_size)
    checks.key(_FN, "key", key, optional=True)
    if isinstance(self.module, Cell):
      return unroll_lib.unroll(self.module, self.params, xs, carry, lengths=lengths,
                               resets=resets, key=key)
    return self.module.apply(self.params, xs, carry, lengths=lengths, resets=resets, key=key)

  def initial_carry(self, batch_shape: tuple[int, ...] = ()) -> Any:
    """The carry before the first step for inputs `[T, *batch_shape, I]` (zeros for built-ins).

    Args:
      batch_shape: the batch axes, `()` for one sequence `[T, I]`, `(B,)` for `[T, B, I]`.
    """
    fn = f"{_FN}.initial_carry"
    return self.module.initial_carry(self.params, checks.batch_shape(fn, batch_shape))
