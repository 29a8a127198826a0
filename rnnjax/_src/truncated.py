"""Truncated backpropagation through time: `unroll` in chunks, gradients stopped between them."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks
from rnnjax._src import unroll as unroll_lib


def truncated_unroll(cell: cell_lib.Cell, params: Any, xs: jax.Array, carry: Any = None, *,
                     chunk: int, lengths: jax.Array | None = None,
                     resets: jax.Array | None = None, unroll: int | bool = 1,
                     remat: int | bool = False, key: jax.Array | None = None,
                     time_major: bool = True) -> tuple[Any, Any]:
  """`unroll` for truncated backpropagation through time: chunks of `chunk` steps.

  The carry flows from each chunk into the next, so the forward pass (outputs
  and final carry) equals `unroll`'s; but gradients are stopped at every chunk
  boundary, so each chunk's gradient sees only its own `chunk` steps. This is
  the usual way to train on long streams (Williams & Peng 1990).

  Every argument but `chunk` is as in `unroll` (forwards only); `T` need not be a multiple
  of `chunk`.

  Args:
    cell: the cell, as in `unroll`.
    params: its params.
    xs: `[T, ..., I]`, time first (`[..., T, I]` with `time_major=False`).
    carry: the initial carry, or None for `cell.initial_carry`.
    chunk: the truncation length, a positive integer.
    lengths: `int [...]` valid steps per sequence, or None.
    resets: `bool [T, ...]` (`[..., T]` with `time_major=False`), or None.
    unroll: steps unrolled per loop iteration.
    remat: rematerialise each step in the backward pass.
    key: a PRNG key for stochastic cells, or None.
    time_major: the layout of `xs`, `resets` and `ys`, as in `unroll`.

  Returns:
    `(ys, final_carry)`, as `unroll`.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> cell = rnnjax.gru(8)
    >>> params = cell.init(jax.random.key(0), input_size=2)
    >>> ys, carry = rnnjax.truncated_unroll(cell, params, jnp.ones((100, 3, 2)), chunk=32)
    >>> ys.shape
    (100, 3, 8)
  """
  fn = "rnnjax.truncated_unroll"
  chunk = checks.positive_int(fn, "chunk", chunk)
  checks.key(fn, "key", key, optional=True)
  time_major = checks.boolean(fn, "time_major", time_major)
  in_size = cell.input_size(params) if cell.input_size is not None else None
  if not time_major:
    xs, lengths, resets = unroll_lib.batch_major_input(fn, xs, in_size, lengths, resets)
  num_steps, batch_shape = checks.sequence_input(fn, xs, in_size)
  if lengths is not None:
    lengths = checks.lengths(fn, lengths, num_steps, batch_shape, xs_shape=xs.shape)
  if resets is not None:
    resets = checks.resets(fn, resets, num_steps, batch_shape, xs_shape=xs.shape)
  if carry is None:
    carry = cell.initial_carry(params, batch_shape)
  n_chunks = -(-num_steps // chunk)
  pad = n_chunks * chunk - num_steps
  if lengths is None and pad:  # Mask the padding that makes T a multiple of `chunk`.
    lengths = jnp.full(batch_shape, num_steps, jnp.int32)

  def split(v, fill):
    v = jnp.concatenate([v, jnp.full((pad, *v.shape[1:]), fill, v.dtype)]) if pad else v
    return v.reshape((n_chunks, chunk, *v.shape[1:]))

  starts = jnp.arange(n_chunks, dtype=jnp.int32) * chunk
  chunk_lengths = None
  if lengths is not None:
    lens = jnp.clip(lengths, 0, num_steps).astype(jnp.int32)
    chunk_lengths = jnp.clip(lens[None] - starts.reshape((n_chunks,) + (1,) * lens.ndim),
                             0, chunk)
  inputs = (split(xs, 0), chunk_lengths,
            None if resets is None else split(resets, False),
            None if key is None else jax.random.split(key, n_chunks))

  def body(c, chunk_inputs):
    x, lens_c, resets_c, k = chunk_inputs
    ys, c = unroll_lib.unroll(cell, params, x, jax.lax.stop_gradient(c), lengths=lens_c,
                    resets=resets_c, unroll=unroll, remat=remat, key=k)
    return c, ys

  carry, ys = jax.lax.scan(body, carry, inputs)
  ys = jax.tree_util.tree_map(lambda v: v.reshape((n_chunks * chunk, *v.shape[2:]))[:num_steps],
                              ys)
  return (ys if time_major else unroll_lib.from_time_major(ys, len(batch_shape))), carry
