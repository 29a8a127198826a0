"""rnnjax cells and layers as Flax modules: `RNN` for `flax.linen`, `NNXRNN` for `flax.nnx`.

Both wrap any rnnjax `Cell` (a built-in cell or a `stack` of cells) or `Layer`
(`rnnjax.rnn`, `bidirectional`, a `stack` holding layers) and run it over whole
sequences, with the calling convention of Flax's own `RNN`: batch-major inputs
`[*batch, T, I]` by default (`time_major=True` for `[T, *batch, I]`),
`seq_lengths` for padded batches, and `return_carry=True` for
`(final_carry, outputs)` (carry first, as in Flax; rnnjax's own functions return
`(ys, carry)`). Unlike Flax, the carry is an argument and a result only: it is
never stored in the module.

The params are the rnnjax params pytree, unchanged, registered the Flax way: in
linen, one param named `"cell"` (`variables["params"]["cell"]` is exactly what
`module.init(key, input_size)` returns); in nnx, the attribute `cell`, the same
pytree with each array an `nnx.Param`, so `nnx.state(model, nnx.Param)` and
`nnx.Optimizer` see every weight. The wrapped layer computes exactly what
`rnnjax.unroll(cell, params, xs)` (or `layer.apply(params, xs)`) computes with
those params.

Options of the engine (`reverse`, `unroll`, `remat`) belong to the rnnjax side:
wrap `rnnjax.rnn(cell, reverse=True, remat=True)` rather than the bare cell.

See `RNN` and `NNXRNN` for examples, and `examples/flax_model.py` for a model trained
both through `rnnjax.fit` and through plain Optax.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from rnnjax._src import checks
from rnnjax._src import unroll as unroll_lib
from rnnjax._src.cell import Cell
from rnnjax._src.layers import Layer, rnn

__all__ = ("NNXRNN", "RNN")


def _as_layer(fn: str, module: Any) -> Layer:
  """`module` as a `Layer` (a `Cell` runs through `rnnjax.rnn`, i.e. `rnnjax.unroll`)."""
  if isinstance(module, Cell):
    return rnn(module)
  if isinstance(module, Layer):
    return module
  raise TypeError(
      f"{fn}: `module` must be an rnnjax.Cell or rnnjax.Layer (e.g. rnnjax.lstm(64), "
      f"rnnjax.stack([...]) or rnnjax.bidirectional(...)), got {type(module).__name__}.")


def _first(*values: Any) -> Any:
  """The first of `values` that is not None (the last one if all are None)."""
  for value in values[:-1]:
    if value is not None:
      return value
  return values[-1]


def _run(fn: str, layer: Layer, params: Any, inputs: Any, *, carry: Any, seq_lengths: Any,
         resets: Any, time_major: bool, key: jax.Array | None) -> tuple[Any, Any]:
  """`layer.apply` on Flax's layout; returns `(ys, final_carry)` with `ys` in the inputs' layout."""
  shape = getattr(inputs, "shape", None)
  layout = "[T, *batch, I] (time_major=True)" if time_major else "[*batch, T, I] (time_major=False)"
  if shape is None:
    raise TypeError(f"{fn}: `inputs` must be an array of shape {layout}, got "
                    f"{type(inputs).__name__}.")
  if len(shape) < 2:
    raise ValueError(
        f"{fn}: `inputs` must have rank >= 2 with shape {layout}, got inputs.shape="
        f"{tuple(shape)}. A single sequence without batch has shape [T, I].")
  if resets is not None:
    got = tuple(getattr(resets, "shape", jnp.shape(resets)))
    if got != tuple(shape[:-1]):
      want = "[T, *batch]" if time_major else "[*batch, T]"
      hint = checks.layout_hint("resets", got, tuple(shape), time_major, xs_name="inputs")
      raise ValueError(
          f"{fn}: `resets` must have the shape of inputs without the feature axis, {want} = "
          f"{tuple(shape[:-1])}, got resets.shape={got}.{hint}")
  xs = inputs
  if not time_major:  # Checked as given (messages quote the caller's shapes), then transposed.
    in_size = layer.input_size(params) if layer.input_size is not None else None
    xs, seq_lengths, resets = unroll_lib.batch_major_input(
        fn, inputs, in_size, seq_lengths, resets, xs_name="inputs", lengths_name="seq_lengths")
  kwargs = {name: value for name, value in
            (("lengths", seq_lengths), ("resets", resets), ("key", key)) if value is not None}
  ys, carry = layer.apply(params, xs, carry, **kwargs)
  if not time_major:
    ys = jax.tree_util.tree_map(lambda y: jnp.moveaxis(y, 0, -2), ys)
  return ys, carry


class RNN(nn.Module):
  """An rnnjax `Cell` or `Layer` as a `flax.linen` module (Flax's `nn.RNN` convention).

  The params are created at `init` from the inputs' feature size, as one param
  named `"cell"`: `variables["params"]["cell"]` is the rnnjax params pytree of
  `module.init(key, input_size)`, so it can be read, written and passed to
  `rnnjax.unroll` / `layer.apply` as it is.

  Dropout between the layers of a `stack` is active only with
  `deterministic=False`; its key comes from the `rng_collection` rng (pass
  `rngs={"dropout": key}` to `apply`). By default the module is deterministic.

  Attributes:
    module: the rnnjax `Cell` (run with `rnnjax.unroll`) or `Layer` (run with its
      `apply`). For `reverse`, `unroll` or `remat`, wrap the cell in `rnnjax.rnn`.
    time_major: inputs and outputs are `[T, *batch, F]` if True, else `[*batch, T, F]`.
    return_carry: return `(final_carry, outputs)` instead of `outputs`.
    deterministic: False turns on the module's randomness (dropout in a stack);
      None (the default) means True.
    rng_collection: the rng stream that dropout keys come from.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> from rnnjax.interop.flax import RNN
    >>> layer = RNN(rnnjax.lstm(8))
    >>> xs = jnp.ones((4, 12, 3))                                # [B, T, I]
    >>> variables = layer.init(jax.random.key(0), xs)
    >>> type(variables["params"]["cell"]).__name__
    'LSTMParams'
    >>> carry, ys = layer.apply(variables, xs, seq_lengths=jnp.array([12, 7, 1, 12]),
    ...                         return_carry=True)
    >>> ys.shape, carry.h.shape
    ((4, 12, 8), (4, 8))
  """

  module: Cell | Layer
  time_major: bool = False
  return_carry: bool = False
  deterministic: bool | None = None
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, inputs: jax.Array, *, initial_carry: Any = None,
               seq_lengths: jax.Array | None = None, resets: jax.Array | None = None,
               return_carry: bool | None = None, time_major: bool | None = None,
               deterministic: bool | None = None) -> Any:
    """Runs the module over the time axis of `inputs`.

    Args:
      inputs: `[*batch, T, I]`, or `[T, *batch, I]` if time-major.
      initial_carry: the carry before the first step, leaves `[*batch, ...]`
        (see `initial_carry`); defaults to the module's initial carry (zeros).
      seq_lengths: optional integer `[*batch]`, the valid steps of each sequence.
        Padded steps give zero outputs and leave the carry unchanged, so the final
        carry is the one after each sequence's last valid step.
      resets: optional bool `[*batch, T]` (`[T, *batch]` if time-major): True
        where a new segment starts, as in `rnnjax.unroll`.
      return_carry, time_major, deterministic: override the attributes of the same name.

    Returns:
      `outputs` (`[*batch, T, O]` or `[T, *batch, O]`), or `(final_carry, outputs)`.
    """
    fn = "rnnjax.interop.flax.RNN"
    layer = _as_layer(fn, self.module)
    time_major = _first(time_major, self.time_major)
    shape = getattr(inputs, "shape", None)
    if shape is None or len(shape) < 1:
      raise ValueError(f"{fn}: `inputs` must be an array with a trailing feature axis, got "
                       f"{type(inputs).__name__} of shape {shape}.")
    input_size = int(shape[-1])
    if self.has_variable("params", "cell") and layer.input_size is not None:
      made_for = layer.input_size(self.get_variable("params", "cell"))
      if made_for is not None and made_for != input_size:
        raise ValueError(
            f"{fn}: inputs have feature size {input_size} but the params were made for "
            f"input_size={made_for} (inputs.shape={tuple(shape)}). Check that the last axis "
            "holds the features, or re-run `init` with inputs of the right size.")
    params = self.param("cell", lambda key: layer.init(key, input_size))
    key = None
    if not _first(deterministic, self.deterministic, True):
      key = self.make_rng(self.rng_collection)
    ys, carry = _run(fn, layer, params, inputs, carry=initial_carry, seq_lengths=seq_lengths,
                     resets=resets, time_major=time_major, key=key)
    return (carry, ys) if _first(return_carry, self.return_carry) else ys

  def initial_carry(self, batch_shape: tuple[int, ...] = ()) -> Any:
    """The module's initial carry for `batch_shape`, from the bound params.

    Call it through `apply`: `rnn.apply(variables, (B,), method="initial_carry")`.
    """
    if self.scope is None or not self.has_variable("params", "cell"):
      raise ValueError(
          "rnnjax.interop.flax.RNN.initial_carry: no params; call it on a bound module, e.g. "
          "`rnn.apply(variables, (batch_size,), method='initial_carry')`.")
    fn = "rnnjax.interop.flax.RNN.initial_carry"
    layer = _as_layer(fn, self.module)
    return layer.initial_carry(self.get_variable("params", "cell"),
                               checks.batch_shape(fn, batch_shape))


def _is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


class NNXRNN(nnx.Module):
  """An rnnjax `Cell` or `Layer` as a `flax.nnx` module (Flax's `nnx.RNN` convention).

  The attribute `cell` holds the rnnjax params pytree of
  `module.init(rngs.params(), input_size)` with every array an `nnx.Param`, so
  `nnx.state(model, nnx.Param)`, `nnx.grad` and `nnx.Optimizer` see them all;
  `rnnjax_params()` gives the plain pytree for `rnnjax.unroll` / `layer.apply`.

  Dropout between the layers of a `stack` follows `nnx.Dropout`: it is active
  while `deterministic` is False (the default, and after `model.train()`), and
  off after `model.eval()` or `nnx.view(model, deterministic=True)`. Its keys come
  from the `rng_collection` stream of `rngs` (or the default stream), forked at
  construction, or from `rngs=` at call time. For cells without randomness
  (every built-in cell) the key changes nothing, but drawing it still advances
  the stream, as `nnx.Dropout` and `nnx.RNN` do: call the model under
  `nnx.jit` / `nnx.grad` or after `nnx.merge` (not captured by a plain `jax.jit`
  closure), or pass `deterministic=True` for a module without dropout.

  Args:
    module: the rnnjax `Cell` (run with `rnnjax.unroll`) or `Layer` (run with its
      `apply`). For `reverse`, `unroll` or `remat`, wrap the cell in `rnnjax.rnn`.
    input_size: the feature size `I` of the inputs.
    rngs: `nnx.Rngs`; its `params` stream initializes the weights.
    time_major: inputs and outputs are `[T, *batch, F]` if True, else `[*batch, T, F]`.
    return_carry: return `(final_carry, outputs)` instead of `outputs`.
    deterministic: True turns the module's randomness (dropout in a stack) off.
    rng_collection: the rng stream that dropout keys come from.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> from flax import nnx
    >>> from rnnjax.interop.flax import NNXRNN
    >>> model = NNXRNN(rnnjax.stack([rnnjax.lstm(8), rnnjax.lstm(8)], dropout=0.1),
    ...                input_size=3, rngs=nnx.Rngs(0))
    >>> model.eval()                                             # no dropout
    >>> model(jnp.ones((4, 12, 3)), seq_lengths=jnp.array([12, 7, 1, 12])).shape
    (4, 12, 8)
    >>> len(jax.tree.leaves(nnx.state(model, nnx.Param)))        # 4 arrays per LSTM
    8
  """

  def __init__(self, module: Cell | Layer, input_size: int, *, rngs: nnx.Rngs,
               time_major: bool = False, return_carry: bool = False,
               deterministic: bool = False, rng_collection: str = "dropout"):
    fn = "rnnjax.interop.flax.NNXRNN"
    layer = _as_layer(fn, module)
    input_size = checks.positive_int(fn, "input_size", input_size)
    if not isinstance(rngs, nnx.Rngs):
      raise TypeError(f"{fn}: `rngs` must be an nnx.Rngs (e.g. nnx.Rngs(0)), got "
                      f"{type(rngs).__name__}.")
    self.module = module
    self.time_major = time_major
    self.return_carry = return_carry
    self.deterministic = deterministic
    self.rng_collection = rng_collection
    self.cell = nnx.data(jax.tree_util.tree_map(nnx.Param, layer.init(rngs.params(), input_size)))
    try:
      self.rngs = rngs[rng_collection].fork()
    except KeyError:  # Neither that stream nor a default one: only deterministic calls work.
      self.rngs = nnx.data(None)

  def rnnjax_params(self) -> Any:
    """The params as a plain rnnjax pytree of arrays (for `rnnjax.unroll` / `layer.apply`)."""
    return jax.tree_util.tree_map(lambda v: v[...], self.cell, is_leaf=_is_variable)

  def initial_carry(self, batch_shape: tuple[int, ...] = ()) -> Any:
    """The module's initial carry for `batch_shape` (all zeros for the built-in cells)."""
    fn = "rnnjax.interop.flax.NNXRNN.initial_carry"
    layer = _as_layer(fn, self.module)
    return layer.initial_carry(self.rnnjax_params(), checks.batch_shape(fn, batch_shape))

  def set_view(self, deterministic: bool | None = None) -> None:
    """Used by `nnx.view(model, deterministic=...)`."""
    if deterministic is not None:
      self.deterministic = deterministic

  def __call__(self, inputs: jax.Array, *, initial_carry: Any = None,
               seq_lengths: jax.Array | None = None, resets: jax.Array | None = None,
               return_carry: bool | None = None, time_major: bool | None = None,
               deterministic: bool | None = None,
               rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None) -> Any:
    """Runs the module over the time axis of `inputs`.

    Args:
      inputs: `[*batch, T, I]`, or `[T, *batch, I]` if time-major.
      initial_carry: the carry before the first step, leaves `[*batch, ...]`
        (see `initial_carry`); defaults to the module's initial carry (zeros).
      seq_lengths: optional integer `[*batch]`, the valid steps of each sequence.
        Padded steps give zero outputs and leave the carry unchanged, so the final
        carry is the one after each sequence's last valid step.
      resets: optional bool `[*batch, T]` (`[T, *batch]` if time-major): True
        where a new segment starts, as in `rnnjax.unroll`.
      return_carry, time_major, deterministic: override the attributes of the same name.
      rngs: a key, `nnx.RngStream` or `nnx.Rngs` for dropout, used instead of the
        stream stored at construction.

    Returns:
      `outputs` (`[*batch, T, O]` or `[T, *batch, O]`), or `(final_carry, outputs)`.
    """
    fn = "rnnjax.interop.flax.NNXRNN"
    layer = _as_layer(fn, self.module)
    key = None
    if not _first(deterministic, self.deterministic, False):
      source = _first(rngs, self.rngs, None)
      if source is None:
        raise ValueError(
            f"{fn}: `deterministic` is False but there is no rng stream for dropout: the "
            f"`rngs` given at construction had neither a {self.rng_collection!r} nor a default "
            "stream. Pass `rngs=` to the call, or use `deterministic=True` / `model.eval()`.")
      if isinstance(source, nnx.Rngs):
        key = source[self.rng_collection]()
      elif isinstance(source, nnx.RngStream):
        key = source()
      else:
        key = source
    ys, carry = _run(fn, layer, self.rnnjax_params(), inputs, carry=initial_carry,
                     seq_lengths=seq_lengths, resets=resets,
                     time_major=_first(time_major, self.time_major), key=key)
    return (carry, ys) if _first(return_carry, self.return_carry) else ys
