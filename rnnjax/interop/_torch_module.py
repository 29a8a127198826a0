"""A PyTorch module given to `from_torch`: its state_dict, mode and sizes, without importing torch.

A module is recognised by duck typing: it has a `state_dict` method and one of
`torch.nn`'s `LSTM`, `GRU`, `RNN`, `LSTMCell`, `GRUCell` or `RNNCell` among its
classes (a subclass of one counts as that one). The mode is `module.mode` for the
first three (`"LSTM"`, `"GRU"`, `"RNN_TANH"` or `"RNN_RELU"`), and follows from the
class (and an `nn.RNNCell`'s `nonlinearity`) for the cells.
"""

from __future__ import annotations

from typing import Any

CELL_MODES = {"LSTMCell": "LSTM", "GRUCell": "GRU", "RNNCell": "RNN"}
CLASSES = ("LSTM", "GRU", "RNN", *CELL_MODES)
# The constructor arguments that `from_torch` also takes, to check them against.
ATTRIBUTES = ("num_layers", "bidirectional", "bias", "proj_size", "input_size", "hidden_size")
_WHAT = ("a mapping of names to arrays (`module.state_dict()`) or a PyTorch nn.LSTM, nn.GRU, "
         "nn.RNN, nn.LSTMCell, nn.GRUCell or nn.RNNCell")


def torch_class(obj: Any) -> str | None:
  """The name of the `torch.nn` RNN class that `obj` is an instance of, or None."""
  for klass in type(obj).__mro__:
    if klass.__module__.startswith("torch.nn") and klass.__name__ in CLASSES:
      return klass.__name__
  return None


def _not_a_module(fn: str, obj: Any) -> TypeError:
  """The TypeError for an `obj` that is no RNN module, naming the RNNs inside a larger model."""
  named = getattr(obj, "named_modules", None)
  if not callable(getattr(obj, "state_dict", None)) or not callable(named):
    return TypeError(f"{fn}: `state_dict` must be {_WHAT}, got {type(obj).__name__}.")
  rnns = [(name, cls) for name, sub in named() if name and (cls := torch_class(sub))]
  if not rnns:
    return TypeError(
        f"{fn}: `state_dict` must be {_WHAT}, got a {type(obj).__name__} module, which holds "
        "none of them.")
  name, cls = rnns[0]
  found = ", ".join(f"{n!r} (nn.{c})" for n, c in rnns)
  return TypeError(
      f"{fn}: `state_dict` must be {_WHAT}, got a {type(obj).__name__} module, which holds "
      f"{found}. Pass one of them, e.g. `from_torch(model.get_submodule({name!r}))`, or the "
      f"model's state_dict with its prefix: `from_torch(model.state_dict(), mode=..., "
      f"prefix={name + '.'!r})`.")


def module_mode(module: Any, cls: str) -> str:
  """The PyTorch mode of `module`, an instance of the `torch.nn` class `cls`."""
  if cls not in CELL_MODES:
    return str(module.mode)
  mode = CELL_MODES[cls]
  return f"RNN_{str(module.nonlinearity).upper()}" if mode == "RNN" else mode


def read_module(fn: str, module: Any, *, mode: str | None, prefix: str,
                given: dict[str, Any]) -> tuple[Any, str, dict[str, Any]]:
  """`(state_dict, mode, sizes)` of a PyTorch RNN `module`: `sizes` are the `ATTRIBUTES`
  in `given` (None: not given), each checked against the module's own and taken from it."""
  cls = torch_class(module)
  if cls is None or not callable(getattr(module, "state_dict", None)):
    raise _not_a_module(fn, module)
  if prefix:
    raise ValueError(
        f"{fn}: `prefix` is for the state_dict of a larger model; the state_dict of the nn.{cls} "
        f"given has no prefix. Leave `prefix` out, got prefix={prefix!r}.")
  own = module_mode(module, cls)
  if mode is not None and mode != own:
    raise ValueError(
        f"{fn}: mode={mode!r} was given, but the module is an nn.{cls} of mode {own!r}. Leave "
        "`mode` out to read it from the module.")
  sizes = dict(given)
  for name in ATTRIBUTES:
    value = getattr(module, name, None)
    if value is None or (name == "proj_size" and own != "LSTM"):
      continue
    if given[name] is not None and given[name] != value:
      raise ValueError(
          f"{fn}: `{name}={given[name]!r}` was given, but the nn.{cls} has {name}={value!r}. "
          "Leave it out to read it from the module.")
    sizes[name] = value
  return module.state_dict(), own, sizes
