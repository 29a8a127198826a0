"""The `rnnjax` command line: `rnnjax train`, `rnnjax sample` and `rnnjax bench`.

`rnnjax train` with no arguments trains the embedded default, an LSTM
forecaster of the monthly CO2 series shipped with the package, keeps the
checkpoint with the best validation RMSE, and prints its test RMSE beside the
baseline's. `rnnjax bench` times a training step of
rnnjax against Flax and the other installed peers (a quick run by default).

The package holds one module per concept: `args` (the parser and the flag
checks), `replay` (what config.json records, and `--config FILE`), `factories`
(the recipe of `rnnjax.runs`, with its errors said in terms of flags), `outdir`
(the rules of the run directory --out), `summary` (summary.json and the result
line), and one module per command: `train_cmd`, `sample_cmd`, `bench_cmd`. Plots
are `rnnjax.tools.plots`. `main` dispatches; the names below are re-exported so
that `rnnjax.cli.NAME` keeps working. `rnnjax --version` prints the version;
`python -m rnnjax ...` (and `python -m rnnjax.cli ...`) is the same as `rnnjax ...`.
"""

from __future__ import annotations

import re
import sys
import warnings

from rnnjax._src.checkpoint import CheckpointError
from rnnjax.cli.args import (
    CELLS,
    DESCRIPTION,
    SEED_LIMIT,
    TASK_DEFAULTS,
    TASK_OPTIONS,
    build_parser,
    resolve_config,
)
from rnnjax.cli.bench_cmd import run_bench
from rnnjax.cli.errors import UsageError, _reason
from rnnjax.cli.factories import (
    TASK_FLAGS,
    engine_used,
    make_model,
    make_optimizer,
    make_task,
    model_core,
)
from rnnjax.cli.outdir import OUTPUTS, RESUME_MAY_CHANGE, RUN_ONLY
from rnnjax.cli.replay import file_defaults
from rnnjax.cli.sample_cmd import sample_text
from rnnjax.cli.train_cmd import train
from rnnjax.tools import bench

__all__ = [
    "CELLS", "DESCRIPTION", "OUTPUTS", "RESUME_MAY_CHANGE", "RUN_ONLY", "SEED_LIMIT",
    "TASK_DEFAULTS", "TASK_FLAGS", "TASK_OPTIONS", "UsageError", "bench", "build_parser",
    "engine_used", "main", "make_model", "make_optimizer", "make_task", "model_core",
    "resolve_config", "run_bench", "sample_text", "train",
]


def main(argv: list[str] | None = None) -> int:
  """Runs the `rnnjax` command line and returns its exit code.

  0 on success, 2 for a refused command line or an unusable file or directory
  (one line on stderr), 3 for a run whose loss stopped being finite, 130 for a
  run interrupted (Ctrl-C) that `--resume` can continue. The parser
  itself exits (`SystemExit`) for `--help`, `--version` (code 0) and bad flag
  values (code 2). A first word that is not a command means `train`:
  `rnnjax --task adding` is `rnnjax train --task adding`.

  Args:
    argv: the arguments after the program name (default: `sys.argv[1:]`).
  """
  # `train`, `run_bench` and `sample_text` are looked up here, in the package, so a test may
  # replace them with `monkeypatch.setattr(rnnjax.cli, "train", ...)`.
  parser = build_parser()
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] not in ("train", "sample", "bench", "-h", "--help", "--version"):
    argv = ["train", *argv]  # `rnnjax --task adding` means `rnnjax train --task adding`.
  args = parser.parse_args(argv)
  prog = f"rnnjax {args.command}"
  try:
    with warnings.catch_warnings():
      warnings.showwarning = lambda message, *_, **__: print(
          f"{prog}: warning: {_without_prefix(str(message))}", file=sys.stderr, flush=True)
      if args.command == "train":
        if args.config is not None:  # Its values are the defaults; the flags given override.
          args = build_parser(train_defaults=file_defaults(args.config)).parse_args(argv)
        return train(resolve_config(args))
      if args.command == "bench":
        return run_bench(args)
      print(sample_text(args.out, length=args.length, prompt=args.prompt,
                        temperature=args.temperature, seed=args.seed))
      return 0
  except (UsageError, CheckpointError) as err:
    print(f"{prog}: error: {_without_prefix(str(err))}", file=sys.stderr)
    return 2
  except OSError as err:  # A disk full, a file made unreadable during the run, ...
    print(f"{prog}: error: {_reason(err)}", file=sys.stderr)
    return 2


def _without_prefix(message: str) -> str:
  """A message of the API (`rnnjax.fit: ...`) without the function's name, on one line."""
  return " ".join(re.sub(r"^rnnjax(\.\w+)+: ", "", message).split())
