"""Classification through the run recipe, `fit` and `rnnjax train`, on a tiny fake task.

The task: sequences of 2 to 8 steps, zero-padded to 8, whose class is the sign of the
first feature at the last valid step (the other steps are noise). A model that is not
given the lengths reads padding there and cannot beat chance; one read out at the last
valid step learns it in a few dozen steps. Its accuracy is higher-is-better
(`maximize=True`), so the best checkpoint is the one with the highest validation accuracy.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax import cli, runs, tasks

T, I, CLASSES = 8, 2, 2


@pytest.fixture(autouse=True)
def _standard_promotion():
  """The CLI and optax run under standard promotion."""
  with jax.numpy_dtype_promotion("standard"):
    yield


def _split(seed, n):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, T + 1, size=n).astype(np.int32)
  xs = rng.normal(size=(T, n, I)).astype(np.float32)
  ys = rng.integers(0, CLASSES, size=n).astype(np.int32)
  xs[lengths - 1, np.arange(n), 0] = np.where(ys == 1, 1.5, -1.5)
  xs[np.arange(T)[:, None] >= lengths[None, :]] = 0.0  # zeros past each length
  return xs, lengths, ys


def toy_task() -> tasks.Task:
  """The fake classification task of this module (the shared interface of `uea_task`)."""
  train, splits = _split(0, 256), {"val": _split(1, 64), "test": _split(2, 64)}
  majority = int(np.bincount(train[2]).argmax())

  def train_batch(key, batch_size):
    idx = jax.random.randint(key, (batch_size,), 0, train[2].size)
    return {"xs": jnp.asarray(train[0])[:, idx], "lengths": jnp.asarray(train[1])[idx],
            "ys": jnp.asarray(train[2])[idx]}

  def evaluate(predict, split):
    xs, lengths, ys = splits[split]
    logits = np.asarray(predict(jnp.asarray(xs), jnp.asarray(lengths)), np.float64)
    assert logits.shape == (ys.size, CLASSES)
    accuracy = float(np.mean(logits.argmax(-1) == ys))
    ce = float(tasks.classification_cross_entropy(jnp.asarray(logits), {"ys": jnp.asarray(ys)}))
    return {"accuracy": accuracy, "cross_entropy": ce, "error": 1 - accuracy}, {"truth": ys}

  return tasks.Task(
      name="toy", input_size=I, output_size=CLASSES, vocab_size=None, train_batch=train_batch,
      loss=tasks.classification_cross_entropy, evaluate=evaluate, metric="accuracy",
      baselines={s: float(np.mean(splits[s][2] == majority)) for s in tasks.SPLITS},
      baseline_name="majority class", units="", loss_units="nats",
      info={"defaults": dict(hidden=16, steps=60, batch_size=32, lr=3e-2, eval_every=20),
            "published": [{"model": "a hand-made reference", "value": 0.75, "source": "here"}]},
      readout="last", maximize=True, tiebreak="cross_entropy")


def test_classification_cross_entropy_is_the_mean_negative_log_likelihood():
  rng = np.random.default_rng(0)
  logits, ys = rng.normal(size=(5, 3)), rng.integers(0, 3, size=5)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = -np.mean(logp[np.arange(5), ys])
  got = tasks.classification_cross_entropy(jnp.asarray(logits, jnp.float32),
                                           {"ys": jnp.asarray(ys, jnp.int32)})
  np.testing.assert_allclose(float(got), want, rtol=1e-6)
  assert tasks.Task._field_defaults == {"readout": "steps", "maximize": False, "tiebreak": None}


def test_the_recipe_passes_lengths_and_fit_keeps_the_highest_accuracy(tmp_path):
  task = toy_task()
  config = dict(cell="gru", hidden=16, layers=1, dropout=0.0, lr=3e-2, steps=60, clip=1.0)
  model = runs.make_model(config, task)
  assert runs.model_readout(config, task) == ("last", None)
  optimizer = runs.make_optimizer(config)
  state = rnnjax.train_state(model.init(jax.random.PRNGKey(0)), optimizer, jax.random.PRNGKey(1))
  predict = runs.make_predict(model)
  batches = jax.jit(lambda s: task.train_batch(jax.random.fold_in(jax.random.PRNGKey(2), s), 32))
  result = rnnjax.fit(
      state, rnnjax.make_train_step(runs.make_loss(config, task, model), optimizer), batches,
      num_steps=60, eval_fn=lambda p: task.evaluate(lambda xs, n: predict(p, xs, n), "val")[0],
      eval_every=20, best_metric="accuracy", best_mode="max", out_dir=tmp_path, progress=False)
  accuracies = [e["val/accuracy"] for e in result.evals]
  assert result.best_metrics["val/accuracy"] == max(accuracies) >= 0.85
  assert result.best_step == result.evals[accuracies.index(max(accuracies))]["step"]
  # Without the lengths, the read-out sees the padding's zeros: no better than chance.
  blind = task.evaluate(lambda xs, n: predict(result.state.params, xs), "val")[0]
  assert blind["accuracy"] < 0.75


def test_model_readout_refuses_a_per_step_readout_and_counts_flatten_steps():
  task = toy_task()
  config = dict(cell="gru", hidden=4, layers=1, dropout=0.0)
  assert runs.model_readout({**config, "readout": "flatten"}, task) == ("flatten", T)
  assert runs.make_model({**config, "readout": "flatten"}, task).init(
      jax.random.PRNGKey(0)).w_out.shape == (4 * T, CLASSES)
  with pytest.raises(ValueError, match="one label per sequence, got readout='steps'"):
    runs.model_readout({**config, "readout": "steps"}, task)
  co2 = tasks.get_task("co2")
  with pytest.raises(ValueError, match="predicts every step"):
    runs.model_readout({**config, "readout": "last"}, co2)
  assert runs.model_readout(config, co2) == ("steps", None)  # configs from before readouts


@pytest.fixture
def toy_cli(monkeypatch):
  """`--task toy` on the command line."""
  monkeypatch.setitem(tasks.TASKS, "toy", toy_task)


def test_rnnjax_train_on_a_classification_task(toy_cli, tmp_path, capsys):
  out = tmp_path / "run"
  code = cli.main(["train", "--task", "toy", "--cell", "gru", "--readout", "mean", "--quiet",
                   "--no-plots", "--out", str(out)])
  stdout, stderr = capsys.readouterr()
  assert code == 0, stderr
  config = json.loads((out / "config.json").read_text())
  # The task's own defaults, and the readout recorded so that the run can be rebuilt.
  assert (config["hidden"], config["steps"], config["lr"]) == (16, 60, 3e-2)
  assert config["readout"] == "mean" and "num_steps" not in config
  summary = json.loads((out / "summary.json").read_text())
  records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  # The first best by accuracy, ties broken by the lower cross-entropy.
  evals = [(r["val/accuracy"], -r["val/cross_entropy"], -r["step"]) for r in records
           if "val/accuracy" in r]
  assert len(evals) == 3 and summary["best"]["step"] == -max(evals)[2]
  assert summary["maximize"] is True and summary["metric"] == "accuracy"
  assert summary["tiebreak"] == "cross_entropy"
  value = summary["best"]["test"]["accuracy"]
  assert summary["beats_baseline"] is (value > summary["baselines"]["test"])
  assert summary["published"][0]["model"] == "a hand-made reference"
  lines = stdout.strip().splitlines()
  assert "read out at the mean over valid steps" in lines[0]
  assert lines[-2] == ("published test accuracy (sources in summary.json): a hand-made "
                       "reference 0.75")
  assert lines[-1].startswith(f"test accuracy {value:.4g} at step {summary['best']['step']} ")
  assert "vs  majority class baseline" in lines[-1]
  ce = summary["best"]["val"]["cross_entropy"]
  assert f", ties broken by val cross_entropy {ce:.4g})" in lines[-1]
  # load_run rebuilds the same model from config.json; its predict takes the lengths.
  run = rnnjax.load_run(out)
  predict = runs.make_predict(run.model)
  metrics, _ = run.task.evaluate(lambda xs, n: predict(run.params, xs, n), "test")
  assert metrics["accuracy"] == value


@pytest.mark.parametrize("args, expected", [
    (["--task", "toy", "--diagnostics"], ["--diagnostics", "--task toy", "one label"]),
    (["--task", "co2", "--readout", "last"], ["--readout", "classification", "--task co2"]),
])
def test_refused_flags_of_classification_are_one_line(args, expected, toy_cli, tmp_path, capsys,
                                                      monkeypatch):
  monkeypatch.setattr(rnnjax, "fit", lambda *a, **k: pytest.fail("training started"))
  code = cli.main(["train", *args, "--out", str(tmp_path / "run")])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1 and err.startswith("rnnjax train: error: ")
  for text in expected:
    assert text in err
  assert not (tmp_path / "run").exists()
