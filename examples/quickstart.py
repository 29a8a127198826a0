"""rnnjax quickstart: a padded batch of variable-length sequences, an LSTM, a training loop.

Task: each sequence holds random numbers in [0, 1) and has its own length; the
model reads it and must predict the mean of its valid values (padding must be
ignored). A model that ignores the data and predicts 0.5 gets MSE ~ 1/12/len;
the LSTM must do better.

  python examples/quickstart.py
"""

import time

import jax
import jax.numpy as jnp
import optax

import rnnjax

T, B, H = 30, 64, 32


def batch(key):
  k_x, k_len = jax.random.split(key)
  xs = jax.random.uniform(k_x, (T, B, 1))
  lengths = jax.random.randint(k_len, (B,), 5, T + 1)
  valid = jnp.arange(T)[:, None] < lengths
  target = jnp.sum(jnp.where(valid, xs[..., 0], 0.0), axis=0) / lengths
  return xs, lengths, target


cell = rnnjax.lstm(H)


def init(key):
  k_cell, k_head = jax.random.split(key)
  return {"cell": cell.init(k_cell, input_size=1),
          "head": jax.random.normal(k_head, (H,)) / jnp.sqrt(H)}


def loss_fn(params, xs, lengths, target):
  _, carry = rnnjax.unroll(cell, params["cell"], xs, lengths=lengths)  # carry after last valid step
  pred = carry.h @ params["head"] + 0.5
  return jnp.mean((pred - target) ** 2)


optimizer = optax.adam(3e-3)


@jax.jit
def train_step(params, opt_state, key):
  loss, grads = jax.value_and_grad(loss_fn)(params, *batch(key))
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def main():
  key = jax.random.key(0)
  params = init(key)
  opt_state = optimizer.init(params)
  xs, lengths, target = batch(jax.random.key(123))
  baseline = float(jnp.mean((0.5 - target) ** 2))
  start = time.perf_counter()
  for step in range(1, 601):
    params, opt_state, loss = train_step(params, opt_state, jax.random.fold_in(key, step))
    if step % 100 == 0:
      print(f"step {step:4d}  train MSE {float(loss):.5f}")
  test = float(loss_fn(params, xs, lengths, target))
  print(f"held-out MSE {test:.5f}  vs  predict-0.5 baseline {baseline:.5f}  "
        f"({time.perf_counter() - start:.1f} s)")
  if not test < baseline / 4:
    raise SystemExit("the LSTM did not learn (held-out MSE is not 4x below the baseline)")


if __name__ == "__main__":
  main()
