"""Argument checks that build rnnjax's error messages.

Every check runs at trace time (shapes and dtypes are static under `jit`), so
it costs nothing in the compiled program. Each message names the function and
the argument, says what was expected and what was received, and where it can,
how to fix it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def positive_int(fn: str, name: str, value: Any) -> int:
  """`value` as a Python int > 0; TypeError if not an integer, ValueError if <= 0."""
  if isinstance(value, bool) or not hasattr(type(value), "__index__"):
    raise TypeError(
        f"{fn}: `{name}` must be an integer, got {value!r} of type "
        f"{type(value).__name__}. Pass e.g. {name}=128."
    )
  value = operator.index(value)
  if value <= 0:
    raise ValueError(f"{fn}: `{name}` must be a positive integer, got {name}={value}.")
  return value


def probability(fn: str, name: str, value: Any) -> float:
  """`value` as a float in [0, 1)."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise TypeError(
        f"{fn}: `{name}` must be a float in [0, 1), got {value!r} of type "
        f"{type(value).__name__}.")
  p = float(value)
  if not 0.0 <= p < 1.0:
    raise ValueError(f"{fn}: `{name}` must be in [0, 1), got {name}={value!r}.")
  return p


def choice(fn: str, name: str, value: Any, choices: Sequence[Any]) -> Any:
  """`value` if it is one of `choices`, else a ValueError listing them."""
  if value not in choices:
    listed = ", ".join(repr(c) for c in choices)
    raise ValueError(f"{fn}: `{name}` must be one of {listed}; got {name}={value!r}.")
  return value


def boolean(fn: str, name: str, value: Any) -> bool:
  """`value` as a Python bool; TypeError for anything else (0, 1, "no", None)."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(
        f"{fn}: `{name}` must be a bool, got {value!r} of type {type(value).__name__}.")
  return bool(value)


def real_number(fn: str, name: str, value: Any) -> float:
  """`value` as a finite Python float; TypeError if not a real number, ValueError if not finite."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise TypeError(
        f"{fn}: `{name}` must be a real number, got {value!r} of type {type(value).__name__}.")
  out = float(value)
  if not math.isfinite(out):
    raise ValueError(f"{fn}: `{name}` must be finite, got {name}={value!r}.")
  return out


def initializer(fn: str, name: str, value: Any) -> Any:
  """`value` if it is None or callable (an initializer `(key, shape, dtype) -> array`)."""
  if value is not None and not callable(value):
    raise TypeError(
        f"{fn}: `{name}` must be an initializer `(key, shape, dtype) -> array` (such as "
        f"jax.nn.initializers.orthogonal()) or None, got {value!r} of type "
        f"{type(value).__name__}.")
  return value


def function(fn: str, name: str, value: Any) -> Any:
  """`value` if it is callable."""
  if not callable(value):
    raise TypeError(
        f"{fn}: `{name}` must be callable (a function), got {value!r} of type "
        f"{type(value).__name__}.")
  return value


def optimizer(fn: str, value: Any) -> Any:
  """`value` if it looks like an `optax.GradientTransformation` (callable `init` and `update`)."""
  if not (callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))):
    raise TypeError(
        f"{fn}: `optimizer` must be an optax GradientTransformation (e.g. optax.adam(1e-3)), "
        f"got {value!r} of type {type(value).__name__}.")
  return value


def sequence_input(fn: str, xs: Any, input_size: int | None, *, time_major: bool = True,
                   name: str = "xs") -> tuple[int, tuple[int, ...]]:
  """Checks `xs: [T, ..., I]` (`[..., T, I]` unless `time_major`); returns `(T, batch_shape)`."""
  shape = getattr(xs, "shape", None)
  layout = "[T, ..., I]" if time_major else "[..., T, I]"
  if shape is None:
    raise TypeError(f"{fn}: `{name}` must be an array of shape {layout}, got {type(xs).__name__}.")
  if len(shape) < 2:
    order = ("time first, features last" if time_major
             else "time_major=False: time just before the features")
    raise ValueError(
        f"{fn}: `{name}` must have rank >= 2 with shape {layout} ({order}), got rank "
        f"{len(shape)} ({name}.shape={tuple(shape)}). For a single sequence without batch use "
        "shape [T, I]; for one step call `cell.apply` directly."
    )
  if input_size is not None and shape[-1] != input_size:
    raise ValueError(
        f"{fn}: {name} has feature size {shape[-1]} but params were made for "
        f"input_size={input_size} ({name}.shape={tuple(shape)}). Check that the last axis "
        f"of {name} holds the features, or re-run `cell.init` with the right input_size."
    )
  num_steps = int(shape[0] if time_major else shape[-2])
  if num_steps == 0:
    raise ValueError(
        f"{fn}: `{name}` must have at least one time step, got {name}.shape={tuple(shape)}.")
  batch = shape[1:-1] if time_major else shape[:-2]
  return num_steps, tuple(int(d) for d in batch)


def layout_hint(arg: str, got: tuple[int, ...], xs_shape: Any, time_major: bool, *,
                xs_name: str = "xs", features: bool = True) -> str:
  """A sentence if `got`, the shape of `arg` (`resets`, else lengths-like), fits the other
  layout of xs (`features`: xs has a trailing feature axis); "" otherwise."""
  seq = () if xs_shape is None else tuple(int(d) for d in xs_shape[:len(xs_shape) - features])
  if len(seq) < 2:
    return ""
  now, other = ("time-major", "batch-major") if time_major else ("batch-major", "time-major")
  flag = f"time_major={not time_major}"
  if arg == "resets":
    if tuple(got) != ((*seq[1:], seq[0]) if time_major else (seq[-1], *seq[:-1])):
      return ""
    return (f" resets looks {other} while {xs_name} ({xs_name}.shape={tuple(xs_shape)}) is "
            f"read as {now}; resets follow its layout: transpose them with jnp.moveaxis(resets, "
            f"{'-1, 0' if time_major else '0, -1'}), or, if {xs_name} is {other}, pass {flag}.")
  if tuple(got) != (seq[:-1] if time_major else seq[1:]):
    return ""
  t_axis = -1 - features
  move = f"{t_axis}, 0" if time_major else f"0, {t_axis}"
  return (f" {xs_name} looks {other}: {arg}.shape matches the batch axes of a {other} "
          f"{xs_name} ({xs_name}.shape={tuple(xs_shape)}). Pass {flag}, or transpose "
          f"{xs_name} with jnp.moveaxis({xs_name}, {move}).")


def step_input(fn: str, x: Any, input_size: int | None) -> None:
  """Checks one step's input `x: [..., I]` (its dtype is the cell's to check: cells cast)."""
  shape = getattr(x, "shape", None)
  if shape is None or len(shape) < 1:
    raise ValueError(
        f"{fn}: `x` must be an array of shape [..., I] with rank >= 1, got "
        f"{getattr(x, 'shape', type(x).__name__)}."
    )
  if input_size is not None and shape[-1] != input_size:
    raise ValueError(
        f"{fn}: x has feature size {shape[-1]} but params were made for "
        f"input_size={input_size} (x.shape={tuple(shape)})."
    )


def lengths(fn: str, lengths: Any, num_steps: int, batch_shape: tuple[int, ...], *,
            xs_shape: Any = None, time_major: bool = True, name: str = "lengths",
            xs_name: str = "xs", features: bool = True) -> jax.Array:
  """Checks `lengths: [...]` integers in [0, T] (values only when concrete); `layout_hint`
  on a shape that fits `xs_shape` in the other layout."""
  arr = lengths if isinstance(lengths, jax.Array) else np.asarray(lengths)
  if tuple(arr.shape) != batch_shape:
    layout = "[T, ...batch, I]" if time_major else "[...batch, T, I], time_major=False"
    hint = layout_hint(name, tuple(arr.shape), xs_shape, time_major, xs_name=xs_name,
                       features=features)
    raise ValueError(
        f"{fn}: `{name}` must have the batch shape of {xs_name}, {batch_shape} ({xs_name} is "
        f"{layout}), got {name}.shape={tuple(arr.shape)}.{hint}"
    )
  if not jnp.issubdtype(arr.dtype, jnp.integer):
    raise TypeError(
        f"{fn}: `{name}` must have an integer dtype, got dtype={arr.dtype}. "
        f"Convert with {name}.astype(jnp.int32)."
    )
  if _is_concrete(arr) and arr.size:
    lo, hi = int(np.min(np.asarray(arr))), int(np.max(np.asarray(arr)))
    if lo < 0 or hi > num_steps:
      raise ValueError(
          f"{fn}: `{name}` must lie in [0, T] = [0, {num_steps}], got values from "
          f"{lo} to {hi}."
      )
  return jnp.asarray(arr)


def resets(fn: str, resets: Any, num_steps: int, batch_shape: tuple[int, ...], *,
           xs_shape: Any = None, time_major: bool = True) -> jax.Array:
  """Checks `resets: [T, ...]` booleans (`[..., T]` unless `time_major`)."""
  arr = resets if isinstance(resets, jax.Array) else np.asarray(resets)
  expected, layout = (((num_steps, *batch_shape), "[T, ...batch]") if time_major
                      else ((*batch_shape, num_steps), "[...batch, T]"))
  if tuple(arr.shape) != expected:
    hint = layout_hint("resets", tuple(arr.shape), xs_shape, time_major)
    raise ValueError(
        f"{fn}: `resets` must have shape {layout} = {expected}, got "
        f"resets.shape={tuple(arr.shape)}.{hint}"
    )
  if arr.dtype != jnp.bool_:
    raise TypeError(
        f"{fn}: `resets` must have dtype bool, got dtype={arr.dtype}. "
        "Convert with resets.astype(bool)."
    )
  return jnp.asarray(arr)


def carry(fn: str, carry: Any, expected: Any) -> None:
  """Checks that `carry` has the pytree structure, leaf shapes and dtypes of `expected`."""
  got_def = jax.tree_util.tree_structure(carry)
  want_def = jax.tree_util.tree_structure(expected)
  if got_def != want_def:
    raise TypeError(
        f"{fn}: `carry` does not match the cell's carry structure: expected {want_def}, "
        f"got {got_def}. Build it with `cell.initial_carry(params, batch_shape)`."
    )
  got = jax.tree_util.tree_leaves_with_path(carry)
  want = jax.tree_util.tree_leaves(expected)
  for (path, leaf), ref in zip(got, want, strict=True):
    shape = tuple(getattr(leaf, "shape", ()))
    if shape != tuple(ref.shape):
      raise ValueError(
          f"{fn}: `carry{jax.tree_util.keystr(path)}` has shape {shape}, expected "
          f"{tuple(ref.shape)} (batch shape of xs + the cell's state size). Build it with "
          "`cell.initial_carry(params, batch_shape)`."
      )
  _carry_dtypes(fn, carry, expected)


def _describe(value: Any) -> str:
  """A short description of `value` for a message: its type, and keys or shape where useful."""
  if isinstance(value, dict):
    return f"a dict with keys {sorted(map(str, value))[:8]}"
  shape = getattr(value, "shape", None)
  if shape is not None and hasattr(value, "dtype"):
    return f"an array of shape {tuple(shape)} and dtype {value.dtype}"
  if isinstance(value, tuple) and not hasattr(value, "_fields"):
    return f"a tuple of length {len(value)}"
  if isinstance(value, (int, float, str)):
    return f"{value!r} of type {type(value).__name__}"
  return type(value).__name__


def key(fn: str, name: str, value: Any, *, optional: bool = False) -> Any:
  """Checks that `value` is one PRNG key: a typed key (`jax.random.key`) or a raw `uint32[2]`.

  TypeError for anything else (an int seed included), ValueError for a batch of keys.
  With `optional`, `None` passes.
  """
  if value is None and optional:
    return None
  dtype = getattr(value, "dtype", None)
  shape = getattr(value, "shape", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if tuple(shape) != ():
      raise ValueError(
          f"{fn}: `{name}` must be a single PRNG key, got a batch of keys of shape "
          f"{tuple(shape)}. Pass one key (e.g. keys[0]), or map over the keys with jax.vmap.")
    return value
  if dtype is not None and np.dtype(dtype) == np.uint32 and shape is not None:
    # The raw key data of the default implementation ([2] for threefry), as jax.random.PRNGKey.
    raw_shape = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape
    if tuple(shape) == raw_shape:
      return value
    if len(shape) > 1 and tuple(shape[-1:]) == raw_shape:
      raise ValueError(
          f"{fn}: `{name}` must be a single PRNG key, got a batch of raw keys of shape "
          f"{tuple(shape)}. Pass one key (e.g. keys[0]), or map over the keys with jax.vmap.")
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    hint = f"For the integer seed {value} pass jax.random.key({value})."
  else:
    hint = "Make one with jax.random.key(seed)."
  raise TypeError(
      f"{fn}: `{name}` must be a PRNG key (jax.random.key(seed), or a raw uint32[2] key "
      f"from jax.random.PRNGKey), got {_describe(value)}. {hint}")


def params(fn: str, value: Any, expected: type, *, made_by: str) -> None:
  """Checks that `value` is a `expected` NamedTuple (the params of the cell `made_by`)."""
  if not isinstance(value, expected):
    raise TypeError(
        f"{fn}: `params` must be {expected.__name__} (made by `{made_by}(...).init`), got "
        f"{_describe(value)}. Params of another type, or restored as a plain dict, do not "
        "fit: pass the params that this object's `init` made.")


def sequence_params(fn: str, value: Any, num_layers: int) -> None:
  """Checks a stack's params: a tuple (or list) with one entry per layer."""
  if not isinstance(value, (tuple, list)) or hasattr(value, "_fields") \
      or len(value) != num_layers:
    got = (f"a {type(value).__name__} of length {len(value)}"
           if isinstance(value, (tuple, list)) and not hasattr(value, "_fields")
           else _describe(value))
    raise TypeError(
        f"{fn}: `params` must be a tuple with one entry per layer ({num_layers} layers), as "
        f"`init` returns it, got {got}.")


def batch_shape(fn: str, value: Any) -> tuple[int, ...]:
  """`value` as a tuple of non-negative ints; TypeError for a bare int or a non-sequence."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    raise TypeError(
        f"{fn}: `batch_shape` must be a tuple of ints, got the int {value}. For one batch "
        f"axis of size {value} pass batch_shape=({value},); for no batch axis pass ().")
  if not isinstance(value, (tuple, list)):
    raise TypeError(
        f"{fn}: `batch_shape` must be a tuple of ints such as (32,) or (), got "
        f"{_describe(value)}.")
  for d in value:
    if isinstance(d, bool) or not hasattr(type(d), "__index__"):
      raise TypeError(
          f"{fn}: `batch_shape` must be a tuple of ints, got {tuple(value)!r} (holds "
          f"{d!r} of type {type(d).__name__}).")
    if operator.index(d) < 0:
      raise ValueError(f"{fn}: `batch_shape` must hold sizes >= 0, got {tuple(value)!r}.")
  return tuple(operator.index(d) for d in value)


def params_dtype(params: Any) -> Any:
  """The one floating dtype of the params' leaves, or None if they mix dtypes (or have none)."""
  dtypes = {np.dtype(leaf.dtype) for leaf in jax.tree_util.tree_leaves(params)
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)}
  return dtypes.pop() if len(dtypes) == 1 else None


def input_dtype(fn: str, name: str, x: Any, dtype: Any) -> None:
  """Checks that the input `x` has the params' dtype `dtype` (as JAX will see it).

  `precision.check_sequence_dtype` calls it where a cell does not take `x`'s dtype.
  """
  if dtype is None or not hasattr(x, "dtype"):
    return
  got = np.dtype(jax.dtypes.canonicalize_dtype(x.dtype))
  want = np.dtype(dtype)
  if got == want:
    return
  other = (f" (or build the cell with dtype=jnp.{got.name})"
           if jnp.issubdtype(got, jnp.floating) else "")
  raise TypeError(
      f"{fn}: {name} has dtype {got.name} but the cell's params are {want.name}; cast {name} "
      f"with {name}.astype(jnp.{want.name}){other}.")


def _carry_dtypes(fn: str, carry: Any, expected: Any) -> None:
  """Each carry leaf must have the dtype of the matching leaf of `expected` (structure checked)."""
  got = jax.tree_util.tree_leaves_with_path(carry)
  want = jax.tree_util.tree_leaves(expected)
  for (path, leaf), ref in zip(got, want, strict=True):
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
      raise TypeError(
          f"{fn}: `carry{jax.tree_util.keystr(path)}` must be an array, got "
          f"{_describe(leaf)}. Build the carry with `cell.initial_carry(params, batch_shape)`.")
    if np.dtype(jax.dtypes.canonicalize_dtype(dtype)) != np.dtype(ref.dtype):
      raise TypeError(
          f"{fn}: `carry{jax.tree_util.keystr(path)}` has dtype {np.dtype(dtype).name}, "
          f"expected {np.dtype(ref.dtype).name} (the dtype of cell.initial_carry). Cast it "
          f"with .astype(jnp.{np.dtype(ref.dtype).name}), or build it with "
          "`cell.initial_carry(params, batch_shape)`.")


def step_carry(fn: str, carry: Any, expected: Any) -> None:
  """Checks one step's carry against `expected` (the unbatched initial carry, shapes only).

  Structure and dtypes must match; each leaf's trailing axes must be the state shape
  (leading axes are batch axes, which broadcast against `x`).
  """
  got_def = jax.tree_util.tree_structure(carry)
  want_def = jax.tree_util.tree_structure(expected)
  if got_def != want_def:
    raise TypeError(
        f"{fn}: `carry` does not match the cell's carry structure: expected {want_def}, "
        f"got {got_def}. Build it with `cell.initial_carry(params, batch_shape)`.")
  _carry_dtypes(fn, carry, expected)
  for (path, leaf), ref in zip(jax.tree_util.tree_leaves_with_path(carry),
                               jax.tree_util.tree_leaves(expected), strict=True):
    shape, state = tuple(leaf.shape), tuple(ref.shape)
    if len(shape) < len(state) or shape[len(shape) - len(state):] != state:
      raise ValueError(
          f"{fn}: `carry{jax.tree_util.keystr(path)}` has shape {shape}, expected "
          f"[..., {', '.join(map(str, state))}] (batch axes, then the cell's state size "
          f"{state}). Build it with `cell.initial_carry(params, batch_shape)`.")
