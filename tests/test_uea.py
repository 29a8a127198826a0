"""Tests for rnnjax.tasks.uea: the UEA/UCR datasets bundled with aeon, as classification tasks.

The reference is independent of the loader: the archive's `.ts` files are parsed here by a
few lines of plain Python, the normalisation statistics recomputed with a loop over the
training part, and `evaluate` fed an oracle (the true class, found by matching each series
against the hand-normalised split) and constant predictions (the majority baseline).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import tasks
from rnnjax.tasks import uea

HAS_AEON = importlib.util.find_spec("aeon") is not None
needs_aeon = pytest.mark.skipif(
    not HAS_AEON, reason='aeon is not installed (pip install "rnnjax[uea]"); CI installs it')
NAME = "JapaneseVowels"


def parse_ts(path: pathlib.Path) -> tuple[list[np.ndarray], list[str], list[str]]:
  """(series [C, L] float64, labels, class names in header order) of a `.ts` file."""
  series, labels, classes, in_data = [], [], [], False
  for line in path.read_text().splitlines():
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    if in_data:
      *channels, label = line.split(":")
      series.append(np.array([[float(v) for v in c.split(",")] for c in channels]))
      labels.append(label)
    elif line.lower().startswith("@classlabel"):
      classes = line.split()[2:]
    elif line.lower().startswith("@data"):
      in_data = True
  return series, labels, classes


@functools.cache
def raw(split: str):
  """The archive file of JapaneseVowels ("TRAIN" or "TEST"), parsed here: (series, class ids)."""
  folder = pathlib.Path(importlib.util.find_spec("aeon").submodule_search_locations[0])
  series, labels, classes = parse_ts(folder / "datasets" / "data" / NAME / f"{NAME}_{split}.ts")
  return series, np.array([classes.index(y) for y in labels])


@functools.cache
def task(eval_batch: int = 512) -> tasks.Task:
  return tasks.uea_task(NAME, eval_batch=eval_batch)


def record(t: tasks.Task, split: str):
  """(`xs` [T, N, C], `lengths` [N], details) of a split, as `evaluate` passes them to predict."""
  seen = []

  def predict(xs, lengths):
    seen.append((np.asarray(xs), np.asarray(lengths)))
    return jnp.zeros((xs.shape[1], t.output_size))

  _, details = t.evaluate(predict, split)
  xs = np.concatenate([x for x, _ in seen], axis=1)[:, :details["truth"].size]
  lengths = np.concatenate([n for _, n in seen])[:details["truth"].size]
  return xs, lengths, details


@functools.cache
def statistics() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(training positions, mean [C], std [C]): the statistics, by a loop over the training part."""
  val = set(record(task(), "val")[2]["index"].tolist())
  series, _ = raw("TRAIN")
  train = np.array([i for i in range(len(series)) if i not in val])
  total, count = np.zeros(12), 0
  for i in train:
    total += series[i].sum(axis=1)
    count += series[i].shape[1]
  mean = total / count
  square = np.zeros(12)
  for i in train:
    square += ((series[i] - mean[:, None]) ** 2).sum(axis=1)
  return train, mean, np.sqrt(square / count)


def normalised(split: str, positions) -> list[np.ndarray]:
  """The hand-normalised series `[L, C]` at `positions` of the archive file."""
  _, mean, std = statistics()
  series, _ = raw(split)
  return [((series[i] - mean[:, None]) / std[:, None]).T for i in positions]


@needs_aeon
def test_sizes_lengths_and_classes():
  t = task()
  info = t.info
  assert (t.name, t.input_size, t.output_size, t.vocab_size) == ("uea:JapaneseVowels", 12, 9, None)
  assert (t.metric, t.readout, t.maximize, t.baseline_name) == (
      "accuracy", "last", True, "majority class")
  assert info["n_train"] + info["n_val"] == len(raw("TRAIN")[0]) == 270
  assert info["n_test"] == len(raw("TEST")[0]) == 370
  assert (info["channels"], info["classes"]) == (12, 9)
  assert (info["min_length"], info["max_length"]) == (7, 29)
  assert info["length"] == 29 and "aeon" in info["source"]
  assert set(info["defaults"]) == {"hidden", "steps", "batch_size", "lr", "eval_every"}
  assert all(p["accuracy"] <= 1 and p["source"] for p in info["published"])
  for split, name in (("val", "TRAIN"), ("test", "TEST")):
    xs, lengths, details = record(t, split)
    series, ids = raw(name)
    assert xs.shape == (29, details["index"].size, 12) and xs.dtype == np.float32
    np.testing.assert_array_equal(lengths, [series[i].shape[1] for i in details["index"]])
    np.testing.assert_array_equal(details["truth"], ids[details["index"]])
  test_ids = record(t, "test")[2]["truth"]
  np.testing.assert_array_equal(np.bincount(test_ids), [31, 35, 88, 44, 29, 24, 40, 50, 29])
  np.testing.assert_array_equal(np.bincount(raw("TRAIN")[1]), [30] * 9)


@needs_aeon
def test_validation_split_is_disjoint_stratified_and_fixed():
  val = record(task(), "val")[2]["index"]
  train, _, _ = statistics()
  assert not set(val) & set(train) and len(val) + len(train) == 270
  ids = raw("TRAIN")[1]
  np.testing.assert_array_equal(np.bincount(ids[val]), [6] * 9)  # round(0.2 * 30) per class
  np.testing.assert_array_equal(val, record(tasks.uea_task(NAME), "val")[2]["index"])
  other = record(tasks.uea_task(NAME, seed=1), "val")[2]["index"]
  assert set(other) != set(val) and np.array_equal(np.bincount(ids[other]), [6] * 9)


@needs_aeon
def test_normalisation_uses_training_statistics_and_zero_padding():
  _, mean, std = statistics()
  np.testing.assert_allclose(task().info["mean"], mean, rtol=1e-9)
  np.testing.assert_allclose(task().info["std"], std, rtol=1e-9)
  for split, name in (("val", "VAL"), ("test", "TEST")):
    xs, lengths, details = record(task(), split)
    expected = normalised("TRAIN" if name == "VAL" else "TEST", details["index"])
    for n, x in enumerate(expected):
      np.testing.assert_allclose(xs[:lengths[n], n], x, rtol=1e-5, atol=1e-5)
      assert not xs[lengths[n]:, n].any()


@needs_aeon
def test_train_batches_read_the_training_part_only():
  t = task()
  train, _, _ = statistics()
  pool = normalised("TRAIN", train)
  val = normalised("TRAIN", record(t, "val")[2]["index"])
  ids = raw("TRAIN")[1][train]
  batch = t.train_batch(jax.random.key(3), 64)
  again = t.train_batch(jax.random.key(3), 64)
  assert batch["xs"].shape == (29, 64, 12) and batch["lengths"].dtype == jnp.int32
  assert batch["ys"].shape == (64,) and batch["ys"].dtype == jnp.int32
  np.testing.assert_array_equal(batch["xs"], again["xs"])
  xs, lengths, ys = (np.asarray(batch[k]) for k in ("xs", "lengths", "ys"))
  for b in range(64):
    x = xs[:lengths[b], b]
    assert not xs[lengths[b]:, b].any()
    match = [i for i, p in enumerate(pool) if p.shape == x.shape and np.allclose(p, x, atol=1e-5)]
    assert len(match) == 1 and ids[match[0]] == ys[b]
    assert not any(v.shape == x.shape and np.allclose(v, x, atol=1e-5) for v in val)


@needs_aeon
@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluate_oracle_and_majority(split):
  t = task(eval_batch=100)  # 370 test series: four calls, the last one wrapping around
  xs_all, lengths_all, details = record(t, split)
  truth = details["truth"]

  label = {xs_all[:, i].tobytes() + bytes([lengths_all[i]]): truth[i] for i in range(truth.size)}
  assert len(label) == truth.size  # no two series alike

  def oracle(xs, lengths):
    xs, lengths = np.asarray(xs), np.asarray(lengths)
    logits = np.full((xs.shape[1], 9), -30.0, np.float32)
    for b in range(xs.shape[1]):
      logits[b, label[xs[:, b].tobytes() + bytes([lengths[b]])]] = 0.0
    return jnp.asarray(logits)

  metrics, _ = t.evaluate(oracle, split)
  assert metrics["accuracy"] == 1.0 and metrics["error"] == 0.0
  assert metrics["cross_entropy"] == pytest.approx(math.log1p(8 * math.exp(-30.0)), abs=1e-9)
  train_ids = raw("TRAIN")[1][statistics()[0]]
  majority = int(np.argmax(np.bincount(train_ids, minlength=9)))
  constant = lambda xs, lengths: jnp.zeros((xs.shape[1], 9)).at[:, majority].set(1.0)
  metrics, details = t.evaluate(constant, split)
  assert metrics["accuracy"] == pytest.approx(np.mean(truth == majority))
  assert metrics["accuracy"] == pytest.approx(t.baselines[split])
  assert metrics["cross_entropy"] == pytest.approx(
      math.log(8 + math.e) - np.mean(truth == majority), rel=1e-5)
  np.testing.assert_array_equal(details["prediction"], np.full(truth.size, majority))


@needs_aeon
def test_get_task_prefix_and_bad_predictions():
  t = tasks.get_task("uea:JapaneseVowels")
  assert t.name == "uea:JapaneseVowels" and t.info["n_test"] == 370
  with pytest.raises(ValueError, match=r"evaluate: `predict\(xs, lengths\)` returned an array of "
                     r"shape \(370, 9, 1\), expected \(370, 9\)"):
    t.evaluate(lambda xs, lengths: jnp.zeros((xs.shape[1], 9, 1)), "test")
  with pytest.raises(ValueError, match="`split` must be 'val'"):
    t.evaluate(lambda xs, lengths: jnp.zeros((xs.shape[1], 9)), "train")


@needs_aeon
@pytest.mark.parametrize("name, message", [
    ("Covid3Month", r"'Covid3Month' is bundled with aeon but is not one of the archive's "
                    r"classification datasets .*; choose one of: ACSF1, ArrowHead"),
    ("Airline", r"'Airline' is bundled with aeon but is not one of the archive's classification"),
    ("FaceDetection", r"dataset 'FaceDetection' is not bundled with aeon, and rnnjax never "
                      r"downloads one; choose one of the bundled datasets: ACSF1, .*"),
    ("japanesevowels", r"unknown dataset 'japanesevowels'; did you mean 'JapaneseVowels'\?"),
])
def test_unknown_datasets_fail_at_once(name, message):
  with pytest.raises(ValueError, match=r"rnnjax\.tasks\.uea_task: " + message):
    tasks.get_task(f"uea:{name}")


def test_without_aeon_the_install_line(monkeypatch):
  monkeypatch.setattr(uea.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ImportError, match=r'^rnnjax\.tasks\.uea_task: the UEA/UCR tasks need aeon, '
                     r'which is not installed; install it with: pip install "rnnjax\[uea\]"$'):
    tasks.get_task("uea:JapaneseVowels")


def test_bundled_names():
  assert tasks.UEA_DATASETS == ("ACSF1", "ArrowHead", "BasicMotions", "GunPoint",
                                "ItalyPowerDemand", "JapaneseVowels", "OSULeaf",
                                "PickupGestureWiimoteZ")
