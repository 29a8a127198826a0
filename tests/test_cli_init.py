"""`rnnjax train --init`: the initialisation of the classic cells, from the flag to the params.

The reference is PyTorch's rule as its documentation states it (every weight and bias of
`nn.RNN`, `nn.LSTM` and `nn.GRU` uniform in `±1/sqrt(H)`), against rnnjax's default
(LeCun-normal input weights, the LSTM's forget-gate bias at 1). One tiny run (two steps of
the adding problem) is shared; everything else is refused or built without training.
"""

import contextlib
import io
import json
import shutil

import jax
import numpy as np
import pytest

import rnnjax
from rnnjax import cli

H = 16
TINY = ["train", "--task", "adding", "--length", "5", "--hidden", str(H), "--batch-size", "4",
        "--steps", "2", "--steps-per-call", "2", "--checkpoint-every", "2", "--eval-every", "0",
        "--quiet", "--no-plots"]
# Two Adam steps at a peak learning rate of 2e-3 move each weight by at most about 4e-3.
MOVED = 5e-3


@pytest.fixture(autouse=True)
def _standard_promotion():
  """The CLI runs under standard promotion (optax's own code needs it)."""
  with jax.numpy_dtype_promotion("standard"):
    yield


def _main(args: list[str]) -> tuple[int, str, str]:
  """`rnnjax.cli.main(args)` in this process: (return code, stdout, stderr)."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.main(args)
  return code, out.getvalue(), err.getvalue()


def _boom(*args, **kwargs):
  raise AssertionError("training started, but the arguments should have been refused first")


@pytest.fixture(scope="module")
def pytorch_run(tmp_path_factory):
  """A two-step LSTM run of `TINY --init pytorch`: its directory and its stdout."""
  out = tmp_path_factory.mktemp("init") / "run"
  with jax.numpy_dtype_promotion("standard"):
    code, stdout, stderr = _main([*TINY, "--init", "pytorch", "--out", str(out)])
  assert code == 0, stderr
  return out, stdout


def _config(argv: list[str]) -> dict:
  """The resolved config of a command line, as `rnnjax train` would train it."""
  return cli.resolve_config(cli.build_parser().parse_args(argv))


def _core_params(config: dict):
  task = cli.make_task(config)
  return cli.make_model(config, task).init(jax.random.PRNGKey(config["seed"])).core


def test_init_pytorch_reaches_the_saved_params(pytorch_run):
  out, stdout = pytorch_run
  assert json.loads((out / "config.json").read_text())["init"] == "pytorch"
  assert f"lstm x1 (hidden {H}, pytorch init) on adding" in stdout
  run = rnnjax.load_run(out)
  p = run.params.core
  bound = 1 / np.sqrt(H)
  for name in ("w_i", "w_h", "b_i", "b_h"):
    value = np.abs(np.asarray(getattr(p, name)))
    assert value.max() <= bound + MOVED, (name, value.max())
    assert value.max() >= 0.8 * bound, name  # uniform over the whole range, not near zero
  forget = np.asarray(p.b_i)[H:2 * H]  # PyTorch's gate order (i, f, g, o)
  assert np.abs(forget).max() <= bound + MOVED  # not the default's 1.0


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru", "mgu"])
def test_init_flag_picks_pytorch_or_the_default_for_each_classic_cell(cell):
  argv = [*TINY, "--cell", cell]
  pytorch = _core_params(_config([*argv, "--init", "pytorch"]))
  default = _core_params(_config(argv))
  bound = 1 / np.sqrt(H)
  leaves = {k: np.asarray(v) for k, v in pytorch._asdict().items() if v is not None}
  assert {"w_i", "w_h", "b_i", "b_h"} <= set(leaves)
  for name, value in leaves.items():
    assert np.abs(value).max() <= bound, (cell, name)
  # The default draws the input weights LeCun normal (std 1/sqrt(2) for the adding problem's
  # two features), far outside PyTorch's bound, and the LSTM's forget bias at 1.
  assert np.abs(np.asarray(default.w_i)).max() > 2 * bound
  if cell == "lstm":
    np.testing.assert_array_equal(np.asarray(default.b_i)[H:2 * H], 1.0)


@pytest.mark.parametrize("cell", ["mingru", "minlstm", "lru", "rglru"])
def test_init_pytorch_with_a_cell_without_init_is_a_one_line_error(cell, tmp_path, monkeypatch):
  monkeypatch.setattr(rnnjax, "fit", _boom)
  code, stdout, stderr = _main([*TINY, "--cell", cell, "--init", "pytorch", "--out",
                                str(tmp_path / "run")])
  assert code == 2 and not stdout
  assert stderr == (f"rnnjax train: error: --init pytorch needs a classic cell (elman, gru, "
                    f"lstm, mgu), got --cell {cell}; use --init default\n")
  assert not (tmp_path / "run").exists()
  with pytest.raises(ValueError, match=rf"rnnjax.runs.model_core: init='pytorch' needs .*"
                                        rf"got cell='{cell}'"):
    cli.model_core({"cell": cell, "hidden": 4, "layers": 1, "dropout": 0.0, "init": "pytorch"})


def test_an_unknown_init_is_refused_by_the_parser(capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main([*TINY, "--init", "xavier"])
  assert exit_.value.code == 2
  assert "argument --init: invalid choice: 'xavier'" in capsys.readouterr().err


def test_the_replay_of_a_pytorch_run_reproduces_it(pytorch_run, tmp_path):
  out, _ = pytorch_run
  replay = tmp_path / "replay"
  code, _, stderr = _main(["train", "--config", str(out / "config.json"), "--out", str(replay)])
  assert code == 0, stderr
  assert json.loads((replay / "config.json").read_text())["init"] == "pytorch"
  original, replayed = rnnjax.load_run(out).params, rnnjax.load_run(replay).params
  for a, b in zip(jax.tree_util.tree_leaves(original), jax.tree_util.tree_leaves(replayed),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A flag given with --config overrides the file's init.
  config = cli.build_parser(train_defaults=cli.file_defaults(str(out / "config.json")))
  assert config.parse_args(["train", "--init", "default"]).init == "default"


def test_a_config_from_before_init_replays_and_loads_with_the_default(pytorch_run, tmp_path):
  out, _ = pytorch_run
  old = json.loads((out / "config.json").read_text())
  del old["init"]
  path = tmp_path / "config.json"
  path.write_text(json.dumps(old))
  assert cli.build_parser(train_defaults=cli.file_defaults(str(path))).parse_args(
      ["train"]).init == "default"
  core = cli.model_core(old)  # `load_run` builds the model of a config this way.
  p = core.init(jax.random.PRNGKey(0), input_size=2)
  np.testing.assert_array_equal(np.asarray(p.b_i)[H:2 * H], 1.0)


def test_resume_with_another_init_is_refused(pytorch_run, tmp_path, monkeypatch):
  out, _ = pytorch_run
  run = tmp_path / "run"
  shutil.copytree(out, run)
  monkeypatch.setattr(rnnjax, "fit", _boom)
  code, _, stderr = _main([*TINY, "--out", str(run), "--resume"])
  assert code == 2
  assert "different configuration (init: 'pytorch' -> 'default')" in stderr


def test_a_run_from_before_init_resumes_with_the_default(pytorch_run, tmp_path):
  out, _ = pytorch_run
  run = tmp_path / "run"
  shutil.copytree(out, run)
  config = json.loads((run / "config.json").read_text())
  del config["init"]  # As a run of an rnnjax without --init wrote it.
  (run / "config.json").write_text(json.dumps(config))
  # The checkpoint holds PyTorch-initialised weights; only the shapes matter to --resume.
  code, _, stderr = _main([*TINY, "--steps", "4", "--out", str(run), "--resume"])
  assert code == 0, stderr
  assert "resuming with" not in stderr
