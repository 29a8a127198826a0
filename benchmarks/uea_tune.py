"""Validation-only tuning of `rnnjax train --task uea:JapaneseVowels`'s defaults.

Each configuration of a small grid (today's defaults, and one or two changes from them) is
trained with the recipe of `rnnjax train` (`rnnjax.runs`: `make_model`, `make_optimizer`,
`make_loss`, `make_predict`, then `rnnjax.fit`) on the training part of
`rnnjax.tasks.uea_task(NAME, seed=S)` for validation split seeds S = 1 and 2 (the command
line uses split seed 0, which is left alone) and training seeds 0, 1 and 2. A run is scored
by its VALIDATION accuracy and cross-entropy at the end of training: nothing is selected on
the split being scored (no best checkpoint), and the test split is never evaluated. Prints
one JSON line per run, then a Markdown table: per configuration, the mean ± sample standard
deviation of the validation accuracy over the 6 (split, training seed) runs, the mean
validation cross-entropy and the wall time (training with compilation, per run).

  python benchmarks/uea_tune.py                               # the whole grid
  python benchmarks/uea_tune.py --configs defaults mean       # a subset
  python benchmarks/uea_tune.py --json-out tune.jsonl         # also keep the JSON lines
  python benchmarks/uea_tune.py --table tune.jsonl            # the table of earlier runs

Needs aeon (`pip install "rnnjax[uea]"`).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
from typing import Any

import _runs  # benchmarks/_runs.py, beside this script
import jax

import rnnjax
from rnnjax import runs, tasks

SPLIT_SEEDS = (1, 2)  # Validation splits to tune on; split seed 0 is the command line's.
TRAIN_SEEDS = (0, 1, 2)

# The command line's config for `--task uea:NAME` today: the task defaults (`info["defaults"]`:
# GRU, hidden 64, readout "last", 2000 steps, batch 32, lr 0.01) and the flags' defaults.
BASE = dict(cell="gru", hidden=64, layers=1, dropout=0.0, readout="last", steps=2000,
            batch_size=32, lr=1e-2, clip=1.0, optimizer="adam", weight_decay=0.0,
            steps_per_call=10, engine="auto", init="default", dtype="float32")

# Each configuration changes only what it names; everything else is `BASE`.
GRID: dict[str, dict[str, Any]] = {
    "defaults": {},
    "mean": dict(readout="mean"),
    "hidden128": dict(hidden=128),
    "layers2": dict(layers=2),
    "lr3e-3_3000": dict(lr=3e-3, steps=3000),
    "lstm": dict(cell="lstm"),
    "layers2_drop0.2": dict(layers=2, dropout=0.2),
    "mean_hidden128": dict(readout="mean", hidden=128),
}


def config_of(name: str) -> dict[str, Any]:
  """The full config of the grid's configuration `name`: `BASE` with its changes.

  Args:
    name: a key of `GRID`.
  """
  return {**BASE, **GRID[name]}


class _Compiled:
  """The model, training step and prediction of one configuration, built once for its runs."""

  def __init__(self, config: dict[str, Any], task: tasks.Task):
    self.model = runs.make_model(config, task)
    self.optimizer = runs.make_optimizer(config)
    self.step_fn = rnnjax.make_train_step(runs.make_loss(config, task, self.model),
                                          self.optimizer,
                                          steps_per_call=config["steps_per_call"])
    self.predict = runs.make_predict(self.model)


def run_one(config: dict[str, Any], built: _Compiled, task: tasks.Task, seed: int) -> dict:
  """Trains one run as `rnnjax train --seed SEED` would, and scores its final params on "val".

  Args:
    config: the configuration (`config_of`).
    built: its model, step and prediction (`_Compiled`).
    task: the task of one validation split.
    seed: the training seed (initialisation, batches and dropout keys, split as the
      command line splits them).
  """
  k_init, k_data, k_train = jax.random.split(jax.random.PRNGKey(seed), 3)
  state = rnnjax.train_state(built.model.init(k_init), built.optimizer, k_train)
  batch_fn = jax.jit(lambda s: task.train_batch(jax.random.fold_in(k_data, s),
                                                config["batch_size"]))
  last = _LastLoss()
  start = time.perf_counter()
  result = rnnjax.fit(state, built.step_fn, batch_fn, num_steps=config["steps"],
                      steps_per_call=config["steps_per_call"], writers=[last], progress=False)
  params = result.state.params
  # The validation split only: the test split is never scored here.
  metrics, _ = task.evaluate(lambda xs, lengths=None: built.predict(params, xs, lengths), "val")
  wall = time.perf_counter() - start
  return {"status": result.status, "val_accuracy": metrics["accuracy"],
          "val_cross_entropy": metrics["cross_entropy"],
          "final_train_loss": last.loss, "wall_s": round(wall, 2)}


class _LastLoss:
  """A writer for `fit` that keeps the last training loss it was given (`loss`, or None)."""

  def __init__(self):
    self.loss = None

  def write_scalars(self, step: int, scalars: dict) -> None:
    if "train/loss" in scalars:
      self.loss = float(scalars["train/loss"])

  def write_hparams(self, hparams: dict) -> None:
    pass

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def tune(names: list[str], dataset: str, json_out: str | None) -> list[dict]:
  """Runs every configuration of `names` on every (split, training seed); returns the rows.

  Args:
    names: keys of `GRID`.
    dataset: the UEA dataset, e.g. "JapaneseVowels".
    json_out: a file to append each row to as a JSON line, or None.
  """
  task_of = {s: tasks.uea_task(dataset, seed=s) for s in SPLIT_SEEDS}
  rows = []
  for name in names:
    config = config_of(name)
    built = _Compiled(config, task_of[SPLIT_SEEDS[0]])  # The loss is the same on every split.
    for split_seed in SPLIT_SEEDS:
      for seed in TRAIN_SEEDS:
        row = {"config": name, "dataset": dataset, "split_seed": split_seed, "seed": seed,
               **run_one(config, built, task_of[split_seed], seed),
               "changes": GRID[name]}
        rows.append(row)
        _runs.emit(row, json_out)
  return rows


def table(rows: list[dict]) -> str:
  """The Markdown table of `rows`: one line per configuration, over its runs.

  Args:
    rows: the rows of `tune` (or read back from its JSON lines).
  """
  lines = ["| config | changes from the defaults | runs | val accuracy (mean ± std) | "
           "per split seed | val CE (mean) | wall s per run (mean) |",
           "|---|---|---:|---:|---|---:|---:|"]
  for name in dict.fromkeys(r["config"] for r in rows):
    ok = [r for r in rows if r["config"] == name and r["status"] == "completed"]
    if not ok:
      lines.append(f"| {name} | | 0 | failed | | | |")
      continue
    acc = [r["val_accuracy"] for r in ok]
    spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
    per_split = ", ".join(
        f"{s}: {statistics.mean(r['val_accuracy'] for r in ok if r['split_seed'] == s):.3f}"
        for s in dict.fromkeys(r["split_seed"] for r in ok))
    changes = ", ".join(f"{k}={v}" for k, v in ok[0]["changes"].items()) or "(none)"
    lines.append(
        f"| {name} | {changes} | {len(ok)} | {statistics.mean(acc):.4f} ± {spread:.4f} | "
        f"{per_split} | {statistics.mean(r['val_cross_entropy'] for r in ok):.4f} | "
        f"{statistics.mean(r['wall_s'] for r in ok):.1f} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  """The command line of this script; returns the exit code.

  Args:
    argv: the arguments (None: `sys.argv[1:]`).
  """
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", nargs="+", default=list(GRID), choices=list(GRID),
                      metavar="NAME", help=f"a subset of {', '.join(GRID)}")
  parser.add_argument("--dataset", default="JapaneseVowels")
  _runs.add_row_flags(parser)
  args = parser.parse_args(argv)
  if args.table:
    rows = _runs.read_rows(args.table)
  else:
    if args.json_out:
      pathlib.Path(args.json_out).write_text("")
    start = time.perf_counter()
    rows = tune(args.configs, args.dataset, args.json_out)
    print(f"\ntotal wall: {time.perf_counter() - start:.0f} s")
  print()
  print(table(rows))
  return 0 if all(r["status"] == "completed" for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
