"""`rnnjax train`: trains a model on a task, then writes its summary and plots into --out.

It builds the task, the model and the training step once (the recipe is
`rnnjax.runs`), runs `rnnjax.fit` with evaluation on the validation split and
the best checkpoint kept, then scores the best checkpoint and the final state on
validation and test (`summary`) and draws the plots (`rnnjax.tools.plots`).
"""

from __future__ import annotations

import pathlib
import sys
import time
from typing import Any

import jax
import numpy as np

import rnnjax
from rnnjax._src.checkpoint import CheckpointError
from rnnjax._src.files import write_json_atomic
from rnnjax.cli import summary as summary_lib
from rnnjax.cli.args import task_defaults
from rnnjax.cli.errors import UsageError
from rnnjax.cli.factories import (
    _check_fits_in_memory,
    _task_for_flags,
    engine_used,
    make_loss,
    make_model,
    make_optimizer,
    make_predict,
    model_core,
)
from rnnjax.cli.outdir import RUN_ONLY, _holds_checkpoint, _prepare_out
from rnnjax.cli.replay import provenance
from rnnjax.runs import model_readout


def train(config: dict[str, Any]) -> int:
  """`rnnjax train` on a resolved config (from `resolve_config`); returns the exit code."""
  config = {**config, **provenance()}  # config.json records the software too.
  task = _task_for_flags(config)  # Validates the data and sizes before any compute.
  config = _with_readout(config, task)
  model = make_model(config, task)
  _check_fits_in_memory(config, model)
  _check_writers(config)
  out, resume = _prepare_out(config)
  writers = _writers(config)
  try:
    if task.vocab_size is not None and "vocab" in task.info:
      write_json_atomic(out / "vocab.json", list(task.info["vocab"]))
    return _train(config, task, model, out, resume, writers)
  finally:
    for writer in writers:  # fit flushes the writers; the one who made them closes them.
      writer.close()


def _train(config: dict[str, Any], task, model: rnnjax.SequenceModel, out: pathlib.Path,
           resume: bool, writers: list) -> int:
  """Builds the state, step and data once, trains, then reports; returns the exit code."""
  optimizer = make_optimizer(config)
  k_init, k_data, k_train = jax.random.split(jax.random.PRNGKey(config["seed"]), 3)
  state = rnnjax.train_state(model.init(k_init), optimizer, k_train)
  step_fn = rnnjax.make_train_step(make_loss(config, task, model), optimizer,
                                   steps_per_call=config["steps_per_call"])
  batch_fn = jax.jit(lambda s: task.train_batch(jax.random.fold_in(k_data, s),
                                                config["batch_size"]))
  predict = make_predict(model)

  def evaluate(params, split):
    return task.evaluate(lambda xs, lengths=None: predict(params, xs, lengths), split)

  engine = engine_used(config, jax.eval_shape(batch_fn, 0)["xs"].shape[0])
  init = "" if config.get("init", "default") == "default" else f", {config['init']} init"
  if config.get("dtype", "float32") != "float32":
    init += f", {config['dtype']} compute"
  if config.get("readout"):
    init += f", read out at {_READ_AT[config['readout']]}"
  print(f"rnnjax train: {config['cell']} x{config['layers']} (hidden {config['hidden']}{init}) on "
        f"{task.name}, {config['steps']} steps, batch {config['batch_size']}, "
        f"{config['optimizer']}, {engine} engine on {jax.default_backend()} -> {out}",
        flush=True)
  diag = _Diagnostics(config, task, k_data) if config.get("diagnostics") else None
  if diag is not None:
    diag.measure("init", state.params)
  start = time.perf_counter()
  try:
    result = rnnjax.fit(
        state, step_fn, batch_fn, num_steps=config["steps"],
        steps_per_call=config["steps_per_call"], eval_fn=lambda p: evaluate(p, "val")[0],
        eval_every=config["eval_every"], **_selection(task),
        patience=config["patience"], out_dir=out, checkpoint_every=config["checkpoint_every"],
        keep=config["keep"], resume=resume, writers=writers, hparams=_hparams(config),
        progress=False if config["quiet"] else rnnjax.ProgressBar(
            units={"loss": task.loss_units, task.metric: task.units}))
    wall = time.perf_counter() - start
    stopped = _stopped_early(result, config, out)
    if stopped is not None:
      return stopped
    best_state = rnnjax.restore_best(out, result.state)
    best, best_details = summary_lib.score(evaluate, best_state)
  except CheckpointError as err:
    raise UsageError(_checkpoint_problem(err, out)) from None
  final = summary_lib.score(evaluate, result.state)[0]
  summary = summary_lib.summary(task, config, status=result.status, best=best, final=final,
                                wall_s=wall, engine=engine, params=result.state.params)
  write_json_atomic(out / "summary.json", summary)
  if diag is not None:
    diag.measure(f"after {int(result.state.step)} steps", result.state.params)
    diag.write(out, plots=not config["no_plots"])
  if not config["no_plots"]:
    _outputs(out, task, config, model, best_state, best_details)
  for line in summary_lib.result_lines(summary):
    print(line, flush=True)
  return 0


# How the start line names each readout of a classification task.
_READ_AT = {"last": "the last valid step", "mean": "the mean over valid steps",
            "flatten": "all steps, flattened"}


def _with_readout(config: dict[str, Any], task) -> dict[str, Any]:
  """The config with the model's readout: the task's or `--readout` for a classification
  task (and `num_steps` for "flatten"), so that config.json rebuilds the model; a per-step
  task keeps `readout` None (as in configs from before readouts)."""
  flag = config.get("readout")
  if getattr(task, "readout", "steps") == "steps":
    if flag is not None:
      raise UsageError(f"--readout is only used with classification tasks (uea:NAME); --task "
                       f"{config['task']} predicts every step, so drop --readout {flag}")
    return config
  if config.get("diagnostics"):
    raise UsageError(f"--diagnostics measures the gradients of per-step losses, but --task "
                     f"{config['task']} predicts one label per sequence; drop --diagnostics")
  readout, num_steps = model_readout({**config, "readout": flag or task.readout}, task)
  config = {**config, "readout": readout}
  if num_steps is not None:
    config["num_steps"] = num_steps
  return config


def _check_writers(config: dict[str, Any]) -> None:
  """Refuses `--tensorboard` without tensorboardX, before anything is written."""
  if config.get("tensorboard") is not None:
    try:
      import tensorboardX  # noqa: F401
    except ImportError:
      raise UsageError("--tensorboard needs tensorboardX, which is not installed; install it "
                       "with pip install 'rnnjax[tensorboard]'") from None


def _writers(config: dict[str, Any]) -> list:
  """The metric writers besides metrics.jsonl: `--tensorboard DIR`'s."""
  if config.get("tensorboard") is None:
    return []
  try:
    return [rnnjax.TensorBoardWriter(config["tensorboard"])]
  except OSError as err:
    raise UsageError(f"--tensorboard {config['tensorboard']} cannot be written: "
                     f"{err.strerror or err}") from None


def _hparams(config: dict[str, Any]) -> dict[str, Any]:
  """The config's flags as hyper-parameters of the writers (strings, numbers, booleans)."""
  return {k: v for k, v in config.items()
          if isinstance(v, (str, int, float, bool)) and k not in RUN_ONLY}


def _stopped_early(result: rnnjax.FitResult, config: dict[str, Any],
                   out: pathlib.Path) -> int | None:
  """Reports a run that diverged (exit code 3) or was interrupted (130); None if it finished."""
  if result.status == "diverged":
    # fit's advice names the API; the flags to pass come on the next line.
    message = result.message.split(" Lower the learning rate")[0]
    write_json_atomic(out / "diverged.json", {
        "message": message,
        "last_good_step": None if result.state is None else int(result.state.step)})
    print(f"rnnjax train: {message}", file=sys.stderr)
    print(f"rnnjax train: {_divergence_advice(config, out)}", file=sys.stderr)
    return 3
  if result.status == "interrupted":
    print(f"rnnjax train: {result.message}. Continue with the same command and --resume.",
          file=sys.stderr)
    return 130
  return None


def _checkpoint_problem(err: CheckpointError, out: pathlib.Path) -> str:
  """A `CheckpointError` of `fit` or `sample`, in terms of the run in --out."""
  if err.kind == "mismatch":
    detail = err.detail.replace("`like`", "the model of these flags")
    return (f"the checkpoint {err.path} was saved from another model than these flags "
            f"make ({detail}); pass the flags it was trained with (see {out / 'config.json'})"
            ", or use --overwrite or another --out to start a new run")
  if err.kind == "damaged":
    return (f"--out {out} holds no intact checkpoint to resume ({err.detail}); its files are "
            "left as they are. Restore an intact copy of one, or start again with --overwrite "
            "(which deletes them) or in another --out")
  return f"--out {out}: {err.detail}"


def _divergence_advice(config: dict[str, Any], out: pathlib.Path) -> str:
  """The command lines that go on after a divergence, with a lower learning rate."""
  default = task_defaults(config["task"])["lr"]
  lr = f"{default if config['lr'] > default else config['lr'] / 10:.3g}"
  advice = (f"to start again with a lower learning rate, run the same command with --lr {lr} "
            f"(in the same --out, this run's files are first moved to {out}/previous-N)")
  if _holds_checkpoint(out):
    advice += (f"; or continue from the last good checkpoint with --resume --lr {lr} (it may "
               "diverge again if the learning rate spoiled the weights before the loss "
               "overflowed)")
  return advice




class _Diagnostics:
  """`--diagnostics`: gradient flow on one training batch, at initialisation and after training."""

  def __init__(self, config: dict[str, Any], task, k_data: jax.Array):
    from rnnjax.tools import report

    self.report, self.task, self.core = report, task, model_core(config)
    self.batch = task.train_batch(jax.random.fold_in(k_data, 2**31 - 1), config["batch_size"])
    self.reports: dict[str, Any] = {}

  def measure(self, label: str, params: Any) -> None:
    self.reports[label] = self.report.model_diagnostics(self.core, params, self.task, self.batch)

  def write(self, out: pathlib.Path, plots: bool) -> None:
    written = self.report.write(out, "diagnostics", self.reports, plots=plots)
    for name, path in zip(("JSON", "plot"), written, strict=False):
      print(f"diagnostics {name}: {path}", flush=True)


def _selection(task: Any) -> dict[str, Any]:
  """`fit`'s `best_metric` and `best_mode` for `task`: its metric, then its tie-break."""
  mode = "max" if getattr(task, "maximize", False) else "min"
  tiebreak = getattr(task, "tiebreak", None)
  if tiebreak is None:
    return {"best_metric": task.metric, "best_mode": mode}
  return {"best_metric": (task.metric, tiebreak), "best_mode": (mode, "min")}


def _outputs(out: pathlib.Path, task, config: dict[str, Any], model: rnnjax.SequenceModel,
             best: rnnjax.TrainState, details: dict[str, dict]) -> None:
  """The plots (loss.png; forecast.png or samples.txt) of the best checkpoint's model."""
  try:
    import matplotlib  # noqa: F401  (only to know that rnnjax.tools.plots can draw)
  except ImportError:
    print("rnnjax train: matplotlib is not installed, so no plots were written "
          "(pip install 'rnnjax[plots]').", file=sys.stderr)
    return
  from rnnjax.tools import plots

  step = int(best.step)
  title = f"{config['cell']} x{config['layers']} (hidden {config['hidden']}) on {task.name}"
  plots.loss_plot(out / "loss.png", plots.read_records(out / "metrics.jsonl"),
                  metric=task.metric, units=task.units, loss_units=task.loss_units,
                  baseline=task.baselines["val"], baseline_name=task.baseline_name,
                  best_step=step, title=title)
  if all("forecast" in d and "truth" in d for d in details.values()):
    plots.forecast_plot(out / "forecast.png", details, label=config["cell"],
                        baseline_name=task.baseline_name, units=task.units,
                        title=f"{title}: step {step}, picked by validation")
  if task.vocab_size is not None and task.name in TEXT_TASKS:
    (out / "samples.txt").write_text(_sample(task, model, best.params) + "\n")


# The character tasks, whose runs write samples.txt (and `rnnjax sample` continues), with the
# prompt of their samples.
TEXT_TASKS = {"text": "def ", "shakespeare": "ROMEO:\n"}


def _sample(task, model: rnnjax.SequenceModel, params: Any, length: int = 300) -> str:
  """`length` characters sampled (temperature 0.8, seed 0) after the task's prompt (if it is
  in the vocabulary, else the vocabulary's first character)."""
  vocab = list(task.info["vocab"])
  prompt = TEXT_TASKS.get(task.name, "def ")
  prompt = prompt if all(c in vocab for c in prompt) else vocab[0]
  ids = np.asarray([vocab.index(c) for c in prompt], np.int32)
  tokens = rnnjax.generate(model, params, ids, length, key=jax.random.PRNGKey(0),
                           temperature=0.8)
  return prompt + "".join(vocab[int(i)] for i in np.asarray(tokens))
