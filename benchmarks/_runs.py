"""What the benchmark scripts that drive `rnnjax train` share: one run in a subprocess, and
the JSON line of its row.

Each script builds its own flags and reads what it needs from the run's `summary.json`;
this module runs the command line as a user would (`python -m rnnjax.cli`, this checkout
first on the path) and reports how it ended.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
# `rnnjax train`'s exit codes other than success and a usage error (see docs/cli.md).
_STATUS = {3: "diverged", 130: "interrupted"}


def rnnjax_train(flags: list[str], out: pathlib.Path) -> tuple[dict[str, Any], dict | None]:
  """Runs `rnnjax train FLAGS --out OUT --overwrite --no-plots --quiet` in a subprocess.

  Returns `(row, summary)`: `row` holds the `command` (without the output flags), the
  `exit_code`, the `process_s` and, when the run failed, its `status` and the last lines
  of its standard error (also printed); `summary` is the run's `summary.json`, or None.
  """
  command = [sys.executable, "-m", "rnnjax.cli", "train", *flags, "--out", str(out),
             "--overwrite", "--no-plots", "--quiet"]
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
  start = time.perf_counter()
  proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
  row = {"command": "rnnjax train " + " ".join(flags), "exit_code": proc.returncode,
         "process_s": round(time.perf_counter() - start, 2)}
  path = out / "summary.json"
  if proc.returncode == 0 and path.exists():
    return row, json.loads(path.read_text())
  row.update(status=_STATUS.get(proc.returncode, "failed"),
             stderr_tail=proc.stderr.strip().splitlines()[-3:])
  print(f"  {row['command']}: exited with code {proc.returncode}:\n"
        + "\n".join("    " + line for line in row["stderr_tail"]), file=sys.stderr)
  return row, None


def append_row(row: dict[str, Any], path: str | os.PathLike | None) -> None:
  """Appends `row` to the JSON-lines file `path` (nothing if None)."""
  if path:
    with open(path, "a") as f:
      f.write(json.dumps(row) + "\n")


def emit(row: dict[str, Any], json_out: str | os.PathLike | None) -> None:
  """Prints `row` as one JSON line, and appends it to `json_out` if given."""
  print(json.dumps(row), flush=True)
  append_row(row, json_out)


def read_rows(paths: list[str]) -> list[dict[str, Any]]:
  """The rows of the JSON-lines files `paths` (a script's `--table`), in order."""
  return [json.loads(line) for path in paths
          for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def add_row_flags(parser: argparse.ArgumentParser) -> None:
  """`--json-out PATH` (one JSON line per run) and `--table JSONL...` (print, train nothing)."""
  parser.add_argument("--json-out", metavar="PATH", help="also write one JSON line per run")
  parser.add_argument("--table", nargs="+", metavar="JSONL",
                      help="train nothing: print the table of runs written by --json-out")


def print_table(args: argparse.Namespace, table: Callable[[list[dict[str, Any]]], str]) -> bool:
  """With `--table`, prints `table` of its files' rows and returns True (nothing to train)."""
  if not args.table:
    return False
  print(table(read_rows(args.table)))
  return True
