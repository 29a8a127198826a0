"""Tiny Shakespeare: character-level language modelling with nanoGPT's split, against an n-gram.

The corpus (1,115,394 characters, 65 distinct) ships with the package, xz-compressed.
nanoGPT's `shakespeare_char` split is kept: its last 10% is our test split, so the
reported number is on nanoGPT's validation text. Our validation split is the last
`val_fraction` of nanoGPT's training 90%, and the model trains on the rest. Every
character of a held-out split after its first is scored, in nats (and bits), from the
start of its `eval_window`-character block, as nanoGPT scores its blocks.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import lzma
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.tasks import _common, base
from rnnjax.tasks.text import _code_points, decode

_FN = "rnnjax.tasks.shakespeare_task"
DATA_FILE = pathlib.Path(__file__).parent / "data" / "tinyshakespeare.txt.xz"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
NANOGPT_TRAIN_FRACTION = 0.9  # nanoGPT's data/shakespeare_char/prepare.py: data[:int(n*0.9)]
NGRAM_ORDERS = (1, 2, 3, 4, 5, 6, 7, 8)
NGRAM_ALPHAS = (1.0, 3.0, 10.0, 30.0, 100.0)
REFERENCE = {
    "name": "nanoGPT shakespeare_char, CPU configuration (4 layers, 4 heads, 128 wide, "
            "context 64, 2000 iterations, about 3 minutes on a laptop CPU)",
    "val_loss_nats": 1.88,
    "source": "https://github.com/karpathy/nanoGPT README.md, 'quick start'",
}


def load_shakespeare() -> str:
  """The Tiny Shakespeare corpus, decompressed from the package's data file.

  Karpathy's char-rnn `data/tinyshakespeare/input.txt`: 1,115,394 characters of
  Shakespeare's plays (public domain), 65 distinct characters. The decompressed text is
  checked against its sha256 (`SHA256`).

  Returns:
    The text, a `str`.

  Raises:
    ValueError: if the data file is damaged (its text has another sha256).

  Examples:
    >>> text = load_shakespeare()
    >>> len(text), len(set(text)), text[:14]
    (1115394, 65, 'First Citizen:')
  """
  raw = lzma.decompress(DATA_FILE.read_bytes())
  digest = hashlib.sha256(raw).hexdigest()
  if digest != SHA256:
    raise ValueError(
        f"rnnjax.tasks.load_shakespeare: {DATA_FILE} decompresses to a text with sha256 "
        f"{digest}, expected {SHA256}. The package's data file is damaged; reinstall rnnjax.")
  return raw.decode("utf-8")


def shakespeare_task(*, window: int = 64, val_fraction: float = 0.05, eval_window: int = 64,
                     eval_batch: int = 256) -> base.Task:
  """Character-level language modelling on Tiny Shakespeare, split as nanoGPT splits it.

  The corpus (`load_shakespeare`, `N` = 1,115,394 characters) is cut at nanoGPT's
  boundary `S = int(0.9 N)` = 1,003,854, and the first part again at
  `S - ceil(val_fraction * S)`::

    [0 ............ 953,661)[953,661 ... 1,003,854)[1,003,854 ... 1,115,394)
             train                   val                     test

  "test" is nanoGPT's validation text, so test numbers compare with nanoGPT's validation
  loss. Training batches are random windows of `window + 1` characters of the training
  slice. A split is scored on every character after its first (`S_end - S_start - 1`
  characters): the split is tiled by blocks of `eval_window` input characters (the last
  block ends at the split's end and scores only what the others have not), each run
  from the model's initial state, so a character is predicted from the characters before
  it in its block, as nanoGPT scores its validation loss on 64-character blocks (nanoGPT
  averages random blocks; this covers each character once). The blocks go through
  `predict` in batches of `eval_batch`.

  Metric: `nats_per_char` (mean cross-entropy, the training loss's unit), with
  `bits_per_char` and `accuracy` beside it. Baseline: an n-gram model of the training
  slice, each order's counts smoothed towards the order below,
  `p_m(c | h) = (N(hc) + alpha * p_{m-1}(c | h')) / (N(h) + alpha)` from `p_0 = 1/65`,
  with the order and `alpha` chosen on "val" from `NGRAM_ORDERS` x `NGRAM_ALPHAS`; it
  predicts each scored character from the `order - 1` characters before it.

  Args:
    window: `T`, characters per training window.
    val_fraction: the fraction of nanoGPT's training text (its end) held out for
      validation, in (0, 0.5].
    eval_window: characters per evaluation block (nanoGPT's context, 64).
    eval_batch: blocks per `predict` call in `evaluate`.

  Returns:
    The task, `name="shakespeare"`, `vocab_size = 65`, `info["vocab"]` the characters
    (`encode`/`decode` use it). Batches hold `xs, ys: [T, B]` int32 and `mask: [T, B]`
    ones. `evaluate(predict, split)` expects logits `[eval_window, B', 65]` for
    `xs: [eval_window, B']` and returns `{"nats_per_char", "bits_per_char", "accuracy"}`
    and details `held_out`, `predicted` (the first blocks' text and the model's most likely
    characters) and `n_chars`. `info["ngram"]` holds the baseline's choice and its
    validation grid, `info["reference"]` the published reference point.

  Examples:
    >>> import jax
    >>> task = shakespeare_task()
    >>> task.vocab_size, task.info["splits"]["test"]
    (65, [1003854, 1115394])
    >>> batch = task.train_batch(jax.random.key(0), 4)
    >>> batch["xs"].shape
    (64, 4)
  """
  window = _common.int_at_least(_FN, "window", window)
  val_fraction = _common.fraction(_FN, "val_fraction", val_fraction, 0.5)
  eval_window = _common.int_at_least(_FN, "eval_window", eval_window)
  eval_batch = _common.int_at_least(_FN, "eval_batch", eval_batch)

  ids, vocab = _corpus()
  n = len(ids)
  n_nano = int(n * NANOGPT_TRAIN_FRACTION)
  n_val = math.ceil(val_fraction * n_nano)
  n_train = n_nano - n_val
  splits = {"train": [0, n_train], "val": [n_train, n_nano], "test": [n_nano, n]}
  longest = max(window + 1, eval_window + 1)
  if min(n_train, n_val) < longest:
    raise ValueError(
        f"{_FN}: window={window} and eval_window={eval_window} need splits of at least "
        f"{longest} characters; val_fraction={val_fraction} leaves {n_train} to train on "
        f"and {n_val} to validate on. Use a smaller window or a val_fraction nearer 0.05.")

  sets = {split: _blocks(ids, *splits[split], eval_window, eval_batch) for split in base.SPLITS}
  ngram = copy.deepcopy(_ngram_choice(n_train))
  train_ids = jnp.asarray(ids[:n_train])

  train_batch = _common.next_char_batches(f"{_FN}.train_batch", train_ids, window)

  def evaluate(predict: base.Predict, split: str):
    return _score(predict, *sets[_common.split(f"{_FN}.evaluate", split)], vocab)

  info = {"source": "Tiny Shakespeare (char-rnn's input.txt), rnnjax/tasks/data/"
          f"{DATA_FILE.name}", "n_chars": n, "n_train": n_train, "n_val": n_val,
          "n_test": n - n_nano, "splits": splits,  # [start, end) character indices
          "n_eval_chars": {split: int(sets[split][2].sum()) for split in base.SPLITS},
          "window": window, "eval_window": eval_window, "vocab_size": len(vocab),
          "vocab": vocab, "ngram": ngram, "reference": REFERENCE,
          "published": [{"model": "nanoGPT shakespeare_char (CPU config)",
                         "value": REFERENCE["val_loss_nats"], "source": REFERENCE["source"]}]}
  return base.Task(
      name="shakespeare", input_size=len(vocab), output_size=len(vocab),
      vocab_size=len(vocab), train_batch=jax.jit(train_batch, static_argnums=1),
      loss=base.masked_cross_entropy, evaluate=evaluate, metric="nats_per_char",
      baselines=dict(ngram["nats"]), baseline_name=f"{ngram['order']}-gram",
      units="nats per character", loss_units="nats", info=info)


@functools.lru_cache(maxsize=1)
def _corpus() -> tuple[np.ndarray, list[str]]:
  """`(ids [N] int32, vocab)` of the corpus: its characters, sorted, and their ids (cached)."""
  cps, ids = np.unique(_code_points(load_shakespeare()), return_inverse=True)
  ids = ids.reshape(-1).astype(np.int32)
  ids.flags.writeable = False
  return ids, [chr(c) for c in cps]


def _blocks(ids: np.ndarray, start: int, end: int, window: int,
            batch: int) -> tuple[np.ndarray, int, np.ndarray]:
  """`(segments [T + 1, W], batch, weights [T, W])` tiling the targets `ids[start + 1:end]`.

  Block `k < K - 1` reads `ids[start + kT : start + kT + T + 1]`; the last block ends at
  `end` and weighs only the targets no other block scores; `W` is `K` rounded up to a
  multiple of the batch with copies of block 0 of weight 0. Every target of the split
  has weight 1 exactly once.
  """
  n_targets = end - start - 1
  k = math.ceil(n_targets / window)
  starts = start + np.arange(k) * window
  starts[-1] = end - 1 - window
  batch = min(batch, k)
  w = math.ceil(k / batch) * batch
  starts = np.concatenate([starts, np.full(w - k, start)])
  seg = ids[starts[None, :] + np.arange(window + 1)[:, None]]  # [T + 1, W]
  weights = np.zeros((window, w))
  weights[:, :k] = 1.0
  overlap = (k - 1) * window - (end - 1 - window - start)  # targets of block K-1 seen before
  weights[:overlap, k - 1] = 0.0
  return seg, batch, weights


def _score(predict: base.Predict, segs: np.ndarray, batch: int, weights: np.ndarray,
           vocab: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
  """`shakespeare_task`'s metrics and details of `predict` on one split's blocks."""
  window, n_blocks = segs.shape[0] - 1, segs.shape[1]
  nll, correct, shown = 0.0, 0.0, None
  for start in range(0, n_blocks, batch):
    seg, weight = segs[:, start:start + batch], weights[:, start:start + batch]
    logits = _common.predictions(f"{_FN}.evaluate", predict(jnp.asarray(seg[:-1])),
                                 (window, batch, len(vocab)))
    logp = np.take_along_axis(_common.log_softmax(logits), seg[1:, :, None], axis=-1)[..., 0]
    nll -= float(np.sum(weight * logp))
    guess = np.argmax(logits, axis=-1)
    correct += float(np.sum(weight * (guess == seg[1:])))
    shown = guess[:, :3] if shown is None else shown  # the first blocks' guesses
  n_chars = float(np.sum(weights))
  nats = nll / n_chars
  metrics = {"nats_per_char": nats, "bits_per_char": nats / math.log(2.0),
             "accuracy": correct / n_chars}
  details = {"held_out": [decode(segs[1:, i], vocab) for i in range(shown.shape[1])],
             "predicted": [decode(g, vocab) for g in shown.T], "n_chars": int(n_chars)}
  return metrics, details


@functools.lru_cache(maxsize=4)
def _ngram_choice(n_train: int) -> dict[str, Any]:
  """The n-gram baseline of the text before `n_train`, with the order and smoothing best on
  "val" (`[n_train, S)`), scored on "val" and "test" (`[S, N)`), cached."""
  ids, vocab = _corpus()
  n_nano = int(len(ids) * NANOGPT_TRAIN_FRACTION)
  ranges = [[n_train, n_nano], [n_nano, len(ids)]]  # base.SPLITS
  nats = _ngram_nats(ids, n_train, ranges, max(NGRAM_ORDERS), NGRAM_ALPHAS,
                     len(vocab))  # [split, order, alpha]
  orders = np.asarray(NGRAM_ORDERS) - 1
  o, a = np.unravel_index(np.argmin(nats[0, orders]), (len(orders), len(NGRAM_ALPHAS)))
  order, alpha = NGRAM_ORDERS[o], NGRAM_ALPHAS[a]
  return {"order": order, "alpha": alpha,
          "nats": {s: float(nats[i, order - 1, a]) for i, s in enumerate(base.SPLITS)},
          "val_grid": {str(m): dict(zip(map(str, NGRAM_ALPHAS), nats[0, m - 1].tolist(),
                                        strict=True)) for m in NGRAM_ORDERS}}


def _ngram_nats(ids: np.ndarray, n_train: int, ranges: Sequence[Sequence[int]], order: int,
                alphas: Sequence[float], v: int) -> np.ndarray:
  """Mean nats of each range's targets under the n-grams of `ids[:n_train]`, orders 1 to `order`.

  A range `[start, end)` scores the targets `ids[start + 1:end]`. With `c` a character,
  `h` the `m - 1` characters before it, `N(.)` counts in the training text (`N(h)`: the
  times `h` is followed by a character there) and `alpha` the smoothing, order `m`
  predicts::

    p_0(c) = 1 / v
    p_m(c | h) = (N(h c) + alpha * p_{m-1}(c | h without its first character)) / (N(h) + alpha)

  (each order's counts smoothed towards the order below, a hierarchical Dirichlet
  interpolation). A target's context may reach before `start` (`order - 1` characters at
  most).

  Returns:
    `[len(ranges), order, len(alphas)]` float64: `out[r, m - 1, a]` is the mean of
    `-log p_m` over range `r`'s targets with `alphas[a]`.
  """
  targets = [np.arange(start + 1, end) for start, end in ranges]
  p = [np.full((len(t), len(alphas)), 1.0 / v) for t in targets]
  alpha = np.asarray(alphas, np.float64)
  out = np.zeros((len(ranges), order, len(alphas)))
  for m in range(1, order + 1):
    codes = np.sort(_gram_codes(ids, np.arange(m - 1, n_train), m, v))
    contexts = codes // v  # sorted too
    for r, t in enumerate(targets):
      query = _gram_codes(ids, t, m, v)
      hit, seen = _count(codes, query), _count(contexts, query // v)
      p[r] = (hit[:, None] + alpha * p[r]) / (seen[:, None] + alpha)
      out[r, m - 1] = -np.mean(np.log(p[r]), axis=0)
  return out


def _gram_codes(ids: np.ndarray, ends: np.ndarray, m: int, v: int) -> np.ndarray:
  """The `m`-grams ending at the positions `ends`, as integers in base `v`."""
  codes = np.zeros(len(ends), np.int64)
  for j in range(m):
    codes = codes * v + ids[ends - (m - 1) + j]
  return codes


def _count(sorted_codes: np.ndarray, query: np.ndarray) -> np.ndarray:
  """How often each of `query` occurs in `sorted_codes`."""
  return (np.searchsorted(sorted_codes, query, side="right")
          - np.searchsorted(sorted_codes, query, side="left")).astype(np.float64)
