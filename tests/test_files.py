"""Tests for `rnnjax/_src/files.py`: atomic JSON writes."""

import json
import os

import pytest

from rnnjax._src import files

DATA = {"cell": "lstm", "steps": 10, "lr": 3e-3, "sizes": [1, 2, 3], "nested": {"ok": True},
        "none": None, "text": "th€ end"}


def _listing(directory):
  return sorted(os.listdir(directory))


def test_the_json_round_trips_and_parent_directories_are_made(tmp_path):
  path = tmp_path / "a" / "b" / "config.json"
  files.write_json_atomic(path, DATA)
  assert json.loads(path.read_text()) == DATA
  assert path.read_text().endswith("}\n")
  assert _listing(path.parent) == ["config.json"]
  files.write_json_atomic(str(path), [1, 2])  # A str path, replacing the file.
  assert json.loads(path.read_text()) == [1, 2]
  assert _listing(path.parent) == ["config.json"]


def _dump_then_raise(error):
  def dump(obj, f, **kwargs):
    f.write('{"cell": "gr')  # Part of the JSON, then the failure.
    f.flush()
    raise error
  return dump


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "ctrl-c"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch,
                                                                        error):
  path = tmp_path / "config.json"
  files.write_json_atomic(path, DATA)
  before = path.read_bytes()
  monkeypatch.setattr(files.json, "dump", _dump_then_raise(error))
  with pytest.raises(type(error)):
    files.write_json_atomic(path, {"cell": "gru"})
  assert path.read_bytes() == before
  assert _listing(tmp_path) == ["config.json"]


def test_an_object_json_cannot_write_leaves_no_file(tmp_path):
  # json.dump writes the start of the object before it reaches the bad value.
  path = tmp_path / "summary.json"
  with pytest.raises(TypeError, match="not JSON serializable"):
    files.write_json_atomic(path, {"a": list(range(100)), "z": object()})
  assert _listing(tmp_path) == []
