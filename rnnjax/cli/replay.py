"""A run's `config.json`: what it records beyond the flags, and how `--config` replays it.

`rnnjax train` saves its resolved flags in `--out/config.json`, with the package
versions and the git commit of rnnjax's source checkout (`provenance`). `rnnjax
train --config FILE` makes FILE's values the defaults of the flags (each value
checked as the flag's would be, `file_defaults`); the flags given on the command
line override them. Replaying a run's config reproduces it bit for bit.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import subprocess
from importlib import metadata
from typing import Any

import rnnjax
from rnnjax.cli import args
from rnnjax.cli.errors import UsageError, _reason

# What config.json records besides the flags; neither is replayed nor compared on --resume.
RECORDED = ("versions", "git_commit")
# What config.json records of the model beyond the flags: `num_steps`, the steps a model with
# `--readout flatten` reads (the task's T); replayed runs work it out from the task again.
DERIVED = ("num_steps",)
# Keys of config.json that `--config` skips: those, and the file a run was itself replayed from.
NOT_REPLAYED = ("config", *RECORDED, *DERIVED)


class _Refused(Exception):
  """A value the parser refused (its message)."""


class _Probe(argparse.ArgumentParser):
  """A parser of `rnnjax train`'s options that raises instead of exiting."""

  def error(self, message: str):
    raise _Refused(message)


def file_defaults(path: str) -> dict[str, Any]:
  """The values of a config.json as defaults of `rnnjax train`'s options, checked as flags.

  Raises a `UsageError` for a file that cannot be read, a key that is no option,
  or a value its flag would refuse.

  Args:
    path: the config file (`--config FILE`), e.g. `runs/co2-lstm/config.json`.
  """
  where = f"--config {path}"
  try:
    data = json.loads(pathlib.Path(path).read_text())
  except (OSError, ValueError) as err:
    raise UsageError(f"{where} cannot be read ({_reason(err)})") from None
  if not isinstance(data, dict):
    raise UsageError(f"{where} holds a {type(data).__name__}, not the JSON object of a "
                     "config.json of rnnjax train")
  probe = _Probe(prog="rnnjax train", add_help=False)
  args._add_train(probe)
  actions = {a.dest: a for a in probe._actions if a.option_strings}
  unknown = sorted(set(data) - set(actions) - set(NOT_REPLAYED))
  if unknown:
    raise UsageError(f"{where}: {', '.join(map(repr, unknown))} "
                     f"{'is no option' if len(unknown) == 1 else 'are no options'} of rnnjax "
                     "train; pass a config.json that rnnjax train wrote")
  defaults = {}
  for dest, value in data.items():
    if dest in NOT_REPLAYED:
      continue
    action, flag = actions[dest], actions[dest].option_strings[0]
    if value is None and action.default is None:
      defaults[dest] = None
    elif action.nargs == 0:  # --resume, --quiet, ...: true or false
      if not isinstance(value, bool):
        raise UsageError(f"{where}: {dest} must be true or false, got {json.dumps(value)}")
      defaults[dest] = value
    else:
      if value is None or isinstance(value, (bool, dict, list)):
        raise UsageError(f"{where}: {dest} must be a value of {flag}, got {json.dumps(value)}")
      try:
        defaults[dest] = getattr(probe.parse_args([f"{flag}={value}"]), dest)
      except _Refused as err:
        raise UsageError(f"{where}: {err}") from None
  return defaults


def provenance() -> dict[str, Any]:
  """What config.json records of the software: `versions` and `git_commit`.

  `versions` holds those of rnnjax, jax, jaxlib, flax, optax and Python;
  `git_commit` is the commit of the git checkout rnnjax runs from (an editable
  install), or None (an installed wheel, or no git).
  """
  versions = {"rnnjax": rnnjax.__version__}
  for name in ("jax", "jaxlib", "flax", "optax"):
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  versions["python"] = platform.python_version()
  return {"versions": versions, "git_commit": git_commit()}


def git_commit(package: pathlib.Path | None = None) -> str | None:
  """The commit checked out where `package` (default: rnnjax's source) lies at the top, or None.

  Args:
    package: a package directory; it must lie at the top of the checkout (as
      `rnnjax/` does in rnnjax's repository), not deeper (a virtual environment
      inside some other repository).
  """
  package = pathlib.Path(rnnjax.__file__).parent if package is None else package
  try:
    proc = subprocess.run(["git", "-C", str(package), "rev-parse", "--show-toplevel", "HEAD"],
                          capture_output=True, text=True, timeout=10, check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  lines = proc.stdout.splitlines()
  if proc.returncode or len(lines) != 2:
    return None
  if pathlib.Path(lines[0]).resolve() != package.resolve().parent:
    return None
  return lines[1]
