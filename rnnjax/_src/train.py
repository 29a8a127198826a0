"""Training: a pure, jitted Optax step and a plain Python loop around it.

`make_train_step` builds `(state, batch) -> (state, metrics)`; `fit` runs it
with a progress bar, evaluation on validation data, the best checkpoint and early
stopping, metric writers and callbacks, checkpoints, resume, a clean stop on
Ctrl-C and an early stop on a non-finite step, and, given a `jax.sharding.Mesh`,
data-parallel over its devices (the state replicated, each batch split along its
batch dimension; the jitted step then runs SPMD). Truncated BPTT lives in the
engine (`rnnjax.truncated_unroll`). `fit` assembles its parts, each in a module
of its own: `loop` (the calls of the step and what happens between them),
`placement` (batches onto the devices), `runlog` (`out_dir` and the records sent
to the writers), `selection` (validation, best checkpoint, patience), `progress`
(the display), `writers` and `step_outcome` (accepted steps).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from rnnjax._src import checks, loop, placement, runlog, selection, step_outcome
from rnnjax._src.progress import ProgressBar, as_progress
from rnnjax._src.writers import JsonlWriter, check_writers


class TrainState(NamedTuple):
  """Everything a training run needs to continue exactly where it stopped."""

  params: Any  # the model's params
  opt_state: Any  # the optimizer's state
  step: jax.Array  # [] int32, steps taken
  key: jax.Array  # [2] uint32, raw PRNG key data; split once per step


def train_state(params: Any, optimizer: optax.GradientTransformation,
                key: jax.Array) -> TrainState:
  """A fresh `TrainState` at step 0. `key` may be a typed key or raw key data."""
  checks.key("rnnjax.train_state", "key", key)
  checks.optimizer("rnnjax.train_state", optimizer)
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32),
                    jnp.asarray(key, jnp.uint32))


def make_train_step(loss_fn: Callable[..., Any], optimizer: optax.GradientTransformation, *,
                    has_aux: bool = False, steps_per_call: int = 1,
                    donate: bool = True) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
  """A jitted training step `(state, batch) -> (state, metrics)`.

  Each step splits `state.key`, differentiates `loss_fn(params, batch, key)`
  (which returns the loss, or `(loss, aux_metrics)` with `has_aux=True`) and
  applies the optimizer's update (chain `optax.clip_by_global_norm` or a
  schedule into `optimizer` as usual). Metrics are `loss`, `grad_norm`, the aux
  ones, and `accepted`.

  A step's new state is accepted only if the loss, the gradient norm and every
  new parameter are finite; otherwise the step returns its input state
  unchanged (params, optimizer state, step count and key alike) with
  `accepted=False`, so a diverging step never replaces a good state, even with
  `donate`. `fit` stops at the first step not accepted.

  Args:
    loss_fn: `loss_fn(params, batch, key) -> loss | (loss, dict)`; `key` is for dropout.
    optimizer: an Optax `GradientTransformation`.
    has_aux: whether `loss_fn` also returns a dict of metrics (`accepted` is taken).
    steps_per_call: if > 1, `batch` leaves carry a leading axis of steps (any length up
      to this) and one call runs them all in a `lax.scan`: for tiny models the
      per-call overhead then stops dominating. Metrics get the same leading axis. Once
      a step is not accepted, the later steps of the call change nothing either (and
      are not accepted), so the state returned is the one after the last good step.
    donate: donate the input state's buffers to the output (the input state is then
      invalid after the call, which saves memory and copies).

  Examples:
    >>> import jax, jax.numpy as jnp, optax, rnnjax
    >>> loss = lambda p, batch, key: jnp.mean((batch["x"] * p["w"] - 1.0) ** 2)
    >>> opt = optax.sgd(0.1)
    >>> state = rnnjax.train_state({"w": jnp.zeros(3)}, opt, jax.random.key(0))
    >>> step = rnnjax.make_train_step(loss, opt)
    >>> state, metrics = step(state, {"x": jnp.ones(3)})
    >>> int(state.step), round(float(metrics["loss"]), 3), bool(metrics["accepted"])
    (1, 1.0, True)
    >>> state, metrics = step(state, {"x": jnp.full(3, jnp.inf)})  # Rejected: kept as it was.
    >>> int(state.step), bool(metrics["accepted"])
    (1, False)
  """
  steps_per_call = checks.positive_int("rnnjax.make_train_step", "steps_per_call",
                                       steps_per_call)
  checks.function("rnnjax.make_train_step", "loss_fn", loss_fn)
  checks.optimizer("rnnjax.make_train_step", optimizer)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=has_aux)

  def one_step(state: TrainState, batch: Any, alive: Any = True) -> tuple[TrainState, dict]:
    """One step, or the input state if the step is not finite (or `alive` is False)."""
    key, sub = jax.random.split(state.key)
    out, grads = grad_fn(state.params, batch, sub)
    loss, aux = out if has_aux else (out, {})
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    ok = alive & jnp.isfinite(loss) & jnp.isfinite(grad_norm) & step_outcome.all_finite(params)
    new = TrainState(params, opt_state, state.step + 1, key)
    new = jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, state)
    return new, {**aux, "loss": loss, "grad_norm": grad_norm, "accepted": ok}

  def scan_steps(state: TrainState, batches: Any) -> tuple[TrainState, dict]:
    def body(carry, batch):
      state, alive = carry
      state, metrics = one_step(state, batch, alive)
      return (state, metrics["accepted"]), metrics
    (state, _), metrics = jax.lax.scan(body, (state, jnp.bool_(True)), batches)
    return state, metrics

  step = one_step if steps_per_call == 1 else scan_steps
  return jax.jit(step, donate_argnums=(0,) if donate else ())


class FitResult(NamedTuple):
  """How a `fit` run ended: its final state, status and evaluations, and the best of them."""

  state: TrainState | None  # the final state; if diverged, the one before the failed step
  # "completed", "interrupted" (Ctrl-C), "stopped" (by a callback), "early_stopped"
  # (`patience`) or "diverged"
  status: str
  message: str  # a human-readable account of how the run ended
  evals: list[dict]  # every evaluation of this run, {"step": ..., "val/<metric>": ...}
  best_step: int | None = None  # the step of the best evaluation by `best_metric`
  best_metrics: dict | None = None  # its `val/` metrics


def fit(state: TrainState, train_step: Callable, data: Callable[[int], Any], *,
        num_steps: int, steps_per_call: int = 1,
        eval_fn: Callable[[Any], dict[str, float]] | None = None, eval_every: int = 0,
        best_metric: str | Sequence[str] | None = None, best_mode: str | Sequence[str] = "min",
        patience: int | None = None,
        out_dir: str | pathlib.Path | None = None, checkpoint_every: int = 0, keep: int = 3,
        resume: bool = False, log_every: int = 50, writers: Sequence[Any] = (),
        hparams: Mapping[str, Any] | None = None,
        callbacks: Sequence[Callable[[int, TrainState, dict], bool | None]] = (),
        progress: bool | ProgressBar = True, mesh: Mesh | None = None,
        batch_axis: str = "batch", batch_dim: Any = 1) -> FitResult:
  """Trains until `state.step == num_steps`, optionally data-parallel over a device mesh.

  Between calls of `train_step`, in this order: a training record every
  `log_every` steps, an evaluation on the validation data every `eval_every`
  steps (and at `num_steps`), the progress display, the callbacks, a checkpoint
  every `checkpoint_every` steps; then the run stops if Ctrl-C was pressed, a
  callback asked to, or `patience` ran out.

  Records: every record, one flat dict of floats at a step, goes to every writer
  (`write_scalars(step, scalars)`) and, with an `out_dir`, to `out_dir/metrics.jsonl`
  (a `JsonlWriter`), one JSON line each: training records
  `{"step": 500, "train/loss": ..., "train/grad_norm": ..., "train/steps_per_s": ...}`
  (the mean loss since the previous record, the last gradient norm, and the rate once
  known, timed from the second call on since the first compiles) and evaluation
  records `{"step": 500, "val/rmse": ...}` (`eval_fn`'s metrics, prefixed `val/`).

  Data parallelism: with a `mesh`, the state is replicated on every device of it
  (`NamedSharding(mesh, PartitionSpec())`) and each batch is split along its batch
  dimension `batch_dim` over the mesh axis `batch_axis`; the step from
  `make_train_step` (unchanged) then runs SPMD under `jit`, each device on its
  share of the batch. A loss that is a mean over the batch is the mean over the
  global batch, so its gradient is averaged across devices (XLA inserts the
  all-reduce) and training follows the single-device run to float rounding.
  Mesh axes are used as `AxisType.Auto` (sharding propagation), whatever their
  type. Checkpoints hold the full arrays and restore onto the mesh of the run
  that resumes, so a run may resume on another number of devices.

  Several hosts: call `jax.distributed.initialize()` first on every host, build
  the mesh over all `jax.devices()`, start every host from the same `state`, and
  let `data(step)` return the host's own share of the global batch (the global
  batch is the hosts' shares concatenated along `batch_dim`, in process order);
  `fit` assembles them with `jax.make_array_from_process_local_data`. Only
  process 0 writes records (to `metrics.jsonl` and the writers) and shows
  progress; `eval_fn` and the callbacks run on every process, and a stop asked in
  any process (a callback, Ctrl-C) stops every process after the same step.
  `out_dir` must be on a file system that all hosts share (orbax coordinates the
  checkpoint writes). Tested with 2 processes of 2 simulated CPU devices each
  (`tests/test_multihost.py`).

  Args:
    state: the starting `TrainState` (also the template for restoring a checkpoint).
    train_step: from `make_train_step` with the same `steps_per_call` (a mismatch
      is refused before the first step). A step function of one's own must
      return metrics with `loss` (shape `[]`, or `[k]` for `k` steps per call).
    data: `data(step) -> batch`, the batch of global step `step`. Make it a pure
      function of `step` (e.g. `task.train_batch(jax.random.fold_in(key, step), B)`),
      and a resumed run sees exactly the batches of an uninterrupted one.
    num_steps: the total number of steps of the run (not the number still to do).
    steps_per_call: steps per call of `train_step`.
    eval_fn: `eval_fn(params) -> dict of floats`, the evaluation on VALIDATION data
      (keep the test data for the chosen model), run every `eval_every` steps and at
      `num_steps`. Its metrics are recorded as `val/<name>`.
    eval_every: steps between evaluations (0: only at `num_steps`).
    best_metric: a key of `eval_fn`'s dict (e.g. "rmse") to select the best
      evaluation by; its step and metrics are returned, and with an `out_dir` its
      state is kept as the checkpoint of `out_dir/best` (read it back with
      `rnnjax.restore_best`), beside the newest ones. Non-finite values never count
      as the best. A sequence of keys ranks lexicographically: each later key breaks
      the ties of those before, e.g. `("accuracy", "cross_entropy")` on a small
      validation split, where accuracies tie often.
    best_mode: "min" (lower is better) or "max"; one per key for a sequence of keys.
    patience: stop (status "early_stopped") after this many evaluations in a row
      without a strict improvement of `best_metric`; None never stops early.
    out_dir: if given, `metrics.jsonl` is appended there and checkpoints go to
      `out_dir/checkpoint` (the newest `keep` are kept) and `out_dir/best`. `fit`
      removes no file of an earlier run: without `resume`, an `out_dir` that holds
      a `metrics.jsonl` or checkpoints is refused (ValueError).
    checkpoint_every: steps between checkpoints (0: only at the end, on Ctrl-C and
      on a stop); a multiple of `steps_per_call`, so a resumed run groups steps as
      the original did.
    keep: how many of the newest checkpoints to keep.
    resume: continue from the newest checkpoint in `out_dir/checkpoint`, if any
      (else from `state`), with the best evaluation and the `patience` count as they
      were. Records of `metrics.jsonl` past the step it starts from are dropped, as
      the run writes them again; if the file has damaged lines, it is first moved
      aside to `metrics.jsonl.damaged-<n>`, with a warning, and its intact records
      are kept.
    log_every: steps between training records (and progress lines off a terminal).
    writers: objects with the methods of a `clu.metric_writers.MetricWriter`
      (`write_scalars`, `write_hparams`, `flush`, `close`): a CLU, TensorBoard or W&B
      writer as it is, or `rnnjax.TensorBoardWriter`. Each gets every record, and
      `flush()` at the end; `fit` never closes them.
    hparams: written once to each of `writers` at the start (`write_hparams`), not
      to `metrics.jsonl`.
    callbacks: functions `callback(step, state, metrics)`, called after every call
      of the step with the global step, the state and that call's metrics as floats
      (`train/loss`, its mean loss, `train/grad_norm`, `train/steps_per_s` once
      known, and the `val/` metrics when an evaluation ran at this step). A truthy
      return stops the run after a checkpoint (status "stopped"). The state is
      valid until the next call of the step (which may donate it): copy what you keep.
    progress: True for an `rnnjax.ProgressBar` on stderr (a bar on a terminal or in
      a notebook, plain lines otherwise), False for none, or a `ProgressBar` of
      one's own (to name units or another stream).
    mesh: a `jax.sharding.Mesh` to train data-parallel on (e.g.
      `jax.make_mesh((jax.device_count(),), ("batch",))`), or None for one device.
      The batch size must be divisible by the size of its axis `batch_axis`.
    batch_axis: the name of the mesh axis the batch is split over (with a `mesh`
      only, like `batch_dim`). Other mesh axes, if any, hold replicas.
    batch_dim: which dimension of each array of the batch indexes the examples: an
      int for every array (default 1, for rnnjax's time-first `[T, B, ...]`), or a
      pytree like the batch (or a prefix of it) of ints, and None for arrays to
      copy to every device. Scalars are always copied. With `steps_per_call > 1`
      it still counts the dimensions of `data(step)`'s arrays, without the
      leading axis of steps.

  Returns:
    A `FitResult`, with `best_step` and `best_metrics` given a `best_metric`. A
    step whose loss, gradient norm or new params are not finite is rejected (see
    `make_train_step`) and stops the run with status "diverged", a message naming
    that step and what was not finite, and as `state` the state after the step
    before it, which is also saved as a checkpoint (if this run took a step before
    it): no checkpoint ever holds a rejected state. (A step function of one's own
    that does not report `accepted` is checked on the host; if it donated its
    input, the last checkpoint's state is returned, or None.) The first Ctrl-C
    saves a checkpoint and returns with status "interrupted". With a `mesh`, the
    final state is replicated on it.

  Examples:
    Data-parallel over every local device (on a CPU, simulate 4 devices by
    setting `XLA_FLAGS=--xla_force_host_platform_device_count=4` before JAX starts):

    >>> import jax, jax.numpy as jnp, optax, rnnjax
    >>> loss = lambda p, batch, key: jnp.mean((batch["x"] @ p["w"] - 1.0) ** 2)
    >>> opt = optax.sgd(0.1)
    >>> state = rnnjax.train_state({"w": jnp.zeros(3)}, opt, jax.random.key(0))
    >>> mesh = jax.make_mesh((jax.device_count(),), ("batch",))
    >>> data = lambda step: {"x": jnp.ones((8, 3))}  # batch dimension 0 here
    >>> result = rnnjax.fit(state, rnnjax.make_train_step(loss, opt), data, num_steps=5,
    ...                     mesh=mesh, batch_dim=0, progress=False)
    >>> result.state.params["w"].sharding.is_fully_replicated
    True
  """
  fn = "rnnjax.fit"
  num_steps = checks.positive_int(fn, "num_steps", num_steps)
  steps_per_call = checks.positive_int(fn, "steps_per_call", steps_per_call)
  log_every = checks.positive_int(fn, "log_every", log_every)
  if checkpoint_every and checkpoint_every % steps_per_call:
    raise ValueError(
        f"{fn}: `checkpoint_every` ({checkpoint_every}) must be a multiple of "
        f"`steps_per_call` ({steps_per_call}), so that a resumed run is exact.")
  select = selection.Selection(fn, eval_fn, best_metric, best_mode, patience)
  writers = check_writers(fn, writers)
  callbacks = _check_callbacks(fn, callbacks)
  bar = as_progress(fn, progress)
  out = pathlib.Path(out_dir) if out_dir is not None else None
  if out is not None and not resume:
    runlog.refuse_an_earlier_run(fn, out)
  state, place = placement.data_parallel(fn, state, mesh, batch_axis, batch_dim)
  template = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      state)
  ckpt, select.ckpt = runlog.open_out_dir(fn, out, keep, select.ranking)
  run = loop.Loop(fn, num_steps, steps_per_call, eval_every, checkpoint_every, train_step, data,
                  place, runlog.Records((), None, log_every), select, callbacks, ckpt)
  jsonl = None
  try:
    if resume:
      state = run.resume(state)
    start = int(state.step)
    jsonl = _open_records(run, out, resume, start, writers, hparams, bar)
    with loop.sigint_flag() as flag:
      state, step, status, message = loop.run(run, state, start, flag)
    state, message = loop.finish(run, state, step, start, status, message, template)
  finally:
    if run.records.bar is not None:
      run.records.bar.close()
    for writer in run.records.writers:
      writer.flush()
    for closing in (jsonl, ckpt, select.ckpt):
      if closing is not None:
        closing.close()
  return FitResult(state, status, message, select.evals, select.best_step(),
                   select.best_metrics())


def _open_records(run: loop.Loop, out: pathlib.Path | None, resume: bool, start: int,
                  writers: tuple[Any, ...], hparams: Mapping[str, Any] | None,
                  bar: ProgressBar | None) -> JsonlWriter | None:
  """On process 0 only: the writers (`metrics.jsonl`'s first) and the display, started."""
  if jax.process_index() != 0:
    return None
  jsonl = None
  if out is not None:
    path = out / "metrics.jsonl"
    if resume:  # Records past the start are written again.
      runlog.trim_jsonl(path, start)
    jsonl = JsonlWriter(path)
  if hparams is not None:
    for writer in writers:
      writer.write_hparams(dict(hparams))
  run.records.writers = ((jsonl,) if jsonl is not None else ()) + writers
  if bar is not None:
    bar.start(run.num_steps, start)
    run.records.bar = bar
  return jsonl


def _check_callbacks(fn: str, callbacks: Any) -> tuple[Callable, ...]:
  if callable(callbacks) or not hasattr(callbacks, "__iter__"):
    raise TypeError(f"{fn}: `callbacks` must be a sequence of functions "
                    f"(step, state, metrics) -> bool | None, got {type(callbacks).__name__}. "
                    "Pass callbacks=[my_callback].")
  callbacks = tuple(callbacks)
  for i, callback in enumerate(callbacks):
    checks.function(fn, f"callbacks[{i}]", callback)
  return callbacks
