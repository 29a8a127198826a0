"""Forward-pass variants of a `lax.scan` LSTM on this backend: what XLA runs fastest.

Times, interleaved, median of 15 after warm-up, the same LSTM forward written several
ways: the input product inside the loop (rnnjax's pure-JAX loop), hoisted out of the
loop as one `[T*B, I] @ [I, 4H]` product (with `lax.scan`, and with `fori_loop`
reading a contiguous slice), one product `[x, h] @ [w_i; w_h]` per step, `h` and `c`
packed in one carry array, a transposed layout (carries `[H, B]`, `w.T @ h`), and
`unroll=2`. All are checked to agree first. `thunks` counts the operations of the
compiled loop body that XLA's CPU runtime runs one by one (fusions, products, copies,
custom calls; not the free bitcasts and tuple plumbing).

  python benchmarks/forward_variants.py
  XLA_FLAGS=--xla_cpu_multi_thread_eigen=false python benchmarks/forward_variants.py
"""

import re
import time

import jax
import jax.numpy as jnp
import numpy as np

SIZES = ((32, 128, 256, 256), (8, 512, 64, 128))


def _cell(z, c):
  i, f, g, o = jnp.split(z, 4, -1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  return jax.nn.sigmoid(o) * jnp.tanh(c), c


def variants(batch: int, hidden: int):
  zeros = jnp.zeros((batch, hidden))

  def in_loop(w_i, w_h, b, xs):
    def step(carry, x):
      h, c = _cell(x @ w_i + b + carry[0] @ w_h, carry[1])
      return (h, c), h
    return jax.lax.scan(step, (zeros, zeros), xs)[1]

  def hoisted(w_i, w_h, b, xs):
    def step(carry, xw):
      h, c = _cell(xw + carry[0] @ w_h, carry[1])
      return (h, c), h
    return jax.lax.scan(step, (zeros, zeros), xs @ w_i + b)[1]

  def transposed(w_i, w_h, b, xs):
    w_i_t, w_h_t = w_i.T, w_h.T

    def step(carry, x):
      h, c = carry
      i, f, g, o = jnp.split(w_i_t @ x.T + w_h_t @ h + b[:, None], 4, 0)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (h, c), h
    return jnp.swapaxes(jax.lax.scan(step, (zeros.T, zeros.T), xs)[1], 1, 2)

  def unroll2(w_i, w_h, b, xs):
    def step(carry, x):
      h, c = _cell(x @ w_i + b + carry[0] @ w_h, carry[1])
      return (h, c), h
    return jax.lax.scan(step, (zeros, zeros), xs, unroll=2)[1]

  def hoisted_fori(w_i, w_h, b, xs):
    xw = xs @ w_i + b

    def body(t, state):
      h, c, ys = state
      h, c = _cell(jax.lax.dynamic_index_in_dim(xw, t, keepdims=False) + h @ w_h, c)
      return h, c, jax.lax.dynamic_update_index_in_dim(ys, h, t, 0)
    ys = jnp.zeros((xs.shape[0], batch, hidden))
    return jax.lax.fori_loop(0, xs.shape[0], body, (zeros, zeros, ys))[2]

  def one_product(w_i, w_h, b, xs):
    w = jnp.concatenate([w_i, w_h])

    def step(carry, x):
      h, c = _cell(jnp.concatenate([x, carry[0]], -1) @ w + b, carry[1])
      return (h, c), h
    return jax.lax.scan(step, (zeros, zeros), xs)[1]

  def packed(w_i, w_h, b, xs):
    def step(hc, x):
      h, c = _cell(x @ w_i + b + hc[0] @ w_h, hc[1])
      return jnp.stack([h, c]), h
    return jax.lax.scan(step, jnp.stack([zeros, zeros]), xs)[1]

  return {"input product in the loop": in_loop, "hoisted input product": hoisted,
          "hoisted, fori_loop": hoisted_fori, "one product [x, h] @ [w_i; w_h]": one_product,
          "h and c packed in one array": packed, "transposed layout": transposed,
          "unroll=2": unroll2}


def loop_thunks(hlo: str) -> int:
  """The operations XLA's CPU runtime runs one by one in the (largest) compiled loop body."""
  bodies = re.findall(r"body=%([\w.\-]+)", hlo)
  counts = []
  for body in bodies:
    block = re.search(rf"^%{re.escape(body)} .*?\{{\n(.*?)^\}}", hlo, re.M | re.S)
    ops = re.findall(r"= \S+ ([\w-]+)\(", block.group(1)) if block else []
    free = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant"}
    counts.append(sum(op not in free for op in ops))
  return max(counts, default=0)


def main() -> None:
  print(f"jax {jax.__version__}, backend {jax.default_backend()}")
  for batch, steps, inputs, hidden in SIZES:
    k = jax.random.split(jax.random.key(0), 3)
    args = (jax.random.normal(k[0], (inputs, 4 * hidden)) / 16,
            jax.random.normal(k[1], (hidden, 4 * hidden)) / 16, jnp.zeros(4 * hidden),
            jax.random.normal(k[2], (steps, batch, inputs)))
    fns = {name: jax.jit(f) for name, f in variants(batch, hidden).items()}
    ref = fns["input product in the loop"](*args)
    for name, f in fns.items():
      np.testing.assert_allclose(f(*args), ref, atol=1e-4, err_msg=name)
      for _ in range(3):
        jax.block_until_ready(f(*args))
    times = {name: [] for name in fns}
    for _ in range(15):
      for name, f in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times[name].append(time.perf_counter() - start)
    print(f"B,T,I,H={batch},{steps},{inputs},{hidden}")
    for name, ts in times.items():
      thunks = loop_thunks(fns[name].lower(*args).compile().as_text())
      print(f"  {name}: {np.median(ts) * 1e3:.1f} ms, {thunks} thunks per step")


if __name__ == "__main__":
  main()
