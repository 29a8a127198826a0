"""Synthetic long-memory tasks: the adding problem and the copy-memory task.

Both are scored on two fixed held-out sets of `n_eval` sequences: the test set drawn
from `jax.random.key(eval_seed)` and the validation set from `jax.random.key(val_seed)`;
training batches are drawn from the caller's keys.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.tasks import _common, base


def adding_batch(key: jax.Array, batch_size: int, length: int) -> base.Batch:
  """A batch of the adding problem (Hochreiter & Schmidhuber 1997).

  Args:
    key: PRNG key.
    batch_size: `B`.
    length: `T >= 2`.

  Returns:
    `xs: [T, B, 2]` float32: channel 0 uniform in [0, 1), channel 1 a marker that
    is 1 at one step in `[0, T // 2)` and one in `[T // 2, T)`, 0 elsewhere;
    `ys: [T, B, 1]` float32, the sum of the two marked values at `t = T - 1`, 0
    elsewhere; `mask: [T, B]` float32, 1 at `t = T - 1` only.
  """
  u = jax.random.uniform(key, (length + 2, batch_size), jnp.float32)  # one draw: cheap to compile
  values, half = u[:length], length // 2
  first = jnp.minimum(jnp.floor(u[length] * half).astype(jnp.int32), half - 1)
  second = jnp.minimum(half + jnp.floor(u[length + 1] * (length - half)).astype(jnp.int32),
                       length - 1)
  t = jnp.arange(length, dtype=first.dtype)[:, None]
  marker = ((t == first) | (t == second)).astype(jnp.float32)
  target = jnp.sum(values * marker, axis=0)  # [B]
  last = (t == length - 1).astype(jnp.float32)  # [T, 1]
  return {"xs": jnp.stack([values, marker], axis=-1),
          "ys": (last * target)[..., None],
          "mask": jnp.broadcast_to(last, (length, batch_size))}


def adding_task(length: int = 100, *, n_eval: int = 2048, eval_batch: int = 256,
                eval_seed: int = 12345, val_seed: int = 54321) -> base.Task:
  """The adding problem: output the sum of the two marked numbers at the last step.

  See `adding_batch` for the batches. Metric: `mse` at the last step on `n_eval`
  held-out sequences (also `accuracy`, the fraction with absolute error below 0.04,
  the criterion of Hochreiter & Schmidhuber). Baseline: always predicting 1.0, whose
  expected MSE is the variance of the sum, 1/6 ≈ 0.167.

  Args:
    length: `T`, steps per sequence (at least 2).
    n_eval: sequences in each held-out set (a multiple of `eval_batch`, or fewer than it).
    eval_batch: sequences per `predict` call in `evaluate`.
    eval_seed: seed of the test set.
    val_seed: seed of the validation set (not `eval_seed`).

  Returns:
    The task. `evaluate(predict, split)` expects `[T, B', 1]` for `xs: [T, B', 2]` and
    gives details `truth` and `prediction`, `[n_eval]` each.

  Examples:
    >>> import jax
    >>> task = adding_task(length=20)
    >>> task.train_batch(jax.random.key(0), 4)["xs"].shape
    (20, 4, 2)
    >>> 0.15 < task.baselines["val"] < 0.19 and 0.15 < task.baselines["test"] < 0.19
    True
  """
  fn = "rnnjax.tasks.adding_task"
  length = _common.int_at_least(fn, "length", length, minimum=2)
  n_eval, eval_batch = _eval_sizes(fn, n_eval, eval_batch)
  seeds = _seeds(fn, eval_seed, val_seed)
  make = jax.jit(adding_batch, static_argnums=(1, 2))
  held_out = {split: make(jax.random.key(seed), n_eval, length) for split, seed in seeds.items()}
  xs = {split: np.asarray(b["xs"]) for split, b in held_out.items()}
  truth = {split: np.asarray(b["ys"][-1, :, 0], np.float64) for split, b in held_out.items()}

  def train_batch(key: jax.Array, batch_size: int) -> base.Batch:
    batch_size = _common.int_at_least(f"{fn}.train_batch", "batch_size", batch_size)
    return adding_batch(key, batch_size, length)

  def evaluate(predict: base.Predict, split: str):
    split = _common.split(f"{fn}.evaluate", split)
    pred = np.concatenate([
        _common.predictions(f"{fn}.evaluate",
                            predict(jnp.asarray(xs[split][:, i:i + eval_batch])),
                            (length, eval_batch, 1))[-1, :, 0]
        for i in range(0, n_eval, eval_batch)])
    err = pred - truth[split]
    metrics = {"mse": float(np.mean(err ** 2)), "accuracy": float(np.mean(np.abs(err) < 0.04))}
    return metrics, {"truth": truth[split], "prediction": pred}

  return base.Task(
      name="adding", input_size=2, output_size=1, vocab_size=None,
      train_batch=jax.jit(train_batch, static_argnums=1), loss=base.masked_mse,
      evaluate=evaluate, metric="mse",
      baselines={split: float(np.mean((1.0 - t) ** 2)) for split, t in truth.items()},
      baseline_name="predict 1.0", units="", loss_units="",
      info={"length": length, "n_eval": n_eval, "n_val": n_eval, "n_test": n_eval,
            "eval_seed": eval_seed, "val_seed": val_seed})


def copy_batch(key: jax.Array, batch_size: int, delay: int, n_copy: int,
               n_symbols: int) -> base.Batch:
  """A batch of the copy-memory task (Arjovsky, Shah & Bengio 2016, with `delay` their `T`).

  Symbols are ids `0 .. S-1`, the blank is `S` and the delimiter `S + 1`. Each
  sequence has `T = delay + 2K` steps: `K` random symbols, `delay - 1` blanks, the
  delimiter, then `K` blanks during which the `K` symbols must be output in order.

  Args:
    key: PRNG key.
    batch_size: `B`.
    delay: steps from the last symbol to the first output (at least 1).
    n_copy: `K`, symbols to copy.
    n_symbols: `S`, alphabet size.

  Returns:
    `xs: [T, B]` int32 inputs; `ys: [T, B]` int32 targets, the blank except for the
    symbols in the last `K` steps; `mask: [T, B]` float32, 1 on the last `K` steps.
  """
  blank, delimiter = n_symbols, n_symbols + 1
  length = delay + 2 * n_copy
  symbols = jax.random.randint(key, (n_copy, batch_size), 0, n_symbols, dtype=jnp.int32)
  xs = jnp.full((length, batch_size), blank, jnp.int32)
  xs = xs.at[:n_copy].set(symbols).at[n_copy + delay - 1].set(delimiter)
  ys = jnp.full((length, batch_size), blank, jnp.int32).at[n_copy + delay:].set(symbols)
  mask = jnp.zeros((length, batch_size), jnp.float32).at[n_copy + delay:].set(1.0)
  return {"xs": xs, "ys": ys, "mask": mask}


def copy_task(delay: int = 100, *, n_copy: int = 10, n_symbols: int = 8, n_eval: int = 2048,
              eval_batch: int = 256, eval_seed: int = 12345, val_seed: int = 54321) -> base.Task:
  """The copy-memory task: reproduce `K` symbols after a delay (see `copy_batch`).

  Tokens: vocabulary `V = n_symbols + 2` (symbols, blank, delimiter). Only the `K`
  output steps are scored. Metric: `cross_entropy`, the mean cross-entropy in nats per
  scored step on `n_eval` held-out sequences (also `error`, the fraction of scored
  symbols whose most likely prediction is wrong). Baseline: the memoryless strategy,
  the uniform distribution over the `S` symbols, `log S` nats (log 8 ≈ 2.079) on
  either split. (Arjovsky et al. average over all `T` steps, so their baseline,
  `K log S / T`, is this one times `K / T`.)

  Args:
    delay: Arjovsky et al.'s `T`; sequences have `delay + 2 * n_copy` steps.
    n_copy: `K`, symbols to copy.
    n_symbols: `S`, alphabet size (at least 2).
    n_eval: sequences in each held-out set (a multiple of `eval_batch`, or fewer than it).
    eval_batch: sequences per `predict` call in `evaluate`.
    eval_seed: seed of the test set.
    val_seed: seed of the validation set (not `eval_seed`).

  Returns:
    The task. `evaluate(predict, split)` expects logits `[T, B', V]` for `xs: [T, B']`
    and gives details `truth` and `prediction`, `[n_eval, K]` int each.

  Examples:
    >>> import jax
    >>> task = copy_task(delay=5)
    >>> task.train_batch(jax.random.key(0), 4)["xs"].shape, task.vocab_size
    ((25, 4), 10)
    >>> round(task.baseline, 3), task.units
    (2.079, 'nats')
  """
  fn = "rnnjax.tasks.copy_task"
  delay = _common.int_at_least(fn, "delay", delay)
  n_copy = _common.int_at_least(fn, "n_copy", n_copy)
  n_symbols = _common.int_at_least(fn, "n_symbols", n_symbols, minimum=2)
  n_eval, eval_batch = _eval_sizes(fn, n_eval, eval_batch)
  seeds = _seeds(fn, eval_seed, val_seed)
  length, vocab = delay + 2 * n_copy, n_symbols + 2
  make = jax.jit(copy_batch, static_argnums=(1, 2, 3, 4))
  held_out = {split: make(jax.random.key(seed), n_eval, delay, n_copy, n_symbols)
              for split, seed in seeds.items()}
  xs = {split: np.asarray(b["xs"]) for split, b in held_out.items()}
  truth = {split: np.asarray(b["ys"][-n_copy:]).T for split, b in held_out.items()}  # [n, K]

  def train_batch(key: jax.Array, batch_size: int) -> base.Batch:
    batch_size = _common.int_at_least(f"{fn}.train_batch", "batch_size", batch_size)
    return copy_batch(key, batch_size, delay, n_copy, n_symbols)

  def evaluate(predict: base.Predict, split: str):
    split = _common.split(f"{fn}.evaluate", split)
    nll, pred = 0.0, []
    for i in range(0, n_eval, eval_batch):
      logits = _common.predictions(
          f"{fn}.evaluate", predict(jnp.asarray(xs[split][:, i:i + eval_batch])),
          (length, eval_batch, vocab))[-n_copy:]  # [K, b, V]
      target = truth[split][i:i + eval_batch].T[..., None]  # [K, b, 1]
      nll -= float(np.sum(np.take_along_axis(_common.log_softmax(logits), target, axis=-1)))
      pred.append(np.argmax(logits, axis=-1).T)
    pred = np.concatenate(pred)
    metrics = {"cross_entropy": nll / truth[split].size,
               "error": float(np.mean(pred != truth[split]))}
    return metrics, {"truth": truth[split], "prediction": pred}

  return base.Task(
      name="copy", input_size=vocab, output_size=vocab, vocab_size=vocab,
      train_batch=jax.jit(train_batch, static_argnums=1), loss=base.masked_cross_entropy,
      evaluate=evaluate, metric="cross_entropy",
      baselines={split: math.log(n_symbols) for split in base.SPLITS},
      baseline_name=f"memoryless (uniform over the {n_symbols} symbols)", units="nats",
      loss_units="nats",
      info={"delay": delay, "length": length, "n_copy": n_copy, "n_symbols": n_symbols,
            "blank": n_symbols, "delimiter": n_symbols + 1, "n_eval": n_eval,
            "n_val": n_eval, "n_test": n_eval, "eval_seed": eval_seed, "val_seed": val_seed})


def _eval_sizes(fn: str, n_eval: int, eval_batch: int) -> tuple[int, int]:
  n_eval = _common.int_at_least(fn, "n_eval", n_eval)
  eval_batch = min(_common.int_at_least(fn, "eval_batch", eval_batch), n_eval)
  if n_eval % eval_batch:
    raise ValueError(
        f"{fn}: `n_eval` (={n_eval}) must be a multiple of `eval_batch` (={eval_batch}), so "
        "that every `predict` call has the same shape.")
  return n_eval, eval_batch


def _seeds(fn: str, eval_seed: int, val_seed: int) -> dict[str, int]:
  """`{"val": val_seed, "test": eval_seed}`, checked to be distinct non-negative ints."""
  eval_seed = _common.int_at_least(fn, "eval_seed", eval_seed, minimum=0)
  val_seed = _common.int_at_least(fn, "val_seed", val_seed, minimum=0)
  if val_seed == eval_seed:
    raise ValueError(
        f"{fn}: `val_seed` (={val_seed}) must differ from `eval_seed` (={eval_seed}), so that "
        "the validation and test sets are different sequences.")
  return {"val": val_seed, "test": eval_seed}
