"""`rnnjax train --diagnostics` and the vanishing-gradients example, end to end (small)."""

import importlib.util
import json
import pathlib

import jax
import pytest

from rnnjax import cli


@pytest.fixture(autouse=True)
def _standard_promotion():
  with jax.numpy_dtype_promotion("standard"):  # optax needs it (see test_train.py)
    yield


def test_train_diagnostics_writes_json_and_plot(tmp_path):
  out = tmp_path / "run"
  code = cli.main(["train", "--task", "co2", "--steps", "4", "--diagnostics", "--quiet",
                   "--out", str(out)])
  assert code == 0
  report = json.loads((out / "diagnostics.json").read_text())
  assert set(report) == {"init", "after 4 steps"}
  for rep in report.values():
    norms = rep["grad_norms"]
    assert len(norms) > 1 and all(n >= 0 for n in norms) and max(norms) > 0
    assert len(rep["lyapunov"]) == 2 * 32  # an LSTM's h and c, hidden 32
  assert (out / "diagnostics.png").stat().st_size > 0


def test_vanishing_gradients_example_runs(tmp_path):
  path = pathlib.Path(__file__).parents[1] / "examples" / "vanishing_gradients.py"
  spec = importlib.util.spec_from_file_location("vanishing_gradients", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  reports = module.main(["--length", "20", "--steps", "50", "--hidden", "8", "--batch-size", "4",
                         "--out", str(tmp_path)])
  assert set(reports) == {"elman, init", "elman, 50 steps", "lstm, init", "lstm, 50 steps"}
  assert (tmp_path / "vanishing_gradients.png").stat().st_size > 0
