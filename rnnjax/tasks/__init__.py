"""Tasks: real and synthetic sequence problems, each a `Task` of batches, loss and evaluation.

`TASKS` maps the command-line names to the factories; `get_task(name, **kwargs)`
calls one. Every task scores two fixed held-out splits, `SPLITS` = ("val", "test"),
carved from its data before training.

Example:
  >>> from rnnjax import tasks
  >>> sorted(tasks.TASKS)
  ['adding', 'co2', 'copy', 'shakespeare', 'sunspots', 'text']
  >>> task = tasks.get_task("sunspots", window=20)
  >>> task.metric, task.units, task.baseline_name
  ('rmse', 'sunspot number', 'persistence')
  >>> {split: round(value, 2) for split, value in task.baselines.items()}
  {'val': 34.85, 'test': 30.83}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rnnjax.tasks.base import SPLITS as SPLITS
from rnnjax.tasks.base import Batch as Batch
from rnnjax.tasks.base import Predict as Predict
from rnnjax.tasks.base import Task as Task
from rnnjax.tasks.base import classification_cross_entropy as classification_cross_entropy
from rnnjax.tasks.base import masked_cross_entropy as masked_cross_entropy
from rnnjax.tasks.base import masked_mse as masked_mse
from rnnjax.tasks.forecast import Series as Series
from rnnjax.tasks.forecast import co2_task as co2_task
from rnnjax.tasks.forecast import load_co2 as load_co2
from rnnjax.tasks.forecast import load_sunspots as load_sunspots
from rnnjax.tasks.forecast import sunspots_task as sunspots_task
from rnnjax.tasks.shakespeare import load_shakespeare as load_shakespeare
from rnnjax.tasks.shakespeare import shakespeare_task as shakespeare_task
from rnnjax.tasks.synthetic import adding_task as adding_task
from rnnjax.tasks.synthetic import copy_task as copy_task
from rnnjax.tasks.text import decode as decode
from rnnjax.tasks.text import encode as encode
from rnnjax.tasks.text import stdlib_corpus as stdlib_corpus
from rnnjax.tasks.text import text_task as text_task
from rnnjax.tasks.uea import UEA_DATASETS as UEA_DATASETS
from rnnjax.tasks.uea import uea_task as uea_task

TASKS: dict[str, Callable[..., Task]] = {
    "adding": adding_task,
    "co2": co2_task,
    "copy": copy_task,
    "shakespeare": shakespeare_task,
    "sunspots": sunspots_task,
    "text": text_task,
}


def get_task(name: str, **kwargs: Any) -> Task:
  """The task called `name` in `TASKS`, built with the factory's keyword arguments `kwargs`.

  `"uea:NAME"` is `uea_task(NAME, **kwargs)`, a UEA/UCR archive dataset bundled with aeon
  (NAME one of `UEA_DATASETS`; needs `pip install "rnnjax[uea]"`).

  Raises:
    ValueError: if `name` is not a task's name (the message lists them).
  """
  if isinstance(name, str) and name.startswith("uea:"):
    return uea_task(name[len("uea:"):], **kwargs)
  if name not in TASKS:
    raise ValueError(
        f"rnnjax.tasks.get_task: unknown task {name!r}; choose one of: "
        f"{', '.join(sorted(TASKS))}.")
  return TASKS[name](**kwargs)


__all__ = (
    "SPLITS",
    "TASKS",
    "UEA_DATASETS",
    "Batch",
    "Predict",
    "Series",
    "Task",
    "adding_task",
    "classification_cross_entropy",
    "co2_task",
    "copy_task",
    "decode",
    "encode",
    "get_task",
    "load_co2",
    "load_shakespeare",
    "load_sunspots",
    "masked_cross_entropy",
    "masked_mse",
    "shakespeare_task",
    "stdlib_corpus",
    "sunspots_task",
    "text_task",
    "uea_task",
)
