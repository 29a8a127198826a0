"""`sequence_model(..., readout=...)`: each readout against a hand loop over each sequence.

The reference runs the GRU equations (tests/reference.py) over each sequence's valid
steps only, in NumPy float64, and reads it out by hand: the last output, the mean, or
all steps side by side with zeros after the length; a bidirectional core runs a second
GRU over the reversed valid steps, and "last" takes its final output (step 0). Inputs
hold garbage past each length, which must change neither the predictions nor the
gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

import rnnjax

T, B, I, H, O = 6, 4, 3, 4, 3
LENGTHS = np.array([6, 3, 1, 0], np.int32)  # A full, two shorter and an empty sequence.


def _inputs(seed, garbage=0.0):
  """`xs: [T, B, I]`, valid steps from `seed`, `garbage` (or random junk) past each length."""
  rng = np.random.default_rng(seed)
  xs = rng.normal(size=(T, B, I))
  pad = np.arange(T)[:, None] >= LENGTHS[None, :]
  junk = garbage if garbage else rng.normal(scale=100.0, size=(T, B, I))
  return np.where(pad[..., None], junk, xs).astype(np.float32)


def _gru(params, xs, reverse=False):
  """The GRU over one sequence `xs: [L, I]`: its outputs `[L, H]` in the order of the steps."""
  steps = xs[::-1] if reverse else xs
  state, out = (np.zeros(params.w_h.shape[0]),), []
  for x in steps:
    state, y = reference.gru_step(params, state, np.asarray(x, np.float64))
    out.append(y)
  out = np.array(out).reshape(len(steps), params.w_h.shape[0])
  return out[::-1] if reverse else out


def _reference(readout, core_outputs, params):
  """The hand read-out of each sequence: `core_outputs(b) -> ([L, C] outputs, [C] last)`."""
  preds = []
  for b, length in enumerate(LENGTHS):
    hs, last = core_outputs(b)
    width = last.shape[0]
    if readout == "last":
      feat = last
    elif readout == "mean":
      feat = hs.mean(axis=0) if length else np.zeros(width)
    else:
      feat = np.zeros((T, width))
      feat[:length] = hs
      feat = feat.reshape(-1)
    preds.append(feat @ np.float64(params.w_out) + np.float64(params.b_out))
  return np.array(preds)


def _model(core, readout, **kw):
  num_steps = T if readout == "flatten" else None
  return rnnjax.sequence_model(core, input_size=I, output_size=O, readout=readout,
                               num_steps=num_steps, **kw)


def _uni(params, xs):
  def outputs(b):
    hs = _gru(params.core, xs[:LENGTHS[b], b])
    return hs, hs[-1] if len(hs) else np.zeros(H)
  return outputs


def _bi(params, xs, fwd=4, bwd=2):
  def outputs(b):
    valid = xs[:LENGTHS[b], b]
    f = _gru(params.forward, valid)
    k = _gru(params.backward, valid, reverse=True)
    # The forward direction ends at the last valid step, the backward one at step 0.
    last = (np.concatenate([f[-1], k[0]]) if len(valid) else np.zeros(fwd + bwd))
    return np.concatenate([f, k], axis=1), last
  return outputs


@pytest.mark.parametrize("readout", ["last", "mean", "flatten"])
def test_readouts_of_a_gru_match_a_hand_loop_and_ignore_padding(readout):
  model = _model(rnnjax.gru(H), readout)
  params = model.init(jax.random.key(1))
  apply = jax.jit(lambda p, xs: model.apply(p, xs, lengths=jnp.asarray(LENGTHS))[0])
  xs = _inputs(0)
  preds = np.asarray(apply(params, xs))
  assert preds.shape == (B, O)
  want = _reference(readout, _uni(params, xs), params)
  np.testing.assert_allclose(preds, want, rtol=1e-4, atol=1e-5)
  # An empty sequence reads zeros: its prediction is the bias.
  np.testing.assert_allclose(preds[3], params.b_out, atol=1e-6)
  # Other garbage past the lengths: the same predictions and gradients.
  other = _inputs(0, garbage=1e4)
  np.testing.assert_allclose(np.asarray(apply(params, other)), preds, rtol=1e-6, atol=1e-6)
  grad = jax.jit(jax.grad(lambda p, xs: jnp.sum(apply(p, xs) ** 2)))
  for a, b in zip(jax.tree_util.tree_leaves(grad(params, xs)),
                  jax.tree_util.tree_leaves(grad(params, other)), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("readout", ["last", "mean", "flatten"])
def test_readouts_of_a_bidirectional_core_read_each_direction_where_it_ends(readout):
  core = rnnjax.bidirectional(rnnjax.gru(4), rnnjax.gru(2))
  model = _model(core, readout)
  params = model.init(jax.random.key(2))
  xs = _inputs(3)
  preds, _ = jax.jit(lambda p, xs: model.apply(p, xs, lengths=jnp.asarray(LENGTHS)))(params, xs)
  want = _reference(readout, _bi(params.core, xs), params)
  np.testing.assert_allclose(np.asarray(preds), want, rtol=1e-4, atol=1e-5)


def test_last_of_a_stack_ending_in_a_bidirectional_layer_and_of_a_reversed_layer():
  xs = _inputs(4)
  lengths = jnp.asarray(LENGTHS)
  # A stack: a GRU, then a bidirectional layer; "last" reads the top layer's two halves.
  stack = rnnjax.stack([rnnjax.gru(H), rnnjax.bidirectional(rnnjax.gru(4), rnnjax.gru(2))])
  model = _model(stack, "last")
  params = model.init(jax.random.key(5))
  preds = np.asarray(model.apply(params, xs, lengths=lengths)[0])
  below = np.zeros((T, B, H), np.float32)
  for b in range(B):
    below[:LENGTHS[b], b] = _gru(params.core[0], xs[:LENGTHS[b], b])
  want = _reference("last", _bi(params.core[1], below), params)
  np.testing.assert_allclose(preds, want, rtol=1e-4, atol=1e-5)
  # A layer run backwards ends at step 0: "last" reads it there.
  model = _model(rnnjax.rnn(rnnjax.gru(H), reverse=True), "last")
  params = model.init(jax.random.key(6))
  preds = np.asarray(model.apply(params, xs, lengths=lengths)[0])
  want = []
  for b in range(B):
    hs = _gru(params.core, xs[:LENGTHS[b], b], reverse=True)
    feat = hs[0] if len(hs) else np.zeros(H)
    want.append(feat @ np.float64(params.w_out) + np.float64(params.b_out))
  np.testing.assert_allclose(preds, np.array(want), rtol=1e-4, atol=1e-5)


def test_token_inputs_batch_major_and_no_lengths():
  model = rnnjax.sequence_model(rnnjax.gru(H), input_size=0, output_size=O, vocab_size=5,
                                embed_size=I, readout="mean")
  params = model.init(jax.random.key(7))
  rng = np.random.default_rng(8)
  ids = rng.integers(0, 5, size=(T, B)).astype(np.int32)
  ids = np.where(np.arange(T)[:, None] >= LENGTHS[None, :], -1, ids)  # -1 pads
  feats = np.where((ids >= 0)[..., None], np.asarray(params.embed)[np.maximum(ids, 0)], 0.0)
  want = _reference("mean", _uni(params, feats), params)
  preds, _ = model.apply(params, jnp.asarray(ids.T), lengths=LENGTHS, time_major=False)
  np.testing.assert_allclose(np.asarray(preds), want, rtol=1e-4, atol=1e-5)
  # Without lengths every step is valid; batch-major float inputs read the same.
  model = _model(rnnjax.gru(H), "last")
  params = model.init(jax.random.key(9))
  xs = _inputs(10)
  full = np.array([_gru(params.core, xs[:, b])[-1] for b in range(B)])
  want = full @ np.float64(params.w_out) + np.float64(params.b_out)
  preds, _ = model.apply(params, jnp.asarray(xs.transpose(1, 0, 2)), time_major=False)
  np.testing.assert_allclose(np.asarray(preds), want, rtol=1e-4, atol=1e-5)
  # Other batch shapes: [T, 2, 2, I] -> [2, 2, O].
  preds, _ = model.apply(params, jnp.asarray(xs.reshape(T, 2, 2, I)))
  np.testing.assert_allclose(np.asarray(preds), want.reshape(2, 2, O), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs, error, expected", [
    (dict(readout="final"), ValueError, ["readout", "'steps', 'last', 'mean', 'flatten'",
                                         "'final'"]),
    (dict(readout="flatten"), ValueError, ["readout='flatten'", "num_steps=T"]),
    (dict(readout="flatten", num_steps=0), ValueError, ["num_steps"]),
    (dict(readout="last", num_steps=6), ValueError, ["num_steps", "only used by",
                                                     "readout='last'"]),
    (dict(readout="last", core=rnnjax.bidirectional(rnnjax.gru(2), rnnjax.gru(2), merge="sum")),
     ValueError, ["readout='last'", "merge='sum'", "merge='concat'"]),
])
def test_bad_readout_arguments_are_refused_at_construction(kwargs, error, expected):
  core = kwargs.pop("core", rnnjax.gru(H))
  with pytest.raises(error) as exc:
    rnnjax.sequence_model(core, input_size=I, output_size=O, **kwargs)
  assert str(exc.value).startswith("rnnjax.sequence_model: ")
  for text in expected:
    assert text in str(exc.value)


def test_flatten_refuses_inputs_of_another_length():
  model = _model(rnnjax.gru(H), "flatten")
  params = model.init(jax.random.key(0))
  with pytest.raises(ValueError, match=r"apply: .*num_steps=6, got T=5 steps \(xs.shape=\(4, 5, "
                     r"3\)\).*Pad the inputs to 6 steps"):
    model.apply(params, jnp.zeros((B, 5, I)), time_major=False)
