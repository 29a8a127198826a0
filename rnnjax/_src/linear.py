"""The linear-recurrence contract: cells whose carry update is `h_t = a_t * h_{t-1} + b_t`.

A linear cell is an ordinary `Cell` (it runs step by step in `unroll`, `stack`
and `bidirectional`) that also declares its recurrence over a whole sequence,
so that `rnnjax.parallel_unroll` can run it as a parallel prefix scan::

  coefficients     :: (params, xs[T, ..., I]) -> (a[T, ..., S], b[T, ..., S])
  readout          :: (params, hs[T, ..., S], xs[T, ..., I]) -> ys[T, ..., O]
  log_coefficients :: (params, xs[T, ..., I]) -> (log_a, log_b)   # optional

`a` and `b` are elementwise (diagonal) and may be complex (the LRU). The carry
of a linear cell is `HiddenState(h)` with `h: [..., S]`. `readout=None` means
`ys = hs`. `log_coefficients`, for recurrences with `a, b > 0` (minGRU/minLSTM in
their log-space form), gives `log a` and `log b`; the parallel engine then scans
in log space, as the papers do, and needs a carry `h >= 0`.

Dtypes: the built-in cells take `xs` of any floating dtype (cast to their compute
dtype) and give `a`, `b` (and `log a`, `log b`) in their accumulation dtype, float32
for a bfloat16 cell, as their step computes (`precision.Precision`); `readout` gives
the compute dtype. `parallel_unroll` scans in the pairs' dtype, then casts the final
carry to the carry's dtype and `ys` to the dtype of `apply`'s outputs, so that it
returns the dtypes `unroll` does.

The recurrence is the cell's `FastPaths.linear` (`Cell.paths`, `with_recurrence`),
bound to its `apply`: a cell whose `apply` is replaced loses it, and the parallel
engines then refuse the cell. A `stack` of linear cells is not itself linear in its
carry (each layer reads the outputs of the one below), but it runs layer after layer,
each layer as a scan (`FastPaths.layers`). `engines.py` answers which cells are linear.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from rnnjax._src import cell as cell_lib
from rnnjax._src import engines


class LinearRecurrence(NamedTuple):
  """A cell's recurrence `h_t = a_t * h_{t-1} + b_t` over a whole sequence.

  Attributes:
    coefficients: `(params, xs: [T, ..., I]) -> (a, b)`, each `[T, ..., S]`.
    readout: `(params, hs: [T, ..., S], xs: [T, ..., I]) -> ys: [T, ..., O]`, or
      None for `ys = hs`.
    log_coefficients: optional `(params, xs) -> (log_a, log_b)` for recurrences
      with `a, b > 0`; the parallel engine then runs in log space.
  """

  coefficients: Callable[[Any, Any], tuple[Any, Any]]
  readout: Callable[[Any, Any, Any], Any] | None = None
  log_coefficients: Callable[[Any, Any], tuple[Any, Any]] | None = None


def with_recurrence(cell: cell_lib.Cell, recurrence: LinearRecurrence) -> cell_lib.Cell:
  """`cell` with `recurrence` as its `FastPaths.linear`, so that the parallel engines run it.

  The cell's `apply` must compute the same step as `recurrence` (with carry
  `HiddenState(h)`); the engines' tests check this for the built-in cells. Other
  fast paths of `cell` are kept.

  Args:
    cell: the cell.
    recurrence: its recurrence over whole sequences.

  Returns:
    The cell, with `cell.paths.linear` set (and bound to `cell.apply`).
  """
  paths = engines.paths_of(cell) or engines.FastPaths(cell.apply)
  return cell._replace(paths=paths._replace(linear=recurrence))


def recurrence_of(cell: cell_lib.Cell) -> LinearRecurrence | None:
  """The recurrence of a linear cell (bound to its `apply`), or None."""
  return engines.recurrence_of(cell)


def is_linear(cell: Any) -> bool:
  """Whether the parallel engines can run `cell`: a linear cell, or a stack of them.

  Args:
    cell: any object.
  """
  return engines.is_linear(cell)
