"""PyTorch's layout of RNN weights: key names, shapes, and the sizes they imply.

A PyTorch `nn.RNN`/`nn.LSTM`/`nn.GRU` stores, per layer `k` and direction, the keys
`weight_ih_l{k}: [G*H, I]` (layer 0) or `[G*H, D*P]` (later layers),
`weight_hh_l{k}: [G*H, P]`, `bias_ih_l{k}: [G*H]`, `bias_hh_l{k}: [G*H]` and, for an
LSTM with `proj_size`, `weight_hr_l{k}: [P, H]`, with `_reverse` appended for the
backward direction; `G` is the number of gates (4, 3 or 1), `D` the number of
directions and `P = H` without a projection. This module names those keys, computes
their shapes, infers the sizes from a state_dict, and reads the same structure back
from rnnjax params.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import numpy as np

from rnnjax._src.cells.elman import ElmanParams
from rnnjax._src.cells.gru import GRUParams
from rnnjax._src.cells.lstm import LSTMParams
from rnnjax._src.layers import BidirectionalParams

MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
GATE_MODES = {4: "LSTM", 3: "GRU", 1: "RNN_TANH' or 'RNN_RELU"}
PARAM_TYPES = {LSTMParams: "LSTM", GRUParams: "GRU", ElmanParams: "RNN"}
TYPE_NAMES = {"LSTM": "LSTMParams", "GRU": "GRUParams", "RNN": "ElmanParams"}
KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?")
# The keys of an nn.LSTMCell, nn.GRUCell or nn.RNNCell: one layer, no "_l<k>".
CELL_KEY = re.compile(r"weight_ih|weight_hh|bias_ih|bias_hh")
KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")  # PyTorch's key order

# A key as `(kind, layer, direction)`, e.g. ("weight_hh", 1, 0) for "weight_hh_l1".
Key = tuple[str, int, int]


class Spec(NamedTuple):
  """The structure of a converted module (what the keys of its state_dict depend on)."""

  kind: str  # "LSTM", "GRU" or "RNN"
  num_layers: int
  bidirectional: bool
  stacked: bool  # params (and carries) are a tuple with one entry per layer


def key_name(kind: str, layer: int, direction: int) -> str:
  """PyTorch's name of a key without prefix, e.g. `"bias_hh_l1_reverse"` for `("bias_hh", 1, 1)`."""
  return f"{kind}_l{layer}" + ("_reverse" if direction else "")


def torch_shape(k: Key, gates: int, h: int, p: int, i: int, directions: int) -> tuple[int, ...]:
  """PyTorch's shape of the key `k = (kind, layer, direction)` for sizes `H, P, I`."""
  kind, layer = k[0], k[1]
  return {"weight_ih": (gates * h, i if layer == 0 else directions * p),
          "weight_hh": (gates * h, p), "bias_ih": (gates * h,), "bias_hh": (gates * h,),
          "weight_hr": (p, h)}[kind]


def best_sizes(arrays: dict[Key, np.ndarray], gates: int, has_proj: bool,
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
  scores = {c: sum(arr.shape == torch_shape(k, gates, *c, directions)
                   for k, arr in arrays.items()) for c in cands}
  best = max(scores.values(), default=0)
  return best, [c for c, n in scores.items() if n == best]


def describe(fn: str, params: Any) -> tuple[Spec, list[list[Any]]]:
  """The structure of params from `from_torch` (or built alike), and the cell params
  `[layer][direction]`."""
  how = ("params from `from_torch`, or built alike: LSTMParams, GRUParams or ElmanParams "
         "(one layer), BidirectionalParams of two of them, or a tuple of either (one per layer)")
  if isinstance(params, BidirectionalParams) or type(params) in PARAM_TYPES:
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
      if type(entry) not in PARAM_TYPES:
        raise TypeError(
            f"{fn}: `{path}{where}` must be LSTMParams, GRUParams or ElmanParams (PyTorch "
            f"has no other cell), got {type(entry).__name__}. `params` must be {how}.")
    cells.append(entries)
  kind = PARAM_TYPES[type(cells[0][0])]
  for i, entries in enumerate(cells):
    for entry in entries:
      if PARAM_TYPES[type(entry)] != kind:
        raise ValueError(
            f"{fn}: every layer and direction must use the same cell, as in PyTorch; layer "
            f"{i} has {type(entry).__name__}, layer 0 has {type(cells[0][0]).__name__}.")
  return Spec(kind, len(cells), bidi, layers[0] is not params), cells


def cell_sizes(p: Any) -> dict[str, Any]:
  """The sizes of one cell's params: `input`, `hidden`, `out` (P, or H), `proj` and `bias`."""
  gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[PARAM_TYPES[type(p)]]
  hidden = p.w_h.shape[1] // gates
  proj = getattr(p, "w_proj", None)
  return dict(input=p.w_i.shape[0], hidden=hidden, out=p.w_h.shape[0],
              proj=None if proj is None else proj.shape[1], bias=p.b_i is not None)


def _check_cell(fn: str, spec: Spec, first: dict[str, Any]) -> None:
  """ValueError unless the params of `spec` are one cell's, as a PyTorch cell holds them."""
  why = ("BidirectionalParams" if spec.bidirectional else
         f"a tuple of {spec.num_layers} layer(s)" if spec.stacked else
         f"LSTMParams with a projection (w_proj of proj_size={first['proj']})"
         if first["proj"] is not None else None)
  if why:
    raise ValueError(
        f"{fn}: `cell=True` needs one cell's params, as an nn.LSTMCell, nn.GRUCell or "
        f"nn.RNNCell holds them (LSTMParams without w_proj, GRUParams or ElmanParams), got "
        f"{why}. Leave `cell` out to export a module (nn.LSTM, nn.GRU or nn.RNN).")


def module_kwargs(fn: str, spec: Spec, cells: list[list[Any]], *,
                  cell: bool = False) -> dict[str, Any]:
  """The PyTorch constructor arguments of `cells` (from `describe`): those of the module,
  or with `cell` those of PyTorch's cell (`input_size`, `hidden_size`, `bias`).

  Raises a ValueError if the layers and directions differ in sizes, biases or
  projection, or a layer's input size is not the previous layer's output size, or,
  with `cell`, if the params are not one cell's without projection.
  """
  first = cell_sizes(cells[0][0])
  if cell:
    _check_cell(fn, spec, first)
  directions = 2 if spec.bidirectional else 1
  for layer, entries in enumerate(cells):
    for d, p in enumerate(entries):
      if (p.b_i is None) != (p.b_h is None):
        raise ValueError(
            f"{fn}: layer {layer}{' backward' if d else ''} has "
            f"{'b_h but no b_i' if p.b_i is None else 'b_i but no b_h'}: a PyTorch module "
            "has both biases (bias=True) or neither (bias=False).")
      got = cell_sizes(p)
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
  if cell:
    return dict(input_size=int(first["input"]), hidden_size=int(first["hidden"]),
                bias=bool(first["bias"]))
  kw = dict(input_size=int(first["input"]), hidden_size=int(first["hidden"]),
            num_layers=spec.num_layers, bias=bool(first["bias"]),
            bidirectional=spec.bidirectional)
  if spec.kind == "LSTM":
    kw["proj_size"] = int(first["proj"] or 0)
  return kw
