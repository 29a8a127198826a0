"""Whole-sequence loops as one JAX primitive, whose lowering picks a kernel per platform.

The fast paths (`fused.py`) run three loops per sequence: the forward pass, the
forward-mode tangent loop (a linear map of the tangents), and its transpose, the
reverse-mode loop. Each is a `Loop`: a pure-JAX `reference` (a `lax.scan`) that runs
on every platform, and optional `kernels` for some platforms (a Pallas kernel on
GPU), each of which may decline a call by returning None. `call(loop, *args)` binds
one primitive, `rnnjax_loop`, so that

- lowering for a platform runs that platform's kernel, or else the reference, at
  compile time: one jitted function serves CPU and GPU, with no trace-time guess of
  the backend;
- a linear loop (its last `loop.linear` arguments) transposes to its partner loop,
  `loop.transpose`, a hand-written reverse loop, instead of JAX's transpose of the
  reference: this is how reverse mode reaches a kernel (or a leaner loop) that JAX
  could not derive;
- everything else is the reference's: `jax.jvp` along non-linear arguments (second
  derivatives), `vmap` (the reference, vmapped), shapes; and so is the lowering of a
  program that XLA partitions over several devices itself (it cannot split a custom
  call), or that `jax.export` serialises (it needs stable custom calls).

Kernels are registered per platform (`"cuda"`, `"cpu"`, ...) and loop kind;
`kernels_on(...)` adds some for a block of code, which is how the tests run the GPU
kernels on CPU in Pallas's interpret mode.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


@dataclasses.dataclass(frozen=True, eq=False)
class Loop:
  """A loop over a whole sequence: a pure-JAX reference, and kernels found by its `kind`.

  Attributes:
    name: unique; the primitive carries it, and `transpose` refers to loops by it.
    kind: the loop's family (`"lstm.adjoint"`); kernels are registered per kind.
    reference: `reference(*args) -> tuple of arrays`, in pure JAX.
    config: the static settings the loop was built for (dtypes, direction, which
      masks it takes), handed to a kernel as its first argument.
    linear: how many of the last arguments the loop is linear in (0: not linear).
    transpose: the name of the loop that is this one's transpose with respect to
      those arguments (it takes the same leading arguments, then one cotangent per
      output, and returns one cotangent per linear argument); required when `linear`.
  """
  name: str
  kind: str
  reference: Callable[..., tuple]
  config: Any = None
  linear: int = 0
  transpose: str | None = None


_REGISTRY: dict[str, Loop] = {}
# {(platform, kind): kernel}; `kernel(config, *args)` returns the reference's tuple, or
# None (decided from the config, shapes and dtypes only) to run the reference.
_KERNELS: dict[tuple[str, str], Callable] = {}


def register(loop: Loop) -> Loop:
  """Makes `loop` known by its name (for `call` and `Loop.transpose`); returns it."""
  if loop.linear and loop.transpose is None:
    raise ValueError(f"Loop {loop.name!r} is linear but names no transpose.")
  _REGISTRY[loop.name] = loop
  return loop


def register_kernel(platform: str, kind: str, kernel: Callable) -> None:
  """Programs lowered for `platform` run `kernel(config, *args)` for loops of `kind`."""
  _KERNELS[(platform, kind)] = kernel


def call(loop: Loop, *args: Any) -> tuple:
  """Runs `loop` on `args` (arrays) through the `rnnjax_loop` primitive."""
  if _REGISTRY.get(loop.name) is not loop:
    raise ValueError(f"Loop {loop.name!r} is not registered (loop_call.register).")
  return tuple(loop_p.bind(*args, name=loop.name, kernels=not _REFERENCE_ONLY.get()))


_REFERENCE_ONLY = contextvars.ContextVar("rnnjax_reference_only", default=False)


@contextlib.contextmanager
def reference_only() -> Iterator[None]:
  """Loops traced within the block run their references on every platform (no kernel).

  A trace-time switch, so it holds for the jitted functions traced inside the block
  wherever they are compiled later: the benchmarks time the pure-JAX loops this way.
  """
  token = _REFERENCE_ONLY.set(True)
  try:
    yield
  finally:
    _REFERENCE_ONLY.reset(token)


@contextlib.contextmanager
def kernels_on(platform: str, kernels: dict[str, Callable]) -> Iterator[None]:
  """Within the block, programs lowered for `platform` use `kernels` ({kind: kernel}).

  Only programs traced and compiled inside the block are affected (jit caches by
  function, so use fresh functions). The tests run the GPU kernels on CPU this way,
  in Pallas's interpret mode.
  """
  previous = {k: _KERNELS.get((platform, k)) for k in kernels}
  _KERNELS.update({(platform, k): v for k, v in kernels.items()})
  try:
    yield
  finally:
    for k, v in previous.items():
      if v is None:
        del _KERNELS[(platform, k)]
      else:
        _KERNELS[(platform, k)] = v


def kernel_for(name: str, platform: str) -> Callable | None:
  """The kernel (bound to its config) that loop `name` runs on `platform`, if any."""
  loop = _REGISTRY[name]
  kernel = _KERNELS.get((platform, loop.kind))
  return None if kernel is None else functools.partial(kernel, loop.config)


# ----------------------------------------------------------------------------- primitive

loop_p = Primitive("rnnjax_loop")
loop_p.multiple_results = True


def _reference(name: str) -> Callable[..., tuple]:
  return _REGISTRY[name].reference


@loop_p.def_abstract_eval
def _abstract_eval(*avals: Any, name: str, kernels: bool) -> list[jax.core.ShapedArray]:
  outs = jax.eval_shape(_reference(name), *[jax.ShapeDtypeStruct(a.shape, a.dtype)
                                            for a in avals])
  return [jax.core.ShapedArray(o.shape, o.dtype) for o in outs]


@loop_p.def_impl
def _impl(*args: Any, name: str, kernels: bool) -> list[jax.Array]:
  return list(_jitted(name, kernels)(*args))


@functools.cache
def _jitted(name: str, kernels: bool) -> Callable:
  return jax.jit(lambda *args: loop_p.bind(*args, name=name, kernels=kernels))


def _lowering(platform: str | None) -> Callable:
  def lower(ctx: Any, *args: Any, name: str, kernels: bool) -> Any:
    use = platform and kernels and not _exporting(ctx) and not _partitioned(ctx)
    kernel = kernel_for(name, platform) if use else None
    reference = _reference(name)

    def run(*xs: Any) -> tuple:
      out = kernel(*xs) if kernel is not None else None
      return tuple(reference(*xs) if out is None else out)
    return mlir.lower_fun(run, multiple_results=True)(ctx, *args)
  return lower


def _exporting(ctx: Any) -> bool:
  """`jax.export` needs custom calls with compatibility guarantees: an exported program
  (a serialised artifact, maybe for another machine) runs the references."""
  params = getattr(ctx.module_context, "lowering_parameters", None)
  return bool(getattr(params, "for_export", False))


def _partitioned(ctx: Any) -> bool:
  """Whether XLA partitions this program over several devices itself (`jit` of sharded
  arrays). It cannot split a kernel's custom call: it would gather the whole batch and run
  it on every device. The references' scans split along the batch. Inside `shard_map`
  each device runs its own shard, so kernels stay."""
  axis_context = ctx.module_context.axis_context
  if getattr(axis_context, "manual_axes", None):  # shard_map
    mesh = getattr(axis_context, "mesh", None)
    names = getattr(mesh, "axis_names", ())
    return set(names) != set(axis_context.manual_axes)  # partly automatic
  return getattr(axis_context, "num_devices", 1) > 1 or hasattr(axis_context, "mesh")


mlir.register_lowering(loop_p, _lowering(None), cacheable=False)
for _platform in _PLATFORMS:
  mlir.register_lowering(loop_p, _lowering(_platform), platform=_platform, cacheable=False)


def _jvp(primals: tuple, tangents: tuple, *, name: str, kernels: bool) -> tuple[list, list]:
  loop = _REGISTRY[name]
  out = loop_p.bind(*primals, name=name, kernels=kernels)
  split = len(primals) - loop.linear
  fixed = tangents[:split]
  if loop.linear and all(type(t) is ad.Zero for t in fixed):
    # Linear in what moves: the tangent is the loop itself, so reverse mode transposes it.
    lin = [ad.instantiate_zeros(t) for t in tangents[split:]]
    return out, loop_p.bind(*primals[:split], *lin, name=name, kernels=kernels)
  # Along non-linear arguments (the forward loop, or second derivatives): the reference's.
  full = [ad.instantiate_zeros(t) for t in tangents]
  return out, list(jax.jvp(loop.reference, tuple(primals), tuple(full))[1])


ad.primitive_jvps[loop_p] = _jvp


def _transpose(cts: list, *args: Any, name: str, kernels: bool) -> list:
  loop = _REGISTRY[name]
  split = len(args) - loop.linear
  if not loop.linear or any(ad.is_undefined_primal(a) for a in args[:split]):
    raise NotImplementedError(f"Loop {name!r} is not linear in the arguments transposed.")
  fixed = args[:split]
  cts = [ad.instantiate_zeros(c) for c in cts]
  outs = loop_p.bind(*fixed, *cts, name=loop.transpose, kernels=kernels)
  return [None] * split + list(outs)


ad.primitive_transposes[loop_p] = _transpose


def _batch(args: tuple, dims: tuple, *, name: str, kernels: bool) -> tuple[list, list]:
  # vmap runs the reference (itself vmapped); kernels see unbatched calls only.
  out = jax.vmap(_reference(name), in_axes=tuple(dims), out_axes=0)(*args)
  return list(out), [0] * len(out)


batching.primitive_batchers[loop_p] = _batch
