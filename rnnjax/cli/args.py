"""The `rnnjax` command line's arguments: the parser, the choices and defaults, the checks.

`build_parser` parses; `resolve_config` fills in the task defaults and refuses
inconsistent flags (a `UsageError`) before any compute.
"""

from __future__ import annotations

import argparse
import functools
import math
import pathlib
from typing import Any

import rnnjax
from rnnjax.cli.errors import UsageError
from rnnjax.runs import CELLS, DTYPES, INIT_CELLS, INITS, OPTIMIZERS, READOUTS
from rnnjax.tools import bench

# The parser's description (the first line of `rnnjax --help`).
DESCRIPTION = "The `rnnjax` command line: `rnnjax train`, `rnnjax sample` and `rnnjax bench`."


# Per-task defaults, chosen so each finishes in about a minute on 2 CPU cores.
# eval_every: the forecasting tasks evaluate often (one cheap pass over a short series), so
# the validation curve and the picked checkpoint are fine-grained.
TASK_DEFAULTS = {
    "co2": dict(hidden=32, steps=1500, batch_size=32, lr=3e-3, eval_every=100),
    "sunspots": dict(hidden=32, steps=1500, batch_size=32, lr=3e-3, eval_every=100),
    "adding": dict(hidden=64, steps=3000, batch_size=64, lr=2e-3, eval_every=500),
    "copy": dict(hidden=64, steps=3000, batch_size=64, lr=2e-3, eval_every=500),
    "text": dict(hidden=256, steps=2000, batch_size=32, lr=3e-3, eval_every=500),
    "shakespeare": dict(hidden=256, steps=1000, batch_size=64, lr=1e-2, eval_every=250),
}
# The defaults of a task outside `TASK_DEFAULTS` (a classification task, `--task uea:NAME`)
# whose `info` holds no "defaults" of its own (see `task_defaults`).
CLASSIFICATION_DEFAULTS = dict(hidden=64, steps=1000, batch_size=32, lr=3e-3, eval_every=100)
# The task names beyond `rnnjax.tasks.TASKS` that `--task` takes: PREFIX:NAME (get_task's).
TASK_PREFIXES = {"uea": "a UEA/UCR archive dataset bundled with aeon, e.g. uea:JapaneseVowels"}
# Which tasks read --length, --delay and --window.
TASK_OPTIONS = {"length": ("adding",), "delay": ("copy",), "window": ("co2", "sunspots", "text",
                                                                       "shakespeare")}
SEED_LIMIT = 2**32  # JAX keys take 32-bit seeds: 2**32 would give the key of 0.


class _Parser(argparse.ArgumentParser):
  """An `ArgumentParser` whose errors are one line (with a pointer to --help)."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """argparse's formatter that shows each option's default, except where its help says it.

  Options without a value (`--resume`) and those whose default is None (their help
  names the real default, such as the task's) get no "(default: None)".
  """

  def _get_help_string(self, action: argparse.Action) -> str:
    if action.default is None or isinstance(action.default, bool):
      return action.help or ""
    return super()._get_help_string(action)


def _check_engine(args: argparse.Namespace, config: dict[str, Any]) -> None:
  """`--engine` against the cell and the options, by `rnnjax.engine_plan`'s rule."""
  engine = config.get("engine", "auto")
  if engine == "auto":
    return
  try:
    rnnjax.engine_plan(CELLS[args.cell](1), engine, tbptt=config["tbptt"])
  except TypeError:
    linear = ", ".join(name for name, make in CELLS.items() if rnnjax.is_linear(make(1)))
    raise UsageError(f"--engine {engine} needs a linear cell ({linear}), got --cell "
                     f"{args.cell}") from None
  except ValueError:
    pass  # --tbptt: said below, in terms of the flags
  for flag, value in (("--tbptt", config["tbptt"]), ("--dropout", config["dropout"] or None)):
    if value is not None and engine != "sequential":
      raise UsageError(f"--engine {engine} runs whole sequences as a scan; {flag} needs "
                       f"--engine sequential or auto, got {flag} {value}")


def _positive(kind):
  def parse(text: str):
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
    if not value > 0:
      raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    if not math.isfinite(value):
      raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value
  parse.__name__ = f"positive {kind.__name__}"
  return parse


def _non_negative(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a float, got {text!r}") from None
  if not (math.isfinite(value) and value >= 0):
    raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
  return value


_non_negative.__name__ = "non-negative float"


def _seed(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
  if not 0 <= value < SEED_LIMIT:
    raise argparse.ArgumentTypeError(
        f"must be in [0, {SEED_LIMIT - 1}] (JAX keys take 32-bit seeds), got {text}")
  return value


def task_defaults(name: str) -> dict[str, Any]:
  """The defaults of `rnnjax train --task NAME`'s hidden, steps, batch_size, lr and eval_every.

  `TASK_DEFAULTS[name]` for the built-in tasks; for any other (a classification task
  such as `uea:JapaneseVowels`) the task's own `info["defaults"]`, over
  `CLASSIFICATION_DEFAULTS` (all of them if the task cannot be built here: `rnnjax
  train` then reports why when it builds it).

  Args:
    name: the task's name, as `--task` takes it.
  """
  if name in TASK_DEFAULTS:
    return dict(TASK_DEFAULTS[name])
  from rnnjax import tasks  # Imported here: building a task reads its data.

  try:
    own = tasks.get_task(name).info.get("defaults") or {}
  except (ValueError, TypeError, ImportError, OSError):  # Reported when train builds it.
    own = {}
  return {**CLASSIFICATION_DEFAULTS, **{k: v for k, v in own.items()
                                        if k in CLASSIFICATION_DEFAULTS}}


def _task_name(text: str) -> str:
  """`--task`: a name of `rnnjax.tasks.TASKS`, or PREFIX:NAME with a prefix of `TASK_PREFIXES`
  (NAME is checked when the task is built)."""
  from rnnjax import tasks

  prefix, colon, rest = text.partition(":")
  if text in tasks.TASKS or (colon and prefix in TASK_PREFIXES and rest):
    return text
  choices = [*sorted(tasks.TASKS), *(f"{p}:NAME ({what})" for p, what in TASK_PREFIXES.items())]
  raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                   f"{', '.join(choices)})")


_task_name.__name__ = "task name"


def _parsed_by(parse):
  """An argparse `type` from a parser that raises ValueError with a full message."""
  def wrapped(text: str):
    try:
      return parse(text)
    except ValueError as err:
      raise argparse.ArgumentTypeError(str(err)) from None
  wrapped.__name__ = parse.__name__
  return wrapped


def build_parser(*, train_defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
  """The `rnnjax` parser: `--version` and the commands `train`, `sample` and `bench`.

  Its errors are one line with a pointer to `--help` (exit code 2); each command's
  `--help` shows every option's default.

  Args:
    train_defaults: defaults of `rnnjax train`'s options that replace the built-in
      ones (`--config FILE`'s values, from `replay.file_defaults`).
  """
  parser = _Parser(prog="rnnjax", description=DESCRIPTION,
                   epilog="Without a command, `rnnjax ARGS` means `rnnjax train ARGS`; "
                   "`rnnjax COMMAND --help` lists a command's options.")
  parser.add_argument("--version", action="version", version=f"rnnjax {rnnjax.__version__}",
                      help="print the version and exit")
  sub = parser.add_subparsers(dest="command")
  command = functools.partial(sub.add_parser, formatter_class=_HelpFormatter)
  train = command("train", help="train a model on a task (default: LSTM on CO2)",
                  description="Trains a model on a task, keeps the checkpoint with the best "
                  "validation metric, scores it on the test split beside the task's baseline, "
                  "and writes the run directory --out (config, metrics, checkpoints, summary, "
                  "plots).")
  _add_train(train)
  if train_defaults:
    train.set_defaults(**train_defaults)
  _add_sample(command("sample", help="generate text from a trained text model",
                      description="Generates text from the text model trained by `rnnjax "
                      "train --task text` in --out, and prints the prompt and the text."))
  _add_bench(command(
      "bench", help="time rnnjax against Flax and the other installed peers (quick by default)",
      description="Times a one-layer LSTM/GRU (forward, forward+backward, one Adam step) in "
      "rnnjax, rnnjax without its fast path (rnnjax_generic), Flax, and Equinox, Haiku and "
      "PyTorch where installed (pip install -e '.[bench]'), after checking that all compute "
      "the same function. Prints a Markdown table; 'rnnjax / peer' below 1 means rnnjax is "
      "faster."))
  return parser


def _add_train(t: argparse.ArgumentParser) -> None:
  """The options of `rnnjax train`."""
  task_default = lambda name: "the task's: " + ", ".join(
      f"{task} {d[name]:g}" for task, d in TASK_DEFAULTS.items()) + (
      f", uea:NAME the dataset's (else {CLASSIFICATION_DEFAULTS[name]:g})")
  t.add_argument("--task", type=_task_name, default="co2", metavar="TASK",
                 help=f"the task: {', '.join(sorted(TASK_DEFAULTS))}, or a classification task, "
                 "uea:NAME (a UEA/UCR dataset bundled with aeon, pip install 'rnnjax[uea]')")
  _add_model(t, task_default)
  t.add_argument("--steps", type=_positive(int),
                 help=f"training steps (default: {task_default('steps')})")
  t.add_argument("--batch-size", type=_positive(int),
                 help=f"sequences per batch (default: {task_default('batch_size')})")
  t.add_argument("--lr", type=_positive(float),
                 help=f"peak learning rate (default: {task_default('lr')})")
  t.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                 help="adam; adamw (decoupled weight decay); sgd (no momentum; "
                 "--weight-decay adds an L2 penalty)")
  t.add_argument("--weight-decay", type=_non_negative, default=0.0,
                 help="adamw's decoupled decay (scaled by the learning rate) or sgd's L2 "
                 "penalty; refused with adam")
  t.add_argument("--clip", type=_positive(float), default=1.0, help="global gradient-norm clip")
  t.add_argument("--seed", type=_seed, default=0,
                 help="seeds the initial params, the batches and the step keys")
  t.add_argument("--config", metavar="FILE", default=None,
                 help="replay a run: the options of this config.json of rnnjax train are the "
                 "defaults, options given here override them (default: none)")
  t.add_argument("--out", default=None, help="run directory (default: runs/TASK-CELL)")
  t.add_argument("--resume", action="store_true",
                 help="continue the run in --out from its newest intact checkpoint, with the "
                 "same model and task flags; --steps, --lr, --clip, --engine, --keep, "
                 "--patience, --tensorboard and the logging, evaluation and checkpoint "
                 "intervals may change")
  t.add_argument("--overwrite", action="store_true",
                 help="replace the run in --out: delete the files rnnjax train wrote there "
                 "(never others) and start again")
  t.add_argument("--text", default=None, help="text file for --task text (default: the "
                 "Python standard library's sources on this machine)")
  t.add_argument("--length", type=_positive(int), default=None,
                 help="sequence length T of the adding problem (default: 100)")
  t.add_argument("--delay", type=_positive(int), default=None,
                 help="copy-memory delay (default: 100)")
  t.add_argument("--window", type=_positive(int), default=None,
                 help="training window length (default: co2 48, sunspots 40, text 128, "
                 "shakespeare 64)")
  t.add_argument("--tbptt", type=_positive(int), default=None,
                 help="truncated BPTT: stop gradients every this many steps (default: off)")
  t.add_argument("--engine", choices=rnnjax.ENGINES,
                 default="auto", help="how the cell runs over time: auto picks per cell, "
                 "backend and length (a linear cell, mingru, minlstm, lru or rglru, runs as a "
                 "parallel scan on GPU/TPU; everything else sequentially); parallel and chunked "
                 "need a linear cell; newton runs any cell by Newton iterations of parallel "
                 "scans (for GPUs: slow on CPU); the three need no --tbptt or --dropout")
  t.add_argument("--steps-per-call", type=_positive(int), default=10,
                 help="training steps per jitted call")
  t.add_argument("--eval-every", type=int, default=None,
                 help="steps between evaluations on the validation split (0: only at the end); "
                 "the checkpoint with the best validation metric is kept in --out/best "
                 f"(default: {task_default('eval_every')})")
  t.add_argument("--patience", type=_positive(int), default=None,
                 help="stop after this many evaluations without a better validation metric "
                 "(default: never)")
  t.add_argument("--checkpoint-every", type=int, default=500,
                 help="steps between checkpoints (0: only at the end and on Ctrl-C)")
  t.add_argument("--keep", type=_positive(int), default=3, help="newest checkpoints to keep")
  t.add_argument("--tensorboard", metavar="DIR", default=None,
                 help="also write the metrics as TensorBoard events into DIR (needs "
                 "pip install 'rnnjax[tensorboard]'; default: none)")
  t.add_argument("--no-plots", action="store_true", help="write no PNG files")
  t.add_argument("--diagnostics", action="store_true",
                 help="measure gradient norms over time and step-Jacobian spectra on one "
                 "training batch, at initialisation and after training: diagnostics.json/png")
  t.add_argument("--quiet", action="store_true", help="no progress display")


def _add_model(t: argparse.ArgumentParser, task_default) -> None:
  """The model options of `rnnjax train` (`task_default(name)`: the help for a task default)."""
  t.add_argument("--cell", choices=sorted(CELLS), default="lstm", help="the recurrent cell")
  t.add_argument("--init", choices=INITS, default="default", help="the cell's initial weights: "
                 f"default, or PyTorch's (uniform in ±1/sqrt(H); {', '.join(INIT_CELLS)})")
  t.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype: bfloat16 "
                 "is mixed precision (float32 params, carry and accumulation)")
  t.add_argument("--readout", choices=READOUTS[1:], default=None,
                 help="how a classification task's model reads each sequence: at its last "
                 "valid step, the mean over its valid steps, or all steps flattened (default: "
                 "the task's, last; per-step tasks take none)")
  t.add_argument("--hidden", type=_positive(int),
                 help=f"hidden size of each layer (default: {task_default('hidden')})")
  t.add_argument("--layers", type=_positive(int), default=1, help="stacked layers")
  t.add_argument("--dropout", type=float, default=0.0,
                 help="dropout between stacked layers, in [0, 1)")


def _add_sample(s: argparse.ArgumentParser) -> None:
  """The options of `rnnjax sample`."""
  s.add_argument("--out", required=True, help="the run directory of `rnnjax train --task text`")
  s.add_argument("--length", type=_positive(int), default=400, help="characters to generate")
  s.add_argument("--prompt", default="def ",
                 help="the text to start from (only characters of the training text)")
  s.add_argument("--temperature", type=_positive(float), default=0.8,
                 help="the sampling temperature")
  s.add_argument("--seed", type=_seed, default=0, help="the sampling seed")


def _add_bench(b: argparse.ArgumentParser) -> None:
  """The options of `rnnjax bench`."""
  b.add_argument("--cell", choices=("lstm", "gru"), default="lstm", help="the cell to time")
  b.add_argument("--sizes", nargs="+", type=_parsed_by(bench.parse_size), metavar="B,T,I,H",
                 help=f"batch, steps, input and hidden size (default {bench.CLI_SIZE}; "
                 "with --full, the five benchmark sizes)")
  b.add_argument("--repeats", type=_positive(int),
                 help="timed calls per contender and mode (default 5; 20 with --full)")
  b.add_argument("--full", action="store_true",
                 help=f"all five sizes ({' '.join(bench.SIZES)}), 20 repeats")
  b.add_argument("--contenders", type=_parsed_by(bench.parse_contenders), metavar="NAME,...",
                 help=f"a subset of {','.join(bench.CONTENDERS)} (default: all installed; "
                 "rnnjax, the reference, always runs)")
  b.add_argument("--threads", type=_positive(int),
                 help="PyTorch's threads (default: the cores this process may use)")
  b.add_argument("--seed", type=_seed, default=0, help="seeds the weights and inputs")
  b.add_argument("--json-out", metavar="PATH", help="also write one JSON line per measurement "
                 "(for benchmarks/plot_results.py; default: none)")


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
  """The configuration of `rnnjax train`: the parsed flags with the task's defaults filled in.

  Raises a `UsageError` for flags that do not go together (such as `--resume` with
  `--overwrite`, or `--engine parallel` with a cell that is not linear), before any compute.

  Args:
    args: the parsed `rnnjax train` command line (from `build_parser`).
  """
  config = {k: v for k, v in vars(args).items() if k != "command"}
  for name, value in task_defaults(args.task).items():
    if config.get(name) is None:
      config[name] = value
  if config["out"] is None:
    config["out"] = str(pathlib.Path("runs") / f"{args.task.replace(':', '-')}-{args.cell}")
  if not config["out"].strip():
    raise UsageError(f"--out must name a directory, got {config['out']!r}")
  if config["resume"] and config["overwrite"]:
    raise UsageError("--resume continues the run in --out and --overwrite deletes it: pass "
                     "one of them, not both")
  for name, tasks_using in TASK_OPTIONS.items():
    if config[name] is not None and args.task not in tasks_using:
      raise UsageError(f"--{name} is only used with --task {' or '.join(tasks_using)}, got "
                       f"--task {args.task}")
  if not 0.0 <= config["dropout"] < 1.0:
    raise UsageError(f"--dropout must be in [0, 1), got {config['dropout']}")
  if config["text"] is not None and args.task != "text":
    raise UsageError(f"--text is only used with --task text, got --task {args.task}")
  if config["init"] != "default" and args.cell not in INIT_CELLS:
    raise UsageError(f"--init {config['init']} needs a classic cell ({', '.join(INIT_CELLS)}), "
                     f"got --cell {args.cell}; use --init default")
  _check_engine(args, config)
  if config["eval_every"] < 0 or config["checkpoint_every"] < 0:
    raise UsageError("--eval-every and --checkpoint-every must be >= 0")
  if config["weight_decay"] and config["optimizer"] == "adam":
    raise UsageError(f"--weight-decay {config['weight_decay']:g} needs --optimizer adamw "
                     "(decoupled weight decay) or sgd (an L2 penalty); adam takes none")
  if config["patience"] is not None and not config["eval_every"]:
    raise UsageError(f"--patience {config['patience']} counts evaluations on the validation "
                     "split; it needs --eval-every > 0")
  spc = config["steps_per_call"]
  if config["checkpoint_every"] % spc:
    config["checkpoint_every"] = max(spc, config["checkpoint_every"] // spc * spc)
  if config["text"] is not None:
    config["text"] = str(pathlib.Path(config["text"]).absolute())
  return config
