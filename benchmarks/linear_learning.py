"""Learning with the linear recurrent cells against the LSTM, at the same budget.

For each task (the adding problem at T = 200, the monthly CO2 series), the LSTM
gets the task's default hidden size (`rnnjax.cli.TASK_DEFAULTS`), and each linear
cell (minGRU, minLSTM, LRU, RG-LRU) the hidden size whose whole model (the
`sequence_model` that `rnnjax train` builds: cell and read-out) has the parameter
count closest to the LSTM model's. Every cell is then trained with `rnnjax train`
(one subprocess each) with the same steps, batch size, learning rate, schedule,
clipping and seed, and the script reads each run's `summary.json`.

Prints the parameter matching, then a Markdown table: the task's metric on its
held-out set (test MSE at the last step for adding, test RMSE in ppm for CO2),
the task's baseline (always predicting 1 for adding, the better naive forecast
for CO2), the steps and the training wall time (`rnnjax train`'s own, compiling
included). A run that diverges (`rnnjax train` exits with code 3) is recorded as
such, not retried: the same budget for every cell is the point.

  python benchmarks/linear_learning.py                             # adding T=200 and co2
  python benchmarks/linear_learning.py --tasks co2 --cells lstm mingru --json-out co2.jsonl
  python benchmarks/linear_learning.py --steps adding=1000 --steps co2=500   # per task
  python benchmarks/linear_learning.py --steps 200                           # every task
  python benchmarks/linear_learning.py --table a.jsonl b.jsonl    # one table of earlier runs
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import _runs  # benchmarks/_runs.py, beside this script
import jax

import rnnjax
from rnnjax import cli, tasks

TASKS = ("adding", "co2")
CELLS = ("lstm", "mingru", "minlstm", "lru", "rglru")
REFERENCE = "lstm"
METRIC_NAMES = {"mse": "test MSE", "rmse": "test RMSE (ppm)"}


def _steps_overrides(values: list[str] | None) -> dict[str | None, int]:
  """`--steps N` (every task) and `--steps TASK=N`, as {task or None: N}."""
  out: dict[str | None, int] = {}
  for value in values or ():
    task, _, number = value.rpartition("=")
    if task and task not in TASKS:
      raise SystemExit(f"linear_learning: --steps {value}: unknown task {task!r}")
    try:
      steps = int(number)
    except ValueError:
      raise SystemExit(f"linear_learning: --steps {value}: expected N or TASK=N") from None
    if steps <= 0:
      raise SystemExit(f"linear_learning: --steps {value}: must be positive")
    out[task or None] = steps
  return out


def _task(name: str, length: int):
  return tasks.get_task(name, **({"length": length} if name == "adding" else {}))


def count_params(cell: str, hidden: int, task) -> int:
  """Parameters of the model `rnnjax train --cell CELL --hidden HIDDEN` builds for `task`."""
  model = cli.make_model({"cell": cell, "hidden": hidden, "layers": 1, "dropout": 0.0}, task)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  return int(sum(x.size for x in jax.tree_util.tree_leaves(shapes)))


def match_hidden(cell: str, target: int, task, max_hidden: int) -> tuple[int, int]:
  """(hidden, params): the hidden size whose model's count is closest to `target`.

  Counts grow with the hidden size, so this doubles to bracket the target and then
  bisects; ties go to the smaller model.
  """
  count = lambda hidden: count_params(cell, hidden, task)
  high = 1
  while high < max_hidden and count(high) < target:
    high = min(2 * high, max_hidden)
  low = 1 if high == 1 else high // 2
  while high - low > 1:  # Invariant: count(low) < target <= count(high), or high at the cap.
    mid = (low + high) // 2
    low, high = (mid, high) if count(mid) < target else (low, mid)
  candidates = [(h, count(h)) for h in sorted({low, high})]
  hidden, params = min(candidates, key=lambda c: (abs(c[1] - target), c[1]))
  if hidden == max_hidden and params < target:
    print(f"  {cell}: the closest count is at --max-hidden {max_hidden}", file=sys.stderr)
  return hidden, params


def train(task: str, cell: str, hidden: int, config: dict, out: pathlib.Path,
          length: int) -> dict:
  """Runs `rnnjax train` in a subprocess; returns its summary (or the failure)."""
  flags = ["--task", task, "--cell", cell, "--hidden", str(hidden),
           "--steps", str(config["steps"]), "--batch-size", str(config["batch_size"]),
           "--lr", str(config["lr"]), "--seed", str(config["seed"])]
  if task == "adding":
    flags += ["--length", str(length)]
  row, summary = _runs.rnnjax_train(flags, out)
  if summary is not None:
    metric = summary["metric"]
    # The reported model is the one rnnjax train picked by the validation metric.
    best = summary["best"]
    row.update(status="ok", metric=metric, value=best["test"][metric],
               baseline=summary["baselines"]["test"], baseline_name=summary["baseline_name"],
               steps=summary["steps"], best_step=best["step"], wall_s=summary["wall_s"],
               num_params=summary["num_params"], metrics=best["test"],
               backend=summary["backend"], jax=summary["jax"])
  else:
    row.update(steps=config["steps"], backend="?")
  return row


def _fmt(value: float) -> str:
  return f"{value:.4g}"


def table(rows: list[dict]) -> str:
  lines = ["| task | cell | hidden | params | metric | value | baseline | steps | wall s | on |",
           "|---|---|---:|---:|---|---:|---:|---:|---:|---|"]
  for r in rows:
    task = f"adding (T={r['length']})" if r["task"] == "adding" else r["task"]
    if r["status"] == "ok":
      metric = METRIC_NAMES.get(r["metric"], r["metric"])
      value, wall = _fmt(r["value"]), f"{r['wall_s']:.0f}"
      baseline = f"{_fmt(r['baseline'])} ({r['baseline_name']})"
    else:
      metric, value, baseline = "—", f"{r['status']} (exit {r['exit_code']})", "—"
      wall = f"{r['process_s']:.0f}"
    lines.append(f"| {task} | {r['cell']} | {r['hidden']} | {r['params']:,} | {metric} | "
                 f"{value} | {baseline} | {r['steps']} | {wall} | {r['backend']} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
  parser.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS),
                      help=f"cells to train ({REFERENCE} sets the parameter budget either way)")
  parser.add_argument("--steps", action="append", metavar="N|TASK=N",
                      help="training steps for every task, or for one (default: the task's)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--length", type=int, default=200, help="T of the adding problem")
  parser.add_argument("--max-hidden", type=int, default=1 << 16,
                      help="largest hidden size searched when matching parameters")
  parser.add_argument("--out", default="runs/linear_learning",
                      help="directory of the runs (one subdirectory per task and cell)")
  _runs.add_row_flags(parser)
  args = parser.parse_args(argv)
  if _runs.print_table(args, table):
    return 0
  steps = _steps_overrides(args.steps)
  missing = [c for c in args.cells if c in ("lru", "rglru") and not hasattr(rnnjax, c)]
  if missing:
    raise SystemExit(f"linear_learning: this rnnjax has no {', '.join(missing)}")
  if args.json_out:
    pathlib.Path(args.json_out).write_text("")

  rows = []
  start = time.perf_counter()
  for task_name in args.tasks:
    task = _task(task_name, args.length)
    defaults = cli.TASK_DEFAULTS[task_name]
    config = dict(steps=steps.get(task_name, steps.get(None, defaults["steps"])),
                  batch_size=defaults["batch_size"], lr=defaults["lr"], seed=args.seed)
    target = count_params(REFERENCE, defaults["hidden"], task)
    print(f"{task_name}: {REFERENCE} hidden {defaults['hidden']} -> {target:,} parameters; "
          f"{config['steps']} steps, batch {config['batch_size']}, lr {config['lr']}, "
          f"seed {args.seed}", flush=True)
    sizes = {}
    for cell in args.cells:
      if cell == REFERENCE:
        sizes[cell] = (defaults["hidden"], target)
      else:
        sizes[cell] = match_hidden(cell, target, task, args.max_hidden)
      hidden, params = sizes[cell]
      print(f"  {cell:8s} hidden {hidden:4d}: {params:7,d} parameters "
            f"({params - target:+,d})", flush=True)
    for cell in args.cells:
      hidden, params = sizes[cell]
      out = pathlib.Path(args.out) / f"{task_name}-{cell}"
      row = {"task": task_name, "cell": cell, "hidden": hidden, "params": params,
             "reference_params": target, "length": args.length if task_name == "adding" else None,
             "batch_size": config["batch_size"], "lr": config["lr"], "seed": args.seed,
             **train(task_name, cell, hidden, config, out, args.length)}
      if row["status"] == "ok":
        assert row["num_params"] == params, (row["num_params"], params)
        print(f"  {cell:8s} {row['metric']} {_fmt(row['value'])} (baseline "
              f"{_fmt(row['baseline'])}) in {row['wall_s']:.0f} s", flush=True)
      rows.append(row)
      _runs.append_row(row, args.json_out)
  print()
  print(table(rows))
  print(f"\nlinear_learning: {len(rows)} runs in {time.perf_counter() - start:.0f} s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
