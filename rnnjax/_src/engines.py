"""How a cell runs over time: the engines, the `auto` rule, and a cell's fast paths.

Every engine takes `unroll`'s arguments (the initial carry, `lengths`, `resets`,
padding-aware `reverse`, `time_major`) and gives its answers:

- `"sequential"`: `lax.scan` over the cell's step (`unroll.py`), or the cell's
  whole-sequence kernel where it has one (the fused LSTM/GRU of `fused.py`);
- `"parallel"`, `"chunked"`: the associative scan over all steps, or over chunks,
  for cells linear in their carry (`parallel.py`);
- `"newton"`: any cell, by Newton's method on the whole trajectory, each iteration a
  parallel scan (`newton.py`); its options are an `rnnjax.Newton`, passed as `engine`;
- `"auto"`: chosen here per cell, options, backend and length (`plan`).

A cell's fast paths are one visible record, `Cell.paths` (a `FastPaths`), bound to
the exact `apply` they reproduce: they are used only while `cell.apply is
paths.apply`, so a cell whose `apply` is replaced or wrapped keeps its record but
runs the generic path, and never a kernel that computes something else.

Adding an engine touches this module (its `_ENGINES` entry) and its own file only:
the table names the function that runs it and what it can run.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

_FN = "rnnjax.engine_plan"


class FastPaths(NamedTuple):
  """What a cell can run besides stepping its `apply`: `Cell.paths`.

  Attributes:
    apply: the step function these paths reproduce. Engines use them only while
      `cell.apply is apply`: `cell._replace(apply=...)` keeps the record, and the
      engines then run the new `apply` step by step.
    sequence: the whole-sequence kernel (the fused LSTM/GRU), or None:
      `sequence(params, xs, carry, *, valid, keep, reverse, unroll, key)` returns
      `(ys, final_carry)`, or None to ask for the generic path (an unsupported dtype).
    linear: the cell's `LinearRecurrence` (`h_t = a_t * h_{t-1} + b_t`), which the
      parallel and chunked engines scan; None for other cells.
    layers: for a `stack` of cells, its layers, bottom first (None otherwise). A
      stack has a whole-sequence kernel when every layer has one, and runs on the
      parallel engines when every layer is linear.
    dropout: the stack's dropout rate between layers.
    jacobian_heads: for the Newton engine, the structure of the step's Jacobian, or
      None (dense): with `k`, every carry leaf is `[..., H]` and unit `u` of each leaf
      depends only on the units of `u`'s head (`H / k` units) of each leaf. `k = H`
      means unit by unit (ParaRNN's diagonal cells), `k = heads` a head-wise
      recurrence (`heads=`, the sLSTM). The Newton engine then forms the Jacobian's
      diagonal with `leaves * H / k` Jacobian-vector products instead of `S`.
  """

  apply: Callable[..., Any]
  sequence: Callable[..., Any] | None = None
  linear: Any = None
  layers: tuple[Any, ...] | None = None
  dropout: float = 0.0
  jacobian_heads: int | None = None


def paths_of(cell: Any) -> FastPaths | None:
  """`cell.paths` if it is bound to `cell.apply` (else None: the generic path runs)."""
  paths = getattr(cell, "paths", None)
  if isinstance(paths, FastPaths) and paths.apply is getattr(cell, "apply", None):
    return paths
  return None


def recurrence_of(cell: Any) -> Any:
  """The `LinearRecurrence` of a linear cell, or None."""
  paths = paths_of(cell)
  return None if paths is None else paths.linear


def linear_layers(cell: Any) -> tuple[Any, ...] | None:
  """A stack's layers if every one is linear (or such a stack), else None."""
  paths = paths_of(cell)
  if paths is None or paths.layers is None or not all(is_linear(c) for c in paths.layers):
    return None
  return paths.layers


def is_linear(cell: Any) -> bool:
  """Whether the parallel engines can run `cell`: a linear cell, or a stack of them."""
  return recurrence_of(cell) is not None or linear_layers(cell) is not None


def has_dropout(cell: Any) -> bool:
  """Whether `cell` is a stack with dropout between its layers (active given a key)."""
  paths = paths_of(cell)
  return paths is not None and paths.layers is not None and paths.dropout > 0.0


def sequence_kernel(cell: Any) -> Callable[..., Any] | None:
  """The whole-sequence kernel `unroll` runs for `cell`, or None (see `FastPaths.sequence`)."""
  paths = paths_of(cell)
  if paths is None:
    return None
  if paths.sequence is not None or paths.layers is None:
    return paths.sequence
  kernels = [sequence_kernel(layer) for layer in paths.layers]
  if any(k is None for k in kernels):
    return None
  return _stack_kernel(tuple(kernels), paths.dropout)


def _stack_kernel(kernels: tuple[Callable[..., Any], ...], rate: float) -> Callable[..., Any]:
  """A stack's kernel: its layers' kernels one after another over the sequence.

  The same function as stepping all layers together, since each layer's step `t`
  only reads the layer below at step `t`.
  """
  def run_kernels(params, xs, carry, opts):
    new_carry = []
    for kern, p, c in zip(kernels, params, carry, strict=True):
      out = kern(p, xs, c, **opts)
      if out is None:
        return None
      xs, c = out
      new_carry.append(c)
    return xs, tuple(new_carry)

  def kernel(params, xs, carry, *, valid, keep, reverse, unroll, key=None):
    if key is not None and rate > 0.0:
      return None  # Dropout draws per-step masks: keep the step-wise path.
    opts = dict(valid=valid, keep=keep, reverse=reverse, unroll=unroll)
    # Every layer must accept (a shape-only trial, so a refusal by a later
    # layer leaves nothing of the earlier ones in the program).
    if jax.eval_shape(lambda: run_kernels(params, xs, carry, opts)) is None:
      return None
    return run_kernels(params, xs, carry, opts)

  return kernel


# ------------------------------------------------------------------------------- engines


class _Engine(NamedTuple):
  # (module, function, keyword arguments): `function(cell, params, xs, carry, *, lengths,
  # resets, reverse, time_major, **kwargs)` runs the engine, as `unroll` does.
  run: tuple[str, str, dict[str, Any]]
  linear_only: bool  # runs linear cells (and stacks of them) only
  whole_sequence: bool  # runs without per-step keys (no dropout, no truncated BPTT, no remat)


_ENGINES: dict[str, _Engine] = {
    "sequential": _Engine(("rnnjax._src.unroll", "unroll", {}), False, False),
    "parallel": _Engine(("rnnjax._src.parallel", "parallel_unroll", {"engine": "parallel"}),
                        True, True),
    "chunked": _Engine(("rnnjax._src.parallel", "parallel_unroll", {"engine": "chunked"}),
                       True, True),
    "newton": _Engine(("rnnjax._src.newton", "newton_unroll", {}), False, True),
}
ENGINES = ("auto", *_ENGINES)

# engine="auto" for a linear cell, per backend: (the engine, the shortest T from which it
# beats `lax.scan`), or None where `lax.scan` was fastest at every T measured. From
# `python benchmarks/linear_engines.py` over T = 256..65,536 (benchmarks/RESULTS.md): on the
# 2-core CPU, sequential won at every T (the parallel scan does ~2x the work and a CPU has
# no width to spend it on); on an H100, "parallel" won at every T, by 14x at T=256. TPUs
# were not measured; they get the GPU's choice.
AUTO_THRESHOLDS: dict[str, tuple[str, int] | None] = {
    "cpu": None, "gpu": ("parallel", 0), "tpu": ("parallel", 0)}


def auto_engine(num_steps: int, backend: str | None = None) -> str:
  """The engine `engine="auto"` picks for a linear cell over `num_steps` on `backend`.

  Args:
    num_steps: `T`.
    backend: "cpu", "gpu" or "tpu"; default: JAX's default backend.

  Returns:
    "sequential", or the parallel engine that measured faster from this `T` on.
  """
  backend = backend or jax.default_backend()
  choice = AUTO_THRESHOLDS.get(backend, AUTO_THRESHOLDS["gpu"])
  if choice is None:
    return "sequential"
  engine, threshold = choice
  return engine if num_steps >= threshold else "sequential"


def check_name(fn: str, engine: Any) -> str:
  """The name of `engine`: a name of `ENGINES`, or an engine's options (`rnnjax.Newton`).

  Anything else is a ValueError naming the engines.
  """
  if isinstance(engine, str) and engine in ENGINES:
    return engine
  name = getattr(type(engine), "ENGINE", None)  # The options of an engine name it.
  if name in _ENGINES:
    return name
  raise ValueError(f"{fn}: `engine` must be one of {ENGINES}, or an engine's options such as "
                   f"rnnjax.Newton(...), got {engine!r}.")


def linear_only(engine: Any) -> bool:
  """Whether `engine` (a name or options, not "auto") runs linear cells only."""
  return _ENGINES[check_name("rnnjax.engines", engine)].linear_only


def runner(engine: Any) -> Callable[..., Any]:
  """`run(cell, params, xs, carry, *, lengths, resets, reverse, time_major)` of `engine`.

  `engine` is a name other than "auto", or an engine's options (passed on as `options`).
  The engines' functions are imported here on first use: their modules import this one.
  """
  module, name, kwargs = _ENGINES[check_name("rnnjax.engines", engine)].run
  if not isinstance(engine, str):
    kwargs = {**kwargs, "options": engine}
  return functools.partial(getattr(importlib.import_module(module), name), **kwargs)


class EnginePlan(NamedTuple):
  """What runs a cell over time: the result of `engine_plan`.

  Attributes:
    engine: the engine that runs: "sequential", "parallel", "chunked" or "newton"
      (never "auto": the choice made).
    kernel: True where the sequential engine runs the cell's whole-sequence kernel
      (the fused LSTM/GRU; see `FastPaths.sequence`) instead of stepping `apply`.
    reason: why, in one sentence.
  """

  engine: str
  kernel: bool
  reason: str


def require(fn: str, cell: Any, engine: str, *, arg: str = "cell", tbptt: Any = None,
            dropout_key: bool = False, remat: Any = False) -> None:
  """Raises if `engine` (a name other than "auto") cannot run `cell` with these options.

  Args:
    fn: the calling function's name, for messages.
    cell: the cell (or Layer) to run.
    engine: the engine asked for.
    arg: the name of `cell` among `fn`'s arguments, for messages.
    tbptt: truncated BPTT's chunk, or None.
    dropout_key: whether a key is given to a stack with dropout.
    remat: `unroll`'s `remat` (the sequential engine's).
  """
  spec = _ENGINES.get(engine)
  if spec is None:
    return
  if spec.linear_only and not is_linear(cell):
    what = ("a Layer" if not hasattr(cell, "initial_carry") or not hasattr(cell, "paths")
            else "a cell without a linear recurrence")
    raise TypeError(
        f"{fn}: `{arg}` must be a linear cell (one with a LinearRecurrence: rnnjax.mingru, "
        f"minlstm, lru, rglru, or rnnjax.with_recurrence(cell, ...)) or a stack of them for "
        f"engine={engine!r}, got {what}. Use engine='auto' or 'sequential' for other cells.")
  if spec.whole_sequence and (tbptt is not None or dropout_key or remat is not False):
    why = ("truncated BPTT (`tbptt`)" if tbptt is not None else
           "the stack's dropout (a `key`)" if dropout_key else f"remat={remat!r}")
    raise ValueError(f"{fn}: {why} runs step by step, but engine={engine!r} runs whole "
                     "sequences; use engine='auto' or 'sequential'.")


def engine_plan(cell: Any, engine: str = "auto", *, num_steps: int | None = None,
                params: Any = None, xs: Any = None, carry: Any = None, key: Any = None,
                tbptt: int | None = None, remat: int | bool = False, fused: bool = True,
                backend: str | None = None) -> EnginePlan:
  """Which engine runs `cell` over time, and whether its fast path does.

  The rule that `rnnjax.unroll`, `rnnjax.parallel_unroll`, `sequence_model` and the
  command line all follow. `"auto"` picks a parallel engine for a linear cell where
  it measured faster (`auto_engine`: the GPU and TPU, from the first step), and the
  sequential engine otherwise, or where an option needs steps (truncated BPTT, a
  stack's dropout given a key, `remat`). The sequential engine runs the cell's
  whole-sequence kernel when it has one, `fused` is on and `remat` off; given
  `params` and `xs` (arrays or `jax.ShapeDtypeStruct`s, time-major) the kernel's
  own dtype check is run too, by shapes only.

  Args:
    cell: a `Cell` (or a `Layer`, which runs its own `apply`).
    engine: "auto", "sequential", "parallel", "chunked" or "newton", or an engine's
      options (`rnnjax.Newton(...)`).
    num_steps: `T`, for `"auto"`'s per-length rule (None: any length).
    params: the cell's params (optional, see above).
    xs: the inputs `[T, ..., I]` (optional, see above).
    carry: the initial carry (None: the cell's initial carry).
    key: the PRNG key given to `unroll` (dropout in a stack), or None.
    tbptt: truncated BPTT's chunk length, or None.
    remat: `unroll`'s `remat`.
    fused: `unroll`'s `fused`.
    backend: "cpu", "gpu" or "tpu" (default: JAX's).

  Returns:
    An `EnginePlan`.

  Raises:
    ValueError, TypeError: as the engine itself would (an unknown name, a parallel
      engine for a cell that is not linear, truncated BPTT on a parallel engine).

  Examples:
    >>> import rnnjax
    >>> rnnjax.engine_plan(rnnjax.lstm(8)).kernel
    True
    >>> rnnjax.engine_plan(rnnjax.mingru(8), num_steps=512, backend="gpu").engine
    'parallel'
  """
  engine = check_name(_FN, engine)  # Options (rnnjax.Newton) plan as their engine.
  dropout_key = key is not None and has_dropout(cell)
  require(_FN, cell, engine, tbptt=tbptt, dropout_key=dropout_key, remat=remat)
  if engine == "auto":
    stepwise = tbptt is not None or dropout_key or remat is not False
    if not is_linear(cell):
      reason = "auto: the cell is not linear in its carry"
    elif stepwise:
      reason = "auto: an option (tbptt, a stack's dropout, remat) needs steps"
    else:
      engine = auto_engine(num_steps if num_steps is not None else 1 << 30, backend)
      reason = f"auto: {engine} measured fastest for linear cells on {backend or 'this backend'}"
    engine = engine if engine != "auto" else "sequential"
  else:
    reason = f"engine={engine!r} was asked for"
  if engine != "sequential":
    return EnginePlan(engine, False, reason)
  stepwise = not fused or remat is not False or tbptt is not None or dropout_key
  kernel = None if stepwise else sequence_kernel(cell)
  if kernel is not None and params is not None and xs is not None:
    if carry is None:
      carry = jax.eval_shape(lambda p: cell.initial_carry(p, tuple(xs.shape[1:-1])), params)
    kernel = kernel if jax.eval_shape(lambda p, x, c: kernel(
        p, x, c, valid=None, keep=None, reverse=False, unroll=1), params, xs, carry) else None
  why = ("; it runs the cell's whole-sequence kernel" if kernel is not None else
         "; it steps the cell's apply")
  return EnginePlan("sequential", kernel is not None, reason + why)
