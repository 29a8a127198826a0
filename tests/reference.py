"""Independent references for the tests: the cells' equations and the engine's semantics
written as plain NumPy loops in float64, sharing no code with rnnjax.

Weights are given as the per-gate blocks of the published equations, split from
rnnjax's fused params by `gates()`, so that a wrong gate order in rnnjax shows.
The engine reference handles one sequence at a time: it cuts the valid prefix
into segments at the resets and runs each one (forwards or backwards) from its
own initial state, which is how a user would do it by hand.
"""

from __future__ import annotations

import numpy as np


def _np(a):
  return None if a is None else np.asarray(a, dtype=np.float64)


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def gates(params, n):
  """Splits fused `w_i, w_h, b_i, b_h` into `n` per-gate blocks each."""
  w_i, w_h = _np(params.w_i), _np(params.w_h)
  h = w_i.shape[1] // n
  b_i = np.zeros(n * h) if params.b_i is None else _np(params.b_i)
  b_h = np.zeros(n * h) if params.b_h is None else _np(params.b_h)
  cut = lambda a: [a[..., k * h:(k + 1) * h] for k in range(n)]
  return cut(w_i), cut(w_h), cut(b_i), cut(b_h)


# ---- One step of each cell. The state is a tuple of float64 vectors. ----

def elman_step(params, state, x, nonlinearity="tanh"):
  (wi,), (wh,), (bi,), (bh,) = gates(params, 1)
  (h,) = state
  pre = x @ wi + bi + h @ wh + bh
  h = np.tanh(pre) if nonlinearity == "tanh" else np.maximum(pre, 0.0)
  return (h,), h


def lstm_step(params, state, x):
  (wii, wif, wig, wio), (whi, whf, whg, who), (bii, bif, big, bio), (bhi, bhf, bhg, bho) = \
      gates(params, 4)
  h, c = state
  i = sigmoid(x @ wii + bii + h @ whi + bhi)
  f = sigmoid(x @ wif + bif + h @ whf + bhf)
  g = np.tanh(x @ wig + big + h @ whg + bhg)
  o = sigmoid(x @ wio + bio + h @ who + bho)
  c = f * c + i * g
  h = o * np.tanh(c)
  if params.w_proj is not None:
    h = h @ _np(params.w_proj)
  return (h, c), h


def gru_step(params, state, x, reset_after=True):
  (wir, wiz, win), (whr, whz, whn), (bir, biz, bin_), (bhr, bhz, bhn) = gates(params, 3)
  (h,) = state
  r = sigmoid(x @ wir + bir + h @ whr + bhr)
  z = sigmoid(x @ wiz + biz + h @ whz + bhz)
  if reset_after:
    n = np.tanh(x @ win + bin_ + r * (h @ whn + bhn))
  else:
    n = np.tanh(x @ win + bin_ + (r * h) @ whn + bhn)
  h = (1 - z) * n + z * h
  return (h,), h


def mgu_step(params, state, x, reset_after=True):
  (wif, win), (whf, whn), (bif, bin_), (bhf, bhn) = gates(params, 2)
  (h,) = state
  f = sigmoid(x @ wif + bif + h @ whf + bhf)
  if reset_after:
    n = np.tanh(x @ win + bin_ + f * (h @ whn + bhn))
  else:
    n = np.tanh(x @ win + bin_ + (f * h) @ whn + bhn)
  h = (1 - f) * n + f * h
  return (h,), h


# ---- The engine, one sequence at a time. ----

def run_sequence(step, state0, xs, *, length=None, resets=None, reverse=False, zero_state=None):
  """Reference for `unroll` on one sequence `xs: [T, I]`.

  Returns `(ys [T, O], final_state)`. `zero_state` is the state a reset restores.
  """
  xs = _np(xs)
  num_steps = xs.shape[0]
  length = num_steps if length is None else int(length)
  starts = [0]
  if resets is not None:
    starts += [t for t in range(1, length) if resets[t]]
  reset_at_zero = resets is not None and length > 0 and bool(resets[0])
  bounds = list(zip(starts, [*starts[1:], length], strict=True))
  outputs = {}
  order = reversed(bounds) if reverse else bounds
  state = tuple(_np(s) for s in state0)
  first = True
  for lo, hi in order:
    if not first or (not reverse and reset_at_zero):
      state = tuple(_np(s) for s in zero_state)
    first = False
    steps = range(hi - 1, lo - 1, -1) if reverse else range(lo, hi)
    for t in steps:
      state, y = step(state, xs[t])
      outputs[t] = y
  out_size = next(iter(outputs.values())).shape[-1] if outputs else None
  if out_size is None:
    return None, state
  ys = np.zeros((num_steps, out_size))
  for t, y in outputs.items():
    ys[t] = y
  return ys, state


def run_batch(step, state0, xs, *, lengths=None, resets=None, reverse=False, zero_state=None):
  """`run_sequence` over the batch axis 1 of `xs: [T, B, I]`; `state0` leaves `[B, n]`."""
  xs = _np(xs)
  batch = xs.shape[1]
  ys, finals = [], []
  for b in range(batch):
    y, s = run_sequence(
        step, tuple(_np(s)[b] for s in state0), xs[:, b],
        length=None if lengths is None else lengths[b],
        resets=None if resets is None else np.asarray(resets)[:, b],
        reverse=reverse,
        zero_state=None if zero_state is None else tuple(_np(s)[b] for s in zero_state))
    ys.append(y)
    finals.append(s)
  out_size = next(y.shape[-1] for y in ys if y is not None)
  ys = np.stack([np.zeros((xs.shape[0], out_size)) if y is None else y for y in ys], axis=1)
  final = tuple(np.stack([f[k] for f in finals]) for k in range(len(finals[0])))
  return ys, final
