"""PyTorch weights: `nn.RNN`, `nn.LSTM` and `nn.GRU` state dicts to and from rnnjax params.

The conversion works on plain arrays, so torch is needed neither to import this
module nor to run a converted model: a `state_dict` may hold numpy arrays (for
example saved with `np.savez`) or torch tensors, which are read with
`np.asarray(t.detach().cpu())` without importing torch.

`from_torch` always returns a `Layer` and its params; run it with
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

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import rnnjax
from rnnjax._src import checks
from rnnjax._src.cells.common import HiddenState
from rnnjax._src.cells.elman import ElmanParams
from rnnjax._src.cells.gru import GRUParams
from rnnjax._src.cells.lstm import LSTMParams, LSTMState
from rnnjax._src.layers import BidirectionalParams, BidirectionalState, Layer

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
_MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_GATE_MODES = {4: "LSTM", 3: "GRU", 1: "RNN_TANH' or 'RNN_RELU"}
_PARAM_TYPES = {LSTMParams: "LSTM", GRUParams: "GRU", ElmanParams: "RNN"}
_TYPE_NAMES = {"LSTM": "LSTMParams", "GRU": "GRUParams", "RNN": "ElmanParams"}
_KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?")
_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")  # PyTorch's key order


class _Spec(NamedTuple):
  """The structure of a converted module (what the keys of its state_dict depend on)."""

  kind: str  # "LSTM", "GRU" or "RNN"
  num_layers: int
  bidirectional: bool
  stacked: bool  # params (and carries) are a tuple with one entry per layer


def _key(kind: str, layer: int, direction: int) -> str:
  return f"{kind}_l{layer}" + ("_reverse" if direction else "")


def _listing(names: Any, limit: int = 12) -> str:
  names = list(names)
  shown = ", ".join(repr(n) for n in names[:limit])
  return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _to_numpy(fn: str, name: str, value: Any) -> np.ndarray:
  """`value` as a numpy array; torch tensors are detached, moved to the CPU and copied.

  The copy keeps a later in-place update of the tensor (an optimizer step) from
  reaching the jax arrays, which might alias the numpy buffer.
  """
  is_torch = type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")
  try:
    arr = np.array(value.detach().cpu().numpy()) if is_torch else np.asarray(value)
  except (TypeError, RuntimeError, ValueError) as e:
    raise TypeError(
        f"{fn}: `{name}` could not be read as a numpy array ({e}). For a bfloat16 torch "
        "tensor convert the state_dict with `.float()` first.") from None
  if arr.dtype == object:
    raise TypeError(
        f"{fn}: `{name}` must be an array of numbers, got {type(value).__name__} "
        "(read as an object array).")
  return arr


def _to_jax(fn: str, name: str, value: Any) -> jax.Array:
  """`value` as a jax array: jax arrays (also traced ones, under `jit`) pass as they are."""
  return value if isinstance(value, jax.Array) else jnp.asarray(_to_numpy(fn, name, value))


def _check_bool(fn: str, name: str, value: Any) -> bool | None:
  if value is not None and not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{fn}: `{name}` must be a bool or None, got {value!r}.")
  return None if value is None else bool(value)


def _check_size(fn: str, name: str, value: Any, *, zero_ok: bool = False) -> int | None:
  if value is None or (zero_ok and not isinstance(value, bool) and value == 0):
    return value
  return checks.positive_int(fn, name, value)


def _mismatch(fn: str, name: str, given: Any, found: Any, where: str) -> None:
  if given is not None and given != found:
    raise ValueError(
        f"{fn}: `{name}={given!r}` was given, but the state_dict has {name}={found!r} "
        f"({where}).")


def _torch_shape(k: tuple[str, int, int], gates: int, h: int, p: int, i: int,
                 directions: int) -> tuple[int, ...]:
  """PyTorch's shape of the key `k = (kind, layer, direction)` for sizes `H, P, I`."""
  kind, layer = k[0], k[1]
  return {"weight_ih": (gates * h, i if layer == 0 else directions * p),
          "weight_hh": (gates * h, p), "bias_ih": (gates * h,), "bias_hh": (gates * h,),
          "weight_hr": (p, h)}[kind]


def _best_sizes(arrays: dict[tuple[str, int, int], np.ndarray], gates: int, has_proj: bool,
                directions: int) -> tuple[int, list[tuple[int, int, int]]]:
  """The sizes `(H, P, I)` whose PyTorch shapes match the most keys: `(matches, [sizes])`.

  Candidates are read from every key (rows of the gate matrices and biases, columns
  of the recurrent and projection weights, the input sizes), so one key of a wrong
  shape is outvoted by the others; several `sizes` mean a tie.
  """
  hs, ps, ins = set(), set(), set()
  for (kind, layer, _), arr in arrays.items():
    if kind != "weight_hr" and arr.shape[0] % gates == 0:
      hs.add(arr.shape[0] // gates)
    if kind == "weight_hr":
      ps.add(arr.shape[0])
      hs.add(arr.shape[1])
    if kind == "weight_hh":
      (ps if has_proj else hs).add(arr.shape[1])
    if kind == "weight_ih" and layer == 0:
      ins.add(arr.shape[1])
    if kind == "weight_ih" and layer > 0 and arr.shape[1] % directions == 0:
      (ps if has_proj else hs).add(arr.shape[1] // directions)
  cands = [(h, p, i) for h in sorted(hs) for p in (sorted(ps) if has_proj else [h])
           for i in sorted(ins) if h > 0 and p > 0]
  cands = [c for c in cands if c[1] < c[0]] or cands if has_proj else cands  # P < H if any.
  scores = {c: sum(arr.shape == _torch_shape(k, gates, *c, directions)
                   for k, arr in arrays.items()) for c in cands}
  best = max(scores.values(), default=0)
  return best, [c for c, n in scores.items() if n == best]


def from_torch(state_dict: Mapping[str, Any], *, mode: str, num_layers: int | None = None,
               bidirectional: bool | None = None, bias: bool | None = None,
               proj_size: int | None = None, input_size: int | None = None,
               hidden_size: int | None = None, prefix: str = "", dtype: Any = None,
               dropout: float = 0.0) -> tuple[Layer, Any]:
  """Builds the rnnjax layer and params of a PyTorch `nn.RNN`, `nn.LSTM` or `nn.GRU`.

  The structure (layers, directions, biases, projection) and the sizes are read
  from the keys and shapes of `state_dict`; the optional arguments, when given,
  are checked against what was found. Run the result with
  `ys, carry = layer.apply(params, xs, carry, lengths=lengths)`, `xs: [T, B, I]`
  time first (use `from_batch_first` for a `batch_first=True` module), or with
  `apply_like_torch`. See the module docstring for the layer built.

  Args:
    state_dict: `module.state_dict()`, or any mapping of the same names to arrays
      (numpy arrays, torch tensors, jax arrays).
    mode: `"LSTM"`, `"GRU"`, `"RNN_TANH"` or `"RNN_RELU"`, as PyTorch's `module.mode`
      (an `nn.RNN` with `nonlinearity="relu"` has mode `"RNN_RELU"`).
    num_layers, bidirectional, bias, proj_size, input_size, hidden_size: optional
      checks, with PyTorch's meaning (`proj_size=0`: no projection).
    prefix: the prefix of the RNN's keys in a larger model's state_dict, e.g.
      `"encoder.rnn."`. Keys without it are ignored; every key with it must belong
      to the RNN.
    dtype: the dtype of the returned params; `None` keeps the arrays' dtype.
    dropout: dropout between layers, for training on (see `rnnjax.stack`); PyTorch's
      `dropout` is not in the state_dict. It is only active when `apply` gets a `key`.

  Returns:
    `(layer, params)`: an `rnnjax.Layer` and its params, jax arrays in the cells' layout.

  Raises:
    ValueError: keys missing or unexpected (layers, directions, biases or a
      projection the state_dict should or should not have), a shape that does not
      fit, weights of another mode, or a size other than one given.
    TypeError: an argument or a value of the wrong type.

  Example:
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
  if not isinstance(state_dict, Mapping):
    raise TypeError(
        f"{fn}: `state_dict` must be a mapping of names to arrays (`module.state_dict()`), "
        f"got {type(state_dict).__name__}.")
  checks.choice(fn, "mode", mode, _MODES)
  if not isinstance(prefix, str):
    raise TypeError(f"{fn}: `prefix` must be a str, got {prefix!r}.")
  num_layers = _check_size(fn, "num_layers", num_layers)
  bidirectional = _check_bool(fn, "bidirectional", bidirectional)
  bias = _check_bool(fn, "bias", bias)
  proj_size = _check_size(fn, "proj_size", proj_size, zero_ok=True)
  input_size = _check_size(fn, "input_size", input_size)
  hidden_size = _check_size(fn, "hidden_size", hidden_size)
  if dtype is not None:
    try:
      dtype = jnp.dtype(dtype)
    except TypeError:
      raise TypeError(f"{fn}: `dtype` must be a floating dtype such as jnp.float32, got "
                      f"{dtype!r}.") from None
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(f"{fn}: `dtype` must be a floating dtype such as jnp.float32, got "
                      f"dtype={dtype}.")

  # 1. Names: every key under the prefix must be an RNN weight.
  found: dict[tuple[str, int, int], str] = {}
  unknown = []
  for name in state_dict:
    if not isinstance(name, str) or not name.startswith(prefix):
      continue
    m = _KEY.fullmatch(name[len(prefix):])
    if m is None:
      unknown.append(name)
    else:
      found[(m.group(1), int(m.group(2)), int(m.group(3) is not None))] = name
  if unknown:
    raise ValueError(
        f"{fn}: unexpected key(s) {_listing(unknown)} for a PyTorch RNN: expected only "
        f"'{prefix}weight_ih_l<k>', 'weight_hh_l<k>', 'bias_ih_l<k>', 'bias_hh_l<k>' and "
        "(LSTM with proj_size) 'weight_hr_l<k>', each optionally with '_reverse'. For "
        "the RNN inside a larger model pass its `prefix`, e.g. prefix='rnn.'.")
  if not found:
    where = f" starting with prefix={prefix!r}" if prefix else ""
    raise ValueError(
        f"{fn}: the state_dict has no RNN weights (keys like '{prefix}weight_ih_l0'){where}; "
        f"got keys {_listing(state_dict)}.")

  # 2. Structure: from the keys present, checked against the arguments.
  def unexpected(keys, why):
    names = [found[k] for k in sorted(keys, key=lambda k: (k[1], k[2], _KINDS.index(k[0])))]
    raise ValueError(f"{fn}: unexpected key(s) {_listing(names)}: {why}.")

  proj_keys = [k for k in found if k[0] == "weight_hr"]
  if proj_keys and mode != "LSTM":
    unexpected(proj_keys, f"'weight_hr' is an LSTM projection weight, not part of mode={mode!r}"
               + " (were these weights made by an nn.LSTM with proj_size? then pass "
               "mode='LSTM')")
  layers_found = 1 + max(k[1] for k in found)
  if num_layers is None:
    num_layers = layers_found
  elif layers_found > num_layers:
    extra = sorted({k[1] for k in found if k[1] >= num_layers})
    unexpected([k for k in found if k[1] >= num_layers],
               f"layer(s) {', '.join(map(str, extra))} do not exist with num_layers={num_layers} "
               f"(layers 0 to {num_layers - 1})")
  reverse_found = any(k[2] for k in found)
  if bidirectional is None:
    bidirectional = reverse_found
  elif reverse_found and not bidirectional:
    unexpected([k for k in found if k[2]],
               "'_reverse' keys belong to a bidirectional module, but bidirectional=False")
  bias_found = any(k[0].startswith("bias") for k in found)
  if bias is None:
    bias = bias_found
  elif bias_found and not bias:
    unexpected([k for k in found if k[0].startswith("bias")], "bias=False was given")
  has_proj = bool(proj_keys)
  if proj_size is not None and has_proj and proj_size == 0:
    unexpected(proj_keys, "proj_size=0 (no projection) was given")
  if proj_size and not has_proj and mode == "LSTM":
    has_proj = True  # Reported as missing keys below.
  if proj_size and mode != "LSTM":
    raise ValueError(f"{fn}: `proj_size={proj_size}` needs mode='LSTM', got mode={mode!r}.")
  directions = 2 if bidirectional else 1
  kinds = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else [])
  kinds += ["weight_hr"] if has_proj else []
  expected = [(kind, layer, d) for layer in range(num_layers) for d in range(directions)
              for kind in kinds]
  missing = [k for k in expected if k not in found]
  config = (f"mode={mode!r}, num_layers={num_layers}, bidirectional={bidirectional}, "
            f"bias={bias}" + (", with proj_size" if has_proj else ""))
  if missing:
    names = [prefix + _key(*k) for k in missing]
    raise ValueError(
        f"{fn}: the state_dict is missing key(s) {_listing(names)} for {config} (structure "
        "read from the keys present and the arguments given); got keys "
        f"{_listing(found.values())}.")

  # 3. Shapes: ranks and dtypes, then the sizes that fit the most keys.
  arrays = {k: _to_numpy(fn, f"state_dict[{found[k]!r}]", state_dict[found[k]]) for k in expected}
  for k, arr in arrays.items():
    want_rank = 1 if k[0].startswith("bias") else 2
    if arr.ndim != want_rank:
      raise ValueError(
          f"{fn}: `{found[k]}` must be a rank-{want_rank} array, got shape {arr.shape}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
      raise TypeError(f"{fn}: `{found[k]}` must hold floats, got dtype={arr.dtype}.")
  gates = _GATES[mode]
  w_hh = arrays[("weight_hh", 0, 0)]
  # The sizes are those that fit the most keys, so that one key of a wrong shape is
  # the one blamed (not the keys that the sizes were read from).
  score, fits = _best_sizes(arrays, gates, has_proj, directions)
  for other in sorted(set(_GATE_MODES) - {gates}):
    other_score, other_fits = _best_sizes(arrays, other, has_proj, directions)
    if other_score == len(arrays) > score:
      h_o, p_o, _ = other_fits[0]
      raise ValueError(
          f"{fn}: mode={mode!r} has {gates} gate(s), so `{found[('weight_hh', 0, 0)]}` should "
          f"have shape ({gates}*H, {'P' if has_proj else 'H'}) = ({gates * h_o}, {p_o}), "
          f"got {w_hh.shape}: {other} gate(s) of H={h_o}, the weights of "
          f"mode='{_GATE_MODES[other]}'. Pass the `mode` of the module that made the "
          "state_dict (`module.mode`).")

  def sizes_text(h, p, i):
    return f"hidden_size={h}" + (f", proj_size={p}" if has_proj else "") + f", input_size={i}"

  def wrong_keys(h, p, i):
    return [(k, arrays[k].shape, want) for k in expected
            if arrays[k].shape != (want := _torch_shape(k, gates, h, p, i, directions))]

  if len(fits) > 1:
    options = "; or ".join(
        f"with {sizes_text(*f)}: " + ", ".join(
            f"`{found[k]}` has shape {got}, expected {want}" for k, got, want in wrong_keys(*f))
        for f in fits)
    raise ValueError(
        f"{fn}: the shapes in the state_dict do not fit one module of {config}, and more "
        f"than one key could be the wrong one: {options}.")
  h_size, p_size, in_size = fits[0]

  def too_large(k, shape):
    return k[0] == "weight_hr" and shape[0] >= shape[1]

  for k, got, want in wrong_keys(h_size, p_size, in_size)[:1]:
    why = (" = (proj_size, hidden_size), but an LSTM needs proj_size < hidden_size:"
           if too_large(k, got) else ",")
    raise ValueError(
        f"{fn}: `{found[k]}` has shape {got}{why} expected {want} for {config}, "
        f"{sizes_text(h_size, p_size, in_size)} (the sizes that fit the other keys).")
  if has_proj and p_size >= h_size:
    raise ValueError(
        f"{fn}: `{found[('weight_hr', 0, 0)]}` has shape {(p_size, h_size)} = (proj_size, "
        "hidden_size), but an LSTM needs proj_size < hidden_size.")
  dtypes = sorted({str(a.dtype) for a in arrays.values()})
  if dtype is None and len(dtypes) > 1:
    raise ValueError(
        f"{fn}: the state_dict mixes dtypes {', '.join(dtypes)}; pass `dtype` to convert "
        "every array to one.")
  _mismatch(fn, "hidden_size", hidden_size, h_size,
            f"{found[('weight_hr' if has_proj else 'weight_hh', 0, 0)]} has shape "
            f"{(p_size, h_size) if has_proj else w_hh.shape}")
  _mismatch(fn, "input_size", input_size, in_size,
            f"{found[('weight_ih', 0, 0)]} has shape {arrays[('weight_ih', 0, 0)].shape}")
  if proj_size:
    _mismatch(fn, "proj_size", proj_size, p_size,
              f"{found[('weight_hr', 0, 0)]} has shape {(p_size, h_size)}")

  # 4. The layer and its params.
  def cell_params(layer, d):
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

  if mode == "LSTM":
    cell = rnnjax.lstm(h_size, proj_size=p_size if has_proj else None, use_bias=bias)
  elif mode == "GRU":
    cell = rnnjax.gru(h_size, use_bias=bias)
  else:
    cell = rnnjax.elman(h_size, nonlinearity=mode[4:].lower(), use_bias=bias)
  if bidirectional:
    per_layer = [BidirectionalParams(cell_params(layer, 0), cell_params(layer, 1))
                 for layer in range(num_layers)]
    if num_layers == 1:
      return rnnjax.bidirectional(cell, cell), per_layer[0]
    return rnnjax.stack([rnnjax.bidirectional(cell, cell)] * num_layers,
                        dropout=dropout), tuple(per_layer)
  if num_layers == 1:
    return rnnjax.rnn(cell), cell_params(0, 0)
  return (rnnjax.rnn(rnnjax.stack([cell] * num_layers, dropout=dropout)),
          tuple(cell_params(layer, 0) for layer in range(num_layers)))


def _describe(fn: str, params: Any) -> tuple[_Spec, list[list[Any]]]:
  """The structure of params from `from_torch` (or built alike), and the cell params
  `[layer][direction]`."""
  how = ("params from `from_torch`, or built alike: LSTMParams, GRUParams or ElmanParams "
         "(one layer), BidirectionalParams of two of them, or a tuple of either (one per layer)")
  if isinstance(params, BidirectionalParams) or type(params) in _PARAM_TYPES:
    layers = [params]
  elif isinstance(params, (tuple, list)) and params:
    layers = list(params)
  else:
    raise TypeError(f"{fn}: `params` must be {how}; got {type(params).__name__}.")
  bidi = isinstance(layers[0], BidirectionalParams)
  cells = []
  for i, layer in enumerate(layers):
    path = f"params[{i}]" if len(layers) > 1 or layers[0] is not params else "params"
    if isinstance(layer, BidirectionalParams) != bidi:
      raise ValueError(
          f"{fn}: every layer must be bidirectional or none, as in PyTorch; {path} is a "
          f"{type(layer).__name__} but layer 0 is a {type(layers[0]).__name__}.")
    entries = [layer.forward, layer.backward] if bidi else [layer]
    for entry, where in zip(entries, (".forward", ".backward") if bidi else ("",), strict=True):
      if type(entry) not in _PARAM_TYPES:
        raise TypeError(
            f"{fn}: `{path}{where}` must be LSTMParams, GRUParams or ElmanParams (PyTorch "
            f"has no other cell), got {type(entry).__name__}. `params` must be {how}.")
    cells.append(entries)
  kind = _PARAM_TYPES[type(cells[0][0])]
  for i, entries in enumerate(cells):
    for entry in entries:
      if _PARAM_TYPES[type(entry)] != kind:
        raise ValueError(
            f"{fn}: every layer and direction must use the same cell, as in PyTorch; layer "
            f"{i} has {type(entry).__name__}, layer 0 has {type(cells[0][0]).__name__}.")
  return _Spec(kind, len(cells), bidi, layers[0] is not params), cells


def _cell_sizes(p: Any) -> dict[str, Any]:
  gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[_PARAM_TYPES[type(p)]]
  hidden = p.w_h.shape[1] // gates
  proj = getattr(p, "w_proj", None)
  return dict(input=p.w_i.shape[0], hidden=hidden, out=p.w_h.shape[0],
              proj=None if proj is None else proj.shape[1], bias=p.b_i is not None)


def _check_mode(fn: str, mode: str | None, kind: str) -> None:
  if mode is None:
    return
  checks.choice(fn, "mode", mode, _MODES)
  if not mode.startswith(kind):
    fits = "'RNN_TANH' or 'RNN_RELU'" if kind == "RNN" else repr(kind)
    raise ValueError(
        f"{fn}: mode={mode!r} does not match the params, which are {_TYPE_NAMES[kind]} "
        f"(mode {fits}).")


def to_torch(params: Any, *, mode: str | None = None, prefix: str = "") -> dict[str, np.ndarray]:
  """The PyTorch `state_dict` of rnnjax params: the inverse of `from_torch`.

  Load it with `module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})`
  into the module `torch_kwargs(params)` describes. PyTorch's GRU is rnnjax's
  `gru(reset_after=True)` (the default), and an `nn.RNN` must be made with the
  `elman` cell's `nonlinearity`: neither is visible in the params.

  Args:
    params: params as `from_torch` returns them (see the module docstring): a
      cell's params, `BidirectionalParams`, or a tuple of either, one per layer.
      Every layer must have the same cell, sizes, biases and projection, and each
      layer's input size must be the previous layer's output size.
    mode: optional check that the params are of this PyTorch mode.
    prefix: prepended to every key (e.g. `"rnn."`).

  Returns:
    A dict of new (writable, C-ordered) numpy arrays in PyTorch's key order and
    shapes, e.g. `weight_ih_l0 = w_i.T`, in the params' dtype (torch cannot read
    numpy's bfloat16: cast such params to float32 first).

  Example:
    >>> import jax, rnnjax
    >>> from rnnjax.interop import pytorch
    >>> params = rnnjax.lstm(5, proj_size=3).init(jax.random.key(0), input_size=2)
    >>> {k: v.shape for k, v in pytorch.to_torch(params).items()}
    {'weight_ih_l0': (20, 2), 'weight_hh_l0': (20, 3), 'bias_ih_l0': (20,),
     'bias_hh_l0': (20,), 'weight_hr_l0': (3, 5)}
  """
  fn = f"{_MODULE}.to_torch"
  spec, cells = _describe(fn, params)
  _check_mode(fn, mode, spec.kind)
  if not isinstance(prefix, str):
    raise TypeError(f"{fn}: `prefix` must be a str, got {prefix!r}.")
  _torch_kwargs(fn, spec, cells)  # Checks that the layers fit together as one PyTorch module.
  out = {}
  for layer, entries in enumerate(cells):
    for d, p in enumerate(entries):
      values = {"weight_ih": p.w_i.T, "weight_hh": p.w_h.T, "bias_ih": p.b_i,
                "bias_hh": p.b_h, "weight_hr": None if spec.kind != "LSTM" else p.w_proj}
      if values["weight_hr"] is not None:
        values["weight_hr"] = values["weight_hr"].T
      for kind in _KINDS:
        if values[kind] is not None:
          out[prefix + _key(kind, layer, d)] = np.array(values[kind], order="C")  # A copy.
  return out


def torch_kwargs(params: Any) -> dict[str, Any]:
  """The constructor arguments of the PyTorch module that `to_torch(params)` fits.

  Returns `input_size`, `hidden_size`, `num_layers`, `bias`, `bidirectional` and,
  for an LSTM, `proj_size` (0 without a projection): use them as
  `nn.LSTM(**kw, batch_first=...)`, `nn.GRU(**kw)` or `nn.RNN(**kw, nonlinearity=...)`.

  Raises:
    ValueError: if the layers differ in cell, sizes, biases or projection, or a
      layer's input size is not the previous layer's output size, which a
      PyTorch module cannot express.

  Example:
    >>> import jax, rnnjax
    >>> from rnnjax.interop import pytorch
    >>> layer = rnnjax.stack([rnnjax.bidirectional(rnnjax.gru(4), rnnjax.gru(4))] * 2)
    >>> pytorch.torch_kwargs(layer.init(jax.random.key(0), input_size=3))
    {'input_size': 3, 'hidden_size': 4, 'num_layers': 2, 'bias': True, 'bidirectional': True}
  """
  fn = f"{_MODULE}.torch_kwargs"
  spec, cells = _describe(fn, params)
  return _torch_kwargs(fn, spec, cells)


def _torch_kwargs(fn: str, spec: _Spec, cells: list[list[Any]]) -> dict[str, Any]:
  first = _cell_sizes(cells[0][0])
  directions = 2 if spec.bidirectional else 1
  for layer, entries in enumerate(cells):
    for d, p in enumerate(entries):
      if (p.b_i is None) != (p.b_h is None):
        raise ValueError(
            f"{fn}: layer {layer}{' backward' if d else ''} has "
            f"{'b_h but no b_i' if p.b_i is None else 'b_i but no b_h'}: a PyTorch module "
            "has both biases (bias=True) or neither (bias=False).")
      got = _cell_sizes(p)
      want = dict(first, input=first["input"] if layer == 0 else directions * first["out"])
      for field in ("hidden", "proj", "bias", "input"):
        if got[field] != want[field]:
          what = {"hidden": "hidden size", "proj": "proj_size", "bias": "bias (b_i is not None)",
                  "input": "input size (w_i.shape[0])"}[field]
          reason = ("the previous layer's output size" if field == "input" and layer
                    else "that of layer 0's forward cell")
          raise ValueError(
              f"{fn}: layer {layer}{' backward' if d else ''} has {what} {got[field]}, "
              f"expected {want[field]} ({reason}): a PyTorch module has one size for every "
              "layer and direction.")
  kw = dict(input_size=int(first["input"]), hidden_size=int(first["hidden"]),
            num_layers=spec.num_layers, bias=bool(first["bias"]),
            bidirectional=spec.bidirectional)
  if spec.kind == "LSTM":
    kw["proj_size"] = int(first["proj"] or 0)
  return kw


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

  Example:
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
  directions = 2 if spec.bidirectional else 1
  rows = spec.num_layers * directions
  sizes = _cell_sizes(cells[0][0])
  if spec.kind == "LSTM":
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
      raise TypeError(
          f"{fn}: an LSTM's `hx` must be the tuple (h_0, c_0), as nn.LSTM takes it, got "
          f"{type(hx).__name__}" + (f" of length {len(hx)}" if isinstance(hx, (tuple, list))
                                    else "") + ".")
    named = [("h_0", hx[0], sizes["out"]), ("c_0", hx[1], sizes["hidden"])]
  else:
    if isinstance(hx, (tuple, list)):
      raise TypeError(
          f"{fn}: `hx` must be the single array h_0 for a {spec.kind} (only an LSTM takes "
          f"(h_0, c_0)), got a {type(hx).__name__} of length {len(hx)}.")
    named = [("h_0", hx, sizes["out"])]
  arrays = []
  for name, value, size in named:
    arr = _to_jax(fn, name, value)
    if arr.ndim < 2 or arr.shape[0] != rows or arr.shape[-1] != size:
      raise ValueError(
          f"{fn}: `{name}` must have shape [num_layers * num_directions, *batch, {size}] = "
          f"[{rows}, *batch, {size}] for these params ({spec.num_layers} layer(s), "
          f"{directions} direction(s)), got shape {tuple(arr.shape)}.")
    arrays.append(arr)
  if len(arrays) == 2 and arrays[0].shape[1:-1] != arrays[1].shape[1:-1]:
    raise ValueError(
        f"{fn}: `h_0` and `c_0` must have the same batch shape, got h_0.shape="
        f"{tuple(arrays[0].shape)} and c_0.shape={tuple(arrays[1].shape)}.")

  def state(k):
    if spec.kind == "LSTM":
      return LSTMState(h=arrays[0][k], c=arrays[1][k])
    return HiddenState(h=arrays[0][k])

  per_layer = [BidirectionalState(state(2 * layer), state(2 * layer + 1)) if spec.bidirectional
               else state(layer) for layer in range(spec.num_layers)]
  return tuple(per_layer) if spec.stacked else per_layer[0]


def carry_to_torch(carry: Any) -> Any:
  """An rnnjax carry as PyTorch's final state: `h_n`, or `(h_n, c_n)` for an LSTM.

  The inverse of `carry_from_torch`: rows `layer * num_directions + direction` of
  `h_n: [num_layers * num_directions, *batch, P]` (and `c_n: [..., H]`).

  Args:
    carry: a carry of a layer from `from_torch`: an `LSTMState` or `HiddenState`,
      a `BidirectionalState` of two, or a tuple of either (one per layer).

  Returns:
    `h_n` (jax array), or the tuple `(h_n, c_n)` when the carry is made of `LSTMState`s.

  Example:
    >>> import jax.numpy as jnp, rnnjax
    >>> from rnnjax.interop import pytorch
    >>> carry = rnnjax.BidirectionalState(rnnjax.HiddenState(jnp.zeros((3, 4))),
    ...                                   rnnjax.HiddenState(jnp.ones((3, 4))))
    >>> pytorch.carry_to_torch(carry).shape
    (2, 3, 4)
  """
  fn = f"{_MODULE}.carry_to_torch"
  layers = list(carry) if type(carry) in (tuple, list) else [carry]
  if not layers:
    raise TypeError(f"{fn}: `carry` must not be an empty {type(carry).__name__}.")
  states = []
  for i, layer in enumerate(layers):
    entries = [layer.forward, layer.backward] if isinstance(layer, BidirectionalState) else [layer]
    for entry in entries:
      if not isinstance(entry, (LSTMState, HiddenState)):
        raise TypeError(
            f"{fn}: `carry` must hold LSTMState or HiddenState carries (alone, in a "
            f"BidirectionalState, or in a tuple with one per layer); layer {i} holds a "
            f"{type(entry).__name__}.")
      states.append(entry)
  if len({type(s) for s in states}) > 1:
    raise TypeError(f"{fn}: `carry` mixes LSTMState and HiddenState; PyTorch modules do not.")
  h_n = jnp.stack([s.h for s in states])
  if isinstance(states[0], LSTMState):
    return h_n, jnp.stack([s.c for s in states])
  return h_n


def _check_ndim(fn: str, name: str, x: Any) -> None:
  shape = getattr(x, "shape", None)
  if shape is None or len(shape) != 3:
    raise ValueError(
        f"{fn}: `{name}` must be a batched sequence of rank 3, got "
        + (f"shape {tuple(shape)}" if shape is not None else type(x).__name__)
        + ". (PyTorch ignores batch_first for an unbatched [T, I] input: use it as it is.)")


def from_batch_first(xs: Any) -> jax.Array:
  """A `batch_first=True` input `[B, T, I]` in rnnjax's time-first layout `[T, B, I]`."""
  xs = _to_jax(f"{_MODULE}.from_batch_first", "xs", xs)
  _check_ndim(f"{_MODULE}.from_batch_first", "xs", xs)
  return jnp.swapaxes(xs, 0, 1)


def to_batch_first(ys: Any) -> jax.Array:
  """Time-first outputs `[T, B, O]` in the `batch_first=True` layout `[B, T, O]`."""
  ys = _to_jax(f"{_MODULE}.to_batch_first", "ys", ys)
  _check_ndim(f"{_MODULE}.to_batch_first", "ys", ys)
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
    layer, params: from `from_torch`.
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
  xs = _to_jax(fn, "input", input)
  if batch_first and xs.ndim == 3:
    xs = from_batch_first(xs)
  carry = None if hx is None else carry_from_torch(params, hx)
  if lengths is not None:
    lengths = _to_jax(fn, "lengths", lengths)
  ys, carry = layer.apply(params, xs, carry, lengths=lengths)
  if batch_first and ys.ndim == 3:
    ys = to_batch_first(ys)
  return ys, carry_to_torch(carry)
