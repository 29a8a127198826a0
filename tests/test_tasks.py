"""Tests for rnnjax.tasks: the data files, the batches, the metrics and the baselines.

Every number is checked against an independent computation: the CSV files are parsed
here with the `csv` module, baselines are recomputed in NumPy from the raw values, and
`evaluate` is fed "oracle" predictions built in the test (which must score ~0) and the
baselines' own predictions (which must score exactly the baseline), on both held-out splits
("val" and "test"); the splits are checked to be disjoint and never read by a training batch.
"""

from __future__ import annotations

import csv
import functools
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rnnjax import tasks

DATA = pathlib.Path(tasks.__file__).parent / "data"
KEY = jax.random.key(0)
B = 64

# Small configurations, so each task compiles quickly.
CONFIGS = {
    "co2": {},
    "sunspots": {},
    "adding": {"length": 12, "n_eval": 256, "eval_batch": 128},
    "copy": {"delay": 4, "n_copy": 3, "n_eval": 256, "eval_batch": 128},
    "text": {"window": 16},
}
TEXT = "".join(f"def f{i}(x):\n  return x * {i % 7} + {i % 3}\n\n" for i in range(120))


@pytest.fixture(scope="module")
def text_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
  path.write_text(TEXT, encoding="utf-8")
  return path


@functools.cache
def build(name: str, path: pathlib.Path | None = None) -> tasks.Task:
  kwargs = dict(CONFIGS[name], **({"path": path} if name == "text" else {}))
  return tasks.get_task(name, **kwargs)


@pytest.fixture(params=sorted(CONFIGS))
def task(request, text_path):
  return build(request.param, text_path)


def read_csv(name: str) -> tuple[list[str], list[str], np.ndarray]:
  """(comment lines, column names, rows as float64) of a data file, parsed with `csv`."""
  with open(DATA / name, newline="", encoding="utf-8") as f:
    lines = f.read().splitlines()
  comments = [line for line in lines if line.startswith("#")]
  rows = list(csv.reader(line for line in lines if not line.startswith("#")))
  return comments, rows[0], np.array(rows[1:], np.float64)


# ---- data files ----

def test_co2_file():
  comments, columns, rows = read_csv("co2.csv")
  header = "\n".join(comments)
  for words in ["statsmodels.datasets.co2", "Keeling", "Whorf", "CDIAC", "Public domain",
                "monthly", "linear interpolation", "co2_ppm"]:
    assert words in header
  assert columns == ["year", "month", "co2_ppm"]
  assert rows.shape == (526, 3)
  assert tuple(rows[0, :2]) == (1958, 3) and tuple(rows[-1, :2]) == (2001, 12)
  months = rows[:, 0] * 12 + rows[:, 1]
  np.testing.assert_array_equal(np.diff(months), 1)  # every month, once, in order
  assert 300 < rows[:, 2].min() and rows[:, 2].max() < 380
  series = tasks.load_co2()
  np.testing.assert_array_equal(series.values, rows[:, 2])
  np.testing.assert_allclose(series.time, rows[:, 0] + (rows[:, 1] - 1) / 12)


def test_sunspots_file():
  comments, columns, rows = read_csv("sunspots.csv")
  header = "\n".join(comments)
  for words in ["statsmodels.datasets.sunspots", "NGDC", "Public domain"]:
    assert words in header
  assert columns == ["year", "sunspots"]
  assert rows.shape == (309, 2)
  np.testing.assert_array_equal(rows[:, 0], np.arange(1700, 2009))
  assert rows[:, 1].min() >= 0
  series = tasks.load_sunspots()
  np.testing.assert_array_equal(series.values, rows[:, 1])
  np.testing.assert_array_equal(series.time, rows[:, 0])


# ---- batches: shapes, dtypes, determinism ----

def test_batch_shapes_and_dtypes(task):
  batch = task.train_batch(KEY, B)
  assert set(batch) == {"xs", "ys", "mask"}
  t = batch["mask"].shape[0]
  assert batch["mask"].shape == (t, B) and batch["mask"].dtype == jnp.float32
  if task.vocab_size is None:
    assert batch["xs"].shape == (t, B, task.input_size) and batch["xs"].dtype == jnp.float32
    assert batch["ys"].shape == (t, B, task.output_size) and batch["ys"].dtype == jnp.float32
  else:
    assert task.input_size == task.output_size == task.vocab_size
    for k in ("xs", "ys"):
      assert batch[k].shape == (t, B) and batch[k].dtype == jnp.int32
      assert 0 <= int(batch[k].min()) and int(batch[k].max()) < task.vocab_size
  loss = jax.jit(task.loss)(jnp.zeros((t, B, task.output_size), jnp.float32), batch)
  assert loss.shape == () and np.isfinite(float(loss))


def test_batches_are_a_pure_function_of_the_key(task):
  a, b, c = (task.train_batch(k, B) for k in (KEY, jax.random.key(0), jax.random.key(1)))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["xs"], c["xs"])


def test_batches_under_jit_with_legacy_keys(task):
  # As a training loop uses them: inside `jit`, from uint32 keys (`jax.random.PRNGKey`).
  root = jax.random.PRNGKey(0)
  batches = jax.jit(lambda s: task.train_batch(jax.random.fold_in(root, s), B))
  a, b = batches(3), batches(4)
  np.testing.assert_array_equal(a["xs"], batches(3)["xs"])
  assert not np.array_equal(a["xs"], b["xs"])
  assert a["mask"].shape == (a["xs"].shape[0], B)


@pytest.mark.parametrize("batch_size, error", [(0, ValueError), (-3, ValueError),
                                                (2.5, TypeError)])
def test_bad_batch_size(task, batch_size, error):
  with pytest.raises(error, match="batch_size"):
    task.train_batch(KEY, batch_size)


METRICS = {"co2": "rmse", "sunspots": "rmse", "adding": "mse", "copy": "cross_entropy",
           "text": "bits_per_char"}
UNITS = {"co2": ("ppm", "squared normalised units"),
         "sunspots": ("sunspot number", "squared normalised units"),
         "adding": ("", ""), "copy": ("nats", "nats"), "text": ("bits per character", "nats")}


def test_split_neutral_metric_baselines_and_units(task):
  assert task.metric == METRICS[task.name]
  assert (task.units, task.loss_units) == UNITS[task.name]
  assert set(task.baselines) == set(tasks.SPLITS) == {"val", "test"}
  assert tasks.SPLITS == ("val", "test")
  assert all(isinstance(v, float) and v > 0 for v in task.baselines.values())
  assert task.baseline == task.baselines["test"]  # the old name, read-only
  with pytest.raises(AttributeError):
    task.baseline = 1.0


@pytest.mark.parametrize("split", ["train", "validation", "TEST", None, 0])
def test_evaluate_rejects_a_bad_split(task, split):
  def predict(xs):
    raise AssertionError("predict must not be called")

  with pytest.raises(ValueError, match=r"`split` must be 'val'.*'test', got split=" +
                     re.escape(repr(split))):
    task.evaluate(predict, split)
  with pytest.raises(ValueError, match="`split`"):
    task.evaluate(predict=predict, split=split)
  with pytest.raises(TypeError):
    task.evaluate(predict)  # the split is required


# ---- forecasting ----

# (file, n_test, window, season); the validation range is as long as the test range.
FORECASTS = {"co2": ("co2.csv", 48, 48, 12), "sunspots": ("sunspots.csv", 30, 40, 11)}
# (task, differences): the defaults are co2 on monthly changes and sunspots on levels.
MODES = pytest.mark.parametrize("name, differences", [
    ("co2", True), ("co2", False), ("sunspots", False), ("sunspots", True)])


def raw_values(name: str) -> np.ndarray:
  return read_csv(FORECASTS[name][0])[2][:, -1]


def forecast_ranges(name: str) -> dict[str, tuple[int, int]]:
  """[start, end) of each split, from the file's length and n_test (= n_val)."""
  n, n_test = len(raw_values(name)), FORECASTS[name][1]
  return {"train": (0, n - 2 * n_test), "val": (n - 2 * n_test, n - n_test),
          "test": (n - n_test, n)}


@functools.cache
def forecast_task(name: str, differences: bool) -> tasks.Task:
  if differences == (name == "co2"):  # the default
    return build(name)
  return tasks.get_task(name, differences=differences)


def rmse(a, b):
  return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def window_starts(seqs: np.ndarray, signal: np.ndarray) -> np.ndarray:
  """Where each row of `seqs` starts in `signal` (-1 where it is no window of it)."""
  starts = []
  for seq in seqs:
    cands = np.flatnonzero(np.abs(signal[:len(signal) - len(seq) + 1] - seq[0]) < 1e-5)
    found = [c for c in cands if np.all(np.abs(signal[c:c + len(seq)] - seq) < 1e-5)]
    starts.append(found[0] if found else -1)
  return np.array(starts)


def test_forecast_defaults():
  assert build("co2").info["differences"] and not build("sunspots").info["differences"]


@MODES
def test_forecast_splits_and_normalisation(name, differences):
  task = forecast_task(name, differences)
  _, n_test, window, _ = FORECASTS[name]
  v = raw_values(name)
  ranges = forecast_ranges(name)
  n_train = ranges["train"][1]
  assert (task.info["n_train"], task.info["n_val"], task.info["n_test"]) == (
      n_train, n_test, n_test)
  assert {k: tuple(r) for k, r in task.info["splits"].items()} == ranges
  # The model's signal, and its part known before the first validation value.
  signal, known = (np.diff(v), n_train - 1) if differences else (v, n_train)
  np.testing.assert_allclose(task.info["mean"], signal[:known].mean())
  np.testing.assert_allclose(task.info["std"], signal[:known].std())
  z = (signal - signal[:known].mean()) / signal[:known].std()
  batch = task.train_batch(KEY, 2048)
  seqs = np.concatenate([batch["xs"][:1, :, 0], batch["ys"][:, :, 0]]).T  # [B, window + 1]
  assert seqs.shape == (2048, window + 1)
  np.testing.assert_array_equal(batch["mask"], 1.0)
  # Each is a window of the whole normalised signal that ends before the validation range,
  # and the last such window is drawn too.
  starts = window_starts(seqs, z)
  assert starts.min() >= 0 and starts.max() == known - (window + 1)


def test_forecast_warmup_mask():
  batch = tasks.co2_task(window=10, warmup=3).train_batch(KEY, 2)
  np.testing.assert_array_equal(batch["mask"][:, 0], [0, 0, 0] + [1] * 7)


@pytest.mark.parametrize("name", sorted(FORECASTS))
def test_forecast_baselines(name):
  task = build(name)
  _, _, _, season = FORECASTS[name]
  v = raw_values(name)
  naive = {}
  for split in ("val", "test"):
    a, b = forecast_ranges(name)[split]
    naive[split] = {"persistence": rmse(v[a - 1:b - 1], v[a:b]),
                    f"seasonal naive ({season})": rmse(v[a - season:b - season], v[a:b])}
  chosen = min(naive["val"], key=naive["val"].get)  # chosen on validation
  assert task.baseline_name == chosen == "persistence"
  for split in ("val", "test"):
    assert task.info["naive_rmse"][split] == pytest.approx(naive[split], rel=1e-12)
    assert task.baselines[split] == pytest.approx(naive[split][chosen], rel=1e-12)
  # The test numbers are those of the task before it had a validation split.
  assert task.baseline == pytest.approx({"co2": 1.2149194, "sunspots": 30.826471}[name])
  assert forecast_task(name, True).baselines == task.baselines  # the same held-out values


@MODES
@pytest.mark.parametrize("split", ["val", "test"])
def test_forecast_evaluate(name, differences, split):
  task = forecast_task(name, differences)
  v = raw_values(name)
  start, end = forecast_ranges(name)[split]
  first = 1 + differences  # the first value with a forecast
  signal = np.diff(v) if differences else v
  z = (signal - task.info["mean"]) / task.info["std"]
  seen = []

  def oracle(xs):  # the true next entry of the signal, in normalised units, at every step
    seen.append(xs)
    return jnp.concatenate([xs[1:], xs[-1:]])

  metrics, details = task.evaluate(oracle, split=split)
  # `predict` sees the signal known before the end of the split, nothing after it.
  assert seen[0].shape == (end - differences, 1, 1) and seen[0].dtype == jnp.float32
  np.testing.assert_allclose(seen[0][:, 0, 0], z[:end - differences], rtol=1e-6, atol=1e-6)
  assert set(metrics) == {"rmse"} and metrics["rmse"] < 1e-3
  assert (details["start"], details["end"]) == (start, end)
  assert details["units"] == task.units == task.info["units"]
  np.testing.assert_array_equal(details["truth"], v[:end])
  assert details["time"].shape == details["forecast"].shape == (end,)
  assert np.all(np.isnan(details["forecast"][:first]))
  # The baseline's forecast (persistence): the previous value.
  assert details["baseline_forecast"].shape == (end,)
  np.testing.assert_array_equal(details["baseline_forecast"][1:], v[:end - 1])
  assert rmse(details["baseline_forecast"][start:end], v[start:end]) == pytest.approx(
      task.baselines[split], rel=1e-12)

  # Persistence: the same value (levels), or no change (differences).
  no_change = -task.info["mean"] / task.info["std"]
  persist = (lambda xs: jnp.full_like(xs, no_change)) if differences else (lambda xs: xs)
  metrics, details = task.evaluate(persist, split)
  assert metrics["rmse"] == pytest.approx(rmse(v[start - 1:end - 1], v[start:end]), rel=1e-5)
  assert metrics["rmse"] == pytest.approx(task.baselines[split], rel=1e-5)
  np.testing.assert_allclose(details["forecast"][first:], v[first - 1:end - 1], rtol=1e-6,
                             atol=1e-4)

  with pytest.raises(ValueError, match=r"predict.*shape \(.*expected"):
    task.evaluate(lambda xs: xs[:, :, 0], split)


# ---- adding problem ----

def test_adding_batches():
  batch = jax.tree_util.tree_map(np.asarray, build("adding").train_batch(KEY, B))
  t = CONFIGS["adding"]["length"]
  values, marker = batch["xs"][..., 0], batch["xs"][..., 1]
  assert values.min() >= 0 and values.max() < 1
  assert set(np.unique(marker)) == {0.0, 1.0}
  np.testing.assert_array_equal(marker[:t // 2].sum(0), 1)
  np.testing.assert_array_equal(marker[t // 2:].sum(0), 1)
  target = np.sum(values.astype(np.float64) * marker, axis=0)
  np.testing.assert_allclose(batch["ys"][-1, :, 0], target, rtol=1e-6)
  np.testing.assert_array_equal(batch["ys"][:-1], 0)
  np.testing.assert_array_equal(batch["mask"], np.eye(t)[-1][:, None] * np.ones(B))


def test_adding_evaluate_and_baseline():
  task = tasks.adding_task()  # the default: length 100, 2048 held-out sequences per split
  seen = []

  def oracle(xs):
    seen.append(np.asarray(xs))
    total = jnp.sum(xs[..., 0] * xs[..., 1], axis=0)
    return jnp.broadcast_to(total[None, :, None], (*xs.shape[:2], 1))

  inputs = {}
  for split in ("val", "test"):
    seen.clear()
    metrics, details = task.evaluate(oracle, split)
    assert metrics["mse"] < 1e-10 and metrics["accuracy"] == 1.0
    xs = inputs[split] = np.concatenate(seen, axis=1)
    assert xs.shape == (100, 2048, 2)
    target = np.sum(xs[..., 0].astype(np.float64) * xs[..., 1], axis=0)
    np.testing.assert_allclose(details["truth"], target, rtol=1e-6)
    baseline = np.mean((1.0 - target) ** 2)
    assert task.baselines[split] == pytest.approx(baseline, rel=1e-6)
    assert 0.15 < baseline < 0.19
    metrics, _ = task.evaluate(lambda xs: jnp.ones((*xs.shape[:2], 1), jnp.float32), split)
    assert metrics["mse"] == pytest.approx(baseline, rel=1e-6)
  assert task.baseline_name == "predict 1.0"
  # The test set is the one drawn from key(eval_seed), as before validation existed.
  assert task.baseline == pytest.approx(0.17450, abs=5e-5)
  # Two different sets of sequences: no validation sequence is a test sequence.
  val, test = (inputs[s][..., 0].T for s in ("val", "test"))
  assert not np.isin(val[:, 0], test[:, 0]).any()
  assert tasks.adding_task().baselines == task.baselines  # both sets are fixed
  other = tasks.adding_task(val_seed=7)
  assert other.baselines["test"] == task.baselines["test"]
  assert other.baselines["val"] != task.baselines["val"]


# ---- copy task ----

def test_copy_batches():
  cfg = CONFIGS["copy"]
  k, delay = cfg["n_copy"], cfg["delay"]
  task = build("copy")
  batch = jax.tree_util.tree_map(np.asarray, task.train_batch(KEY, B))
  xs, ys, mask = batch["xs"], batch["ys"], batch["mask"]
  blank, delim = task.info["blank"], task.info["delimiter"]
  assert xs.shape == (delay + 2 * k, B) and task.vocab_size == 10
  assert xs[:k].max() < 8
  np.testing.assert_array_equal(xs[k:k + delay - 1], blank)
  np.testing.assert_array_equal(xs[k + delay - 1], delim)
  np.testing.assert_array_equal(xs[k + delay:], blank)
  np.testing.assert_array_equal(ys[-k:], xs[:k])
  np.testing.assert_array_equal(ys[:-k], blank)
  scored = np.arange(delay + 2 * k)[:, None] >= k + delay
  np.testing.assert_array_equal(mask, np.broadcast_to(scored, mask.shape))


def test_copy_evaluate_and_baseline():
  task = build("copy")
  k = CONFIGS["copy"]["n_copy"]
  assert task.baselines == pytest.approx({"val": math.log(8), "test": math.log(8)})
  assert task.metric == "cross_entropy"

  def oracle(xs):
    out = jnp.concatenate([jnp.full_like(xs[:-k], 8), xs[:k]])
    return 50.0 * jax.nn.one_hot(out, 10, dtype=jnp.float32)

  def memoryless(xs):  # uniform over the 8 symbols, never blank or delimiter
    row = jnp.array([0.0] * 8 + [-1e9, -1e9], jnp.float32)
    return jnp.broadcast_to(row, (*xs.shape, 10))

  truths = {}
  for split in ("val", "test"):
    metrics, details = task.evaluate(oracle, split)
    assert metrics["cross_entropy"] < 1e-6 and metrics["error"] == 0.0
    assert details["truth"].shape == (256, k)
    truths[split] = details["truth"]
    metrics, _ = task.evaluate(memoryless, split)
    assert metrics["cross_entropy"] == pytest.approx(task.baselines[split], rel=1e-6)
    metrics, _ = task.evaluate(lambda xs: jnp.zeros((*xs.shape, 10), jnp.float32), split)
    assert metrics["cross_entropy"] == pytest.approx(math.log(10), rel=1e-6)
  assert not np.array_equal(truths["val"], truths["test"])
  with pytest.raises(ValueError, match=r"`val_seed` \(=5\) must differ from `eval_seed`"):
    tasks.copy_task(delay=4, eval_seed=5, val_seed=5)


# ---- text ----

def test_text_vocabulary_and_batches(text_path):
  task = build("text", text_path)
  vocab = task.info["vocab"]
  assert vocab == sorted(set(TEXT)) and task.vocab_size == len(vocab)
  ids = tasks.encode(TEXT, vocab)
  assert ids.dtype == np.int32 and tasks.decode(ids, vocab) == TEXT
  n_train = task.info["n_train"]
  assert n_train == len(TEXT) - 2 * max(17, math.ceil(0.05 * len(TEXT)))
  batch = task.train_batch(KEY, B)
  np.testing.assert_array_equal(batch["xs"][1:], batch["ys"][:-1])
  train_text = TEXT[:n_train]
  for b in range(B):  # every window lies inside the training text
    window = tasks.decode(batch["xs"][:, b], vocab) + tasks.decode(batch["ys"][-1:, b], vocab)
    assert window in train_text
  with pytest.raises(ValueError, match="not in the vocabulary"):
    tasks.encode("é", vocab)


@given(st.text(alphabet=sorted(set(TEXT))))
def test_encode_decode_round_trip(s):
  vocab = sorted(set(TEXT))
  assert tasks.decode(tasks.encode(s, vocab), vocab) == s


def test_text_splits_are_disjoint_and_never_trained_on(tmp_path):
  # Training text of "abc", validation text of "v", test text of "w": a training batch that
  # read a held-out character would hold a "v" or a "w".
  rng = np.random.default_rng(0)
  train = "".join(rng.choice(list("abc"), 360))
  path = tmp_path / "marked.txt"
  path.write_text(train + "v" * 20 + "w" * 20, encoding="utf-8")
  task = tasks.text_task(path, window=16)
  assert task.info["splits"] == {"train": [0, 360], "val": [360, 380], "test": [380, 400]}
  assert (task.info["n_train"], task.info["n_val"], task.info["n_test"]) == (360, 20, 20)
  vocab = task.info["vocab"]
  assert vocab == ["a", "b", "c", "v", "w"]
  batch = jax.tree_util.tree_map(np.asarray, task.train_batch(KEY, 4096))
  assert batch["xs"].max() <= 2 and batch["ys"].max() <= 2  # only a, b and c
  seen = {tasks.decode(batch["ys"][:, b], vocab) for b in range(4096)}
  assert {train[1:17], train[-16:]} <= seen  # the first and the last window are drawn
  inputs = []
  for split, char in (("val", 3), ("test", 4)):
    inputs.clear()
    _, details = task.evaluate(
        lambda xs: inputs.append(np.asarray(xs)) or jnp.zeros((*xs.shape, 5)), split)
    assert np.all(np.concatenate(inputs) == char) and details["n_chars"] == 16
    # Unigram fitted on the text before the split, where "v" (val) and "w" (test) are unseen:
    # add-one smoothing gives them 1 / (characters before + 5).
    before = {"val": 360, "test": 380}[split]
    assert task.baselines[split] == pytest.approx(math.log2(before + 5), rel=1e-12)


@pytest.mark.parametrize("split", ["val", "test"])
def test_text_evaluate_and_baseline(text_path, split):
  task = build("text", text_path)
  vocab, v, w = task.info["vocab"], task.vocab_size, CONFIGS["text"]["window"]
  n_held = max(w + 1, math.ceil(0.05 * len(TEXT)))  # characters in each held-out slice
  start = {"val": len(TEXT) - 2 * n_held, "test": len(TEXT) - n_held}[split]
  assert task.info["splits"][split] == [start, start + n_held]
  # Independent reference: consecutive windows of the slice, scored on their next characters.
  n_win = (n_held - 1) // w
  targets = "".join(TEXT[start + i * w + 1:start + (i + 1) * w + 1] for i in range(n_win))
  counts = np.array([TEXT[:start].count(c) for c in vocab], np.float64)  # the text before
  p = (counts + 1) / (counts.sum() + v)
  baseline = -np.mean([math.log2(p[vocab.index(c)]) for c in targets])
  assert task.baselines[split] == pytest.approx(baseline, rel=1e-12)
  assert task.baseline_name == "unigram" and task.metric == "bits_per_char"
  assert task.info["n_eval_chars"][split] == len(targets)

  seen = []

  def uniform(xs):
    seen.append(np.asarray(xs))
    return jnp.zeros((*xs.shape, v), jnp.float32)

  metrics, details = task.evaluate(uniform, split)
  assert metrics["bits_per_char"] == pytest.approx(math.log2(v), rel=1e-6)
  inputs = np.concatenate(seen, axis=1)
  assert inputs.shape == (w, n_win) and details["n_chars"] == len(targets)
  assert tasks.decode(inputs.T, vocab) == "".join(
      TEXT[start + i * w:start + (i + 1) * w] for i in range(n_win))
  assert details["held_out"][0] == targets[:w]
  logp = jnp.asarray(np.log(p), jnp.float32)
  metrics, _ = task.evaluate(lambda xs: jnp.broadcast_to(logp, (*xs.shape, v)), split)
  assert metrics["bits_per_char"] == pytest.approx(baseline, rel=1e-5)


def test_text_eval_is_bounded(tmp_path):
  path = tmp_path / "long.txt"
  path.write_text("abcd" * 20_000, encoding="utf-8")
  task = tasks.text_task(path, window=64, eval_chars=1000, eval_batch=4)
  calls = []
  for split in ("val", "test"):
    calls.clear()
    task.evaluate(lambda xs: calls.append(xs.shape) or jnp.zeros((*xs.shape, 4), jnp.float32),
                  split)
    assert calls == [(64, 4)] * 3
  assert task.info["n_eval_chars"] == {"val": 12 * 64, "test": 12 * 64}


def test_text_default_corpus_is_the_standard_library():
  task = tasks.text_task(max_chars=50_000, window=32)
  assert "standard library" in task.info["source"] and task.info["n_chars"] == 50_000
  vocab = task.info["vocab"]
  assert vocab == sorted(vocab) and len(set(vocab)) == len(vocab) and "d" in vocab
  assert tasks.decode(tasks.encode("def f(x):\n", vocab), vocab) == "def f(x):\n"


def test_text_errors(tmp_path):
  missing = tmp_path / "nope.txt"
  with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
    tasks.text_task(missing)
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  with pytest.raises(ValueError, match="empty"):
    tasks.text_task(empty)
  short = tmp_path / "short.txt"
  short.write_text("x" * 100)
  with pytest.raises(ValueError, match=r"has 100 characters.*window=128.*at least 387"):
    tasks.text_task(short)
  tasks.text_task(short, window=10)  # fine with a smaller window
  with pytest.raises(ValueError, match="is a directory"):
    tasks.text_task(tmp_path)
  latin = tmp_path / "latin.txt"
  latin.write_bytes("café ".encode("latin-1") * 100)
  with pytest.raises(ValueError, match="encoding="):
    tasks.text_task(latin, window=8)
  assert tasks.text_task(latin, window=8, encoding="latin-1").vocab_size == 5


# ---- registry and argument checks ----

def test_registry():
  assert sorted(tasks.TASKS) == ["adding", "co2", "copy", "shakespeare", "sunspots", "text"]
  with pytest.raises(ValueError, match=r"'nope'.*adding, co2, copy, shakespeare, sunspots, text"):
    tasks.get_task("nope")
  assert tasks.get_task("co2", window=24).info["window"] == 24


@pytest.mark.parametrize("name, kwargs, error, pattern", [
    ("co2", {"window": 0}, ValueError, "`window`"),
    ("co2", {"window": 478}, ValueError, "smaller `window`"),
    ("co2", {"warmup": 48}, ValueError, "`warmup`"),
    ("co2", {"differences": "yes"}, TypeError, "`differences`"),
    ("sunspots", {"n_test": -1}, ValueError, "`n_test`"),
    ("sunspots", {"window": 4.0}, TypeError, "`window` must be an integer"),
    ("adding", {"length": 0}, ValueError, "`length`"),
    ("adding", {"length": 1}, ValueError, "`length` must be at least 2"),
    ("adding", {"n_eval": 0}, ValueError, "`n_eval`"),
    ("adding", {"n_eval": 300, "eval_batch": 256}, ValueError, "multiple of `eval_batch`"),
    ("adding", {"length": "100"}, TypeError, "`length`"),
    ("copy", {"delay": 0}, ValueError, "`delay`"),
    ("copy", {"n_symbols": 1}, ValueError, "`n_symbols`"),
    ("copy", {"n_copy": -2}, ValueError, "`n_copy`"),
    ("text", {"window": -1}, ValueError, "`window`"),
    ("text", {"test_fraction": 0.9}, ValueError, "`test_fraction`"),
    ("text", {"test_fraction": "0.1"}, TypeError, "`test_fraction`"),
    ("text", {"val_fraction": 0.0}, ValueError, "`val_fraction`"),
    ("co2", {"n_val": 0}, ValueError, "`n_val`"),
    ("sunspots", {"n_val": 250}, ValueError, "n_val=250"),
    ("adding", {"val_seed": 12345}, ValueError, "`val_seed`"),
    ("copy", {"val_seed": -1}, ValueError, "`val_seed`"),
    ("text", {"path": 3}, TypeError, "`path`"),
    ("text", {"eval_chars": 0}, ValueError, "`eval_chars`"),
])
def test_argument_errors(name, kwargs, error, pattern):
  with pytest.raises(error, match=pattern):
    tasks.get_task(name, **kwargs)
