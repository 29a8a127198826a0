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

The recurrence is attached to the cell's `apply` (`with_recurrence`); a cell
whose `apply` is replaced loses it, and `parallel_unroll` then refuses the cell.
A `stack` of linear cells is not itself linear in its carry (each layer reads
the outputs of the one below), but it runs layer after layer, each layer as a
scan: `stack` attaches its layers (`LinearStack`) for `parallel_unroll`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from rnnjax._src import cell as cell_lib

_ATTR = "_rnnjax_linear_recurrence"
_STACK_ATTR = "_rnnjax_linear_stack"


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
  """`cell` with `recurrence` attached, so that `parallel_unroll` can run it.

  The cell's `apply` must compute the same step as `recurrence` (with carry
  `HiddenState(h)`); the engines' tests check this for the built-in cells.
  """
  def apply(params, carry, x, *, key=None):
    return cell.apply(params, carry, x, key=key)

  setattr(apply, _ATTR, recurrence)
  return cell._replace(apply=apply)


def recurrence_of(cell: cell_lib.Cell) -> LinearRecurrence | None:
  """The recurrence attached to `cell.apply`, or None."""
  return getattr(cell.apply, _ATTR, None)


class LinearStack(NamedTuple):
  """A `stack` whose layers are all linear cells (or such stacks).

  Attributes:
    layers: the stacked cells, bottom first.
    dropout: the stack's dropout rate between layers (the parallel engine takes
      no key, so it runs the stack without dropout, as `unroll` does without one).
  """

  layers: tuple[cell_lib.Cell, ...]
  dropout: float


def attach_stack(apply: Callable[..., Any], layers: tuple[cell_lib.Cell, ...],
                 dropout: float) -> None:
  """Marks a stack's `apply` as running `layers` (each linear) one after another."""
  setattr(apply, _STACK_ATTR, LinearStack(tuple(layers), float(dropout)))


def stack_of(cell: cell_lib.Cell) -> LinearStack | None:
  """The linear layers attached to a stack's `apply`, or None."""
  return getattr(cell.apply, _STACK_ATTR, None)


def is_linear(cell: Any) -> bool:
  """Whether `parallel_unroll` can run `cell`: a linear cell, or a stack of them."""
  return isinstance(cell, cell_lib.Cell) and (
      recurrence_of(cell) is not None or stack_of(cell) is not None)
