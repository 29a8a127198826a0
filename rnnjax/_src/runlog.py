"""What `fit` records as it runs, checkpoints aside: its `out_dir`, records and writers.

`Records` makes the training records (the mean loss since the last one, the last
gradient norm, the steps per second) and sends every record, training and
evaluation alike, to the writers (`out_dir/metrics.jsonl` through a `JsonlWriter`,
and the user's) and to the progress display. A resumed run first drops the
records of `metrics.jsonl` past the step it starts from (`trim_jsonl`), which it
writes again, and sets a damaged file aside rather than lose it. A fresh run never
writes into an earlier run's `out_dir` (`refuse_an_earlier_run`), which
`open_out_dir` makes, with the run's checkpointers.
"""

from __future__ import annotations

import json
import pathlib
import time
import warnings
from typing import Any

import numpy as np

from rnnjax._src.checkpoint import Checkpointer
from rnnjax._src.ranking import Ranking


class Records:
  """The training records of a run, and where every record goes.

  Args:
    writers: each gets `write_scalars(step, scalars)` for every record.
    bar: the progress display (or None), updated after every call of the step.
    log_every: steps between training records.
    losses: the losses since the last record, as saved with a checkpoint.
  """

  def __init__(self, writers: tuple[Any, ...], bar: Any, log_every: int,
               losses: list[float] | None = None):
    self.writers, self.bar, self.log_every = writers, bar, log_every
    self.losses = list(losses or [])
    self.rate: float | None = None
    self._t_last: float | None = None
    self._s_last = 0

  def call(self, step: int, k: int, num_steps: int, metrics: dict,
           loss: np.ndarray) -> tuple[dict, dict]:
    """After a call of `k` steps reaching `step`: `(this call's metrics, the record or {})`.

    The call's metrics are its mean loss and last gradient norm (and the rate once
    known); a training record, made every `log_every` steps and at `num_steps`, has
    the mean loss since the previous record instead, and goes to the writers.
    """
    self._time(step)
    extra = {}
    if "grad_norm" in metrics:  # A step function of one's own may not report it.
      extra["train/grad_norm"] = float(np.asarray(metrics["grad_norm"]).reshape(-1)[-1])
    if self.rate:
      extra["train/steps_per_s"] = self.rate
    this = {"train/loss": float(np.mean(loss)), **extra}
    if step % self.log_every >= k and step != num_steps:
      return this, {}
    record = {"train/loss": float(np.mean(self.losses)), **extra}
    self.losses.clear()
    self.write(step, record)
    return this, record

  def _time(self, step: int) -> None:
    """Steps per second since the last measure, from the second call on (the first compiles)."""
    now = time.perf_counter()
    if self._t_last is None:
      self._t_last, self._s_last = now, step
    elif now > self._t_last and step - self._s_last >= self.log_every:
      self.rate = (step - self._s_last) / (now - self._t_last)
      self._t_last, self._s_last = now, step

  def write(self, step: int, scalars: dict) -> None:
    for writer in self.writers:
      writer.write_scalars(step, scalars)

  def show(self, step: int, scalars: dict) -> None:
    if self.bar is not None:
      self.bar.update(step, scalars)


def trim_jsonl(path: pathlib.Path, last_step: int) -> None:
  """Drops records past `last_step` (a resumed run writes them again, identically).

  Damaged lines (not UTF-8, not JSON, no integer `step`) are dropped too, but
  the file as it was is first moved aside to `metrics.jsonl.damaged-<n>` (the
  first free `n`), with a warning: nothing of it is lost.
  """
  if not path.exists():
    return
  keep, damaged = [], []
  for number, raw in enumerate(path.read_bytes().splitlines(), 1):
    if not raw.strip():
      continue
    try:
      line = raw.decode("utf-8")
      step = json.loads(line)["step"]
    except (ValueError, TypeError, KeyError, IndexError):  # UnicodeDecodeError is a ValueError.
      step = None
    if isinstance(step, bool) or not isinstance(step, int):
      damaged.append(number)
    elif step <= last_step:
      keep.append(line)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(line + "\n" for line in keep))
  if damaged:
    n = 1
    while (aside := path.with_name(f"{path.name}.damaged-{n}")).exists():
      n += 1
    path.rename(aside)
    warnings.warn(
        f"rnnjax.fit: {path} has {len(damaged)} damaged line(s) (line {damaged[0]} first: not "
        f"a JSON record with an integer step); moved it to {aside} and kept its {len(keep)} "
        f"intact records up to step {last_step}.", stacklevel=3)
  tmp.replace(path)


def refuse_an_earlier_run(fn: str, out: pathlib.Path) -> None:
  """Without `resume`, `fit` starts afresh, and it removes nothing: `out` must hold no run."""
  if out.exists() and not out.is_dir():
    raise ValueError(f"{fn}: `out_dir` must be a directory, but {out} is a file. "
                     "Pass another `out_dir`.")

  def holds(name: str) -> bool:
    d = out / name
    return d.exists() and (not d.is_dir() or any(d.iterdir()))
  found = [name for name, there in (
      ("metrics.jsonl", (out / "metrics.jsonl").exists()),
      ("checkpoint", holds("checkpoint")), ("best", holds("best"))) if there]
  if found:
    raise ValueError(
        f"{fn}: `out_dir` {out} already holds {' and '.join(found)} of an earlier run, which "
        "fit never removes or overwrites. Pass resume=True to continue that run, or use "
        "another (or an empty) `out_dir`.")


def open_out_dir(fn: str, out: pathlib.Path | None, keep: int, best: Ranking | None
                 ) -> tuple[Checkpointer | None, Checkpointer | None]:
  """Makes `out` if need be: `(the newest checkpoints, the best one)`, None where not kept.

  The best checkpoint is kept in `out/best` given a ranking (of `val/` metrics).
  """
  if out is None:
    return None, None
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as err:
    raise ValueError(f"{fn}: cannot make `out_dir` {out}: {err.strerror or err}. "
                     "Pass another `out_dir`.") from err
  best_ckpt = (None if best is None else
               Checkpointer(out / "best", keep=1, best_metric=best.names, best_mode=best.modes))
  return Checkpointer(out / "checkpoint", keep=keep), best_ckpt
