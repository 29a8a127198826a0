"""rnnjax's default initialisation against PyTorch's (`--init pytorch`), on the shipped tasks.

Each run is `rnnjax train --init INIT` (validation-selected model, test metric reported
once) in a subprocess: the only difference between the two contenders is how the weights
start. Every other setting is the task's default unless given here.

  default  w_i LeCun normal, w_h orthogonal (per gate), biases 0, LSTM/MGU forget bias 1
  pytorch  every weight and bias uniform in ±1/sqrt(H) (PyTorch's nn.RNN/LSTM/GRU)

Prints one JSON line per run (also appended to OUT/results.jsonl), then a Markdown table
of the test metric (mean over seeds, each seed's value beside it) per task, cell and init.
Every task's metric is lower-better (RMSE, MSE, cross-entropy, bits per character).

  python benchmarks/init_compare.py                                   # co2, sunspots, adding
  python benchmarks/init_compare.py --tasks adding --cells lstm gru --seeds 0 1 --steps 800
  python benchmarks/init_compare.py --tasks copy text --cells lstm gru --steps 1000
  python benchmarks/init_compare.py --table runs/init_compare/results.jsonl
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

import _runs  # benchmarks/_runs.py, beside this script

TASKS = ("co2", "sunspots", "adding", "copy", "text")
CELLS = ("lstm", "gru", "elman", "mgu")
INITS = ("default", "pytorch")
# The adding problem at its shipped length is a long run; here it is short (T=50) unless
# --length says otherwise. The other tasks run with their defaults.
ADDING_LENGTH = 50


def train(task: str, cell: str, init: str, seed: int, args: argparse.Namespace) -> dict:
  """One `rnnjax train --init INIT` run in a subprocess; its summary's test metric (or failure)."""
  out = pathlib.Path(args.out) / f"{task}-{cell}-{init}-{seed}"
  flags = ["--task", task, "--cell", cell, "--init", init, "--seed", str(seed)]
  if args.steps:
    flags += ["--steps", str(args.steps)]
  if task == "adding":
    flags += ["--length", str(args.length)]
  run, s = _runs.rnnjax_train(flags, out)
  row = {"task": task, "cell": cell, "init": init, "seed": seed, **run}
  if s is not None:
    metric = s["metric"]
    row.update(status="ok", metric=metric, value=s["best"]["test"][metric],
               final=s["final"]["test"][metric], baseline=s["baselines"]["test"],
               steps=s["steps"], best_step=s["best"]["step"], backend=s["backend"])
  return row


def table(rows: list[dict]) -> str:
  """Test metric per task and cell: the mean over seeds for each init, each seed in brackets.

  `better` names the init whose every seed beats every seed of the other, else "tie".
  """
  lines = ["| task | cell | metric | default | pytorch | better | baseline | steps |",
           "|---|---|---|---:|---:|---|---:|---:|"]
  keys = sorted({(r["task"], r["cell"]) for r in rows}, key=lambda k: (TASKS.index(k[0]), k[1]))
  for task, cell in keys:
    cells, means = {}, {}
    ok = [r for r in rows if (r["task"], r["cell"]) == (task, cell) and r["status"] == "ok"]
    for init in INITS:
      mine = sorted((r for r in rows if (r["task"], r["cell"], r["init"]) == (task, cell, init)),
                    key=lambda r: r["seed"])
      values = [r["value"] for r in mine if r["status"] == "ok"]
      failed = [r["status"] for r in mine if r["status"] != "ok"]
      means[init] = statistics.mean(values) if values and not failed else None
      each = ", ".join(f"{v:.4g}" for v in values) + "".join(f", {f}" for f in failed)
      cells[init] = f"{means[init]:.4g} ({each})" if means[init] is not None else each or "—"
    better = "—"
    if None not in means.values():  # A tie where the seeds' ranges overlap.
      best, other = sorted(INITS, key=lambda i: means[i])
      worst_of_best = max(r["value"] for r in ok if r["init"] == best)
      better = best if worst_of_best < min(r["value"] for r in ok if r["init"] == other) else "tie"
    metric = ok[0]["metric"] if ok else "—"
    baseline = f"{ok[0]['baseline']:.4g}" if ok else "—"
    steps = ok[0]["steps"] if ok else "—"
    lines.append(f"| {task} | {cell} | test {metric} | {cells['default']} | {cells['pytorch']} "
                 f"| {better} | {baseline} | {steps} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
  parser.add_argument("--cells", nargs="+", choices=CELLS, default=["lstm", "gru"])
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
  parser.add_argument("--steps", type=int, default=None,
                      help="training steps (default: each task's, as rnnjax train)")
  parser.add_argument("--length", type=int, default=ADDING_LENGTH, help="T of the adding task")
  parser.add_argument("--out", default="runs/init_compare", help="directory of the runs")
  parser.add_argument("--table", nargs="+", metavar="JSONL",
                      help="train nothing: print the table of earlier runs' results.jsonl")
  args = parser.parse_args(argv)
  if args.table:
    rows = _runs.read_rows(args.table)
    print(table(rows))
    return 0
  results = pathlib.Path(args.out) / "results.jsonl"
  results.parent.mkdir(parents=True, exist_ok=True)
  rows = []
  for task in args.tasks:
    for cell in args.cells:
      for seed in args.seeds:
        for init in INITS:  # interleaved: both contenders see the same machine load
          row = train(task, cell, init, seed, args)
          rows.append(row)
          _runs.emit(row, results)
  print(table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
