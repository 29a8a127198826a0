"""UEA/UCR classification with `rnnjax train --task uea:NAME`: test accuracy over seeds.

For each dataset and seed, runs `rnnjax train --task uea:NAME --cell gru --seed S` in a
subprocess with the task's own defaults (`task.info["defaults"]`, chosen on the validation
split only), reads the run's `summary.json`, and records the test accuracy of the
checkpoint that validation picked, the majority-class baseline, the wall time and the
command. Prints one JSON line per run, then a Markdown table per dataset: mean ± sample
standard deviation of the test accuracy over the seeds, the baseline, the published
numbers the task carries (`task.info["published"]`), the mean wall time and the command.

  python benchmarks/uea_results.py                                  # the default datasets
  python benchmarks/uea_results.py --datasets JapaneseVowels --seeds 0 1 2
  python benchmarks/uea_results.py --json-out uea.jsonl             # also keep the JSON lines
  python benchmarks/uea_results.py --table uea.jsonl                # the table of earlier runs

Needs aeon (`pip install "rnnjax[uea]"`).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

import _runs  # benchmarks/_runs.py, beside this script

from rnnjax import tasks

DATASETS = ("JapaneseVowels", "BasicMotions", "GunPoint", "ItalyPowerDemand", "ArrowHead")
SEEDS = (0, 1, 2)


def train(name: str, seed: int, cell: str, out: pathlib.Path) -> dict:
  """Runs `rnnjax train` on `uea:NAME` in a subprocess; returns one JSON row."""
  run, summary = _runs.rnnjax_train(
      ["--task", f"uea:{name}", "--cell", cell, "--seed", str(seed)], out)
  row = {"dataset": name, "seed": seed, "cell": cell, **run}
  if summary is None:
    return row
  best, config = summary["best"], summary["config"]
  row.update(status="ok", test_accuracy=best["test"]["accuracy"],
             val_accuracy=best["val"]["accuracy"], best_step=best["step"],
             test_cross_entropy=best["test"].get("cross_entropy"),
             baseline=summary["baselines"]["test"], steps=summary["steps"],
             wall_s=summary["wall_s"], hidden=config.get("hidden"), lr=config.get("lr"),
             batch_size=config.get("batch_size"), backend=summary["backend"])
  return row


def _published(name: str) -> str:
  """The published numbers of `name` in one cell: method accuracy, each with its source tag."""
  try:
    info = tasks.uea_task(name).info
  except Exception as err:  # The table is still worth printing.
    return f"({type(err).__name__})"
  return "; ".join(f"{p['method']} {p['accuracy']:.3f} [{p['tag']}]" for p in info["published"]
                   ) or "none found"


def table(rows: list[dict]) -> str:
  """The Markdown table of `rows`: one line per dataset, over its seeds."""
  lines = ["| dataset | rnnjax GRU test accuracy (mean ± std) | seeds | majority baseline | "
           "published (test accuracy) | wall s (mean) | command |",
           "|---|---:|---:|---:|---|---:|---|"]
  for name in dict.fromkeys(r["dataset"] for r in rows):
    ok = [r for r in rows if r["dataset"] == name and r["status"] == "ok"]
    if not ok:
      lines.append(f"| {name} | failed | 0 | — | — | — | — |")
      continue
    acc = [r["test_accuracy"] for r in ok]
    spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
    seeds = ",".join(str(r["seed"]) for r in ok)
    command = ok[0]["command"].replace(f"--seed {ok[0]['seed']}", "--seed S")
    lines.append(
        f"| {name} | {statistics.mean(acc):.4f} ± {spread:.4f} | {seeds} | "
        f"{ok[0]['baseline']:.4f} | {_published(name)} | "
        f"{statistics.mean(r['wall_s'] for r in ok):.0f} | `{command}` |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--datasets", nargs="+", default=list(DATASETS),
                      help=f"a subset of {', '.join(tasks.UEA_DATASETS)}")
  parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
  parser.add_argument("--cell", default="gru")
  parser.add_argument("--out", default="runs/uea_results",
                      help="directory of the runs (one subdirectory per dataset and seed)")
  _runs.add_row_flags(parser)
  args = parser.parse_args(argv)
  if _runs.print_table(args, table):
    return 0
  unknown = [n for n in args.datasets if n not in tasks.UEA_DATASETS]
  if unknown:
    raise SystemExit(f"uea_results: unknown datasets {unknown}; choose from "
                     f"{', '.join(tasks.UEA_DATASETS)}")
  if args.json_out:
    pathlib.Path(args.json_out).write_text("")
  rows = []
  for name in args.datasets:
    for seed in args.seeds:
      row = train(name, seed, args.cell, pathlib.Path(args.out) / f"{name}-{args.cell}-{seed}")
      rows.append(row)
      _runs.emit(row, args.json_out)
  print()
  print(table(rows))
  return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
