"""What `rnnjax train` and `rnnjax sample` build from a resolved config.

The task (its errors said in terms of flags), the model, its engine, the
optimizer, and the check that the model fits in the device's memory.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any

import jax
import optax

import rnnjax
from rnnjax._src import model as model_lib
from rnnjax.cli.args import CELLS
from rnnjax.cli.errors import UsageError

# The flags that set each task factory's arguments, for errors in terms of flags.
TASK_FLAGS = {"path": "--text", "window": "--window", "length": "--length", "delay": "--delay"}


def make_task(config: dict[str, Any]):
  from rnnjax import tasks  # Imported here: only the CLI reads the data files.
  kwargs = {}
  if config["task"] == "text":
    kwargs["path"] = config["text"]
  if config["task"] == "adding" and config["length"] is not None:
    kwargs["length"] = config["length"]
  if config["task"] == "copy" and config["delay"] is not None:
    kwargs["delay"] = config["delay"]
  if config["window"] is not None and config["task"] in ("co2", "sunspots", "text"):
    kwargs["window"] = config["window"]
  return tasks.get_task(config["task"], **kwargs)


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


def model_core(config: dict[str, Any]) -> rnnjax.Cell:
  """The recurrent core of `make_model`'s model (also given to the diagnostics)."""
  cells = [CELLS[config["cell"]](config["hidden"]) for _ in range(config["layers"])]
  return cells[0] if len(cells) == 1 else rnnjax.stack(cells, dropout=config["dropout"])


def make_model(config: dict[str, Any], task) -> rnnjax.SequenceModel:
  return rnnjax.sequence_model(model_core(config), input_size=task.input_size,
                               output_size=task.output_size, vocab_size=task.vocab_size,
                               engine=config.get("engine", "auto"))


def engine_used(config: dict[str, Any], num_steps: int) -> str:
  """The engine a training step of `make_model`'s model runs, for windows of `num_steps`."""
  engine = model_lib.model_engine(model_core(config), config.get("engine", "auto"),
                                  tbptt=config["tbptt"], key_given=config["dropout"] > 0.0)
  return rnnjax.auto_engine(num_steps) if engine == "auto" else engine


def make_optimizer(config: dict[str, Any]) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config["lr"], warmup_steps=min(100, config["steps"] // 10 + 1),
      decay_steps=config["steps"], end_value=config["lr"] * 0.05)
  return optax.chain(optax.clip_by_global_norm(config["clip"]), optax.adam(schedule))


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
