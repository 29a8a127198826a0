"""Padding and packing: variable-length sequences into the `[T, B, ...]` arrays engines run.

Two ways to batch sequences of different lengths `T_i`:

- `pad` puts one sequence in each batch column and pads the rest of the column; the engines
  take its `lengths` and leave padded steps out (`unroll(..., lengths=lengths)`).
- `pack` puts several sequences one after the other in each row and marks where each one
  starts; the engines take its `resets` and restart the carry there
  (`unroll(..., resets=resets)`). Little is wasted on padding, as with PyTorch's
  `PackedSequence` or the packed batches of language-model training.

`unpad` and `unpack` are their inverses: they cut each sequence's outputs back out.

These are host-side data utilities, as a data loader is: they read the sequences, lengths and
segment ids with NumPy (so those must be concrete, not traced) and return JAX arrays. `unpad`
and `unpack` cut concrete outputs in NumPy (no compilation for each new set of lengths); given
traced outputs (under `jit` or `grad`) they do it as one `jax.numpy` gather, so gradients flow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._src import checks


def _as_arrays(fn: str, sequences: Any) -> list[np.ndarray]:
  """`sequences` as a non-empty list of NumPy arrays `[T_i, ...]`, one trailing shape and dtype."""
  if not isinstance(sequences, (list, tuple)):
    got = (f"an array of shape {tuple(sequences.shape)}" if hasattr(sequences, "shape")
           else repr(type(sequences).__name__))
    raise TypeError(
        f"{fn}: `sequences` must be a list of arrays [T_i, ...], got {got}. Pass a list, "
        "e.g. [x0, x1] (a single sequence x as [x]).")
  if not sequences:
    raise ValueError(f"{fn}: `sequences` is empty; pass a list of at least one array [T_i, ...].")
  arrays = []
  for i, seq in enumerate(sequences):
    arr = np.asarray(seq)
    if arr.ndim == 0 or arr.dtype == object:
      raise ValueError(
          f"{fn}: sequences[{i}] must be an array [T_i, ...] with a time axis first, got "
          f"{'a scalar' if arr.ndim == 0 else 'a ragged object array'} ({seq!r:.60}).")
    arrays.append(arr)
  first = arrays[0]
  for i, arr in enumerate(arrays[1:], start=1):
    if arr.shape[1:] != first.shape[1:]:
      raise ValueError(
          f"{fn}: every sequence must be [T_i, ...] with the same trailing shape, but "
          f"sequences[{i}].shape={arr.shape} and sequences[0].shape={first.shape} "
          f"(trailing {arr.shape[1:]} vs {first.shape[1:]}). Only the first axis (time) may "
          "differ.")
    if arr.dtype != first.dtype:
      raise TypeError(
          f"{fn}: every sequence must have the same dtype, but sequences[{i}] has dtype "
          f"{arr.dtype} and sequences[0] has dtype {first.dtype}. Convert them first, "
          f"e.g. [x.astype(np.{first.dtype}) for x in sequences].")
  return arrays


def _too_long(fn: str, arrays: list[np.ndarray], num_steps: int, fix: str) -> None:
  """A ValueError naming the first sequence longer than `num_steps`, if there is one."""
  for i, arr in enumerate(arrays):
    if len(arr) > num_steps:
      raise ValueError(
          f"{fn}: sequences[{i}] has {len(arr)} steps but num_steps={num_steps}; {fix}")


def pad(sequences: Sequence[Any], *, num_steps: int | None = None,
        pad_value: Any = 0) -> tuple[jax.Array, jax.Array]:
  """Pads sequences of different lengths into one time-major batch; returns `(xs, lengths)`.

  ```text
  pad :: [[T_i, ...] for i < B] -> ([T, B, ...], int32 [B])
  ```

  Sequence `b` fills `xs[:T_b, b]`; the steps after it hold `pad_value`. `xs` and `lengths`
  go straight into an engine: `rnnjax.unroll(cell, params, xs, lengths=lengths)` leaves
  padded steps out (zero outputs, carry unchanged), so `final_carry` is each sequence's
  carry after its last step. `unpad` cuts the outputs back into one array per sequence.
  This is a host-side utility (NumPy inside); the results are JAX arrays.

  Args:
    sequences: a non-empty list of arrays `[T_i, ...]` (NumPy or JAX) with the same
      trailing shape and dtype; `T_i` may differ, and may be 0.
    num_steps: `T`, the padded length; defaults to the longest `T_i`. A fixed `num_steps`
      keeps the shape, and so `jit`'s compiled program, the same from batch to batch.
    pad_value: the value of the padded steps (the engines never read them).

  Returns:
    `(xs, lengths)`: `xs: [T, B, ...]` of the sequences' dtype and `lengths: int32 [B]`,
    `lengths[b] = T_b`.

  Raises:
    ValueError: for an empty list, mismatched trailing shapes, or a sequence longer than
      `num_steps`.
    TypeError: for mismatched dtypes, or an array instead of a list.

  Examples:
    >>> import numpy as np, rnnjax
    >>> xs, lengths = rnnjax.pad([np.ones((3, 2)), np.ones((1, 2))])
    >>> xs.shape, lengths.tolist()
    ((3, 2, 2), [3, 1])
    >>> xs[:, 1, 0].tolist()
    [1.0, 0.0, 0.0]
  """
  fn = "rnnjax.pad"
  arrays = _as_arrays(fn, sequences)
  if num_steps is None:
    num_steps = max(len(arr) for arr in arrays)
  else:
    num_steps = checks.positive_int(fn, "num_steps", num_steps)
    _too_long(fn, arrays, num_steps,
              "pass num_steps=None (the longest) or a larger num_steps, or cut the sequence.")
  first = arrays[0]
  xs = np.full((num_steps, len(arrays), *first.shape[1:]), pad_value, dtype=first.dtype)
  for b, arr in enumerate(arrays):
    xs[:len(arr), b] = arr
  lengths = np.array([len(arr) for arr in arrays], dtype=np.int32)
  return jnp.asarray(xs), jnp.asarray(lengths)


def pack(sequences: Sequence[Any], num_steps: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Packs several sequences into each row of `num_steps` steps: `(xs, resets, segment_ids)`.

  ```text
  pack :: [[T_i, ...] for i < N] -> num_steps -> ([num_steps, R, ...], bool [num_steps, R],
                                                  int32 [num_steps, R])
  ```

  The rows are filled **first fit, in the order given**: each sequence goes after the
  sequences already in the first row with room for it (`T_i` free steps), or starts a new
  row if none has. The result depends only on the lengths and their order, and sequences
  keep their order within a row. Sort the sequences by decreasing length first to pack
  tighter ("first fit decreasing").

  Run the rows with `rnnjax.unroll(cell, params, xs, resets=resets)`: the carry restarts at
  each sequence's first step, so every sequence's outputs are those it gives on its own;
  `unpack(ys, segment_ids)` cuts them back out. Padding sits at the end of each row (zeros,
  `segment_ids == -1`); its outputs are discarded by `unpack`, and
  `lengths=jnp.sum(segment_ids >= 0, axis=0)` makes an engine skip it too. A row's final
  carry is that of its last sequence only with those `lengths`. This is a host-side
  utility (NumPy inside); the results are JAX arrays.

  Args:
    sequences: a non-empty list of arrays `[T_i, ...]` (NumPy or JAX) with the same
      trailing shape and dtype, each at most `num_steps` long (a longer one is an error:
      split it first, e.g. with `np.array_split`). Empty ones take no room.
    num_steps: the length of each row.

  Returns:
    `(xs, resets, segment_ids)`: `xs: [num_steps, R, ...]` the packed sequences,
    `resets: bool [num_steps, R]` True at each sequence's first step, and
    `segment_ids: int32 [num_steps, R]`, at each step the index in `sequences` of the
    sequence it belongs to, -1 on padding.

  Raises:
    ValueError: for an empty list, mismatched trailing shapes, or a sequence longer than
      `num_steps`.
    TypeError: for mismatched dtypes, or an array instead of a list.

  Examples:
    >>> import numpy as np, rnnjax
    >>> seqs = [np.full((3, 1), 1.0), np.full((4, 1), 2.0), np.full((2, 1), 3.0)]
    >>> xs, resets, segment_ids = rnnjax.pack(seqs, num_steps=5)
    >>> segment_ids.T.tolist()   # row 0 holds sequences 0 and 2, row 1 sequence 1
    [[0, 0, 0, 2, 2], [1, 1, 1, 1, -1]]
    >>> resets.T.astype(int).tolist()
    [[1, 0, 0, 1, 0], [1, 0, 0, 0, 0]]
  """
  fn = "rnnjax.pack"
  arrays = _as_arrays(fn, sequences)
  num_steps = checks.positive_int(fn, "num_steps", num_steps)
  _too_long(fn, arrays, num_steps,
            "every sequence must fit in one row. Pass num_steps >= the longest length, or "
            "split the sequence first (np.array_split).")
  used: list[int] = []  # steps used in each row so far
  places = []  # (row, start) of each sequence
  for arr in arrays:
    row = next((r for r, n in enumerate(used) if n + len(arr) <= num_steps), len(used))
    if row == len(used):
      used.append(0)
    places.append((row, used[row]))
    used[row] += len(arr)
  first = arrays[0]
  xs = np.zeros((num_steps, len(used), *first.shape[1:]), dtype=first.dtype)
  resets = np.zeros((num_steps, len(used)), dtype=bool)
  segment_ids = np.full((num_steps, len(used)), -1, dtype=np.int32)
  for i, (arr, (row, start)) in enumerate(zip(arrays, places, strict=True)):
    xs[start:start + len(arr), row] = arr
    segment_ids[start:start + len(arr), row] = i
    if len(arr):
      resets[start, row] = True
  return jnp.asarray(xs), jnp.asarray(resets), jnp.asarray(segment_ids)


def unpack(ys: jax.Array, segment_ids: Any, num_sequences: int | None = None) -> list[jax.Array]:
  """Cuts packed outputs back into one array per sequence: the inverse of `pack`.

  ```text
  unpack :: [T, R, ...] -> int [T, R] -> [[T_i, ...] for i < N]
  ```

  Sequence `i`'s outputs are the steps with `segment_ids == i`, in row-then-time order
  (one contiguous stretch of one row, for `pack`'s output); steps with `segment_ids < 0`
  (padding) are dropped. Concrete `ys` are cut in NumPy (nothing to compile for each new
  set of lengths), traced ones (under `jit` or `grad`) by one `jax.numpy` gather, so
  gradients flow through. `segment_ids` is read on the host (NumPy) and must be concrete.

  Args:
    ys: `[T, R, ...]`, e.g. the outputs of an engine run on `pack`'s `xs`.
    segment_ids: integer `[T, R]`, `pack`'s `segment_ids`.
    num_sequences: `N`, the number of sequences to return; defaults to
      `max(segment_ids) + 1`. Pass it when the last sequences may be empty (they have no
      step to count).

  Returns:
    A list of `N` arrays, the `i`-th of shape `[T_i, ...]` (`T_i` the number of steps of
    sequence `i`; `[0, ...]` for one with none).

  Raises:
    ValueError: if `ys` and `segment_ids` disagree in shape, or `num_sequences` is too small.
    TypeError: if `segment_ids` is not an integer array.

  Examples:
    >>> import numpy as np, rnnjax
    >>> seqs = [np.full((3, 1), 1.0), np.full((4, 1), 2.0), np.full((2, 1), 3.0)]
    >>> xs, resets, segment_ids = rnnjax.pack(seqs, num_steps=5)
    >>> [x[:, 0].tolist() for x in rnnjax.unpack(xs, segment_ids)]
    [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], [3.0, 3.0]]
  """
  fn = "rnnjax.unpack"
  if isinstance(segment_ids, jax.core.Tracer):
    raise TypeError(
        f"{fn}: `segment_ids` must be concrete (it decides the output shapes), got a traced "
        "value. Call unpack outside jit, or close over pack's segment_ids instead of passing "
        "them as a jit argument.")
  ids = np.asarray(segment_ids)
  shape = tuple(getattr(ys, "shape", ()))
  if ids.ndim != 2 or shape[:2] != ids.shape:
    raise ValueError(
        f"{fn}: `ys` must be [T, R, ...] and `segment_ids` [T, R] with the same T and R, got "
        f"ys.shape={shape} and segment_ids.shape={ids.shape}. Pass the outputs of the "
        "packed xs (time first) with pack's segment_ids.")
  if not np.issubdtype(ids.dtype, np.integer):
    raise TypeError(
        f"{fn}: `segment_ids` must have an integer dtype, got dtype={ids.dtype}; pass "
        "pack's segment_ids.")
  count = int(ids.max()) + 1 if ids.size else 0
  if num_sequences is None:
    num_sequences = count
  elif isinstance(num_sequences, bool) or not isinstance(num_sequences, (int, np.integer)):
    raise TypeError(
        f"{fn}: `num_sequences` must be an integer or None, got {num_sequences!r}.")
  elif num_sequences < count:
    raise ValueError(
        f"{fn}: `num_sequences`={num_sequences} but segment_ids go up to {count - 1}; pass "
        f"num_sequences >= {count}, or None to count them.")
  return _gather(ys, ids, int(num_sequences))


def _gather(ys: jax.Array, ids: np.ndarray, num_sequences: int) -> list[jax.Array]:
  """The steps of each id `0 <= i < num_sequences` of `ids: [T, R]`, in row-then-time order."""
  rows, times = np.nonzero(ids.T >= 0)  # row-major: by row, then by time within a row
  seq = ids.T[rows, times]
  order = np.argsort(seq, kind="stable")
  splits = np.cumsum(np.bincount(seq, minlength=num_sequences))[:-1].tolist()
  if isinstance(ys, jax.core.Tracer):  # Under jit or grad: one gather, differentiable.
    return jnp.split(ys[times[order], rows[order]], splits)
  # Concrete: cut in NumPy, which compiles nothing for each new set of lengths.
  return [jnp.asarray(piece) for piece in np.split(np.asarray(ys)[times[order], rows[order]],
                                                    splits)]


def unpad(ys: jax.Array, lengths: Any) -> list[jax.Array]:
  """Cuts padded outputs back into one array per sequence: the inverse of `pad`.

  ```text
  unpad :: [T, B, ...] -> int [B] -> [[lengths[b], ...] for b < B]
  ```

  Equivalent to `[ys[:lengths[b], b] for b in range(B)]`, done as `unpack` does it (in
  NumPy for concrete `ys`, one differentiable gather for traced ones); `lengths` is read on
  the host (NumPy) and must be concrete.

  Args:
    ys: `[T, B, ...]`, e.g. the outputs of an engine run on `pad`'s `xs`.
    lengths: integer `[B]`, `pad`'s `lengths`, each in `[0, T]`.

  Returns:
    A list of `B` arrays, the `b`-th of shape `[lengths[b], ...]`.

  Raises:
    ValueError: if `lengths` is not `[B]` or a length is outside `[0, T]`.
    TypeError: if `lengths` is not an integer array.

  Examples:
    >>> import numpy as np, rnnjax
    >>> xs, lengths = rnnjax.pad([np.arange(3.0), np.arange(1.0)])
    >>> [x.tolist() for x in rnnjax.unpad(xs, lengths)]
    [[0.0, 1.0, 2.0], [0.0]]
  """
  fn = "rnnjax.unpad"
  if isinstance(lengths, jax.core.Tracer):
    raise TypeError(
        f"{fn}: `lengths` must be concrete (it decides the output shapes), got a traced "
        "value. Call unpad outside jit, or close over pad's lengths.")
  shape = tuple(getattr(ys, "shape", ()))
  if len(shape) < 2:
    raise ValueError(
        f"{fn}: `ys` must be [T, B, ...] (time first), got ys.shape={shape}.")
  lens = np.asarray(lengths)
  if lens.shape != shape[1:2]:
    raise ValueError(
        f"{fn}: `lengths` must have shape [B] = {shape[1:2]} (ys is [T, B, ...]), got "
        f"lengths.shape={lens.shape}. Pass pad's lengths.")
  if not np.issubdtype(lens.dtype, np.integer):
    raise TypeError(
        f"{fn}: `lengths` must have an integer dtype, got dtype={lens.dtype}. Convert with "
        "lengths.astype(np.int32).")
  if lens.size and (lens.min() < 0 or lens.max() > shape[0]):
    raise ValueError(
        f"{fn}: `lengths` must lie in [0, T] = [0, {shape[0]}], got values from "
        f"{lens.min()} to {lens.max()}.")
  time = np.arange(shape[0])[:, None]
  ids = np.where(time < lens[None, :], np.arange(shape[1])[None, :], -1)
  return _gather(ys, ids, shape[1])
