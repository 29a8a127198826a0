"""What a call of the training step returned, as `fit` reads it.

`all_finite` is the rule a step's new state must pass to be accepted (with a
finite loss and gradient norm); `make_train_step` applies it on the device and
`steps_accepted` on the host, for a step function of one's own. `what_diverged`
says what was not finite. `check_loss_shape` and `check_steps_per_call` refuse
a step that runs another number of steps per call than `fit` counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
  from rnnjax._src.train import TrainState


def all_finite(tree: Any) -> jax.Array:
  """`[]` bool: whether every float (or complex) entry of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def check_loss_shape(fn: str, shape: tuple, steps_per_call: int, k: int) -> None:
  """A step made with `steps_per_call > 1` returns one loss per step of the call: `[k]`."""
  shape = tuple(shape)
  if steps_per_call == 1 and shape != ():
    raise ValueError(
        f"{fn}: `train_step` returned a loss of shape {shape} for one step's batch, as a step "
        "made with make_train_step(..., steps_per_call > 1) does (it runs one step per entry "
        "of the batch's leading axis), but fit was given steps_per_call=1. Pass fit the "
        "steps_per_call the step was made with, or make the step with steps_per_call=1.")
  if steps_per_call > 1 and shape != (k,):
    made = ("with steps_per_call=1, which would train on each call's stacked batch once "
            f"instead of {k} times" if shape == () else "for a different batch layout")
    raise ValueError(
        f"{fn}: `train_step` returned a loss of shape {shape} for a batch of {k} steps stacked "
        f"on a leading axis (steps_per_call={steps_per_call}); a step made with "
        f"make_train_step(..., steps_per_call={steps_per_call}) returns one loss per step, "
        f"shape ({k},). This one seems made {made}. Make it with "
        f"steps_per_call={steps_per_call}, or pass fit steps_per_call=1.")


def check_steps_per_call(fn: str, train_step: Callable, state: TrainState, batch: Any,
                          steps_per_call: int, k: int) -> None:
  """Before the first step: `train_step` must run as many steps per call as `fit` counts.

  Only a jitted step is traced here (its trace is cached for the call that
  follows); tracing a plain Python function could run its side effects, so its
  loss's shape is checked after the first call instead.
  """
  if isinstance(train_step, jax.stages.Wrapped):
    metrics = jax.eval_shape(train_step, state, batch)[1]
    check_loss_shape(fn, metrics["loss"].shape, steps_per_call, k)


def steps_accepted(metrics: dict, new_state: TrainState, loss: np.ndarray) -> int:
  """How many steps of a call, from its first, were accepted.

  A step from `make_train_step` says so in `metrics["accepted"]`; for a step
  function of one's own, the loss, the gradient norm (if reported) and the new
  params are checked here.
  """
  if "accepted" in metrics:
    ok = np.asarray(metrics["accepted"]).reshape(-1)
  else:
    ok = np.isfinite(loss)
    if "grad_norm" in metrics:
      ok = ok & np.isfinite(np.asarray(metrics["grad_norm"]).reshape(-1))
    if ok.all() and not bool(all_finite(new_state.params)):
      ok = np.arange(len(ok)) < len(ok) - 1  # The params of the call's last step.
  return len(ok) if ok.all() else int(np.argmin(ok))


def what_diverged(metrics: dict, loss: np.ndarray, i: int, step: int) -> str:
  """What was not finite in step `i` of a call (global `step`): loss, gradient norm or params."""
  if not np.isfinite(loss[i]):
    return f"the loss became {loss[i]} at step {step}"
  if "grad_norm" not in metrics:
    return f"the new params became non-finite at step {step} (with a finite loss, {loss[i]:.5g})"
  norm = np.asarray(metrics["grad_norm"]).reshape(-1)[i]
  if not np.isfinite(norm):
    return f"the gradient norm became {norm} at step {step} (with a finite loss, {loss[i]:.5g})"
  return (f"the new params became non-finite at step {step} (with a finite loss, {loss[i]:.5g}, "
          f"and gradient norm, {norm:.5g})")
