"""Tests for the command line, `rnnjax train` and `rnnjax sample`.

Process behaviour (SIGKILL, Ctrl-C, exit codes, the default job) is tested on real
subprocesses, argument checking in-process through `rnnjax.cli.main`. Every run is
tiny (the adding problem with T = 20 and H = 16), and most share one configuration,
`LONG`, so that the subprocesses share compiled code through JAX's compilation cache:
compiling, not training, is most of a tiny run's time.
"""

import argparse
import contextlib
import functools
import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
ADDING = ["--task", "adding", "--length", "20", "--hidden", "16", "--batch-size", "16",
          "--steps-per-call", "10"]
SMALL = [*ADDING, "--eval-every", "0", "--quiet", "--no-plots"]
# Long enough that a kill after the checkpoint of step 100 lands mid-run (500 more steps and
# 10 more checkpoints take over a second), short enough to run five times.
LONG_STEPS = 600
LONG = ["train", *SMALL, "--steps", str(LONG_STEPS), "--checkpoint-every", "50"]
# The uninterrupted run of LONG keeps a checkpoint every 60 steps, some between log lines
# (every 50), evaluates every 50 steps and plots; none of these options changes the result.
REFERENCE = [*[a for a in LONG if a != "--no-plots"], "--checkpoint-every", "60", "--keep",
             "100", "--eval-every", "50"]
REFERENCE_CHECKPOINTS = list(range(60, LONG_STEPS + 1, 60))
# A text without the characters of `rnnjax sample`'s default prompt, "def ".
TEXT = "a cat sits on a mat. this is not a big hat, but a warm sunny spot. " * 80  # ~5 KB
DEFAULT_JOB = "test_the_default_job_beats_its_baseline"


@pytest.fixture(autouse=True)
def _standard_promotion():
  """The CLI runs under standard promotion (optax's own code needs it)."""
  with jax.numpy_dtype_promotion("standard"):
    yield


def _boom(*args, **kwargs):
  raise AssertionError("training started, but the arguments should have been refused first")


@pytest.fixture
def no_compute(monkeypatch):
  """Fails the test if training starts."""
  monkeypatch.setattr(rnnjax, "fit", _boom)
  monkeypatch.setattr(rnnjax, "make_train_step", _boom)


# --- subprocesses ---------------------------------------------------------------------------

_ENV: dict[str, str] = {}


def _command(args: list[str]) -> list[str]:
  return [sys.executable, "-m", "rnnjax.cli", *args]


def _start(args: list[str], cwd: pathlib.Path) -> subprocess.Popen:
  """Starts `rnnjax ARGS` in `cwd`; its stdout and stderr go to files there."""
  tag = time.monotonic_ns()
  stdout, stderr = open(cwd / f".stdout-{tag}", "w"), open(cwd / f".stderr-{tag}", "w")
  with stdout, stderr:
    proc = subprocess.Popen(_command(args), cwd=cwd, env=_ENV, stdout=stdout, stderr=stderr)
  proc.output_paths = (pathlib.Path(stdout.name), pathlib.Path(stderr.name))
  return proc


def _output(proc: subprocess.Popen) -> tuple[str, str]:
  return proc.output_paths[0].read_text(), proc.output_paths[1].read_text()


def _stop(proc: subprocess.Popen) -> None:
  if proc.poll() is None:
    proc.kill()
    proc.wait()


def _run(args: list[str], cwd: pathlib.Path, timeout: float = 60) -> subprocess.CompletedProcess:
  return subprocess.run(_command(args), cwd=cwd, env=_ENV, capture_output=True, text=True,
                        timeout=timeout)


class _Background:
  """A run started at once and awaited when its result is needed."""

  def __init__(self, args: list[str], cwd: pathlib.Path):
    self.cwd, self.proc, self.started = cwd, _start(args, cwd), time.monotonic()

  def wait(self, timeout: float) -> tuple[int, str, str]:
    """(exit code, stdout, stderr), waiting at most until `timeout` s after the start."""
    self.proc.wait(timeout=max(1.0, timeout - (time.monotonic() - self.started)))
    return (self.proc.returncode, *_output(self.proc))

  def result(self) -> pathlib.Path:
    code, _, stderr = self.wait(120)
    assert code == 0, stderr
    return self.cwd / "run"


@pytest.fixture(scope="module", autouse=True)
def _subprocess_env(tmp_path_factory, request):
  """The subprocesses' environment: CPU, and a compilation cache shared between them.

  Also starts the default job in the background if its test is to run: it takes the
  longest, and this process has other work meanwhile.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax-cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
  _ENV.update(env)
  if any(item.name == DEFAULT_JOB for item in request.session.items):
    request.getfixturevalue("default_job")
  yield
  _ENV.clear()


@pytest.fixture(scope="module")
def default_job(tmp_path_factory):
  """`rnnjax train` with no arguments, in an empty directory."""
  run = _Background(["train"], tmp_path_factory.mktemp("default"))
  yield run
  _stop(run.proc)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run of `LONG` (as `REFERENCE`), started in the background."""
  run = _Background([*REFERENCE, "--out", "run"], tmp_path_factory.mktemp("reference"))
  yield run
  _stop(run.proc)


# --- helpers --------------------------------------------------------------------------------


def _main(args: list[str]) -> tuple[int, str, str]:
  """`rnnjax.cli.main(args)` in this process: (return code, stdout, stderr)."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.main(args)
  return code, out.getvalue(), err.getvalue()


def _steps(out: pathlib.Path) -> list[int]:
  """The steps of the complete checkpoints in `out` (orbax renames each into place when done)."""
  directory = out / "checkpoint"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _wait_for_checkpoint(proc: subprocess.Popen, out: pathlib.Path, at_least: int,
                         timeout: float = 90) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    steps = _steps(out)
    if steps and steps[-1] >= at_least:
      return
    if proc.poll() is not None:
      pytest.fail(f"the run exited ({proc.returncode}) before a checkpoint of step >= "
                  f"{at_least}:\n{_output(proc)[1]}")
    time.sleep(0.01)
  _stop(proc)
  pytest.fail(f"no checkpoint of step >= {at_least} after {timeout} s")


@functools.cache
def _template(config_json: str) -> rnnjax.TrainState:
  """The shapes and dtypes of the `TrainState` of a run, built as the CLI builds it."""
  config = json.loads(config_json)
  model = cli.make_model(config, cli.make_task(config))
  optimizer = cli.make_optimizer(config)
  return jax.eval_shape(lambda key: rnnjax.train_state(model.init(key), optimizer, key),
                        jax.random.PRNGKey(0))


def _final_state(out: pathlib.Path) -> rnnjax.TrainState:
  """The newest checkpoint of the run in `out`."""
  config = json.loads((out / "config.json").read_text())
  for name in cli.RUN_ONLY - {"steps"}:
    config.pop(name, None)
  ckpt = rnnjax.Checkpointer(out / "checkpoint")
  try:
    return ckpt.restore(_template(json.dumps(config, sort_keys=True)))
  finally:
    ckpt.close()


def _assert_trees_equal(actual, expected) -> None:
  leaves_a, tree_a = jax.tree_util.tree_flatten_with_path(actual)
  leaves_e, tree_e = jax.tree_util.tree_flatten_with_path(expected)
  assert tree_a == tree_e
  for (path, a), (_, e) in zip(leaves_a, leaves_e, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e),
                                  err_msg=f"at {jax.tree_util.keystr(path)}")


def _records(out: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _losses(out: pathlib.Path) -> list[dict]:
  """The training records of metrics.jsonl without the timing, which differs between runs."""
  return [{k: v for k, v in r.items() if k != "train/steps_per_s"} for r in _records(out)
          if "train/loss" in r]


def _progress_steps(stderr: str) -> list[int]:
  return [int(s) for s in re.findall(r"^step\s+(\d+)/", stderr, flags=re.MULTILINE)]


def _text_file(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
  path = tmp_path / "corpus.txt"
  path.write_text(text)
  return path


# --- kill, Ctrl-C and resume ---------------------------------------------------------------


def test_sigkill_mid_run_then_resume_equals_the_uninterrupted_run(tmp_path, reference):
  # Start once the reference trains: its compiled code is then in the cache.
  _wait_for_checkpoint(reference.proc, reference.cwd / "run", 1)
  run = tmp_path / "run"
  proc = _start([*LONG, "--out", "run"], tmp_path)
  try:
    _wait_for_checkpoint(proc, run, 100)
    assert proc.poll() is None, "the run finished before the kill: raise LONG_STEPS"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    _stop(proc)
  assert proc.returncode == -signal.SIGKILL
  killed_at = _steps(run)[-1]
  assert 100 <= killed_at < LONG_STEPS
  assert not (run / "summary.json").exists()

  # Resume with the progress line on (--quiet may differ between a run and its resumption).
  args = [a for a in LONG if a != "--quiet"]
  resumed = _run([*args, "--out", "run", "--resume"], tmp_path)
  assert resumed.returncode == 0, resumed.stderr
  # It continued from the newest checkpoint: the first progress line is one log interval on.
  assert _progress_steps(resumed.stderr)[0] == killed_at + 50, resumed.stderr
  assert _progress_steps(resumed.stderr)[-1] == LONG_STEPS
  assert _steps(run) == [500, 550, 600]  # the default --keep 3

  expected_dir = reference.result()
  state, expected = _final_state(run), _final_state(expected_dir)
  assert int(state.step) == int(expected.step) == LONG_STEPS
  _assert_trees_equal(state, expected)  # params, optimizer state, step and key
  assert _losses(run) == _losses(expected_dir)
  summary = json.loads((run / "summary.json").read_text())
  assert summary == {**json.loads((expected_dir / "summary.json").read_text()),
                     "wall_s": summary["wall_s"], "config": summary["config"]}


def test_ctrl_c_saves_a_checkpoint_exits_130_and_resume_is_exact(tmp_path, reference):
  run = tmp_path / "run"
  proc = _start([*LONG, "--out", "run"], tmp_path)
  try:
    _wait_for_checkpoint(proc, run, 50)
    assert proc.poll() is None, "the run finished before Ctrl-C: raise LONG_STEPS"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
  finally:
    _stop(proc)
  _, stderr = _output(proc)
  assert proc.returncode == 130, stderr
  match = re.search(r"interrupted at step (\d+)", stderr)
  assert match, stderr
  stopped = int(match.group(1))
  assert 50 <= stopped < LONG_STEPS
  assert "--resume" in stderr
  assert _steps(run)[-1] == stopped  # the checkpoint of the interrupted step
  assert not (run / "summary.json").exists()

  resumed = _run([*LONG, "--out", "run", "--resume"], tmp_path)
  assert resumed.returncode == 0, resumed.stderr
  state, expected = _final_state(run), _final_state(reference.result())
  assert int(state.step) == LONG_STEPS
  _assert_trees_equal(state, expected)


def test_resume_from_a_checkpoint_between_log_lines_is_exact_and_logs_the_same(tmp_path,
                                                                               reference):
  # As if the reference had been killed after its checkpoint of step 120.
  expected = reference.result()
  assert _steps(expected) == REFERENCE_CHECKPOINTS
  run = tmp_path / "run"
  shutil.copytree(expected, run)
  for step in REFERENCE_CHECKPOINTS:
    if step > 120:
      shutil.rmtree(run / "checkpoint" / str(step))
  (run / "summary.json").unlink()
  resumed = _run([*LONG, "--out", "run", "--resume"], tmp_path)
  assert resumed.returncode == 0, resumed.stderr
  _assert_trees_equal(_final_state(run), _final_state(expected))
  # metrics.jsonl is rewritten from step 120 on; the loss logged at step 150 must still be
  # the mean over steps 101-150, as in the uninterrupted run.
  assert _losses(run) == _losses(expected)


# --- outputs --------------------------------------------------------------------------------


def test_a_completed_run_writes_metrics_summary_config_checkpoints_and_plots(reference):
  out = reference.result()
  every_50 = list(range(50, LONG_STEPS + 1, 50))
  train = _losses(out)
  assert [r["step"] for r in train] == every_50
  assert all(np.isfinite(r["train/loss"]) and np.isfinite(r["train/grad_norm"]) for r in train)
  evals = [r for r in _records(out) if "val/mse" in r]
  assert [r["step"] for r in evals] == every_50
  assert not any(k.startswith("test") for r in _records(out) for k in r)  # test stays unseen

  summary = json.loads((out / "summary.json").read_text())
  assert summary["metric"] == "mse" and summary["status"] == "completed"
  value, baseline = summary["best"]["test"]["mse"], summary["baselines"]["test"]
  assert summary["final"]["step"] == summary["steps"] == LONG_STEPS
  assert summary["final"]["val"]["mse"] == evals[-1]["val/mse"]
  assert summary["baseline_name"] == "predict 1.0"
  assert baseline == pytest.approx(1 / 6, abs=0.03)
  assert summary["beats_baseline"] is (value < baseline)

  config = json.loads((out / "config.json").read_text())
  assert {k: config[k] for k in ("task", "cell", "hidden", "steps", "batch_size", "length",
                                 "keep", "layers")} == {
      "task": "adding", "cell": "lstm", "hidden": 16, "steps": LONG_STEPS, "batch_size": 16,
      "length": 20, "keep": 100, "layers": 1}
  assert config["lr"] == cli.TASK_DEFAULTS["adding"]["lr"]
  assert "resume" not in config and "overwrite" not in config
  assert _steps(out) == REFERENCE_CHECKPOINTS
  assert (out / "loss.png").read_bytes().startswith(b"\x89PNG")
  assert not (out / "forecast.png").exists()

  _, stdout, _ = reference.wait(120)
  last = stdout.strip().splitlines()[-1]
  assert f"test mse {value:.4g} at step {summary['best']['step']}" in last
  assert "predict 1.0 baseline" in last and f"{baseline:.4g}" in last


# --- the default job ------------------------------------------------------------------------


def test_the_default_job_beats_its_baseline(default_job):
  code, stdout, stderr = default_job.wait(120)
  assert code == 0, stderr
  out = default_job.cwd / "runs" / "co2-lstm"
  summary = json.loads((out / "summary.json").read_text())
  assert summary["task"] == "co2" and summary["cell"] == "lstm"
  # A forecasting run also plots its forecast.
  assert (out / "loss.png").read_bytes().startswith(b"\x89PNG")
  assert (out / "forecast.png").read_bytes().startswith(b"\x89PNG")
  best = summary["best"]
  assert summary["beats_baseline"] is True, (
      f"test rmse {best['test']['rmse']:.4g} at step {best['step']} vs "
      f"{summary['baseline_name']} baseline {summary['baselines']['test']:.4g}")
  last = stdout.strip().splitlines()[-1]
  assert "beats the baseline" in last and f"at step {best['step']}" in last and "ppm" in last


def test_no_subcommand_means_train(tmp_path, monkeypatch):
  seen = []
  monkeypatch.setattr(cli, "train", lambda config: seen.append(config) or 0)
  monkeypatch.chdir(tmp_path)
  assert cli.main([]) == 0
  assert cli.main(["train"]) == 0
  assert seen[0] == seen[1]
  assert seen[0]["task"] == "co2" and seen[0]["cell"] == "lstm"
  assert pathlib.Path(seen[0]["out"]) == pathlib.Path("runs", "co2-lstm")


def test_train_options_without_the_subcommand_mean_train(tmp_path, monkeypatch):
  seen = []
  monkeypatch.setattr(cli, "train", lambda config: seen.append(config) or 0)
  monkeypatch.chdir(tmp_path)
  assert cli.main(["train", "--task", "adding", "--steps", "5"]) == 0
  assert cli.main(["--task", "adding", "--steps", "5"]) == 0
  assert seen[0] == seen[1]


@pytest.mark.parametrize("cell", sorted(cli.CELLS))
def test_every_cell_choice_builds_a_model_that_runs_and_trains_a_step(cell, tmp_path, monkeypatch):
  seen = []
  monkeypatch.setattr(cli, "train", lambda config: seen.append(config) or 0)
  monkeypatch.chdir(tmp_path)
  assert cli.main(["train", "--cell", cell]) == 0 and seen[0]["cell"] == cell
  task = argparse.Namespace(input_size=2, output_size=1, vocab_size=None)
  config = {"cell": cell, "hidden": 8, "layers": 1, "dropout": 0.0, "lr": 1e-3, "steps": 10,
            "clip": 1.0}
  model = cli.make_model(config, task)
  params = model.init(jax.random.PRNGKey(0))
  xs = jnp.ones((3, 4, 2))
  preds, _ = model.apply(params, xs)
  assert preds.shape == (3, 4, 1) and preds.dtype == jnp.float32
  assert np.isfinite(np.asarray(preds)).all()
  # One training step as `rnnjax train` takes it (the state's buffers donated).
  optimizer = cli.make_optimizer(config)
  state = rnnjax.train_state(params, optimizer, jax.random.PRNGKey(1))
  loss_fn = lambda p, batch, key: jnp.mean((model.apply(p, batch)[0] - 1.0) ** 2)
  state, metrics = rnnjax.make_train_step(loss_fn, optimizer)(state, xs)
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))


def test_a_linear_cell_trains_on_co2_end_to_end(tmp_path):
  out = tmp_path / "run"
  code, stdout, stderr = _main(["train", "--cell", "mingru", "--task", "co2", "--steps", "20",
                                "--engine", "parallel", "--no-plots", "--quiet", "--out",
                                str(out)])
  assert code == 0, stderr
  summary = json.loads((out / "summary.json").read_text())
  assert summary["cell"] == "mingru" and summary["steps"] == 20
  assert summary["engine"] == "parallel" and "parallel engine" in stdout
  assert np.isfinite(summary["best"]["test"]["rmse"])
  assert "test rmse" in stdout


# --- bad input, refused before any compute -------------------------------------------------


@pytest.mark.parametrize("args, expected", [
    (["--task", "nope"], ["--task", "'nope'", "adding", "co2", "copy", "sunspots", "text"]),
    (["--cell", "nope"], ["--cell", "'nope'", "elman", "gru", "lstm", "mgu"]),
    (["--hidden", "0"], ["--hidden", "must be positive", "0"]),
    (["--steps", "-1"], ["--steps", "must be positive", "-1"]),
    (["--lr", "0"], ["--lr", "must be positive", "0"]),
    (["--batch-size", "0"], ["--batch-size", "must be positive", "0"]),
    (["--hidden", "many"], ["--hidden", "'many'"]),
])
def test_bad_option_values_are_refused_by_the_parser(args, expected, tmp_path, capsys,
                                                     no_compute):
  with pytest.raises(SystemExit) as exc:
    cli.main(["train", *args, "--out", str(tmp_path / "run")])
  assert exc.value.code == 2
  err = capsys.readouterr().err
  for text in expected:
    assert text in err
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["dropout", "missing", "empty", "short", "text-not-text",
                                  "engine-cell", "engine-tbptt"])
def test_bad_values_are_refused_before_any_compute(case, tmp_path, no_compute):
  out = tmp_path / "run"
  if case == "dropout":
    args, expected = [*SMALL, "--dropout", "1.5"], ["--dropout", "1.5", "[0, 1)"]
  elif case == "engine-cell":
    args, expected = [*SMALL, "--engine", "parallel"], ["--engine parallel", "linear cell",
                                                         "--cell lstm"]
  elif case == "engine-tbptt":
    args = [*SMALL, "--cell", "minlstm", "--engine", "chunked", "--tbptt", "5"]
    expected = ["--engine chunked", "--tbptt 5", "--engine sequential or auto"]
  elif case == "missing":
    path = tmp_path / "no-such-file.txt"
    args, expected = ["--task", "text", "--text", str(path)], [str(path), "no such file"]
  elif case == "empty":
    path = _text_file(tmp_path, "")
    args, expected = ["--task", "text", "--text", str(path)], [str(path), "empty"]
  elif case == "short":
    path = _text_file(tmp_path, "x" * 100)
    # The default window is 128: 129 characters to train on and as many for val and for test.
    args, expected = ["--task", "text", "--text", str(path)], ["100 characters", "387"]
  else:
    path = _text_file(tmp_path, TEXT)
    args, expected = [*SMALL, "--text", str(path)], ["--text", "--task text"]
  code, _, stderr = _main(["train", *args, "--out", str(out)])
  assert code == 2
  assert stderr.startswith("rnnjax train: error: ")
  for text in expected:
    assert text in stderr
  assert not out.exists()


def test_an_out_directory_holding_a_run_is_refused_unless_resumed_or_overwritten(
    tmp_path, monkeypatch, reference):
  out = tmp_path / "run"
  shutil.copytree(reference.result(), out)
  args = [*LONG, "--out", str(out)]

  def snapshot():
    return ((out / "config.json").read_text(), (out / "metrics.jsonl").read_text(),
            (out / "summary.json").read_text(), _steps(out))

  before = snapshot()
  with monkeypatch.context() as m:
    m.setattr(rnnjax, "fit", _boom)
    code, _, stderr = _main([*args, "--hidden", "8"])
    assert code == 2
    assert "different configuration" in stderr and "hidden: 16 -> 8" in stderr
    assert "--overwrite" in stderr
    code, _, stderr = _main([*args, "--cell", "gru", "--seed", "3"])
    assert code == 2
    assert "cell: 'lstm' -> 'gru'" in stderr and "seed: 0 -> 3" in stderr
    # The same run (--keep, --eval-every, --checkpoint-every and plots may differ).
    code, _, stderr = _main(args)
    assert code == 2
    assert "already holds a run of this configuration" in stderr
    assert "--resume" in stderr and "--overwrite" in stderr
    assert snapshot() == before

  code, _, stderr = _main([*args, "--hidden", "8", "--steps", "20", "--checkpoint-every", "10",
                           "--overwrite"])
  assert code == 0, stderr
  assert json.loads((out / "config.json").read_text())["hidden"] == 8
  summary = json.loads((out / "summary.json").read_text())
  assert summary["config"]["hidden"] == 8 and summary["steps"] == 20
  assert [r["step"] for r in _records(out)] == [20, 20]  # one loss record, one evaluation
  assert not (out / "loss.png").exists()  # replaced by a run with --no-plots
  assert _steps(out) == [10, 20]
  assert int(_final_state(out).step) == 20  # restores with the hidden-8 template


# --- divergence -----------------------------------------------------------------------------


def test_a_non_finite_loss_stops_with_code_3_and_keeps_the_last_good_checkpoint(tmp_path):
  # Adam moves every weight by about the learning rate: the first step with a non-zero rate
  # (the second; warm-up starts at 0) makes the outputs ~1e28, whose square overflows.
  out = tmp_path / "run"
  code, _, stderr = _main(["train", *SMALL, "--steps", "200", "--steps-per-call", "1",
                           "--checkpoint-every", "1", "--lr", "1e30", "--clip", "1e9",
                           "--out", str(out)])
  assert code == 3, stderr
  match = re.search(r"loss became -?(nan|inf) at step (\d+)", stderr)
  assert match, stderr
  bad = int(match.group(2))
  steps = _steps(out)
  assert steps and steps[-1] == bad - 1, (steps, stderr)
  assert f"last good checkpoint (step {bad - 1})" in stderr
  assert not (out / "summary.json").exists()
  state = _final_state(out)
  assert int(state.step) == bad - 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state.params))


# --- rnnjax sample --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
  """A tiny character model of `TEXT`, without plots."""
  root = tmp_path_factory.mktemp("text")
  corpus = _text_file(root, TEXT)
  out = root / "run"
  with jax.numpy_dtype_promotion("standard"):
    code, _, stderr = _main(["train", "--task", "text", "--text", str(corpus), "--hidden", "16",
                             "--steps", "30", "--window", "16", "--batch-size", "8", "--quiet",
                             "--no-plots", "--out", str(out)])
  assert code == 0, stderr
  return out


def test_sample_continues_the_prompt_with_characters_of_the_training_text(text_run):
  args = ["sample", "--out", str(text_run), "--length", "50", "--prompt", "th"]
  code, stdout, stderr = _main(args)
  assert code == 0, stderr
  assert stdout.endswith("\n")
  text = stdout[:-1]
  assert len(text) == 52 and text.startswith("th")
  assert set(text) <= set(TEXT)
  assert json.loads((text_run / "vocab.json").read_text()) == sorted(set(TEXT))
  assert _main(args)[1] == stdout  # the same --seed gives the same text


@pytest.mark.parametrize("prompt", ["th€", ""])
def test_sample_refuses_a_prompt_outside_the_vocabulary(text_run, prompt):
  code, stdout, stderr = _main(["sample", "--out", str(text_run), "--length", "5",
                                "--prompt", prompt])
  assert code == 2 and not stdout
  assert stderr.startswith("rnnjax sample: error: ") and "vocabulary" in stderr
  if prompt:
    assert "'€'" in stderr


def test_sample_refuses_a_run_that_is_not_a_text_model(reference, tmp_path):
  code, _, stderr = _main(["sample", "--out", str(reference.result())])
  assert code == 2
  assert "'adding'" in stderr and "--task text" in stderr
  code, _, stderr = _main(["sample", "--out", str(tmp_path / "nothing")])
  assert code == 2
  assert "no run" in stderr


def test_text_plots_work_for_a_corpus_without_the_default_prompt(text_run, tmp_path):
  # The plots of a text run include a sample; `TEXT` has no "d", "e" or "f" (of the default
  # prompt "def "). Resuming the finished run with plots on evaluates and plots again.
  out = tmp_path / "run"
  shutil.copytree(text_run, out)
  config = json.loads((out / "config.json").read_text())
  code, _, stderr = _main(["train", "--task", "text", "--text", config["text"], "--hidden", "16",
                           "--steps", "30", "--window", "16", "--batch-size", "8", "--quiet",
                           "--resume", "--out", str(out)])
  assert code == 0, stderr
  assert (out / "loss.png").exists()
  samples = (out / "samples.txt").read_text()
  assert set(samples) <= {*TEXT, "\n"}


# --- what --out holds: nothing lost, nothing silent ----------------------------------------

TINY = ["train", "--task", "adding", "--length", "5", "--hidden", "4", "--batch-size", "4",
        "--steps-per-call", "2", "--eval-every", "0", "--quiet", "--no-plots", "--steps", "6",
        "--checkpoint-every", "2", "--keep", "5"]


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
  """A clean run of `TINY`, with checkpoints of steps 2, 4 and 6."""
  out = tmp_path_factory.mktemp("tiny") / "run"
  with jax.numpy_dtype_promotion("standard"):
    code, _, stderr = _main([*TINY, "--out", str(out)])
  assert code == 0, stderr
  assert _steps(out) == [2, 4, 6]
  return out


def _files(directory: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_damaged_newest_checkpoint_is_skipped_on_resume_and_the_files_are_kept(
    tmp_path, tiny_reference):
  run = tmp_path / "run"
  shutil.copytree(tiny_reference, run)
  data = next((run / "checkpoint" / "6" / "state" / "d").iterdir())
  data.write_bytes(data.read_bytes()[:10])  # truncated
  (run / "checkpoint" / "4" / "state" / "manifest.ocdbt").unlink()  # missing
  damaged = {step: _files(run / "checkpoint" / step) for step in ("4", "6")}
  code, _, stderr = _main([*TINY, "--out", str(run), "--resume"])
  assert code == 0, stderr
  assert "Traceback" not in stderr
  warned = stderr.strip().splitlines()
  assert len(warned) == 2, stderr
  for line, step in zip(warned, ("6", "4"), strict=True):
    assert line.startswith("rnnjax train: warning: skipped the damaged checkpoint "
                           f"{run / 'checkpoint' / step} (")
    assert f"kept unchanged in {run / 'checkpoint' / step}.damaged" in line
  # It went on from step 2 and ended as the clean run did.
  assert _steps(run) == [2, 4, 6]
  _assert_trees_equal(_final_state(run), _final_state(tiny_reference))
  for step, files in damaged.items():
    assert _files(run / "checkpoint" / f"{step}.damaged") == files


def test_a_diverged_run_starts_again_with_the_advised_lr_in_the_same_out(tmp_path,
                                                                          tiny_reference):
  run = tmp_path / "run"
  args = [*TINY, "--out", str(run), "--lr", "1e30"]
  code, _, stderr = _main(args)
  assert code == 3, stderr
  assert "Traceback" not in stderr and "optax" not in stderr
  advice = re.search(r"run the same command with --lr (\S+) ", stderr)
  assert advice, stderr
  assert float(advice.group(1)) == cli.TASK_DEFAULTS["adding"]["lr"]  # below 1e30
  diverged = _files(run)
  assert "diverged.json" in diverged

  args[args.index("1e30")] = advice.group(1)  # The advice, as given: no --overwrite.
  code, _, stderr = _main(args)
  assert code == 0, stderr
  assert f"held a run that diverged; starting again there with lr: 1e+30 -> 0.002. Its files " \
         f"were moved to {run / 'previous-1'}" in stderr
  assert _files(run / "previous-1") == diverged  # nothing of the diverged run is lost
  assert not (run / "diverged.json").exists()
  # The new run is the clean run of the same flags (the default --lr is 0.002).
  _assert_trees_equal(_final_state(run), _final_state(tiny_reference))
  assert json.loads((run / "summary.json").read_text())["config"]["lr"] == 0.002


def test_a_run_killed_before_its_first_checkpoint_starts_again_with_other_flags(
    tmp_path, tiny_reference):
  run = tmp_path / "run"
  run.mkdir()
  config = {**json.loads((tiny_reference / "config.json").read_text()), "hidden": 8}
  (run / "config.json").write_text(json.dumps(config))
  (run / "metrics.jsonl").write_text('{"step": 2, "loss": 0.5}\n')
  (run / "checkpoint" / "2.orbax-checkpoint-tmp-7").mkdir(parents=True)  # an unfinished save
  earlier = _files(run)
  code, _, stderr = _main([*TINY, "--out", str(run)])
  assert code == 0, stderr
  assert "held a run that saved no checkpoint" in stderr and "hidden: 8 -> 4" in stderr
  assert _files(run / "previous-1") == earlier
  assert (run / "previous-1" / "checkpoint" / "2.orbax-checkpoint-tmp-7").is_dir()
  _assert_trees_equal(_final_state(run), _final_state(tiny_reference))


def test_an_out_holding_a_metrics_log_rnnjax_did_not_write_is_refused_and_kept(tmp_path,
                                                                               no_compute):
  run = tmp_path / "run"
  run.mkdir()
  (run / "metrics.jsonl").write_text('{"my": "own experiment"}\n')
  (run / "notes.txt").write_text("mine")
  for extra in ([], ["--overwrite"]):
    code, _, stderr = _main([*TINY, "--out", str(run), *extra])
    assert code == 2
    assert stderr.count("\n") == 1 and "metrics.jsonl" in stderr and "no config.json" in stderr
  assert _files(run) == {"metrics.jsonl": b'{"my": "own experiment"}\n', "notes.txt": b"mine"}


def test_overwrite_removes_only_the_files_of_the_earlier_run(tmp_path, tiny_reference):
  run = tmp_path / "run"
  shutil.copytree(tiny_reference, run)
  config = {**json.loads((run / "config.json").read_text()), "hidden": 8}
  (run / "config.json").write_text(json.dumps(config))  # an earlier run of other flags
  (run / "notes.txt").write_text("mine")
  (run / "metrics.jsonl.mine").write_text("{}\n")
  (run / "data").mkdir()
  (run / "data" / "x.csv").write_text("1,2\n")
  mine = {k: v for k, v in _files(run).items() if k.split("/")[0] in (
      "notes.txt", "metrics.jsonl.mine", "data")}
  code, _, stderr = _main([*TINY, "--out", str(run), "--overwrite"])
  assert code == 0, stderr
  after = _files(run)
  assert {k: after[k] for k in mine} == mine
  _assert_trees_equal(_final_state(run), _final_state(tiny_reference))


# --- --version, --help and `python -m rnnjax` -------------------------------------------------


def test_version_prints_the_package_version(capsys):
  with pytest.raises(SystemExit) as exc:
    cli.main(["--version"])
  assert exc.value.code == 0
  assert capsys.readouterr().out == f"rnnjax {rnnjax.__version__}\n"
  assert rnnjax.__version__ == "0.1.0"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_the_commands(flag, capsys):
  with pytest.raises(SystemExit) as exc:
    cli.main([flag])
  assert exc.value.code == 0
  out = " ".join(capsys.readouterr().out.split())  # As wrapped for any terminal width.
  assert out.startswith("usage: rnnjax ")
  for text in ("{train,sample,bench}", "--version", "means `rnnjax train ARGS`"):
    assert text in out, text


@pytest.mark.parametrize("args, code, stdout, stderr", [
    (["--version"], 0, r"rnnjax 0\.1\.0\n", ""),
    (["--help"], 0, r"usage: rnnjax .*\{train,sample,bench\}.*", ""),
    (["train", "--resume", "--overwrite"], 2, "", "rnnjax train: error: --resume continues"),
])
def test_python_m_rnnjax_is_the_rnnjax_command(args, code, stdout, stderr, tmp_path):
  # `stdout` is a regular expression for the whole output, `stderr` its start.
  proc = subprocess.run([sys.executable, "-m", "rnnjax", *args], cwd=tmp_path, env=_ENV,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == code, proc.stderr
  assert re.fullmatch(stdout, proc.stdout, re.DOTALL), proc.stdout
  assert proc.stderr.startswith(stderr), proc.stderr
  assert "Traceback" not in proc.stderr
  assert list(tmp_path.iterdir()) == []  # Nothing written, not even runs/.


def test_help_shows_every_default_and_every_option_has_help():
  parser = cli.build_parser()
  commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
  assert set(commands.choices) == {"train", "sample", "bench"}
  for name, command in commands.choices.items():
    shown = " ".join(command.format_help().split())  # As wrapped for any terminal width.
    for action in command._actions:
      if not action.option_strings or action.dest == "help":
        continue
      where = f"rnnjax {name} {action.option_strings[0]}"
      assert action.help and len(action.help) > 5, where
      if action.nargs == 0:  # A switch (--resume): off unless given.
        assert action.default is False, where
      elif action.default is None:  # Its help says what happens without it.
        assert action.required or "default" in action.help, where
      else:
        assert f"(default: {action.default})" in shown, where


# --- validation: the model reported is the one picked on the validation split ---------------

# Sunspots with a large learning rate: the validation RMSE is lowest after about 160 steps and
# rises after; --patience 3 stops the run three evaluations after the best one.
OVERFIT = ["train", "--task", "sunspots", "--hidden", "32", "--lr", "0.01", "--steps", "400",
           "--eval-every", "20", "--patience", "3", "--quiet"]


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory) -> tuple[pathlib.Path, str]:
  """A run of `OVERFIT` (its directory and stdout)."""
  out = tmp_path_factory.mktemp("overfit") / "run"
  with jax.numpy_dtype_promotion("standard"):
    code, stdout, stderr = _main([*OVERFIT, "--out", str(out)])
  assert code == 0, stderr
  return out, stdout


def test_the_best_checkpoint_by_validation_is_reported_and_scored_on_test(overfit_run):
  out, stdout = overfit_run
  summary = json.loads((out / "summary.json").read_text())
  assert {"best", "final", "baselines", "metric", "units", "beats_baseline"} <= set(summary)
  assert summary["metric"] == "rmse" and summary["units"]
  # The best step is the minimum of the validation RMSE over the evaluations in metrics.jsonl.
  evals = [(r["step"], r["val/rmse"]) for r in _records(out) if "val/rmse" in r]
  assert [s for s, _ in evals] == list(range(20, evals[-1][0] + 1, 20))
  best_step, best_val = min(evals, key=lambda e: e[1])
  assert summary["best"]["step"] == best_step and summary["best"]["val"]["rmse"] == best_val
  # It overfits, and --patience 3 stopped it three evaluations after the best one.
  assert summary["status"] == "early_stopped"
  assert [s for s, _ in evals if s > best_step] == [best_step + 20 * k for k in (1, 2, 3)]
  assert summary["final"]["step"] == evals[-1][0] == best_step + 60 < 400
  assert summary["final"]["val"]["rmse"] == evals[-1][1] > best_val
  # The test RMSE reported is the best checkpoint's: score load_run's params again here.
  run = rnnjax.load_run(out)
  assert run.step == best_step
  test = run.task.evaluate(lambda xs: run.model.apply(run.params, xs)[0], "test")[0]["rmse"]
  assert summary["best"]["test"]["rmse"] == pytest.approx(test, rel=1e-6)
  assert summary["final"]["test"]["rmse"] != pytest.approx(test, rel=1e-3)
  baselines = {s: pytest.approx(v, rel=1e-12) for s, v in run.task.baselines.items()}
  assert summary["baselines"] == baselines
  assert summary["beats_baseline"] is (test < run.task.baselines["test"])
  last = stdout.strip().splitlines()[-1]
  units = summary["units"]
  assert f"test rmse {test:.4g} {units} at step {best_step}" in last
  assert f"{run.task.baseline_name} baseline {run.task.baselines['test']:.4g} {units}" in last
  for name in ("loss.png", "forecast.png"):
    assert (out / name).read_bytes().startswith(b"\x89PNG"), name


def test_load_run_returns_the_trained_params(reference, tmp_path):
  out = reference.result()
  config = json.loads((out / "config.json").read_text())
  newest = rnnjax.load_run(out, which="newest")
  assert isinstance(newest, rnnjax.Run) and newest.config == config
  assert newest.step == LONG_STEPS and newest.task.name == "adding"
  _assert_trees_equal(newest.params, _final_state(out).params)  # the checkpoint's, exactly
  # The best one: the checkpoint in out/best, read here as a plain checkpoint.
  best = rnnjax.load_run(str(out))
  assert best.step == json.loads((out / "summary.json").read_text())["best"]["step"]
  ckpt = rnnjax.Checkpointer(out / "best")
  try:
    kept = ckpt.restore(_template(json.dumps(
        {k: v for k, v in config.items() if k not in cli.RUN_ONLY - {"steps"}}, sort_keys=True)))
  finally:
    ckpt.close()
  assert int(kept.step) == best.step
  _assert_trees_equal(best.params, kept.params)
  preds, _ = best.model.apply(best.params, jnp.zeros((20, 3, 2)))
  assert preds.shape == (20, 3, 1)
  with pytest.raises(ValueError, match="`which` must be 'best' or 'newest', got 'last'"):
    rnnjax.load_run(out, which="last")
  with pytest.raises(FileNotFoundError, match="holds no run of rnnjax train"):
    rnnjax.load_run(tmp_path)


# --- config.json: what it records, and --config to replay a run ------------------------------


def test_config_records_the_versions_and_the_git_commit(tiny_reference):
  config = json.loads((tiny_reference / "config.json").read_text())
  from importlib import metadata

  assert config["versions"] == {
      "rnnjax": rnnjax.__version__, "jax": metadata.version("jax"),
      "jaxlib": metadata.version("jaxlib"), "flax": metadata.version("flax"),
      "optax": metadata.version("optax"), "python": ".".join(map(str, sys.version_info[:3]))}
  git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                       text=True, check=False)
  expected = git.stdout.strip() if git.returncode == 0 else None
  assert config["git_commit"] == expected


def test_config_replays_a_run_bit_for_bit_and_flags_override_it(tmp_path, tiny_reference):
  replay = tmp_path / "replay"
  code, _, stderr = _main(["train", "--config", str(tiny_reference / "config.json"), "--out",
                           str(replay)])
  assert code == 0, stderr
  _assert_trees_equal(_final_state(replay), _final_state(tiny_reference))
  assert _losses(replay) == _losses(tiny_reference)
  assert [r for r in _records(replay) if "train/loss" not in r] == [
      r for r in _records(tiny_reference) if "train/loss" not in r]
  original = json.loads((tiny_reference / "config.json").read_text())
  replayed = json.loads((replay / "config.json").read_text())
  assert replayed == {**original, "out": str(replay),
                      "config": str(tiny_reference / "config.json")}
  summary = json.loads((replay / "summary.json").read_text())
  expected = json.loads((tiny_reference / "summary.json").read_text())
  assert summary == {**expected, "wall_s": summary["wall_s"], "config": summary["config"]}

  # A flag given on the command line overrides the file; the rest comes from it.
  longer = tmp_path / "longer"
  code, _, stderr = _main(["train", "--config", str(replay / "config.json"), "--steps", "8",
                           "--out", str(longer)])
  assert code == 0, stderr
  config = json.loads((longer / "config.json").read_text())
  assert config["steps"] == 8 and _steps(longer)[-1] == 8
  assert {k: v for k, v in config.items() if k not in ("steps", "out", "config")} == {
      k: v for k, v in original.items() if k not in ("steps", "out", "config")}
  # Without --out, the replay would go to the run's own --out, which is refused.
  code, _, stderr = _main(["train", "--config", str(replay / "config.json")])
  assert code == 2 and "already holds a run of this configuration" in stderr


def test_a_run_from_before_the_optimizer_flags_resumes(tmp_path, tiny_reference):
  run = tmp_path / "run"
  shutil.copytree(tiny_reference, run)
  config = json.loads((run / "config.json").read_text())
  for key in ("optimizer", "weight_decay", "patience", "tensorboard", "config", "versions",
              "git_commit"):
    del config[key]
  (run / "config.json").write_text(json.dumps(config))
  code, _, stderr = _main([*TINY, "--steps", "8", "--out", str(run), "--resume"])
  assert code == 0, stderr
  assert "resuming with" not in stderr and _steps(run)[-1] == 8


# --- optimizers and metric writers ---------------------------------------------------------


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_weight_decay_of_adamw_and_sgd_follows_a_numpy_reference(name):
  lr, decay, steps = 0.1, 0.05, 100
  config = {"lr": lr, "steps": steps, "clip": 1e9, "optimizer": name, "weight_decay": decay}
  opt = cli.make_optimizer(config)
  params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
  state = opt.init(params)
  grads = [np.asarray(g, np.float32) for g in ([0.3, -0.1, 2.0], [0.2, 0.4, -1.0],
                                                [-0.5, 0.1, 0.3], [0.1, 0.1, 0.1])]
  p, m, v = np.asarray([1.0, -2.0, 0.5]), np.zeros(3), np.zeros(3)
  warmup = min(100, steps // 10 + 1)
  for t, g in enumerate(grads):
    rate = lr * t / warmup  # the warm-up, from 0
    if name == "sgd":  # an L2 penalty: its gradient is added to the loss's
      step = g + decay * p
    else:  # Adam's step, plus the decay of the weights (decoupled), both times the rate
      m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g.astype(np.float64) ** 2
      m_hat, v_hat = m / (1 - 0.9 ** (t + 1)), v / (1 - 0.999 ** (t + 1))
      step = m_hat / (np.sqrt(v_hat) + 1e-8) + decay * p
    p = p - rate * step
    updates, state = opt.update({"w": jnp.asarray(g)}, state, params)
    params = {"w": params["w"] + updates["w"]}
  np.testing.assert_allclose(np.asarray(params["w"]), p, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="adam takes no weight decay"):
    cli.make_optimizer({**config, "optimizer": "adam"})


def test_tensorboard_gets_the_records_of_metrics_jsonl_and_the_hparams(tmp_path, monkeypatch):
  made = []

  class Recorder:  # What the CLI passes to rnnjax.TensorBoardWriter, and what it receives.
    def __init__(self, logdir):
      self.logdir, self.scalars, self.hparams, self.closed = logdir, [], [], False
      made.append(self)

    def write_scalars(self, step, scalars):
      self.scalars.append({"step": step, **scalars})

    def write_hparams(self, hparams):
      self.hparams.append(dict(hparams))

    def flush(self):
      pass

    def close(self):
      self.closed = True

  monkeypatch.setattr(rnnjax, "TensorBoardWriter", Recorder)
  # The CLI checks that tensorboardX imports; this test needs it not.
  monkeypatch.setitem(sys.modules, "tensorboardX", types.ModuleType("tensorboardX"))
  out, logdir = tmp_path / "run", str(tmp_path / "tb")
  code, _, stderr = _main([*TINY, "--eval-every", "2", "--tensorboard", logdir, "--out",
                           str(out)])
  assert code == 0, stderr
  (writer,) = made
  assert writer.logdir == logdir and writer.closed
  assert writer.scalars == _records(out)
  assert [r["step"] for r in writer.scalars if "val/mse" in r] == [2, 4, 6]
  (hparams,) = writer.hparams
  assert {k: hparams[k] for k in ("task", "cell", "hidden", "optimizer")} == {
      "task": "adding", "cell": "lstm", "hidden": 4, "optimizer": "adam"}
  assert "out" not in hparams and "versions" not in hparams


def test_tensorboard_without_tensorboardx_is_one_line(tmp_path, monkeypatch, no_compute):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` then fails.
  code, _, stderr = _main([*TINY, "--tensorboard", str(tmp_path / "tb"), "--out",
                           str(tmp_path / "run")])
  assert code == 2
  assert stderr == ("rnnjax train: error: --tensorboard needs tensorboardX, which is not "
                    "installed; install it with pip install 'rnnjax[tensorboard]'\n")
  assert not (tmp_path / "run").exists()
