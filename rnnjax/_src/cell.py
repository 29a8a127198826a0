"""The cell contract and small helpers shared by every cell.

A cell says what one time step computes. It is a `NamedTuple` of pure
functions, like `optax.GradientTransformation`; a factory such as
`rnnjax.lstm(hidden_size=...)` closes over the hyper-parameters, so the params
and carries it makes are pytrees of arrays only::

  init          :: (key, input_size) -> params
  initial_carry :: (params, batch_shape=()) -> carry
  apply         :: (params, carry, x[..., I], *, key=None) -> (carry, y[..., O])

`apply` takes the carry first, so `functools.partial(cell.apply, params)` is a
`jax.lax.scan` body as it stands. Cells are batch-polymorphic: any leading
dimensions of `x` broadcast against the carry as `jnp` operations do.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._src import precision

Params = Any
Carry = Any
InitFn = Callable[[jax.Array, int], Params]
InitialCarryFn = Callable[..., Carry]
ApplyFn = Callable[..., tuple[Carry, jax.Array]]
Initializer = Callable[..., jax.Array]


class Identified:
  """Equality, hash and repr by the factory call that built the object (see `factory`).

  Mixed into `Cell` and `Layer` (tuples of functions). An object that a
  `factory` built carries its call, `(name, ((argument, value), ...))`, and
  compares and hashes by it, so two cells built alike are equal (and `jit`'s
  cache for static arguments hits) although their functions are distinct
  closures. Any other object (a user-written `Cell(init, initial_carry, apply)`,
  or a built one after `_replace`, which may compute something else) has no call
  and compares as a tuple of its functions, by their identity, as it always did.

  As a pytree, a built object is a node without leaves that holds itself as
  static data: `jax.tree_util.tree_leaves(lstm(8)) == []`, a `tree_map` gives it
  back unchanged, and `jax.jit` or `equinox.filter_jit` take it as an ordinary
  argument and cache by its call. A user-written one flattens to its functions,
  as the `NamedTuple` it is.
  """

  __slots__ = ()
  _call: tuple[str, tuple[tuple[str, Any], ...]] | None = None
  _text: str = ""

  def __init_subclass__(cls, **kwargs: Any):
    super().__init_subclass__(**kwargs)
    if Identified in cls.__bases__:
      jax.tree_util.register_pytree_with_keys(
          cls, _flatten_with_keys, functools.partial(_unflatten, cls), _flatten)

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, tuple):
      return NotImplemented
    mine, theirs = self._call, getattr(other, "_call", None)
    if mine is None and theirs is None:
      return tuple.__eq__(self, other)
    return type(self) is type(other) and mine == theirs

  def __ne__(self, other: object) -> bool:
    equal = self.__eq__(other)
    return equal if equal is NotImplemented else not equal

  def __hash__(self) -> int:
    return tuple.__hash__(self) if self._call is None else hash(self._call)

  def __repr__(self) -> str:
    return super().__repr__() if self._call is None else self._text


def _flatten(obj: Identified) -> tuple[tuple[Any, ...], Any]:
  return ((), obj) if obj._call is not None else (tuple(obj), None)


def _flatten_with_keys(obj: Identified) -> tuple[tuple[Any, ...], Any]:
  if obj._call is not None:
    return (), obj
  keys = (jax.tree_util.GetAttrKey(name) for name in obj._fields)
  return tuple(zip(keys, obj, strict=True)), None


def _unflatten(cls: type, built: Any, children: Any) -> Any:
  return built if built is not None else cls(*children)


class _CellFields(NamedTuple):
  init: InitFn
  initial_carry: InitialCarryFn
  apply: ApplyFn
  input_size: Callable[[Params], int] | None = None
  paths: Any = None  # an `engines.FastPaths`, bound to `apply`


class Cell(Identified, _CellFields):
  """One recurrent step as pure functions.

  A `NamedTuple` `Cell(init, initial_carry, apply, input_size=None, paths=None)`. The cells
  that rnnjax's factories build print as their factory call
  (`lstm(hidden_size=32)`) and compare and hash by it, so that a new but equal
  cell hits `jax.jit`'s cache; a user-written `Cell` compares by the identity of
  its functions, as a tuple of them does.

  Attributes:
    init: `init(key, input_size) -> params`, a pytree of arrays.
    initial_carry: `initial_carry(params, batch_shape=()) -> carry`, the state
      before the first step (all zeros for the built-in cells); its leaves have
      shape `[*batch_shape, ...]` and the dtype of the params.
    apply: `apply(params, carry, x, *, key=None) -> (carry, y)` with
      `x: [..., I]`. `key` is only used by cells with randomness (a `stack` with
      dropout); the built-in cells accept and ignore it. The built-in cells
      cast an `x` of any floating dtype to their compute dtype (`dtype`); the
      carry must have the dtypes of `initial_carry` (the params'; a TypeError
      says which and how to cast), so the new carry has the dtype of the carry
      given and a `lax.scan` over `apply` keeps its carry type.
    input_size: optional `input_size(params) -> int`, the feature size `I` the
      params were made for. Engines use it to check inputs with a clear message;
      a user-written cell may leave it `None`.
    paths: optional `rnnjax.FastPaths`, what the engines may run instead of stepping
      `apply`: a whole-sequence kernel (the built-in LSTM and GRU), the linear
      recurrence of a linear cell (`rnnjax.with_recurrence`), a stack's layers. It
      is bound to the `apply` it reproduces (`paths.apply`): after
      `cell._replace(apply=...)` the engines ignore it and step the new `apply`.
      `rnnjax.engine_plan` says what will run.
  """


class _Same:
  """An argument compared and hashed by identity (an initializer function, an array)."""

  __slots__ = ("value",)

  def __init__(self, value: Any):
    self.value = value

  def __eq__(self, other: object) -> bool:
    return isinstance(other, _Same) and other.value is self.value

  def __hash__(self) -> int:
    return id(self.value)

  def __repr__(self) -> str:
    return repr(self.value)


def _normalised(name: str, value: Any) -> Any:
  """`value` as it enters a factory's identity: equal values compare equal, others by identity."""
  if name.endswith("dtype") and value is not None:
    try:
      # "float32", jnp.float32 and np.dtype("float32") alike. By name: a NumPy dtype
      # compares equal to None (np.dtype(None) is float64), which would make
      # `param_dtype=jnp.float64` equal to the default `param_dtype=None`.
      return jnp.dtype(value).name
    except TypeError:
      return _Same(value)
  if value is None or isinstance(value, (bool, int, float, complex, str)):
    return value
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, Identified):
    try:
      hash(value)
      return value
    except TypeError:
      return _Same(value)
  if isinstance(value, (list, tuple)):
    return tuple(_normalised(name, v) for v in value)
  return _Same(value)


def _shown(value: Any) -> str:
  if isinstance(value, np.dtype):
    return repr(value.name)
  if isinstance(value, tuple) and not isinstance(value, Identified):
    items = [_shown(v) for v in value]
    return f"({', '.join(items)}{',' if len(items) == 1 else ''})"
  return repr(value)


def factory(fn: Callable[..., Any]) -> Callable[..., Any]:
  """Gives the `Cell`s and `Layer`s that `fn` returns an identity: `fn`'s name and its arguments.

  The built object prints as the call (`lstm(hidden_size=32)`, only the
  arguments that differ from their defaults) and compares and hashes by the
  name and every argument, normalised: `lstm(8) == lstm(hidden_size=8,
  dtype="float32")`; numbers and strings by value, dtypes by name,
  sequences item by item, cells by their own identity, and anything else
  (initializer functions, arrays, unhashable objects) by identity. A fresh but
  equal cell passed to `jax.jit` as a static argument therefore hits the
  compilation cache. Equal cells run the same code: the factory's closures
  depend on nothing but these arguments, and each carries the same fast paths.

  Caching the objects per call (`functools.lru_cache`, so `lstm(8) is lstm(8)`)
  would do the same for hashable arguments, but keeps every cell ever built
  alive and fails on unhashable ones; comparing by the call does neither.
  """
  signature = inspect.signature(fn)
  name = fn.__name__

  @functools.wraps(fn)
  def build(*args: Any, **kwargs: Any) -> Any:
    made = fn(*args, **kwargs)
    given = signature.bind(*args, **kwargs).arguments
    call, shown = [], []
    for param in signature.parameters.values():
      value = _normalised(param.name, given.get(param.name, param.default))
      call.append((param.name, value))
      if param.default is param.empty or value != _normalised(param.name, param.default):
        shown.append(f"{param.name}={_shown(value)}")
    made = type(made)._make(made)
    made._call = (name, tuple(call))
    made._text = f"{name}({', '.join(shown)})"
    return made

  return build


def output_size(cell: Cell, params: Params, input_size: int) -> int:
  """The feature size of `cell.apply`'s output for inputs of `input_size` (by shape evaluation)."""
  carry = jax.eval_shape(lambda p: cell.initial_carry(p, ()), params)
  dtype = jax.tree_util.tree_leaves(params)[0].dtype
  x = jax.ShapeDtypeStruct((input_size,), dtype)
  _, y = jax.eval_shape(cell.apply, params, carry, x)
  return int(y.shape[-1])


def zeros(batch_shape: tuple[int, ...], size: int, dtype: Any) -> jax.Array:
  """A zero carry leaf of shape `[*batch_shape, size]`."""
  return jnp.zeros((*tuple(batch_shape), size), dtype)


def gate_blocks(init: Initializer, key: jax.Array, rows: int, cols: int, gates: int,
                dtype: Any) -> jax.Array:
  """`[rows, gates * cols]`: `gates` independent `[rows, cols]` draws of `init`, side by side.

  Used so that each gate's block is orthogonal (or has its own fan-in scaling),
  rather than the fused matrix as a whole.
  """
  keys = jax.random.split(key, gates)
  return jnp.concatenate([draw(init, k, (rows, cols), dtype) for k in keys], axis=-1)


def draw(init: Initializer, key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
  """`init(key, shape)` drawn in at least float32, then cast to `dtype`.

  Low-precision dtypes (bfloat16) are cast after drawing: some initializers
  (orthogonal, via QR) have no bfloat16 kernel on CPU.
  """
  return init(key, shape, precision.at_least_float32(dtype)).astype(dtype)


def gated_biases(gates: int, hidden_size: int, dtype: Any, *,
                 use_bias: bool, fill: dict[int, float] | None = None
                 ) -> tuple[jax.Array | None, jax.Array | None]:
  """Input and recurrent biases `b_i, b_h: [gates * H]` (None when `use_bias=False`).

  `fill` maps a gate index to a constant for that gate's slice of `b_i` (for
  example the LSTM forget gate at 1.0); `b_h` starts at zero.
  """
  if not use_bias:
    return None, None
  b_i = jnp.zeros((gates * hidden_size,), dtype)
  for gate, value in (fill or {}).items():
    b_i = b_i.at[gate * hidden_size:(gate + 1) * hidden_size].set(value)
  return b_i, jnp.zeros((gates * hidden_size,), dtype)


def affine(x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
  """`x @ w + b`, with `b` optional."""
  y = x @ w
  return y if b is None else y + b


def default_kernel_init() -> Initializer:
  """Input weights: LeCun normal, variance `1 / I` (Flax's default for kernels)."""
  return jax.nn.initializers.lecun_normal()


def default_recurrent_init() -> Initializer:
  """Recurrent weights: orthogonal, one orthogonal block per gate."""
  return jax.nn.initializers.orthogonal()
