"""`fit`'s loop: the calls of the step, and what happens between two calls.

After each accepted call: the training record (`runlog.Records`), the evaluation and
the best checkpoint (`selection.Selection`), the progress display, the callbacks, the
newest checkpoint, and the checks that stop the run: Ctrl-C, a callback, `patience`.
`finish` ends the run, whatever stopped it, with a checkpoint and a `FitResult`'s parts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from rnnjax._src import placement, runlog, selection, step_outcome
from rnnjax._src.checkpoint import Checkpointer


@dataclasses.dataclass
class Loop:
  """One `fit` run: its settings, its parts, and the step of its newest checkpoint."""

  fn: str
  num_steps: int
  steps_per_call: int
  eval_every: int
  checkpoint_every: int
  train_step: Callable
  data: Callable[[int], Any]
  place: placement.BatchPlacer | None
  records: runlog.Records
  select: selection.Selection
  callbacks: tuple[Callable, ...]
  ckpt: Checkpointer | None
  last_saved: int | None = None  # the step of the newest checkpoint (if any) of this run

  def save(self, state: Any) -> None:
    """Saves `state` as the newest checkpoint, with what a resumed run needs to go on exactly.

    The losses since the last training record go with it, so that a resumed run
    records exactly what an uninterrupted one would, and so does the selection's state.
    """
    if self.ckpt is not None and int(state.step) != self.last_saved:
      meta = {"pending_losses": self.records.losses, **self.select.meta()}
      self.ckpt.save(int(state.step), state, meta=meta)
      self.last_saved = int(state.step)

  def resume(self, state: Any) -> Any:
    """The newest intact checkpoint's state (with the log and selection as saved), or `state`."""
    if self.ckpt is None or self.ckpt.latest_step() is None:
      return state
    state, meta = self.ckpt.restore_with_meta(state)
    self.last_saved = int(state.step)
    self.records.losses = list(meta.get("pending_losses", []))
    self.select.resume(meta)
    return state


def run(loop: Loop, state: Any, start: int, stop: dict) -> tuple[Any, int, str, str]:
  """The loop, from step `start`: `(state, step, status, message)` when it stops.

  It stops at `num_steps` ("completed"), at a rejected step ("diverged"; the
  state after the last good step, or None if it was donated to the failed call),
  at Ctrl-C ("interrupted"), when a callback asks to ("stopped") or when
  `patience` runs out ("early_stopped").
  """
  step = start
  while step < loop.num_steps:
    k = min(loop.steps_per_call, loop.num_steps - step)
    new_state, metrics, loss = _call(loop, state, step, k, first=step == start)
    done = step_outcome.steps_accepted(metrics, new_state, loss)
    loop.records.losses.extend(loss[:done].tolist())
    if done < k:
      message = step_outcome.what_diverged(metrics, loss, done, step + done + 1)
      if "accepted" in metrics:  # The step kept the state after the last good step.
        return new_state, step + done, "diverged", message
      if any(x.is_deleted() for x in jax.tree_util.tree_leaves(state)
             if isinstance(x, jax.Array)):
        state = None  # Donated to the failed call: the last checkpoint is all there is.
      return state, step, "diverged", message
    state, step = new_state, step + k
    stopped = _between_calls(loop, state, step, k, metrics, loss, stop)
    if stopped is not None:
      return state, step, *stopped
  return state, step, "completed", f"trained {loop.num_steps} steps"


def _call(loop: Loop, state: Any, step: int, k: int,
          first: bool) -> tuple[Any, dict, np.ndarray]:
  """One call of the step on the batches of steps `step` to `step + k`: `(state, metrics, loss)`."""
  batch = (loop.data(step) if loop.steps_per_call == 1
           else placement.stack_steps([loop.data(s) for s in range(step, step + k)]))
  if loop.place is not None:
    batch = loop.place(batch, lead=0 if loop.steps_per_call == 1 else 1)
  if first:
    step_outcome.check_steps_per_call(loop.fn, loop.train_step, state, batch,
                                      loop.steps_per_call, k)
  new_state, metrics = loop.train_step(state, batch)
  loss = np.asarray(metrics["loss"])
  step_outcome.check_loss_shape(loop.fn, loss.shape, loop.steps_per_call, k)
  return new_state, metrics, loss.reshape(-1)


def _between_calls(loop: Loop, state: Any, step: int, k: int, metrics: dict, loss: np.ndarray,
                   stop: dict) -> tuple[str, str] | None:
  """Records, evaluation, display, callbacks, checkpoint; `(status, message)` to stop."""
  this, shown = loop.records.call(step, k, loop.num_steps, metrics, loss)
  evaluate = loop.select.eval_fn is not None and (
      step == loop.num_steps or (loop.eval_every and step % loop.eval_every < k))
  if evaluate:
    scalars = loop.select.evaluate(state)
    loop.records.write(step, scalars)
    this, shown = {**this, **scalars}, {**shown, **scalars}
  loop.records.show(step, shown)
  asked = [bool(callback(step, state, dict(this))) for callback in loop.callbacks]
  if loop.checkpoint_every and step % loop.checkpoint_every == 0:
    loop.save(state)
  # Every process stops together: a Ctrl-C or a callback seen by one process only would
  # otherwise leave the others waiting in the next step's collectives.
  interrupted, asked_any = _in_any_process(stop["stop"], any(asked))
  if interrupted:
    return "interrupted", f"interrupted at step {step}"
  if asked_any:
    who = f"callbacks[{asked.index(True)}]" if any(asked) else "a callback in another process"
    return "stopped", f"stopped by {who} at step {step}"
  if evaluate and loop.select.exhausted and step < loop.num_steps:
    return "early_stopped", loop.select.why_stopped(step)
  return None


def _in_any_process(*flags: bool) -> tuple[bool, ...]:
  """Each flag or-ed over all processes (the flags themselves in a single process)."""
  if jax.process_count() == 1:
    return flags
  from jax.experimental import multihost_utils

  gathered = multihost_utils.process_allgather(np.array(flags, np.bool_))  # [P, n]
  return tuple(bool(x) for x in np.asarray(gathered).reshape(-1, len(flags)).any(axis=0))


def finish(loop: Loop, state: Any, step: int, start: int, status: str, message: str,
           template: Any) -> tuple[Any, str]:
  """Ends the run: the last checkpoint, and the end of the message: `(state, message)`."""
  ckpt = loop.ckpt
  if status == "diverged":
    if state is not None and step != start:
      loop.save(state)  # The last good state, so that `resume` continues from it.
    elif state is None and ckpt is not None and loop.last_saved is not None:
      state = ckpt.restore(template)
    kept = ("no checkpoint was written" if ckpt is None or loop.last_saved is None else
            f"the last good checkpoint (step {loop.last_saved}) in {ckpt.directory} is kept")
    returned = ("nothing is returned" if state is None else
                f"the state after step {int(state.step)} is returned")
    message += (f"; the step was rejected and training stopped: {returned} and {kept}. Lower "
                "the learning rate or clip the gradients (optax.clip_by_global_norm; --clip "
                "on the command line).")
  else:
    loop.save(state)
    if ckpt is not None:
      message += f"; checkpoint of step {step} in {ckpt.directory}"
  best = loop.select.ckpt
  if best is not None and loop.select.best is not None:
    message += f"; best checkpoint (step {loop.select.best_step()}) in {best.directory}"
  return state, message


@contextlib.contextmanager
def sigint_flag() -> Iterator[dict]:
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
