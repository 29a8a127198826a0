"""Placement for `fit`: each call's batch assembled and put on the devices.

`stack_steps` stacks the batches of a call's steps (`steps_per_call > 1`), NumPy
ones on the host, whence a `BatchPlacer` sends each device its slice at once.

`data_parallel` checks the mesh and the batch axis, makes every mesh axis
`AxisType.Auto` (XLA's sharding propagation then partitions the step), puts the
state on every device, and returns a `BatchPlacer`, which splits each batch
along its batch dimension (`batch_dim`, per leaf) over the mesh axis
`batch_axis`. The step itself is unchanged: under `jit` it runs SPMD.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec


def data_parallel(fn: str, state: Any, mesh: Any, batch_axis: Any,
                  batch_dim: Any) -> tuple[Any, BatchPlacer | None]:
  """`(state, place)`: with a `mesh`, `state` replicated on it and a placer of batches.

  Without one (`mesh=None`), `state` as it is and None.
  """
  if mesh is None:
    return state, None
  mesh = _auto_mesh(fn, mesh, batch_axis)
  place = BatchPlacer(fn, mesh, batch_axis, batch_dim)
  return jax.device_put(state, NamedSharding(mesh, PartitionSpec())), place


def stack_steps(batches: list[Any]) -> Any:
  """Stacks batches on a new leading axis: NumPy arrays on the host, others with `jnp`."""
  def stack(*xs):
    return np.stack(xs) if all(isinstance(x, np.ndarray) for x in xs) else jnp.stack(xs)
  return jax.tree_util.tree_map(stack, *batches)


def _auto_mesh(fn: str, mesh: Any, batch_axis: Any) -> Mesh:
  """Checks `mesh` and `batch_axis`; returns `mesh` with every axis of type Auto.

  `fit` leaves the partitioning of the step to XLA's sharding propagation, which
  takes any model as it is; explicit axes (`jax.make_mesh`'s default) would make
  ops such as reshapes of the batch declare their output's sharding.
  """
  if not isinstance(mesh, Mesh):
    raise TypeError(
        f"{fn}: `mesh` must be a jax.sharding.Mesh or None, got {type(mesh).__name__}. "
        "Make one with e.g. jax.make_mesh((jax.device_count(),), ('batch',)).")
  if not isinstance(batch_axis, str) or batch_axis not in mesh.axis_names:
    raise ValueError(
        f"{fn}: `batch_axis` must name an axis of `mesh`, one of {tuple(mesh.axis_names)}; "
        f"got batch_axis={batch_axis!r}.")
  if all(t == AxisType.Auto for t in mesh.axis_types):
    return mesh
  return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _leaf_dims(fn: str, shapes: Any, batch_dim: Any) -> list[tuple[str, tuple, int | None]]:
  """`(name, shape, dim)` per leaf of `shapes` (a tree of `ShapeDtypeStruct`s, one step's).

  `dim` is None for a leaf to replicate.
  """
  leaves = jax.tree_util.tree_flatten_with_path(shapes)[0]
  if batch_dim is None or isinstance(batch_dim, int):
    dims = [batch_dim] * len(leaves)
  else:
    dim_leaves, dim_def = jax.tree_util.tree_flatten(batch_dim, is_leaf=lambda x: x is None)
    try:
      subtrees = dim_def.flatten_up_to(shapes)
    except (TypeError, ValueError) as err:
      raise ValueError(
          f"{fn}: `batch_dim` must be an int, None, or a pytree with the structure of the "
          f"batch (or a prefix of it) holding ints and Nones; got batch_dim={batch_dim!r} "
          f"for a batch of structure {jax.tree_util.tree_structure(shapes)}.") from err
    dims = [d for d, sub in zip(dim_leaves, subtrees, strict=True)
            for _ in jax.tree_util.tree_leaves(sub)]
  out = []
  for (path, leaf), dim in zip(leaves, dims, strict=True):
    name = f"batch{jax.tree_util.keystr(path)}"
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
      raise TypeError(
          f"{fn}: `batch_dim` for {name} must be an int or None, got {dim!r} of type "
          f"{type(dim).__name__}.")
    shape = tuple(leaf.shape)
    if dim is None or not shape:  # Scalars (a learning rate, a flag) go to every device.
      out.append((name, shape, None))
      continue
    if not -len(shape) <= dim < len(shape):
      raise ValueError(
          f"{fn}: {name} has shape {shape}, which has no dimension batch_dim={dim}. Pass "
          "`batch_dim` as a pytree like the batch giving this leaf's batch dimension "
          "(e.g. 0 for per-sequence [B] arrays), or None to replicate it.")
    out.append((name, shape, dim % len(shape)))
  return out


@functools.lru_cache(maxsize=64)
def _put_on(shardings: tuple[NamedSharding, ...]) -> Callable:
  """A jitted identity that places a list of host arrays with `shardings` (compiled once)."""
  return jax.jit(lambda xs: xs, in_shardings=(list(shardings),), out_shardings=list(shardings))


class BatchPlacer:
  """Puts each batch on `mesh`, split along its batch dimension over `batch_axis`.

  The shardings are worked out (and checked) once per batch structure and shape.
  Host (NumPy) batches go through a jitted identity with those shardings, whose
  C++ dispatch sends each device its slice for a fraction of `jax.device_put`'s
  cost; JAX arrays go through `jax.device_put`. With several processes each one
  passes its own share of the global batch, which
  `jax.make_array_from_process_local_data` assembles: a process's devices get
  its share's slices in the order of the mesh, so with a mesh over
  `jax.devices()` (process order) the global batch is the shares concatenated
  in process order. Arrays to replicate must be equal in every process.
  """

  def __init__(self, fn: str, mesh: Mesh, batch_axis: str, batch_dim: Any):
    self.fn, self.mesh, self.batch_axis, self.batch_dim = fn, mesh, batch_axis, batch_dim
    self.cache: dict[Any, tuple[list[NamedSharding], Callable]] = {}

  def _shardings(self, leaves: list[Any], treedef: Any, lead: int) -> list[NamedSharding]:
    n, procs = self.mesh.shape[self.batch_axis], jax.process_count()
    shapes = jax.tree_util.tree_unflatten(treedef, [  # Only the shapes matter here.
        jax.ShapeDtypeStruct(np.shape(x)[lead:], np.float32) for x in leaves])
    out = []
    for name, shape, dim in _leaf_dims(self.fn, shapes, self.batch_dim):
      if dim is None:
        out.append(NamedSharding(self.mesh, PartitionSpec()))
        continue
      size = shape[dim] * procs
      if size % n:
        each = f" ({procs} processes with {shape[dim]} each)" if procs > 1 else ""
        raise ValueError(
            f"{self.fn}: the batch size must be divisible by the {n} devices on mesh axis "
            f"{self.batch_axis!r}; got {size} examples{each} in {name} (shape {shape}, "
            f"batch_dim={dim}). Use a batch size that is a multiple of {n}.")
      spec = PartitionSpec(*[None] * (lead + dim), self.batch_axis)
      out.append(NamedSharding(self.mesh, spec))
    return out

  def __call__(self, batch: Any, lead: int = 0) -> Any:
    """`lead` is 1 when the leaves carry a leading axis of steps, which `batch_dim` skips."""
    leaves, treedef = jax.tree_util.tree_flatten(batch)
    key = (treedef, lead, tuple(np.shape(x) for x in leaves))
    if key not in self.cache:
      shardings = self._shardings(leaves, treedef, lead)
      self.cache[key] = shardings, _put_on(tuple(shardings))
    shardings, put = self.cache[key]
    if jax.process_count() == 1:
      on_host = not any(isinstance(x, jax.Array) for x in leaves)
      placed = put(leaves) if on_host else jax.device_put(leaves, shardings)
    else:  # Several processes (tests/test_multihost.py): each passes its own share.
      placed = [jax.make_array_from_process_local_data(s, np.asarray(x))
                for s, x in zip(shardings, leaves, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, placed)
