"""The parallel engine: linear cells over time as a prefix scan (`jax.lax.associative_scan`).

A linear cell's carry follows `h_t = a_t * h_{t-1} + b_t` (elementwise). Pairs
`(a, b)` compose associatively, `(a1, b1) • (a2, b2) = (a1 * a2, a2 * b1 + b2)`,
so all `h_t` come out of one prefix scan of depth `log T`. The initial carry `h`
enters after the scan: with `(A_t, B_t)` the prefix up to step `t`,
`h_t = A_t * h + B_t`. `unroll`'s options become edits of the pairs before the scan:

- a reset before step `t` restarts from `h̄ = initial_carry`: `(a_t, b_t) <- (0, a_t * h̄ + b_t)`;
- a padded step keeps the carry: `(a_t, b_t) <- (1, 0)`, and its output is zero
  (its input is replaced by zeros first, as in `unroll`, so its values never
  reach the coefficients, forwards or backwards);
- `reverse` (with lengths) permutes each valid prefix exactly as `unroll` does.

In log space (minGRU/minLSTM's `log_space=True`), pairs are `(log a, log b)`
and compose as `(la1 + la2, logaddexp(lb1 + la2, lb2))`; zero is a large
negative number, so gradients stay finite. The initial carry still enters in
linear space, `h_t = exp(log A_t) * h + exp(log B_t)`, so that a zero carry
keeps its gradient (`log 0` has none).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks, engines
from rnnjax._src import unroll as unroll_lib
from rnnjax._src.cells import common

_FN = "rnnjax.parallel_unroll"
DEFAULT_CHUNK = 128
# `log 0` in the log-space scan: finite, so that `logaddexp` of two of them has a finite
# gradient; sums of up to ~1e8 of them stay inside float32's range.
_LOG_ZERO = -1e30


def _combine(left, right):
  a1, b1 = left
  a2, b2 = right
  return a1 * a2, a2 * b1 + b2


def _combine_log(left, right):
  la1, lb1 = left
  la2, lb2 = right
  return la1 + la2, jnp.logaddexp(lb1 + la2, lb2)


def _expand(mask: jax.Array, like: jax.Array) -> jax.Array:
  return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


def _safe_log(h: jax.Array) -> jax.Array:
  positive = h > 0
  return jnp.where(positive, jnp.log(jnp.where(positive, h, jnp.ones_like(h))),
                   jnp.full_like(h, _LOG_ZERO))


def _scan_pairs(a, b, h0, *, log_space: bool, engine: str, chunk: int):
  """All carries `h_t`, `[T, ..., S]`, from pairs `[T, ..., S]` and `h0: [..., S]`.

  The carry enters after the scan, linearly: with `(A_t, B_t)` the prefix of the
  pairs, `h_t = A_t * h0 + B_t` (in log space `exp(log A_t) * h0 + exp(log B_t)`),
  and `hs` come back in linear space. In log space this keeps `h0` out of any
  logarithm: the log of a zero carry (the default one) would have a zero
  gradient, where the true one is `A_t`.
  """
  combine = _combine_log if log_space else _combine

  def run(a, b, h):  # The carries of one run of pairs, from the carry `h`.
    big_a, big_b = jax.lax.associative_scan(combine, (a, b), axis=0)
    if log_space:
      return jnp.exp(big_a) * h + jnp.exp(big_b)
    return big_a * h + big_b

  if engine == "parallel":
    return run(a, b, h0)
  num_steps = a.shape[0]
  k = min(chunk, num_steps)
  n_chunks = -(-num_steps // k)
  pad = n_chunks * k - num_steps
  if pad:  # Identity steps: keep the carry.
    one = jnp.zeros_like(a[:1]) if log_space else jnp.ones_like(a[:1])
    zero = jnp.full_like(b[:1], _LOG_ZERO) if log_space else jnp.zeros_like(b[:1])
    a = jnp.concatenate([a, jnp.repeat(one, pad, axis=0)])
    b = jnp.concatenate([b, jnp.repeat(zero, pad, axis=0)])
  a = a.reshape(n_chunks, k, *a.shape[1:])
  b = b.reshape(n_chunks, k, *b.shape[1:])

  def body(h, pairs):
    hs = run(*pairs, h)
    return hs[-1], hs

  _, hs = jax.lax.scan(body, h0, (a, b))
  return hs.reshape(n_chunks * k, *hs.shape[2:])[:num_steps]


def _edit_pairs(a, b, h_reset, resets, valid, *, log_space: bool):
  """`unroll`'s options as edits of the pairs `(a, b)` (or `(log a, log b)`), `[T, ..., S]`.

  A reset restarts from `h_reset` (`[..., S]`, in log space its log), and a padded
  step keeps the carry.
  """
  if resets is not None:
    r = _expand(resets, a)
    restart_b = jnp.logaddexp(a + h_reset, b) if log_space else a * h_reset + b
    b = jnp.where(r, restart_b, b)
    a = jnp.where(r, jnp.full_like(a, _LOG_ZERO) if log_space else jnp.zeros_like(a), a)
  if valid is not None:
    v = _expand(valid, a)
    a = jnp.where(v, a, jnp.zeros_like(a) if log_space else jnp.ones_like(a))
    b = jnp.where(v, b, jnp.full_like(b, _LOG_ZERO) if log_space else jnp.zeros_like(b))
  return a, b


def _in_pair_dtype(carries: tuple[jax.Array, ...], b: jax.Array) -> tuple[jax.Array, ...]:
  """`carries` in the dtype of the pairs `b`, which the scan runs in.

  A built-in cell computes its pairs in its accumulation dtype (`precision.Precision.accum`:
  float32 for a bfloat16 cell), as its step does; the carry may be stored in another
  (its params' dtype). A carry of another kind (complex against real) is left as it is.
  """
  if all(jnp.iscomplexobj(h) == jnp.iscomplexobj(b) for h in carries):
    return tuple(h.astype(b.dtype) for h in carries)
  return carries


def _output_dtype(cell: cell_lib.Cell, params: Any, carry: Any, xs: jax.Array) -> Any:
  """The dtype of `cell.apply`'s output `y` for one step of `xs` (shapes only), or None.

  The scan's outputs are cast to it, so that `ys` have the dtype that `unroll` gives
  (a mixed-precision cell outputs its compute dtype, not the scan's float32).
  """
  step = jax.ShapeDtypeStruct(tuple(xs.shape[1:]), xs.dtype)
  _, y = jax.eval_shape(cell.apply, params, carry, step)
  return getattr(y, "dtype", None)


def _check_options(cell: cell_lib.Cell, engine: str, chunk: int) -> tuple[Any, Any, int]:
  """`parallel_unroll`'s checks of `cell`, `engine` and `chunk`.

  Returns:
    `(recurrence, layers, chunk)`: the cell's `LinearRecurrence` or None, the
    linear layers of a `stack` or None (one of the two is set), and `chunk`.
  """
  if not isinstance(cell, cell_lib.Cell):
    raise TypeError(f"{_FN}: `cell` must be an rnnjax.Cell, got {type(cell).__name__}.")
  engines.check_name(_FN, engine)
  engines.require(_FN, cell, "parallel")
  return (engines.recurrence_of(cell), engines.linear_layers(cell),
          checks.positive_int(_FN, "chunk", chunk))


def parallel_unroll(cell: cell_lib.Cell, params: Any, xs: jax.Array, carry: Any = None, *,
                    lengths: jax.Array | None = None, resets: jax.Array | None = None,
                    reverse: bool = False, engine: str = "auto",
                    chunk: int = DEFAULT_CHUNK, time_major: bool = True) -> tuple[jax.Array, Any]:
  """`unroll` for linear cells, as a sequential, parallel or chunked scan; same answers.

  Same signature and semantics as `rnnjax.unroll` (initial carry, `lengths`,
  `resets`, padding-aware `reverse`, the final carry), for cells with a
  `LinearRecurrence` (`mingru`, `minlstm`, `lru`, `rglru`, or your own through
  `rnnjax.with_recurrence`), and for a `stack` of such cells, which runs layer
  after layer. A stack's dropout is not applied here (there is no `key`), as in
  `unroll` without a key: train a stack with dropout through `unroll`.

  As in `unroll`, padded steps never reach the cell's arithmetic (their inputs
  are replaced by zeros), so NaN or inf padding leaves outputs, carries and
  gradients unchanged. The gradients equal the sequential engine's, also with
  respect to a zero initial carry in log space (the carry is added in linear
  space after the scan, never passed through a logarithm).

  Args:
    cell: a linear cell, or a `stack` of them.
    params: the cell's params.
    xs: `[T, ..., I]`, time first, as in `rnnjax.unroll` (`[..., T, I]` with
      `time_major=False`).
    carry: the initial carry, or None for `cell.initial_carry`.
    lengths: `int [...]` valid steps per sequence, or None (as in `rnnjax.unroll`).
    resets: `bool [T, ...]` (`[..., T]` with `time_major=False`), or None (as in
      `rnnjax.unroll`).
    reverse: run each sequence backwards over its valid steps (as in `rnnjax.unroll`).
    engine: `"sequential"` (`lax.scan` over `cell.apply`, i.e. `unroll`),
      `"parallel"` (one `associative_scan` over all `T` steps: depth `log T`,
      memory `O(T)`), `"chunked"` (`lax.scan` over chunks of `chunk` steps, an
      `associative_scan` inside each), or `"auto"`: the fastest for this backend
      and `T`, from measurements (`rnnjax.auto_engine`).
    chunk: the chunk length of `"chunked"`, a positive integer.
    time_major: the layout of `xs`, `resets` and `ys`, as in `rnnjax.unroll`.

  Returns:
    `(ys, final_carry)`, as `unroll`.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> cell = rnnjax.mingru(8)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> xs = jax.random.normal(jax.random.key(1), (50, 2, 3))
    >>> ys, carry = rnnjax.parallel_unroll(cell, params, xs, engine="parallel")
    >>> ys_seq, _ = rnnjax.unroll(cell, params, xs)
    >>> bool(jnp.allclose(ys, ys_seq, atol=1e-5))
    True
  """
  recurrence, stacked, chunk = _check_options(cell, engine, chunk)
  if not checks.boolean(_FN, "time_major", time_major):
    # Checked as given (so messages quote the caller's shapes), then run time-major.
    xs_t, _, _, carry, lengths, resets = unroll_lib.check_sequence(
        _FN, cell, params, xs, carry, lengths, resets, time_major=False)
    ys, carry = parallel_unroll(cell, params, xs_t, carry, lengths=lengths, resets=resets,
                                reverse=reverse, engine=engine, chunk=chunk)
    return unroll_lib.from_time_major(ys, len(xs.shape) - 2), carry
  xs, num_steps, batch_shape, carry, lengths, resets = unroll_lib.check_sequence(
      _FN, cell, params, xs, carry, lengths, resets)
  engine = engines.engine_plan(cell, engine, num_steps=num_steps).engine
  if engine == "sequential":
    return unroll_lib.unroll(cell, params, xs, carry, lengths=lengths, resets=resets,
                             reverse=reverse)
  if stacked is not None:
    # Layer after layer, each a scan: the same function as stepping every layer
    # together, since layer l's step t reads only layer l-1's output at step t (in
    # reverse too, and a reset restarts every layer's carry at the same step).
    new_carry = []
    for layer, p, c in zip(stacked, params, carry, strict=True):
      xs, c = parallel_unroll(layer, p, xs, c, lengths=lengths, resets=resets,
                              reverse=reverse, engine=engine, chunk=chunk)
      new_carry.append(c)
    return xs, tuple(new_carry)
  xs, valid, resets, idx = unroll_lib.time_masks(xs, num_steps, batch_shape, lengths, resets,
                                                 reverse)
  xs, resets = unroll_lib.in_processing_order((xs, resets), idx, reverse)

  log_space = recurrence.log_coefficients is not None
  # The value check runs on concrete carries only, in NumPy: a jnp op on a concrete carry
  # closed over inside `jit` would give a tracer, and `bool` of it a raw JAX error.
  if (log_space and not isinstance(carry.h, jax.core.Tracer)
      and np.any(np.asarray(carry.h) < 0)):
    raise ValueError(
        f"{_FN}: a log-space cell needs a carry h >= 0 (its recurrence keeps h positive), got "
        f"min(carry.h)={float(np.min(np.asarray(carry.h)))}.")
  h0 = jnp.broadcast_to(carry.h, (*batch_shape, carry.h.shape[-1]))
  y_dtype = _output_dtype(cell, params, carry._replace(h=h0), xs)
  h_reset = jnp.broadcast_to(cell.initial_carry(params, batch_shape).h, h0.shape)
  if log_space:
    a, b = recurrence.log_coefficients(params, xs)
  else:
    a, b = recurrence.coefficients(params, xs)
  h0, h_reset = _in_pair_dtype((h0, h_reset), b)
  if log_space:
    h_reset = _safe_log(h_reset)
  a, b = _edit_pairs(a, b, h_reset, resets, valid, log_space=log_space)
  hs = _scan_pairs(a, b, h0, log_space=log_space, engine=engine, chunk=chunk)
  ys = hs if recurrence.readout is None else recurrence.readout(params, hs, xs)
  if y_dtype is not None:
    ys = ys.astype(y_dtype)
  if valid is not None:
    ys = jnp.where(_expand(valid, ys), ys, jnp.zeros_like(ys))
  final = common.HiddenState(h=hs[-1].astype(carry.h.dtype))
  ys = unroll_lib.in_processing_order(ys, idx, reverse)
  return ys, final
