"""How evaluations are ranked: by one metric, or by several with ties broken in order.

`fit(best_metric=..., best_mode=...)` and `Checkpointer(best_metric=..., best_mode=...)`
take one metric name and mode, or a sequence of each: the evaluations are then
compared lexicographically, each later metric breaking the ties of the ones before.
On a small validation split, accuracy ties often (JapaneseVowels' 27 validation
sequences allow 28 values), and cross-entropy breaks the tie towards the model that
is surer of its right answers: `best_metric=("accuracy", "cross_entropy")`,
`best_mode=("max", "min")`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


class Ranking:
  """An order on dicts of metrics.

  Args:
    fn: the calling function's name, for messages.
    metric: a metric name, or a non-empty sequence of them (the first decides, the
      next break its ties, and so on).
    mode: "min" (lower is better) or "max", or one of them per metric.
    prefix: prepended to each name that does not already start with it (`fit`
      ranks its `val/` metrics).
  """

  def __init__(self, fn: str, metric: str | Sequence[str], mode: str | Sequence[str],
               prefix: str = ""):
    names = (metric,) if isinstance(metric, str) else tuple(metric)
    if not names or not all(isinstance(n, str) for n in names):
      raise ValueError(f"{fn}: `best_metric` must be a metric name (a str) or a non-empty "
                       f"sequence of them, got {metric!r}.")
    modes = (mode,) * len(names) if isinstance(mode, str) else tuple(mode)
    if isinstance(mode, str) and mode not in ("min", "max"):
      raise ValueError(f"{fn}: `best_mode` must be 'min' or 'max', got {mode!r}.")
    if len(modes) != len(names) or any(m not in ("min", "max") for m in modes):
      raise ValueError(
          f"{fn}: `best_mode` must be 'min' or 'max', or a sequence of them, one per metric "
          f"of best_metric={metric!r}; got {mode!r}.")
    self.names = tuple(n if n.startswith(prefix) else prefix + n for n in names)
    self.modes = modes

  @property
  def first(self) -> str:
    """The deciding metric."""
    return self.names[0]

  def missing(self, metrics: Mapping[str, float]) -> list[str]:
    """The ranked names that `metrics` lacks."""
    return [n for n in self.names if n not in metrics]

  def key(self, metrics: Mapping[str, float]) -> tuple[float, ...]:
    """A sort key: smaller is better; a missing or non-finite value ranks last."""
    out = []
    for name, mode in zip(self.names, self.modes, strict=True):
      value = metrics.get(name)
      ok = value is not None and np.isfinite(value)
      out.append(float(value if mode == "min" else -value) if ok else np.inf)
    return tuple(out)

  def better(self, new: Mapping[str, float], old: Mapping[str, float] | None) -> bool:
    """Whether `new` ranks strictly before `old` (any `new` with a finite deciding metric
    beats None)."""
    if not np.isfinite(self.key(new)[0]):
      return False
    return old is None or self.key(new) < self.key(old)
