"""Runs of `rnnjax train`: the recipe that turns a config into a task, model and optimizer.

`rnnjax train` builds everything it trains from one flat config (its resolved
flags, saved as `config.json` in the run directory); this module holds that
recipe, so that the command line and `load_run` build the same things from it:
`make_task`, `make_model` (its core from `model_core`), `make_optimizer`, and the
glue between a task and a model, `make_loss` and `make_predict`. `load_run`
reads a run directory back: the model, the best (or newest) params, the config
and the task, so a run trained on the command line continues in a notebook.

This module sits above the library (it builds tasks and models with the public
API), and the command line (`rnnjax.cli`) imports it, never the other way round.
`rnnjax.load_run` and `rnnjax.Run` are its public names, reachable after a plain
`import rnnjax`; the module itself is imported on first use.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import optax

import rnnjax
from rnnjax._src import model as model_lib

if TYPE_CHECKING:
  from rnnjax.tasks import Task


def _lru(hidden: int, **kwargs: Any) -> rnnjax.Cell:
  """The LRU with `hidden` complex states and `hidden` outputs (its default is the input size)."""
  return rnnjax.lru(hidden, output_size=hidden, **kwargs)


def _rglru(hidden: int, **kwargs: Any) -> rnnjax.Cell:
  return rnnjax.rglru(hidden, **kwargs)


# The cells of `rnnjax train --cell`: each builds a cell of hidden (output) size H from H. The
# gated cells, minGRU/minLSTM, the diagonal cells and the sLSTM (one head) have H-wide outputs;
# the LRU has H complex states read out to H real outputs.
CELLS: dict[str, Callable[[int], rnnjax.Cell]] = {
    "lstm": rnnjax.lstm, "gru": rnnjax.gru, "elman": rnnjax.elman, "mgu": rnnjax.mgu,
    "mingru": rnnjax.mingru, "minlstm": rnnjax.minlstm, "lru": _lru, "rglru": _rglru,
    "diagonal_gru": rnnjax.diagonal_gru, "diagonal_lstm": rnnjax.diagonal_lstm,
    "slstm": rnnjax.slstm}
# The optimizers of `rnnjax train --optimizer`.
OPTIMIZERS = ("adam", "adamw", "sgd")
# The initialisations of `rnnjax train --init`, and the cells whose factory takes `init=`.
INITS = ("default", "pytorch")
INIT_CELLS = ("elman", "gru", "lstm", "mgu")
# The readouts of `sequence_model`; `rnnjax train --readout` takes all but "steps" (per step),
# for classification tasks.
READOUTS = ("steps", "last", "mean", "flatten")
# The compute dtypes of `rnnjax train --dtype` (params, carry and accumulation stay float32).
DTYPES = ("float32", "bfloat16")


def make_task(config: dict[str, Any]) -> Task:
  """The task of a config: `rnnjax.tasks.get_task(config["task"], ...)` with its options.

  Args:
    config: a config of `rnnjax train`; reads `task`, and `text`, `length`, `delay` and
      `window` where the task takes them (None: the task's default).
  """
  from rnnjax import tasks  # Imported here: it reads the data files.

  kwargs = {}
  if config["task"] == "text":
    kwargs["path"] = config.get("text")
  if config["task"] == "adding" and config.get("length") is not None:
    kwargs["length"] = config["length"]
  if config["task"] == "copy" and config.get("delay") is not None:
    kwargs["delay"] = config["delay"]
  if config.get("window") is not None and config["task"] in ("co2", "sunspots", "text",
                                                         "shakespeare"):
    kwargs["window"] = config["window"]
  return tasks.get_task(config["task"], **kwargs)


def model_core(config: dict[str, Any]) -> rnnjax.Cell:
  """The recurrent core of `make_model`'s model: one cell, or a stack of `layers` cells.

  Args:
    config: reads `cell` (a key of `CELLS`), `hidden`, `layers`, `dropout` (between
      stacked layers), `init` (one of `INITS`; a config without it, from before
      `--init`, means "default"; "pytorch" needs a cell of `INIT_CELLS`) and `dtype`
      (the cells' compute dtype, one of `DTYPES`; absent means "float32").
  """
  init = config.get("init") or "default"
  if init not in INITS:
    raise ValueError(f"rnnjax.runs.model_core: init must be one of {', '.join(INITS)}, got "
                     f"{init!r}.")
  if init != "default" and config["cell"] not in INIT_CELLS:
    raise ValueError(f"rnnjax.runs.model_core: init={init!r} needs a cell whose factory takes "
                     f"`init` ({', '.join(INIT_CELLS)}), got cell={config['cell']!r}; use "
                     "init='default'.")
  kwargs = {} if init == "default" else {"init": init}
  dtype = compute_dtype(config)
  if dtype != "float32":
    kwargs["dtype"] = dtype
  cells = [CELLS[config["cell"]](config["hidden"], **kwargs) for _ in range(config["layers"])]
  return cells[0] if len(cells) == 1 else rnnjax.stack(cells, dropout=config["dropout"])


def make_model(config: dict[str, Any], task: Task) -> rnnjax.SequenceModel:
  """The `sequence_model` of a config for a task: embedding or features, core, read-out.

  Args:
    config: reads what `model_core` and `model_readout` read, and `engine` (default
      "auto").
    task: the task (its `input_size`, `output_size`, `vocab_size` and `readout`).
  """
  readout, num_steps = model_readout(config, task)
  return rnnjax.sequence_model(model_core(config), input_size=task.input_size,
                               output_size=task.output_size, vocab_size=task.vocab_size,
                               engine=config.get("engine", "auto"), dtype=compute_dtype(config),
                               readout=readout, num_steps=num_steps)


def model_readout(config: dict[str, Any], task: Task) -> tuple[str, int | None]:
  """The readout of `make_model`'s model and its `num_steps` (None unless "flatten").

  A task that predicts every step (`task.readout == "steps"`) takes no other readout;
  a classification task takes "last", "mean" or "flatten" (default: its own).

  Args:
    config: reads `readout` (absent or None: the task's, so a config from before
      readouts means "steps") and `num_steps` (absent or None: the task's `T`, from the
      shape of a training batch).
    task: the task (its `readout`, and `train_batch` for `T`).
  """
  fn = "rnnjax.runs.model_readout"
  own = getattr(task, "readout", "steps")  # A task-like object without one predicts per step.
  readout = config.get("readout") or own
  if own == "steps" and readout != "steps":
    raise ValueError(f"{fn}: task {task.name!r} predicts every step (readout 'steps'), got "
                     f"readout={readout!r}; drop the readout.")
  if own != "steps" and readout == "steps":
    raise ValueError(f"{fn}: task {task.name!r} predicts one label per sequence, got "
                     "readout='steps'; use 'last', 'mean' or 'flatten'.")
  if readout != "flatten":
    return readout, None
  num_steps = config.get("num_steps")
  if num_steps is None:
    num_steps = task_steps(task)
  return readout, num_steps


def task_steps(task: Task) -> int:
  """`T`, the steps of the task's training batches (by shape evaluation, without data).

  Args:
    task: the task.
  """
  batch = jax.eval_shape(lambda key: task.train_batch(key, 1), jax.random.PRNGKey(0))
  return int(batch["xs"].shape[0])


def compute_dtype(config: dict[str, Any]) -> str:
  """The compute dtype of a config (`--dtype`): one of `DTYPES`, "float32" if absent.

  Args:
    config: reads `dtype`.
  """
  dtype = config.get("dtype") or "float32"
  if dtype not in DTYPES:
    raise ValueError(f"rnnjax.runs.compute_dtype: dtype must be one of {', '.join(DTYPES)}, "
                     f"got {dtype!r}.")
  return dtype


def engine_used(config: dict[str, Any], num_steps: int) -> str:
  """The engine a training step of `make_model`'s model runs, for windows of `num_steps`.

  Args:
    config: reads what `model_core` reads, and `engine`, `tbptt` and `dropout`.
    num_steps: `T`, the length of the training windows.
  """
  engine = model_lib.model_engine(model_core(config), config.get("engine", "auto"),
                                  tbptt=config.get("tbptt"), key_given=config["dropout"] > 0.0)
  return rnnjax.auto_engine(num_steps) if engine == "auto" else engine


def make_optimizer(config: dict[str, Any]) -> optax.GradientTransformation:
  """The optimizer of a config: clipping, then Adam, AdamW or SGD on a warm-up-cosine schedule.

  The learning rate rises linearly from 0 to `lr` over `min(100, steps // 10 + 1)`
  steps, then decays on a cosine to `0.05 * lr` at `steps`. The gradients are first
  clipped to a global norm of `clip`. `adamw` decays the weights by
  `weight_decay` times the scheduled learning rate (decoupled, as PyTorch's AdamW);
  `sgd` adds `weight_decay * params` to the clipped gradients (an L2 penalty, as
  PyTorch's SGD); `adam` takes no weight decay (`rnnjax train` refuses one).

  Args:
    config: reads `lr`, `steps`, `clip`, and `optimizer` (default "adam") and
      `weight_decay` (default 0).
  """
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config["lr"], warmup_steps=min(100, config["steps"] // 10 + 1),
      decay_steps=config["steps"], end_value=config["lr"] * 0.05)
  name, decay = config.get("optimizer") or "adam", config.get("weight_decay") or 0.0
  clip = optax.clip_by_global_norm(config["clip"])
  if name == "adam":
    if decay:
      raise ValueError(f"rnnjax.runs.make_optimizer: adam takes no weight decay, got "
                       f"weight_decay={decay}; use adamw (decoupled) or sgd (L2).")
    return optax.chain(clip, optax.adam(schedule))
  if name == "adamw":
    return optax.chain(clip, optax.adamw(schedule, weight_decay=decay))
  if name == "sgd":
    return optax.chain(clip, optax.add_decayed_weights(decay), optax.sgd(schedule))
  raise ValueError(f"rnnjax.runs.make_optimizer: unknown optimizer {name!r}; choose one of "
                   f"{', '.join(OPTIMIZERS)}.")


def make_loss(config: dict[str, Any], task: Task, model: rnnjax.SequenceModel) -> Callable:
  """The training loss `loss(params, batch, key)` of a model on a task, for `make_train_step`.

  The model reads `batch["xs"]` (and `batch["lengths"]`, the valid steps of each
  sequence, where the batch has them); its predictions are scored by `task.loss`. `key`
  drives the dropout between stacked layers (if `dropout` > 0); with `tbptt`, the
  gradients stop every `tbptt` steps.

  Args:
    config: reads `dropout` and `tbptt`.
    task: the task (its `loss`).
    model: the model (`make_model(config, task)`).
  """
  dropout, tbptt = config.get("dropout", 0.0), config.get("tbptt")

  def loss(params: Any, batch: dict[str, jax.Array], key: jax.Array) -> jax.Array:
    preds, _ = model.apply(params, batch["xs"], lengths=batch.get("lengths"),
                           key=key if dropout else None, tbptt=tbptt)
    return task.loss(preds, batch)

  return loss


def make_predict(model: rnnjax.SequenceModel) -> Callable[..., jax.Array]:
  """`predict(params, xs, lengths=None) -> preds`: the model's outputs on whole sequences, jitted.

  `task.evaluate(lambda xs, lengths=None: predict(params, xs, lengths), split)` scores
  params on a split (a classification task passes the lengths of its sequences).

  Args:
    model: the model; `xs` is `[T, B, I]` (or `[T, B]` tokens), `lengths` `[B]` or None,
      `preds` `[T, B, O]` (`[B, O]` for a readout other than "steps").
  """
  return jax.jit(lambda params, xs, lengths=None: model.apply(params, xs, lengths=lengths)[0])


class Run(NamedTuple):
  """A run of `rnnjax train`, loaded back by `load_run`.

  Attributes:
    model: the `SequenceModel` the run trained (`make_model(config, task)`).
    params: its params (`SequenceModelParams`) at `step`.
    config: the run's `config.json`: its resolved flags, the package versions and the
      git commit it ran at.
    task: the task, rebuilt from the config (its splits, `evaluate`, baselines).
    step: the training step the params are from.
  """

  model: rnnjax.SequenceModel
  params: Any
  config: dict[str, Any]
  task: Task
  step: int


def load_run(directory: str | os.PathLike, which: str = "best") -> Run:
  """The model, params, config and task of a run directory of `rnnjax train`.

  The task and the model are rebuilt from the run's `config.json` with the recipe
  of the command line (`make_task`, `make_model`), and the params restored from
  its best checkpoint (the one with the best validation metric, `out/best/`) or
  its newest one (`out/checkpoint/`). A text run rebuilds its task from the text
  file it was trained on (`config["text"]`), so that file must still be there.

  Args:
    directory: the run directory (`rnnjax train --out`).
    which: "best" (the checkpoint chosen by validation) or "newest".

  Returns:
    A `Run(model, params, config, task, step)`. Its params score on a split with
    `task.evaluate(lambda xs, lengths=None: model.apply(params, xs, lengths=lengths)[0],
    "test")` (a classification task passes `lengths`; the others call `predict(xs)`).

  Raises:
    FileNotFoundError: `directory` holds no `config.json`, or (`which="newest"`) no
      checkpoint.
    CheckpointError: no best checkpoint (`which="best"`), none intact, or one of
      another model than the config describes.

  Examples:
    >>> import rnnjax
    >>> run = rnnjax.load_run("runs/co2-lstm")  # doctest: +SKIP
    >>> predict = rnnjax.runs.make_predict(run.model)  # doctest: +SKIP
    >>> metrics, details = run.task.evaluate(
    ...     lambda xs, lengths=None: predict(run.params, xs, lengths), "test")  # doctest: +SKIP
  """
  fn = "rnnjax.load_run"
  if which not in ("best", "newest"):
    raise ValueError(f"{fn}: `which` must be 'best' or 'newest', got {which!r}.")
  out = pathlib.Path(directory)
  path = out / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{fn}: {out} holds no run of rnnjax train (no {path.name}).")
  config = json.loads(path.read_text())
  if not isinstance(config, dict) or not {"task", "cell"} <= set(config):
    raise ValueError(f"{fn}: {path} is not a config.json of rnnjax train (no task and cell).")
  task = make_task(config)
  model = make_model(config, task)
  optimizer = make_optimizer(config)
  key = jax.random.PRNGKey(0)
  like = jax.eval_shape(lambda k: rnnjax.train_state(model.init(k), optimizer, k), key)
  if which == "best":
    state = rnnjax.restore_best(out, like)
  else:
    if not (out / "checkpoint").is_dir():
      raise FileNotFoundError(f"{fn}: {out} holds no checkpoint (no checkpoint/ directory).")
    ckpt = rnnjax.Checkpointer(out / "checkpoint")
    try:
      state = ckpt.restore(like)
    finally:
      ckpt.close()
  return Run(model, state.params, config, task, int(state.step))
