"""Does a bfloat16 (mixed-precision) run learn as the float32 one does? `rnnjax train --dtype`.

Each run is `rnnjax train` in a subprocess (validation-selected model, test metric reported
once); the two contenders differ only in `--dtype` (float32, or bfloat16: bfloat16 matrix
products with float32 params, carry and accumulation), and run interleaved, seed by seed, so
that both see the same machine load. Prints one JSON line per run, then a Markdown table:
the test metric's mean over seeds (each seed's value beside it) and the wall time.

  python benchmarks/dtype_compare.py --task adding --cell gru --seeds 0 1 2
  python benchmarks/dtype_compare.py --table runs/dtype_compare/results.jsonl
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

import _runs  # benchmarks/_runs.py, beside this script

DTYPES = ("float32", "bfloat16")


def train(task: str, cell: str, dtype: str, seed: int, args: argparse.Namespace) -> dict:
  """One `rnnjax train` run in a subprocess; its summary's test metric (or the failure)."""
  out = pathlib.Path(args.out) / f"{task}-{cell}-{dtype}-{seed}"
  flags = ["--task", task, "--cell", cell, "--dtype", dtype, "--seed", str(seed), *args.extra]
  run, s = _runs.rnnjax_train(flags, out)
  row = {"task": task, "cell": cell, "dtype": dtype, "seed": seed, **run}
  if s is not None:
    metric = s["metric"]
    row.update(status="ok", metric=metric, value=s["best"]["test"][metric],
               baseline=s["baselines"]["test"], steps=s["steps"], best_step=s["best"]["step"])
  return row


def table(rows: list[dict]) -> str:
  """The test metric per dtype: mean over seeds, each seed in brackets; median wall time."""
  lines = ["| task | cell | metric | dtype | test (mean; seeds) | wall s (median) | baseline |",
           "|---|---|---|---|---|---:|---:|"]
  for task, cell in sorted({(r["task"], r["cell"]) for r in rows}):
    for dtype in DTYPES:
      mine = sorted((r for r in rows if (r["task"], r["cell"], r["dtype"]) == (task, cell, dtype)),
                    key=lambda r: r["seed"])
      if not mine:
        continue
      ok = [r for r in mine if r["status"] == "ok"]
      each = ", ".join(f"{r['value']:.4g}" for r in ok)
      failed = "".join(f", {r['status']}" for r in mine if r["status"] != "ok")
      mean = f"{statistics.mean(r['value'] for r in ok):.4g}" if ok and not failed else "—"
      wall = statistics.median(r["process_s"] for r in mine)
      metric = ok[0]["metric"] if ok else "—"
      base = f"{ok[0]['baseline']:.4g}" if ok else "—"
      lines.append(f"| {task} | {cell} | test {metric} | {dtype} | {mean} ({each}{failed}) "
                   f"| {wall:.0f} | {base} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--task", default="adding")
  parser.add_argument("--cell", default="gru")
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  parser.add_argument("--out", default="runs/dtype_compare", help="directory of the runs")
  parser.add_argument("--table", nargs="+", metavar="JSONL",
                      help="train nothing: print the table of earlier runs' results.jsonl")
  args, args.extra = parser.parse_known_args(argv)
  if args.table:
    rows = _runs.read_rows(args.table)
    print(table(rows))
    return 0
  results = pathlib.Path(args.out) / "results.jsonl"
  results.parent.mkdir(parents=True, exist_ok=True)
  rows = []
  for seed in args.seeds:
    for dtype in DTYPES:  # interleaved: both contenders see the same machine load
      row = train(args.task, args.cell, dtype, seed, args)
      rows.append(row)
      _runs.emit(row, results)
  print(table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
