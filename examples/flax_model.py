"""rnnjax inside Flax: token embedding -> rnnjax LSTM -> dense head, in linen and in nnx.

Task: each sequence counts modulo V with its own stride (3, 7, 1, 5, ... for
stride 4 and V = 10), and the model predicts the next token. The first token
of a sequence gives no clue to the stride, but from the second one on the next
token is determined, so the loss can fall from log(V) ~ 2.3 towards
log(V - 1) / (T - 1) ~ 0.15. Sequences have their own lengths; padding is
masked out of the loss and handed to the LSTM as `seq_lengths`.

The linen model is trained twice from the same init on the same batches with
the same optimizer: (a) through rnnjax's `fit` (`train_state` +
`make_train_step`), and (b) through a plain Optax loop. Both must learn, and
agree. Then the same model written with `flax.nnx` takes the trained weights
and must give the same loss.

  python examples/flax_model.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import nnx

import rnnjax
from rnnjax.interop.flax import NNXRNN, RNN

V, T, B, E, H = 10, 16, 32, 16, 32
STEPS = 150


def batch(key):
  """Token ids `[B, T + 1]` (inputs are `[:, :-1]`, targets `[:, 1:]`) and lengths `[B]`."""
  k_start, k_stride, k_len = jax.random.split(key, 3)
  start = jax.random.randint(k_start, (B, 1), 0, V)
  stride = jax.random.randint(k_stride, (B, 1), 1, V)
  tokens = (start + stride * jnp.arange(T + 1)) % V
  lengths = jax.random.randint(k_len, (B,), T // 2, T + 1)
  return {"tokens": tokens, "lengths": lengths}


@jax.jit
def data(step):
  """The batch of training step `step` (a pure function of it, as `rnnjax.fit` wants)."""
  return batch(jax.random.fold_in(jax.random.key(1), step))


def masked_xent(logits, batch):
  """Mean next-token cross-entropy over the valid steps."""
  targets = batch["tokens"][:, 1:]
  valid = jnp.arange(T) < batch["lengths"][:, None]
  xent = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return jnp.sum(jnp.where(valid, xent, 0.0)) / jnp.sum(valid)


class LinenModel(nn.Module):
  @nn.compact
  def __call__(self, tokens, seq_lengths):
    x = nn.Embed(V, E)(tokens)                                          # [B, T, E]
    h = RNN(rnnjax.lstm(H), name="lstm")(x, seq_lengths=seq_lengths)   # [B, T, H]
    return nn.Dense(V)(h)                                               # [B, T, V]


class NNXModel(nnx.Module):
  def __init__(self, *, rngs):
    self.embed = nnx.Embed(V, E, rngs=rngs)
    self.lstm = NNXRNN(rnnjax.lstm(H), input_size=E, rngs=rngs)
    self.head = nnx.Linear(H, V, rngs=rngs)

  def __call__(self, tokens, seq_lengths):
    return self.head(self.lstm(self.embed(tokens), seq_lengths=seq_lengths))


model = LinenModel()
optimizer = optax.adam(1e-2)
held_out = jax.jit(batch)(jax.random.key(123))


def loss_fn(params, batch, key):
  del key  # For dropout; this model has none.
  logits = model.apply({"params": params}, batch["tokens"][:, :-1], batch["lengths"])
  return masked_xent(logits, batch)


def eval_loss(params):
  return float(jax.jit(loss_fn)(params, held_out, None))


def train_with_fit(params):
  """(a) rnnjax's training loop around the Flax model."""
  state = rnnjax.train_state(params, optimizer, jax.random.key(2))
  step = rnnjax.make_train_step(loss_fn, optimizer)
  result = rnnjax.fit(state, step, data, num_steps=STEPS, progress=False)
  assert result.status == "completed", result.message
  return result.state.params


def train_with_optax(params):
  """(b) A plain Optax loop around the same model."""
  @jax.jit
  def step(params, opt_state, batch):
    grads = jax.grad(loss_fn)(params, batch, None)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  for i in range(STEPS):
    params, opt_state = step(params, opt_state, data(i))
  return params


def to_nnx(params):
  """The same model in `flax.nnx`, holding the linen model's weights.

  The rnnjax params are the same pytree in both: linen's `params["lstm"]["cell"]`
  is an `LSTMParams` of arrays, nnx's `net.lstm.cell` the same `LSTMParams` of
  `nnx.Param`s (train it with `nnx.Optimizer(net, tx, wrt=nnx.Param)`).
  """
  net = NNXModel(rngs=nnx.Rngs(0))
  net.embed.embedding.set_value(params["Embed_0"]["embedding"])
  jax.tree_util.tree_map(lambda var, value: var.set_value(value), net.lstm.cell,
                         params["lstm"]["cell"], is_leaf=lambda x: isinstance(x, nnx.Param))
  net.head.kernel.set_value(params["Dense_0"]["kernel"])
  net.head.bias.set_value(params["Dense_0"]["bias"])
  return net


@nnx.jit
def nnx_loss(net, batch):
  return masked_xent(net(batch["tokens"][:, :-1], batch["lengths"]), batch)


def main():
  start = time.perf_counter()
  params = model.init(jax.random.key(0), held_out["tokens"][:, :-1],
                      held_out["lengths"])["params"]
  print("linen params:", {name: list(p) for name, p in params.items()},
        "with params['lstm']['cell'] an", type(params["lstm"]["cell"]).__name__)
  before = eval_loss(params)
  params_optax = train_with_optax(params)
  params_fit = train_with_fit(params)  # Donates `params` to the first step.
  after_fit, after_optax = eval_loss(params_fit), eval_loss(params_optax)
  print(f"linen  held-out loss {before:.3f} -> {after_fit:.3f} (rnnjax.fit), "
        f"{after_optax:.3f} (plain Optax)")
  after_nnx = float(nnx_loss(to_nnx(params_fit), held_out))
  print(f"nnx    held-out loss {after_nnx:.3f} with the weights trained by rnnjax.fit")
  print(f"({time.perf_counter() - start:.1f} s)")
  for name, after in (("rnnjax.fit", after_fit), ("plain Optax", after_optax)):
    if not after < before / 3:
      raise SystemExit(f"{name}: the model did not learn (held-out loss {after:.3f} is not "
                       f"3x below {before:.3f})")
  # Same init, batches and optimizer: the two linen runs are the same computation.
  np.testing.assert_allclose(after_fit, after_optax, rtol=1e-4)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
                         params_fit, params_optax)
  np.testing.assert_allclose(after_nnx, after_fit, rtol=1e-5)
  print("rnnjax.fit and the plain Optax loop agree, and so do the linen and nnx models")


if __name__ == "__main__":
  main()
