"""`rnnjax train --dtype bfloat16`: mixed precision from the flag to the model.

One tiny run (two steps of the adding problem) is shared; the reference for what the model
must be is the library's own contract, built by hand: cells and read-out computing in
bfloat16 with float32 params (see tests/test_precision.py for the numerics).
"""

import contextlib
import io
import json

import jax
import jax.numpy as jnp
import pytest

import rnnjax
from rnnjax import cli, runs

TINY = ["train", "--task", "adding", "--length", "5", "--hidden", "8", "--batch-size", "4",
        "--steps", "2", "--steps-per-call", "2", "--checkpoint-every", "2", "--eval-every", "0",
        "--quiet", "--no-plots"]


@pytest.fixture(autouse=True)
def _standard_promotion():
  """The CLI runs under standard promotion (optax's own code needs it)."""
  with jax.numpy_dtype_promotion("standard"):
    yield


def _main(args):
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.main(args)
  return code, out.getvalue(), err.getvalue()


def test_bfloat16_run_trains_a_mixed_precision_model(tmp_path):
  out = tmp_path / "run"
  code, stdout, stderr = _main([*TINY, "--cell", "gru", "--layers", "2", "--dtype", "bfloat16",
                                "--out", str(out)])
  assert code == 0, stderr
  assert "bfloat16 compute" in stdout.splitlines()[0]
  assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
  run = rnnjax.load_run(out, "newest")
  mixed = rnnjax.gru(8, dtype=jnp.bfloat16)
  assert runs.model_core(run.config) == rnnjax.stack([mixed, mixed])
  assert {a.dtype for a in jax.tree_util.tree_leaves(run.params)} == {jnp.dtype(jnp.float32)}
  xs = jnp.ones((5, 3, 2))
  assert run.model.apply(run.params, xs)[0].dtype == jnp.float32  # the loss's input
  with jax.numpy_dtype_promotion("strict"):  # the core's outputs are bfloat16
    hs, _ = rnnjax.unroll(runs.model_core(run.config), run.params.core, xs)
  assert hs.dtype == jnp.bfloat16


def test_default_and_old_configs_are_float32():
  config = cli.resolve_config(cli.build_parser().parse_args(TINY))
  assert config["dtype"] == "float32"
  del config["dtype"]  # a config.json from before --dtype
  assert runs.model_core(config) == rnnjax.lstm(config["hidden"])
  assert runs.compute_dtype(config) == "float32"


def test_an_unknown_dtype_is_refused_in_one_line(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main([*TINY, "--dtype", "float16"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "--dtype" in err and "float16" in err
