"""UEA/UCR time-series classification: the archive datasets that aeon bundles in its wheel.

aeon (`pip install "rnnjax[uea]"`) ships a few datasets of the UEA/UCR archive inside its
package (`aeon/datasets/data/NAME/NAME_TRAIN.ts` and `NAME_TEST.ts`), so they load offline;
`UEA_DATASETS` lists those that are classification problems. Nothing is ever downloaded:
any other name fails at once, before aeon is imported.

Splits: the archive's TEST file is "test"; its TRAIN file is split into training and
validation, stratified by class with a fixed seed (per class, `round(val_fraction * n)`
series, at most `n - 1`, go to validation). Every channel is normalised with the mean and
standard deviation of the training part only (over all its valid steps). Series keep their
own lengths: they are zero-padded to `T`, the longest series of the dataset (all splits),
and passed with `lengths`; nothing is resampled. A batch holds `xs: [T, B, C]` float32,
`lengths: [B]` int32 and `ys: [B]` int32 class ids (the order of the file header's labels).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.tasks import _common, base

UEA_DATASETS = ("ACSF1", "ArrowHead", "BasicMotions", "GunPoint", "ItalyPowerDemand",
                "JapaneseVowels", "OSULeaf", "PickupGestureWiimoteZ")
"""The archive's classification datasets in aeon's wheel, for `uea_task` and `uea:NAME`."""

_INSTALL = 'pip install "rnnjax[uea]"'

# The defaults of `rnnjax train --task uea:NAME`, for every dataset: chosen for a GRU of 64
# read out at its last valid step on JapaneseVowels' validation splits (split seeds 0 and 1,
# three training seeds each) only, from lr {1e-3, 3e-3, 1e-2, 2e-2} x steps {500, 1000, 2000,
# 3000} x batch {16, 32, 64}. eval_every is 500, not 100: the validation splits are small (54
# series or fewer) and reach their best accuracy within 100-200 steps, so a finer grid picks
# an early, barely trained checkpoint (the first to touch the ceiling). See docs/tasks.md,
# "UEA/UCR classification", for the history of this choice.
_DEFAULTS = dict(hidden=64, steps=2000, batch_size=32, lr=1e-2, eval_every=500)
# Per dataset, on top: JapaneseVowels takes 128 units, chosen by `python
# benchmarks/uea_tune.py` on validation splits 1 and 2 only (three training seeds each, scored
# at the end of training): 128 units tied 64 on validation accuracy (0.985) and had the lower
# validation cross-entropy (0.062 against 0.076), the rule `rnnjax train` selects by. The
# other configurations tried (readout "mean", 2 layers, lr 3e-3 with 3000 steps, an LSTM)
# scored lower. The other datasets' validation splits (6 to 14 series) are too small to tune on.
_DATASET_DEFAULTS = {"JapaneseVowels": dict(hidden=128)}

# Published test accuracies on the archive's own TRAIN/TEST split: {tag: source}, then per
# dataset (method, kind, accuracy, tag); kind "recurrent" marks a model with a recurrent part.
_SOURCES = {
    "Fawaz19": "Fawaz et al. 2019, Deep learning for time series classification: a review, "
               "DMKD 33; github.com/hfawaz/dl-4-tsc results/results-mts-avg-std.csv "
               "(multivariate, mean of 10 runs) and results/results-ucr-128.csv (mean of 5 runs)",
    "Karim19": "Karim et al. 2019, Multivariate LSTM-FCNs for time series classification, "
               "Neural Networks 116 (arXiv:1801.04503); results table in "
               "github.com/titu1994/MLSTM-FCN, images/MLSTM-FCN-scores2.png",
    "Karim18": "Karim et al. 2018, LSTM fully convolutional networks for time series "
               "classification, IEEE Access 6; github.com/titu1994/LSTM-FCN, "
               "Results/train_loss_old_datasets.csv",
    "Middlehurst24": "Middlehurst, Schafer & Bagnall 2024, Bake off redux, DMKD 38; "
                     "github.com/time-series-machine-learning/tsml-eval, tsml_eval/publications/"
                     "y2023/tsc_bakeoff/results/best/HC2_accuracy.csv, resample 0 (the archive's "
                     "split)",
}
_PUBLISHED_ROWS = {
    "JapaneseVowels": [("TWIESN (echo state network)", "recurrent", 0.965, "Fawaz19"),
                       ("LSTM-FCN", "recurrent", 0.99, "Karim19"),
                       ("MLSTM-FCN", "recurrent", 1.00, "Karim19"),
                       ("FCN", "other", 0.993, "Fawaz19")],
    "GunPoint": [("TWIESN (echo state network)", "recurrent", 0.9893, "Fawaz19"),
                 ("LSTM-FCN", "recurrent", 1.0, "Karim18"), ("HIVE-COTE 2", "other", 1.0,
                                                             "Middlehurst24")],
    "ItalyPowerDemand": [("TWIESN (echo state network)", "recurrent", 0.8706, "Fawaz19"),
                         ("LSTM-FCN", "recurrent", 0.9621, "Karim18"),
                         ("HIVE-COTE 2", "other", 0.9699, "Middlehurst24")],
    "ArrowHead": [("TWIESN (echo state network)", "recurrent", 0.6891, "Fawaz19"),
                  ("LSTM-FCN", "recurrent", 0.8971, "Karim18"),
                  ("HIVE-COTE 2", "other", 0.8686, "Middlehurst24")],
    "OSULeaf": [("TWIESN (echo state network)", "recurrent", 0.6281, "Fawaz19"),
                ("LSTM-FCN", "recurrent", 0.9835, "Karim18"),
                ("HIVE-COTE 2", "other", 0.9669, "Middlehurst24")],
    "ACSF1": [("TWIESN (echo state network)", "recurrent", 0.592, "Fawaz19"),
              ("ResNet", "other", 0.916, "Fawaz19"),
              ("HIVE-COTE 2", "other", 0.91, "Middlehurst24")],
    "PickupGestureWiimoteZ": [("TWIESN (echo state network)", "recurrent", 0.616, "Fawaz19"),
                              ("FCN", "other", 0.744, "Fawaz19")],
}


def _data_dir(fn: str) -> pathlib.Path:
  """aeon's folder of bundled datasets, found without importing aeon."""
  spec = importlib.util.find_spec("aeon")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(f"{fn}: the UEA/UCR tasks need aeon, which is not installed; install it "
                      f"with: {_INSTALL}")
  return pathlib.Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _check_name(fn: str, name: Any, data: pathlib.Path) -> str:
  """`name` checked to be one of `UEA_DATASETS` whose two files are in aeon's wheel."""
  bundled = ", ".join(UEA_DATASETS)
  if not isinstance(name, str):
    raise TypeError(f"{fn}: `name` must be a dataset name (a str), got {name!r}.")
  if name not in UEA_DATASETS:
    near = [n for n in UEA_DATASETS if n.lower() == name.lower()]
    if near:
      raise ValueError(f"{fn}: unknown dataset {name!r}; did you mean {near[0]!r}? (names are "
                       "case-sensitive)")
    if (data / name).is_dir():
      raise ValueError(
          f"{fn}: {name!r} is bundled with aeon but is not one of the archive's classification "
          f"datasets (a TRAIN and a TEST file of labelled series); choose one of: {bundled}.")
    raise ValueError(
        f"{fn}: dataset {name!r} is not bundled with aeon, and rnnjax never downloads one; "
        f"choose one of the bundled datasets: {bundled}.")
  missing = [f"{name}_{s}.ts" for s in ("TRAIN", "TEST") if not (data / name / f"{name}_{s}.ts")
             .is_file()]
  if missing:
    raise FileNotFoundError(
        f"{fn}: this aeon installation has no {', '.join(missing)} in {data / name}; rnnjax "
        f"never downloads data. Reinstall aeon with: {_INSTALL}")
  return name


@functools.cache
def _read(path: str) -> tuple[tuple[np.ndarray, ...], np.ndarray, tuple[str, ...]]:
  """A `.ts` file read by aeon: (series `[C, L_n]` float64, labels as str, class names)."""
  from aeon.datasets import load_from_ts_file  # Imported here: aeon is optional and slow.

  xs, ys, meta = load_from_ts_file(path, return_meta_data=True)
  return tuple(np.asarray(x, np.float64) for x in xs), np.asarray(ys), tuple(meta["class_values"])


def _val_positions(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
  """Positions in the TRAIN file that go to validation: per class `round(f * n)`, <= n - 1."""
  rng = np.random.default_rng(seed)
  picked = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    count = min(int(np.floor(val_fraction * members.size + 0.5)), members.size - 1)
    picked.append(rng.permutation(members)[:count])
  return np.sort(np.concatenate(picked)).astype(np.int64)


def _pad(series: list[np.ndarray], mean: np.ndarray, std: np.ndarray, length: int):
  """Normalised series `[C, L_n]`, zero-padded, time first: (`[T, N, C]` float32, `[N]` int32)."""
  lengths = np.array([x.shape[1] for x in series], np.int32)
  xs = np.zeros((length, len(series), mean.size), np.float32)
  for n, x in enumerate(series):
    xs[:x.shape[1], n] = ((x - mean[:, None]) / std[:, None]).T
  return xs, lengths


def _splits(name: str, data: pathlib.Path, val_fraction: float, seed: int):
  """The three splits `{split: (xs, lengths, ys, positions)}`, the statistics and the classes."""
  train_x, train_y, classes = _read(str(data / name / f"{name}_TRAIN.ts"))
  test_x, test_y, _ = _read(str(data / name / f"{name}_TEST.ts"))
  ids = {c: i for i, c in enumerate(classes)}
  to_ids = lambda y: np.array([ids[str(c)] for c in y], np.int32)
  val = _val_positions(to_ids(train_y), val_fraction, seed)
  train = np.setdiff1d(np.arange(len(train_x)), val)
  steps = np.concatenate([train_x[i] for i in train], axis=1)  # [C, all valid training steps]
  mean, std = steps.mean(axis=1), steps.std(axis=1)
  std = np.where(std > 1e-12, std, 1.0)
  length = max(x.shape[1] for x in train_x + test_x)
  out = {}
  for split, (xs, ys, positions) in {"train": (train_x, train_y, train), "val": (
      train_x, train_y, val), "test": (test_x, test_y, np.arange(len(test_x)))}.items():
    padded, lengths = _pad([xs[i] for i in positions], mean, std, length)
    out[split] = (padded, lengths, to_ids(ys)[positions], positions)
  return out, mean, std, classes


def uea_task(name: str, *, val_fraction: float = 0.2, seed: int = 0,
             eval_batch: int = 512) -> base.Task:
  """A UEA/UCR archive classification dataset bundled with aeon, as a classification task.

  See the module docstring for the splits, the normalisation and the batches. Metric:
  `accuracy` on the split (higher is better; also `cross_entropy` in nats and `error`,
  `1 - accuracy`). Baseline: always predicting the most frequent class of the training
  part (the smallest id on a tie), scored on each split. The model reads the series out
  at its last valid step (`readout="last"`).

  Args:
    name: one of `UEA_DATASETS`, e.g. "JapaneseVowels" (`get_task("uea:JapaneseVowels")`).
    val_fraction: the fraction of each class of the archive's TRAIN file held out for
      validation, in (0, 0.5].
    seed: the seed of the stratified validation split (NumPy's `default_rng`).
    eval_batch: the most series per `predict` call in `evaluate`; every call has
      `min(eval_batch, largest held-out split)` series (the last chunk wraps around), so
      one compilation serves both splits.

  Returns:
    The task. `evaluate(predict, split)` calls `predict(xs [T, B', C], lengths [B'])` and
    expects logits `[B', K]` for the `K` classes; its details are `truth` and `prediction`
    (class ids) and `index`, each series' position in its archive file. `info` holds the
    sizes, channels, classes, lengths, the normalisation, the source, `defaults` (the
    command line's hidden, steps, batch_size, lr and eval_every) and `published` (test
    accuracies from the literature, each with its source).

  Raises:
    ImportError: aeon is not installed (`pip install "rnnjax[uea]"`).
    ValueError: `name` is not a bundled classification dataset (nothing is downloaded).

  Examples:
    >>> import jax
    >>> task = uea_task("JapaneseVowels")  # doctest: +SKIP
    >>> batch = task.train_batch(jax.random.key(0), 8)  # doctest: +SKIP
    >>> batch["xs"].shape, batch["lengths"].shape, task.info["classes"]  # doctest: +SKIP
    ((29, 8, 12), (8,), 9)
  """
  fn = "rnnjax.tasks.uea_task"
  data = _data_dir(fn)
  name = _check_name(fn, name, data)
  val_fraction = _common.fraction(fn, "val_fraction", val_fraction, 0.5)
  seed = _common.int_at_least(fn, "seed", seed, minimum=0)
  eval_batch = _common.int_at_least(fn, "eval_batch", eval_batch)
  splits, mean, std, classes = _splits(name, data, val_fraction, seed)
  (train_xs, train_len, train_ys, _), n_classes = splits["train"], len(classes)
  majority = int(np.argmax(np.bincount(train_ys, minlength=n_classes)))
  chunk = min(eval_batch, max(splits[s][0].shape[1] for s in base.SPLITS))
  xs_dev, len_dev, ys_dev = jnp.asarray(train_xs), jnp.asarray(train_len), jnp.asarray(train_ys)

  def train_batch(key: jax.Array, batch_size: int) -> base.Batch:
    batch_size = _common.int_at_least(f"{fn}.train_batch", "batch_size", batch_size)
    idx = jax.random.randint(key, (batch_size,), 0, train_ys.size)
    return {"xs": xs_dev[:, idx], "lengths": len_dev[idx], "ys": ys_dev[idx]}

  def evaluate(predict, split: str):
    split = _common.split(f"{fn}.evaluate", split)
    xs, lengths, ys, positions = splits[split]
    logits = np.concatenate([
        _logits(f"{fn}.evaluate", predict, xs, lengths, start, chunk, n_classes)
        for start in range(0, ys.size, chunk)])[:ys.size]
    logp = _common.log_softmax(logits)
    pred = np.argmax(logits, axis=-1)
    accuracy = float(np.mean(pred == ys))
    metrics = {"accuracy": accuracy, "error": 1.0 - accuracy,
               "cross_entropy": float(-np.mean(logp[np.arange(ys.size), ys]))}
    return metrics, {"truth": ys, "prediction": pred, "index": positions}

  lengths = np.concatenate([splits[s][1] for s in splits])
  info = {
      "dataset": name, "n_train": int(train_ys.size), "n_val": int(splits["val"][2].size),
      "n_test": int(splits["test"][2].size), "channels": int(mean.size), "classes": n_classes,
      "class_names": list(classes), "length": int(train_xs.shape[0]),
      "min_length": int(lengths.min()), "max_length": int(lengths.max()),
      "val_fraction": val_fraction, "seed": seed,
      "mean": mean.tolist(), "std": std.tolist(), "majority_class": classes[majority],
      "source": f"UEA/UCR archive, {name}_TRAIN.ts and {name}_TEST.ts bundled with aeon "
                f"{importlib.metadata.version('aeon')}",
      "defaults": {**_DEFAULTS, **_DATASET_DEFAULTS.get(name, {})},
      "published": [{"method": m, "kind": k, "accuracy": a, "tag": t, "source": _SOURCES[t]}
                    for m, k, a, t in _PUBLISHED_ROWS.get(name, [])]}
  return base.Task(
      name=f"uea:{name}", input_size=int(mean.size), output_size=n_classes, vocab_size=None,
      train_batch=jax.jit(train_batch, static_argnums=1),
      loss=base.classification_cross_entropy, evaluate=evaluate, metric="accuracy",
      baselines={s: float(np.mean(splits[s][2] == majority)) for s in base.SPLITS},
      baseline_name="majority class", units="", loss_units="nats", info=info,
      readout="last", maximize=True, tiebreak="cross_entropy")


def _logits(fn: str, predict, xs: np.ndarray, lengths: np.ndarray, start: int, chunk: int,
            n_classes: int) -> np.ndarray:
  """`predict` on series `start .. start + chunk` (wrapping around), checked, as float64."""
  idx = np.arange(start, start + chunk) % lengths.size
  out = predict(jnp.asarray(xs[:, idx]), jnp.asarray(lengths[idx]))
  got = tuple(getattr(out, "shape", ()))
  if got != (chunk, n_classes):
    raise ValueError(
        f"{fn}: `predict(xs, lengths)` returned an array of shape {got}, expected "
        f"{(chunk, n_classes)} ([B, K]: one row of class logits per series). Read the model "
        "out at the last valid step (sequence_model(..., readout='last')).")
  return np.asarray(jnp.asarray(out, jnp.float32), np.float64)
