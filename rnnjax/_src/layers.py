"""Layers: sequence-to-sequence functions built from cells and the engine.

A `Layer` is to a whole sequence what a `Cell` is to one step. `rnn(cell)`
makes one from a cell, `bidirectional` runs two cells in opposite directions,
and `stack` composes cells (into a `Cell`) or layers (into a `Layer`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks, engines
from rnnjax._src import unroll as unroll_lib

Cell = cell_lib.Cell


class _LayerFields(NamedTuple):
  init: Callable[[jax.Array, int], Any]
  initial_carry: Callable[..., Any]
  apply: Callable[..., tuple[Any, Any]]
  input_size: Callable[[Any], int | None] | None = None


class Layer(cell_lib.Identified, _LayerFields):
  """A recurrent layer over whole sequences, as pure functions.

  A `NamedTuple` `Layer(init, initial_carry, apply, input_size=None)`. The
  layers that `rnn`, `stack` and `bidirectional` build print as that call and
  compare and hash by it, as the built-in cells do (see `rnnjax.Cell`).

  Attributes:
    init: `init(key, input_size) -> params`.
    initial_carry: `initial_carry(params, batch_shape=()) -> carry`.
    apply: `apply(params, xs, carry=None, *, lengths=None, resets=None, key=None,
      time_major=True) -> (ys, final_carry)`, with `xs: [T, ..., I]` (`[..., T, I]`
      with `time_major=False`) and the semantics of `rnnjax.unroll`. Layers built by
      `rnn`, `stack` and `bidirectional` take `time_major`; your own may omit it.
    input_size: optional `input_size(params) -> int`.
  """


class BidirectionalParams(NamedTuple):
  forward: Any  # params of the forward cell
  backward: Any  # params of the backward cell


class BidirectionalState(NamedTuple):
  forward: Any  # carry of the forward cell, [..., *state]
  backward: Any  # carry of the backward cell, [..., *state]; after its last processed step


def _input_size(module: Cell | Layer, params: Any) -> int | None:
  return module.input_size(params) if module.input_size is not None else None


def output_size(module: Cell | Layer, params: Any, input_size: int) -> int:
  """The output feature size of a `Cell` or `Layer` for inputs of `input_size`."""
  if isinstance(module, Cell):
    return cell_lib.output_size(module, params, input_size)
  dtype = jax.tree_util.tree_leaves(params)[0].dtype
  xs = jax.ShapeDtypeStruct((1, input_size), dtype)
  ys, _ = jax.eval_shape(lambda p, x: module.apply(p, x), params, xs)
  return int(ys.shape[-1])


@cell_lib.factory
def rnn(cell: Cell, *, reverse: bool = False, unroll: int | bool = 1,
        remat: int | bool = False) -> Layer:
  """A `Layer` that runs `cell` over time with `rnnjax.unroll` (like Flax's `nn.RNN`).

  Args:
    cell: the cell to run.
    reverse: run each sequence backwards over its valid steps (as in `rnnjax.unroll`).
    unroll: steps unrolled per loop iteration (as in `rnnjax.unroll`).
    remat: rematerialise each step in the backward pass (as in `rnnjax.unroll`).

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> layer = rnnjax.rnn(rnnjax.gru(8))
    >>> params = layer.init(jax.random.key(0), input_size=3)
    >>> ys, carry = layer.apply(params, jnp.ones((10, 2, 3)), lengths=jnp.array([10, 4]))
    >>> ys.shape
    (10, 2, 8)
  """
  if not isinstance(cell, Cell):
    raise TypeError(f"rnnjax.rnn: `cell` must be an rnnjax.Cell, got {type(cell).__name__}.")

  def apply(params, xs, carry=None, *, lengths=None, resets=None, key=None, time_major=True):
    return unroll_lib.unroll(cell, params, xs, carry, lengths=lengths, resets=resets,
                             reverse=reverse, unroll=unroll, remat=remat, key=key,
                             time_major=time_major)

  return Layer(cell.init, cell.initial_carry, apply, input_size=cell.input_size)


def _dropout(key: jax.Array, rate: float, y: jax.Array, *, last: bool = False) -> jax.Array:
  """Dropout between layers: the identity after the last layer, without a key, or at rate 0."""
  if key is None or rate == 0.0 or last:
    return y
  keep = jax.random.bernoulli(key, 1.0 - rate, y.shape)
  return jnp.where(keep, y / (1.0 - rate), jnp.zeros_like(y))


def _check_layer_carries(fn: str, carry: Any, n: int) -> None:
  """A stack's carry: a tuple (or list) with one carry per layer."""
  if not isinstance(carry, (tuple, list)) or hasattr(carry, "_fields") or len(carry) != n:
    got = (f"a {type(carry).__name__} of length {len(carry)}"
           if isinstance(carry, (tuple, list)) else type(carry).__name__)
    raise TypeError(
        f"{fn}: `carry` must be a tuple with one carry per layer ({n} layers), got "
        f"{got}. Build it with `layer.initial_carry(params, batch_shape)`.")


def _check_layers(fn: str, layers: Any) -> tuple[Cell | Layer, ...]:
  """`stack`'s `layers` as a tuple: a non-empty sequence of cells and layers."""
  if isinstance(layers, (Cell, Layer)) or not hasattr(layers, "__iter__"):
    raise TypeError(
        f"{fn}: `layers` must be a sequence (list or tuple) of cells or layers, got "
        f"{type(layers).__name__}. Wrap a single one in a list: rnnjax.stack([cell]).")
  layers = tuple(layers)
  if not layers:
    raise ValueError(f"{fn}: `layers` must hold at least one cell or layer, got an empty sequence.")
  for i, layer in enumerate(layers):
    if not isinstance(layer, (Cell, Layer)):
      raise TypeError(
          f"{fn}: `layers[{i}]` must be an rnnjax.Cell or rnnjax.Layer, got "
          f"{type(layer).__name__}.")
  return layers


def _layer_keys(fn: str, key: jax.Array | None, n: int) -> tuple[list, list]:
  """Keys for each layer's `apply` and for the dropout after it; all None without `key`."""
  if checks.key(fn, "key", key, optional=True) is None:
    return [None] * n, [None] * n
  ks = jax.random.split(key, 2 * n)
  return list(ks[:n]), list(ks[n:])


def _stack_parts(fn: str, layers: tuple[Cell | Layer, ...]) -> tuple[Callable, ...]:
  """`init`, `initial_carry` and `input_size` of a stack: tuples with one entry per layer."""
  n = len(layers)

  def init(key: jax.Array, input_size: int) -> tuple[Any, ...]:
    checks.key(f"{fn}.init", "key", key)
    size = checks.positive_int(f"{fn}.init", "input_size", input_size)
    params = []
    for layer, k in zip(layers, jax.random.split(key, n), strict=True):
      p = layer.init(k, size)
      params.append(p)
      size = output_size(layer, p, size)
    return tuple(params)

  def initial_carry(params: tuple[Any, ...], batch_shape: tuple[int, ...] = ()) -> tuple:
    checks.sequence_params(f"{fn}.initial_carry", params, n)
    batch_shape = checks.batch_shape(f"{fn}.initial_carry", batch_shape)
    return tuple(layer.initial_carry(p, batch_shape)
                 for layer, p in zip(layers, params, strict=True))

  def input_size(params):
    checks.sequence_params(fn, params, n)
    return _input_size(layers[0], params[0])

  return init, initial_carry, input_size


def _stack_step(fn: str, cells: tuple[Cell, ...], rate: float,
                initial_carry: Callable) -> Callable:
  """The `apply` of a stack of cells: one step of every layer, bottom to top."""
  n = len(cells)

  def apply(params, carry, x, *, key=None):
    checks.sequence_params(f"{fn}.apply", params, n)
    _check_layer_carries(f"{fn}.apply", carry, n)
    carry = tuple(carry)
    checks.step_carry(f"{fn}.apply", carry,
                      jax.eval_shape(lambda p: initial_carry(p, ()), params))
    apply_keys, drop_keys = _layer_keys(f"{fn}.apply", key, n)
    new_carry = []
    for i, (cell, p, c) in enumerate(zip(cells, params, carry, strict=True)):
      k = apply_keys[i]
      c, x = cell.apply(p, c, x) if k is None else cell.apply(p, c, x, key=k)
      new_carry.append(c)
      x = _dropout(drop_keys[i], rate, x, last=i == n - 1)
    return tuple(new_carry), x

  return apply


def _stack_sequence(fn: str, layers: tuple[Layer, ...], rate: float) -> Callable:
  """The `apply` of a stack of layers: each layer over the whole sequence, bottom to top."""
  n = len(layers)

  def apply(params, xs, carry=None, *, lengths=None, resets=None, key=None, time_major=True):
    checks.sequence_params(f"{fn}.apply", params, n)
    if not checks.boolean(f"{fn}.apply", "time_major", time_major):
      # Checked as given (messages quote the caller's shapes), then run time-major.
      xs_t, lengths, resets = unroll_lib.batch_major_input(
          f"{fn}.apply", xs, _input_size(layers[0], params[0]), lengths, resets)
      ys, carry = apply(params, xs_t, carry, lengths=lengths, resets=resets, key=key)
      return unroll_lib.from_time_major(ys, len(xs.shape) - 2), carry
    if carry is None:
      carry = (None,) * n
    else:
      _check_layer_carries(f"{fn}.apply", carry, n)
    apply_keys, drop_keys = _layer_keys(f"{fn}.apply", key, n)
    new_carry = []
    for i, (layer, p, c) in enumerate(zip(layers, params, carry, strict=True)):
      xs, c = layer.apply(p, xs, c, lengths=lengths, resets=resets, key=apply_keys[i])
      new_carry.append(c)
      xs = _dropout(drop_keys[i], rate, xs, last=i == n - 1)
    return xs, tuple(new_carry)

  return apply


@cell_lib.factory
def stack(layers: Sequence[Cell | Layer], *, dropout: float = 0.0) -> Cell | Layer:
  """Composes cells or layers, each feeding its outputs to the next (PyTorch's `num_layers`).

  A stack of cells is itself a `Cell` (one step runs every layer), so it works
  wherever a cell does: `unroll`, `rnn`, `bidirectional`, or another `stack`. A
  stack that holds any `Layer` (for example a `bidirectional` one) is a `Layer`
  that runs one layer after another over the whole sequence; cells in it are run
  with `rnn(cell)`. Params and carries are tuples with one entry per layer.

  Dropout is applied to the outputs of every layer but the last, as in
  PyTorch's `nn.LSTM(dropout=...)`, with a fresh mask per step. It is active
  only when a `key` is passed to `apply` (or to `unroll`); without a key the
  stack is deterministic, which is what evaluation wants.

  Args:
    layers: a non-empty sequence of `Cell`s and/or `Layer`s.
    dropout: the drop probability between layers, in `[0, 1)`.

  Returns:
    A `Cell` if every entry is a `Cell`, else a `Layer`.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> cell = rnnjax.stack([rnnjax.lstm(16), rnnjax.lstm(8)], dropout=0.1)
    >>> params = cell.init(jax.random.key(0), input_size=4)
    >>> xs = jnp.ones((12, 3, 4))
    >>> ys, carry = rnnjax.unroll(cell, params, xs, key=jax.random.key(1))   # training
    >>> ys, carry = rnnjax.unroll(cell, params, xs)                          # evaluation
    >>> ys.shape, len(carry)
    ((12, 3, 8), 2)
  """
  fn = "rnnjax.stack"
  layers = _check_layers(fn, layers)
  rate = checks.probability(fn, "dropout", dropout)
  if all(isinstance(layer, Cell) for layer in layers):
    init, initial_carry, input_size = _stack_parts(fn, layers)
    apply = _stack_step(fn, layers, rate, initial_carry)
    # The layers' own fast paths run one layer after another (`engines.sequence_kernel`,
    # `engines.linear_layers`).
    paths = engines.FastPaths(apply, layers=tuple(layers), dropout=rate)
    return Cell(init, initial_carry, apply, input_size=input_size, paths=paths)
  layers = tuple(rnn(layer) if isinstance(layer, Cell) else layer for layer in layers)
  init, initial_carry, input_size = _stack_parts(fn, layers)
  return Layer(init, initial_carry, _stack_sequence(fn, layers, rate), input_size=input_size)


@cell_lib.factory
def bidirectional(forward: Cell, backward: Cell, *, merge: str = "concat",
                  unroll: int | bool = 1, remat: int | bool = False) -> Layer:
  """Runs `forward` over each sequence and `backward` over it reversed, and merges the outputs.

  The backward cell runs over each sequence's valid steps only (see `unroll`'s
  `reverse`), so with `lengths` its first step is the last valid input and its
  outputs are aligned with the inputs; padded outputs are zero.

  Args:
    forward: the cell run from `t = 0`.
    backward: the cell run from each sequence's last valid step.
    merge: `"concat"` (`ys: [T, ..., O_f + O_b]`, forward features first, as
      PyTorch's `bidirectional=True`) or `"sum"` (`O_f` must equal `O_b`).
    unroll: steps unrolled per loop iteration, for both directions (as in `rnnjax.unroll`).
    remat: rematerialise each step in the backward pass, for both directions (as in
      `rnnjax.unroll`).

  Returns:
    A `Layer` with `BidirectionalParams` and carry `BidirectionalState`.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> layer = rnnjax.bidirectional(rnnjax.lstm(8), rnnjax.lstm(8))
    >>> params = layer.init(jax.random.key(0), input_size=3)
    >>> ys, carry = layer.apply(params, jnp.ones((10, 2, 3)), lengths=jnp.array([10, 6]))
    >>> ys.shape
    (10, 2, 16)
  """
  fn = "rnnjax.bidirectional"
  for name, cell in (("forward", forward), ("backward", backward)):
    if not isinstance(cell, Cell):
      raise TypeError(f"{fn}: `{name}` must be an rnnjax.Cell, got {type(cell).__name__}.")
  checks.choice(fn, "merge", merge, ("concat", "sum"))

  def init(key: jax.Array, input_size: int) -> BidirectionalParams:
    checks.key(f"{fn}.init", "key", key)
    input_size = checks.positive_int(f"{fn}.init", "input_size", input_size)
    k_f, k_b = jax.random.split(key)
    params = BidirectionalParams(forward.init(k_f, input_size), backward.init(k_b, input_size))
    if merge == "sum":
      o_f = cell_lib.output_size(forward, params.forward, input_size)
      o_b = cell_lib.output_size(backward, params.backward, input_size)
      if o_f != o_b:
        raise ValueError(
            f"{fn}: merge='sum' needs equal output sizes, got forward={o_f} and "
            f"backward={o_b}. Use merge='concat' or cells of the same size.")
    return params

  def initial_carry(params: BidirectionalParams, batch_shape: tuple[int, ...] = ()):
    checks.params(f"{fn}.initial_carry", params, BidirectionalParams, made_by=fn)
    batch_shape = checks.batch_shape(f"{fn}.initial_carry", batch_shape)
    return BidirectionalState(forward.initial_carry(params.forward, batch_shape),
                              backward.initial_carry(params.backward, batch_shape))

  def apply(params, xs, carry=None, *, lengths=None, resets=None, key=None, time_major=True):
    checks.params(f"{fn}.apply", params, BidirectionalParams, made_by=fn)
    checks.key(f"{fn}.apply", "key", key, optional=True)
    if carry is None:
      carry = BidirectionalState(None, None)
    elif not isinstance(carry, BidirectionalState):
      raise TypeError(
          f"{fn}.apply: `carry` must be a BidirectionalState(forward, backward), got "
          f"{type(carry).__name__}. Build it with `layer.initial_carry(params, batch_shape)`.")
    k_f, k_b = (None, None) if key is None else jax.random.split(key)
    opts = dict(lengths=lengths, resets=resets, unroll=unroll, remat=remat,
                time_major=time_major)
    ys_f, c_f = unroll_lib.unroll(forward, params.forward, xs, carry.forward, key=k_f, **opts)
    ys_b, c_b = unroll_lib.unroll(backward, params.backward, xs, carry.backward, key=k_b,
                                  reverse=True, **opts)
    ys = jnp.concatenate([ys_f, ys_b], axis=-1) if merge == "concat" else ys_f + ys_b
    return ys, BidirectionalState(c_f, c_b)

  def input_size(params):
    checks.params(fn, params, BidirectionalParams, made_by=fn)
    return _input_size(forward, params.forward)

  return Layer(init, initial_carry, apply, input_size=input_size)
