"""What `rnnjax train` and `rnnjax sample` build from a resolved config, in terms of flags.

The recipe itself (task, model, engine, optimizer, loss and predict functions) is
`rnnjax.runs`, shared with `rnnjax.load_run`; its names are re-exported here. This
module adds what only the command line needs: the task's errors said in terms of
flags, the checks of `--text`, and the check that the model fits in the device's memory.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any

import jax

import rnnjax
from rnnjax.cli.errors import UsageError
from rnnjax.runs import (  # noqa: F401  (re-exported: `rnnjax.cli.make_model` etc.)
    engine_used,
    make_loss,
    make_model,
    make_optimizer,
    make_predict,
    make_task,
    model_core,
)

# The flags that set each task factory's arguments, for errors in terms of flags.
TASK_FLAGS = {"path": "--text", "window": "--window", "length": "--length", "delay": "--delay"}


def _task_for_flags(config: dict[str, Any]):
  """`make_task(config)`, its errors said in terms of flags (a `UsageError`)."""
  if config["task"] == "text" and config["text"] is not None:
    _check_text_file(config["text"])
  try:
    return make_task(config)
  except (ValueError, TypeError, FileNotFoundError) as err:
    raise UsageError(_in_flags(str(err))) from None


def _check_text_file(name: str) -> None:
  path = pathlib.Path(name)
  if not path.exists():
    raise UsageError(f"--text {name}: no such file")
  if path.is_dir():
    raise UsageError(f"--text {name} is a directory; pass a text file")
  try:
    data = path.read_bytes()
  except OSError as err:
    raise UsageError(f"--text {name} cannot be read: {err.strerror or err}") from None
  if not data:
    raise UsageError(f"--text {name} is empty; pass a file with text in it")
  try:
    data.decode("utf-8")
  except UnicodeDecodeError as err:
    raise UsageError(f"--text {name} is not UTF-8 text ({err.reason} at byte {err.start}); "
                     "pass a UTF-8 text file (convert one with, e.g., iconv -t utf-8)") from None


def _in_flags(message: str) -> str:
  """A task factory's error message, with its argument names replaced by their flags."""
  message = re.sub(r"^rnnjax\.tasks\.\w+: ", "", message)
  message = re.sub(r"with n_test=(\d+) held out", r"with the last \1 held out", message)
  message = message.replace(" or `n_test`", "")
  for name, flag in TASK_FLAGS.items():
    message = re.sub(rf"`{name}`|\b{name}(?= \+ 1)|\b{name}=", lambda m, flag=flag: flag + (
        " " if m.group(0).endswith("=") else ""), message).replace(f"{flag}  ", f"{flag} ")
  return message


def _check_fits_in_memory(config: dict[str, Any], model: rnnjax.SequenceModel) -> None:
  """Refuses a model whose parameters and Adam moments alone exceed the device's memory."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  needed = 3 * sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(shapes))
  stats = jax.devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  if limit is None:
    try:
      limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
      return
  if needed > limit:
    raise UsageError(
        f"--hidden {config['hidden']} --layers {config['layers']} makes a model whose "
        f"parameters and Adam moments alone take {needed / 2**30:.3g} GiB, more than the "
        f"{limit / 2**30:.3g} GiB of memory of {jax.devices()[0].platform.upper()} device 0; use "
        "a smaller --hidden or fewer --layers")
