"""The usage error of the `rnnjax` command line (exit code 2) and how causes are quoted."""

from __future__ import annotations


class UsageError(Exception):
  """A bad argument, reported before any compute."""


def _reason(err: BaseException) -> str:
  text = str(err).strip().splitlines()
  return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
