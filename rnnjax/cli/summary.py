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
  return {
      "task": task.name, "cell": config["cell"], "status": status,
      "metric": task.metric, "units": task.units,
      "best": dict(best), "final": dict(final),
      "baselines": {split: float(task.baselines[split]) for split in SPLITS},
      "baseline_name": task.baseline_name,
      "beats_baseline": bool(best["test"][task.metric] < task.baselines["test"]),
      "steps": final["step"], "wall_s": round(wall_s, 2), "engine": engine,
      "num_params": int(sum(x.size for x in jax.tree_util.tree_leaves(params))),
      "jax": jax.__version__, "backend": jax.default_backend(),
      "task_info": _jsonable(task.info), "config": config,
  }


def result_lines(summary: Mapping[str, Any]) -> list[str]:
  """The last lines `rnnjax train` prints: the final state's metrics, then the reported one's.

  The last line names the step picked by the validation metric, its test metric
  and the baseline's, with units, and whether it beats the baseline.

  Args:
    summary: from `summary`.
  """
  metric, best, final = summary["metric"], summary["best"], summary["final"]
  unit = f" {summary['units']}" if summary["units"] else ""
  baseline = summary["baselines"]["test"]
  verdict = "beats" if summary["beats_baseline"] else "does NOT beat"
  stopped = "; stopped early" if summary["status"] == "early_stopped" else ""
  return [
      f"final step {final['step']}: val {metric} {final['val'][metric]:.4g}{unit}, "
      f"test {metric} {final['test'][metric]:.4g}{unit}{stopped}",
      f"test {metric} {best['test'][metric]:.4g}{unit} at step {best['step']} (picked by val "
      f"{metric} {best['val'][metric]:.4g}{unit})  vs  {summary['baseline_name']} baseline "
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
