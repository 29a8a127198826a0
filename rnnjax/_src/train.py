"""Training: a pure, jitted Optax step and a plain Python loop around it.

`make_train_step` builds `(state, batch) -> (state, metrics)`; `fit` runs it
with a progress line, periodic evaluation, `metrics.jsonl`, checkpoints,
resume, a clean stop on Ctrl-C and an early stop on a non-finite step, and,
given a `jax.sharding.Mesh`, data-parallel over its devices (the state
replicated, each batch split along its batch dimension; the jitted step then
runs SPMD). Truncated BPTT lives in the engine (`rnnjax.truncated_unroll`).
`fit`'s parts live beside it: `placement` (batches onto the devices), `runlog`
(`out_dir`, `metrics.jsonl`, progress line), `step_outcome` (accepted steps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from rnnjax._src import checks, placement, runlog, step_outcome
from rnnjax._src.checkpoint import Checkpointer


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
  state: TrainState | None  # the final state; if diverged, the one before the failed step
  status: str  # "completed", "interrupted" or "diverged"
  message: str  # a human-readable account of how the run ended
  evals: list[dict]  # every evaluation, {"step": ..., **metrics}


@contextlib.contextmanager
def _sigint_flag() -> Iterator[dict]:
  """Turns the first Ctrl-C into a flag the loop checks; a second one interrupts at once."""
  flag = {"stop": False}
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return
  previous = signal.getsignal(signal.SIGINT)

  def handler(signum, frame):
    if flag["stop"]:
      signal.signal(signal.SIGINT, previous)
      raise KeyboardInterrupt
    flag["stop"] = True

  signal.signal(signal.SIGINT, handler)
  try:
    yield flag
  finally:
    signal.signal(signal.SIGINT, previous)


def fit(state: TrainState, train_step: Callable, data: Callable[[int], Any], *,
        num_steps: int, steps_per_call: int = 1,
        eval_fn: Callable[[Any], dict[str, float]] | None = None, eval_every: int = 0,
        out_dir: str | pathlib.Path | None = None, checkpoint_every: int = 0, keep: int = 3,
        resume: bool = False, log_every: int = 50, progress: bool = True,
        mesh: Mesh | None = None, batch_axis: str = "batch", batch_dim: Any = 1) -> FitResult:
  """Trains until `state.step == num_steps`, optionally data-parallel over a device mesh.

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

  Several hosts (untested here: the tests use one process with simulated CPU
  devices): call `jax.distributed.initialize()` first on every host, build the
  mesh over all `jax.devices()`, start every host from the same `state`, and
  let `data(step)` return the host's own share of the global batch (the global
  batch is the hosts' shares concatenated along `batch_dim`, in process order);
  `fit` assembles them with `jax.make_array_from_process_local_data`. Only
  process 0 writes `metrics.jsonl` and the progress line; `out_dir` must be on
  a file system that all hosts share (orbax coordinates the checkpoint writes).

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
    eval_fn: `eval_fn(params) -> dict of floats`, run every `eval_every` steps and at the end.
    out_dir: if given, `metrics.jsonl` is appended there and checkpoints go to
      `out_dir/checkpoint` (the newest `keep` are kept). `fit` removes no file of
      an earlier run: without `resume`, an `out_dir` that holds a `metrics.jsonl`
      or checkpoints is refused (ValueError).
    checkpoint_every: steps between checkpoints (0: only at the end and on Ctrl-C);
      a multiple of `steps_per_call`, so a resumed run groups steps as the original did.
    resume: continue from the newest checkpoint in `out_dir/checkpoint`, if any
      (else from `state`). Records of `metrics.jsonl` past the step it starts from
      are dropped, as the run writes them again; if the file has damaged lines, it
      is first moved aside to `metrics.jsonl.damaged-<n>`, with a warning, and its
      intact records are kept.
    log_every: steps between records in `metrics.jsonl` and progress lines.
    progress: show the progress line on stderr.
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
    A `FitResult`. A step whose loss, gradient norm or new params are not finite
    is rejected (see `make_train_step`) and stops the run with status
    "diverged", a message naming that step and what was not finite, and as
    `state` the state after the step before it, which is also saved as a
    checkpoint (if this run took a step before it): no checkpoint ever holds a
    rejected state. (A step function of one's own that does not report
    `accepted` is checked on the host; if it donated its input, the last
    checkpoint's state is returned, or None.) The first Ctrl-C saves a
    checkpoint and returns with status "interrupted". With a `mesh`, the final
    state is replicated on it.

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
  out = pathlib.Path(out_dir) if out_dir is not None else None
  if out is not None and not resume:
    runlog.refuse_an_earlier_run(fn, out)
  state, place = placement.data_parallel(fn, state, mesh, batch_axis, batch_dim)
  primary = jax.process_index() == 0  # Only one process writes the log and the progress line.
  run = _Run(fn, num_steps, steps_per_call, log_every, eval_every, checkpoint_every, eval_fn,
             *runlog.open_out_dir(fn, out, keep, primary))
  template = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      state)
  if resume and run.ckpt is not None and run.ckpt.latest_step() is not None:
    state, meta = run.ckpt.restore_with_meta(state)
    run.last_saved = int(state.step)
    run.losses = list(meta.get("pending_losses", []))
  if resume and run.metrics_path is not None:  # Records past the start are written again.
    runlog.trim_jsonl(run.metrics_path, int(state.step))
  bar = runlog.Progress(num_steps, progress and primary)
  start = int(state.step)
  with _sigint_flag() as flag:
    state, step, status, message = _train(run, state, start, train_step, data, place, bar, flag)
  bar.close()
  return _finish(run, state, step, start, status, message, template)


@dataclasses.dataclass
class _Run:
  """One `fit` run: its settings, and the bookkeeping of its checkpoints, log and evaluations."""

  fn: str
  num_steps: int
  steps_per_call: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  eval_fn: Callable[[Any], dict[str, float]] | None
  ckpt: Checkpointer | None
  metrics_path: pathlib.Path | None
  last_saved: int | None = None  # the step of the newest checkpoint (if any) of this run
  # Losses since the last log record are saved with each checkpoint, so that a
  # resumed run logs exactly what an uninterrupted one would.
  losses: list[float] = dataclasses.field(default_factory=list)
  evals: list[dict] = dataclasses.field(default_factory=list)

  def save(self, s: TrainState) -> None:
    if self.ckpt is not None and int(s.step) != self.last_saved:
      self.ckpt.save(int(s.step), s, meta={"pending_losses": self.losses})
      self.last_saved = int(s.step)

  def evaluate(self, s: TrainState) -> None:
    if self.eval_fn is None:
      return
    record = {"step": int(s.step), **{k: float(v) for k, v in self.eval_fn(s.params).items()}}
    self.evals.append(record)
    runlog.append_jsonl(self.metrics_path, {"step": record["step"], "eval": record})

  def log(self, bar: runlog.Progress, step: int, metrics: dict, rate: float | None) -> None:
    """Logs the mean loss since the last record and the last gradient norm; shows them."""
    mean_loss = float(np.mean(self.losses))
    self.losses.clear()
    record = {"step": step, "loss": mean_loss,
              "grad_norm": float(np.asarray(metrics["grad_norm"]).reshape(-1)[-1])}
    if rate:
      record["steps_per_s"] = rate
    runlog.append_jsonl(self.metrics_path, record)
    bar.update(step, mean_loss, rate)


def _train(run: _Run, state: TrainState, start: int, train_step: Callable,
           data: Callable[[int], Any], place: placement.BatchPlacer | None,
           bar: runlog.Progress, flag: dict) -> tuple[TrainState | None, int, str, str]:
  """`fit`'s loop, from step `start`: `(state, step, status, message)` when it stops.

  It stops at `num_steps` ("completed"), at a rejected step ("diverged"; the
  state after the last good step, or None if it was donated to the failed call)
  or at Ctrl-C ("interrupted").
  """
  fn, num_steps, steps_per_call = run.fn, run.num_steps, run.steps_per_call
  step = start
  rate, t_last, s_last = None, None, step
  while step < num_steps:
    k = min(steps_per_call, num_steps - step)
    batch = (data(step) if steps_per_call == 1
             else placement.stack_steps([data(s) for s in range(step, step + k)]))
    if place is not None:
      batch = place(batch, lead=0 if steps_per_call == 1 else 1)
    if step == start:
      step_outcome.check_steps_per_call(fn, train_step, state, batch, steps_per_call, k)
    new_state, metrics = train_step(state, batch)
    loss = np.asarray(metrics["loss"])
    step_outcome.check_loss_shape(fn, loss.shape, steps_per_call, k)
    loss = loss.reshape(-1)
    done = step_outcome.steps_accepted(metrics, new_state, loss)
    run.losses.extend(loss[:done].tolist())
    if done < k:
      message = step_outcome.what_diverged(metrics, loss, done, step + done + 1)
      if "accepted" in metrics:  # The step kept the state after the last good step.
        return new_state, step + done, "diverged", message
      if any(x.is_deleted() for x in jax.tree_util.tree_leaves(state)
             if isinstance(x, jax.Array)):
        state = None  # Donated to the failed call: the last checkpoint is all there is.
      return state, step, "diverged", message
    state, step = new_state, step + k
    now = time.perf_counter()
    if t_last is None:  # The first call compiles: time from the second on.
      t_last, s_last = now, step
    elif now > t_last and step - s_last >= run.log_every:
      rate = (step - s_last) / (now - t_last)
      t_last, s_last = now, step
    if step % run.log_every < k or step == num_steps:
      run.log(bar, step, metrics, rate)
    if run.eval_every and step % run.eval_every < k and step != num_steps:
      run.evaluate(state)
    if run.checkpoint_every and step % run.checkpoint_every == 0:
      run.save(state)
    if flag["stop"]:
      return state, step, "interrupted", f"interrupted at step {step}"
  return state, step, "completed", f"trained {num_steps} steps"


def _finish(run: _Run, state: TrainState | None, step: int, start: int, status: str,
            message: str, template: Any) -> FitResult:
  """Ends the run: the final evaluation and checkpoint, and the end of the message."""
  ckpt = run.ckpt
  if status == "diverged":
    if state is not None and step != start:
      run.save(state)  # The last good state, so that `resume` continues from it.
    elif state is None and ckpt is not None and run.last_saved is not None:
      state = ckpt.restore(template)
    kept = ("no checkpoint was written" if ckpt is None or run.last_saved is None else
            f"the last good checkpoint (step {run.last_saved}) in {ckpt.directory} is kept")
    returned = ("nothing is returned" if state is None else
                f"the state after step {int(state.step)} is returned")
    message += (f"; the step was rejected and training stopped: {returned} and {kept}. Lower "
                "the learning rate or clip the gradients (optax.clip_by_global_norm; --clip "
                "on the command line).")
  else:
    if status == "completed":
      run.evaluate(state)
    run.save(state)
    if ckpt is not None:
      message += f"; checkpoint of step {step} in {ckpt.directory}"
  if ckpt is not None:
    ckpt.close()
  return FitResult(state, status, message, run.evals)
