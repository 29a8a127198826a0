"""`rnnjax.interop.pytorch`: PyTorch state dicts in and out, against stored PyTorch outputs.

The fixtures (`tests/fixtures/torch_*.npz`, written by `tests/make_torch_fixtures.py`)
hold each module's state_dict, inputs and outputs, so these tests need no torch;
the `live` tests compare against torch directly when it is installed.
"""

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax.interop import pytorch

FIXTURES = sorted((pathlib.Path(__file__).parent / "fixtures").glob("torch_*.npz"))
TOL = dict(rtol=1e-5, atol=1e-5)


def load(path):
  with np.load(path, allow_pickle=False) as f:
    data = dict(f)
  return data, json.loads(str(data.pop("config")))


def state_dict(data):
  return {k[len("rnn."):]: v for k, v in data.items() if k.startswith("rnn.")}


def close(got, want):
  np.testing.assert_allclose(np.asarray(got), want, **TOL)


def check_outputs(data, suffix, out):
  y, h = out
  close(y, data["y" + suffix])
  if "c_n" + suffix in data:
    close(h[0], data["h_n" + suffix])
    close(h[1], data["c_n" + suffix])
  else:
    close(h, data["h_n" + suffix])


def test_fixtures_exist_and_are_small():
  assert len(FIXTURES) >= 12
  assert sum(p.stat().st_size for p in FIXTURES) < 300_000


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem[len("torch_"):])
def test_fixture_matches_pytorch(path):
  data, cfg = load(path)
  # Sizes and structure are inferred; passing them as checks gives the same result.
  layer, params = pytorch.from_torch(data, mode=cfg["mode"], prefix="rnn.")
  checked = {k: cfg[k] for k in ("num_layers", "bidirectional", "bias", "proj_size",
                                 "input_size", "hidden_size")}
  _, params_checked = pytorch.from_torch(state_dict(data), mode=cfg["mode"], **checked)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, params_checked)
  assert isinstance(layer, rnnjax.Layer)
  kw = pytorch.torch_kwargs(params)
  assert kw == {k: cfg[k] for k in kw} and len(kw) == 6 - (cfg["mode"] != "LSTM")
  batch_first = cfg["batch_first"]
  # The three PyTorch runs side by side in one batch, for one compilation (most of the
  # time these tests take): from a zero state, from (h_0, c_0), and the padded batch
  # (PackedSequence) from (h_0, c_0), whose padded steps hold random numbers.
  hx = (data["h_0"], data["c_0"]) if cfg["mode"] == "LSTM" else data["h_0"]
  hx = jax.tree_util.tree_map(lambda h: np.concatenate([0 * h, h, h], axis=1), hx)
  b_axis = 0 if batch_first else 1
  x = np.concatenate([data["x"], data["x"], data["x_packed"]], axis=b_axis)
  num_steps = data["x"].shape[1 - b_axis]
  lengths = np.concatenate([np.full(2 * len(data["lengths"]), num_steps), data["lengths"]])
  run = jax.jit(lambda p, x, hx, lengths: pytorch.apply_like_torch(
      layer, p, x, hx, batch_first=batch_first, lengths=lengths))
  y, h = run(params, x, hx, lengths)
  for i, suffix in enumerate(("", "_hx", "_packed")):
    check_outputs(data, suffix, (np.split(np.asarray(y), 3, axis=b_axis)[i],
                                 jax.tree_util.tree_map(
                                     lambda a, i=i: np.split(np.asarray(a), 3, axis=1)[i], h)))
  y = np.split(np.asarray(y), 3, axis=b_axis)[2]
  for b, n in enumerate(data["lengths"]):  # PyTorch pads with zeros; so does rnnjax.
    assert not (y[b, n:] if batch_first else y[n:, b]).any()


def test_fixture_by_hand_without_lengths():
  # `layer.apply` on time-first inputs from a zero state, PyTorch's h_n from the carry.
  data, cfg = load(FIXTURES[0].with_name("torch_lstm_l2_bi_proj_bf.npz"))
  layer, params = pytorch.from_torch(data, mode=cfg["mode"], prefix="rnn.")

  @jax.jit
  def run(params, x):
    ys, carry = layer.apply(params, pytorch.from_batch_first(x))
    return pytorch.to_batch_first(ys), pytorch.carry_to_torch(carry)

  check_outputs(data, "", run(params, data["x"]))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem[len("torch_"):])
def test_fixture_round_trip(path):
  data, cfg = load(path)
  sd = state_dict(data)
  _, params = pytorch.from_torch(sd, mode=cfg["mode"])
  back = pytorch.to_torch(params, mode=cfg["mode"])
  assert list(back) == list(sd)  # PyTorch's key order, too.
  for k, v in sd.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape
    np.testing.assert_array_equal(back[k], v)
    assert back[k].flags.c_contiguous
  assert list(pytorch.to_torch(params, prefix="rnn.")) == [k for k in data if k[:4] == "rnn."]
  hx = (data["h_0"], data["c_0"]) if cfg["mode"] == "LSTM" else data["h_0"]
  hx_back = pytorch.carry_to_torch(pytorch.carry_from_torch(params, hx))
  jax.tree_util.tree_map(np.testing.assert_array_equal, tuple(hx_back) if isinstance(hx, tuple)
                         else hx_back, hx)


def test_structure_of_the_returned_layer():
  data, _ = load(FIXTURES[0].with_name("torch_lstm_l2_bi_bf.npz"))
  _, params = pytorch.from_torch(data, mode="LSTM", prefix="rnn.")
  assert isinstance(params, tuple) and len(params) == 2
  assert isinstance(params[1], rnnjax.BidirectionalParams)
  assert params[1].backward.w_i.shape == (10, 20)  # weight_ih_l1_reverse.T: [2H, 4H]
  np.testing.assert_array_equal(params[0].backward.b_h, data["rnn.bias_hh_l0_reverse"])
  data, _ = load(FIXTURES[0].with_name("torch_gru_l2.npz"))
  _, params = pytorch.from_torch(data, mode="GRU", prefix="rnn.")
  assert all(isinstance(p, rnnjax.GRUParams) for p in params)
  # The same layer written by hand, `rnnjax.rnn(rnnjax.stack([gru(5)] * 2))`, gives with these
  # params what PyTorch gave (stored: from a zero state, time first).
  by_hand = rnnjax.rnn(rnnjax.stack([rnnjax.gru(5)] * 2))
  ys, carry = jax.jit(by_hand.apply)(params, data["x"])
  close(ys, data["y"])
  close(np.stack([c.h for c in carry]), data["h_n"])


def test_dtype_argument_and_training_dropout():
  data, _ = load(FIXTURES[0].with_name("torch_gru_l2.npz"))
  _, params = pytorch.from_torch(data, mode="GRU", prefix="rnn.", dtype=jnp.bfloat16)
  assert {p.dtype for p in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  layer, params = pytorch.from_torch(data, mode="GRU", prefix="rnn.", dropout=0.5)
  run = jax.jit(lambda p, x, k: (layer.apply(p, x)[0], layer.apply(p, x, key=k)[0]))
  y_eval, y_train = run(params, data["x"], jax.random.key(0))
  close(y_eval, data["y"])  # No key: deterministic, as module.eval().
  assert not np.allclose(y_train, data["y"])


# Synthetic state dicts for the error tests.


def make_sd(mode="LSTM", num_layers=1, bidirectional=False, bias=True, proj_size=0,
            input_size=3, hidden_size=4, seed=0):
  rng = np.random.default_rng(seed)
  g = {"LSTM": 4, "GRU": 3}.get(mode, 1)
  h, p = hidden_size, proj_size or hidden_size
  d = 2 if bidirectional else 1
  sd = {}
  for layer in range(num_layers):
    for suffix in ("", "_reverse")[:d]:
      shapes = {"weight_ih": (g * h, input_size if layer == 0 else d * p),
                "weight_hh": (g * h, p)}
      if bias:
        shapes.update(bias_ih=(g * h,), bias_hh=(g * h,))
      if proj_size:
        shapes["weight_hr"] = (p, h)
      for kind, shape in shapes.items():
        sd[f"{kind}_l{layer}{suffix}"] = rng.normal(size=shape).astype(np.float32)
  return sd


def raises(match, exc=ValueError):
  return pytest.raises(exc, match=match)


def test_errors_in_the_keys():
  f = pytorch.from_torch
  with raises(r"from_torch: `state_dict` must be a mapping", TypeError):
    f([1], mode="LSTM")
  with raises(r"`mode` must be one of 'LSTM', 'GRU', 'RNN_TANH', 'RNN_RELU'; got mode='lstm'"):
    f(make_sd(), mode="lstm")
  with raises(r"unexpected key\(s\) 'fc.weight' for a PyTorch RNN.*prefix='rnn.'"):
    f({**make_sd(), "fc.weight": np.zeros(3)}, mode="LSTM")
  with raises(r"no RNN weights \(keys like 'lstm.weight_ih_l0'\) starting with prefix='lstm.'"):
    f({f"rnn.{k}": v for k, v in make_sd().items()}, mode="LSTM", prefix="lstm.")
  # Keys without the prefix are ignored (the rest of a larger model).
  f({"fc.weight": np.zeros(3), **{f"rnn.{k}": v for k, v in make_sd().items()}}, mode="LSTM",
    prefix="rnn.")
  with raises(r"'weight_hr_l0'.*LSTM projection weight, not part of mode='GRU'"):
    f(make_sd("LSTM", proj_size=2), mode="GRU")
  with raises(r"unexpected key\(s\) 'weight_ih_l2', 'weight_hh_l2', 'bias_ih_l2', 'bias_hh_l2': "
              r"layer\(s\) 2 do not exist with num_layers=2 \(layers 0 to 1\)"):
    f(make_sd(num_layers=3), mode="LSTM", num_layers=2)
  with raises(r"'weight_ih_l0_reverse'.*'_reverse' keys belong to a bidirectional module, but "
              r"bidirectional=False"):
    f(make_sd(bidirectional=True), mode="LSTM", bidirectional=False)
  with raises(r"unexpected key\(s\) 'bias_ih_l0', 'bias_hh_l0': bias=False was given"):
    f(make_sd(), mode="LSTM", bias=False)
  with raises(r"'weight_hr_l0': proj_size=0 \(no projection\) was given"):
    f(make_sd(proj_size=2), mode="LSTM", proj_size=0)
  with raises(r"`proj_size=2` needs mode='LSTM', got mode='GRU'"):
    f(make_sd("GRU"), mode="GRU", proj_size=2)


def test_errors_for_missing_keys():
  f = pytorch.from_torch
  sd = make_sd(num_layers=2)
  del sd["bias_hh_l1"]
  with raises(r"missing key\(s\) 'bias_hh_l1' for mode='LSTM', num_layers=2, "
              r"bidirectional=False, bias=True"):
    f(sd, mode="LSTM")
  with raises(r"missing key\(s\) 'weight_ih_l2', 'weight_hh_l2', 'bias_ih_l2', 'bias_hh_l2' "):
    f(make_sd(num_layers=2), mode="LSTM", num_layers=3)
  with raises(r"missing key\(s\) 'weight_ih_l0_reverse', .*'bias_hh_l0_reverse' .*"
              r"bidirectional=True"):
    f(make_sd(), mode="LSTM", bidirectional=True)
  with raises(r"missing key\(s\) 'rnn.bias_ih_l0', 'rnn.bias_hh_l0' "):
    f({f"rnn.{k}": v for k, v in make_sd(bias=False).items()}, mode="LSTM", bias=True,
      prefix="rnn.")
  with raises(r"missing key\(s\) 'weight_hr_l0' for .*with proj_size"):
    f(make_sd(), mode="LSTM", proj_size=2)
  sd = make_sd(num_layers=2)
  del sd["weight_ih_l0"], sd["weight_hh_l0"], sd["bias_ih_l0"], sd["bias_hh_l0"]
  with raises(r"missing key\(s\) 'weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0' "):
    f(sd, mode="LSTM")


def test_errors_for_shapes_and_modes():
  f = pytorch.from_torch
  sd = make_sd(num_layers=2, bidirectional=True)
  sd["weight_ih_l1"] = np.zeros((16, 4), np.float32)  # The input of layer 1 is 2H = 8.
  with raises(r"`weight_ih_l1` has shape \(16, 4\), expected \(16, 8\) for mode='LSTM', "
              r"num_layers=2, bidirectional=True, bias=True, hidden_size=4, input_size=3"):
    f(sd, mode="LSTM")
  sd = make_sd("GRU")
  sd["bias_hh_l0"] = np.zeros((12, 1), np.float32)
  with raises(r"`bias_hh_l0` must be a rank-1 array, got shape \(12, 1\)"):
    f(sd, mode="GRU")
  with raises(r"`weight_hh_l0` should have shape \(3\*H, H\) = \(12, 4\), got \(16, 4\): 4 "
              r"gate\(s\) of H=4, the weights of mode='LSTM'"):
    f(make_sd("LSTM"), mode="GRU")
  with raises(r"mode='LSTM' has 4 gate\(s\).*the weights of mode='GRU'"):
    f(make_sd("GRU"), mode="LSTM")
  with raises(r"mode='RNN_TANH' has 1 gate\(s\).*the weights of mode='LSTM'"):
    f(make_sd("LSTM"), mode="RNN_TANH")
  with raises(r"mode='GRU' has 3 gate\(s\).*the weights of mode='RNN_TANH' or 'RNN_RELU'"):
    f(make_sd("RNN_TANH"), mode="GRU")
  sd = make_sd(proj_size=2)
  sd["weight_hr_l0"] = np.zeros((4, 4), np.float32)
  with raises(r"`weight_hr_l0` has shape \(4, 4\) = \(proj_size, hidden_size\), but an LSTM "
              r"needs proj_size < hidden_size"):
    f(sd, mode="LSTM")
  with raises(r"`hidden_size=8` was given, but the state_dict has hidden_size=4 "
              r"\(weight_hh_l0 has shape \(16, 4\)\)"):
    f(make_sd(), mode="LSTM", hidden_size=8)
  with raises(r"`input_size=2` was given, but the state_dict has input_size=3"):
    f(make_sd(), mode="LSTM", input_size=2)
  with raises(r"`proj_size=3` was given, but the state_dict has proj_size=2"):
    f(make_sd(proj_size=2), mode="LSTM", proj_size=3)
  sd = make_sd("GRU")
  sd["bias_ih_l0"] = sd["bias_ih_l0"].astype(np.float64)
  with raises(r"mixes dtypes float32, float64; pass `dtype`"):
    f(sd, mode="GRU")
  assert f(sd, mode="GRU", dtype=jnp.float32)[1].b_i.dtype == jnp.float32
  sd["bias_ih_l0"] = np.zeros(12, np.int32)
  with raises(r"`bias_ih_l0` must hold floats, got dtype=int32", TypeError):
    f(sd, mode="GRU")
  with raises(r"`num_layers` must be a positive integer, got num_layers=0"):
    f(make_sd(), mode="LSTM", num_layers=0)
  with raises(r"`bias` must be a bool or None, got 1", TypeError):
    f(make_sd(), mode="LSTM", bias=1)


WRONG_SHAPE_CONFIGS = {
    "lstm": dict(mode="LSTM"), "lstm_no_bias": dict(mode="LSTM", bias=False),
    "lstm_proj": dict(mode="LSTM", proj_size=2),
    "lstm_l2_bi_proj": dict(mode="LSTM", num_layers=2, bidirectional=True, proj_size=3),
    "gru": dict(mode="GRU"), "gru_no_bias": dict(mode="GRU", bias=False),
    "gru_l3": dict(mode="GRU", num_layers=3),
    "rnn_l2_bi": dict(mode="RNN_TANH", num_layers=2, bidirectional=True),
    "rnn_no_bias": dict(mode="RNN_RELU", bias=False),
}


@pytest.mark.parametrize("config", WRONG_SHAPE_CONFIGS)
def test_a_wrong_shape_is_blamed_on_its_own_key(config):
  # Before, the sizes were read from weight_hh_l0 (or weight_hr_l0), so a wrong weight_hh_l0
  # was reported as a wrong weight_ih_l0. Each key in turn gets one axis one longer (and,
  # for the recurrent matrix, the transpose); the message must name that key, its shape
  # and the shape it should have. Where two keys contradict each other with nothing else
  # to decide (two keys that both give the proj_size), both are named.
  kw = dict(WRONG_SHAPE_CONFIGS[config])
  mode = kw.pop("mode")
  sd = make_sd(mode, **kw)
  pytorch.from_torch(sd, mode=mode)  # The intact state_dict converts.
  cases = []
  for key, arr in sd.items():
    for axis in range(arr.ndim):
      if key == "weight_ih_l0" and axis == 1 and not kw.get("bidirectional"):
        continue  # Any input size is legal.
      shape = list(arr.shape)
      shape[axis] += 1
      cases.append((key, np.zeros(shape, np.float32)))
    if key.startswith("weight_hh") and arr.shape[0] != arr.shape[1]:
      cases.append((key, np.ascontiguousarray(arr.T)))
  for key, bad in cases:
    with raises(re.escape(f"`{key}` has shape {bad.shape}") + r"(, | = .*: )"
                + re.escape(f"expected {sd[key].shape}")):
      pytorch.from_torch({**sd, key: bad}, mode=mode)


def test_errors_of_the_export_and_state_helpers():
  lstm_params = pytorch.from_torch(make_sd(num_layers=2), mode="LSTM")[1]
  gru_params = pytorch.from_torch(make_sd("GRU"), mode="GRU")[1]
  with raises(r"to_torch: `params` must be params from `from_torch`.*got dict", TypeError):
    pytorch.to_torch({"w": 1})
  with raises(r"to_torch: mode='GRU' does not match the params, which are LSTMParams "
              r"\(mode 'LSTM'\)"):
    pytorch.to_torch(lstm_params, mode="GRU")
  with raises(r"mode='LSTM' does not match.*ElmanParams \(mode 'RNN_TANH' or 'RNN_RELU'\)"):
    pytorch.to_torch(pytorch.from_torch(make_sd("RNN_RELU"), mode="RNN_RELU")[1], mode="LSTM")
  with raises(r"every layer and direction must use the same cell.*layer 1 has GRUParams, "
              r"layer 0 has LSTMParams"):
    pytorch.to_torch((lstm_params[0], gru_params))
  bidi = pytorch.from_torch(make_sd(bidirectional=True), mode="LSTM")[1]
  with raises(r"every layer must be bidirectional or none.*params\[1\] is a LSTMParams"):
    pytorch.to_torch((bidi, lstm_params[1]))
  with raises(r"`params\[0\].backward` must be LSTMParams, GRUParams or ElmanParams.*got dict",
              TypeError):
    pytorch.to_torch((rnnjax.BidirectionalParams(lstm_params[0], {}),))
  small = pytorch.from_torch(make_sd(hidden_size=2, input_size=4), mode="LSTM")[1]
  with raises(r"to_torch: layer 1 has hidden size 2, expected 4 \(that of layer 0's forward "
              r"cell\)"):
    pytorch.to_torch((lstm_params[0], small))
  with raises(r"to_torch: layer 0 has b_i but no b_h: a PyTorch module has both biases"):
    pytorch.to_torch(lstm_params[0]._replace(b_h=None))
  with raises(r"torch_kwargs: layer 1 has input size \(w_i.shape\[0\]\) 3, expected 4 \(the "
              r"previous layer's output size\)"):
    pytorch.torch_kwargs((lstm_params[0], lstm_params[0]))
  # States.
  with raises(r"carry_from_torch: an LSTM's `hx` must be the tuple \(h_0, c_0\).*got ndarray",
              TypeError):
    pytorch.carry_from_torch(lstm_params, np.zeros((2, 3, 4), np.float32))
  with raises(r"`hx` must be the single array h_0 for a GRU", TypeError):
    pytorch.carry_from_torch(gru_params, (np.zeros((1, 4)), np.zeros((1, 4))))
  with raises(r"`h_0` must have shape \[num_layers \* num_directions, \*batch, 4\] = "
              r"\[2, \*batch, 4\] for these params \(2 layer\(s\), 1 direction\(s\)\), got "
              r"shape \(1, 3, 4\)"):
    h = np.zeros((1, 3, 4), np.float32)
    pytorch.carry_from_torch(lstm_params, (h, h))
  with raises(r"`h_0` and `c_0` must have the same batch shape"):
    pytorch.carry_from_torch(lstm_params, (np.zeros((2, 3, 4)), np.zeros((2, 2, 4))))
  with raises(r"carry_to_torch: `carry` must hold LSTMState or HiddenState.*layer 0 holds a "
              r"dict", TypeError):
    pytorch.carry_to_torch({"h": 1})
  with raises(r"from_batch_first: `xs` must be a batched sequence of rank 3, got shape \(5, 2\)"):
    pytorch.from_batch_first(np.zeros((5, 2)))
  with raises(r"apply_like_torch: `layer` must be the rnnjax.Layer", TypeError):
    pytorch.apply_like_torch(rnnjax.gru(4), gru_params, np.zeros((5, 2, 3), np.float32))


def test_a_stack_of_one_layer_keeps_its_tuple():
  # `rnnjax.stack([bidirectional(...)])`: params and carries are tuples of one layer.
  layer = rnnjax.stack([rnnjax.bidirectional(rnnjax.lstm(4, proj_size=2),
                                             rnnjax.lstm(4, proj_size=2))])
  sd = make_sd(bidirectional=True, proj_size=2)
  params = (pytorch.from_torch(sd, mode="LSTM")[1],)
  assert pytorch.torch_kwargs(params) == dict(input_size=3, hidden_size=4, num_layers=1,
                                              bias=True, bidirectional=True, proj_size=2)
  back = pytorch.to_torch(params)
  assert list(back) == list(sd)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, sd)
  _, carry = jax.jit(layer.apply)(params, jnp.ones((5, 2, 3)))
  h_n, c_n = pytorch.carry_to_torch(carry)
  assert h_n.shape == (2, 2, 2) and c_n.shape == (2, 2, 4)
  again = pytorch.carry_from_torch(params, (h_n, c_n))
  assert isinstance(again, tuple) and len(again) == 1
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, carry)


# Live comparisons with torch, when it is installed.

LIVE = [  # (mode, num_layers, bidirectional, bias, proj_size, batch_first)
    ("LSTM", 2, True, True, 3, True),
    ("GRU", 2, True, False, 0, False),
]


def torch_module(torch, mode, num_layers, bidirectional, bias, proj_size, batch_first,
                 input_size=4):
  kw = dict(input_size=input_size, hidden_size=5, num_layers=num_layers, bias=bias,
            bidirectional=bidirectional, batch_first=batch_first)
  if mode == "LSTM":
    return torch.nn.LSTM(**kw, proj_size=proj_size)
  if mode == "GRU":
    return torch.nn.GRU(**kw)
  return torch.nn.RNN(**kw, nonlinearity=mode[4:].lower())


def torch_run(torch, module, x, hx=None, lengths=None):
  rnn_utils = torch.nn.utils.rnn
  with torch.no_grad():
    if lengths is not None:
      x = rnn_utils.pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False,
                                         batch_first=module.batch_first)
    y, h = module(x, hx)
    if lengths is not None:
      y, _ = rnn_utils.pad_packed_sequence(y, batch_first=module.batch_first,
                                           total_length=max(lengths))
  return y.numpy(), jax.tree_util.tree_map(lambda t: t.numpy(), h)


@pytest.mark.parametrize("config", LIVE, ids=lambda c: "-".join(map(str, c)))
def test_live_import_matches_torch(config):
  torch = pytest.importorskip("torch")
  torch.manual_seed(7)
  module = torch_module(torch, *config)
  batch_first = config[-1]
  x = torch.randn((3, 6, 4) if batch_first else (6, 3, 4))
  lengths = [4, 6, 2]
  h_0 = torch.randn(4, 3, module.proj_size or 5)
  hx = (h_0, torch.randn(4, 3, 5)) if module.mode == "LSTM" else h_0
  y, h = torch_run(torch, module, x, hx, lengths=lengths)
  # Tensors straight from the module (Parameters that require grad).
  layer, params = pytorch.from_torch(dict(module.named_parameters()), mode=module.mode)
  run = jax.jit(lambda p, x, hx, lengths: pytorch.apply_like_torch(
      layer, p, x, hx, batch_first=batch_first, lengths=lengths))
  as_numpy = lambda t: t.numpy()
  got_y, got_h = run(params, x.numpy(), jax.tree_util.tree_map(as_numpy, hx), np.array(lengths))
  close(got_y, y)
  jax.tree_util.tree_map(close, got_h, h)


def test_live_unbatched_input():
  torch = pytest.importorskip("torch")
  torch.manual_seed(8)
  module = torch.nn.RNN(3, 4, num_layers=2, batch_first=True)
  x = torch.randn(5, 3)  # [T, I]: PyTorch ignores batch_first here.
  y, h_n = torch_run(torch, module, x)
  layer, params = pytorch.from_torch(module.state_dict(), mode=module.mode)
  got_y, got_h = pytorch.apply_like_torch(layer, params, x, batch_first=True)  # torch input
  close(got_y, y)
  close(got_h, h_n)
  x = torch.randn(2, 5, 3)
  np.testing.assert_array_equal(pytorch.from_batch_first(x), x.numpy().swapaxes(0, 1))
  np.testing.assert_array_equal(pytorch.to_batch_first(x), x.numpy().swapaxes(0, 1))


def test_live_export_loads_into_torch():
  torch = pytest.importorskip("torch")
  cell = rnnjax.gru(5)
  layer = rnnjax.stack([rnnjax.bidirectional(cell, cell)] * 2)
  # rnnjax's params structure, filled with random numbers (cheaper than compiling `init`).
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                                  jax.eval_shape(lambda k: layer.init(k, 4), jax.random.key(1)))
  module = torch.nn.GRU(**pytorch.torch_kwargs(params))
  module.load_state_dict({k: torch.from_numpy(v) for k, v in pytorch.to_torch(params).items()})
  xs = rng.normal(size=(6, 3, 4)).astype(np.float32)
  h_0 = rng.normal(size=(4, 3, 5)).astype(np.float32)
  y, h_n = torch_run(torch, module, torch.from_numpy(xs), torch.from_numpy(h_0))
  ys, carry = jax.jit(lambda p, x, h: layer.apply(p, x, pytorch.carry_from_torch(p, h)))(
      params, xs, h_0)
  close(ys, y)
  close(pytorch.carry_to_torch(carry), h_n)
