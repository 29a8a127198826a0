"""Argument conversion and checks of `rnnjax.interop.pytorch`, and their messages.

Arrays may come as numpy arrays, jax arrays or torch tensors; torch tensors are read
without importing torch. Each message names the function (`fn`) and the argument.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._src import checks
from rnnjax.interop._torch_layout import MODES, TYPE_NAMES


def listing(names: Any, limit: int = 12) -> str:
  """The `repr`s of `names`, comma-separated, the first `limit` of them and the count."""
  names = list(names)
  shown = ", ".join(repr(n) for n in names[:limit])
  return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def to_numpy(fn: str, name: str, value: Any) -> np.ndarray:
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


def to_jax(fn: str, name: str, value: Any) -> jax.Array:
  """`value` as a jax array: jax arrays (also traced ones, under `jit`) pass as they are."""
  return value if isinstance(value, jax.Array) else jnp.asarray(to_numpy(fn, name, value))


def check_bool(fn: str, name: str, value: Any) -> bool | None:
  """`value` as a Python bool, or None; TypeError for anything else."""
  if value is not None and not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{fn}: `{name}` must be a bool or None, got {value!r}.")
  return None if value is None else bool(value)


def check_size(fn: str, name: str, value: Any, *, zero_ok: bool = False) -> int | None:
  """`value` as a positive int, or None (or 0 with `zero_ok`)."""
  if value is None or (zero_ok and not isinstance(value, bool) and value == 0):
    return value
  return checks.positive_int(fn, name, value)


def check_prefix(fn: str, prefix: Any) -> None:
  """TypeError unless the key prefix `prefix` is a str."""
  if not isinstance(prefix, str):
    raise TypeError(f"{fn}: `prefix` must be a str, got {prefix!r}.")


def check_dtype(fn: str, dtype: Any) -> Any:
  """`dtype` as a floating `jnp.dtype`, or None."""
  if dtype is None:
    return None
  try:
    dtype = jnp.dtype(dtype)
  except TypeError:
    raise TypeError(f"{fn}: `dtype` must be a floating dtype such as jnp.float32, got "
                    f"{dtype!r}.") from None
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"{fn}: `dtype` must be a floating dtype such as jnp.float32, got "
                    f"dtype={dtype}.")
  return dtype


def mode_name(fn: str, mode: Any) -> str:
  """`mode` in PyTorch's spelling (`"lstm"` -> `"LSTM"`); a ValueError unless it is one of
  `MODES`, in any case."""
  name = mode.upper() if isinstance(mode, str) else mode
  if name not in MODES:
    hint = (" An nn.RNN's mode names its nonlinearity: 'RNN_TANH' (the default) or 'RNN_RELU'."
            if name == "RNN" else "")
    raise ValueError(
        f"{fn}: `mode` must be one of {', '.join(map(repr, MODES))} (in any case); got "
        f"mode={mode!r}.{hint}")
  return name


def check_mode(fn: str, mode: str | None, kind: str) -> None:
  """ValueError unless `mode` (if given, in any case) is a PyTorch mode of params of `kind`."""
  if mode is None:
    return
  if not mode_name(fn, mode).startswith(kind):
    fits = "'RNN_TANH' or 'RNN_RELU'" if kind == "RNN" else repr(kind)
    raise ValueError(
        f"{fn}: mode={mode!r} does not match the params, which are {TYPE_NAMES[kind]} "
        f"(mode {fits}).")


def mismatch(fn: str, name: str, given: Any, found: Any, where: str) -> None:
  """ValueError if the size `name` was `given` and differs from the one `found` (`where`)."""
  if given is not None and given != found:
    raise ValueError(
        f"{fn}: `{name}={given!r}` was given, but the state_dict has {name}={found!r} "
        f"({where}).")


def check_ndim(fn: str, name: str, x: Any) -> None:
  """ValueError unless `x` is a batched sequence, of rank 3."""
  shape = getattr(x, "shape", None)
  if shape is None or len(shape) != 3:
    raise ValueError(
        f"{fn}: `{name}` must be a batched sequence of rank 3, got "
        + (f"shape {tuple(shape)}" if shape is not None else type(x).__name__)
        + ". (PyTorch ignores batch_first for an unbatched [T, I] input: use it as it is.)")
