"""`rnnjax train`: trains a model on a task, then writes its summary and plots into --out."""

from __future__ import annotations

import json
import pathlib
import sys
import time
from typing import Any

import jax
import numpy as np

import rnnjax
from rnnjax._src.checkpoint import CheckpointError
from rnnjax._src.files import write_json_atomic
from rnnjax.cli.args import TASK_DEFAULTS
from rnnjax.cli.errors import UsageError
from rnnjax.cli.factories import (
    _check_fits_in_memory,
    _task_for_flags,
    engine_used,
    make_model,
    make_optimizer,
    model_core,
)
from rnnjax.cli.outdir import _holds_checkpoint, _prepare_out
from rnnjax.cli.sample_cmd import sample_text


def train(config: dict[str, Any]) -> int:
  task = _task_for_flags(config)  # Validates the data and sizes before any compute.
  model = make_model(config, task)
  _check_fits_in_memory(config, model)
  out, resume = _prepare_out(config)
  if task.vocab_size is not None and "vocab" in task.info:
    write_json_atomic(out / "vocab.json", list(task.info["vocab"]))
  optimizer = make_optimizer(config)
  root = jax.random.PRNGKey(config["seed"])
  k_init, k_data, k_train = jax.random.split(root, 3)
  state = rnnjax.train_state(model.init(k_init), optimizer, k_train)
  tbptt = config["tbptt"]

  def loss_fn(params, batch, key):
    preds, _ = model.apply(params, batch["xs"], key=key if config["dropout"] else None,
                           tbptt=tbptt)
    return task.loss(preds, batch)

  step_fn = rnnjax.make_train_step(loss_fn, optimizer, steps_per_call=config["steps_per_call"])
  batch_fn = jax.jit(lambda s: task.train_batch(jax.random.fold_in(k_data, s),
                                                config["batch_size"]))
  predict_fn = jax.jit(lambda p, xs: model.apply(p, xs)[0])

  def evaluate(params):
    return task.evaluate(lambda xs: predict_fn(params, xs))[0]

  num_steps = jax.eval_shape(batch_fn, 0)["xs"].shape[0]
  engine = engine_used(config, num_steps)
  print(f"rnnjax train: {config['cell']} x{config['layers']} (hidden {config['hidden']}) on "
        f"{task.name}, {config['steps']} steps, batch {config['batch_size']}, {engine} engine "
        f"on {jax.default_backend()} -> {out}", flush=True)
  start = time.perf_counter()
  diag = {}
  if config.get("diagnostics"):
    from rnnjax.tools import report
    diag_batch = task.train_batch(jax.random.fold_in(k_data, 2**31 - 1), config["batch_size"])
    core = model_core(config)
    diag["init"] = report.model_diagnostics(core, state.params, task, diag_batch)
  try:
    result = rnnjax.fit(
        state, step_fn, batch_fn, num_steps=config["steps"],
        steps_per_call=config["steps_per_call"], eval_fn=evaluate,
        eval_every=config["eval_every"], out_dir=out,
        checkpoint_every=config["checkpoint_every"], keep=config["keep"],
        resume=resume, progress=not config["quiet"])
  except CheckpointError as err:
    raise UsageError(_checkpoint_problem(err, out)) from None
  wall = time.perf_counter() - start
  stopped = _stopped_early(result, config, out)
  if stopped is not None:
    return stopped
  metrics, details = task.evaluate(lambda xs: predict_fn(result.state.params, xs))
  value = metrics[task.metric]
  beat = value < task.baseline
  summary = {
      "task": task.name, "cell": config["cell"], "config": config,
      "metric": task.metric, task.metric: value, "metrics": metrics,
      "baseline": task.baseline, "baseline_name": task.baseline_name,
      "beats_baseline": bool(beat), "steps": int(result.state.step), "wall_s": round(wall, 2),
      "engine": engine,
      "num_params": int(sum(x.size for x in jax.tree_util.tree_leaves(result.state.params))),
      "jax": jax.__version__, "backend": jax.default_backend(), "task_info": _jsonable(task.info),
  }
  write_json_atomic(out / "summary.json", summary)
  if diag:
    diag[f"after {int(result.state.step)} steps"] = report.model_diagnostics(
        core, result.state.params, task, diag_batch)
    for name, path in zip(("JSON", "plot"), report.write(out, "diagnostics", diag,
                                                         plots=not config["no_plots"]),
                          strict=False):
      print(f"diagnostics {name}: {path}", flush=True)
  if not config["no_plots"]:
    _plots(out, task, details, config)
  verdict = "beats" if beat else "does NOT beat"
  print(f"{task.metric} {value:.4g}  vs  {task.baseline_name} baseline {task.baseline:.4g}  "
        f"({verdict} the baseline; {wall:.0f} s)", flush=True)
  return 0


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
  default = TASK_DEFAULTS[config["task"]]["lr"]
  lr = f"{default if config['lr'] > default else config['lr'] / 10:.3g}"
  advice = (f"to start again with a lower learning rate, run the same command with --lr {lr} "
            f"(in the same --out, this run's files are first moved to {out}/previous-N)")
  if _holds_checkpoint(out):
    advice += (f"; or continue from the last good checkpoint with --resume --lr {lr} (it may "
               "diverge again if the learning rate spoiled the weights before the loss "
               "overflowed)")
  return advice


def _jsonable(obj: Any) -> Any:
  try:
    json.dumps(obj)
    return obj
  except TypeError:
    if isinstance(obj, dict):
      return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
      return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
      return obj.tolist()
    return repr(obj)


def _plots(out: pathlib.Path, task, details: dict[str, Any], config: dict[str, Any]) -> None:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("rnnjax train: matplotlib is not installed, so no plots were written "
          "(pip install 'rnnjax[plots]').", file=sys.stderr)
    return
  records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  train_rec = [r for r in records if "loss" in r]
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.plot([r["step"] for r in train_rec], [r["loss"] for r in train_rec], label="training loss")
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_title(f"{config['cell']} on {task.name}")
  ax.legend()
  fig.tight_layout()
  fig.savefig(out / "loss.png", dpi=100)
  plt.close(fig)
  if "truth" in details and "forecast" in details:
    fig, ax = plt.subplots(figsize=(9, 4))
    time_axis = np.asarray(details.get("time", np.arange(len(details["truth"]))))
    start = int(details.get("test_start", 0))
    ax.plot(time_axis, details["truth"], color="black", lw=1, label="truth")
    ax.plot(time_axis[start:], np.asarray(details["forecast"])[start:], color="tab:red", lw=1.2,
            label=f"{config['cell']} one-step forecast (test)")
    ax.axvline(time_axis[start], color="gray", ls="--", lw=0.8)
    ax.set_title(f"{task.name}: held-out tail")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "forecast.png", dpi=100)
    plt.close(fig)
  if task.vocab_size is not None and task.name == "text":
    held_out = details.get("held_out") or [""]
    prompt = "def " if all(c in task.info["vocab"] for c in "def ") else held_out[0][:4]
    text = sample_text(out, length=300, prompt=prompt or task.info["vocab"][0], temperature=0.8,
                       seed=0)
    (out / "samples.txt").write_text(text + "\n")
    fig = plt.figure(figsize=(9, 5))
    fig.text(0.01, 0.99, text, family="monospace", fontsize=8, va="top", wrap=True)
    fig.savefig(out / "samples.png", dpi=100)
    plt.close(fig)
