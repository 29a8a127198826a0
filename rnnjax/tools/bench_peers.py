"""Peer implementations for `rnnjax bench`, each loaded with rnnjax's weights.

Every builder takes `(cell_name, hidden, params)`, rnnjax params (`LSTMParams` or
`GRUParams`, float32, gates in PyTorch's order), and returns a
`JaxContender(name, params, forward, baseline)` whose `forward(params, xs[T, B, I])
-> ys[T, B, H]` computes the same function as `rnnjax.unroll`, or raises `Skip`
with the reason it cannot. `baseline` names the rnnjax contender the peer is
compared with (Haiku's GRU is the "reset before" form). `JAX_PEERS` maps each name
to its builder; PyTorch, which is not a JAX function, has its own `torch_contender`.

The peer libraries are imported inside the builders: flax is a dependency of
rnnjax, equinox, dm-haiku and torch are optional (`pip install -e ".[bench]"`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import rnnjax
from rnnjax._src import loop_call


class Skip(Exception):
  """A contender that cannot run here; the message says why."""


class JaxContender(NamedTuple):
  name: str
  params: Any
  forward: Callable[[Any, jax.Array], jax.Array]  # (params, xs[T, B, I]) -> ys[T, B, H]
  baseline: str = "rnnjax"
  batch_major: bool = False  # if True, forward takes xs [B, T, I] and returns ys [B, T, H]


def _gates(w: jax.Array, n: int) -> list[jax.Array]:
  return jnp.split(w, n, axis=-1)


def rnnjax_contender(cell_name: str, hidden: int, params: Any, *, reset_after: bool = True,
                     fused: bool = True, dtype: Any = jnp.float32,
                     kernels: bool = True) -> JaxContender:
  """rnnjax's `unroll` under one of its five names.

  `rnnjax` is the default (the fused fast path), `rnnjax_generic` forces the generic
  `lax.scan` path (`fused=False`, plain autodiff), `rnnjax_reset_before` is the GRU's
  "reset before" form, the reference for Haiku's GRU, and `rnnjax_bf16` is the fast
  path in mixed precision (`dtype=jnp.bfloat16`): the same float32 params and carry,
  bfloat16 matrix products accumulated in float32, bfloat16 outputs. `rnnjax_scan`
  is the fast path with its kernels off (`kernels=False`): its pure-JAX loops on every
  platform, where `rnnjax` runs the Pallas kernels on a GPU (the same on CPU).
  """
  if cell_name == "lstm":
    cell = rnnjax.lstm(hidden, dtype=dtype)
  else:
    cell = rnnjax.gru(hidden, reset_after=reset_after, dtype=dtype)
  if not reset_after:
    if cell_name != "gru":
      raise Skip(f"rnnjax_reset_before is a GRU variant; the cell is {cell_name}")
    name = baseline = "rnnjax_reset_before"
  elif jnp.dtype(dtype) == jnp.bfloat16:
    name, baseline = "rnnjax_bf16", "rnnjax"
  elif not kernels:
    name, baseline = "rnnjax_scan", "rnnjax"
  elif fused:
    name = baseline = "rnnjax"
  else:
    name, baseline = "rnnjax_generic", "rnnjax"

  def forward(p, xs):
    with contextlib.nullcontext() if kernels else loop_call.reference_only():
      return rnnjax.unroll(cell, p, xs, fused=fused)[0]
  return JaxContender(name, params, forward, baseline)


def flax_contender(cell_name: str, hidden: int, params: Any) -> JaxContender:
  try:
    import flax.linen as nn
  except ImportError as e:
    raise Skip(f"flax is not installed ({e})") from None
  if cell_name == "lstm":
    model = nn.RNN(nn.OptimizedLSTMCell(hidden), time_major=True)
    wi, wh, bi, bh = (_gates(a, 4) for a in (params.w_i, params.w_h, params.b_i, params.b_h))
    cell = {}
    for k, g in enumerate("ifgo"):  # Input Dense layers have no bias in Flax.
      cell["i" + g] = {"kernel": wi[k]}
      cell["h" + g] = {"kernel": wh[k], "bias": bi[k] + bh[k]}
  else:
    model = nn.RNN(nn.GRUCell(hidden), time_major=True)
    wi, wh, bi, bh = (_gates(a, 3) for a in (params.w_i, params.w_h, params.b_i, params.b_h))
    cell = {"ir": {"kernel": wi[0], "bias": bi[0] + bh[0]},
            "iz": {"kernel": wi[1], "bias": bi[1] + bh[1]},
            "in": {"kernel": wi[2], "bias": bi[2]},
            "hr": {"kernel": wh[0]}, "hz": {"kernel": wh[1]},
            "hn": {"kernel": wh[2], "bias": bh[2]}}
  return JaxContender("flax", {"params": {"cell": cell}}, model.apply)


def equinox_contender(cell_name: str, hidden: int, params: Any) -> JaxContender:
  try:
    import equinox as eqx
  except ImportError as e:
    raise Skip(f"equinox is not installed ({e})") from None
  in_size = params.w_i.shape[0]
  key = jax.random.key(0)
  if cell_name == "lstm":
    # Equinox's gate order is (i, f, g, o), like PyTorch's; one bias.
    cell = eqx.nn.LSTMCell(in_size, hidden, key=key)
    cell = eqx.tree_at(lambda c: (c.weight_ih, c.weight_hh, c.bias), cell,
                       (params.w_i.T, params.w_h.T, params.b_i + params.b_h))

    def forward(c, xs):
      zeros = jnp.zeros((xs.shape[1], hidden), xs.dtype)
      def step(carry, x):
        carry = jax.vmap(c)(x, carry)
        return carry, carry[0]
      return jax.lax.scan(step, (zeros, zeros), xs)[1]
  else:
    # Equinox's GRU is the "reset after" form, gates (r, z, n); `bias_n` is b_hn.
    cell = eqx.nn.GRUCell(in_size, hidden, key=key)
    b_h = params.b_h.at[2 * hidden:].set(0.0)
    cell = eqx.tree_at(lambda c: (c.weight_ih, c.weight_hh, c.bias, c.bias_n), cell,
                       (params.w_i.T, params.w_h.T, params.b_i + b_h, params.b_h[2 * hidden:]))

    def forward(c, xs):
      def step(h, x):
        h = jax.vmap(c)(x, h)
        return h, h
      return jax.lax.scan(step, jnp.zeros((xs.shape[1], hidden), xs.dtype), xs)[1]
  return JaxContender("equinox", cell, forward)


def haiku_contender(cell_name: str, hidden: int, params: Any) -> JaxContender:
  try:
    import haiku as hk
  except ImportError as e:
    raise Skip(f"dm-haiku is not installed ({e})") from None
  if cell_name == "lstm":
    # One Linear over concat([x, h]), gate order (i, g, f, o), and `sigmoid(f + 1)`.
    def fn(xs):
      core = hk.LSTM(hidden)
      return hk.dynamic_unroll(core, xs, core.initial_state(xs.shape[1]), time_major=True)[0]
    i, f, g, o = _gates(jnp.concatenate([params.w_i, params.w_h]), 4)
    bi, bf, bg, bo = _gates(params.b_i + params.b_h, 4)
    p = {"lstm/linear": {"w": jnp.concatenate([i, g, f, o], axis=-1),
                         "b": jnp.concatenate([bi, bg, bf - 1.0, bo])}}
    baseline = "rnnjax"
  else:
    # Haiku's GRU is the "reset before" form with columns (z', r, n) where its
    # z' = 1 - z: h' = (1 - z') h + z' n. So z' takes the negated z weights.
    def fn(xs):
      core = hk.GRU(hidden)
      return hk.dynamic_unroll(core, xs, core.initial_state(xs.shape[1]), time_major=True)[0]
    wi, wh = _gates(params.w_i, 3), _gates(params.w_h, 3)
    b = _gates(params.b_i + params.b_h, 3)
    p = {"gru": {"w_i": jnp.concatenate([-wi[1], wi[0], wi[2]], axis=-1),
                 "w_h": jnp.concatenate([-wh[1], wh[0], wh[2]], axis=-1),
                 "b": jnp.concatenate([-b[1], b[0], b[2]])}}
    baseline = "rnnjax_reset_before"
  model = hk.without_apply_rng(hk.transform(fn))
  return JaxContender("haiku", p, model.apply, baseline)


def cudnn_contender(cell_name: str, hidden: int, params: Any) -> JaxContender:
  if jax.default_backend() != "gpu":
    raise Skip(f"jax.experimental.rnn needs cuDNN; the JAX backend is {jax.default_backend()}")
  if cell_name != "lstm":
    raise Skip("jax.experimental.rnn only has an LSTM")
  from jax.experimental import rnn

  in_size = params.w_i.shape[0]
  # cuDNN's flat layout for one layer: W_ih [4H, I], W_hh [4H, H], then b_ih, b_hh.
  flat = jnp.concatenate([params.w_i.T.ravel(), params.w_h.T.ravel(), params.b_i, params.b_h])
  if flat.size != rnn.get_num_params_in_lstm(in_size, hidden, 1, False):
    raise Skip("jax.experimental.rnn's weight layout changed; mapping not updated")

  # Batch-major in and out: in jax 0.11.2, `rnn.lstm` under `jit` gives wrong outputs
  # (errors ~1) when its input is transposed inside the same jitted function.
  def forward(w, xs):
    batch, steps, _ = xs.shape
    zeros = jnp.zeros((1, batch, hidden), xs.dtype)
    lengths = jnp.full((batch,), steps, jnp.int32)
    return rnn.lstm(xs, zeros, zeros, w, lengths, in_size, hidden, 1, 0.0, False,
                    precision=jax.lax.Precision.HIGHEST)[0]
  return JaxContender("jax_cudnn", flat, forward, batch_major=True)


def matmul_floor(cell_name: str, hidden: int, params: Any) -> JaxContender:
  """The LSTM's/GRU's matrix products alone: one `[T*B, I] x [I, GH]`, then T `[B, H] x [H, GH]`.

  Not the same function (no check): each step feeds the first H columns back.
  """
  def forward(p, xs):
    steps, batch, in_size = xs.shape
    xw = (xs.reshape(steps * batch, in_size) @ p["w_i"]).reshape(steps, batch, -1)
    def step(h, xw_t):
      h = (h @ p["w_h"] + xw_t)[:, :hidden]
      return h, h
    return jax.lax.scan(step, jnp.zeros((batch, hidden), xs.dtype), xw)[1]
  return JaxContender("matmul_floor", {"w_i": params.w_i, "w_h": params.w_h * 0.5}, forward)


# The JAX contenders in the order they are built and timed.
JAX_PEERS: dict[str, Callable[[str, int, Any], JaxContender]] = {
    "rnnjax": rnnjax_contender,
    "rnnjax_reset_before": functools.partial(rnnjax_contender, reset_after=False),
    "rnnjax_generic": functools.partial(rnnjax_contender, fused=False),
    "rnnjax_scan": functools.partial(rnnjax_contender, kernels=False),
    "rnnjax_bf16": functools.partial(rnnjax_contender, dtype=jnp.bfloat16),
    "flax": flax_contender,
    "equinox": equinox_contender,
    "haiku": haiku_contender,
    "jax_cudnn": cudnn_contender,
    "matmul_floor": matmul_floor,
}


# Torch -------------------------------------------------------------------------------------

class TorchContender(NamedTuple):
  name: str
  module: Any  # torch.nn.LSTM or torch.nn.GRU
  device: str
  baseline: str = "rnnjax"


def torch_contender(cell_name: str, hidden: int, params: Any, threads: int) -> TorchContender:
  try:
    import torch
  except ImportError as e:
    raise Skip(f"torch is not installed ({e})") from None
  torch.set_num_threads(threads)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  if device == "cuda":  # Full float32, as the JAX contenders use.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
  in_size = params.w_i.shape[0]
  cls = torch.nn.LSTM if cell_name == "lstm" else torch.nn.GRU
  module = cls(in_size, hidden)
  with torch.no_grad():
    for name, value in (("weight_ih_l0", params.w_i.T), ("weight_hh_l0", params.w_h.T),
                        ("bias_ih_l0", params.b_i), ("bias_hh_l0", params.b_h)):
      getattr(module, name).copy_(torch.from_numpy(np.array(value)))
  return TorchContender("torch", module.to(device), device)
