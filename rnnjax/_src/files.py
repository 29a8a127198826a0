"""Atomic file writes.

A run directory is read back (by `rnnjax train --resume` and `rnnjax sample`),
and a run may be killed at any moment (Ctrl-C, a pre-empted machine, a full
disk). A file written in place can then be left half-written: valid JSON cut
off, or empty. `write_json_atomic` writes to a temporary file in the same
directory, flushes it to disk, and renames it over the target, which POSIX and
Windows do in one step: a reader sees the old file or the new one, never a part.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  """Writes `obj` as JSON to `path` via a temporary file and an atomic rename.

  The JSON is indented by 2 with sorted keys and ends with a newline. Missing
  parent directories are created. If anything fails (including an interrupt),
  the temporary file is removed and an existing `path` is left as it was.

  Args:
    path: the file to write (replaced if it exists).
    obj: anything `json.dump` accepts.

  Examples:
    >>> import json, pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "run" / "config.json"
    >>> write_json_atomic(path, {"steps": 10, "cell": "lstm"})
    >>> json.loads(path.read_text())
    {'cell': 'lstm', 'steps': 10}
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
