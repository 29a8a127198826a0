"""Array helpers shared by the LSTM and GRU fast paths (`fused_lstm.py`, `fused_gru.py`).

Masks are `[T, rows, 1]` bool arrays (or None: every step valid, no reset), so that
they broadcast over features; `valid` is False at padded steps (the carry is kept,
the output is zero), `keep` is False where the carry resets to zeros before a step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from rnnjax._src import loop_call
from rnnjax._src import precision as precision_lib


class Loops(NamedTuple):
  """The four loops of one cell's fast path (for one `Config`)."""
  forward: loop_call.Loop
  forward_save: loop_call.Loop
  tangent: loop_call.Loop
  adjoint: loop_call.Loop


def register_loops(family: str, config: Any, forward: Callable, tangent: Callable,
                   adjoint: Callable, *, tangent_linear: int, adjoint_linear: int) -> Loops:
  """Registers the four loops of `family` (`"lstm"`, `"gru"`) for `config`.

  `forward(config, save, *args)`, `tangent(config, *args)` and `adjoint(config, *args)`
  are the references; the tangent is linear in its last `tangent_linear` arguments
  and the adjoint, its transpose, in its last `adjoint_linear`. Loop names spell out
  the config, so equal settings share loops (and compiled code).
  """
  name = f"{family}/" + "/".join(str(v) for v in config)
  bind = functools.partial

  def loop(kind: str, fn: Callable, **kw: Any) -> loop_call.Loop:
    return loop_call.register(loop_call.Loop(f"{name}/{kind}", f"{family}.{kind}", fn, config,
                                             **kw))
  return Loops(
      loop("forward", bind(forward, config, False)),
      loop("forward_save", bind(forward, config, True)),
      loop("tangent", bind(tangent, config), linear=tangent_linear,
           transpose=f"{name}/adjoint"),
      loop("adjoint", bind(adjoint, config), linear=adjoint_linear,
           transpose=f"{name}/tangent"))


def zero(t: Any) -> bool:
  """A symbolic zero tangent (or none)."""
  return t is None or isinstance(t, SymbolicZero)


def add(acc: jax.Array | None, term: jax.Array | None) -> jax.Array | None:
  if term is None:
    return acc
  return term if acc is None else acc + term


def keep(mask: jax.Array | None, v: jax.Array) -> jax.Array:
  """`v` where `mask` (True: keep the carry), zero where a reset happens."""
  return v if mask is None else jnp.where(mask, v, jnp.zeros_like(v))


def select(mask: jax.Array | None, a: jax.Array, b: jax.Array) -> jax.Array:
  return a if mask is None else jnp.where(mask, a, b)



def flat(a: jax.Array) -> jax.Array:
  return a.reshape(-1, a.shape[-1])


def matmul_rows(a: jax.Array, w: jax.Array, accum: Any) -> jax.Array:
  """`a: [T, B, K] @ w: [K, N]` as one `[T*B, K] @ [K, N]` product (`precision.dot`).

  Flattened because XLA's CPU backend runs the transposed product (a weight gradient)
  several times slower with two contracting dimensions than as one `[K, T*B] @ [T*B, N]`.
  The price: with the batch split over devices, XLA gathers `a` to flatten it.
  """
  return precision_lib.dot(flat(a), w, accum).reshape(*a.shape[:-1], w.shape[-1])


def affine(x: jax.Array, w: jax.Array, b: jax.Array | None, accum: Any) -> jax.Array:
  """`x @ w + b` in `accum`, `x` cast to `w`'s (compute) dtype; `b` is already `accum`."""
  y = precision_lib.dot(x, w, accum)
  return y if b is None else y + b


def transposed(w: jax.Array) -> jax.Array:
  """`w.T` as its own array, made once before a reverse loop.

  The reverse loops' recurrent product is `dz @ w.T`. XLA's CPU backend reads a
  transposed operand against its layout at every step (twice as slow at B8/H128);
  `dz @ transposed(w)` is a plain row-major product. With a bfloat16 cell its
  operands are bfloat16, as the forward product's are (`affine`).
  """
  return jnp.transpose(w)


def previous(after: jax.Array, first: jax.Array, reverse: bool) -> jax.Array:
  """The carry before each step, from the carries after each step `[T, ...]`."""
  if reverse:
    return jnp.concatenate([after[1:], first[None]])
  return jnp.concatenate([first[None], after[:-1]])


def carries_before(config: Any, saved: jax.Array, first: jax.Array) -> jax.Array:
  """The carry each step was given (before its reset), in `config.accum`.

  `saved` holds the carries after each step in `accum`; cast to the carry's dtype (that of
  `first`, the initial carry) they are exactly the carries, as the step saw them.
  """
  accum = jnp.dtype(config.accum)
  return previous(saved.astype(first.dtype).astype(accum), first.astype(accum), config.reverse)


def masks(valid: jax.Array | None, keep_: jax.Array | None) -> tuple[jax.Array, ...]:
  """The masks that are given, as a tuple of loop arguments."""
  return tuple(m for m in (valid, keep_) if m is not None)


def unpack_masks(config: Any, ms: tuple) -> tuple[jax.Array | None, jax.Array | None]:
  """`(valid, keep)` from the masks a loop was given (`config.valid`, `config.keep` say which)."""
  ms = list(ms)
  valid = ms.pop(0) if config.valid else None
  keep_ = ms.pop(0) if config.keep else None
  return valid, keep_


def pass_through(mask: jax.Array | None, a: jax.Array) -> jax.Array:
  """`a` at padded steps (not `mask`), zero at valid ones: what a padded step hands on."""
  return jnp.zeros_like(a) if mask is None else jnp.where(mask, jnp.zeros_like(a), a)
