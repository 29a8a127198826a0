"""Training: a pure, jitted Optax step and a plain Python loop around it.

`make_train_step` builds `(state, batch) -> (state, metrics)`; `fit` runs it
with a progress line, periodic evaluation, `metrics.jsonl`, checkpoints,
resume, a clean stop on Ctrl-C and an early stop on a non-finite loss.
Truncated BPTT lives in the engine (`rnnjax.truncated_unroll`).
"""

from __future__ import annotations

import contextlib
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
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *batches)


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


def fit(state: TrainState, train_step: Callable, data: Callable[[int], Any], *,
        num_steps: int, steps_per_call: int = 1,
        eval_fn: Callable[[Any], dict[str, float]] | None = None, eval_every: int = 0,
        out_dir: str | pathlib.Path | None = None, checkpoint_every: int = 0, keep: int = 3,
        resume: bool = False, log_every: int = 50, progress: bool = True) -> FitResult:
  """Trains until `state.step == num_steps`.

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

  Returns:
    A `FitResult`. A non-finite loss stops the run with status "diverged" and keeps
    the last good checkpoint; the first Ctrl-C saves a checkpoint and returns with
    status "interrupted".
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
  ckpt = metrics_path = None
  if out is not None:
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpointer(out / "checkpoint", keep=keep)
    metrics_path = out / "metrics.jsonl"
  template = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  last_saved = None
  # Losses since the last log record are saved with each checkpoint, so that a
  # resumed run logs exactly what an uninterrupted one would.
  losses: list[float] = []
  if resume and ckpt is not None and ckpt.latest_step() is not None:
    state, meta = ckpt.restore_with_meta(state)
    last_saved = int(state.step)
    losses = list(meta.get("pending_losses", []))
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

  bar = _Progress(num_steps, progress)
  step = int(state.step)
  status, message = "completed", f"trained {num_steps} steps"
  rate, t_last, s_last = None, None, step
  with _sigint_flag() as flag:
    while step < num_steps:
      k = min(steps_per_call, num_steps - step)
      batch = (data(step) if steps_per_call == 1
               else _stack([data(s) for s in range(step, step + k)]))
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
