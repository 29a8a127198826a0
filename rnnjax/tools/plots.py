"""The plots of a run of `rnnjax train`: `loss.png` and, for the forecasting tasks, `forecast.png`.

`loss.png` answers "did it learn, and when did it start to overfit?": the
training loss and, below it on the same steps, the validation metric with the
baseline's as a horizontal line and the step the run picked by it. `forecast.png`
answers "how good is the forecast?": the validation and test ranges zoomed in, the
truth, the model's one-step forecast and the baseline's, each with its RMSE in
the legend, in years and the series' units. matplotlib is imported only to draw
(`pip install 'rnnjax[plots]'`).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def read_records(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """The records of a `metrics.jsonl` (one JSON object a line; blank lines skipped).

  Args:
    path: the file.
  """
  lines = pathlib.Path(path).read_text().splitlines()
  return [json.loads(line) for line in lines if line.strip()]


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def loss_plot(path: str | pathlib.Path, records: Sequence[Mapping[str, Any]], *, metric: str,
              units: str, loss_units: str, baseline: float, baseline_name: str,
              best_step: int | None = None, title: str = "") -> pathlib.Path:
  """Training loss (top) and validation metric (bottom) over the steps, with the baseline.

  Args:
    path: the PNG to write.
    records: the records of `metrics.jsonl`: training ones with `train/loss`,
      evaluations with `val/{metric}`.
    metric: the validation metric's name (e.g. "rmse").
    units: the metric's unit (e.g. "ppm").
    loss_units: the training loss's unit (e.g. "squared normalised units").
    baseline: the baseline's metric on the validation split (a horizontal line).
    baseline_name: what the baseline is (e.g. "persistence").
    best_step: the step picked by the validation metric (marked), if any.
    title: the figure's title.
  """
  plt = _pyplot()
  train = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
  key = f"val/{metric}"
  val = [(r["step"], r[key]) for r in records if key in r]
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
  if train:
    top.plot(*zip(*train, strict=True), color="tab:blue", label="training loss")
    if all(v > 0 for _, v in train):
      top.set_yscale("log")
  top.set_ylabel(_labelled("training loss", loss_units))
  top.legend(loc="best")
  if val:
    bottom.plot(*zip(*val, strict=True), color="tab:red", marker="o", ms=3,
                label=f"validation {metric}")
  bottom.axhline(baseline, color="gray", ls="--", lw=1,
                 label=f"{baseline_name} baseline ({_number(baseline, units)})")
  if best_step is not None:
    chosen = [v for s, v in val if s == best_step]
    if chosen:
      bottom.plot([best_step], chosen[-1:], "k*", ms=12,
                  label=f"picked: step {best_step} ({_number(chosen[-1], units)})")
  bottom.set_ylabel(_labelled(f"validation {metric}", units))
  bottom.set_xlabel("training step")
  bottom.legend(loc="best")
  if title:
    top.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return pathlib.Path(path)


def forecast_plot(path: str | pathlib.Path, details: Mapping[str, Mapping[str, Any]], *,
                  label: str, baseline_name: str,
                  units: str, context: int | None = None, title: str = "") -> pathlib.Path:
  """The held-out ranges zoomed in: truth, the model's and the baseline's one-step forecasts.

  The legend gives each forecast's RMSE on each range (`rmse_of`).

  Args:
    path: the PNG to write.
    details: per split ("val", "test"), the `details` of `task.evaluate(..., split)`:
      `time` (in years), `truth`, `forecast`, `baseline_forecast` (arrays over the
      series from its start, at least to the split's end), and `start`, `end` (the
      scored range, `end` exclusive).
    label: the model's name in the legend (e.g. "lstm").
    baseline_name: the baseline's name (e.g. "persistence").
    units: the series' unit (the y axis).
    context: values shown before the first held-out one (default: as many as the
      held-out ranges hold together, at most 60).
    title: the figure's title.
  """
  plt = _pyplot()
  splits = [s for s in ("val", "test") if s in details]
  # Each split's arrays run from the series' start to the split's end: the longest has them all.
  longest = max((details[s] for s in splits), key=lambda d: len(d["truth"]))
  time = np.asarray(longest["time"], np.float64)
  truth = np.asarray(longest["truth"], np.float64)
  start = min(int(details[s]["start"]) for s in splits)
  end = max(int(details[s].get("end", len(details[s]["truth"]))) for s in splits)
  if context is None:
    context = min(60, end - start)
  lo = max(0, start - context)
  fig, ax = plt.subplots(figsize=(10, 5.5))
  ax.plot(time[lo:end], truth[lo:end], color="black", lw=1.2, label="truth")
  colours = {"val": "tab:orange", "test": "tab:green"}
  names = {"val": "validation", "test": "test"}

  def legend(who: str, key: str) -> str:
    scores = ", ".join(f"{names[s]} {_number(rmse_of(details[s], key), units)}" for s in splits)
    return f"{who} one-step forecast (RMSE: {scores})"

  for i, split in enumerate(splits):
    d = details[split]
    a, b = int(d["start"]), int(d.get("end", len(d["truth"])))
    ax.axvspan(time[a] - _half_step(time, a), time[b - 1] + _half_step(time, b - 1),
               color=colours[split], alpha=0.08)
    ax.plot(time[a:b], np.asarray(d["forecast"], np.float64)[a:b], color="tab:red", lw=1.4,
            label=None if i else legend(label, "forecast"))
    ax.plot(time[a:b], np.asarray(d["baseline_forecast"], np.float64)[a:b], color="tab:blue",
            lw=1, ls="--", label=None if i else legend(baseline_name, "baseline_forecast"))
    ax.text(time[a], 1.0, f" {names[split]}", transform=ax.get_xaxis_transform(), va="top",
            color=colours[split])
  ax.set_xlabel("year")
  ax.set_ylabel(units or "value")
  ax.set_xlim(time[lo], time[end - 1] + _half_step(time, end - 1))
  if title:
    ax.set_title(title)
  ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return pathlib.Path(path)


def _labelled(name: str, units: str) -> str:
  """An axis label: the name, and the unit below it in brackets (if there is one)."""
  return f"{name}\n({units})" if units else name


def _number(value: float, units: str) -> str:
  return f"{value:.4g} {units}" if units else f"{value:.4g}"


def _half_step(time: np.ndarray, i: int) -> float:
  """Half the spacing of the time axis at index `i`."""
  j = i + 1 if i + 1 < len(time) else i - 1
  return abs(float(time[j] - time[i])) / 2 if j >= 0 else 0.0


def rmse_of(details: Mapping[str, Any], forecast_key: str) -> float:
  """The RMSE of `details[forecast_key]` against `details["truth"]` over the scored range.

  Args:
    details: the `details` of `task.evaluate(..., split)` of a forecasting task.
    forecast_key: "forecast" (the model's) or "baseline_forecast".
  """
  truth = np.asarray(details["truth"], np.float64)
  a, b = int(details["start"]), int(details.get("end", len(truth)))
  err = np.asarray(details[forecast_key], np.float64)[a:b] - truth[a:b]
  return float(np.sqrt(np.mean(err**2)))
