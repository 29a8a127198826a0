"""Where an LSTM gradient's time goes on this backend: a `jax.profiler` trace, summarised.

Traces 5 calls of the jitted gradient of `mean(ys**2)` through `rnnjax.unroll`
(the fast path, or `--generic` for plain autodiff) and prints the XLA operations
(thunks) with the most total time, per call: the two loops (`while.*`), the matrix
products inside them (`ynn_fusion*` or `dot*` on CPU) and the small fusions.

  python benchmarks/profile_step.py --size 8,512,64,128
"""

import argparse
import collections
import glob
import gzip
import json
import tempfile

import jax
import jax.numpy as jnp

import rnnjax


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="8,512,64,128", help="B,T,I,H")
  parser.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
  parser.add_argument("--generic", action="store_true", help="unroll(..., fused=False)")
  parser.add_argument("--top", type=int, default=20)
  args = parser.parse_args()
  batch, steps, inputs, hidden = map(int, args.size.split(","))
  cell = getattr(rnnjax, args.cell)(hidden)
  params = cell.init(jax.random.key(0), inputs)
  xs = jax.random.normal(jax.random.key(1), (steps, batch, inputs))
  grad = jax.jit(jax.grad(lambda p, x: jnp.mean(
      rnnjax.unroll(cell, p, x, fused=not args.generic)[0] ** 2), argnums=(0, 1)))
  for _ in range(3):
    jax.block_until_ready(grad(params, xs))
  calls = 5
  with tempfile.TemporaryDirectory() as out:
    with jax.profiler.trace(out, create_perfetto_trace=True):
      for _ in range(calls):
        jax.block_until_ready(grad(params, xs))
    trace = json.load(gzip.open(glob.glob(f"{out}/**/perfetto_trace.json.gz",
                                          recursive=True)[0]))
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  total = collections.defaultdict(lambda: [0, 0.0])
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(("$", "ThunkExecutor")):
      total[e["name"]][0] += 1
      total[e["name"]][1] += e.get("dur", 0.0)
  print(f"{args.cell} B,T,I,H={args.size}, {'generic' if args.generic else 'fast path'}: "
        f"per call, {calls} calls")
  print("| XLA operation | runs per call | ms per call | µs per run |")
  print("|---|---|---|---|")
  for name, (n, us) in sorted(total.items(), key=lambda kv: -kv[1][1])[:args.top]:
    print(f"| {name} | {n // calls} | {us / 1e3 / calls:.2f} | {us / n:.1f} |")


if __name__ == "__main__":
  main()
