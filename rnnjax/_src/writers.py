"""Metric writers: where `fit`'s records go, with the methods of `clu.metric_writers`.

A writer is any object with `write_scalars(step, scalars)`, `write_hparams(hparams)`,
`flush()` and `close()`, so a CLU, TensorBoard or W&B writer plugs into `fit(writers=...)`
unchanged. Two are built in: `JsonlWriter`, one flat JSON record a line (what `fit` writes
to `out_dir/metrics.jsonl`), and `TensorBoardWriter`, on tensorboardX (the optional extra
`rnnjax[tensorboard]`).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

_METHODS = ("write_scalars", "write_hparams", "flush", "close")


def check_writers(fn: str, writers: Any) -> tuple[Any, ...]:
  """`writers` as a tuple, each checked for the four methods of a CLU `MetricWriter`."""
  if isinstance(writers, (str, bytes, Mapping)) or not hasattr(writers, "__iter__"):
    raise TypeError(f"{fn}: `writers` must be a sequence of writers, got "
                    f"{type(writers).__name__}. Pass e.g. writers=[rnnjax.TensorBoardWriter(dir)].")
  writers = tuple(writers)
  for i, writer in enumerate(writers):
    missing = [m for m in _METHODS if not callable(getattr(writer, m, None))]
    if missing:
      raise TypeError(
          f"{fn}: writers[{i}] ({type(writer).__name__}) has no {', '.join(missing)}; a writer "
          f"needs the methods of a clu.metric_writers.MetricWriter: {', '.join(_METHODS)}.")
  return writers


class JsonlWriter:
  """Appends one flat JSON record a line: `{"step": 500, "train/loss": 0.12, ...}`.

  `fit` writes `out_dir/metrics.jsonl` with one. Each record is written and flushed
  at once, so a run killed mid-way leaves every record but possibly the last intact
  (a resumed `fit` sets damaged lines aside). Values are written as floats (NaN and
  infinities as JSON's `NaN` and `Infinity`, which Python's `json` reads back).

  Args:
    path: the file to append to (made if missing, with its parent directory).

  Examples:
    >>> import json, pathlib, tempfile, rnnjax
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> writer = rnnjax.JsonlWriter(path)
    >>> writer.write_scalars(10, {"train/loss": 0.5})
    >>> writer.close()
    >>> json.loads(path.read_text())
    {'step': 10, 'train/loss': 0.5}
  """

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._file = open(self.path, "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Appends `{"step": step, **scalars}` as one line.

    Args:
      step: the global step of the record.
      scalars: metric names to numbers (anything `float()` takes).
    """
    record = {"step": int(step), **{str(k): float(v) for k, v in scalars.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Ignored: the file holds records of steps only (the CLI saves its config in config.json).

    Args:
      hparams: the hyper-parameters (not written).
    """
    del hparams

  def flush(self) -> None:
    """Flushes the file (each record is flushed as it is written already)."""
    if not self._file.closed:
      self._file.flush()

  def close(self) -> None:
    """Closes the file; writing afterwards is an error."""
    self._file.close()


class TensorBoardWriter:
  """Writes scalars and hyper-parameters as TensorBoard event files, with tensorboardX.

  Needs the optional extra: `pip install "rnnjax[tensorboard]"` (tensorboardX, which
  needs no TensorFlow). Each scalar becomes a TensorBoard scalar under its name (for
  example `train/loss` and `val/rmse`, grouped by their prefix); `write_hparams` records
  the hyper-parameters for TensorBoard's HParams tab.

  Args:
    logdir: the directory of the event files (`tensorboard --logdir` it).
  """

  def __init__(self, logdir: str | os.PathLike):
    try:
      from tensorboardX import SummaryWriter
    except ImportError as err:
      raise ImportError(
          "rnnjax.TensorBoardWriter needs tensorboardX, which is not installed. Install the "
          "optional extra: pip install 'rnnjax[tensorboard]' (or pip install tensorboardX)."
      ) from err
    self.logdir = pathlib.Path(logdir)
    self._writer = SummaryWriter(logdir=str(self.logdir))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Adds each scalar at `step`.

    Args:
      step: the global step.
      scalars: metric names to numbers.
    """
    for name, value in scalars.items():
      self._writer.add_scalar(str(name), float(value), global_step=int(step))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Records `hparams` for TensorBoard's HParams tab (values not numbers or strings as text).

    Args:
      hparams: names to values.
    """
    from tensorboardX.summary import hparams as hparams_summary

    values = {str(k): v if isinstance(v, (bool, int, float, str)) else str(v)
              for k, v in hparams.items()}
    file_writer = self._writer.file_writer
    for summary in hparams_summary(values, {}):
      file_writer.add_summary(summary)

  def flush(self) -> None:
    """Writes what is buffered to the event file."""
    self._writer.flush()

  def close(self) -> None:
    """Flushes and closes the event file."""
    self._writer.close()
