"""Prototype for issue 4: an LSTM sequence with a hand-written VJP, against plain autodiff.

Not used by rnnjax yet. The reverse pass computes only the gate-gradient
sequence `dz: [T, B, 4H]` step by step; the weight gradients and `dxs` then take
one large matrix product each (`[T*B, H]^T @ [T*B, 4H]` ...) instead of T small
ones inside the loop. The script checks that the gradients equal plain
`jax.grad` through `rnnjax.unroll` (relative error printed), then times both,
interleaved, median of 20 after warm-up.

  python benchmarks/proto_lstm_vjp.py --size 8,512,64,128
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import rnnjax


def make(batch: int, num_steps: int, inputs: int, hidden: int):
  def forward(w_i, w_h, b, xs):
    def step(carry, x):
      h, c = carry
      i, f, g, o = jnp.split(x @ w_i + h @ w_h + b, 4, -1)
      i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
      c_new = f * c + i * g
      tc = jnp.tanh(c_new)
      h_new = o * tc
      return (h_new, c_new), (h_new, i, f, g, o, tc, h, c)
    zeros = jnp.zeros((batch, hidden), xs.dtype)
    return jax.lax.scan(step, (zeros, zeros), xs)[1]

  @jax.custom_vjp
  def lstm_seq(w_i, w_h, b, xs):
    return forward(w_i, w_h, b, xs)[0]

  def fwd(w_i, w_h, b, xs):
    res = forward(w_i, w_h, b, xs)
    return res[0], (w_i, w_h, xs, res[1:])

  def bwd(saved, dys):
    w_i, w_h, xs, (i, f, g, o, tc, h_prev, c_prev) = saved

    def step(carry, inputs):
      dh_next, dc_next = carry
      dy, i_, f_, g_, o_, tc_, cp = inputs
      dh = dy + dh_next
      dc = dh * o_ * (1 - tc_ ** 2) + dc_next
      dz = jnp.concatenate([dc * g_ * i_ * (1 - i_), dc * cp * f_ * (1 - f_),
                            dc * i_ * (1 - g_ ** 2), dh * tc_ * o_ * (1 - o_)], -1)
      return (dz @ w_h.T, dc * f_), dz

    zeros = jnp.zeros((batch, hidden), xs.dtype)
    _, dz = jax.lax.scan(step, (zeros, zeros), (dys, i, f, g, o, tc, c_prev), reverse=True)
    dz = dz.reshape(num_steps * batch, 4 * hidden)
    return (xs.reshape(num_steps * batch, inputs).T @ dz,
            h_prev.reshape(num_steps * batch, hidden).T @ dz,
            dz.sum(0),
            (dz @ w_i.T).reshape(num_steps, batch, inputs))

  lstm_seq.defvjp(fwd, bwd)
  return lstm_seq


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="8,512,64,128", help="B,T,I,H")
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  batch, num_steps, inputs, hidden = map(int, args.size.split(","))
  cell = rnnjax.lstm(hidden)
  params = cell.init(jax.random.key(0), inputs)
  xs = jax.random.normal(jax.random.key(1), (num_steps, batch, inputs))
  lstm_seq = make(batch, num_steps, inputs, hidden)
  plain = jax.jit(jax.grad(lambda p, x: jnp.mean(rnnjax.unroll(cell, p, x)[0] ** 2),
                           argnums=(0, 1)))
  fast = jax.jit(jax.grad(lambda wi, wh, b, x: jnp.mean(lstm_seq(wi, wh, b, x) ** 2),
                          argnums=(0, 1, 2, 3)))
  bias = params.b_i + params.b_h
  (gp, gx), (gwi, gwh, gb, gx2) = plain(params, xs), fast(params.w_i, params.w_h, bias, xs)
  pairs = (("w_i", gp.w_i, gwi), ("w_h", gp.w_h, gwh), ("b", gp.b_i, gb), ("xs", gx, gx2))
  for name, a, b in pairs:
    print(f"max relative error d{name}: {float(jnp.abs(a - b).max() / jnp.abs(a).max()):.2e}")
  run_plain = lambda: jax.block_until_ready(plain(params, xs))
  run_fast = lambda: jax.block_until_ready(fast(params.w_i, params.w_h, bias, xs))
  for _ in range(3):
    run_plain()
    run_fast()
  times = {"plain autodiff": [], "hand-written VJP": []}
  for _ in range(args.repeats):
    for name, fn in (("plain autodiff", run_plain), ("hand-written VJP", run_fast)):
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  medians = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
  for name, ms in medians.items():
    print(f"{name}: forward+backward median {ms:.1f} ms")
  ratio = medians["hand-written VJP"] / medians["plain autodiff"]
  print(f"ratio hand-written / plain: {ratio:.2f}")


if __name__ == "__main__":
  main()
