"""Character-level language modelling on a text file (or on the Python standard library).

The vocabulary is the sorted set of characters in the whole corpus (so every
held-out character can be encoded). The last `test_fraction` of the text is the
test slice and the `val_fraction` before it the validation slice; training
batches are random windows of the rest (`xs[t]` a character, `ys[t]` the next
one). Evaluation scores the model's next-character distribution in bits per
character on a fixed set of consecutive windows of the chosen slice, each started
from the model's initial state as in training.
"""

from __future__ import annotations

import math
import os
import pathlib
import sys
import sysconfig
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.tasks import _common, base

_FN = "rnnjax.tasks.text_task"
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__"})


def _code_points(text: str) -> np.ndarray:
  return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def encode(text: str, vocab: Sequence[str]) -> np.ndarray:
  """Token ids of the characters of `text`.

  Args:
    text: the string to encode (length `L`).
    vocab: the task's vocabulary, `task.info["vocab"]`: distinct characters, sorted.

  Returns:
    `[L]` int32, `ids[i] = vocab.index(text[i])`.

  Raises:
    ValueError: if `text` holds characters that are not in `vocab`.

  Examples:
    >>> encode("abba", ["a", "b"])
    array([0, 1, 1, 0], dtype=int32)
  """
  table = _code_points("".join(vocab))
  cps = _code_points(text)
  ids = np.clip(np.searchsorted(table, cps), 0, max(len(table) - 1, 0))
  unknown = cps != table[ids] if len(table) else np.ones(len(cps), bool)
  if np.any(unknown):
    missing = sorted({chr(c) for c in cps[unknown]})
    raise ValueError(
        f"rnnjax.tasks.encode: {len(missing)} character(s) of `text` are not in the vocabulary "
        f"({len(vocab)} characters): {''.join(missing[:20])!r}. Remove or replace them.")
  return ids.astype(np.int32)


def decode(ids: Any, vocab: Sequence[str]) -> str:
  """The string of the token ids `ids` (`[L]` integers in `[0, len(vocab))`).

  Examples:
    >>> decode([0, 1, 1, 0], ["a", "b"])
    'abba'
  """
  ids = np.asarray(ids).reshape(-1)
  if ids.size and (ids.min() < 0 or ids.max() >= len(vocab)):
    raise ValueError(
        f"rnnjax.tasks.decode: ids must lie in [0, {len(vocab)}), got values from "
        f"{ids.min()} to {ids.max()}.")
  return "".join(vocab[i] for i in ids.tolist())


def stdlib_corpus(max_chars: int = 3_000_000) -> tuple[str, str]:
  """The source code of the Python standard library on this machine, as one string.

  The `*.py` files under `sysconfig.get_paths()["stdlib"]` are read (UTF-8, invalid
  bytes replaced) in sorted order of their relative paths and concatenated, whole,
  until `max_chars` characters; the last file is cut there. Directories that are not
  packages (`site-packages`, `config-*`) and the test suites (`test`, `tests`,
  `idle_test`) are skipped. The corpus depends on the Python version.

  Returns:
    `(text, description)`.
  """
  max_chars = _common.int_at_least("rnnjax.tasks.stdlib_corpus", "max_chars", max_chars)
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d.isidentifier() and d not in _SKIP_DIRS]
    files += [pathlib.Path(dirpath, f) for f in filenames
              if f.endswith(".py") and not f.startswith("_sysconfigdata")]
  files.sort(key=lambda p: p.relative_to(root).as_posix())
  parts, total, used = [], 0, 0
  for path in files:
    if total >= max_chars:
      break
    part = path.read_bytes().decode("utf-8", errors="replace")[:max_chars - total]
    parts.append(part)
    total += len(part)
    used += 1
  if not total:
    raise ValueError(
        f"{_FN}: found no Python source files under the standard library directory {root}. "
        "Pass path= a text file instead.")
  version = ".".join(map(str, sys.version_info[:3]))
  return "".join(parts), f"Python {version} standard library, {used} files from {root}"


def _read_file(path: str | os.PathLike, encoding: str) -> str:
  if not isinstance(path, (str, os.PathLike)):
    raise TypeError(f"{_FN}: `path` must be a str or path, got {type(path).__name__}.")
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(
        f"{_FN}: no such file: '{p}'. Pass path= an existing text file, or path=None to use "
        "the Python standard library's source code.")
  if p.is_dir():
    raise ValueError(f"{_FN}: '{p}' is a directory; pass path= a text file.")
  try:
    return p.read_text(encoding)
  except UnicodeDecodeError as err:
    raise ValueError(
        f"{_FN}: '{p}' is not valid {encoding} text ({err.reason} at byte {err.start}). "
        "Pass its encoding, e.g. encoding='latin-1'.") from None


def text_task(path: str | os.PathLike | None = None, *, window: int = 128,
              test_fraction: float = 0.05, val_fraction: float = 0.05,
              max_chars: int | None = None, eval_chars: int = 65_536, eval_batch: int = 256,
              encoding: str = "utf-8") -> base.Task:
  """Character-level language modelling on the text file `path`.

  The text is split into three consecutive slices::

    [0 .......... n_train)[n_train ... n_train + n_val)[N - n_test ... N)
           train                     val                    test

  the last `test_fraction` of the corpus is the test slice and the `val_fraction`
  before it the validation slice (at least `window + 1` characters each). Training
  batches are random windows of the training slice. A split is scored on
  `min(eval_chars, slice length - 1) // window` consecutive, non-overlapping windows
  from the start of its slice (rounded down to a multiple of the batch), run through
  `predict` in batches of up to `eval_batch`; each window is scored on all of its
  `window` next-character predictions.

  Metric: `bits_per_char` on the split's windows. Baseline: `unigram`, the character
  frequencies of the text before the split (add-one smoothed over the vocabulary), on
  the same characters: of the training slice for "val", of the training and
  validation slices for "test".

  Args:
    path: a UTF-8 text file; None for the Python standard library's source code
      (`stdlib_corpus`, capped at `max_chars`, default 3,000,000 characters).
    window: `T`, characters per training and evaluation window.
    test_fraction: the fraction of the text held out for testing, in (0, 0.5].
    val_fraction: the fraction of the text held out for validation, in (0, 0.5].
    max_chars: use only the first `max_chars` characters (default: the whole file).
    eval_chars: at most this many characters of a held-out slice are scored.
    eval_batch: windows per `predict` call in `evaluate`.
    encoding: the file's text encoding.

  Returns:
    The task, with `vocab_size = V` (the number of distinct characters) and
    `info["vocab"]` the characters (use `encode` and `decode` with it). Batches hold
    `xs, ys: [T, B]` int32 and `mask: [T, B]` ones. `evaluate(predict, split)` expects
    logits `[T, B', V]` for `xs: [T, B']` and returns `{"bits_per_char", "accuracy"}`
    and details `held_out` (a few of the split's windows as strings), `predicted` (the
    model's most likely next characters for them) and `n_chars`.

  Raises:
    FileNotFoundError: if `path` does not exist.
    ValueError: if the file is empty, not valid text, or too short for `window`.

  Examples:
    >>> import jax
    >>> task = text_task(max_chars=100_000)
    >>> batch = task.train_batch(jax.random.key(0), 4)
    >>> batch["xs"].shape, batch["xs"].dtype
    ((128, 4), dtype('int32'))
    >>> bool((batch["xs"][1:] == batch["ys"][:-1]).all())
    True
    >>> decode(encode("def", task.info["vocab"]), task.info["vocab"])
    'def'
    >>> task.info["splits"]
    {'train': [0, 90000], 'val': [90000, 95000], 'test': [95000, 100000]}
  """
  window = _common.int_at_least(_FN, "window", window)
  test_fraction = _common.fraction(_FN, "test_fraction", test_fraction, 0.5)
  val_fraction = _common.fraction(_FN, "val_fraction", val_fraction, 0.5)
  if max_chars is not None:
    max_chars = _common.int_at_least(_FN, "max_chars", max_chars)
  eval_chars = _common.int_at_least(_FN, "eval_chars", eval_chars)
  eval_batch = _common.int_at_least(_FN, "eval_batch", eval_batch)
  if not isinstance(encoding, str):
    raise TypeError(f"{_FN}: `encoding` must be a str, got {type(encoding).__name__}.")

  text, source = _corpus(path, max_chars, encoding)
  n = len(text)
  n_test = max(window + 1, math.ceil(test_fraction * n))
  n_val = max(window + 1, math.ceil(val_fraction * n))
  n_train = n - n_test - n_val
  if n_train < window + 1:
    raise ValueError(
        f"{_FN}: the corpus '{source}' has {n} characters, too short for window={window}: "
        f"it needs at least {3 * (window + 1)} (window + 1 = {window + 1} to train on and as "
        "many for validation and for testing). Use a smaller `window` or a longer text.")

  cps, ids = np.unique(_code_points(text), return_inverse=True)
  ids = ids.reshape(-1).astype(np.int32)
  vocab = [chr(c) for c in cps]
  splits = {"train": [0, n_train], "val": [n_train, n - n_test], "test": [n - n_test, n]}
  sets = {split: _eval_set(ids, *splits[split], window, eval_chars, eval_batch, len(vocab))
          for split in base.SPLITS}
  train_ids = jnp.asarray(ids[:n_train])

  train_batch = _common.next_char_batches(f"{_FN}.train_batch", train_ids, window)

  def evaluate(predict: base.Predict, split: str):
    return _score(predict, sets[_common.split(f"{_FN}.evaluate", split)], vocab)

  info = {"source": source, "n_chars": n, "n_train": n_train, "n_val": n_val,
          "n_test": n_test, "splits": splits,  # [start, end) character indices
          "n_eval_chars": {split: sets[split][0].shape[1] * window for split in base.SPLITS},
          "window": window, "vocab_size": len(vocab), "vocab": vocab}
  return base.Task(
      name="text", input_size=len(vocab), output_size=len(vocab), vocab_size=len(vocab),
      train_batch=jax.jit(train_batch, static_argnums=1), loss=base.masked_cross_entropy,
      evaluate=evaluate, metric="bits_per_char",
      baselines={split: sets[split][2] for split in base.SPLITS}, baseline_name="unigram",
      units="bits per character", loss_units="nats", info=info)


def _corpus(path: str | os.PathLike | None, max_chars: int | None,
            encoding: str) -> tuple[str, str]:
  """`(text, source)` of `text_task`'s corpus."""
  if path is None:
    return stdlib_corpus(3_000_000 if max_chars is None else max_chars)
  text = _read_file(path, encoding)
  if max_chars is not None:
    text = text[:max_chars]
  if not text:
    raise ValueError(f"{_FN}: '{path}' is empty; pass path= a file with text in it.")
  return text, str(path)


def _eval_set(ids: np.ndarray, start: int, end: int, window: int, eval_chars: int,
              eval_batch: int, v: int) -> tuple[np.ndarray, int, float]:
  """`(segments [T + 1, W], batch, unigram baseline)` of the slice `ids[start:end]`.

  The `W` windows are consecutive and non-overlapping from `start`; the unigram
  baseline is fitted on `ids[:start]`, everything before the slice.
  """
  n_win = min((end - start - 1) // window, max(1, eval_chars // window))
  batch = min(eval_batch, n_win)
  n_win = n_win // batch * batch
  idx = start + np.arange(n_win)[None, :] * window + np.arange(window + 1)[:, None]
  seg = ids[idx]  # [T + 1, W]
  counts = np.bincount(ids[:start], minlength=v).astype(np.float64)
  unigram_logp = np.log((counts + 1.0) / (start + v))  # [V], add-one smoothed
  return seg, batch, float(-np.mean(unigram_logp[seg[1:]]) / math.log(2.0))


def _score(predict: base.Predict, eval_set: tuple[np.ndarray, int, float],
           vocab: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
  """`text_task`'s metrics and details of `predict` on one split's windows."""
  segs, batch, _ = eval_set
  window, n_win = segs.shape[0] - 1, segs.shape[1]
  nll, correct, shown = 0.0, 0, None
  for start in range(0, n_win, batch):
    seg = segs[:, start:start + batch]
    logits = _common.predictions(f"{_FN}.evaluate", predict(jnp.asarray(seg[:-1])),
                                 (window, batch, len(vocab)))
    logp = _common.log_softmax(logits)
    nll -= float(np.sum(np.take_along_axis(logp, seg[1:, :, None], axis=-1)))
    guess = np.argmax(logits, axis=-1)
    correct += int(np.sum(guess == seg[1:]))
    shown = guess[:, :3] if shown is None else shown  # the first windows' guesses
  n_chars = n_win * window
  metrics = {"bits_per_char": nll / n_chars / math.log(2.0), "accuracy": correct / n_chars}
  details = {"held_out": [decode(segs[1:, i], vocab) for i in range(shown.shape[1])],
             "predicted": [decode(g, vocab) for g in shown.T], "n_chars": n_chars}
  return metrics, details
