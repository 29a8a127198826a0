"""A sequence model: input encoder, a recurrent core, a linear read-out.

This is the model the command line trains, and a template for your own: the
core is any rnnjax `Cell` (a stack of cells included) or `Layer`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks, engines, layers, precision, truncated
from rnnjax._src import readout as readout_lib
from rnnjax._src import unroll as unroll_lib

ENGINES = engines.ENGINES


class SequenceModelParams(NamedTuple):
  embed: jax.Array | None  # [V, E] token embedding, None for float inputs
  core: Any  # params of the recurrent core
  w_out: jax.Array  # [C, O], C the core's output size (T * C for readout="flatten")
  b_out: jax.Array  # [O]


class SequenceModel(NamedTuple):
  """`init(key) -> params`, `initial_carry(params, batch_shape)`, and
  `apply(params, xs, carry=None, *, lengths=None, key=None, tbptt=None, time_major=True)
  -> (preds, carry)` with `xs: [T, B, I]` floats or `[T, B]` token ids, `preds: [T, B, O]`
  (`[B, T, I]`, `[B, T]` and `[B, T, O]` with `time_major=False`); `preds: [B, O]` for a
  readout other than "steps"."""

  init: Callable[[jax.Array], SequenceModelParams]
  initial_carry: Callable[..., Any]
  apply: Callable[..., tuple[jax.Array, Any]]


def sequence_model(core: cell_lib.Cell | layers.Layer, *, input_size: int, output_size: int,
                   vocab_size: int | None = None, embed_size: int = 64,
                   engine: str = "auto", dtype: Any = jnp.float32,
                   param_dtype: Any = None, readout: str = "steps",
                   num_steps: int | None = None) -> SequenceModel:
  """Wraps a recurrent core with an input encoder and a linear read-out.

  Args:
    core: a `Cell` (run with `rnnjax.unroll`, or `rnnjax.parallel_unroll` if it is
      linear) or a `Layer`.
    input_size: features per step of float inputs (ignored for token inputs).
    output_size: `O`, outputs per step (values, or logits over a vocabulary).
    vocab_size: if set, inputs are integer token ids `[T, B]` embedded into
      `embed_size` features. Ids are checked to lie in `[0, vocab_size)` when `xs`
      and `lengths` are concrete (a ValueError names the first bad position).
      Under `jit` they cannot be checked: an out-of-range id (negative ones
      included; they do not wrap around) at a valid step embeds to NaN, so the
      predictions and the loss are NaN. Steps at or past `lengths` are never read
      and may hold any id (pipelines pad with -1 or `vocab_size`).
    embed_size: the embedding size for token inputs.
    engine: how the core runs over time (`rnnjax.ENGINES`, as in `rnnjax.unroll`):
      `"auto"` (for a linear core, `rnnjax.auto_engine`'s choice for the backend and
      `T`; `unroll` for every other core), `"sequential"` (always `unroll`),
      `"parallel"` / `"chunked"` (`parallel_unroll`; the core must be linear), or
      `"newton"` / `rnnjax.Newton(...)` (any cell core). The engines give the same
      answers. Truncated BPTT (`tbptt`) and a stack's dropout (with a `key`) run
      sequentially: `"auto"` falls back, the whole-sequence engines refuse.
    dtype: the compute dtype of the embedding and the read-out, as the cells'
      `dtype` (`jnp.bfloat16` for mixed precision: build the core's cells with it
      too). The read-out accumulates in float32 (or wider) and returns `preds` in
      that dtype, so that losses are computed in float32.
    param_dtype: the dtype of the embedding and read-out params; default float32
      (float64 with `dtype=jnp.float64`).
    readout: what the read-out reads, over each sequence's valid steps (`t < lengths`;
      all `T` without lengths): `"steps"` (every step, `preds: [T, B, O]`), or one
      prediction per sequence, `preds: [B, O]`: `"last"` (the core's output at step
      `lengths - 1`; a backward direction's, of `bidirectional(..., merge="concat")` or
      `rnn(cell, reverse=True)` on top, at step 0, where it ends), `"mean"` (the mean
      over the valid steps) or `"flatten"` (all `T` steps' outputs side by side, zeros
      past each length, `w_out: [T * C, O]`). A sequence of length 0 reads zeros, so its
      prediction is `b_out`.
    num_steps: `T`, for `readout="flatten"` only (and needed there): every input must
      have this many steps.

  `apply` takes `time_major=False` for batch-major inputs (`[B, T, I]` floats or
  `[B, T]` token ids; `lengths` stays `[B]`) and then returns `[B, T, O]`, as
  moving the time axis by hand would.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> model = rnnjax.sequence_model(rnnjax.lstm(16), input_size=2, output_size=1)
    >>> params = model.init(jax.random.key(0))
    >>> preds, carry = model.apply(params, jnp.ones((10, 4, 2)))
    >>> preds.shape
    (10, 4, 1)
    >>> classify = rnnjax.sequence_model(rnnjax.gru(16), input_size=2, output_size=3,
    ...                                  readout="last")
    >>> logits, _ = classify.apply(classify.init(jax.random.key(0)), jnp.ones((10, 4, 2)),
    ...                            lengths=jnp.array([10, 7, 3, 1]))
    >>> logits.shape
    (4, 3)
  """
  fn = "rnnjax.sequence_model"
  if not isinstance(core, (cell_lib.Cell, layers.Layer)):
    raise TypeError(f"{fn}: `core` must be an rnnjax Cell or Layer, got {type(core).__name__}.")
  output_size = checks.positive_int(fn, "output_size", output_size)
  if vocab_size is not None:
    vocab_size = checks.positive_int(fn, "vocab_size", vocab_size)
    embed_size = checks.positive_int(fn, "embed_size", embed_size)
    core_in = embed_size
  else:
    core_in = checks.positive_int(fn, "input_size", input_size)
  prec = precision.policy(fn, dtype, param_dtype)
  engines.require(fn, core, engines.check_name(fn, engine), arg="core")
  num_steps = readout_lib.check(fn, readout, num_steps, core)

  def init(key: jax.Array) -> SequenceModelParams:
    checks.key(f"{fn}.init", "key", key)
    k_e, k_c, k_o = jax.random.split(key, 3)
    embed = None
    if vocab_size is not None:
      embed = cell_lib.draw(jax.random.normal, k_e, (vocab_size, embed_size), prec.param)
    core_params = core.init(k_c, core_in)
    core_out = readout_lib.features(readout, layers.output_size(core, core_params, core_in),
                                    num_steps)
    w_out = cell_lib.draw(jax.nn.initializers.lecun_normal(), k_o, (core_out, output_size),
                          prec.param)
    return SequenceModelParams(embed, core_params, w_out, jnp.zeros((output_size,), prec.param))

  def initial_carry(params: SequenceModelParams, batch_shape: tuple[int, ...] = ()):
    checks.params(f"{fn}.initial_carry", params, SequenceModelParams, made_by=fn)
    return core.initial_carry(params.core, batch_shape)

  def apply(params: SequenceModelParams, xs: jax.Array, carry: Any = None, *,
            lengths: jax.Array | None = None, key: jax.Array | None = None,
            tbptt: int | None = None, time_major: bool = True) -> tuple[jax.Array, Any]:
    checks.params(f"{fn}.apply", params, SequenceModelParams, made_by=fn)
    time_major = checks.boolean(f"{fn}.apply", "time_major", time_major)
    shape = tuple(getattr(xs, "shape", ()))
    if params.embed is not None:
      xs = embed_tokens(f"{fn}.apply", params.embed, xs, lengths, time_major=time_major)
      xs = xs.astype(prec.compute)
    elif jnp.issubdtype(getattr(xs, "dtype", jnp.float32), jnp.integer):
      raise TypeError(
          f"{fn}.apply: `xs` holds integers (dtype {xs.dtype}), but the model has no "
          "vocabulary: build it with vocab_size=... for token ids, or pass float features "
          f"[T, B, input_size={core_in}].")
    if not time_major:  # Checked as given (messages quote the caller's shapes).
      xs, lengths, _ = unroll_lib.batch_major_input(f"{fn}.apply", xs, core_in, lengths, None)
    readout_lib.check_steps(f"{fn}.apply", readout, num_steps, xs.shape[0], shape)
    hs, carry = run_core(core, params.core, xs, carry, engine=engine, lengths=lengths, key=key,
                         tbptt=tbptt, fn=f"{fn}.apply")
    if readout != "steps":
      pooled = readout_lib.read(readout, core, params.core, core_in, hs, lengths)
      return prec.affine(pooled, params.w_out, params.b_out), carry
    preds = prec.affine(hs, params.w_out, params.b_out)
    return (preds if time_major else unroll_lib.from_time_major(preds, preds.ndim - 2)), carry

  return SequenceModel(init, initial_carry, apply)


def check_token_ids(fn: str, name: str, ids: Any, vocab: int, valid: Any = None) -> None:
  """Concrete token ids must lie in `[0, vocab)` (at the steps where `valid`, if given).

  Nothing is checked under `jit` (`ids` or `valid` traced): there an out-of-range id
  embeds to NaN. The message names the first bad position of `name`.
  """
  if isinstance(ids, jax.core.Tracer) or isinstance(valid, jax.core.Tracer):
    return
  host = np.asarray(ids)
  bad = (host < 0) | (host >= vocab)
  if valid is not None:
    bad &= np.asarray(valid)
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    at_valid = "" if valid is None else " at valid steps"
    hint = "" if valid is None else " Steps at or past `lengths` may hold any id."
    raise ValueError(
        f"{fn}: token ids in `{name}` must lie in [0, vocab_size) = [0, {vocab}), got "
        f"{int(host[where])} at {name}[{', '.join(map(str, where))}] ({int(bad.sum())} "
        f"out-of-range id(s){at_valid}).{hint}")


def embed_tokens(fn: str, embed: jax.Array, ids: Any, lengths: Any, *,
                 time_major: bool = True) -> jax.Array:
  """`embed[ids]`: token ids `[T, ...]` -> `[T, ..., E]`, reading valid steps only.

  With `time_major=False`, `[..., T]` -> `[..., T, E]` (`lengths: [...]` either way).

  Ids are checked to lie in `[0, V)` where `ids` (and `lengths`) are concrete; under
  `jit` an id outside that range at a valid step gives a NaN embedding (negative
  ids do not wrap around). Steps at or past `lengths` are never read: they embed
  to zeros whatever id they hold, with a zero gradient.
  """
  vocab = embed.shape[0]
  dtype = getattr(ids, "dtype", None)
  if dtype is None:
    raise TypeError(f"{fn}: `xs` must be an array of integer token ids [T, B], got "
                    f"{type(ids).__name__}.")
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(
        f"{fn}: `xs` must hold integer token ids (the model has vocab_size={vocab}), got "
        f"dtype {dtype} (xs.shape={tuple(ids.shape)}). Convert ids with xs.astype(jnp.int32); "
        "for float features build the model without vocab_size.")
  if ids.ndim < 1 or ids.shape[0 if time_major else -1] == 0:
    layout = "[T, ...]" if time_major else "[..., T]"
    raise ValueError(f"{fn}: `xs` must be token ids of shape {layout} with T >= 1, got "
                     f"xs.shape={tuple(ids.shape)}.")
  valid = None
  if lengths is not None:
    num_steps, batch = ((ids.shape[0], ids.shape[1:]) if time_major
                        else (ids.shape[-1], ids.shape[:-1]))
    lengths = checks.lengths(fn, lengths, num_steps, tuple(batch), xs_shape=ids.shape,
                             time_major=time_major, features=False)
    time = jnp.arange(num_steps, dtype=jnp.int32)
    lengths = jnp.clip(lengths, 0, num_steps).astype(jnp.int32)
    valid = (time.reshape((-1,) + (1,) * len(batch)) < lengths if time_major
             else time < lengths[..., None])
  check_token_ids(fn, "xs", ids, vocab, valid)
  in_range = (ids >= 0) & (ids < vocab)
  read = in_range if valid is None else in_range & valid
  vectors = jnp.take(embed, jnp.where(read, ids, 0), axis=0)
  vectors = jnp.where(in_range[..., None], vectors, jnp.nan)
  if valid is not None:
    vectors = jnp.where(valid[..., None], vectors, jnp.zeros_like(vectors))
  return vectors


def run_core(core: cell_lib.Cell | layers.Layer, params: Any, xs: jax.Array, carry: Any, *,
             engine: str, lengths: jax.Array | None, key: jax.Array | None,
             tbptt: int | None, fn: str) -> tuple[jax.Array, Any]:
  """`(hs, carry)`: the core over time-major `xs`, on the engine `model_engine` picks."""
  run = model_engine(core, engine, tbptt=tbptt, key_given=key is not None, fn=fn)
  if tbptt is not None:
    if not isinstance(core, cell_lib.Cell):
      raise ValueError(f"{fn}: `tbptt` needs a Cell core, got a Layer.")
    return truncated.truncated_unroll(core, params, xs, carry, chunk=tbptt, lengths=lengths,
                                       key=key)
  if isinstance(core, cell_lib.Cell):
    return unroll_lib.unroll(core, params, xs, carry, lengths=lengths, key=key, engine=run)
  return core.apply(params, xs, carry, lengths=lengths, key=key)


def model_engine(core: cell_lib.Cell | layers.Layer, engine: str, *, tbptt: int | None = None,
                 key_given: bool = False, fn: str = "rnnjax.sequence_model.apply") -> str:
  """How `sequence_model(core, engine=engine).apply` runs the core over time.

  Returns `"sequential"` (`unroll`, `truncated_unroll` or the layer's own
  `apply`) or the engine handed to `parallel_unroll` (`"auto"`, resolved there
  per backend and `T`, `"parallel"` or `"chunked"`). Truncated BPTT and a
  stack's dropout (active when a key is given) run step by step: `"auto"` falls
  back, the whole-sequence engines (parallel, chunked, newton) raise a ValueError.
  """
  name = engines.check_name(fn, engine)
  dropout = key_given and engines.has_dropout(core)
  engines.require(fn, core, name, arg="core", tbptt=tbptt, dropout_key=dropout)
  if tbptt is not None or dropout or name == "sequential" or (
      name == "auto" and not engines.is_linear(core)):
    return "sequential"
  return engine
