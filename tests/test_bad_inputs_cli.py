"""A sweep of bad command lines: each ends in one clear line, never a traceback.

The rule every case is held to: `rnnjax.cli.main(argv)` returns (or exits with) a
non-zero code, stderr is exactly one line that starts with `rnnjax` and says
`error`, names what was wrong (the fragments listed with the case, in terms of
flags), and no file under the case's directory changed. argparse's own errors
follow the same rule (the CLI's parser prints them on one line, with a pointer to
`--help`, instead of argparse's usage block). Nothing trains, except where a case
needs a real checkpoint, which one tiny run per module provides. The API half of
the sweep is tests/test_bad_inputs.py.
"""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import pytest

import rnnjax
from rnnjax import cli

TINY = ["--task", "adding", "--length", "5", "--hidden", "4", "--batch-size", "4",
        "--steps-per-call", "2", "--eval-every", "0", "--quiet", "--no-plots"]


@pytest.fixture(autouse=True)
def _standard_promotion():
  """The CLI runs under standard promotion (optax's own code needs it)."""
  with jax.numpy_dtype_promotion("standard"):
    yield


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> pathlib.Path:
  """A finished two-step run of `TINY` with a checkpoint of step 2."""
  out = tmp_path_factory.mktemp("tiny") / "run"
  with jax.numpy_dtype_promotion("standard"):
    code = cli.main(["train", *TINY, "--steps", "2", "--checkpoint-every", "2", "--out",
                     str(out)])
  assert code == 0
  return out


def _write(path: pathlib.Path, data: str | bytes) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(data, bytes):
    path.write_bytes(data)
  else:
    path.write_text(data)
  return path


def _copy_run(root: pathlib.Path, tiny_run: pathlib.Path, **changes) -> pathlib.Path:
  """A copy of `tiny_run` in `root/run`, its config.json as the CLI writes it there."""
  out = root / "run"
  shutil.copytree(tiny_run, out)
  config = {**json.loads((out / "config.json").read_text()), "out": str(out), **changes}
  (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  return out


def _damaged_run(root, tiny_run):
  out = _copy_run(root, tiny_run)
  for step_dir in (out / "checkpoint").iterdir():
    (step_dir / "state" / "manifest.ocdbt").write_bytes(b"\x00garbage")
  return ["train", *TINY, "--steps", "2", "--checkpoint-every", "2", "--out", str(out),
          "--resume"]


def _another_model(root, tiny_run):
  # As if config.json had been edited: the flags match it, not the checkpoint.
  out = _copy_run(root, tiny_run, hidden=5)
  tiny = [*TINY[:TINY.index("--hidden")], "--hidden", "5", *TINY[TINY.index("--hidden") + 2:]]
  return ["train", *tiny, "--steps", "2", "--checkpoint-every", "2", "--out", str(out),
          "--resume"]


def _text_run(root: pathlib.Path, vocab) -> pathlib.Path:
  """The config.json and vocab.json of a text run, without a checkpoint."""
  out = root / "text"
  _write(out / "config.json", json.dumps({"task": "text", "cell": "lstm", "hidden": 4,
                                          "layers": 1, "dropout": 0.0, "lr": 0.01,
                                          "steps": 2, "clip": 1.0}))
  _write(out / "vocab.json", vocab if isinstance(vocab, bytes) else json.dumps(vocab))
  return out


def _train(*args):
  return lambda root, run: ["train", *TINY, "--out", str(root / "out"), *args]


def _task(*args):
  return lambda root, run: ["train", "--quiet", "--out", str(root / "out"), *args]


def _config(data):
  """`train --config FILE` with FILE holding `data` (JSON, text or bytes; None: no file)."""
  def build(root, run):
    path = root / "nope.json"
    if data is not None:
      _write(path, data if isinstance(data, (str, bytes)) else json.dumps(data))
    return ["train", "--config", str(path), "--out", str(root / "out")]
  return build


def _text_file(name, data):
  return lambda root, run: ["train", "--task", "text", "--text", str(_write(root / name, data)),
                            "--out", str(root / "out")]


# (id, argv builder (root, tiny_run) -> argv, fragments the error line must hold)
CASES = [
    # Bad numbers and out-of-range values.
    ("unknown-task", _task("--task", "nope"), ["--task", "'nope'", "adding"]),
    ("unknown-cell", _task("--cell", "nope"), ["--cell", "'nope'", "lstm"]),
    ("hidden-zero", _train("--hidden", "0"), ["--hidden", "must be positive"]),
    ("hidden-negative", _train("--hidden", "-3"), ["--hidden", "must be positive"]),
    ("hidden-word", _train("--hidden", "many"), ["--hidden", "'many'"]),
    ("hidden-huge", _train("--hidden", "10000000"), ["--hidden 10000000", "GiB", "smaller"]),
    ("layers-zero", _train("--layers", "0"), ["--layers", "must be positive"]),
    ("steps-zero", _train("--steps", "0"), ["--steps", "must be positive"]),
    ("batch-negative", _train("--batch-size", "-1"), ["--batch-size", "must be positive"]),
    ("lr-zero", _train("--lr", "0"), ["--lr", "must be positive"]),
    ("lr-nan", _train("--lr", "nan"), ["--lr", "nan"]),
    ("lr-inf", _train("--lr", "inf"), ["--lr", "finite", "inf"]),
    ("clip-negative", _train("--clip", "-1"), ["--clip", "must be positive"]),
    ("dropout-one", _train("--dropout", "1.0"), ["--dropout", "[0, 1)"]),
    ("dropout-nan", _train("--dropout", "nan"), ["--dropout", "nan"]),
    ("dropout-word", _train("--dropout", "half"), ["--dropout", "'half'"]),
    ("seed-negative", _train("--seed", "-1"), ["--seed", "[0, 4294967295]", "-1"]),
    ("seed-2**32", _train("--seed", str(2**32)), ["--seed", "32-bit", str(2**32)]),
    ("seed-beyond-64-bits", _train("--seed", str(2**64 + 5)), ["--seed", str(2**64 + 5)]),
    ("seed-float", _train("--seed", "1e3"), ["--seed", "'1e3'"]),
    ("steps-per-call-zero", _train("--steps-per-call", "0"), ["--steps-per-call"]),
    ("eval-every-negative", _train("--eval-every", "-1"), ["--eval-every", ">= 0"]),
    ("checkpoint-every-negative", _train("--checkpoint-every", "-5"), ["--checkpoint-every"]),
    ("keep-zero", _train("--keep", "0"), ["--keep", "must be positive"]),
    ("length-one", _train("--length", "1"), ["--length must be at least 2", "--length 1"]),
    ("window-too-long", _task("--task", "co2", "--window", "100000"),
     ["--window", "Use a smaller --window"]),
    ("unknown-flag", _train("--hiden", "8"), ["unrecognized arguments: --hiden 8"]),
    ("missing-value", _train("--hidden"), ["--hidden", "expected one argument"]),
    # Conflicting flags.
    ("engine-cell", _train("--engine", "parallel"), ["--engine parallel", "linear cell"]),
    ("engine-tbptt", _train("--cell", "mingru", "--engine", "chunked", "--tbptt", "3"),
     ["--engine chunked", "--tbptt 3"]),
    ("engine-dropout", _train("--cell", "mingru", "--engine", "parallel", "--layers", "2",
                              "--dropout", "0.1"), ["--engine parallel", "--dropout 0.1"]),
    ("resume-and-overwrite", _train("--resume", "--overwrite"), ["--resume", "--overwrite"]),
    ("text-without-text-task", _train("--text", "corpus.txt"), ["--text", "--task text"]),
    ("length-without-adding", _task("--task", "co2", "--length", "50"),
     ["--length", "--task adding", "--task co2"]),
    ("delay-without-copy", _train("--delay", "5"), ["--delay", "--task copy"]),
    ("window-without-a-windowed-task", _train("--window", "8"), ["--window", "--task adding"]),
    # Optimizers, early stopping.
    ("optimizer-unknown", _train("--optimizer", "rmsprop"), ["--optimizer", "'rmsprop'", "adamw"]),
    ("weight-decay-negative", _train("--optimizer", "adamw", "--weight-decay", "-0.1"),
     ["--weight-decay", ">= 0", "-0.1"]),
    ("weight-decay-nan", _train("--optimizer", "sgd", "--weight-decay", "nan"),
     ["--weight-decay", "finite", "nan"]),
    ("weight-decay-with-adam", _train("--weight-decay", "0.01"),
     ["--weight-decay 0.01", "--optimizer adamw", "sgd"]),
    ("patience-zero", _train("--eval-every", "2", "--patience", "0"),
     ["--patience", "must be positive"]),
    ("patience-without-evaluations", _train("--patience", "3"),
     ["--patience 3", "--eval-every > 0"]),
    # --config FILE.
    ("config-missing", _config(None), ["--config", "nope.json", "cannot be read"]),
    ("config-garbled", _config(b"{\xff"), ["--config", "cannot be read"]),
    ("config-not-an-object", _config("[1, 2]"), ["--config", "holds a list"]),
    ("config-unknown-key", _config({"task": "adding", "hiden": 8}),
     ["--config", "'hiden' is no option of rnnjax train"]),
    ("config-bad-value", _config({"task": "adding", "hidden": -3}),
     ["--config", "--hidden", "must be positive", "-3"]),
    ("config-bad-choice", _config({"cell": "nope"}), ["--config", "--cell", "'nope'"]),
    ("config-bad-switch", _config({"quiet": "yes"}), ["--config", "quiet", "true or false"]),
    ("config-null-seed", _config({"seed": None}), ["--config", "seed", "null"]),
    # Text files.
    ("text-missing", lambda root, run: ["train", "--task", "text", "--text",
                                        str(root / "nope.txt"), "--out", str(root / "out")],
     ["--text", "nope.txt", "no such file"]),
    ("text-directory", lambda root, run: ["train", "--task", "text", "--text", str(root),
                                          "--out", str(root / "out")], ["--text", "directory"]),
    ("text-empty", _text_file("empty.txt", ""), ["--text", "empty"]),
    ("text-binary", _text_file("model.bin", bytes(range(256)) * 4), ["--text", "not UTF-8"]),
    ("text-latin-1", _text_file("latin.txt", "café au lait, " .encode("latin-1") * 50),
     ["--text", "not UTF-8", "iconv"]),
    ("text-too-short", _text_file("short.txt", "x" * 100),
     ["100 characters", "--window 128", "387"]),
    # Bad --out.
    ("out-is-a-file", lambda root, run: ["train", *TINY, "--out", str(_write(root / "f", "mine"))],
     ["--out", "is a file"]),
    ("out-under-a-file", lambda root, run: ["train", *TINY, "--out",
                                            str(_write(root / "f", "mine") / "run")],
     ["--out", "lies under the file"]),
    ("out-empty", lambda root, run: ["train", *TINY, "--out", ""], ["--out", "''"]),
    ("out-holds-a-users-metrics", lambda root, run: [
        "train", *TINY, "--out", str(_write(root / "out" / "metrics.jsonl", "{}\n").parent)],
     ["metrics.jsonl", "no config.json", "did not write"]),
    ("out-holds-a-users-checkpoint", lambda root, run: [
        "train", *TINY, "--overwrite", "--out",
        str(_write(root / "out" / "checkpoint" / "mine", "x").parent.parent)],
     ["checkpoint", "did not write"]),
    ("out-holds-a-garbled-config", lambda root, run: [
        "train", *TINY, "--out", str(_write(root / "out" / "config.json", b"\xff{").parent)],
     ["config.json", "not a config.json of rnnjax train"]),
    ("out-holds-a-foreign-config", lambda root, run: [
        "train", *TINY, "--out", str(_write(root / "out" / "config.json", "[1, 2]").parent)],
     ["config.json", "not a config.json of rnnjax train"]),
    # Resuming.
    ("resume-nothing", _train("--resume"), ["--resume", "no run to resume"]),
    ("resume-changed-config", lambda root, run: [
        "train", *TINY, "--steps", "2", "--out", str(_copy_run(root, run)), "--resume",
        "--cell", "gru"], ["--resume", "cell: 'lstm' -> 'gru'"]),
    ("same-run-without-resume", lambda root, run: [
        "train", *TINY, "--steps", "2", "--out", str(_copy_run(root, run))],
     ["already holds a run", "--resume", "--overwrite"]),
    ("resume-every-checkpoint-damaged", _damaged_run, ["no intact checkpoint", "--overwrite"]),
    ("resume-into-another-model", _another_model,
     ["another model", "w_h", "(4, 16)", "(5, 20)"]),
    # rnnjax sample.
    ("sample-without-out", lambda root, run: ["sample"], ["--out"]),
    ("sample-no-run", lambda root, run: ["sample", "--out", str(root / "nope")], ["no run"]),
    ("sample-out-is-a-file", lambda root, run: ["sample", "--out", str(_write(root / "f", "x"))],
     ["no run"]),
    ("sample-not-text", lambda root, run: ["sample", "--out", str(_copy_run(root, run))],
     ["'adding'", "--task text"]),
    ("sample-length-zero", lambda root, run: ["sample", "--out", str(root), "--length", "0"],
     ["--length", "must be positive"]),
    ("sample-temperature-zero", lambda root, run: ["sample", "--out", str(root),
                                                   "--temperature", "0"], ["--temperature"]),
    ("sample-temperature-nan", lambda root, run: ["sample", "--out", str(root),
                                                  "--temperature", "nan"], ["--temperature"]),
    ("sample-seed-negative", lambda root, run: ["sample", "--out", str(root), "--seed", "-2"],
     ["--seed"]),
    ("sample-garbled-vocab", lambda root, run: ["sample", "--out",
                                                str(_text_run(root, b"\x00\xff"))],
     ["vocab.json", "cannot be read"]),
    ("sample-vocab-not-characters", lambda root, run: [
        "sample", "--out", str(_text_run(root, ["ab", 3]))], ["vocab.json", "characters"]),
    ("sample-prompt-outside-vocab", lambda root, run: [
        "sample", "--out", str(_text_run(root, list("abc"))), "--prompt", "xyz"],
     ["--prompt", "'x'"]),
    ("sample-no-checkpoint", lambda root, run: [
        "sample", "--out", str(_text_run(root, list("abc"))), "--prompt", "ab"],
     ["no checkpoint"]),
    # rnnjax bench.
    ("bench-size", lambda root, run: ["bench", "--sizes", "1,2,3"], ["--sizes", "'1,2,3'"]),
    ("bench-repeats-zero", lambda root, run: ["bench", "--repeats", "0"], ["--repeats"]),
    ("bench-threads-zero", lambda root, run: ["bench", "--threads", "0"], ["--threads"]),
    ("bench-contender", lambda root, run: ["bench", "--contenders", "nope"], ["nope"]),
    ("bench-cell", lambda root, run: ["bench", "--cell", "elman"], ["--cell", "'elman'"]),
    ("bench-seed", lambda root, run: ["bench", "--seed", str(2**40)], ["--seed"]),
    ("bench-json-out-missing-dir", lambda root, run: [
        "bench", "--json-out", str(root / "no" / "rows.jsonl")], ["--json-out"]),
    ("bench-json-out-directory", lambda root, run: ["bench", "--json-out", str(root)],
     ["--json-out"]),
]
NEEDS_A_CHECKPOINT = {"resume-every-checkpoint-damaged", "resume-into-another-model"}


def _snapshot(root: pathlib.Path) -> dict[str, bytes | None]:
  return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
          for p in sorted(root.rglob("*"))}


def _boom(*args, **kwargs):
  raise AssertionError("training started, but the arguments should have been refused first")


def test_the_sweep_has_at_least_forty_cases():
  assert len(CASES) >= 40
  assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("build, expected",
                         [pytest.param(b, e, id=i) for i, b, e in CASES])
def test_a_bad_command_line_ends_in_one_clear_line(build, expected, request, tiny_run,
                                                   tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)  # A default --out would land here.
  root = tmp_path / "case"
  root.mkdir()
  argv = build(root, tiny_run)
  if request.node.callspec.id not in NEEDS_A_CHECKPOINT:
    monkeypatch.setattr(rnnjax, "fit", _boom)
  monkeypatch.setattr(cli.bench, "run", _boom)
  before = _snapshot(tmp_path)
  capsys.readouterr()
  try:
    code = cli.main(argv)
  except SystemExit as exit_:
    code = exit_.code
  out, err = capsys.readouterr()
  assert code not in (0, None), (out, err)
  assert "Traceback" not in err and "Traceback" not in out
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith("rnnjax") and "error: " in lines[0], err
  for fragment in expected:
    assert fragment in lines[0], (fragment, lines[0])
  assert "encoding=" not in err and "path=" not in err and "rnnjax.tasks" not in err
  after = _snapshot(tmp_path)
  if argv[0] == "bench":  # `bench --json-out` is refused by trying to write it.
    after = {k: v for k, v in after.items() if not k.endswith("rows.jsonl")}
  assert after == before


def test_a_bad_command_line_in_a_subprocess_prints_one_line(tmp_path):
  # The in-process cases above, once as a user runs them.
  proc = subprocess.run(
      [sys.executable, "-m", "rnnjax.cli", "train", "--seed", str(2**64), "--out",
       str(tmp_path / "run")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
  assert proc.stderr.startswith("rnnjax train: error: argument --seed: must be in [0, ")
  assert not (tmp_path / "run").exists()
