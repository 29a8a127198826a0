"""The phases of `from_torch`: a PyTorch RNN state_dict to an rnnjax layer and its params.

`from_torch` checks its arguments, then runs these in order, each on what the one
before found:

1. `read_keys`: the RNN keys under the prefix, as `(kind, layer, direction)`, or a
   cell's (`nn.LSTMCell`, `nn.GRUCell`, `nn.RNNCell`: no `_l<k>`), read as layer 0;
2. `read_structure`: layers, directions, biases and projection, from the keys
   present and the arguments given, and the keys that structure needs;
3. `read_arrays`: those keys as numpy arrays of the right rank and a float dtype;
4. `infer_sizes`: the hidden, projection and input sizes that fit the shapes;
5. `build_layer`: the layer (or the cell) and its params, in the cells' layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from rnnjax._src.cells.elman import ElmanParams, elman
from rnnjax._src.cells.gru import GRUParams, gru
from rnnjax._src.cells.lstm import LSTMParams, lstm
from rnnjax._src.layers import BidirectionalParams, bidirectional, rnn, stack
from rnnjax.interop._torch_checks import listing, mismatch, to_numpy
from rnnjax.interop._torch_layout import (
    CELL_KEY,
    GATE_MODES,
    GATES,
    KEY,
    KINDS,
    Key,
    best_sizes,
    key_name,
    torch_shape,
)


class Structure(NamedTuple):
  """The module a state_dict holds, as read from its keys and the arguments given."""

  mode: str  # "LSTM", "GRU", "RNN_TANH" or "RNN_RELU"
  num_layers: int
  bidirectional: bool
  bias: bool
  has_proj: bool  # an LSTM with proj_size
  names: dict[Key, str]  # every RNN key found -> its name in the state_dict
  expected: list[Key]  # the keys of this structure, in PyTorch's order
  config: str  # the structure in words, for messages
  cell: bool = False  # an nn.LSTMCell, nn.GRUCell or nn.RNNCell: keys without "_l<k>"

  @property
  def directions(self) -> int:
    return 2 if self.bidirectional else 1


def _prefixes(names: Any) -> list[str]:
  """The prefixes under which `names` hold RNN keys: `"encoder.rnn."` for
  `"encoder.rnn.weight_ih_l0"` (also for a cell's `"encoder.cell.weight_ih"`)."""
  out = []
  for name in names:
    head, dot, tail = str(name).rpartition(".")
    if dot and (KEY.fullmatch(tail) or CELL_KEY.fullmatch(tail)) and head + dot not in out:
      out.append(head + dot)
  return out


def _prefix_hint(names: Any) -> str:
  """A sentence naming the prefix(es) of the RNN keys among `names`, or "" if none."""
  found = _prefixes(names)
  if len(found) == 1:
    return (f" These look like the keys of a larger model with an RNN under "
            f"prefix={found[0]!r}: pass prefix={found[0]!r}.")
  if found:
    return (f" These look like the keys of a larger model with RNNs under prefixes "
            f"{listing(found)}: pass the `prefix` of the one to convert.")
  return ""


def read_keys(fn: str, state_dict: Mapping[str, Any], prefix: str) -> tuple[dict[Key, str], bool]:
  """The RNN keys under `prefix`, `(kind, layer, direction) -> name`, and whether they are
  a cell's (`weight_ih`, ... without `_l<k>`, read as layer 0); every key under `prefix`
  must be an RNN weight, and there must be at least one."""
  found: dict[Key, str] = {}
  cell: dict[Key, str] = {}
  unknown = []
  for name in state_dict:
    if not isinstance(name, str) or not name.startswith(prefix):
      continue
    m = KEY.fullmatch(name[len(prefix):])
    if m is not None:
      found[(m.group(1), int(m.group(2)), int(m.group(3) is not None))] = name
    elif CELL_KEY.fullmatch(name[len(prefix):]):
      cell[(name[len(prefix):], 0, 0)] = name
    else:
      unknown.append(name)
  if unknown:
    hint = _prefix_hint(unknown) or (
        " For the RNN inside a larger model pass its `prefix`, e.g. prefix='rnn.'.")
    raise ValueError(
        f"{fn}: unexpected key(s) {listing(unknown)} for a PyTorch RNN: expected only "
        f"'{prefix}weight_ih_l<k>', 'weight_hh_l<k>', 'bias_ih_l<k>', 'bias_hh_l<k>' and "
        "(LSTM with proj_size) 'weight_hr_l<k>', each optionally with '_reverse', or those of "
        "an nn.LSTMCell, nn.GRUCell or nn.RNNCell: 'weight_ih', 'weight_hh', 'bias_ih', "
        f"'bias_hh'.{hint}")
  if found and cell:
    raise ValueError(
        f"{fn}: the state_dict mixes the keys of a cell ({listing(cell.values())}) and those "
        f"of a module with layers ({listing(found.values())}); pass the `prefix` of one.")
  if not found and not cell:
    where = f" starting with prefix={prefix!r}" if prefix else ""
    raise ValueError(
        f"{fn}: the state_dict has no RNN weights (keys like '{prefix}weight_ih_l0'){where}; "
        f"got keys {listing(state_dict)}."
        + _prefix_hint(state_dict))
  return (cell, True) if cell else (found, False)


def _unexpected(fn: str, found: dict[Key, str], keys: list[Key], why: str) -> None:
  """ValueError naming the `keys` (in PyTorch's order) that the structure does not have."""
  names = [found[k] for k in sorted(keys, key=lambda k: (k[1], k[2], KINDS.index(k[0])))]
  raise ValueError(f"{fn}: unexpected key(s) {listing(names)}: {why}.")


def _check_cell(fn: str, **given: Any) -> None:
  """ValueError if an argument `given` does not fit a cell (one layer, one direction)."""
  for name, value in given.items():
    if value not in (None, 1 if name == "num_layers" else False):
      raise ValueError(
          f"{fn}: `{name}={value!r}` was given, but the state_dict holds the keys of a cell "
          "('weight_ih', ... without '_l<k>': an nn.LSTMCell, nn.GRUCell or nn.RNNCell), "
          f"which has one layer, one direction and no projection. Leave `{name}` out.")


def read_structure(fn: str, found: dict[Key, str], *, mode: str, prefix: str,
                   num_layers: int | None, bidirectional: bool | None, bias: bool | None,
                   proj_size: int | None, cell: bool = False) -> Structure:
  """The structure from the keys `found` (a `cell`'s: `read_keys`), checked against the
  arguments given (None: read from the keys); a ValueError for keys it does not have or
  keys it misses."""
  if cell:
    _check_cell(fn, num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size)
  proj_keys = [k for k in found if k[0] == "weight_hr"]
  if proj_keys and mode != "LSTM":
    _unexpected(fn, found, proj_keys,
                f"'weight_hr' is an LSTM projection weight, not part of mode={mode!r}"
                " (were these weights made by an nn.LSTM with proj_size? then pass "
                "mode='LSTM')")
  layers_found = 1 + max(k[1] for k in found)
  if num_layers is None:
    num_layers = layers_found
  elif layers_found > num_layers:
    extra = sorted({k[1] for k in found if k[1] >= num_layers})
    _unexpected(fn, found, [k for k in found if k[1] >= num_layers],
                f"layer(s) {', '.join(map(str, extra))} do not exist with "
                f"num_layers={num_layers} (layers 0 to {num_layers - 1})")
  reverse_found = any(k[2] for k in found)
  if bidirectional is None:
    bidirectional = reverse_found
  elif reverse_found and not bidirectional:
    _unexpected(fn, found, [k for k in found if k[2]],
                "'_reverse' keys belong to a bidirectional module, but bidirectional=False")
  bias_found = any(k[0].startswith("bias") for k in found)
  if bias is None:
    bias = bias_found
  elif bias_found and not bias:
    _unexpected(fn, found, [k for k in found if k[0].startswith("bias")],
                "bias=False was given")
  has_proj = bool(proj_keys)
  if proj_size is not None and has_proj and proj_size == 0:
    _unexpected(fn, found, proj_keys, "proj_size=0 (no projection) was given")
  if proj_size and not has_proj and mode == "LSTM":
    has_proj = True  # Reported as missing keys below.
  if proj_size and mode != "LSTM":
    raise ValueError(f"{fn}: `proj_size={proj_size}` needs mode='LSTM', got mode={mode!r}.")
  kinds = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else [])
  kinds += ["weight_hr"] if has_proj else []
  expected = [(kind, layer, d) for layer in range(num_layers)
              for d in range(2 if bidirectional else 1) for kind in kinds]
  config = (f"mode={mode!r}, num_layers={num_layers}, bidirectional={bidirectional}, "
            f"bias={bias}" + (", with proj_size" if has_proj else ""))
  if cell:
    config = f"mode={mode!r}, a cell, bias={bias}"
  missing = [prefix + (k[0] if cell else key_name(*k)) for k in expected if k not in found]
  if missing:
    raise ValueError(
        f"{fn}: the state_dict is missing key(s) {listing(missing)}"
        f" for {config} (structure read from the keys present and the arguments given); got "
        f"keys {listing(found.values())}.")
  return Structure(mode, num_layers, bidirectional, bias, has_proj, found, expected, config,
                   cell)


def read_arrays(fn: str, state_dict: Mapping[str, Any], s: Structure) -> dict[Key, np.ndarray]:
  """The arrays of the keys `s.expected`, checked for their rank and a float dtype."""
  arrays = {k: to_numpy(fn, f"state_dict[{s.names[k]!r}]", state_dict[s.names[k]])
            for k in s.expected}
  for k, arr in arrays.items():
    want_rank = 1 if k[0].startswith("bias") else 2
    if arr.ndim != want_rank:
      raise ValueError(
          f"{fn}: `{s.names[k]}` must be a rank-{want_rank} array, got shape {arr.shape}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
      raise TypeError(f"{fn}: `{s.names[k]}` must hold floats, got dtype={arr.dtype}.")
  return arrays


def _sizes_text(s: Structure, h: int, p: int, i: int) -> str:
  return f"hidden_size={h}" + (f", proj_size={p}" if s.has_proj else "") + f", input_size={i}"


def _wrong_keys(s: Structure, arrays: dict[Key, np.ndarray],
                sizes: tuple[int, int, int]) -> list[tuple[Key, tuple, tuple]]:
  """`(key, shape, expected shape)` of the keys whose shape does not fit `sizes`."""
  gates = GATES[s.mode]
  return [(k, arrays[k].shape, want) for k in s.expected
          if arrays[k].shape != (want := torch_shape(k, gates, *sizes, s.directions))]


def _check_gates(fn: str, s: Structure, arrays: dict[Key, np.ndarray], score: int) -> None:
  """ValueError if every shape fits another mode's number of gates better than `s.mode`'s."""
  gates = GATES[s.mode]
  for other in sorted(set(GATE_MODES) - {gates}):
    other_score, other_fits = best_sizes(arrays, other, s.has_proj, s.directions)
    if other_score == len(arrays) > score:
      h_o, p_o, _ = other_fits[0]
      raise ValueError(
          f"{fn}: mode={s.mode!r} has {gates} gate(s), so `{s.names[('weight_hh', 0, 0)]}` "
          f"should have shape ({gates}*H, {'P' if s.has_proj else 'H'}) = ({gates * h_o}, "
          f"{p_o}), got {arrays[('weight_hh', 0, 0)].shape}: {other} gate(s) of H={h_o}, the "
          f"weights of mode='{GATE_MODES[other]}'. Pass the `mode` of the module that made "
          "the state_dict (`module.mode`).")


def _one_fit(fn: str, s: Structure, arrays: dict[Key, np.ndarray],
             fits: list[tuple[int, int, int]]) -> tuple[int, int, int]:
  """The one `(H, P, I)` of `fits` that every key fits; a ValueError blames the keys that
  do not (all of them for each of several fits)."""
  if len(fits) > 1:
    options = "; or ".join(
        f"with {_sizes_text(s, *f)}: " + ", ".join(
            f"`{s.names[k]}` has shape {got}, expected {want}"
            for k, got, want in _wrong_keys(s, arrays, f))
        for f in fits)
    raise ValueError(
        f"{fn}: the shapes in the state_dict do not fit one module of {s.config}, and more "
        f"than one key could be the wrong one: {options}.")
  h_size, p_size, in_size = fits[0]
  for k, got, want in _wrong_keys(s, arrays, fits[0])[:1]:
    too_large = k[0] == "weight_hr" and got[0] >= got[1]
    why = (" = (proj_size, hidden_size), but an LSTM needs proj_size < hidden_size:"
           if too_large else ",")
    raise ValueError(
        f"{fn}: `{s.names[k]}` has shape {got}{why} expected {want} for {s.config}, "
        f"{_sizes_text(s, h_size, p_size, in_size)} (the sizes that fit the other keys).")
  if s.has_proj and p_size >= h_size:
    raise ValueError(
        f"{fn}: `{s.names[('weight_hr', 0, 0)]}` has shape {(p_size, h_size)} = (proj_size, "
        "hidden_size), but an LSTM needs proj_size < hidden_size.")
  return fits[0]


def infer_sizes(fn: str, s: Structure, arrays: dict[Key, np.ndarray], *, dtype: Any,
                hidden_size: int | None, input_size: int | None,
                proj_size: int | None) -> tuple[int, int, int]:
  """The sizes `(H, P, I)` (`P = H` without a projection) that fit the shapes, checked
  against the sizes given; mixed dtypes need `dtype`.

  The sizes are those that fit the most keys, so that one key of a wrong shape is
  the one blamed (not the keys that the sizes were read from).
  """
  score, fits = best_sizes(arrays, GATES[s.mode], s.has_proj, s.directions)
  _check_gates(fn, s, arrays, score)
  h_size, p_size, in_size = _one_fit(fn, s, arrays, fits)
  dtypes = sorted({str(a.dtype) for a in arrays.values()})
  if dtype is None and len(dtypes) > 1:
    raise ValueError(
        f"{fn}: the state_dict mixes dtypes {', '.join(dtypes)}; pass `dtype` to convert "
        "every array to one.")
  hidden_key = ("weight_hr" if s.has_proj else "weight_hh", 0, 0)
  mismatch(fn, "hidden_size", hidden_size, h_size,
           f"{s.names[hidden_key]} has shape "
           f"{(p_size, h_size) if s.has_proj else arrays[hidden_key].shape}")
  mismatch(fn, "input_size", input_size, in_size,
           f"{s.names[('weight_ih', 0, 0)]} has shape {arrays[('weight_ih', 0, 0)].shape}")
  if proj_size:
    mismatch(fn, "proj_size", proj_size, p_size,
             f"{s.names[('weight_hr', 0, 0)]} has shape {(p_size, h_size)}")
  return h_size, p_size, in_size


def _cell_params(mode: str, arrays: dict[Key, np.ndarray], layer: int, d: int,
                 dtype: Any) -> Any:
  """The params of the cell of `layer` and direction `d`: PyTorch's weights transposed."""
  def get(kind, transpose=True):
    arr = arrays.get((kind, layer, d))
    if arr is None:
      return None
    return jnp.asarray(arr.T if transpose else arr, dtype=dtype)

  w_i, w_h = get("weight_ih"), get("weight_hh")
  b_i, b_h = get("bias_ih", False), get("bias_hh", False)
  if mode == "LSTM":
    return LSTMParams(w_i, w_h, b_i, b_h, get("weight_hr"))
  return (GRUParams if mode == "GRU" else ElmanParams)(w_i, w_h, b_i, b_h)


def _cell(s: Structure, h_size: int, p_size: int) -> Any:
  """The rnnjax cell of mode `s.mode` (with a projection to `p_size` if `s.has_proj`)."""
  if s.mode == "LSTM":
    return lstm(h_size, proj_size=p_size if s.has_proj else None, use_bias=s.bias)
  if s.mode == "GRU":
    return gru(h_size, use_bias=s.bias)
  return elman(h_size, nonlinearity=s.mode[4:].lower(), use_bias=s.bias)


def build_layer(s: Structure, sizes: tuple[int, int, int], arrays: dict[Key, np.ndarray], *,
                dtype: Any, dropout: float) -> tuple[Any, Any]:
  """The layer of the module `s` with hidden and projection sizes `sizes[:2]` (for a
  cell's keys, `s.cell`: the rnnjax cell), and its params in `dtype` (None: the arrays'
  own)."""
  h_size, p_size, _ = sizes
  cell = _cell(s, h_size, p_size)
  if s.cell:
    return cell, _cell_params(s.mode, arrays, 0, 0, dtype)
  layers = range(s.num_layers)
  if s.bidirectional:
    per_layer = [BidirectionalParams(_cell_params(s.mode, arrays, layer, 0, dtype),
                                     _cell_params(s.mode, arrays, layer, 1, dtype))
                 for layer in layers]
    if s.num_layers == 1:
      return bidirectional(cell, cell), per_layer[0]
    return stack([bidirectional(cell, cell)] * s.num_layers, dropout=dropout), tuple(per_layer)
  if s.num_layers == 1:
    return rnn(cell), _cell_params(s.mode, arrays, 0, 0, dtype)
  return (rnn(stack([cell] * s.num_layers, dropout=dropout)),
          tuple(_cell_params(s.mode, arrays, layer, 0, dtype) for layer in layers))
