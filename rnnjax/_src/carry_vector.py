"""A carry pytree as one real vector per batch element, for the tools that need one.

The Newton engine linearises a step as a map of vectors, and the diagnostics take
Jacobians and perturb carries as vectors: leaves in tree order, each flattened, complex
leaves as their real parts, then their imaginary parts.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class CarryLayout(NamedTuple):
  """How a carry pytree maps to one real vector per batch element (leaves in tree order)."""

  treedef: Any
  shapes: tuple[tuple[int, ...], ...]  # per leaf, the feature shape (after the batch axes)
  dtypes: tuple[Any, ...]  # per leaf, its dtype
  sizes: tuple[int, ...]  # per leaf, its real features (complex leaves count twice)
  dtype: Any  # the vector's dtype: the widest real dtype of the leaves


def _real(dtype: Any) -> Any:
  return jnp.real(jnp.zeros((), dtype)).dtype


def layout_of(carry: Any, batch_ndim: int) -> CarryLayout:
  """The `CarryLayout` of `carry` (arrays or `ShapeDtypeStruct`s) with `batch_ndim` batch axes."""
  leaves, treedef = jax.tree_util.tree_flatten(carry)
  shapes = tuple(tuple(leaf.shape[batch_ndim:]) for leaf in leaves)
  dtypes = tuple(jnp.dtype(leaf.dtype) for leaf in leaves)
  sizes = tuple(math.prod(s) * (2 if jnp.issubdtype(d, jnp.complexfloating) else 1)
                for s, d in zip(shapes, dtypes, strict=True))
  dtype = max((_real(d) for d in dtypes), key=lambda d: jnp.dtype(d).itemsize)
  return CarryLayout(treedef, shapes, dtypes, sizes, dtype)


def to_vector(layout: CarryLayout, carry: Any, batch_shape: tuple[int, ...]) -> jax.Array:
  """Carry leaves `[*batch, ...]` -> `[*batch, S]` (complex leaves: real parts, then imaginary)."""
  parts = []
  for leaf, shape, dtype in zip(jax.tree_util.tree_leaves(carry), layout.shapes, layout.dtypes,
                                strict=True):
    flat = jnp.broadcast_to(leaf, (*batch_shape, *shape)).reshape(*batch_shape, -1)
    if jnp.issubdtype(dtype, jnp.complexfloating):
      parts += [jnp.real(flat), jnp.imag(flat)]
    else:
      parts.append(flat)
  return jnp.concatenate([p.astype(layout.dtype) for p in parts], axis=-1)


def from_vector(layout: CarryLayout, vec: jax.Array) -> Any:
  """The inverse of `to_vector`: `[*batch, S]` -> the carry, each leaf in its own dtype."""
  batch_shape = vec.shape[:-1]
  leaves, start = [], 0
  for shape, dtype, size in zip(layout.shapes, layout.dtypes, layout.sizes, strict=True):
    part = vec[..., start:start + size]
    start += size
    if jnp.issubdtype(dtype, jnp.complexfloating):
      real = _real(dtype)
      part = jax.lax.complex(part[..., :size // 2].astype(real), part[..., size // 2:].astype(real))
    leaves.append(part.reshape(*batch_shape, *shape).astype(dtype))
  return jax.tree_util.tree_unflatten(layout.treedef, leaves)
