"""Training: a pure, jitted Optax step and a plain Python loop around it.

`make_train_step` builds `(state, batch) -> (state, metrics)`; `fit` runs it
with a progress line, periodic evaluation, `metrics.jsonl`, checkpoints,
resume, a clean stop on Ctrl-C and an early stop on a non-finite loss, and,
given a `jax.sharding.Mesh`, data-parallel over its devices (the state
replicated, each batch split along its batch dimension; the jitted step then
runs SPMD). Truncated BPTT lives in the engine (`rnnjax.truncated_unroll`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from rnnjax._src import checks
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
  schedule into `optimizer` as usual). Metrics are `loss`, `grad_norm` and the aux ones.

  Args:
    loss_fn: `loss_fn(params, batch, key) -> loss | (loss, dict)`; `key` is for dropout.
    optimizer: an Optax `GradientTransformation`.
    has_aux: whether `loss_fn` also returns a dict of metrics.
    steps_per_call: if > 1, `batch` leaves carry a leading axis of steps (any length up
      to this) and one call runs them all in a `lax.scan`: for tiny models the
      per-call overhead then stops dominating. Metrics get the same leading axis.
    donate: donate the input state's buffers to the output (the input state is then
      invalid after the call, which saves memory and copies).

  Example:
    >>> import jax, jax.numpy as jnp, optax, rnnjax
    >>> loss = lambda p, batch, key: jnp.mean((batch["x"] * p["w"] - 1.0) ** 2)
    >>> opt = optax.sgd(0.1)
    >>> state = rnnjax.train_state({"w": jnp.zeros(3)}, opt, jax.random.key(0))
    >>> step = rnnjax.make_train_step(loss, opt)
    >>> state, metrics = step(state, {"x": jnp.ones(3)})
    >>> int(state.step), round(float(metrics["loss"]), 3)
    (1, 1.0)
  """
  steps_per_call = checks.positive_int("rnnjax.make_train_step", "steps_per_call",
                                       steps_per_call)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=has_aux)

  def one_step(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
    key, sub = jax.random.split(state.key)
    out, grads = grad_fn(state.params, batch, sub)
    loss, aux = out if has_aux else (out, {})
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
    return TrainState(params, opt_state, state.step + 1, key), metrics

  step = one_step if steps_per_call == 1 else (lambda s, b: jax.lax.scan(one_step, s, b))
  return jax.jit(step, donate_argnums=(0,) if donate else ())


class FitResult(NamedTuple):
  state: TrainState | None  # the final state; if diverged, the last checkpoint's (or None)
  status: str  # "completed", "interrupted" or "diverged"
  message: str  # a human-readable account of how the run ended
  evals: list[dict]  # every evaluation, {"step": ..., **metrics}


class _Progress:
  """A one-line progress display: step, loss, steps/s, ETA. Quiet when disabled."""

  def __init__(self, total: int, enabled: bool, stream=None):
    self.total, self.enabled = total, enabled
    self.stream = stream or sys.stderr
    self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()

  def update(self, step: int, loss: float, rate: float | None, extra: str = "") -> None:
    if not self.enabled:
      return
    eta = "?" if not rate else _fmt_seconds((self.total - step) / rate)
    speed = "?" if not rate else f"{rate:.1f}"
    width = len(str(self.total))
    line = (f"step {step:>{width}}/{self.total}  loss {loss:.5g}  {speed} steps/s  "
            f"ETA {eta}{extra}")
    if self.tty:
      self.stream.write("\r" + line.ljust(79))
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def close(self) -> None:
    if self.tty:
      self.stream.write("\n")
      self.stream.flush()


def _fmt_seconds(s: float) -> str:
  s = max(0, round(s))
  return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


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


def _stack(batches: list[Any]) -> Any:
  """Stacks batches on a new leading axis: NumPy arrays on the host, others with `jnp`."""
  def stack(*xs):
    return np.stack(xs) if all(isinstance(x, np.ndarray) for x in xs) else jnp.stack(xs)
  return jax.tree_util.tree_map(stack, *batches)


def _append_jsonl(path: pathlib.Path | None, record: dict) -> None:
  if path is None:
    return
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def _trim_jsonl(path: pathlib.Path, last_step: int) -> None:
  """Drops records past `last_step` (a resumed run writes them again, identically)."""
  if not path.exists():
    return
  keep = [line for line in path.read_text().splitlines()
          if line.strip() and json.loads(line).get("step", 0) <= last_step]
  tmp = path.with_suffix(".jsonl.tmp")
  tmp.write_text("".join(line + "\n" for line in keep))
  tmp.replace(path)


def _auto_mesh(fn: str, mesh: Any, batch_axis: Any) -> Mesh:
  """Checks `mesh` and `batch_axis`; returns `mesh` with every axis of type Auto.

  `fit` leaves the partitioning of the step to XLA's sharding propagation, which
  takes any model as it is; explicit axes (`jax.make_mesh`'s default) would make
  ops such as reshapes of the batch declare their output's sharding.
  """
  if not isinstance(mesh, Mesh):
    raise TypeError(
        f"{fn}: `mesh` must be a jax.sharding.Mesh or None, got {type(mesh).__name__}. "
        "Make one with e.g. jax.make_mesh((jax.device_count(),), ('batch',)).")
  if not isinstance(batch_axis, str) or batch_axis not in mesh.axis_names:
    raise ValueError(
        f"{fn}: `batch_axis` must name an axis of `mesh`, one of {tuple(mesh.axis_names)}; "
        f"got batch_axis={batch_axis!r}.")
  if all(t == AxisType.Auto for t in mesh.axis_types):
    return mesh
  return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _leaf_dims(fn: str, shapes: Any, batch_dim: Any) -> list[tuple[str, tuple, int | None]]:
  """`(name, shape, dim)` per leaf of `shapes` (a tree of `ShapeDtypeStruct`s, one step's).

  `dim` is None for a leaf to replicate.
  """
  leaves = jax.tree_util.tree_flatten_with_path(shapes)[0]
  if batch_dim is None or isinstance(batch_dim, int):
    dims = [batch_dim] * len(leaves)
  else:
    dim_leaves, dim_def = jax.tree_util.tree_flatten(batch_dim, is_leaf=lambda x: x is None)
    try:
      subtrees = dim_def.flatten_up_to(shapes)
    except (TypeError, ValueError) as err:
      raise ValueError(
          f"{fn}: `batch_dim` must be an int, None, or a pytree with the structure of the "
          f"batch (or a prefix of it) holding ints and Nones; got batch_dim={batch_dim!r} "
          f"for a batch of structure {jax.tree_util.tree_structure(shapes)}.") from err
    dims = [d for d, sub in zip(dim_leaves, subtrees, strict=True)
            for _ in jax.tree_util.tree_leaves(sub)]
  out = []
  for (path, leaf), dim in zip(leaves, dims, strict=True):
    name = f"batch{jax.tree_util.keystr(path)}"
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
      raise TypeError(
          f"{fn}: `batch_dim` for {name} must be an int or None, got {dim!r} of type "
          f"{type(dim).__name__}.")
    shape = tuple(leaf.shape)
    if dim is None or not shape:  # Scalars (a learning rate, a flag) go to every device.
      out.append((name, shape, None))
      continue
    if not -len(shape) <= dim < len(shape):
      raise ValueError(
          f"{fn}: {name} has shape {shape}, which has no dimension batch_dim={dim}. Pass "
          "`batch_dim` as a pytree like the batch giving this leaf's batch dimension "
          "(e.g. 0 for per-sequence [B] arrays), or None to replicate it.")
    out.append((name, shape, dim % len(shape)))
  return out


@functools.lru_cache(maxsize=64)
def _put_on(shardings: tuple[NamedSharding, ...]) -> Callable:
  """A jitted identity that places a list of host arrays with `shardings` (compiled once)."""
  return jax.jit(lambda xs: xs, in_shardings=(list(shardings),), out_shardings=list(shardings))


class _BatchPlacer:
  """Puts each batch on `mesh`, split along its batch dimension over `batch_axis`.

  The shardings are worked out (and checked) once per batch structure and shape.
  Host (NumPy) batches go through a jitted identity with those shardings, whose
  C++ dispatch sends each device its slice for a fraction of `jax.device_put`'s
  cost; JAX arrays go through `jax.device_put`. With several processes each one
  passes its own share of the global batch, which
  `jax.make_array_from_process_local_data` assembles.
  """

  def __init__(self, fn: str, mesh: Mesh, batch_axis: str, batch_dim: Any):
    self.fn, self.mesh, self.batch_axis, self.batch_dim = fn, mesh, batch_axis, batch_dim
    self.cache: dict[Any, tuple[list[NamedSharding], Callable]] = {}

  def _shardings(self, leaves: list[Any], treedef: Any, lead: int) -> list[NamedSharding]:
    n, procs = self.mesh.shape[self.batch_axis], jax.process_count()
    shapes = jax.tree_util.tree_unflatten(treedef, [  # Only the shapes matter here.
        jax.ShapeDtypeStruct(np.shape(x)[lead:], np.float32) for x in leaves])
    out = []
    for name, shape, dim in _leaf_dims(self.fn, shapes, self.batch_dim):
      if dim is None:
        out.append(NamedSharding(self.mesh, PartitionSpec()))
        continue
      size = shape[dim] * procs
      if size % n:
        each = f" ({procs} processes with {shape[dim]} each)" if procs > 1 else ""
        raise ValueError(
            f"{self.fn}: the batch size must be divisible by the {n} devices on mesh axis "
            f"{self.batch_axis!r}; got {size} examples{each} in {name} (shape {shape}, "
            f"batch_dim={dim}). Use a batch size that is a multiple of {n}.")
      spec = PartitionSpec(*[None] * (lead + dim), self.batch_axis)
      out.append(NamedSharding(self.mesh, spec))
    return out

  def __call__(self, batch: Any, lead: int = 0) -> Any:
    """`lead` is 1 when the leaves carry a leading axis of steps, which `batch_dim` skips."""
    leaves, treedef = jax.tree_util.tree_flatten(batch)
    key = (treedef, lead, tuple(np.shape(x) for x in leaves))
    if key not in self.cache:
      shardings = self._shardings(leaves, treedef, lead)
      self.cache[key] = shardings, _put_on(tuple(shardings))
    shardings, put = self.cache[key]
    if jax.process_count() == 1:
      on_host = not any(isinstance(x, jax.Array) for x in leaves)
      placed = put(leaves) if on_host else jax.device_put(leaves, shardings)
    else:  # Untested here: only one process with simulated devices is.
      placed = [jax.make_array_from_process_local_data(s, np.asarray(x))
                for s, x in zip(shardings, leaves, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, placed)


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
    train_step: from `make_train_step` with the same `steps_per_call`.
    data: `data(step) -> batch`, the batch of global step `step`. Make it a pure
      function of `step` (e.g. `task.train_batch(jax.random.fold_in(key, step), B)`),
      and a resumed run sees exactly the batches of an uninterrupted one.
    num_steps: the total number of steps of the run (not the number still to do).
    steps_per_call: steps per call of `train_step`.
    eval_fn: `eval_fn(params) -> dict of floats`, run every `eval_every` steps and at the end.
    out_dir: if given, `metrics.jsonl` is appended there and checkpoints go to
      `out_dir/checkpoint` (the newest `keep` are kept).
    checkpoint_every: steps between checkpoints (0: only at the end and on Ctrl-C);
      a multiple of `steps_per_call`, so a resumed run groups steps as the original did.
    resume: continue from the newest checkpoint in `out_dir/checkpoint`, if any.
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
    A `FitResult`. A non-finite loss stops the run with status "diverged" and keeps
    the last good checkpoint; the first Ctrl-C saves a checkpoint and returns with
    status "interrupted". With a `mesh`, the final state is replicated on it.

  Example:
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
  place = None
  if mesh is not None:
    mesh = _auto_mesh(fn, mesh, batch_axis)
    place = _BatchPlacer(fn, mesh, batch_axis, batch_dim)
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
  primary = jax.process_index() == 0  # Only one process writes the log and the progress line.
  out = pathlib.Path(out_dir) if out_dir is not None else None
  ckpt = metrics_path = None
  if out is not None:
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpointer(out / "checkpoint", keep=keep)
    metrics_path = out / "metrics.jsonl" if primary else None
  template = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      state)
  last_saved = None
  # Losses since the last log record are saved with each checkpoint, so that a
  # resumed run logs exactly what an uninterrupted one would.
  losses: list[float] = []
  if resume and ckpt is not None and ckpt.latest_step() is not None:
    state, meta = ckpt.restore_with_meta(state)
    last_saved = int(state.step)
    losses = list(meta.get("pending_losses", []))
    if metrics_path is not None:
      _trim_jsonl(metrics_path, last_saved)
  elif metrics_path is not None and metrics_path.exists() and not resume:
    metrics_path.unlink()

  def save(s: TrainState) -> None:
    nonlocal last_saved
    if ckpt is not None and int(s.step) != last_saved:
      ckpt.save(int(s.step), s, meta={"pending_losses": losses})
      last_saved = int(s.step)

  evals: list[dict] = []

  def evaluate(s: TrainState) -> None:
    if eval_fn is None:
      return
    record = {"step": int(s.step), **{k: float(v) for k, v in eval_fn(s.params).items()}}
    evals.append(record)
    _append_jsonl(metrics_path, {"step": record["step"], "eval": record})

  bar = _Progress(num_steps, progress and primary)
  step = int(state.step)
  status, message = "completed", f"trained {num_steps} steps"
  rate, t_last, s_last = None, None, step
  with _sigint_flag() as flag:
    while step < num_steps:
      k = min(steps_per_call, num_steps - step)
      batch = (data(step) if steps_per_call == 1
               else _stack([data(s) for s in range(step, step + k)]))
      if place is not None:
        batch = place(batch, lead=0 if steps_per_call == 1 else 1)
      new_state, metrics = train_step(state, batch)
      loss = np.asarray(metrics["loss"]).reshape(-1)
      if not np.all(np.isfinite(loss)):
        bad = step + int(np.argmin(np.isfinite(loss))) + 1
        kept = (f"the last good checkpoint (step {last_saved}) in {ckpt.directory} is kept"
                if last_saved is not None and ckpt is not None else "no checkpoint was written")
        status = "diverged"
        message = (f"loss became {loss[~np.isfinite(loss)][0]} at step {bad}; training stopped "
                   f"and {kept}. Lower the learning rate or clip the gradients "
                   "(optax.clip_by_global_norm; --clip on the command line).")
        break  # `state` was donated; the last good one is on disk.
      state, step = new_state, step + k
      losses.extend(loss.tolist())
      now = time.perf_counter()
      if t_last is None:  # The first call compiles: time from the second on.
        t_last, s_last = now, step
      elif now > t_last and step - s_last >= log_every:
        rate = (step - s_last) / (now - t_last)
        t_last, s_last = now, step
      if step % log_every < k or step == num_steps:
        mean_loss = float(np.mean(losses))
        losses.clear()
        record = {"step": step, "loss": mean_loss,
                  "grad_norm": float(np.asarray(metrics["grad_norm"]).reshape(-1)[-1])}
        if rate:
          record["steps_per_s"] = rate
        _append_jsonl(metrics_path, record)
        bar.update(step, mean_loss, rate)
      if eval_every and step % eval_every < k and step != num_steps:
        evaluate(state)
      if checkpoint_every and step % checkpoint_every == 0:
        save(state)
      if flag["stop"]:
        status = "interrupted"
        message = f"interrupted at step {step}"
        break
  bar.close()
  if status == "diverged":  # The state in hand was donated to the failed step.
    state = ckpt.restore(template) if ckpt is not None and last_saved is not None else None
  else:
    if status == "completed":
      evaluate(state)
    save(state)
    if ckpt is not None:
      message += f"; checkpoint of step {step} in {ckpt.directory}"
  if ckpt is not None:
    ckpt.close()
  return FitResult(state, status, message, evals)
