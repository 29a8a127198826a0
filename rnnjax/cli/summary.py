"""What `rnnjax train` reports at the end: `summary.json` and the result lines.

The reported model is the one picked by the validation metric (the best
checkpoint); its test metric is set beside the baseline's on the same test
split. The final state's validation and test metrics are reported too, so that
a run that overfits shows it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

SPLITS = ("val", "test")


def score(evaluate: Callable[[Any, str], tuple[dict, dict]],
          state: Any) -> tuple[dict[str, Any], dict[str, dict]]:
  """A state's metrics on the validation and test splits, and each split's details.

  Returns `({"step": ..., "val": metrics, "test": metrics}, {"val": details, "test": details})`.

  Args:
    evaluate: `evaluate(params, split) -> (metrics, details)`.
    state: a `TrainState`.
  """
  scores, details = {"step": int(state.step)}, {}
  for split in SPLITS:
    metrics, details[split] = evaluate(state.params, split)
    scores[split] = {k: float(v) for k, v in metrics.items()}
  return scores, details


def summary(task: Any, config: dict[str, Any], *, status: str, best: dict, final: dict,
            wall_s: float, engine: str, params: Any) -> dict[str, Any]:
  """The contents of summary.json (see docs/cli.md, "The run directory").

  Args:
    task: the task.
    config: the run's config (as in config.json).
    status: how `fit` ended ("completed" or "early_stopped").
    best: the scores (`score`) of the best checkpoint (by the validation metric).
    final: the scores of the final state.
    wall_s: the wall time of training, in seconds.
    engine: the engine the training step ran.
    params: the trained params (counted).
  """
  value, baseline = best["test"][task.metric], task.baselines["test"]
  maximize = bool(getattr(task, "maximize", False))
  return {
      "task": task.name, "cell": config["cell"], "status": status,
      "metric": task.metric, "units": task.units, "maximize": maximize,
      "tiebreak": getattr(task, "tiebreak", None),
      "best": dict(best), "final": dict(final),
      "baselines": {split: float(task.baselines[split]) for split in SPLITS},
      "baseline_name": task.baseline_name,
      "beats_baseline": bool(value > baseline if maximize else value < baseline),
      "published": published(task),
      "steps": final["step"], "wall_s": round(wall_s, 2), "engine": engine,
      "num_params": int(sum(x.size for x in jax.tree_util.tree_leaves(params))),
      "jax": jax.__version__, "backend": jax.default_backend(),
      "task_info": _jsonable(task.info), "config": config,
  }


def published(task: Any) -> list[dict[str, Any]]:
  """The published results of `task.info["published"]`, each as `{"model", "value", "source"}`
  (and whatever else the task records of it); entries without a value are left out.

  A task names the model `"model"` or `"method"`, and gives its value of `task.metric`
  as `"value"` or under the metric's name (`"accuracy"`).

  Args:
    task: the task.
  """
  rows = []
  for entry in (getattr(task, "info", None) or {}).get("published") or ():
    value = entry.get("value", entry.get(task.metric))
    if value is None:
      continue
    rows.append({**entry, "model": str(entry.get("model", entry.get("method", "?"))),
                 "value": float(value), "source": str(entry.get("source", ""))})
  return rows


def result_lines(summary: Mapping[str, Any]) -> list[str]:
  """The last lines `rnnjax train` prints: the final state's metrics, then the reported one's.

  The last line names the step picked by the validation metric, its test metric
  and the baseline's, with units, and whether it beats the baseline. A task with
  published results gets a line of them before it (short tags; sources in
  summary.json).

  Args:
    summary: from `summary`.
  """
  metric, best, final = summary["metric"], summary["best"], summary["final"]
  unit = f" {summary['units']}" if summary["units"] else ""
  baseline = summary["baselines"]["test"]
  verdict = "beats" if summary["beats_baseline"] else "does NOT beat"
  stopped = "; stopped early" if summary["status"] == "early_stopped" else ""
  tie = summary.get("tiebreak")
  tie = f", ties broken by val {tie} {best['val'][tie]:.4g}" if tie in best["val"] else ""
  refs = [f"{r['model']} {r['value']:.4g}{unit}" + (f" [{r['tag']}]" if r.get("tag") else "")
          for r in summary.get("published") or ()]
  return [
      f"final step {final['step']}: val {metric} {final['val'][metric]:.4g}{unit}, "
      f"test {metric} {final['test'][metric]:.4g}{unit}{stopped}",
      *([f"published test {metric} (sources in summary.json): {', '.join(refs)}"] if refs
        else []),
      f"test {metric} {best['test'][metric]:.4g}{unit} at step {best['step']} (picked by val "
      f"{metric} {best['val'][metric]:.4g}{unit}{tie})  vs  {summary['baseline_name']} baseline "
      f"{baseline:.4g}{unit}  ({verdict} the baseline; {summary['wall_s']:.0f} s)",
  ]


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
