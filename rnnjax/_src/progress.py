"""`fit`'s progress display: a rich bar on a terminal or in a notebook, plain lines elsewhere."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from typing import Any

_RATE = "train/steps_per_s"
_LOSS = "train/loss"


class ProgressBar:
  """The progress of a `fit` run: step, bar, percentage, elapsed time, ETA, steps/s, metrics.

  On a terminal (or in a Jupyter notebook with ipywidgets) it is a live bar drawn
  with rich (a dependency of Flax, so installed already), over two lines that fit
  80 columns:

  ```text
  step 500/1500 ━━━━━━╸━━━━━━━━━━━━━  33% 0:00:05 ETA 10s 95.2 steps/s
  loss 1.2345 nats  val/bits_per_char 1.9 bits per character
  ```

  When the stream is not a terminal (a CI log, a file), it prints one plain line per
  record of the run instead, which stays readable in logs:

  `step 500/1500  loss 1.2345 nats  95.2 steps/s  ETA 10s  val/bits_per_char 1.9 bits per
  character`.

  It shows the latest training loss (`train/loss`, as "loss") and the latest value of
  every validation metric (`val/...`). Steps per second and the ETA come from the
  rate `fit` records (`train/steps_per_s`), which leaves out the first call's
  compilation. Pass one to `fit(progress=...)` to name units; `progress=True` makes
  one without.

  Args:
    units: the unit of each metric, by its name as `fit` records it (`"train/loss"`,
      `"val/rmse"`) or without its prefix (`"loss"`, `"rmse"`); for example
      `{"loss": "nats", "bits_per_char": "bits per character"}`. Metrics without one
      are shown as bare numbers.
    stream: where to draw (default: `sys.stderr` when the run starts).
  """

  def __init__(self, units: Mapping[str, str] | None = None, stream: Any = None):
    self.units = dict(units or {})
    self.stream = stream
    self._total, self._latest, self._rich = 0, {}, None

  def start(self, total: int, step: int) -> None:
    """Starts the display of a run of `total` steps, at `step`.

    Args:
      total: the number of steps of the run.
      step: the step it starts from (a resumed run starts past 0).
    """
    self._total, self._latest = int(total), {}
    stream = self.stream if self.stream is not None else sys.stderr
    self._out = stream
    console = _rich_console(stream)
    if console is not None:
      self._rich = _rich_bar(console)
      self._task = self._rich.add_task("fit", total=self._total, completed=int(step),
                                       eta="?", rate="?")
      self._rich.start()

  def update(self, step: int, scalars: Mapping[str, float]) -> None:
    """Moves to `step`, with the metrics recorded there (if any) as the latest.

    Args:
      step: the global step reached.
      scalars: what the run recorded at this step (empty if nothing): `train/loss`,
        `train/steps_per_s`, `val/...` and others (others are not shown).
    """
    self._latest.update({k: float(v) for k, v in scalars.items()})
    rate = self._latest.get(_RATE)
    eta = "?" if not rate else _seconds((self._total - step) / rate)
    speed = "?" if not rate else f"{rate:.1f}"
    if self._rich is not None:
      self._rich.metrics = "  ".join(self._shown())
      self._rich.update(self._task, completed=int(step), eta=eta, rate=speed)
    elif scalars and (_LOSS in scalars or any(k.startswith("val/") for k in scalars)):
      shown = self._shown()
      loss = [shown.pop(0)] if _LOSS in self._latest else []
      width = len(str(self._total))
      parts = [f"step {step:>{width}}/{self._total}", *loss, f"{speed} steps/s", f"ETA {eta}",
               *shown]
      self._out.write("  ".join(parts) + "\n")
      self._out.flush()

  def close(self) -> None:
    """Ends the display (the bar stays on screen as it was last drawn)."""
    if self._rich is not None:
      self._rich.stop()
      self._rich = None

  def _shown(self) -> list[str]:
    """`loss 1.23 nats`, then `val/rmse 13.6 ppm` for each validation metric."""
    names = [k for k in (_LOSS,) if k in self._latest]
    names += sorted(k for k in self._latest if k.startswith("val/"))
    out = []
    for name in names:
      unit = self.units.get(name, self.units.get(name.split("/", 1)[-1], ""))
      label = "loss" if name == _LOSS else name
      out.append(f"{label} {self._latest[name]:.5g}" + (f" {unit}" if unit else ""))
    return out


def _rich_console(stream: Any) -> Any:
  """A rich `Console` on `stream` if it is a terminal or a notebook's output; else None."""
  try:
    tty = bool(stream.isatty())
  except (AttributeError, ValueError, OSError):
    tty = False
  from rich.console import Console

  width = None
  if tty:
    try:
      width = os.get_terminal_size(stream.fileno()).columns or None
    except (AttributeError, ValueError, OSError):
      pass
  console = Console(file=stream, width=width, force_terminal=tty or None)
  # In a notebook, rich draws its live display with ipywidgets (and shows nothing without).
  notebook = console.is_jupyter and importlib.util.find_spec("ipywidgets") is not None
  if not (tty or notebook) or console.is_dumb_terminal:
    return None
  return console


def _rich_bar(console: Any) -> Any:
  """A rich `Progress`: the bar's line, then a line of metrics (its `metrics` attribute)."""
  from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
  from rich.text import Text

  class TwoLines(Progress):
    metrics = ""

    def get_renderables(self):
      yield self.make_tasks_table(self.tasks)
      if self.metrics:
        yield Text(self.metrics, no_wrap=False)

  return TwoLines(
      TextColumn("step {task.completed}/{task.total}", markup=False), BarColumn(bar_width=20),
      TaskProgressColumn(), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}", markup=False),
      TextColumn("{task.fields[rate]} steps/s", markup=False),
      console=console, refresh_per_second=4)


def _seconds(s: float) -> str:
  s = max(0, round(s))
  return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def as_progress(fn: str, progress: Any) -> ProgressBar | None:
  """`fit`'s `progress` argument as a display (or None for none)."""
  if isinstance(progress, bool):
    return ProgressBar() if progress else None
  if all(callable(getattr(progress, m, None)) for m in ("start", "update", "close")):
    return progress
  raise TypeError(f"{fn}: `progress` must be a bool or an rnnjax.ProgressBar, got "
                  f"{type(progress).__name__}.")
