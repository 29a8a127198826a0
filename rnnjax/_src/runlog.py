"""What `fit` writes as it runs, checkpoints aside: its `out_dir`, log and progress line.

`out_dir/metrics.jsonl` gets one JSON record a line (`append_jsonl`); a resumed
run first drops the records past the step it starts from (`trim_jsonl`), which
it writes again, and sets a damaged file aside rather than lose it. A fresh run
never writes into an earlier run's `out_dir` (`refuse_an_earlier_run`), which
`open_out_dir` makes, with the run's `Checkpointer`. `Progress` is the one-line
display on stderr.
"""

from __future__ import annotations

import json
import pathlib
import sys
import warnings

from rnnjax._src.checkpoint import Checkpointer


class Progress:
  """A one-line progress display: step, loss, steps/s, ETA. Quiet when disabled."""

  def __init__(self, total: int, enabled: bool, stream=None):
    self.total, self.enabled = total, enabled
    self.stream = stream or sys.stderr
    self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()

  def update(self, step: int, loss: float, rate: float | None, extra: str = "") -> None:
    if not self.enabled:
      return
    eta = "?" if not rate else _fmt_seconds((self.total - step) / rate)
    speed = "?" if not rate else f"{rate:.1f}"
    width = len(str(self.total))
    line = (f"step {step:>{width}}/{self.total}  loss {loss:.5g}  {speed} steps/s  "
            f"ETA {eta}{extra}")
    if self.tty:
      self.stream.write("\r" + line.ljust(79))
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def close(self) -> None:
    if self.tty:
      self.stream.write("\n")
      self.stream.flush()


def _fmt_seconds(s: float) -> str:
  s = max(0, round(s))
  return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def append_jsonl(path: pathlib.Path | None, record: dict) -> None:
  if path is None:
    return
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


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
  ckpt = out / "checkpoint"
  found = [name for name, there in (
      ("metrics.jsonl", (out / "metrics.jsonl").exists()),
      ("checkpoint", ckpt.exists() and (not ckpt.is_dir() or any(ckpt.iterdir())))) if there]
  if found:
    raise ValueError(
        f"{fn}: `out_dir` {out} already holds {' and '.join(found)} of an earlier run, which "
        "fit never removes or overwrites. Pass resume=True to continue that run, or use "
        "another (or an empty) `out_dir`.")


def open_out_dir(fn: str, out: pathlib.Path | None, keep: int,
                 primary: bool) -> tuple[Checkpointer | None, pathlib.Path | None]:
  """Makes `out` if need be: `(its Checkpointer, metrics.jsonl path)`, None without `out`.

  The path is None on every process but the first, which alone writes the log.
  """
  if out is None:
    return None, None
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as err:
    raise ValueError(f"{fn}: cannot make `out_dir` {out}: {err.strerror or err}. "
                     "Pass another `out_dir`.") from err
  return Checkpointer(out / "checkpoint", keep=keep), (out / "metrics.jsonl" if primary else None)
