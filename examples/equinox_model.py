"""rnnjax inside Equinox: an rnnjax LSTM and an `eqx.nn.Linear` head, trained with Optax.

Task (synthetic): each step's input is two Gaussian features, and the target is the
first feature of `DELAY` steps before (zero for the first steps), so the model
must remember its recent inputs. Predicting zero gives a mean squared error of about
1; a model that remembers drives it towards 0.

The model is written the Equinox way: it takes one sequence `[T, I]` and the
batch is a `jax.vmap` over it; the optimizer state is built from
`eqx.filter(model, eqx.is_array)`, the step is an `eqx.filter_jit` of
`eqx.filter_value_and_grad`, and the trained model is saved with
`eqx.tree_serialise_leaves` and read back into a freshly built one.

  python examples/equinox_model.py
"""

import os
import sys
import tempfile
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import rnnjax
from rnnjax.interop.equinox import RNN

T, B, I, H, DELAY = 20, 32, 2, 32, 3


class Model(eqx.Module):
  rnn: RNN
  head: eqx.nn.Linear

  def __init__(self, *, key):
    k_rnn, k_head = jax.random.split(key)
    self.rnn = RNN(rnnjax.lstm(H), input_size=I, key=k_rnn)
    self.head = eqx.nn.Linear(H, 1, key=k_head)

  def __call__(self, xs):
    """One sequence: `xs: [T, I]` -> predictions `[T]`."""
    hs, _ = self.rnn(xs)                                   # [T, H]
    return jax.vmap(self.head)(hs)[:, 0]


def batch(key):
  """Inputs `[B, T, I]` (batch-major: the model is vmapped over axis 0) and targets `[B, T]`."""
  xs = jax.random.normal(key, (B, T, I))
  targets = jnp.pad(xs[:, :-DELAY, 0], ((0, 0), (DELAY, 0)))
  return xs, targets


def loss_fn(model, xs, targets):
  return jnp.mean((jax.vmap(model)(xs) - targets) ** 2)


optimizer = optax.adam(1e-2)


@eqx.filter_jit
def train_step(model, opt_state, xs, targets):
  loss, grads = eqx.filter_value_and_grad(loss_fn)(model, xs, targets)
  updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
  return eqx.apply_updates(model, updates), opt_state, loss


def train(num_steps, seed=0):
  """Trains a fresh model for `num_steps`; returns `(model, held-out loss before, after)`."""
  model = Model(key=jax.random.key(seed))
  opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
  held_out = batch(jax.random.key(10_000))
  evaluate = eqx.filter_jit(loss_fn)
  before = float(evaluate(model, *held_out))
  for i in range(num_steps):
    model, opt_state, _ = train_step(model, opt_state, *batch(jax.random.key(seed * 7919 + i)))
  return model, before, float(evaluate(model, *held_out))


def main(num_steps=300):
  start = time.perf_counter()
  model, before, after = train(num_steps)
  print(f"held-out MSE {before:.3f} -> {after:.3f} after {num_steps} steps "
        f"({time.perf_counter() - start:.1f} s)")
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "model.eqx")
    eqx.tree_serialise_leaves(path, model)
    restored = eqx.tree_deserialise_leaves(path, Model(key=jax.random.key(1)))
  xs, targets = batch(jax.random.key(10_000))
  same = float(loss_fn(restored, xs, targets)) == float(loss_fn(model, xs, targets))
  print("saved with eqx.tree_serialise_leaves and restored:", "same loss" if same else "DIFFERENT")
  if not same:
    raise SystemExit("the restored model differs from the trained one")
  if not after < before / 2:
    raise SystemExit(f"the model did not learn (held-out MSE {after:.3f} is not half of "
                     f"{before:.3f})")


if __name__ == "__main__":
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
