"""The Tiny Shakespeare task: the shipped corpus, nanoGPT's split, batches, scoring and the n-gram.

References are independent: the README's sha256, nanoGPT's `int(n * 0.9)`, Python loops
over the text, and a hand computation of the n-gram on a five-character text.
"""

from __future__ import annotations

import collections
import hashlib
import lzma
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import tasks
from rnnjax.tasks import shakespeare

README_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
N = 1_115_394


@pytest.fixture(scope="module")
def task():
  return tasks.get_task("shakespeare")


@pytest.fixture(scope="module")
def text():
  return tasks.load_shakespeare()


def test_data_file_decompresses_to_the_corpus(text):
  raw = lzma.decompress(shakespeare.DATA_FILE.read_bytes())
  assert hashlib.sha256(raw).hexdigest() == README_SHA256
  assert raw.decode("utf-8") == text
  assert len(text) == N and text.startswith("First Citizen:\nBefore we proceed")


def test_splits_are_nanogpts(task, text):
  n_nano = int(N * 0.9)  # nanoGPT's data/shakespeare_char/prepare.py
  assert n_nano == 1_003_854 and N - n_nano == 111_540  # its printed train/val sizes
  n_val = math.ceil(0.05 * n_nano)
  splits = task.info["splits"]
  assert splits == {"train": [0, n_nano - n_val], "val": [n_nano - n_val, n_nano],
                    "test": [n_nano, N]}
  edges = [b for a in ("train", "val", "test") for b in splits[a]]
  assert edges == sorted(edges) and edges[0] == 0 and edges[-1] == N  # disjoint, covering
  assert (task.info["n_train"], task.info["n_val"], task.info["n_test"]) == (
      n_nano - n_val, n_val, N - n_nano)
  assert task.info["n_eval_chars"] == {"val": n_val - 1, "test": N - n_nano - 1}


def test_vocabulary(task, text):
  vocab = task.info["vocab"]
  assert task.vocab_size == task.input_size == task.output_size == len(vocab) == 65
  assert vocab == sorted(set(text))
  assert tasks.decode(tasks.encode("ROMEO:", vocab), vocab) == "ROMEO:"
  assert (task.name, task.metric, task.loss_units) == ("shakespeare", "nats_per_char", "nats")


def test_batches_read_only_the_training_text(task, text):
  train_text = text[:task.info["n_train"]]
  vocab = task.info["vocab"]
  for seed in range(2):
    batch = task.train_batch(jax.random.key(seed), 256)
    xs, ys = np.asarray(batch["xs"]), np.asarray(batch["ys"])
    assert xs.shape == ys.shape == batch["mask"].shape == (64, 256)
    assert xs.dtype == ys.dtype == np.int32 and float(batch["mask"].min()) == 1.0
    np.testing.assert_array_equal(xs[1:], ys[:-1])
    for b in range(xs.shape[1]):
      window = tasks.decode(np.concatenate([xs[:, b], ys[-1:, b]]), vocab)
      assert window in train_text, window


def test_ngram_against_a_hand_computation():
  # Vocabulary {a: 0, b: 1}; training text "aab"; the range [2, 5) of "aabab" scores its
  # targets at positions 3 ('a', after 'b') and 4 ('b', after 'a'). With alpha = 1:
  #   order 1: N(a) = 2, N(b) = 1 of 3; p1(a) = (2 + 1/2) / 4, p1(b) = (1 + 1/2) / 4.
  #   order 2: bigrams "aa", "ab"; 'b' is never followed by a character in training, so
  #   p2(a | b) = (0 + p1(a)) / (0 + 1); p2(b | a) = (N(ab) = 1 + p1(b)) / (N(a.) = 2 + 1).
  ids = np.array([0, 0, 1, 0, 1])
  p1a, p1b = 2.5 / 4, 1.5 / 4
  p2a, p2b = p1a, (1 + p1b) / 3
  want = [-(math.log(p1a) + math.log(p1b)) / 2, -(math.log(p2a) + math.log(p2b)) / 2]
  got = shakespeare._ngram_nats(ids, 3, [[2, 5]], 2, (1.0,), 2)
  np.testing.assert_allclose(got[0, :, 0], want, rtol=1e-12)


def _ngram_loop(text, n_train, start, end, order, alpha, vocab):
  """Order `order`'s mean nats, from dictionaries of counts and a loop over the targets."""
  grams = collections.Counter(text[q - m + 1:q + 1] for m in range(1, order + 1)
                              for q in range(m - 1, n_train))
  heads = collections.Counter(text[q - m + 1:q] for m in range(1, order + 1)
                              for q in range(m - 1, n_train))
  total = 0.0
  for pos in range(start + 1, end):
    p = 1.0 / len(vocab)
    for m in range(1, order + 1):
      h = text[pos - m + 1:pos]
      p = (grams[h + text[pos]] + alpha * p) / (heads[h] + alpha)
    total -= math.log(p)
  return total / (end - start - 1)


def test_ngram_against_a_loop_on_a_short_text():
  rng = np.random.default_rng(0)
  text = "".join(rng.choice(list("abc "), size=400, p=[0.4, 0.3, 0.2, 0.1]))
  vocab = sorted(set(text))
  ids = tasks.encode(text, vocab)
  got = shakespeare._ngram_nats(ids, 300, [[300, 350], [350, 400]], 3, (0.5, 4.0), len(vocab))
  for r, (start, end) in enumerate([[300, 350], [350, 400]]):
    for m in (1, 2, 3):
      for a, alpha in enumerate((0.5, 4.0)):
        want = _ngram_loop(text, 300, start, end, m, alpha, vocab)
        np.testing.assert_allclose(got[r, m - 1, a], want, rtol=1e-10)


def test_the_baseline_is_the_ngram_chosen_on_validation(task):
  ngram = task.info["ngram"]
  grid = ngram["val_grid"]
  best = min((v, int(o), float(a)) for o, row in grid.items() for a, v in row.items())
  assert (best[1], best[2]) == (ngram["order"], ngram["alpha"])
  assert task.baselines["val"] == pytest.approx(best[0], rel=1e-12)
  assert task.baseline_name == f"{ngram['order']}-gram"
  assert 1.0 < task.baselines["val"] < task.baselines["test"] < 2.0  # nats per character
  assert task.info["reference"]["val_loss_nats"] == 1.88


def _constant(logits):
  return lambda xs: jnp.broadcast_to(logits, (*xs.shape, logits.shape[0]))


def test_uniform_and_constant_predictors(task, text):
  metrics, details = task.evaluate(_constant(jnp.zeros(65)), "test")
  assert metrics["nats_per_char"] == pytest.approx(math.log(65), rel=1e-9)
  assert metrics["bits_per_char"] == pytest.approx(math.log2(65), rel=1e-9)
  assert details["n_chars"] == N - int(N * 0.9) - 1
  # A fixed distribution scores each target character exactly once: its mean over
  # text[start + 1:end], counted here by a loop.
  vocab = task.info["vocab"]
  logp = np.log(np.arange(1, 66) / np.sum(np.arange(1, 66)))
  start, end = task.info["splits"]["val"]
  counts = collections.Counter(text[start + 1:end])
  want = -sum(n * logp[vocab.index(c)] for c, n in counts.items()) / (end - start - 1)
  metrics, _ = task.evaluate(_constant(jnp.asarray(logp, jnp.float32)), "val")
  assert metrics["nats_per_char"] == pytest.approx(want, rel=1e-6)
  assert metrics["accuracy"] == pytest.approx(counts[vocab[64]] / (end - start - 1))


def test_a_perfect_predictor_scores_zero(task, text):
  vocab = task.info["vocab"]
  start, end = task.info["splits"]["val"]
  ids = tasks.encode(text, vocab)
  nxt = {}  # the 64 inputs of each block -> the 64 characters after them
  for s in [*range(start, end - 65, 64), end - 65]:
    nxt[ids[s:s + 64].tobytes()] = ids[s + 1:s + 65]

  def perfect(xs):
    xs = np.asarray(xs)
    ys = np.stack([nxt[xs[:, b].tobytes()] for b in range(xs.shape[1])], axis=1)
    return jnp.asarray(100.0 * np.eye(65)[ys], jnp.float32)

  metrics, details = task.evaluate(perfect, "val")
  assert metrics["nats_per_char"] < 1e-30 and metrics["accuracy"] == 1.0
  assert details["held_out"][0] == text[start + 1:start + 65]


def test_bad_arguments(task):
  with pytest.raises(ValueError, match="`split` must be 'val'"):
    task.evaluate(_constant(jnp.zeros(65)), "train")
  with pytest.raises(ValueError, match=r"shape \(64, 256, 3\), expected \(64, 256, 65\)"):
    task.evaluate(_constant(jnp.zeros(3)), "val")
  with pytest.raises(ValueError, match="shakespeare_task: `window`"):
    tasks.shakespeare_task(window=0)
  with pytest.raises(ValueError, match="val_fraction=1e-05 leaves"):
    tasks.shakespeare_task(val_fraction=1e-5)


def test_a_run_writes_samples_and_rnnjax_sample_continues_it(tmp_path):
  """`rnnjax train --task shakespeare` writes samples.txt (after the "ROMEO:" prompt), and
  `rnnjax sample` reads the run (2 steps of a tiny model: the text itself is noise)."""
  import contextlib
  import io

  from rnnjax import cli

  out = tmp_path / "run"
  with jax.numpy_dtype_promotion("standard"), contextlib.redirect_stdout(io.StringIO()):
    assert cli.main(["train", "--task", "shakespeare", "--hidden", "8", "--steps", "2",
                     "--steps-per-call", "2", "--batch-size", "4", "--eval-every", "0",
                     "--checkpoint-every", "2", "--out", str(out), "--quiet"]) == 0
  assert (out / "samples.txt").read_text().startswith("ROMEO:\n")
  printed = io.StringIO()
  with jax.numpy_dtype_promotion("standard"), contextlib.redirect_stdout(printed):
    assert cli.main(["sample", "--out", str(out), "--length", "10", "--prompt", "KING"]) == 0
  assert printed.getvalue().startswith("KING")
