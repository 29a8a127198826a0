"""Tests for `rnnjax.generate`: a plain Python loop over `cell.apply` is the reference.

The reference embeds each token, runs one `cell.apply`, reads the logits out, filters
them in NumPy (temperature, then top-k, then the nucleus) and draws with
`jax.random.categorical` and the key `fold_in(key, i)` of generated step `i`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax

V, E, H = 7, 5, 8  # vocabulary, embedding and hidden sizes
P, B, N = 4, 3, 6  # prompt length, batch, generated steps
KEY = jax.random.key(42)


def _model(core, seed=0):
  model = rnnjax.sequence_model(core, input_size=0, output_size=V, vocab_size=V, embed_size=E)
  return model, model.init(jax.random.key(seed))


def _filter(logits, temperature, top_k, top_p):
  """NumPy filtering of `logits: [..., V]`: divide, keep the top k, then the nucleus."""
  z = np.array(logits, np.float32) / np.float32(temperature)
  for row in z.reshape(-1, z.shape[-1]):
    if top_k is not None:
      kth = np.sort(row)[::-1][min(top_k, row.size) - 1]
      row[row < kth] = -np.inf
    if top_p is not None:
      probs = np.exp(row.astype(np.float64) - row.max())
      probs /= probs.sum()
      keep, mass = [], 0.0
      for j in np.argsort(-probs, kind="stable"):
        keep.append(j)
        mass += probs[j]
        if mass >= top_p:
          break
      drop = np.ones(row.size, bool)
      drop[keep] = False
      row[drop] = -np.inf
  return z


def _reference(cell, params, prompt, num_steps, key, temperature=1.0, top_k=None, top_p=None,
               carry=None):
  """The Python loop `generate` equals, over `cell.apply` one step at a time."""
  step = jax.jit(cell.apply)
  prompt = np.asarray(prompt)
  if carry is None:
    carry = cell.initial_carry(params.core, prompt.shape[1:])
  embed = np.asarray(params.embed)

  def feed(token, carry):
    carry, h = step(params.core, carry, jnp.asarray(embed[token]))
    return carry, np.asarray(h @ params.w_out + params.b_out)

  for token in prompt:
    carry, logits = feed(token, carry)
  tokens = []
  for i in range(num_steps):
    if temperature == 0:
      token = np.argmax(logits, axis=-1)
    else:
      z = jnp.asarray(_filter(logits, temperature, top_k, top_p))
      token = np.asarray(jax.random.categorical(jax.random.fold_in(key, i), z, axis=-1))
    tokens.append(token)
    carry, logits = feed(token, carry)
  return np.stack(tokens).astype(np.int32)


def _prompt(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, shape), jnp.int32)


LSTM = rnnjax.lstm(H)
LSTM_MODEL, LSTM_PARAMS = _model(LSTM)


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (0.0, None, None),  # greedy
    (1.0, None, None),
    (0.7, 3, None),
    (1.3, None, 0.6),
    (0.9, 4, 0.8),
])
def test_generate_equals_a_python_loop_over_cell_apply(temperature, top_k, top_p):
  prompt = _prompt((P, B))
  got = rnnjax.generate(LSTM_MODEL, LSTM_PARAMS, prompt, N, key=KEY, temperature=temperature,
                        top_k=top_k, top_p=top_p)
  assert got.shape == (N, B) and got.dtype == jnp.int32
  want = _reference(LSTM, LSTM_PARAMS, prompt, N, KEY, temperature, top_k, top_p)
  np.testing.assert_array_equal(got, want)
  if temperature:  # Another key draws other tokens.
    other = rnnjax.generate(LSTM_MODEL, LSTM_PARAMS, prompt, N, key=jax.random.key(7),
                            temperature=temperature, top_k=top_k, top_p=top_p)
    assert not np.array_equal(other, got)


def test_one_sequence_prompt_and_a_raw_key():
  prompt = _prompt((P,), seed=1)
  key = jax.random.PRNGKey(3)
  got = rnnjax.generate(LSTM_MODEL, LSTM_PARAMS, prompt, N, key=key, temperature=0.8)
  assert got.shape == (N,)
  np.testing.assert_array_equal(got, _reference(LSTM, LSTM_PARAMS, prompt, N, key, 0.8))


@pytest.mark.parametrize("name", ["stack", "linear stack"])
def test_a_stack_core(name):
  # A stack of cells is a Cell; a stack of linear cells runs the prompt on the parallel engine.
  core = (rnnjax.stack([rnnjax.gru(H), rnnjax.lstm(H)]) if name == "stack"
          else rnnjax.stack([rnnjax.mingru(H), rnnjax.lru(H)]))
  model, params = _model(core, seed=2)
  prompt = _prompt((P, B), seed=2)
  got = rnnjax.generate(model, params, prompt, N, key=KEY, top_k=5)
  np.testing.assert_array_equal(got, _reference(core, params, prompt, N, KEY, top_k=5))


def test_a_layer_core_generates_as_its_cell_and_carry_continues_a_prompt():
  prompt = _prompt((P, B), seed=3)
  layer_model, _ = _model(rnnjax.rnn(LSTM))
  want = _reference(LSTM, LSTM_PARAMS, prompt, N, KEY, 0.0)
  np.testing.assert_array_equal(
      rnnjax.generate(layer_model, LSTM_PARAMS, prompt, N, key=None, temperature=0), want)
  # The carry after the prompt's first steps, then the rest of the prompt.
  _, carry = LSTM_MODEL.apply(LSTM_PARAMS, prompt[:1])
  got = rnnjax.generate(LSTM_MODEL, LSTM_PARAMS, prompt[1:], N, key=None, temperature=0,
                        carry=carry)
  np.testing.assert_array_equal(got, want)


def test_the_same_shapes_do_not_trace_again():
  traces = []
  base, params = _model(rnnjax.gru(H), seed=4)

  def apply(*args, **kwargs):
    traces.append(args[1].shape)  # Runs when traced only: the step is compiled.
    return base.apply(*args, **kwargs)

  model = rnnjax.SequenceModel(base.init, base.initial_carry, apply)
  run = lambda prompt, n, **kw: rnnjax.generate(model, params, prompt, n, **kw)
  first = run(_prompt((P, B)), N, key=KEY, temperature=1.0, top_p=0.9)
  count = len(traces)
  assert count >= 2  # the prompt and the scanned step
  # Other values, keys, temperatures and top_p: the same program.
  second = run(_prompt((P, B), seed=5), N, key=jax.random.key(1), temperature=0.5, top_p=0.3)
  assert len(traces) == count and second.shape == first.shape
  run(_prompt((P + 2, B)), N, key=KEY, temperature=1.0, top_p=0.9)  # a new prompt length
  assert len(traces) == 2 * count
  run(_prompt((P + 2, B)), N + 3, key=KEY, temperature=2.0, top_p=0.5)  # a new num_steps
  assert len(traces) == 3 * count
  run(_prompt((P + 2, B), seed=6), N + 3, key=KEY, temperature=2.0, top_p=0.5)
  assert len(traces) == 3 * count


def test_generate_runs_under_jit():
  prompt = _prompt((P, B), seed=7)
  gen = jax.jit(lambda params, prompt, key: rnnjax.generate(LSTM_MODEL, params, prompt, N,
                                                            key=key, temperature=0.0))
  want = _reference(LSTM, LSTM_PARAMS, prompt, N, KEY, 0.0)
  np.testing.assert_array_equal(gen(LSTM_PARAMS, prompt, KEY), want)


def _no_vocab():
  model = rnnjax.sequence_model(LSTM, input_size=3, output_size=V)
  return model, model.init(jax.random.key(0))


def _other_outputs():
  model = rnnjax.sequence_model(LSTM, input_size=0, output_size=V + 1, vocab_size=V)
  return model, model.init(jax.random.key(0))


def _read_out_last():
  model = rnnjax.sequence_model(LSTM, input_size=0, output_size=V, vocab_size=V, readout="last")
  return model, model.init(jax.random.key(0))


@pytest.mark.parametrize("change, error, match", [
    (dict(model=_read_out_last), ValueError,
     r"`model` must predict every step \(readout=\"steps\"\), but it reads out one prediction "
     r"per sequence \(logits of shape \(3, 7\) for a prompt of shape \(4, 3\)\)"),
    (dict(model=_no_vocab), ValueError, r"`model` has no vocabulary.*vocab_size"),
    (dict(model=_other_outputs), ValueError, r"`model` reads out 8 logits.*output_size=7"),
    (dict(model=lambda: (LSTM, LSTM_PARAMS)), TypeError, r"`model` must be a SequenceModel"),
    (dict(prompt=jnp.ones((P, B))), TypeError, r"`prompt` must hold integer.*float32"),
    (dict(prompt=jnp.ones((P, B, 1), jnp.int32)), ValueError, r"`prompt`.*\[P\] or \[P, B\]"),
    (dict(prompt=jnp.ones((0,), jnp.int32)), ValueError, r"`prompt`.*P >= 1"),
    (dict(prompt=jnp.array([[1, 2], [V, 0]])), ValueError,
     r"token ids in `prompt`.*got 7 at prompt\[1, 0\]"),
    (dict(prompt=jnp.array([-1])), ValueError,
     r"token ids in `prompt`.*\[0, 7\), got -1 at prompt\[0\]"),
    (dict(num_steps=0), ValueError, r"`num_steps` must be a positive integer"),
    (dict(num_steps=2.0), TypeError, r"`num_steps` must be an integer"),
    (dict(temperature=-0.5), ValueError, r"`temperature` must be >= 0"),
    (dict(top_k=0), ValueError, r"`top_k` must be a positive integer"),
    (dict(top_p=0.0), ValueError, r"`top_p` must be in \(0, 1\]"),
    (dict(top_p=1.5), ValueError, r"`top_p` must be in \(0, 1\]"),
    (dict(key=None), TypeError, r"`key` must be a PRNG key"),
    (dict(key=3), TypeError, r"`key` must be a PRNG key.*jax.random.key\(3\)"),
])
def test_bad_arguments_are_named(change, error, match):
  args = dict(model=lambda: (LSTM_MODEL, LSTM_PARAMS), prompt=_prompt((P, B)), num_steps=N,
              key=KEY)
  args.update(change)
  model, params = args.pop("model")()
  with pytest.raises(error, match=r"^rnnjax\.generate: " + match):
    rnnjax.generate(model, params, args.pop("prompt"), args.pop("num_steps"), **args)
