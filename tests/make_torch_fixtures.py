"""Writes the PyTorch reference fixtures of `tests/test_interop_pytorch.py` (needs torch).

Run from the repository root: `python tests/make_torch_fixtures.py`. For each
config it builds a small `nn.RNN`/`nn.LSTM`/`nn.GRU` with a fixed seed, runs it
on fixed inputs three ways, and saves into `tests/fixtures/torch_<name>.npz`:

- `rnn.<key>`: the module's state_dict (as if the module were the `rnn`
  attribute of a larger model), float32;
- `config`: a JSON string with the module's arguments (and torch's version);
- `x` (in the module's layout, `[B, T, I]` with `batch_first`), `y`, `h_n`
  (and `c_n`): the module run from a zero state;
- `h_0` (and `c_0`), `y_hx`, `h_n_hx` (and `c_n_hx`): run from a random state;
- `lengths`, `x_packed` (random values past each length, to show that they are
  ignored), `y_packed`, `h_n_packed` (and `c_n_packed`): run from `h_0` (and
  `c_0`) on `pack_padded_sequence(x_packed, lengths, enforce_sorted=False)`,
  with the output from `pad_packed_sequence(..., total_length=T)`.

Tests load the files with numpy only, so they need no torch.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

OUT = pathlib.Path(__file__).resolve().parent / "fixtures"
T, B, I, H = 5, 3, 4, 5
LENGTHS = (3, 5, 1)  # Unsorted, with one full-length sequence, so T outputs come back.

# name: (mode, num_layers, bidirectional, bias, proj_size, batch_first)
CONFIGS = {
    "rnn_tanh_l1": ("RNN_TANH", 1, False, True, 0, False),
    "rnn_relu_l2_bf": ("RNN_RELU", 2, False, True, 0, True),
    "rnn_tanh_l2_bi_nobias": ("RNN_TANH", 2, True, False, 0, False),
    "rnn_relu_l1_bi_bf": ("RNN_RELU", 1, True, True, 0, True),
    "lstm_l1": ("LSTM", 1, False, True, 0, False),
    "lstm_l1_nobias_bf": ("LSTM", 1, False, False, 0, True),
    "lstm_l2_bi_bf": ("LSTM", 2, True, True, 0, True),
    "lstm_l2_proj": ("LSTM", 2, False, True, 3, False),
    "lstm_l1_bi_proj_nobias": ("LSTM", 1, True, False, 2, False),
    "lstm_l2_bi_proj_bf": ("LSTM", 2, True, True, 2, True),
    "gru_l1_bf": ("GRU", 1, False, True, 0, True),
    "gru_l2": ("GRU", 2, False, True, 0, False),
    "gru_l2_bi": ("GRU", 2, True, True, 0, False),
    "gru_l1_bi_nobias_bf": ("GRU", 1, True, False, 0, True),
    "gru_l3_nobias": ("GRU", 3, False, False, 0, False),
}


def build(torch, mode, num_layers, bidirectional, bias, proj_size, batch_first):
  """The PyTorch module of one config."""
  nn = torch.nn
  kw = dict(input_size=I, hidden_size=H, num_layers=num_layers, bias=bias,
            bidirectional=bidirectional, batch_first=batch_first)
  if mode == "LSTM":
    return nn.LSTM(**kw, proj_size=proj_size)
  if mode == "GRU":
    return nn.GRU(**kw)
  return nn.RNN(**kw, nonlinearity=mode[4:].lower())


def run(torch, module, x, hx=None, lengths=None):
  """`module(x, hx)` as numpy: `(y, h_n, c_n or None)`; packed when `lengths` are given."""
  rnn_utils = torch.nn.utils.rnn
  with torch.no_grad():
    if lengths is None:
      y, h = module(x, hx)
    else:
      packed = rnn_utils.pack_padded_sequence(x, torch.tensor(lengths),
                                              batch_first=module.batch_first,
                                              enforce_sorted=False)
      y, h = module(packed, hx)
      y, _ = rnn_utils.pad_packed_sequence(y, batch_first=module.batch_first, total_length=T)
  h_n, c_n = h if isinstance(h, tuple) else (h, None)
  return y.numpy(), h_n.numpy(), None if c_n is None else c_n.numpy()


def make(torch, name, seed):
  mode, num_layers, bidirectional, bias, proj_size, batch_first = CONFIGS[name]
  torch.manual_seed(seed)
  module = build(torch, *CONFIGS[name]).eval()
  shape = (B, T, I) if batch_first else (T, B, I)
  x = torch.randn(shape)
  x_packed = torch.randn(shape)
  rows = num_layers * (2 if bidirectional else 1)
  h_0 = torch.randn(rows, B, proj_size or H) * 0.5
  c_0 = torch.randn(rows, B, H) * 0.5
  hx = (h_0, c_0) if mode == "LSTM" else h_0
  arrays = {f"rnn.{k}": v.numpy() for k, v in module.state_dict().items()}
  config = dict(mode=mode, input_size=I, hidden_size=H, num_layers=num_layers,
                bidirectional=bidirectional, bias=bias, proj_size=proj_size,
                batch_first=batch_first, seed=seed, torch=torch.__version__)
  arrays["config"] = np.array(json.dumps(config))
  arrays["x"], arrays["x_packed"] = x.numpy(), x_packed.numpy()
  arrays["lengths"] = np.array(LENGTHS, np.int64)
  arrays["h_0"] = h_0.numpy()
  if mode == "LSTM":
    arrays["c_0"] = c_0.numpy()
  for suffix, out in (("", run(torch, module, x)), ("_hx", run(torch, module, x, hx)),
                      ("_packed", run(torch, module, x_packed, hx, list(LENGTHS)))):
    arrays["y" + suffix], arrays["h_n" + suffix], c_n = out
    if c_n is not None:
      arrays["c_n" + suffix] = c_n
  return arrays


def main():
  import torch  # Only here: pytest imports this module (doctests) where torch may be absent.

  torch.set_num_threads(1)
  OUT.mkdir(exist_ok=True)
  total = 0
  for seed, name in enumerate(CONFIGS):
    path = OUT / f"torch_{name}.npz"
    np.savez_compressed(path, **make(torch, name, seed))
    total += path.stat().st_size
    print(f"{path.relative_to(OUT.parent.parent)}: {path.stat().st_size} bytes")
  print(f"{len(CONFIGS)} fixtures, {total} bytes in all")


if __name__ == "__main__":
  main()
