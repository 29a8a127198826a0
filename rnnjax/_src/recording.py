"""Per-step records: any intermediate of a cell's step over the whole sequence.

`record` runs `unroll` without touching the cell's code. One step of `cell.apply`
is traced to a jaxpr, and a small interpreter runs it inside the engine,
collecting the outputs of the primitives asked for (`logistic` and `tanh` by
default: the gates). The normal path is untouched, so it costs nothing when
unused. Public as `rnnjax.diagnostics.record`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.extend  # `jax.extend.core`: jaxpr types; `import jax` alone does not load it.
import jax.numpy as jnp

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks
from rnnjax._src import unroll as unroll_lib


class Record(NamedTuple):
  """One recorded intermediate of a cell's step, over the sequence.

  Attributes:
    name: `"<primitive>#<k>"`, the `k`-th selected operation of the step, in
      program order (e.g. `logistic#0`, `logistic#1`, `tanh#0`, ...).
    source: where the operation was written (`file:line`), to tell gates apart.
    values: `[T, *batch, ...]`; zero at padded steps.
  """

  name: str
  source: str
  values: jax.Array


_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _sub_jaxpr(eqn) -> Any:
  for key in _CALL_PARAMS:
    if key in eqn.params:
      sub = eqn.params[key]
      return sub if hasattr(sub, "consts") else jax.extend.core.ClosedJaxpr(sub, ())
  return None


def _source(eqn) -> str:
  """`file:line` of the operation, from JAX's (private) source info; `?` if unavailable."""
  try:
    from jax._src import source_info_util
    frame = source_info_util.user_frame(eqn.source_info.traceback)
  except (ImportError, AttributeError):
    return "?"
  return "?" if frame is None else f"{frame.file_name.rsplit('/', 1)[-1]}:{frame.start_line}"


def _eval_recording(closed, args, select: Callable[[Any], bool], out: list, sources: list):
  """Evaluates a closed jaxpr, appending selected equations' outputs to `out`."""
  env = {}

  def read(v):
    return v.val if isinstance(v, jax.extend.core.Literal) else env[v]

  jaxpr = closed.jaxpr
  for v, c in zip(jaxpr.constvars, closed.consts, strict=True):
    env[v] = c
  for v, a in zip(jaxpr.invars, args, strict=True):
    env[v] = a
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    sub = _sub_jaxpr(eqn)
    if sub is not None and eqn.primitive.name in ("pjit", "jit", "closed_call", "core_call",
                                                   "custom_jvp_call", "custom_vjp_call",
                                                   "remat", "checkpoint"):
      n = len(sub.jaxpr.invars)
      outvals = _eval_recording(sub, invals[len(invals) - n:], select, out, sources)
    else:
      outvals = eqn.primitive.bind(*invals, **eqn.params)
      if not eqn.primitive.multiple_results:
        outvals = [outvals]
      if select(eqn):
        for val in outvals:
          out.append(val)
          sources.append((eqn.primitive.name, _source(eqn)))
    for v, val in zip(eqn.outvars, outvals, strict=True):
      env[v] = val
  return [read(v) for v in jaxpr.outvars]


def record(cell: cell_lib.Cell, params: Any, xs: jax.Array, carry: Any = None, *,
           primitives: Sequence[str] = ("logistic", "tanh"),
           select: Callable[[Any], bool] | None = None, lengths: jax.Array | None = None,
           resets: jax.Array | None = None, reverse: bool = False
           ) -> tuple[Any, Any, list[Record]]:
  """Runs `unroll` and records intermediates of every step, without changing the cell.

  One step of `cell.apply` is traced to a jaxpr; the engine then runs that step
  with a small interpreter that also returns the outputs of the selected
  operations. By default these are every `logistic` (sigmoid) and `tanh`: for an
  LSTM, in program order, `σ(i), σ(f), tanh(g), σ(o), tanh(c')`; `Record.source`
  gives the line of each. Plain `unroll` is not
  affected, so nothing is paid when `record` is not used.

  Args:
    cell: any `Cell`.
    params: the cell's params.
    xs: `[T, *batch, I]`, time first, as in `rnnjax.unroll`.
    carry: the initial carry, or None for `cell.initial_carry`.
    primitives: names of the JAX primitives to record (see `jax.make_jaxpr` of
      one step: `logistic`, `tanh`, `dot_general`, `mul`, ...).
    select: alternatively, a predicate on a jaxpr equation (`eqn.primitive.name`,
      `eqn.params`, ...); it overrides `primitives`.
    lengths: `int [*batch]` valid steps per sequence, or None (as in `rnnjax.unroll`).
    resets: `bool [T, *batch]`, or None (as in `rnnjax.unroll`).
    reverse: run each sequence backwards over its valid steps (as in `rnnjax.unroll`).

  Returns:
    `(ys, final_carry, records)`, with `ys` and the carry as `unroll`'s and
    `records` a list of `Record`.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> cell = rnnjax.lstm(8)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> ys, carry, recs = rnnjax.diagnostics.record(cell, params, jnp.ones((5, 2, 3)))
    >>> [r.name for r in recs]
    ['logistic#0', 'logistic#1', 'tanh#0', 'logistic#2', 'tanh#1']
    >>> recs[0].values.shape              # σ(i), the input gate, over time
    (5, 2, 8)
  """
  fn = "rnnjax.diagnostics.record"
  in_size = cell.input_size(params) if cell.input_size is not None else None
  _, batch_shape = checks.sequence_input(fn, xs, in_size)
  if carry is None:
    carry = cell.initial_carry(params, batch_shape)
  if isinstance(primitives, str) or not all(isinstance(p, str) for p in primitives):
    raise TypeError(f"{fn}: `primitives` must be a sequence of primitive names such as "
                    f"('logistic', 'tanh'), got {primitives!r}.")
  names = tuple(primitives)
  chooser = select or (lambda eqn: eqn.primitive.name in names)
  carry_b = jax.tree_util.tree_map(
      lambda leaf, s: jnp.broadcast_to(leaf, s.shape), carry,
      jax.eval_shape(lambda p: cell.initial_carry(p, batch_shape), params))
  closed = jax.make_jaxpr(lambda c, x: cell.apply(params, c, x))(carry_b, xs[0])
  sources: list = []
  _eval_recording(closed, jax.tree_util.tree_leaves((carry_b, xs[0])), chooser, [], sources)
  out_tree = jax.tree_util.tree_structure(jax.eval_shape(
      lambda c, x: cell.apply(params, c, x), carry_b, xs[0]))

  def apply(p, c, x, *, key=None):
    del p, key
    recorded: list = []
    outs = _eval_recording(closed, jax.tree_util.tree_leaves((c, x)), chooser, recorded, [])
    new_c, y = jax.tree_util.tree_unflatten(out_tree, outs)
    return new_c, (y, tuple(recorded))

  wrapped = cell_lib.Cell(cell.init, cell.initial_carry, apply, input_size=cell.input_size)
  (ys, recs), final = unroll_lib.unroll(wrapped, params, xs, carry_b, lengths=lengths,
                                        resets=resets, reverse=reverse)
  counts: dict[str, int] = {}
  records = []
  for values, (prim, src) in zip(recs, sources, strict=True):
    k = counts.get(prim, 0)
    counts[prim] = k + 1
    records.append(Record(f"{prim}#{k}", src, values))
  return ys, final, records
