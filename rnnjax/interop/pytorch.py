"""PyTorch weights: `nn.RNN`, `nn.LSTM` and `nn.GRU` state dicts to and from rnnjax params.

Also the modules themselves (`from_torch(module)` reads the mode from it), and
`nn.RNNCell`, `nn.LSTMCell` and `nn.GRUCell`, which become rnnjax cells.

The conversion works on plain arrays, so torch is needed neither to import this
module nor to run a converted model: a `state_dict` may hold numpy arrays (for
example saved with `np.savez`) or torch tensors, which are read with
`np.asarray(t.detach().cpu())` without importing torch.

`from_torch` returns a `Layer` and its params (a cell and its params for the
state_dict of a PyTorch cell); run it with
`ys, carry = layer.apply(params, xs, carry, lengths=lengths)`, where `xs` is time
first, `[T, B, I]`, as PyTorch's default `batch_first=False`. The layer is
built from the public pieces, as one would write it by hand:

==============================  ========================================  =====================
PyTorch module                  rnnjax layer                              params
==============================  ========================================  =====================
1 layer                         `rnn(cell)`                               the cell's params
1 layer, bidirectional          `bidirectional(cell, cell)`               `BidirectionalParams`
`num_layers=L`                  `rnn(stack([cell] * L))`                  tuple (per layer)
`num_layers=L`, bidirectional   `stack([bidirectional(cell, cell)] * L)`  tuple (per layer)
==============================  ========================================  =====================

with `cell` = `lstm(H, proj_size=P, use_bias=bias)`, `gru(H, use_bias=bias)` or
`elman(H, nonlinearity="tanh"|"relu", use_bias=bias)`. A cell's params hold
`w_i = weight_ih_l{k}.T`, `w_h = weight_hh_l{k}.T`, `b_i = bias_ih_l{k}`,
`b_h = bias_hh_l{k}` and, for an LSTM with `proj_size`, `w_proj = weight_hr_l{k}.T`;
`_reverse` keys go to `BidirectionalParams.backward`.

Outputs match PyTorch's, also for padded batches: pass the lengths that went
to `nn.utils.rnn.pack_padded_sequence`; outputs past each length are zero (as
`pad_packed_sequence(..., total_length=T)` gives) and the final carry is the
state after each sequence's last valid step, the backward direction starting
at that step. `carry_from_torch` and `carry_to_torch` convert PyTorch's
`h_0` / `(h_0, c_0)` and `h_n` / `(h_n, c_n)`, `[num_layers * num_directions,
B, H]`, to and from carries; `from_batch_first` and `to_batch_first` swap the
first two axes; `apply_like_torch` does all of it and returns what the PyTorch
module returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._src import checks
from rnnjax._src.layers import Layer
from rnnjax.interop import (
    _torch_carry,
    _torch_checks,
    _torch_import,
    _torch_layout,
    _torch_module,
)

__all__ = (
    "apply_like_torch",
    "carry_from_torch",
    "carry_to_torch",
    "from_batch_first",
    "from_torch",
    "to_batch_first",
    "to_torch",
    "torch_kwargs",
)

_MODULE = "rnnjax.interop.pytorch"


def _describe(fn: str, params: Any) -> tuple[Any, list[list[Any]]]:
  """`_torch_layout.describe`, refusing head-wise params (a cell built with `heads` > 1)."""
  spec, cells = _torch_layout.describe(fn, params)
  for layer, entries in enumerate(cells):
    for d, p in enumerate(entries):
      if p.w_h.ndim != 2:
        raise ValueError(
            f"{fn}: layer {layer}{' backward' if d else ''} has a head-wise recurrent weight "
            f"(w_h.shape={tuple(p.w_h.shape)}, from a cell built with heads="
            f"{p.w_h.shape[0]}); PyTorch's nn.RNN, nn.LSTM and nn.GRU hold one dense "
            "recurrent matrix, so only cells with heads=1 (the default) convert.")
  return spec, cells


def from_torch(state_dict: Any, *, mode: str | None = None, num_layers: int | None = None,
               bidirectional: bool | None = None, bias: bool | None = None,
               proj_size: int | None = None, input_size: int | None = None,
               hidden_size: int | None = None, prefix: str = "", dtype: Any = None,
               dropout: float = 0.0) -> tuple[Any, Any]:
  """Builds the rnnjax layer and params of a PyTorch `nn.RNN`, `nn.LSTM` or `nn.GRU` (or cell).

  The structure (layers, directions, biases, projection) and the sizes are read
  from the keys and shapes of `state_dict`; the optional arguments, when given,
  are checked against what was found. Run the result with
  `ys, carry = layer.apply(params, xs, carry, lengths=lengths)`, `xs: [T, B, I]`
  time first (use `from_batch_first` for a `batch_first=True` module), or with
  `apply_like_torch`. See the module docstring for the layer built.

  The state_dict of an `nn.LSTMCell`, `nn.GRUCell` or `nn.RNNCell` (keys `weight_ih`,
  `weight_hh`, `bias_ih`, `bias_hh`, without `_l0`) gives the rnnjax cell instead of a
  layer (`lstm`, `gru` or `elman`) and its params: step it with
  `carry, h = cell.apply(params, carry, x)`, where the carry is `LSTMState(h, c)` for
  PyTorch's `(h, c)` and `HiddenState(h)` for its `h`.

  Args:
    state_dict: `module.state_dict()`, or any mapping of the same names to arrays
      (numpy arrays, torch tensors, jax arrays); or the PyTorch module itself (an
      `nn.LSTM`, `nn.GRU`, `nn.RNN`, `nn.LSTMCell`, `nn.GRUCell` or `nn.RNNCell`, or a
      subclass), whose `mode` and sizes are then read from the module.
    mode: `"LSTM"`, `"GRU"`, `"RNN_TANH"` or `"RNN_RELU"`, in any case, as PyTorch's
      `module.mode` (an `nn.RNN` with `nonlinearity="relu"` has mode `"RNN_RELU"`; an
      `nn.LSTMCell` is `"LSTM"`). Needed with a state_dict; with a module it is read
      from the module, and a `mode` given must agree.
    num_layers: optional check of the number of layers, as PyTorch's `num_layers`.
    bidirectional: optional check of the `_reverse` keys, as PyTorch's `bidirectional`.
    bias: optional check of the bias keys, as PyTorch's `bias`.
    proj_size: optional check of an LSTM's projection size, as PyTorch's `proj_size`
      (`proj_size=0`: no projection).
    input_size: optional check of the input size, as PyTorch's `input_size`.
    hidden_size: optional check of the hidden size, as PyTorch's `hidden_size`.
    prefix: the prefix of the RNN's keys in a larger model's state_dict, e.g.
      `"encoder.rnn."`. Keys without it are ignored; every key with it must belong
      to the RNN. A state_dict whose keys carry a prefix that was not given is
      refused with a message that names it.
    dtype: the dtype of the returned params; `None` keeps the arrays' dtype.
    dropout: dropout between layers, for training on (see `rnnjax.stack`); PyTorch's
      `dropout` is not in the state_dict (pass `dropout=module.dropout`). It is only
      active when `apply` gets a `key`.

  Returns:
    `(layer, params)`: an `rnnjax.Layer` and its params, jax arrays in the cells' layout;
    for a cell's state_dict, `(cell, params)` with the rnnjax cell.

  Raises:
    ValueError: keys missing or unexpected (layers, directions, biases or a
      projection the state_dict should or should not have), a shape that does not
      fit, weights of another mode, no `mode` with a state_dict, or a mode or size
      other than one given (or than the module's).
    TypeError: an argument or a value of the wrong type, or a module that is not
      one of PyTorch's RNNs (the message names the RNNs it holds).

  Examples:
    >>> import numpy as np, jax.numpy as jnp
    >>> from rnnjax.interop import pytorch
    >>> rng = np.random.default_rng(0)
    >>> sd = {"weight_ih_l0": rng.normal(size=(12, 2)).astype(np.float32),  # 3 gates x H=4
    ...       "weight_hh_l0": rng.normal(size=(12, 4)).astype(np.float32)}
    >>> layer, params = pytorch.from_torch(sd, mode="GRU")   # nn.GRU(2, 4, bias=False)
    >>> ys, carry = layer.apply(params, jnp.ones((5, 3, 2)))
    >>> ys.shape, params.w_i.shape, params.b_i
    ((5, 3, 4), (2, 12), None)
  """
  fn = f"{_MODULE}.from_torch"
  _torch_checks.check_prefix(fn, prefix)
  given = dict(
      num_layers=_torch_checks.check_size(fn, "num_layers", num_layers),
      bidirectional=_torch_checks.check_bool(fn, "bidirectional", bidirectional),
      bias=_torch_checks.check_bool(fn, "bias", bias),
      proj_size=_torch_checks.check_size(fn, "proj_size", proj_size, zero_ok=True),
      input_size=_torch_checks.check_size(fn, "input_size", input_size),
      hidden_size=_torch_checks.check_size(fn, "hidden_size", hidden_size))
  dtype = _torch_checks.check_dtype(fn, dtype)
  mode = None if mode is None else _torch_checks.mode_name(fn, mode)
  if not isinstance(state_dict, Mapping):
    state_dict, mode, given = _torch_module.read_module(fn, state_dict, mode=mode,
                                                        prefix=prefix, given=given)
  elif mode is None:
    raise ValueError(
        f"{fn}: `mode` is needed with a state_dict: PyTorch's `module.mode`, one of "
        f"{', '.join(map(repr, _torch_layout.MODES))} (an nn.LSTMCell's is 'LSTM', an "
        "nn.RNNCell's 'RNN_TANH' or 'RNN_RELU'). Or pass the module itself: "
        "`from_torch(module)` reads its mode.")

  found, cell = _torch_import.read_keys(fn, state_dict, prefix)
  structure = _torch_import.read_structure(
      fn, found, mode=mode, prefix=prefix, num_layers=given["num_layers"],
      bidirectional=given["bidirectional"], bias=given["bias"],
      proj_size=given["proj_size"], cell=cell)
  arrays = _torch_import.read_arrays(fn, state_dict, structure)
  sizes = _torch_import.infer_sizes(
      fn, structure, arrays, dtype=dtype, hidden_size=given["hidden_size"],
      input_size=given["input_size"], proj_size=given["proj_size"])
  return _torch_import.build_layer(structure, sizes, arrays, dtype=dtype, dropout=dropout)


def to_torch(params: Any, *, mode: str | None = None, prefix: str = "",
             cell: bool = False) -> dict[str, np.ndarray]:
  """The PyTorch `state_dict` of rnnjax params: the inverse of `from_torch`.

  Load it with `module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})`
  into the module `torch_kwargs(params)` describes. PyTorch's GRU is rnnjax's
  `gru(reset_after=True)` (the default), and an `nn.RNN` must be made with the
  `elman` cell's `nonlinearity`: neither is visible in the params.

  One cell's params fit both a one-layer `nn.LSTM` and an `nn.LSTMCell`, whose keys
  differ (`weight_ih_l0` against `weight_ih`), so the target is chosen with `cell`:
  the module's keys by default, the cell's with `cell=True`.

  Args:
    params: params as `from_torch` returns them (see the module docstring): a
      cell's params, `BidirectionalParams`, or a tuple of either, one per layer.
      Every layer must have the same cell, sizes, biases and projection, and each
      layer's input size must be the previous layer's output size.
    mode: optional check that the params are of this PyTorch mode (in any case).
    prefix: prepended to every key (e.g. `"rnn."`).
    cell: export for an `nn.LSTMCell`, `nn.GRUCell` or `nn.RNNCell` (keys `weight_ih`,
      `weight_hh`, `bias_ih`, `bias_hh`): `params` must be one cell's params, an
      LSTM's without projection (PyTorch's cells have none).

  Returns:
    A dict of new (writable, C-ordered) numpy arrays in PyTorch's key order and
    shapes, e.g. `weight_ih_l0 = w_i.T`, in the params' dtype (torch cannot read
    numpy's bfloat16: cast such params to float32 first).

  Examples:
    >>> import jax, rnnjax
    >>> from rnnjax.interop import pytorch
    >>> params = rnnjax.lstm(5, proj_size=3).init(jax.random.key(0), input_size=2)
    >>> {k: v.shape for k, v in pytorch.to_torch(params).items()}
    {'weight_ih_l0': (20, 2), 'weight_hh_l0': (20, 3), 'bias_ih_l0': (20,),
     'bias_hh_l0': (20,), 'weight_hr_l0': (3, 5)}
  """
  fn = f"{_MODULE}.to_torch"
  spec, cells = _describe(fn, params)
  _torch_checks.check_mode(fn, mode, spec.kind)
  _torch_checks.check_prefix(fn, prefix)
  # Checks that the layers fit together as one PyTorch module.
  _torch_layout.module_kwargs(fn, spec, cells, cell=checks.boolean(fn, "cell", cell))
  out = {}
  for layer, entries in enumerate(cells):
    for d, p in enumerate(entries):
      values = {"weight_ih": p.w_i.T, "weight_hh": p.w_h.T, "bias_ih": p.b_i,
                "bias_hh": p.b_h, "weight_hr": None if spec.kind != "LSTM" else p.w_proj}
      if values["weight_hr"] is not None:
        values["weight_hr"] = values["weight_hr"].T
      for kind in _torch_layout.KINDS:
        if values[kind] is not None:
          name = prefix + (kind if cell else _torch_layout.key_name(kind, layer, d))
          out[name] = np.array(values[kind], order="C")  # A copy.
  return out


def torch_kwargs(params: Any, *, cell: bool = False) -> dict[str, Any]:
  """The constructor arguments of the PyTorch module that `to_torch(params)` fits.

  Returns `input_size`, `hidden_size`, `num_layers`, `bias`, `bidirectional` and,
  for an LSTM, `proj_size` (0 without a projection): use them as
  `nn.LSTM(**kw, batch_first=...)`, `nn.GRU(**kw)` or `nn.RNN(**kw, nonlinearity=...)`.
  With `cell=True`, those of `to_torch(params, cell=True)`: `input_size`,
  `hidden_size` and `bias`, for `nn.LSTMCell(**kw)`, `nn.GRUCell(**kw)` or
  `nn.RNNCell(**kw, nonlinearity=...)`.

  Args:
    params: params as `from_torch` returns them, as for `to_torch`.
    cell: the arguments of PyTorch's cell (see `to_torch`), not of its module.

  Raises:
    ValueError: if the layers differ in cell, sizes, biases or projection, or a
      layer's input size is not the previous layer's output size, which a
      PyTorch module cannot express; with `cell=True`, params other than one
      cell's without projection.

  Examples:
    >>> import jax, rnnjax
    >>> from rnnjax.interop import pytorch
    >>> layer = rnnjax.stack([rnnjax.bidirectional(rnnjax.gru(4), rnnjax.gru(4))] * 2)
    >>> pytorch.torch_kwargs(layer.init(jax.random.key(0), input_size=3))
    {'input_size': 3, 'hidden_size': 4, 'num_layers': 2, 'bias': True, 'bidirectional': True}
  """
  fn = f"{_MODULE}.torch_kwargs"
  spec, cells = _describe(fn, params)
  return _torch_layout.module_kwargs(fn, spec, cells, cell=checks.boolean(fn, "cell", cell))


def carry_from_torch(params: Any, hx: Any) -> Any:
  """PyTorch's initial state `h_0` (or `(h_0, c_0)` for an LSTM) as an rnnjax carry.

  `h_0: [num_layers * num_directions, *batch, P]` and `c_0: [..., *batch, H]`, row
  `layer * num_directions + direction` for each layer and direction, as PyTorch
  orders them (also with `batch_first=True`, which does not apply to states).

  Args:
    params: the params from `from_torch` (they tell the structure and sizes).
    hx: `h_0` for an `nn.RNN`/`nn.GRU`, the tuple `(h_0, c_0)` for an `nn.LSTM`;
      numpy, jax or torch arrays.

  Returns:
    The carry for `layer.apply(params, xs, carry)`: a cell state (`LSTMState` or
    `HiddenState`), a `BidirectionalState`, or a tuple of either, one per layer.

  Examples:
    >>> import numpy as np
    >>> from rnnjax.interop import pytorch
    >>> sd = {"weight_ih_l0": np.zeros((16, 2), np.float32),   # nn.LSTM(2, 4, bias=False)
    ...       "weight_hh_l0": np.zeros((16, 4), np.float32)}
    >>> layer, params = pytorch.from_torch(sd, mode="LSTM")
    >>> h0, c0 = np.zeros((1, 3, 4), np.float32), np.ones((1, 3, 4), np.float32)
    >>> carry = pytorch.carry_from_torch(params, (h0, c0))
    >>> carry.c.shape
    (3, 4)
  """
  fn = f"{_MODULE}.carry_from_torch"
  spec, cells = _describe(fn, params)
  return _torch_carry.carry_from_rows(fn, spec, cells, hx)


def carry_to_torch(carry: Any) -> Any:
  """An rnnjax carry as PyTorch's final state: `h_n`, or `(h_n, c_n)` for an LSTM.

  The inverse of `carry_from_torch`: rows `layer * num_directions + direction` of
  `h_n: [num_layers * num_directions, *batch, P]` (and `c_n: [..., H]`).

  Args:
    carry: a carry of a layer from `from_torch`: an `LSTMState` or `HiddenState`,
      a `BidirectionalState` of two, or a tuple of either (one per layer).

  Returns:
    `h_n` (jax array), or the tuple `(h_n, c_n)` when the carry is made of `LSTMState`s.

  Examples:
    >>> import jax.numpy as jnp, rnnjax
    >>> from rnnjax.interop import pytorch
    >>> carry = rnnjax.BidirectionalState(rnnjax.HiddenState(jnp.zeros((3, 4))),
    ...                                   rnnjax.HiddenState(jnp.ones((3, 4))))
    >>> pytorch.carry_to_torch(carry).shape
    (2, 3, 4)
  """
  return _torch_carry.rows_from_carry(f"{_MODULE}.carry_to_torch", carry)


def from_batch_first(xs: Any) -> jax.Array:
  """A `batch_first=True` input `[B, T, I]` in rnnjax's time-first layout `[T, B, I]`.

  Args:
    xs: `[B, T, I]`, a numpy, jax or torch array.

  Returns:
    `xs` with its first two axes swapped, `[T, B, I]` (jax array).
  """
  xs = _torch_checks.to_jax(f"{_MODULE}.from_batch_first", "xs", xs)
  _torch_checks.check_ndim(f"{_MODULE}.from_batch_first", "xs", xs)
  return jnp.swapaxes(xs, 0, 1)


def to_batch_first(ys: Any) -> jax.Array:
  """Time-first outputs `[T, B, O]` in the `batch_first=True` layout `[B, T, O]`.

  Args:
    ys: `[T, B, O]`, e.g. the outputs of `layer.apply`.

  Returns:
    `ys` with its first two axes swapped, `[B, T, O]` (jax array).
  """
  ys = _torch_checks.to_jax(f"{_MODULE}.to_batch_first", "ys", ys)
  _torch_checks.check_ndim(f"{_MODULE}.to_batch_first", "ys", ys)
  return jnp.swapaxes(ys, 0, 1)


def apply_like_torch(layer: Layer, params: Any, input: Any, hx: Any = None, *,
                     batch_first: bool = False, lengths: Any = None) -> tuple[jax.Array, Any]:
  """Runs a converted layer with PyTorch's calling convention; returns what PyTorch returns.

  `output, h_n = module(input, h_0)` (`output, (h_n, c_n) = module(input, (h_0, c_0))`
  for an LSTM) becomes `apply_like_torch(layer, params, input, hx)`. For a padded
  batch that PyTorch runs as `pack_padded_sequence(input, lengths, batch_first=...,
  enforce_sorted=False)`, pass `lengths`: the output equals
  `pad_packed_sequence(packed_output, batch_first=..., total_length=T)[0]` (the
  default `total_length` is `max(lengths)`: slice the time axis to compare).

  Args:
    layer: the layer from `from_torch`.
    params: its params, from `from_torch`.
    input: `[T, B, I]`, `[B, T, I]` with `batch_first=True`, or unbatched `[T, I]`.
    hx: optional `h_0` / `(h_0, c_0)`, see `carry_from_torch`; zeros by default.
    batch_first: the module's `batch_first`.
    lengths: optional integer `[B]`, each sequence's number of valid steps.

  Returns:
    `(output, h_n)`, or `(output, (h_n, c_n))` for an LSTM, as jax arrays.
  """
  fn = f"{_MODULE}.apply_like_torch"
  if not isinstance(layer, Layer):
    raise TypeError(
        f"{fn}: `layer` must be the rnnjax.Layer from `from_torch`, got {type(layer).__name__}.")
  xs = _torch_checks.to_jax(fn, "input", input)
  if batch_first and xs.ndim == 3:
    xs = from_batch_first(xs)
  carry = None if hx is None else carry_from_torch(params, hx)
  if lengths is not None:
    lengths = _torch_checks.to_jax(fn, "lengths", lengths)
  ys, carry = layer.apply(params, xs, carry, lengths=lengths)
  if batch_first and ys.ndim == 3:
    ys = to_batch_first(ys)
  return ys, carry_to_torch(carry)
