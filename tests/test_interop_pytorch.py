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
  with raises(r"`mode` must be one of 'LSTM', 'GRU', 'RNN_TANH', 'RNN_RELU' \(in any case\); "
              r"got mode='lstmm'"):
    f(make_sd(), mode="lstmm")
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


# PyTorch habits (issue 15): modules, any-case modes, cells, prefixes.


def test_mode_in_any_case():
  sd = make_sd("RNN_RELU")
  want = pytorch.from_torch(sd, mode="RNN_RELU")[1]
  for mode in ("rnn_relu", "Rnn_Relu"):
    jax.tree_util.tree_map(np.testing.assert_array_equal, pytorch.from_torch(sd, mode=mode)[1],
                           want)
  # ReLU, not tanh: the output of one step from a zero state, against NumPy.
  layer, params = pytorch.from_torch(sd, mode="rnn_relu")
  x = np.random.default_rng(0).normal(size=(1, 2, 3)).astype(np.float32)
  ref = np.maximum(x[0] @ sd["weight_ih_l0"].T + sd["bias_ih_l0"] + sd["bias_hh_l0"], 0)
  close(layer.apply(params, x)[0][0], ref)
  for mode in ("lstm", "Lstm", "LSTM"):
    assert pytorch.from_torch(make_sd(), mode=mode)[1].w_i.shape == (3, 16)
  assert list(pytorch.to_torch(want, mode="rnn_relu")) == list(sd)
  with raises(r"from_torch: `mode` must be one of .*got mode='rnn'\. An nn.RNN's mode names its "
              r"nonlinearity: 'RNN_TANH' \(the default\) or 'RNN_RELU'"):
    pytorch.from_torch(sd, mode="rnn")
  with raises(r"to_torch: mode='gru' does not match the params, which are ElmanParams"):
    pytorch.to_torch(want, mode="gru")
  with raises(r"from_torch: `mode` is needed with a state_dict: PyTorch's `module.mode`.*"
              r"`from_torch\(module\)` reads its mode"):
    pytorch.from_torch(sd)


def test_a_prefix_is_suggested():
  f = pytorch.from_torch
  model = {"embed.weight": np.zeros((5, 3), np.float32),
           **{f"encoder.rnn.{k}": v for k, v in make_sd().items()},
           "head.weight": np.zeros((2, 4), np.float32)}
  hint = r"an RNN under prefix='encoder.rnn.': pass prefix='encoder.rnn.'\."
  with raises(r"from_torch: unexpected key\(s\) 'embed.weight', 'encoder.rnn.weight_ih_l0'.*"
              + hint):
    f(model, mode="LSTM")
  for prefix in ("encoder.", "encoder.rnn"):  # Too short, or without its dot.
    with raises(r"unexpected key\(s\) 'encoder.rnn.weight_ih_l0'.*" + hint):
      f(model, mode="LSTM", prefix=prefix)
  with raises(r"no RNN weights \(keys like 'decoder.weight_ih_l0'\) starting with "
              r"prefix='decoder.'; got keys .*" + hint):
    f(model, mode="LSTM", prefix="decoder.")
  assert f(model, mode="LSTM", prefix="encoder.rnn.")[1].w_i.shape == (3, 16)
  # Two RNNs (one a cell): both prefixes are named.
  two = {**model, **{f"decoder.cell.{k[:-3]}": v for k, v in make_sd("GRU").items()}}
  with raises(r"RNNs under prefixes 'encoder.rnn.', 'decoder.cell.': pass the `prefix` of the "
              r"one to convert"):
    f(two, mode="GRU")
  # No RNN-like key: the general advice, as before.
  with raises(r"unexpected key\(s\) 'fc.weight' for a PyTorch RNN.*e.g. prefix='rnn.'\.$"):
    f({**make_sd(), "fc.weight": np.zeros(3)}, mode="LSTM")


def cell_sd(mode, bias=True, seed=0):
  """The state_dict of a PyTorch cell: `make_sd`'s layer 0 without "_l0"."""
  return {k[:-len("_l0")]: v for k, v in make_sd(mode, bias=bias, seed=seed).items()}


def test_cell_state_dicts():
  f = pytorch.from_torch
  for mode, cls in (("LSTM", rnnjax.LSTMParams), ("GRU", rnnjax.GRUParams),
                    ("RNN_TANH", rnnjax.ElmanParams)):
    sd = cell_sd(mode)
    cell, params = f(sd, mode=mode, hidden_size=4, input_size=3)
    assert type(params) is cls and not isinstance(cell, rnnjax.Layer)
    np.testing.assert_array_equal(params.w_i, sd["weight_ih"].T)
    np.testing.assert_array_equal(params.b_h, sd["bias_hh"])
    back = pytorch.to_torch(params, cell=True, prefix="cell.")
    assert list(back) == [f"cell.{k}" for k in sd]
    jax.tree_util.tree_map(np.testing.assert_array_equal, list(back.values()), list(sd.values()))
    assert pytorch.torch_kwargs(params, cell=True) == dict(input_size=3, hidden_size=4, bias=True)
  _, params = f(cell_sd("GRU", bias=False), mode="gru")
  assert params.b_i is None and list(pytorch.to_torch(params, cell=True)) == [
      "weight_ih", "weight_hh"]
  sd = cell_sd("LSTM")
  del sd["bias_hh"]
  with raises(r"missing key\(s\) 'bias_hh' for mode='LSTM', a cell, bias=True"):
    f(sd, mode="LSTM")
  with raises(r"`num_layers=2` was given, but the state_dict holds the keys of a cell"):
    f(cell_sd("LSTM"), mode="LSTM", num_layers=2)
  with raises(r"`bidirectional=True` was given, but the state_dict holds the keys of a cell"):
    f(cell_sd("LSTM"), mode="LSTM", bidirectional=True)
  with raises(r"mixes the keys of a cell \('weight_ih', .*\) and those of a module with layers "
              r"\('weight_ih_l0', "):
    f({**cell_sd("LSTM"), **make_sd()}, mode="LSTM")
  with raises(r"`weight_hh` has shape \(12, 5\), expected \(12, 4\)"):
    f({**cell_sd("GRU"), "weight_hh": np.zeros((12, 5), np.float32)}, mode="GRU")
  stacked = f(make_sd(num_layers=2), mode="LSTM")[1]
  with raises(r"to_torch: `cell=True` needs one cell's params.*got a tuple of 2 layer\(s\)"):
    pytorch.to_torch(stacked, cell=True)
  with raises(r"torch_kwargs: `cell=True` needs.*got LSTMParams with a projection"):
    pytorch.torch_kwargs(f(make_sd(proj_size=2), mode="LSTM")[1], cell=True)
  with raises(r"got BidirectionalParams"):
    pytorch.to_torch(f(make_sd(bidirectional=True), mode="LSTM")[1], cell=True)
  with raises(r"to_torch: `cell` must be a bool", TypeError):
    pytorch.to_torch(stacked[0], cell=1)


TORCH_CELLS = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {"nonlinearity": "relu"}),
               ("GRUCell", {"bias": False})]
CELL_MODES = {"LSTMCell": "lstm", "GRUCell": "gru", "RNNCell": "rnn_relu"}


@pytest.mark.parametrize("config", TORCH_CELLS, ids=lambda c: c[0] + "".join(map(str, c[1])))
def test_live_cells_step_like_torch(config):
  torch = pytest.importorskip("torch")
  torch.manual_seed(9)
  name, kw = config[0], dict(config[1])
  module = getattr(torch.nn, name)(3, 5, **kw)
  cell, params = pytorch.from_torch(module)  # The mode from the module.
  _, from_sd = pytorch.from_torch(module.state_dict(), mode=CELL_MODES[name])
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, from_sd)
  # Three steps from a random state, each against the torch cell.
  xs, h = torch.randn(3, 2, 3), torch.randn(2, 5)
  hx = (h, torch.randn(2, 5)) if name == "LSTMCell" else h
  carry = (rnnjax.LSTMState(h=h.numpy(), c=hx[1].numpy()) if name == "LSTMCell"
           else rnnjax.HiddenState(h=h.numpy()))
  step = jax.jit(cell.apply)
  for x in xs:
    with torch.no_grad():
      hx = module(x, hx)
    carry, y = step(params, carry, x.numpy())
    close(y, (hx[0] if name == "LSTMCell" else hx).numpy())
    if name == "LSTMCell":
      close(carry.c, hx[1].numpy())
  # And back: the export loads into a new torch cell.
  kw.pop("bias", None)  # In `torch_kwargs`.
  new = getattr(torch.nn, name)(**pytorch.torch_kwargs(params, cell=True), **kw)
  new.load_state_dict({k: torch.from_numpy(v) for k, v in
                       pytorch.to_torch(params, cell=True).items()})
  for k, v in new.state_dict().items():
    np.testing.assert_array_equal(v.numpy(), module.state_dict()[k].numpy())


def test_live_modules():
  torch = pytest.importorskip("torch")
  torch.manual_seed(10)

  class MyLSTM(torch.nn.LSTM):  # A subclass counts as its PyTorch class.
    pass

  module = MyLSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2)
  layer, params = pytorch.from_torch(module)
  _, params_sd = pytorch.from_torch(module.state_dict(), mode="lstm")
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, params_sd)
  x = torch.randn(4, 2, 3)
  with torch.no_grad():
    y = module(x)[0].numpy()
  run = jax.jit(lambda p, x: layer.apply(p, x)[0])
  close(run(params, x.numpy()), y)
  # The mode is checked when given, in any case, and so are the sizes.
  checked = pytorch.from_torch(module, mode="Lstm", hidden_size=5, num_layers=2, proj_size=2)[1]
  jax.tree_util.tree_map(np.testing.assert_array_equal, checked, params)
  with raises(r"from_torch: mode='GRU' was given, but the module is an nn.LSTM of mode 'LSTM'. "
              r"Leave `mode` out"):
    pytorch.from_torch(module, mode="gru")
  with raises(r"from_torch: `hidden_size=4` was given, but the nn.LSTM has hidden_size=5"):
    pytorch.from_torch(module, hidden_size=4)
  with raises(r"`bidirectional=False` was given, but the nn.LSTM has bidirectional=True"):
    pytorch.from_torch(module, bidirectional=False)
  with raises(r"`prefix` is for the state_dict of a larger model.*prefix='rnn.'"):
    pytorch.from_torch(module, prefix="rnn.")
  relu = torch.nn.RNN(3, 4, nonlinearity="relu")
  with raises(r"mode='RNN_TANH' was given, but the module is an nn.RNN of mode 'RNN_RELU'"):
    pytorch.from_torch(relu, mode="rnn_tanh")
  with raises(r"mode='RNN_TANH' was given, but the module is an nn.RNNCell of mode 'RNN_RELU'"):
    pytorch.from_torch(torch.nn.RNNCell(3, 4, nonlinearity="relu"), mode="RNN_TANH")

  class Model(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.encoder = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.GRU(3, 4))
      self.head = torch.nn.Linear(4, 2)

  with raises(r"`state_dict` must be .* got a Model module, which holds 'encoder.1' \(nn.GRU\)"
              r"\. Pass one of them, e.g. `from_torch\(model.get_submodule\('encoder.1'\)\)`, "
              r"or .*prefix='encoder.1.'", TypeError):
    pytorch.from_torch(Model())
  with raises(r"got a Linear module, which holds none of them", TypeError):
    pytorch.from_torch(torch.nn.Linear(3, 3))
  model = Model()
  hint = r"under prefix='encoder.1.': pass prefix='encoder.1.'"
  with raises(r"unexpected key\(s\) 'encoder.0.weight', .*" + hint):
    pytorch.from_torch(model.state_dict(), mode="GRU")
  jax.tree_util.tree_map(
      np.testing.assert_array_equal,
      pytorch.from_torch(model.state_dict(), mode="GRU", prefix="encoder.1.")[1],
      pytorch.from_torch(model.get_submodule("encoder.1"))[1])
