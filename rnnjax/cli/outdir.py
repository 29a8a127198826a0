"""The rules of `rnnjax train`'s run directory (--out).

What it writes there, when it refuses an --out, what --overwrite deletes, when a
run starts again with its files moved to `previous-N/`, and its `config.json`.
"""

from __future__ import annotations

import itertools
import json
import pathlib
import shutil
import sys
from typing import Any

from rnnjax._src.files import write_json_atomic
from rnnjax.cli.errors import UsageError, _reason

# Options that may differ between a run and its resumption.
# The engines give the same answers, so a run may resume on another (a CPU run on a GPU).
# `config` (the file a run was replayed from) and what config.json records of the software
# (`versions`, `git_commit`) may differ too.
RUN_ONLY = {"out", "resume", "overwrite", "steps", "quiet", "no_plots", "eval_every",
            "checkpoint_every", "keep", "diagnostics", "engine", "patience", "tensorboard",
            "config", "versions", "git_commit"}
# The options added since the first config.json, with the value an older run had.
_ADDED = {"optimizer": "adam", "weight_decay": 0.0, "init": "default", "dtype": "float32"}
# Options that `--resume` may also change, with a note: the optimizer's learning rate and
# clipping (after a divergence, say), which leave the shapes of the state as they were.
RESUME_MAY_CHANGE = ("lr", "clip")
# What `rnnjax train` writes into --out, and all that --overwrite removes.
# (`samples.png` is no longer written, but --overwrite still removes an older run's.)
OUTPUTS = ("checkpoint", "best", "metrics.jsonl", "summary.json", "config.json",
           "diverged.json", "loss.png", "diagnostics.json", "diagnostics.png",
           "forecast.png", "samples.png", "samples.txt", "vocab.json")


def _prepare_out(config: dict[str, Any]) -> tuple[pathlib.Path, bool]:
  """Checks --out against the run it may hold; returns it and whether to resume.

  The rules (also in the README): rnnjax train writes only `OUTPUTS` into --out
  and deletes nothing else; it refuses an --out holding some of them without its
  `config.json` (files it did not write). A run that diverged, or saved no
  checkpoint (killed early), may start again in the same --out with any flags: its
  files are first moved to `previous-N/` there. Any other run continues with
  --resume and the same flags (`RUN_ONLY` ones and `RESUME_MAY_CHANGE` may
  differ), or is replaced with --overwrite, which deletes its `OUTPUTS`.
  """
  out = pathlib.Path(config["out"])
  _check_directory(out)
  saved = out / "config.json"
  present = [name for name in OUTPUTS if (out / name).exists()]
  resume = False
  if not saved.exists():
    if present:
      raise UsageError(
          f"--out {out} holds {', '.join(present)} but no config.json of rnnjax train, so "
          "rnnjax did not write them; it removes nothing it did not write. Use another --out, "
          "or move those files away")
    if config["resume"]:
      raise UsageError(f"--resume: --out {out} holds no run to resume (no config.json); "
                       "start one without --resume")
  else:
    old = _read_config(saved)
    old = {**_ADDED, **old}
    differs = [k for k in sorted(set(old) | set(config))
               if k not in RUN_ONLY and old.get(k) != config.get(k)]
    listed = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in differs)
    checkpointed = _holds_checkpoint(out)
    restartable = not (out / "summary.json").exists() and (
        not checkpointed or (out / "diverged.json").exists())
    if config["overwrite"]:
      _remove_outputs(out)
    elif config["resume"] and checkpointed:
      if not set(differs) <= set(RESUME_MAY_CHANGE):
        raise UsageError(
            f"--resume: --out {out} holds a run with a different configuration ({listed}); "
            f"resume it with the flags it was trained with (--resume may change only "
            f"{', '.join('--' + k for k in RESUME_MAY_CHANGE)}), or use another --out, or "
            "--overwrite to replace it")
      if differs:
        print(f"rnnjax train: resuming with {listed}", file=sys.stderr)
      resume = True
      _remove_outputs(out, ("diverged.json",))  # It goes on from its last good checkpoint.
    elif restartable:
      why = "diverged" if (out / "diverged.json").exists() else "saved no checkpoint"
      moved = _move_outputs_aside(out)
      if moved is not None or config["resume"]:
        print(f"rnnjax train: --out {out} held a run that {why}"
              + ("; --resume has no checkpoint to continue from" if not checkpointed else "")
              + f"; starting again there{' with ' + listed if differs else ''}"
              + (f". Its files were moved to {moved}" if moved else ""), file=sys.stderr)
    elif differs:
      raise UsageError(
          f"{out} holds a run with a different configuration ({listed}). Use another --out, "
          "or --overwrite to replace it")
    elif not config["resume"]:
      raise UsageError(
          f"{out} already holds a run of this configuration. Pass --resume to continue it, "
          "or --overwrite to start again")
    else:
      raise UsageError(f"--resume: --out {out} holds a finished run without a checkpoint to "
                       "continue from; use --overwrite to start again, or another --out")
  try:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(saved, {k: v for k, v in config.items()
                              if k not in ("resume", "overwrite")})
  except OSError as err:
    raise UsageError(f"--out {out} cannot be written: {err.strerror or err}") from None
  return out, resume


def _check_directory(out: pathlib.Path) -> None:
  """--out must be a directory or a path to make one; no file may be in its way."""
  for path in (out, *out.parents):
    if path.exists():
      if not path.is_dir():
        what = "is a file" if path == out else f"lies under the file {path}"
        raise UsageError(f"--out {out} {what}; --out must be a directory")
      return


def _read_config(path: pathlib.Path) -> dict[str, Any]:
  try:
    config = json.loads(path.read_text())
  except (OSError, ValueError) as err:
    raise UsageError(f"{path} is not a config.json of rnnjax train ({_reason(err)}); rnnjax "
                     "will not replace it. Use another --out, or move it away") from None
  if not isinstance(config, dict) or not {"task", "cell"} <= set(config):
    raise UsageError(f"{path} is not a config.json of rnnjax train (no task and cell); rnnjax "
                     "will not replace it. Use another --out, or move it away")
  return config


def _holds_checkpoint(out: pathlib.Path) -> bool:
  """Whether out/checkpoint holds anything but orbax's leftovers of an unfinished first save."""
  directory = out / "checkpoint"
  if not directory.is_dir():
    return directory.exists()
  return any("orbax-checkpoint-tmp" not in p.name for p in directory.iterdir())


def _remove_outputs(out: pathlib.Path, names: tuple[str, ...] = OUTPUTS) -> None:
  """Deletes those of `names` (files rnnjax train writes) that are in `out`, nothing else."""
  for name in names:
    path = out / name
    try:
      if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
      elif path.exists() or path.is_symlink():
        path.unlink()
    except OSError as err:
      raise UsageError(f"--out {out}: cannot remove {path}: {err.strerror or err}") from None


def _move_outputs_aside(out: pathlib.Path) -> pathlib.Path | None:
  """Moves the `OUTPUTS` in `out` to a new `out/previous-N/`; None if only config.json is there."""
  present = [name for name in OUTPUTS if (out / name).exists()]
  if set(present) <= {"config.json"}:
    return None
  aside = next(out / f"previous-{n}" for n in itertools.count(1)
               if not (out / f"previous-{n}").exists())
  try:
    aside.mkdir()
    for name in present:
      (out / name).rename(aside / name)
  except OSError as err:
    raise UsageError(f"--out {out}: cannot move the earlier run's files to {aside}: "
                     f"{err.strerror or err}") from None
  return aside
