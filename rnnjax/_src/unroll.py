"""The sequential engine: a cell over time on `jax.lax.scan`.

Handles variable lengths (padding), resets inside a sequence, padding-aware
reverse, loop unrolling and rematerialisation. Masks are only built for the
options in use, so a plain call is exactly a `lax.scan` over `cell.apply`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks, engines, precision

_FN = "rnnjax.unroll"


def _broadcast_where(mask: jax.Array, on_true: Any, on_false: Any) -> Any:
  """`where(mask, a, b)` leaf by leaf; `mask: [*batch]` broadcasts over trailing axes."""
  def select(a, b):
    m = mask.reshape(mask.shape + (1,) * (jnp.ndim(a) - mask.ndim))
    return jnp.where(m, a, b)
  return jax.tree_util.tree_map(select, on_true, on_false)


def _take_time(tree: Any, idx: jax.Array) -> Any:
  """Gathers `tree` leaves `[T, *batch, ...]` along time with `idx: [T, *batch]`."""
  def take(leaf):
    i = idx.reshape(idx.shape + (1,) * (leaf.ndim - idx.ndim))
    return jnp.take_along_axis(leaf, i, axis=0)
  return jax.tree_util.tree_map(take, tree)


def in_processing_order(tree: Any, idx: jax.Array | None, reverse: bool) -> Any:
  """`tree`'s leaves `[T, *batch, ...]` in the order a whole-sequence engine runs the steps.

  With `idx` (from `time_masks`: `reverse` with lengths) each valid prefix is reversed in
  place, padding staying at the end; else with `reverse` the whole time axis is. Both
  permutations are involutions, so the same call puts outputs back in `xs`'s order.
  """
  if idx is not None:
    return _take_time(tree, idx)
  return jax.tree_util.tree_map(lambda leaf: leaf[::-1], tree) if reverse else tree


def check_sequence(fn: str, cell: cell_lib.Cell, params: Any, xs: jax.Array, carry: Any,
                   lengths: jax.Array | None, resets: jax.Array | None, *,
                   time_major: bool = True) -> tuple[jax.Array, int, tuple[int, ...], Any,
                                                     jax.Array | None, jax.Array | None]:
  """The input checks of every engine: `(xs, num_steps, batch_shape, carry, lengths, resets)`.

  `xs` must be `[T, *batch, I]` (`[*batch, T, I]` unless `time_major`) with the cell's input
  size and a dtype it takes (`precision.check_sequence_dtype`); a missing carry becomes
  the cell's initial carry, a given one must match its structure, shapes and dtypes;
  `lengths` and `resets` (in xs's layout) are checked against `T` and the batch shape.
  Messages quote the shapes as given; `xs` and `resets` come back time-major.
  """
  if not isinstance(cell, cell_lib.Cell):
    hint = (" A Layer runs over whole sequences by itself: call `layer.apply(params, xs)`."
            if type(cell).__name__ == "Layer" else "")
    raise TypeError(
        f"{fn}: `cell` must be an rnnjax.Cell (e.g. rnnjax.lstm(64) or a stack of cells), got "
        f"{type(cell).__name__}.{hint}")
  in_size = cell.input_size(params) if cell.input_size is not None else None
  if not time_major:
    xs, lengths, resets = batch_major_input(fn, xs, in_size, lengths, resets)
  num_steps, batch_shape = checks.sequence_input(fn, xs, in_size)
  if carry is None:
    carry = cell.initial_carry(params, batch_shape)
  else:
    checks.carry(fn, carry, jax.eval_shape(lambda p: cell.initial_carry(p, batch_shape), params))
  precision.check_sequence_dtype(fn, "xs", cell.apply, params, carry, xs)
  if lengths is not None:
    lengths = checks.lengths(fn, lengths, num_steps, batch_shape, xs_shape=xs.shape)
  if resets is not None:
    resets = checks.resets(fn, resets, num_steps, batch_shape, xs_shape=xs.shape)
  return xs, num_steps, batch_shape, carry, lengths, resets


def batch_major_input(fn: str, xs: Any, input_size: int | None, lengths: Any, resets: Any, *,
                      xs_name: str = "xs", lengths_name: str = "lengths"
                      ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
  """Checks batch-major `xs: [..., T, I]`, `lengths: [...]` and `resets: [..., T]` as given
  (so messages quote the caller's shapes); returns `(xs, lengths, resets)` time-major."""
  num_steps, batch_shape = checks.sequence_input(fn, xs, input_size, time_major=False,
                                                 name=xs_name)
  layout = dict(xs_shape=xs.shape, time_major=False)
  if lengths is not None:
    lengths = checks.lengths(fn, lengths, num_steps, batch_shape, name=lengths_name,
                             xs_name=xs_name, **layout)
  if resets is not None:
    resets = jnp.moveaxis(checks.resets(fn, resets, num_steps, batch_shape, **layout), -1, 0)
  return jnp.moveaxis(xs, -2, 0), lengths, resets


def from_time_major(ys: Any, batch_ndim: int) -> Any:
  """Time-major outputs, leaves `[T, *batch, ...]`, moved to `[*batch, T, ...]`."""
  return jax.tree_util.tree_map(lambda y: jnp.moveaxis(y, 0, batch_ndim), ys)


def time_masks(xs: jax.Array, num_steps: int, batch_shape: tuple[int, ...],
               lengths: jax.Array | None, resets: jax.Array | None, reverse: bool):
  """The engines' view of `xs`, `lengths`, `resets` and `reverse` (checked inputs).

  Returns `(xs, valid, resets, idx)`: `xs` with zeros at padded steps, `valid`
  (`[T, *batch]`, False at padded steps; None without lengths), `resets` as the
  scan sees them (backwards, a segment starts at the step before the next
  segment's first step), and `idx`, the permutation that reverses each
  sequence's valid prefix in place (an involution; None unless `reverse` with
  lengths).

  Zeroing the padding here, once for every engine, is what keeps its values
  (NaN, inf, 1e30: whatever a data pipeline pads with) out of the cells'
  arithmetic in both passes. Masking only the outputs is not enough: the
  backward pass multiplies the padded branch by a zero cotangent, and
  `0 * nan = nan` would reach every parameter gradient. `where` sends a cotangent
  of exactly 0 to the padded inputs.
  """
  time = jnp.arange(num_steps, dtype=jnp.int32).reshape((num_steps,) + (1,) * len(batch_shape))
  valid = idx = None
  if lengths is not None:  # Any integer dtype; values beyond [0, T] act as if clipped.
    lengths = jnp.clip(lengths, 0, num_steps).astype(jnp.int32)
    valid = time < lengths
    xs = jnp.where(valid[..., None], xs, jnp.zeros_like(xs))
  if resets is not None and reverse:
    resets = jnp.concatenate([resets[1:], jnp.zeros_like(resets[:1])])
    if valid is not None:
      resets = resets & (time + 1 < lengths)
  if reverse and valid is not None:
    idx = jnp.where(valid, lengths - 1 - time, time)
  return xs, valid, resets, idx


def _check_unroll(value: Any) -> int | bool:
  if isinstance(value, bool):
    return value
  return checks.positive_int(_FN, "unroll", value)


def _check_remat(value: Any) -> int | bool:
  if isinstance(value, bool):
    return value
  if not isinstance(value, (int, np.integer)):
    raise TypeError(
        f"{_FN}: `remat` must be a bool or a positive integer (checkpoint every k steps), "
        f"got {value!r} of type {type(value).__name__}.")
  return checks.positive_int(_FN, "remat", value)


def _scan(step, carry, inputs, num_steps: int, *, reverse: bool, unroll: int | bool,
          remat: int | bool):
  """`lax.scan(step, carry, inputs)` with the remat policy applied."""
  if remat is True:
    return jax.lax.scan(jax.checkpoint(step), carry, inputs, reverse=reverse, unroll=unroll)
  if remat is False:
    return jax.lax.scan(step, carry, inputs, reverse=reverse, unroll=unroll)
  # Checkpoint every `remat` steps: only the carries at chunk boundaries are saved on
  # the forward pass; each chunk is recomputed during the backward pass.
  k = min(remat, num_steps)
  n_chunks, rest = divmod(num_steps, k)
  head = jax.tree_util.tree_map(lambda v: v[:n_chunks * k], inputs)
  tail = jax.tree_util.tree_map(lambda v: v[n_chunks * k:], inputs)
  if reverse:  # Backwards, the chunks are aligned to the end of the sequence.
    head = jax.tree_util.tree_map(lambda v: v[rest:], inputs)
    tail = jax.tree_util.tree_map(lambda v: v[:rest], inputs)
  head = jax.tree_util.tree_map(lambda v: v.reshape((n_chunks, k, *v.shape[1:])), head)

  @jax.checkpoint
  def chunk(c, chunk_inputs):
    return jax.lax.scan(step, c, chunk_inputs, reverse=reverse, unroll=unroll)

  def run_head(c):
    c, ys = jax.lax.scan(chunk, c, head, reverse=reverse)
    return c, jax.tree_util.tree_map(lambda v: v.reshape((n_chunks * k, *v.shape[2:])), ys)

  def run_tail(c):
    return jax.lax.scan(step, c, tail, reverse=reverse, unroll=unroll)

  if rest == 0:
    return run_head(carry)
  # Forwards the head (steps [0, n*k)) comes first; backwards the head is the
  # last n*k steps, which are processed first. Outputs stay in time order.
  carry, ys_head = run_head(carry)
  carry, ys_tail = run_tail(carry)
  first, last = (ys_tail, ys_head) if reverse else (ys_head, ys_tail)
  return carry, jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), first, last)


def unroll(cell: cell_lib.Cell, params: Any, xs: jax.Array, carry: Any = None, *,
           lengths: jax.Array | None = None, resets: jax.Array | None = None,
           reverse: bool = False, unroll: int | bool = 1, remat: int | bool = False,
           key: jax.Array | None = None, fused: bool = True,
           time_major: bool = True, engine: Any = "sequential") -> tuple[Any, Any]:
  """Runs `cell` over the time axis of `xs`; returns `(ys, final_carry)`.

  Type signature, with `c` the carry, `x` one step of input and `y` one output::

    unroll :: Cell -> params -> [T, ..., I] -> c -> ([T, ..., O], c)

  (`[..., T, I] -> ([..., T, O], c)` with `time_major=False`.)

  Without options it is equivalent to this Python loop::

    def unroll(cell, params, xs, carry=None):
      if carry is None:
        carry = cell.initial_carry(params, xs.shape[1:-1])
      ys = []
      for x in xs:
        carry, y = cell.apply(params, carry, x)
        ys.append(y)
      return jnp.stack(ys), carry

  Args:
    cell: a `Cell` (a built-in cell, a `stack`, or your own).
    params: the cell's params, from `cell.init`.
    xs: `[T, ..., I]`, time first; the middle axes are batch axes (any number, also none).
      With `time_major=False`, `[..., T, I]`: batch axes first, time just before the features.
    carry: the carry before the first step, leaves `[..., *state]`; defaults to
      `cell.initial_carry(params, batch_shape)` (`batch_shape` the batch axes of `xs`).
    lengths: optional integer `[...]`, the number of valid steps of each sequence
      (in `[0, T]`). Steps at or after a sequence's length leave its carry
      unchanged and give zero outputs, so `final_carry` is the carry after its
      last valid step. Values are checked when `lengths` is concrete; under `jit`
      values outside `[0, T]` act as if clipped into it. Padded steps never reach
      the cell's arithmetic: their inputs are replaced by zeros first, so
      whatever the padding holds (NaN, inf, 1e30) leaves outputs, carries and
      gradients unchanged, and the gradient for `xs` there is exactly zero.
    resets: optional bool `[T, ...]` (`[..., T]` with `time_major=False`);
      `resets[t]` marks the first step of a new segment (an episode boundary,
      or the start of the next packed sequence):
      that element's carry is set back to `cell.initial_carry(params)` (not to
      `carry`) before step `t`. Resets at padded steps have no effect.
    reverse: run each sequence backwards over its valid steps only: with lengths,
      step `lengths - 1` is processed first, padding stays at the end and
      `ys[t]` stays aligned with `xs[t]`. With resets, each segment is run
      backwards on its own (the carry restarts at each segment's last step).
    unroll: how many steps `lax.scan` unrolls per loop iteration (`True`: all).
    remat: `True` recomputes each step's internals on the backward pass instead
      of storing them (`jax.checkpoint` on the step); an integer `k` stores only
      every `k`-th carry and recomputes the `k` steps between (a good `k` is
      about `sqrt(T)`), so memory grows as `T/k + k` instead of `T`.
    key: optional PRNG key for cells with randomness (dropout in a `stack`); it is
      split into one key per step. Without it such cells run deterministically.
    fused: use the cell's whole-sequence fast path when it has one (the built-in
      `lstm` without `proj_size`, `gru`, and a `stack` of them without active
      dropout; float32 or float64; `remat` off).
      It computes the same outputs and carries, and gradients whose weight terms
      are one large matrix product each instead of `T` small ones. `False`
      forces the generic `lax.scan` over `cell.apply`.
    time_major: `True` (the default, as `lax.scan`): `xs` is `[T, ..., I]`; `False`:
      `xs` is `[..., T, I]`, as Flax's `nn.RNN` defaults to (`[B, T, I]`). `resets`
      follow `xs`'s layout, `lengths` is `[...]` either way, and `ys` come back in
      `xs`'s layout. The same as moving the time axis by hand (`jnp.moveaxis`).
    engine: how to run over time (`rnnjax.ENGINES`): `"sequential"` (this function's
      `lax.scan`, or the cell's fast path), `"parallel"` or `"chunked"` (the
      associative scan of `rnnjax.parallel_unroll`, for linear cells), `"newton"` (any
      cell, by Newton iterations of parallel scans: `rnnjax.newton_unroll`; pass
      `rnnjax.Newton(...)` for its options), or `"auto"`, the fastest for the cell,
      options, backend and `T`. Every engine gives the same
      answers; `rnnjax.engine_plan` says which runs. `unroll`, `remat`, `key` and
      `fused` are the sequential engine's options.

  Returns:
    `(ys, final_carry)` with `ys: [T, ..., O]` (`[..., T, O]` with `time_major=False`).

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> cell = rnnjax.lstm(16)
    >>> params = cell.init(jax.random.key(0), input_size=8)
    >>> xs = jnp.ones((20, 4, 8))                      # [T, B, I]
    >>> ys, carry = rnnjax.unroll(cell, params, xs, lengths=jnp.array([20, 5, 0, 12]))
    >>> ys.shape, carry.h.shape
    ((20, 4, 16), (4, 16))
    >>> bool((ys[5:, 1] == 0).all())                   # padding gives zeros
    True
  """
  if not checks.boolean(_FN, "time_major", time_major):
    # Checked as given (so messages quote the caller's shapes), then run time-major.
    xs_t, _, _, carry, lengths, resets = check_sequence(_FN, cell, params, xs, carry, lengths,
                                                        resets, time_major=False)
    ys, carry = _unroll(cell, params, xs_t, carry, lengths=lengths, resets=resets,
                        reverse=reverse, unroll=unroll, remat=remat, key=key, fused=fused,
                        engine=engine)
    return from_time_major(ys, len(xs.shape) - 2), carry
  xs, num_steps, batch_shape, carry, lengths, resets = check_sequence(
      _FN, cell, params, xs, carry, lengths, resets)
  if engine != "sequential":
    name = engines.check_name(_FN, engine)
    engines.require(_FN, cell, name, remat=remat,
                    dropout_key=key is not None and engines.has_dropout(cell))
    if name == "auto" and unroll != 1:
      engine = name = "sequential"
    chosen = engines.engine_plan(cell, engine, num_steps=num_steps, key=key, remat=remat,
                                 fused=fused).engine
    if chosen != "sequential":
      return engines.runner(engine if chosen == name else chosen)(
          cell, params, xs, carry, lengths=lengths, resets=resets, reverse=reverse)
  unroll = _check_unroll(unroll)
  remat = _check_remat(remat)
  checks.key(_FN, "key", key, optional=True)
  reset_carry = cell.initial_carry(params, batch_shape) if resets is not None else None

  xs, valid, resets, idx = time_masks(xs, num_steps, batch_shape, lengths, resets, reverse)
  kernel = engines.sequence_kernel(cell) if fused and remat is False else None
  if kernel is not None:
    keep = None if resets is None else ~resets
    if idx is not None:
      xs_r, keep_r = _take_time((xs, keep), idx)
      out = kernel(params, xs_r, carry, valid=valid, keep=keep_r, reverse=False, unroll=unroll,
                   key=key)
      if out is not None:
        return _take_time(out[0], idx), out[1]
    else:
      out = kernel(params, xs, carry, valid=valid, keep=keep, reverse=reverse, unroll=unroll,
                   key=key)
      if out is not None:
        return out
  keys = None if key is None else jax.random.split(key, num_steps)

  def step(c, inputs):
    x, is_valid, reset, k = inputs
    c_in = c if reset is None else _broadcast_where(reset, reset_carry, c)
    new_c, y = (cell.apply(params, c_in, x) if k is None
                else cell.apply(params, c_in, x, key=k))
    if is_valid is not None:
      new_c = _broadcast_where(is_valid, new_c, c)
      y = _broadcast_where(is_valid, y, jax.tree_util.tree_map(jnp.zeros_like, y))
    return new_c, y

  inputs = (xs, valid, resets, keys)
  if idx is not None:
    # Reverse each sequence's valid prefix in place, run forwards, and undo the
    # permutation (an involution) on the outputs.
    xs_r, resets_r = _take_time((xs, resets), idx)
    carry, ys = _scan(step, carry, (xs_r, valid, resets_r, keys), num_steps,
                      reverse=False, unroll=unroll, remat=remat)
    return _take_time(ys, idx), carry
  carry, ys = _scan(step, carry, inputs, num_steps, reverse=reverse, unroll=unroll,
                    remat=remat)
  return ys, carry


_unroll = unroll  # `unroll` has an argument named `unroll`.
