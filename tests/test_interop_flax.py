"""Tests for `rnnjax.interop.flax`: the linen and nnx wrappers equal the functional rnnjax."""

import pathlib
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import errors as flax_errors
from flax import linen as nn
from flax import nnx

import rnnjax
from rnnjax.interop.flax import NNXRNN, RNN

ROOT = pathlib.Path(__file__).resolve().parents[1]
B, T, I = 3, 6, 2
LENGTHS = jnp.array([6, 3, 0], jnp.int32)

RESETS = jnp.zeros((B, T), bool).at[0, 2].set(True).at[1, 4].set(True)  # batch-major
# One hidden size throughout (and I features in), so each initializer compiles once.
MODULES = {
    "lstm": rnnjax.lstm(4),
    "stack": rnnjax.stack([rnnjax.gru(4), rnnjax.lstm(4)]),
    "bidirectional": rnnjax.bidirectional(rnnjax.lstm(4), rnnjax.gru(4)),
}


def _inputs(seed=0):
  """Batch-major `[B, T, I]` inputs."""
  return jax.random.normal(jax.random.key(seed), (B, T, I), jnp.float32)


def _functional(module, params, xs_tm, carry=None, **kwargs):
  """`(ys, carry)` of the plain rnnjax call, time-major."""
  if isinstance(module, rnnjax.Cell):
    return rnnjax.unroll(module, params, xs_tm, carry, **kwargs)
  return module.apply(params, xs_tm, carry, **kwargs)


def _time_major(x):
  return jnp.swapaxes(x, 0, 1)


def _assert_trees_close(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  jax.tree_util.tree_map(
      lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6),
      a, b)


@pytest.mark.parametrize(("name", "time_major"), [
    ("lstm", False), ("stack", False), ("bidirectional", False), ("lstm", True)])
def test_wrappers_equal_functional(name, time_major):
  module = MODULES[name]
  xs = _inputs()
  inputs = _time_major(xs) if time_major else xs
  layout = (lambda y: y) if time_major else _time_major  # from the time-major reference
  # One set of params for all three: made by linen's init, read from the Flax
  # variables, and copied into the nnx wrapper's nnx.Param leaves.
  rnn = RNN(module, time_major=time_major, return_carry=True)
  variables = rnn.init(jax.random.key(1), inputs)
  params = variables["params"]["cell"]
  model = NNXRNN(module, I, rngs=nnx.Rngs(2), time_major=time_major)
  jax.tree_util.tree_map(lambda var, value: var.set_value(value), model.cell, params,
                         is_leaf=lambda x: isinstance(x, nnx.Param))
  resets = _time_major(RESETS) if time_major else RESETS
  ys_ref, carry_ref = _functional(module, params, _time_major(xs), lengths=LENGTHS,
                                  resets=_time_major(RESETS))

  carry, ys = rnn.apply(variables, inputs, seq_lengths=LENGTHS, resets=resets)
  _assert_trees_close(ys, layout(ys_ref))
  _assert_trees_close(carry, carry_ref)

  carry, ys = model(inputs, seq_lengths=LENGTHS, resets=resets, return_carry=True)
  _assert_trees_close(ys, layout(ys_ref))
  _assert_trees_close(carry, carry_ref)
  if not time_major:  # Padding gives zero outputs, in the caller's layout.
    assert not np.any(np.asarray(ys[2])) and not np.any(np.asarray(ys[1, 3:]))


@pytest.mark.parametrize("name", list(MODULES))
def test_params_are_registered_the_flax_way(name):
  module = MODULES[name]
  reference = module.init(jax.random.key(0), I)
  n_leaves = len(jax.tree_util.tree_leaves(reference))

  variables = jax.eval_shape(RNN(module).init, jax.random.key(0), _inputs())
  assert list(variables) == ["params"] and list(variables["params"]) == ["cell"]
  assert (jax.tree_util.tree_structure(variables["params"]["cell"])
          == jax.tree_util.tree_structure(reference))
  assert len(jax.tree_util.tree_leaves(variables)) == n_leaves

  model = NNXRNN(module, I, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  assert len(jax.tree_util.tree_leaves(state)) == n_leaves
  variables_nnx = jax.tree_util.tree_leaves(model.cell, is_leaf=lambda v: isinstance(v, nnx.Param))
  assert len(variables_nnx) == n_leaves
  assert all(isinstance(v, nnx.Param) for v in variables_nnx)
  assert (jax.tree_util.tree_structure(model.rnnjax_params())
          == jax.tree_util.tree_structure(reference))


def test_gradients_equal_functional():
  module = MODULES["lstm"]
  xs = _inputs()
  w = jax.random.normal(jax.random.key(3), (B, T, 1), jnp.float32)

  def loss(ys):
    return jnp.sum(ys * w)

  model = NNXRNN(module, I, rngs=nnx.Rngs(2))
  params = model.rnnjax_params()
  expected = jax.jit(jax.grad(
      lambda p: loss(_time_major(rnnjax.unroll(module, p, _time_major(xs), lengths=LENGTHS)[0]))))(
          params)

  grads = nnx.jit(nnx.grad(lambda m: loss(m(xs, seq_lengths=LENGTHS))))(model)
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  _assert_trees_close(nnx.merge(graphdef, grads, rest).rnnjax_params(), expected)

  rnn = RNN(module)
  grads = jax.jit(jax.grad(lambda v: loss(rnn.apply(v, xs, seq_lengths=LENGTHS))))(
      {"params": {"cell": params}})
  _assert_trees_close(grads["params"]["cell"], expected)


def test_carry_continues_across_calls():
  module = MODULES["lstm"]
  xs = _inputs()
  params = module.init(jax.random.key(1), I)  # functional params drop into the linen module
  variables = {"params": {"cell": params}}
  rnn = RNN(module)
  # The carry of the first half continues into the second half.
  zeros = rnn.apply(variables, (B,), method="initial_carry")
  _assert_trees_close(zeros, module.initial_carry(params, (B,)))
  carry, ys_a = rnn.apply(variables, xs[:, :3], initial_carry=zeros, return_carry=True)
  carry, ys_b = rnn.apply(variables, xs[:, 3:], initial_carry=carry, return_carry=True)
  ys_full, carry_full = rnnjax.unroll(module, params, _time_major(xs))
  _assert_trees_close(jnp.concatenate([ys_a, ys_b], axis=1), _time_major(ys_full))
  _assert_trees_close(carry, carry_full)

  model = NNXRNN(module, I, rngs=nnx.Rngs(0))
  _assert_trees_close(model.initial_carry((B,)),
                      module.initial_carry(model.rnnjax_params(), (B,)))
  with pytest.raises(ValueError, match="no params"):
    rnn.initial_carry((B,))


def test_dropout_follows_flax_conventions():
  module = rnnjax.stack([rnnjax.elman(4), rnnjax.elman(4)], dropout=0.5)
  xs = _inputs()
  key = jax.random.key(5)
  model = NNXRNN(module, I, rngs=nnx.Rngs(0), time_major=True)
  params = model.rnnjax_params()
  xs_tm = _time_major(xs)
  plain = rnnjax.unroll(module, params, xs_tm)[0]

  # nnx: train mode by default (as nnx.Dropout); eval() or nnx.view turn dropout off.
  _assert_trees_close(model(xs_tm, rngs=key), rnnjax.unroll(module, params, xs_tm, key=key)[0])
  assert not np.allclose(model(xs_tm), plain)  # a key from the stream stored at construction
  model.eval()
  assert model.deterministic is True
  _assert_trees_close(model(xs_tm), plain)
  model.train()
  assert model.deterministic is False
  assert nnx.view(model, deterministic=True).deterministic is True
  no_stream = NNXRNN(module, I, rngs=nnx.Rngs(params=0))
  with pytest.raises(ValueError, match="no rng stream for dropout"):
    no_stream(xs)

  # linen: deterministic unless deterministic=False, with the key from the "dropout" rng.
  rnn = RNN(module, time_major=True)
  variables = {"params": {"cell": params}}
  jax.eval_shape(lambda v: rnn.apply(v, xs_tm), variables)  # draws no key: needs no rng
  dropped = jax.jit(lambda v, k: rnn.apply(v, xs_tm, deterministic=False, rngs={"dropout": k}))
  assert not np.allclose(dropped(variables, key), plain)
  _assert_trees_close(dropped(variables, key), dropped(variables, key))
  with pytest.raises(flax_errors.InvalidRngError):
    RNN(module, deterministic=False).apply(variables, xs)


def test_drop_in_a_larger_linen_model():
  class Tagger(nn.Module):
    @nn.compact
    def __call__(self, tokens, lengths):
      x = nn.Embed(11, I)(tokens)
      h = RNN(MODULES["lstm"], name="rnn")(x, seq_lengths=lengths)
      return nn.Dense(4)(h)

  tokens = jax.random.randint(jax.random.key(0), (B, T), 0, 11)
  model = Tagger()

  def loss(params):
    return jnp.mean(model.apply({"params": params}, tokens, LENGTHS) ** 2)

  params = model.init(jax.random.key(1), tokens, LENGTHS)["params"]
  assert set(params) == {"Embed_0", "rnn", "Dense_0"}
  assert isinstance(params["rnn"]["cell"], rnnjax.LSTMParams)
  value_and_grad = jax.jit(jax.value_and_grad(loss))
  before, grads = value_and_grad(params)
  assert all(np.any(np.asarray(g) != 0) for g in jax.tree_util.tree_leaves(grads["rnn"]))
  after, _ = value_and_grad(jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads))
  assert float(after) < float(before)


def test_drop_in_a_larger_nnx_model():
  class Tagger(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(11, I, rngs=rngs)
      self.rnn = NNXRNN(MODULES["lstm"], I, rngs=rngs)
      self.head = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, tokens, lengths):
      return self.head(self.rnn(self.embed(tokens), seq_lengths=lengths))

  tokens = jax.random.randint(jax.random.key(0), (B, T), 0, 11)
  model = Tagger(nnx.Rngs(0))
  assert {path[0] for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))} == {
      "embed", "rnn", "head"}
  before = model.rnn.rnnjax_params()

  @nnx.jit
  def train_step(model, opt):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(tokens, LENGTHS) ** 2))(model)
    opt.update(model, grads)
    return loss

  with jax.numpy_dtype_promotion("standard"):
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    losses = [float(train_step(model, opt)) for _ in range(2)]
  assert losses[1] < losses[0]
  changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                                   before, model.rnn.rnnjax_params())
  assert all(jax.tree_util.tree_leaves(changed))


def test_errors_are_clear():
  with pytest.raises(TypeError, match=r"must be an rnnjax\.Cell or rnnjax\.Layer"):
    RNN(object()).init(jax.random.key(0), _inputs())
  with pytest.raises(TypeError, match=r"must be an rnnjax\.Cell or rnnjax\.Layer"):
    NNXRNN(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), I, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="input_size"):
    NNXRNN(MODULES["lstm"], 0, rngs=nnx.Rngs(0))
  model = NNXRNN(MODULES["lstm"], I, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"rank >= 2 with shape \[\*batch, T, I\]"):
    model(jnp.ones((I,)))
  with pytest.raises(ValueError, match=r"`resets` must have the shape .* \[\*batch, T\]"):
    model(_inputs(), resets=jnp.zeros((T, B), bool))
  with pytest.raises(ValueError, match="feature size 3"):
    model(jnp.ones((B, T, 3)))
  rnn = RNN(MODULES["lstm"])
  variables = {"params": {"cell": model.rnnjax_params()}}
  with pytest.raises(ValueError, match=r"feature size 3 but the params were made for input_size=2"):
    rnn.apply(variables, jnp.ones((B, T, 3)))
  with pytest.raises(ValueError, match=r"rank >= 2 with shape \[T, \*batch, I\]"):
    rnn.apply(variables, jnp.ones((I,)), time_major=True)


def test_flax_model_example_trains():
  """The example learns through rnnjax.fit, plain Optax and nnx; fit and Optax agree."""
  with jax.numpy_dtype_promotion("standard"):
    runpy.run_path(str(ROOT / "examples" / "flax_model.py"), run_name="__main__")
